import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / 'shared' / 'data'
sys.path.insert(0, str(ROOT))



def tool(name):
    """A script of tools/ (a folder, not a package) as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

def shared(relative):
    """A file from ../shared/data, or skip the test where it is absent (a user's fresh clone)."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f'{path} is absent: the shared test data sits beside the repository only in CI')
    return path


def heads(model, h):
    """The decoder's outputs (model.head_layers, in their order) for the decoder state h."""
    return torch.cat([fc(h) for fc in model.head_layers()], dim=1)


def csv_lines(imgs, names):
    """Kaggle's DHCD layout: a header pixel_0000,...,character, then one row per image, pixel k at
    row k // side, column k % side."""
    side = imgs.shape[-1]
    header = ','.join(f'pixel_{k:04d}' for k in range(side * side)) + ',character'
    rows = [','.join(str(img[k // side, k % side]) for k in range(side * side)) + f',{name}'
            for img, name in zip(imgs, names)]
    return [header, *rows]


def write_tiny_csv(folder):
    """folder/data/data.csv: 40 random 32x32 images of two classes, in Kaggle's layout."""
    images = np.zeros((40, 32, 32), dtype=np.uint8)
    images[:, 8:24, 8:24] = np.random.default_rng(0).integers(0, 256, (40, 16, 16))
    (folder / 'data').mkdir()
    (folder / 'data' / 'data.csv').write_text('\n'.join(csv_lines(images, ['character_01_ka', 'digit_0'] * 20)))
    return folder


def original_checkpoint(path):
    """A file as the 2019 implementation wrote it: documented keys and shapes, a torch.device in
    params, channel 3, the legacy (pre-zip) serialization."""
    shapes = {'encoder.weight_ih': (1600, 616), 'encoder.weight_hh': (1600, 400), 'encoder.bias_ih': (1600,),
              'encoder.bias_hh': (1600,), 'fc_mu.weight': (100, 400), 'fc_mu.bias': (100,),
              'fc_sigma.weight': (100, 400), 'fc_sigma.bias': (100,), 'decoder.weight_ih': (1600, 100),
              'decoder.weight_hh': (1600, 400), 'decoder.bias_ih': (1600,), 'decoder.bias_hh': (1600,),
              'fc_write.weight': (108, 400), 'fc_write.bias': (108,), 'fc_attention.weight': (5, 400),
              'fc_attention.bias': (5,)}
    g = torch.Generator().manual_seed(0)
    model = {k: 0.05 * torch.randn(s, generator=g) for k, s in shapes.items()}
    params = {'T': 25, 'batch_size': 128, 'A': 32, 'B': 32, 'z_size': 100, 'read_N': 6, 'write_N': 6,
              'dec_size': 400, 'enc_size': 400, 'epoch_num': 50, 'learning_rate': 1e-3, 'beta1': 0.5,
              'clip': 5.0, 'save_epoch': 10, 'channel': 3, 'device': torch.device('cpu')}
    optimizer = torch.optim.Adam([torch.zeros(1)]).state_dict()
    torch.save({'model': model, 'optimizer': optimizer, 'params': params}, path,
               _use_new_zipfile_serialization=False)
    return model


TINY = ['T=3', 'enc_size=16', 'dec_size=16', 'z_size=4', 'read_N=2', 'write_N=3', 'batch_size=16']


def run(script, *args, cwd):
    """A project script run as a user runs it."""
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope='session')
def trained(tmp_path_factory):
    """A tiny train.py run (2 epochs, a checkpoint each) on a tiny Kaggle CSV: its folder and output."""
    work = write_tiny_csv(tmp_path_factory.mktemp('run'))
    out = run('train.py', 'epoch_num=2', 'save_epoch=1', *TINY, cwd=work)
    assert out.returncode == 0, out.stderr
    return work, out.stdout


@pytest.fixture(scope='session')
def trained_conditional(tmp_path_factory):
    """A tiny class-conditional train.py run (1 epoch) on the tiny two-class CSV: its folder."""
    work = write_tiny_csv(tmp_path_factory.mktemp('conditional'))
    out = run('train.py', 'epoch_num=1', 'conditional=true', *TINY, cwd=work)
    assert out.returncode == 0, out.stderr
    return work


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: starts a subprocess, a compile or a browser (deselect with -m "not slow")')
