"""Bad input to the scripts: each case a clear message naming the problem, never a traceback."""
import os

import pytest
import torch

import generate
import train
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


def test_generate_rejects_bad_checkpoints(trained, tmp_path):
    work, _ = trained
    for name, message in bad_checkpoints(tmp_path, work / 'checkpoint' / 'model_final').items():
        with pytest.raises(InputError, match=message):
            generate.main(['-load_path', str(tmp_path / name), '-out_dir', str(tmp_path / 'out')])
    assert not (tmp_path / 'pwned').exists()  # the pickled command never ran
    assert not (tmp_path / 'out').exists()


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


@pytest.mark.parametrize('override, message', [
    ('epochs=3', "unknown key 'epochs'; valid keys: dataset, data_path"),
    ('batch_size=big', "batch_size='big': expected int"),
    ('batch_size=1.5', "batch_size='1.5': expected int"),
    ('read_attn=maybe', "read_attn='maybe': expected bool"),
    ('learning_rate=fast', "learning_rate='fast': expected float"),
    ('T=0', 'T=0: must be at least 1'),
    ('nonfinite_limit=0', 'nonfinite_limit=0: must be at least 1'),
    ('precision=fp16', "precision='fp16': must be 'fp32' or 'bf16'"),
    ('write_N=1', 'write_N=1: must be at least 2'),
    ('binarize=yes', "binarize='yes': must be 'none', 'threshold' or 'sample'"),
    ('test_split=1.5', 'test_split=1.5: must be a fraction'),
    ('batch_size', "overrides are key=value"),
    ('dataset=imagenet', "dataset='imagenet' is not a source"),
    ('classes=character_99_zz', "unknown class 'character_99_zz'"),
])
def test_train_rejects_bad_overrides(override, message, tmp_path):
    with pytest.raises(InputError) as error:
        train.main([*TINY, f'data_path={tmp_path}', 'dataset=builtin', f'cache_dir={tmp_path}', override])
    assert message in str(error.value)


def test_errors_reach_the_user_as_one_line(trained, tmp_path):
    work, _ = trained
    for script, args, message in (
            ('generate.py', ['-load_path', str(tmp_path / 'nothing')], 'no such checkpoint file'),
            ('train.py', ['epochs=3'], "unknown key 'epochs'"),
            ('train.py', ['device=cuda:7'] if not torch.cuda.is_available() else ['device=tpu'], 'device=')):
        out = run(script, *args, cwd=work)
        assert out.returncode == 2 and 'Traceback' not in out.stderr
        assert out.stderr.strip().splitlines()[-1].startswith('error: ') and message in out.stderr


def test_a_conditional_model_needs_two_classes(tmp_path):
    work = write_tiny_csv(tmp_path)
    out = run('train.py', 'conditional=true', 'classes=ka', 'epoch_num=1', *TINY, cwd=work)
    assert out.returncode == 2 and 'conditional=True' in out.stderr and 'at least two classes' in out.stderr
    assert not (work / 'images' / 'Training_Data.png').exists()  # refused before anything is written


def test_a_conditional_checkpoint_without_its_classes_is_refused(trained_conditional, tmp_path):
    ckpt = torch.load(trained_conditional / 'checkpoint' / 'model_final', weights_only=True)
    del ckpt['classes']
    torch.save(ckpt, tmp_path / 'no_classes')
    with pytest.raises(InputError, match='class names is missing'):
        generate.main(['-load_path', str(tmp_path / 'no_classes')])
