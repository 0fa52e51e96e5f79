"""Bad input to the scripts: each case a clear message naming the problem, never a traceback."""
import errno
import os
from pathlib import Path

import pytest
import torch

import generate
import train
import utils
from conftest import TINY, run, write_tiny_csv
from utils import InputError


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def bad_checkpoints(tmp_path, good):
    (tmp_path / 'empty').write_bytes(b'')
    (tmp_path / 'text').write_text('not a checkpoint\n')
    (tmp_path / 'truncated').write_bytes(good.read_bytes()[:5000])
    torch.save({'weights': {}}, tmp_path / 'other_dict')
    torch.save({'model': {'w': RunsCode(tmp_path / 'pwned')}, 'params': {}}, tmp_path / 'malicious')
    return {'missing': 'no such checkpoint file', 'empty': 'is empty', 'text': 'not a readable checkpoint',
            'truncated': 'truncated', 'other_dict': 'not a DRAW checkpoint', 'malicious': 'refused', '.': 'directory'}


@pytest.mark.slow
def test_generate_rejects_bad_checkpoints(trained, tmp_path):
    work, _ = trained
    for name, message in bad_checkpoints(tmp_path, work / 'checkpoint' / 'model_final').items():
        with pytest.raises(InputError, match=message):
            generate.main(['-load_path', str(tmp_path / name), '-out_dir', str(tmp_path / 'out')])
    assert not (tmp_path / 'pwned').exists()  # the pickled command never ran
    assert not (tmp_path / 'out').exists()


@pytest.mark.slow
@pytest.mark.parametrize('change, message', [
    ({'dec_size': 32}, 'weights do not fit its params'),
    ({'read_N': 1}, 'its params hold read_N=1: must be at least 2'),
    ({'T': 'many'}, "its params hold T='many' where whole numbers"),
    ({'A': None}, 'its params lack A'),
])
def test_checkpoint_whose_params_are_wrong(trained, tmp_path, change, message):
    work, _ = trained
    ckpt = torch.load(work / 'checkpoint' / 'model_final', map_location='cpu', weights_only=True)
    ckpt['params'].update(change)
    torch.save(ckpt, tmp_path / 'wrong')
    with pytest.raises(InputError, match=message):
        generate.main(['-load_path', str(tmp_path / 'wrong')])


@pytest.mark.slow
@pytest.mark.parametrize('args, message', [
    (['-num_output', '0'], '-num_output must be a positive'),
    (['-num_output', '-3'], '-num_output must be a positive'),
    (['-num_output', 'many'], "invalid int value: 'many'"),
    (['-t', '0'], '-t must be a positive'),
    (['-t', '2.5'], "invalid int value: '2.5'"),
    (['-seed', str(2 ** 64)], '-seed must be an integer from 0'),
])
def test_generate_rejects_bad_flags(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        generate.main(['-load_path', 'unused', *args])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize('override, message', [
    ('epochs=3', "unknown key 'epochs'; valid keys: dataset, data_path"),
    ('batch_size=big', "batch_size='big': expected int"),
    ('batch_size=1.5', "batch_size='1.5': expected int"),
    ('read_attn=maybe', "read_attn='maybe': expected bool"),
    ('learning_rate=fast', "learning_rate='fast': expected float"),
    ('T=0', 'T=0: must be at least 1'),
    ('nonfinite_limit=0', 'nonfinite_limit=0: must be at least 1'),
    ('precision=fp16', "precision='fp16': must be 'auto', 'fp32' or 'bf16'"),
    ('write_N=1', 'write_N=1: must be at least 2'),
    ('binarize=yes', "binarize='yes': must be 'none', 'threshold' or 'sample'"),
    ('test_split=1.5', 'test_split=1.5: must be a fraction'),
    ('batch_size', "overrides are key=value"),
    ('dataset=imagenet', "dataset='imagenet' is not a source"),
    ('classes=character_99_zz', "unknown class 'character_99_zz'"),
])
def test_train_rejects_bad_overrides(override, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # its checkpoint/ and images/ there, not in the repository
    with pytest.raises(InputError) as error:
        train.main([*TINY, f'data_path={tmp_path}', 'dataset=builtin', f'cache_dir={tmp_path}', override])
    assert message in str(error.value)


@pytest.mark.slow
def test_bf16_where_it_is_not_native_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(utils, 'native_bf16', lambda device: None)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match='precision=bf16: cpu has no native bfloat16'):
        train.main([*TINY, f'data_path={tmp_path}', 'dataset=builtin', f'cache_dir={tmp_path}',
                    f'image_dir={tmp_path}/images', 'precision=bf16'])
    assert not (tmp_path / 'images' / 'Training_Data.png').exists()


@pytest.mark.slow
def test_errors_reach_the_user_as_one_line(trained, tmp_path):
    work, _ = trained
    for script, args, message in (
            ('generate.py', ['-load_path', str(tmp_path / 'nothing')], 'no such checkpoint file'),
            ('train.py', ['epochs=3'], "unknown key 'epochs'"),
            ('train.py', ['device=cuda:7'] if not torch.cuda.is_available() else ['device=tpu'], 'device=')):
        out = run(script, *args, cwd=work)
        assert out.returncode == 2 and 'Traceback' not in out.stderr
        assert out.stderr.strip().splitlines()[-1].startswith('error: ') and message in out.stderr


@pytest.mark.slow
def test_a_conditional_model_needs_two_classes(tmp_path):
    work = write_tiny_csv(tmp_path)
    out = run('train.py', 'conditional=true', 'classes=ka', 'epoch_num=1', *TINY, cwd=work)
    assert out.returncode == 2 and 'conditional=True' in out.stderr and 'at least two classes' in out.stderr
    assert not (work / 'images' / 'Training_Data.png').exists()  # refused before anything is written


@pytest.mark.slow
def test_a_conditional_checkpoint_without_its_classes_is_refused(trained_conditional, tmp_path):
    ckpt = torch.load(trained_conditional / 'checkpoint' / 'model_final', weights_only=True)
    del ckpt['classes']
    torch.save(ckpt, tmp_path / 'no_classes')
    with pytest.raises(InputError, match='class names is missing'):
        generate.main(['-load_path', str(tmp_path / 'no_classes')])


# -- a user's first hour --------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize('key', ['checkpoint_dir', 'image_dir'])
def test_an_output_folder_that_is_a_file_is_refused_before_any_work(tmp_path, key):
    (tmp_path / 'taken').write_text('a file')
    with pytest.raises(InputError) as error:
        train.main([*TINY, 'dataset=builtin', f'cache_dir={tmp_path / "cache"}', f'image_dir={tmp_path / "images"}',
                    f'checkpoint_dir={tmp_path / "checkpoint"}', f'{key}={tmp_path / "taken"}'])
    assert str(error.value) == f"{key} {tmp_path / 'taken'}: cannot write there (it is a file, not a folder); " \
                               f"choose another folder."
    assert not (tmp_path / 'cache').exists()  # no data decoded, nothing trained


@pytest.mark.slow
def test_an_output_folder_without_write_permission_is_refused(tmp_path, monkeypatch):
    real = utils.tempfile.TemporaryFile

    def denied(dir):  # what a read-only or foreign folder answers (root, as in CI, would be let in)
        if Path(dir).name == 'ro':
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real(dir=dir)
    monkeypatch.setattr(utils.tempfile, 'TemporaryFile', denied)
    with pytest.raises(InputError, match=r'image_dir .*/ro: cannot write there \(Permission denied\)'):
        train.main([*TINY, 'dataset=builtin', f'cache_dir={tmp_path}', f'image_dir={tmp_path / "ro"}',
                    f'checkpoint_dir={tmp_path / "checkpoint"}'])


@pytest.mark.slow
def test_out_dir_of_generate_and_evaluate_is_checked_with_its_own_syntax(trained, tmp_path):
    work, _ = trained
    (tmp_path / 'taken').write_text('a file')
    for script in ('generate.py', 'evaluate.py'):
        out = run(script, '--load_path', str(work / 'checkpoint' / 'model_final'), '--out_dir', str(tmp_path / 'taken'),
                  cwd=work)
        assert out.returncode == 2 and out.stderr.strip().splitlines() == [
            f"error: -out_dir {tmp_path / 'taken'}: cannot write there (it is a file, not a folder); choose another "
            f"folder."]


@pytest.mark.slow
@pytest.mark.parametrize('given, says', [
    ('nowhere.csv', 'no such file'),
    ('nowhere', 'no such file or folder'),
    ('~/surely_not_here_42/data.csv.gz', 'no such file'),
])
def test_a_data_path_that_does_not_exist_is_an_error_not_the_builtin_set(tmp_path, monkeypatch, given, says):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as error:
        train.main([*TINY, f'data_path={given}'])
    expanded = os.path.expanduser(given)
    assert str(error.value).startswith(f"data_path {expanded}: {says} (from {tmp_path})")
    assert '~' not in str(error.value)


@pytest.mark.slow
def test_a_given_folder_without_data_is_an_error(tmp_path, monkeypatch):
    (tmp_path / 'mine').mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match='data_path .*mine: no data found in this folder'):
        train.main([*TINY, f'data_path={tmp_path / "mine"}'])


@pytest.mark.slow
def test_train_help_lists_every_key_with_its_default_and_meaning(tmp_path):
    for flag in ('--help', '-h'):
        out = run('train.py', flag, cwd=tmp_path)
        assert out.returncode == 0 and out.stdout.startswith(train.__doc__.strip()[:40])
        lines = {line.split()[0]: line for line in out.stdout.splitlines() if '=' in line[:40] and line[:2] == '  '}
        for key, value in train.params.items():
            assert f'{key}={value}' in lines, key
            assert len(lines[f'{key}={value}'].split(None, 1)) == 2, f'{key} has no comment'
        assert not list(tmp_path.iterdir())  # only help: nothing written


@pytest.mark.slow
def test_generate_and_evaluate_errors_speak_their_own_syntax(trained):
    work, _ = trained
    for script in ('generate.py', 'evaluate.py'):
        out = run(script, '-load_path', str(work / 'checkpoint' / 'model_final'), '-device', 'tpu', cwd=work)
        assert out.returncode == 2 and "error: -device tpu is not a device; use -device auto" in out.stderr
        assert 'device=' not in out.stderr


@pytest.mark.slow
def test_resuming_a_finished_run_says_there_is_nothing_to_do(trained):
    work, _ = trained
    final = work / 'checkpoint' / 'model_final'
    before = final.read_bytes()
    out = run('train.py', f'resume={final}', cwd=work)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        f"error: {final}: finished epoch 2 of epoch_num=2; nothing to do. To train on, raise epoch_num, "
        f"e.g. resume={final} epoch_num=12."]
    assert final.read_bytes() == before
