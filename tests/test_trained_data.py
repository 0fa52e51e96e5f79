"""The data a checkpoint learned, found again: in the user's data/ (never where the checkpoint says), in a
file given with -data whose fingerprint is the checkpoint's, or, for the built-in set, rendered here."""
import contextlib
import io
import re
import shutil

import pytest
import torch

import dataloader
import devanagari
import evaluate
import formats
import train
from conftest import TINY, run, write_tiny_csv
from dataloader import load_data
from train import params as DEFAULTS


@pytest.mark.slow
def test_without_data_the_checkpoint_is_scored_on_the_data_it_learned(trained, tmp_path):
    """The checkpoint records its data (source, fingerprint, and as text where it was): evaluate.py
    finds it where the user's data/ is, and refuses, naming both, when what is there now is other
    data. (Not found there: tests/test_hostile_checkpoints.py; the recorded path is never read.)"""
    work, _ = trained
    record = torch.load(work / 'checkpoint' / 'model_final', weights_only=True)['data']
    assert record['dataset'] == 'csv' and record['data_path'] == str(work / 'data') and record['fingerprint']
    found = run('evaluate.py', '--load_path', str(work / 'checkpoint' / 'model_final'), '--k', '1',
                '--num_samples', '0', '--out_dir', str(tmp_path), cwd=work)
    assert found.returncode == 0, found.stderr
    assert "on the test split of csv data/data.csv: 6 images" in found.stdout.replace(str(work) + '/', '')
    assert 'with k=1 the ELBO itself' in found.stdout
    ckpt = torch.load(work / 'checkpoint' / 'model_final', weights_only=True)
    torch.save({**ckpt, 'data': {**record, 'fingerprint': '0123456789abcdef'}}, tmp_path / 'other')
    for script in ('evaluate.py', 'generate.py'):
        flags = ['-reconstruct'] if script == 'generate.py' else ['-k', '1']
        out = run(script, '-load_path', str(tmp_path / 'other'), *flags, '-out_dir', str(tmp_path), cwd=work)
        assert out.returncode == 2 and 'but what is found in data differs' in out.stderr, out.stderr
        assert f"{tmp_path / 'other'} learned csv" in out.stderr and 'Traceback' not in out.stderr
        assert out.stderr.strip().endswith('Give the data to use with -data PATH.')


@pytest.mark.slow
def test_a_builtin_model_is_not_scored_on_a_csv_put_in_data_later(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, 'BUILTIN_PER_CLASS', (2, 1))
    monkeypatch.chdir(tmp_path)
    train.main([*TINY, 'epoch_num=1', 'cache_dir=cache'])  # data/ absent: the built-in set
    write_tiny_csv(tmp_path)  # the user adds data.csv afterwards
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        evaluate.main(['-load_path', 'checkpoint/model_final', '-k', '1', '-num_samples', '0'])
    assert 'on the test split of built-in rendered Devanagari: 46 images' in out.getvalue()


@pytest.mark.slow
def test_a_builtin_model_rendered_otherwise_here_is_used_and_said_so(tmp_path, monkeypatch, capsys):
    """The built-in set is the same bytes on every CPU (tests/test_devanagari.py), but other font or
    Pillow versions may draw other pixels: there is no other source to give, so the set rendered here
    is scored and resumed on, and a line says so, naming no folder of the machine that trained it."""
    monkeypatch.setattr(formats, 'BUILTIN_PER_CLASS', (2, 1))
    monkeypatch.chdir(tmp_path)
    train.main([*TINY, 'epoch_num=1', 'cache_dir=cache'])
    ckpt = torch.load('checkpoint/model_final', weights_only=True)
    ckpt['data'].update(fingerprint='0123456789abcdef', data_path='/elsewhere/data')
    torch.save(ckpt, 'other')
    capsys.readouterr()
    evaluate.main(['-load_path', 'other', '-k', '1', '-num_samples', '0'])
    train.main([*TINY, 'epoch_num=2', 'cache_dir=cache', 'resume=other'])
    out = capsys.readouterr().out
    here = load_data({**DEFAULTS, 'dataset': 'builtin', 'cache_dir': 'cache'}, log=lambda line: None).fingerprint
    drawn = devanagari.renderer()
    assert ckpt['data']['renderer'] == drawn  # what rendered it is recorded
    said = (f"other learned the built-in set as rendered with fingerprint 0123456789abcdef (by {drawn}); here it "
            f"renders as {here} (by {drawn}): it is used as rendered here.")
    assert out.count(said) == 2 and 'elsewhere' not in out  # evaluate.py, then the resume
    assert 'on the test split of built-in rendered Devanagari: 46 images' in out
    assert torch.load('model_final', weights_only=True)['epoch'] == 2  # beside the file it resumed


@pytest.mark.slow
def test_data_given_with_data_that_is_what_the_model_learned_gets_its_sample_scores(trained, tmp_path, monkeypatch,
                                                                                     capsys):
    """A model trained on a file outside data/: -data naming that file (its fingerprint matches) is its
    own data, scored on its test split, and the classifier learns its training split."""
    work, _ = trained
    shutil.copy(work / 'data' / 'data.csv', tmp_path / 'mine.csv')
    ckpt = torch.load(work / 'checkpoint' / 'model_final', weights_only=True)
    ckpt['data']['data_path'] = str(tmp_path / 'mine.csv')  # where it was trained: not data/
    torch.save(ckpt, tmp_path / 'model')
    monkeypatch.chdir(tmp_path)  # no data/ here
    evaluate.main(['-load_path', 'model', '-data', 'mine.csv', '-k', '1', '-num_samples', '4'])
    out = capsys.readouterr().out
    assert f"mine.csv is the data model learned (its fingerprint {ckpt['data']['fingerprint']})" in out
    assert 'on the test split of csv' in out and 'skipped' not in out
    assert re.search(r'Sample quality, by a CNN trained on the training split of csv \S*mine.csv', out), out


def test_the_built_in_sets_cache_is_keyed_by_what_renders_it(monkeypatch):
    """Another Pillow, FreeType or font file draws other pixels: the built-in set's cache is not reused."""
    key = dataloader.fingerprint('builtin', None, 32, 32)
    assert dataloader.fingerprint('builtin', None, 32, 32) == key
    monkeypatch.setattr(devanagari, 'renderer', lambda: 'warp 2, Pillow 99.0.0 (FreeType 9, raqm 9), fonts 0')
    assert dataloader.fingerprint('builtin', None, 32, 32) != key
