"""A checkpoint's params are data, not orders: a few kilobytes that ask for a model of any size are
refused before anything is built, the paths a checkpoint names are never read or written, and
checkpoints are read only under a torch whose safe loading holds (2.6 on)."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import checkpoints
import config
import evaluate
import formats
import generate
import train
import utils
import webpage
from draw_model import DRAWModel
from utils import InputError


@pytest.fixture
def nothing_built(monkeypatch):
    """DRAWModel fails the test if built; utils.run leaves this process's subnormal setting as it was."""
    def built(self, *args, **kw):
        raise AssertionError('a DRAWModel was built from the hostile checkpoint')
    monkeypatch.setattr(DRAWModel, '__init__', built)
    monkeypatch.setattr(torch, 'set_flush_denormal', lambda mode: True)


def one_line_error(main, argv, capsys):
    """The one line (exit status 2) that a script's main(argv) ends with under utils.run."""
    with pytest.raises(SystemExit) as exit_:
        utils.run(lambda: main(argv))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count('\n') == 1 and err.startswith('error: '), err
    return err


def crafted(path, **changes):
    """A checkpoint of kilobytes: no weights, train.py's params as plain values with changes."""
    extra = {k: changes.pop(k) for k in ('classes', 'glyphs') if k in changes}
    torch.save({'model': {}, 'params': {**train.params, **changes}, **extra}, path)
    assert path.stat().st_size < 200_000
    return path


HUGE = [({'T': 10 ** 9}, 'T=1000000000: must be at least 1 and at most 128 (config.MODEL_CAPS)'),
        ({'A': 10 ** 5, 'B': 10 ** 5}, 'A=100000: must be at least 1 and at most 128'),
        ({'B': 10 ** 5}, 'B=100000: must be at least 1 and at most 128'),
        ({'enc_size': 10 ** 6}, 'enc_size=1000000: must be at least 1 and at most 1024'),
        ({'dec_size': 10 ** 6}, 'dec_size=1000000: must be at least 1 and at most 1024'),
        ({'z_size': 10 ** 7}, 'z_size=10000000: must be at least 1 and at most 512'),
        ({'read_N': 10 ** 4}, 'read_N=10000: must be at least 2 with read attention, and at most 32'),
        ({'write_N': 33}, "write_N=33: must be at least 2 with write attention, and at most 32 (the image's smaller"),
        ({'read_N': 10 ** 4, 'read_attn': False}, 'read_N=10000: must be at most 64 (config.MODEL_CAPS)'),
        ({'seed': 'x'}, "seed='x': must be an integer from 0 to 2**32 - 1"),
        ({'conditional': True, 'classes': [f'c{k}' for k in range(10_001)]},
         "names 10,001 classes, more than config.MODEL_CAPS's num_classes=10,000"),
        ({'conditional': True, 'classes': ['ka', 'k' * 201]},
         "a class name or glyph of 201 characters ('kkkkkkkkkkkkkkkkkkkk'...), more than config.MODEL_CAPS's "
         "name_chars=200"),
        ({'classes': ['ka', 'kha'], 'glyphs': ['क', 'x' * 10 ** 4]}, 'a class name or glyph of 10,000 characters'),
        ({'classes': ['ka', 'kha'], 'glyphs': ['क']}, 'it holds 1 glyphs for 2 classes'),
        ({'classes': 'ka'}, 'its list of class names is damaged (not a list of strings)')]


@pytest.mark.parametrize('changes, message', HUGE, ids=[next(iter(c)) + str(i) for i, (c, _) in enumerate(HUGE)])
@pytest.mark.parametrize('script', [generate, evaluate], ids=['generate', 'evaluate'])
def test_a_checkpoint_asking_for_a_huge_model_is_refused_before_anything_is_built(
        script, changes, message, tmp_path, nothing_built, capsys):
    path = crafted(tmp_path / 'huge', **changes)
    err = one_line_error(script.main, ['-load_path', str(path), '-out_dir', str(tmp_path / 'out')], capsys)
    assert f'{path}: ' in err and message in err
    assert not (tmp_path / 'out').exists()


def test_a_2019_layout_checkpoint_with_a_damaged_write_N_is_one_line(tmp_path, nothing_built, capsys):
    path = tmp_path / 'old'
    torch.save({'model': {'fc_attention.weight': torch.zeros(5, 4)}, 'params': {**train.params, 'write_N': 'x'}}, path)
    err = one_line_error(generate.main, ['-load_path', str(path)], capsys)
    assert 'its params lack channel' in err


def test_train_refuses_sizes_beyond_the_caps_naming_the_cap(tmp_path, monkeypatch):
    def trained(*args):
        raise AssertionError('train.py got past its checks')
    monkeypatch.setattr(train, 'train_on', trained)
    monkeypatch.chdir(tmp_path)
    for override, message in (('T=100000', 'T=100000: must be at least 1 and at most 128 (config.MODEL_CAPS).'),
                              ('read_N=40', 'read_N=40: must be at least 2 with read attention, and at most 32')):
        with pytest.raises(InputError) as error:
            train.main([override])
        assert str(error.value).startswith(message)
    assert list(tmp_path.iterdir()) == []  # refused before any folder was made


def test_checkpoints_are_not_read_under_a_torch_older_than_2_6(tmp_path, monkeypatch):
    path = tmp_path / 'ckpt'
    torch.save({'model': {}, 'params': {}}, path)
    monkeypatch.setattr(torch, '__version__', '2.5.1+cu124')
    with pytest.raises(InputError) as error:
        checkpoints.read_checkpoint(path)
    assert str(error.value) == (f"{path}: not loaded: torch 2.5.1+cu124 can be made to run code while loading a "
                                f"checkpoint (CVE-2025-32434); install torch 2.6 or later (pip install -r "
                                f"requirements.txt).")
    monkeypatch.setattr(torch, '__version__', '2.6.0')
    assert checkpoints.read_checkpoint(path) == {'model': {}, 'params': {}}
    assert re.search(r'^torch>=2\.6\b', (Path(checkpoints.__file__).parent / 'requirements.txt').read_text(), re.M)


def page_caps():
    """The MODEL_CAPS object literal of web/page.js, as a dict."""
    source = (webpage.WEB / 'page.js').read_text(encoding='utf-8')
    literal = re.search(r'^const MODEL_CAPS = \{(.*?)\};', source, re.M | re.S).group(1)
    return {key: int(value) for key, value in re.findall(r'(\w+): (\d+)', literal)}


def test_the_page_checks_the_same_caps_as_python():
    assert page_caps() == config.MODEL_CAPS


@pytest.mark.slow
def test_the_page_refuses_a_model_beyond_the_caps_before_it_loads_it():
    if not shutil.which('node'):
        pytest.skip('node is not installed')
    script = (webpage.WEB / 'page.js').read_text(encoding='utf-8').split('const drawPage')[0]
    good = {'T': 25, 'A': 32, 'B': 32, 'C': 1, 'z_size': 100, 'read_N': 6, 'write_N': 10, 'enc_size': 256,
            'dec_size': 256, 'num_classes': 2}
    cases = [(good, ['ka', 'kha']), ({**good, 'T': 10 ** 9}, []), ({**good, 'enc_size': 1.5}, []),
             (good, ['x' * 201]), ({**good, 'num_classes': 0}, ['ka'] * 10_001)]
    checks = ''.join(f"try {{ checkCaps({c}, {n}); console.log('drawn'); }} catch (e) {{ console.log(e.message); }}\n"
                     for c, n in ((str(c).replace('True', 'true'), repr(n)) for c, n in cases))
    out = subprocess.run(['node', '-e', script + checks], capture_output=True, text=True, timeout=60)
    assert out.stdout.splitlines() == ['drawn'] + [
        f"This page's model has {key}, not a whole number up to {cap} (config.py's MODEL_CAPS): the page is "
        f"damaged; write it again with generate.py -html." for key, cap in (
            ('T = 1000000000', 128), ('enc_size = 1.5', 1024), ('name_chars = 201', 200),
            ('num_classes = 10001', 10000))], out.stderr


def snapshot(folder):
    """Every file and folder under folder, with its size and modification time."""
    return {p.relative_to(folder): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob('*'))}


@pytest.fixture
def looked(monkeypatch):
    """Every path the loader looks for a dataset in, resolved."""
    seen, find = [], formats.find_source
    monkeypatch.setattr(formats, 'find_source',
                        lambda dataset, path, *args: seen.append(Path(path).resolve()) or find(dataset, path, *args))
    return seen


@pytest.mark.slow
def test_the_folders_a_checkpoint_names_are_never_read_or_written(trained, tmp_path, monkeypatch, looked, capsys):
    """Its params' cache_dir, data_path, checkpoint_dir and image_dir, and its data record's path: the
    data is looked for in the user's data/, the caches go to the user's data/.cache."""
    work, _ = trained
    user, elsewhere = tmp_path / 'user', tmp_path / 'elsewhere'
    for folder in (user / 'data', elsewhere / 'data', elsewhere / 'cache', elsewhere / 'out'):
        folder.mkdir(parents=True)
        shutil.copy(work / 'data' / 'data.csv', folder / 'data.csv')  # the same data, in every folder
    ckpt = torch.load(work / 'checkpoint' / 'model_final', weights_only=True)
    ckpt['params'].update(cache_dir=str(elsewhere / 'cache'), data_path=str(elsewhere / 'data'),
                          checkpoint_dir=str(elsewhere / 'out'), image_dir=str(elsewhere / 'out'))
    ckpt['data']['data_path'] = str(elsewhere / 'data')
    torch.save(ckpt, tmp_path / 'hostile')
    before = snapshot(elsewhere)
    monkeypatch.chdir(user)
    evaluate.main(['-load_path', str(tmp_path / 'hostile'), '-k', '1', '-num_samples', '4', '-out_dir', 'out'])
    generate.main(['-load_path', str(tmp_path / 'hostile'), '-reconstruct', '-num_output', '2', '-out_dir', 'out'])
    assert 'Sample quality, by a CNN trained on the training split of csv' in capsys.readouterr().out
    assert snapshot(elsewhere) == before  # nothing written there
    assert looked and all(p == user / 'data' for p in looked)  # nothing looked for there
    assert list((user / 'data' / '.cache').glob('csv-*.pt')) and list((user / 'data' / '.cache').glob('classifier-*'))


@pytest.mark.slow
def test_data_not_where_the_user_looks_is_one_line_naming_what_the_checkpoint_learned(
        trained, tmp_path, monkeypatch, looked, capsys):
    work, _ = trained
    path = work / 'checkpoint' / 'model_final'
    monkeypatch.chdir(tmp_path)  # no data/ here; the recorded folder still holds the data
    monkeypatch.setattr(torch, 'set_flush_denormal', lambda mode: True)
    for script, flags in ((evaluate, ['-k', '1']), (generate, ['-reconstruct'])):
        err = one_line_error(script.main, ['-load_path', str(path), *flags], capsys)
        fingerprint = torch.load(path, weights_only=True)['data']['fingerprint']
        assert err == (f"error: {path} learned csv data/data.csv (fingerprint {fingerprint}); it is "
                       f"looked for in data (from {tmp_path}), which does not exist. Give the data to use with "
                       f"-data PATH.\n")
    assert looked == []
