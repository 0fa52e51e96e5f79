"""The model in the box: checkpoint/devanagari_builtin, what docs/model.md's command trains today."""
import re

import pytest
import torch

import checkpoints
import config
import devanagari
import train
from conftest import ROOT, run
from dataloader import load_data

SHIPPED = ROOT / 'checkpoint' / 'devanagari_builtin'
# params that say where and how a run ran, not what it trains: they may differ between machines and runs
RUN_KEYS = {'precision', 'compile', 'device', 'resume', 'data_path', 'cache_dir', 'checkpoint_dir', 'image_dir',
            'save_epoch', 'sample_scores', 'nonfinite_limit'}


def documented():
    """docs/model.md's training command (its key=value overrides) and the negative ELBO that
    evaluate.py printed for the file there."""
    text = (ROOT / 'docs' / 'model.md').read_text(encoding='utf-8')
    command = re.search(r'^python train\.py( .*)?$', text, re.M).group(1) or ''
    return command.split(), float(re.search(r'negative ELBO\s+([\d.]+) nats', text).group(1))


def test_the_shipped_model_is_what_the_documented_command_trains_with_todays_defaults():
    """Every recipe key of the file's params is what the documented command gives now: a change of
    default that changes the model fails here until the file is trained again (docs/model.md)."""
    ckpt = torch.load(SHIPPED, map_location='cpu', weights_only=True)
    expected = config.apply_overrides(train.params, documented()[0])
    recipe = set(train.params) - RUN_KEYS
    assert {k: ckpt['params'].get(k, 'absent') for k in recipe} == {k: expected[k] for k in recipe}
    assert ckpt['epoch'] == expected['epoch_num'] and ckpt['data']['dataset'] == 'builtin'
    assert 'optimizer' not in ckpt and 'training_model' not in ckpt and SHIPPED.stat().st_size <= 8e6


def same_renderer(record):
    """Skip where this machine's Pillow, FreeType or fonts are not those that rendered the shipped
    model's set (docs/data.md): they draw other pixels, which evaluate.py says and uses. On any CPU with
    the same ones, the bytes are the same (tests/test_devanagari.py)."""
    here = devanagari.renderer()
    if record['renderer'] != here:
        pytest.skip(f"the shipped model's set was rendered by {record['renderer']}; here by {here}")


@pytest.mark.slow
def test_the_shipped_model_learned_todays_built_in_set():
    """The built-in set is rendered from fonts: if its rendering changes, the file is trained again."""
    ckpt = torch.load(SHIPPED, map_location='cpu', weights_only=True)
    same_renderer(ckpt['data'])
    data = load_data({**train.params, 'dataset': 'builtin'}, log=lambda message: None)
    assert data.fingerprint == ckpt['data']['fingerprint'] and data.classes == ckpt['classes']


@pytest.mark.slow
def test_generate_and_evaluate_take_the_shipped_model(tmp_path):
    """Right after a clone: generate.py draws from it (grid, GIF, -char is refused for this
    unconditional model, -reconstruct on its built-in test split, -html), and evaluate.py scores it as
    docs/model.md says."""
    model, params, _ = checkpoints.load_model(SHIPPED, torch.device('cpu'))
    assert params['T'] == model.T == 25
    drawn = run('generate.py', '-load_path', str(SHIPPED), '-num_output', '8', '-seed', '0', '-out_dir', 'out',
                cwd=tmp_path)
    assert drawn.returncode == 0, drawn.stderr
    assert (tmp_path / 'out' / 'Generated_Image.png').is_file() and (tmp_path / 'out' / 'draw_generate.gif').is_file()
    redrawn = run('generate.py', '-load_path', str(SHIPPED), '-num_output', '4', '-reconstruct', '-out_dir', 'out',
                  cwd=tmp_path)
    assert redrawn.returncode == 0 and (tmp_path / 'out' / 'Reconstruction.png').is_file(), redrawn.stderr
    page = run('generate.py', '-load_path', str(SHIPPED), '-html', 'draw.html', cwd=tmp_path)
    assert page.returncode == 0 and (tmp_path / 'draw.html').stat().st_size > 1e6, page.stderr
    scored = run('evaluate.py', '-load_path', str(SHIPPED), '-k', '2', '-num_samples', '0', '-out_dir', 'out',
                 cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr
    elbo = float(re.search(r'negative ELBO\s+([\d.]+) nats', scored.stdout).group(1))
    assert elbo == pytest.approx(documented()[1], abs=0.3)  # another k, other noise: within a few tenths
