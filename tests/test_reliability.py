"""Nothing lost: exact resume, safe interruption, non-finite guards, atomic writes, stale caches."""
import errno
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import dataloader
import figures
import train
import utils
from conftest import ROOT, write_tiny_csv
from draw_model import DRAWModel

TINY = ['T=2', 'enc_size=12', 'dec_size=12', 'z_size=3', 'read_N=2', 'write_N=2', 'batch_size=8',
        'compile=false']  # tests below count the objective's calls: no timing of it before training


@pytest.fixture
def work(tmp_path):
    return write_tiny_csv(tmp_path)


def train_in(folder, *args, out='run'):
    """train.main in folder with tiny settings, outputs under folder/out."""
    train.main([*TINY, f'data_path={folder / "data"}', f'cache_dir={folder / "cache"}',
                f'checkpoint_dir={folder / out / "checkpoint"}', f'image_dir={folder / out / "images"}', *args])
    return folder / out / 'checkpoint'


def load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def assert_same_training(a, b):
    assert a.keys() == b.keys()
    for weights in ('model', 'training_model'):  # the moving average and the weights Adam trains
        for key in a.get(weights, {}):
            assert torch.equal(a[weights][key], b[weights][key]), (weights, key)
    assert a['losses'] == b['losses'] and a['test_bounds'] == b['test_bounds']
    for sa, sb in zip(a['optimizer']['state'].values(), b['optimizer']['state'].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_resume_equals_an_uninterrupted_run(work):
    """A checkpoint of epoch 1 resumed in a new process ends where the run that wrote it ended."""
    straight = train_in(work, 'epoch_num=2', 'save_epoch=1', out='straight')
    resumed = train_in(work, 'epoch_num=2', f'resume={straight / "model_epoch_1"}', out='resumed')
    assert_same_training(load(straight / 'model_final'), load(resumed / 'model_final'))


@pytest.mark.slow
def test_the_moving_average_only_watches_training(work):
    """With ema the checkpoint's model is the average, and its training_model is exactly the model
    of the same run without one: the average changes what is evaluated and drawn, not training. (The
    average is compared after epoch 1, while the rate is held: in the fall it nears the weights.)"""
    averaged = train_in(work, 'epoch_num=2', 'save_epoch=1', out='ema')
    last = train_in(work, 'epoch_num=2', 'save_epoch=1', 'ema=0', out='plain')
    for name in ('model_epoch_1', 'model_final'):
        a, b = load(averaged / name), load(last / name)
        assert 'training_model' not in b and a['losses'] == b['losses']
        assert all(torch.equal(a['training_model'][k], w) for k, w in b['model'].items())
    a, b = load(averaged / 'model_epoch_1'), load(last / 'model_epoch_1')
    assert not any(torch.equal(a['model'][k], w) for k, w in b['model'].items())
    assert a['test_bounds'] != b['test_bounds']  # those are of the average


@pytest.mark.slow
def test_at_a_constant_rate_a_finished_run_extended_equals_a_longer_one(work):
    """The schedule follows epoch_num, so only a constant rate lets epoch_num grow exactly."""
    straight = train_in(work, 'epoch_num=2', 'lr_schedule=constant', out='straight')
    first = train_in(work, 'epoch_num=1', 'lr_schedule=constant', out='extended')
    train_in(work, 'epoch_num=2', f'resume={first / "model_final"}', out='extended')
    assert_same_training(load(straight / 'model_final'), load(first / 'model_final'))


@pytest.mark.slow
def test_resume_from_a_checkpoint_of_the_unfused_optimizer(work):
    """Checkpoints written before the fused step hold an unfused Adam's groups; they resume alike."""
    first = train_in(work, 'epoch_num=1', out='old') / 'model_final'
    ckpt = load(first)
    for group in ckpt['optimizer']['param_groups']:
        group.update(fused=None, foreach=None)
    ckpt['optimizer']['state'] = {k: {**s, 'step': s['step'].reshape(())} for k, s in ckpt['optimizer']['state'].items()}
    torch.save(ckpt, first)
    resumed = load(train_in(work, 'epoch_num=2', f'resume={first}', out='old') / 'model_final')
    assert resumed['epoch'] == 2 and all(g['fused'] for g in resumed['optimizer']['param_groups'])


@pytest.mark.slow
def test_resume_keeps_the_model_and_refuses_foreign_checkpoints(work):
    ckpt = train_in(work, 'epoch_num=1') / 'model_final'
    with pytest.raises(utils.InputError, match=r"remove dec_size=16 \(checkpoint: 12\)"):
        train_in(work, 'dec_size=16', f'resume={ckpt}')
    with pytest.raises(utils.InputError, match=r"remove A=28 \(checkpoint: 32\)"):
        train_in(work, 'A=28', f'resume={ckpt}')  # a dataset of another image size
    saved = load(ckpt)
    del saved['rng']
    torch.save(saved, work / 'weights_only')
    with pytest.raises(utils.InputError, match='holds no training state'):
        train_in(work, f'resume={work / "weights_only"}')
    with pytest.raises(utils.InputError, match='no such checkpoint'):
        train_in(work, f'resume={work / "missing"}')
    saved = load(ckpt)
    state = saved['optimizer']['state']
    state[0], state[1] = state[1], state[0]  # moments that fit no weight: fused Adam would crash, not fail
    torch.save(saved, work / 'shuffled')
    with pytest.raises(utils.InputError, match="damaged or does not fit.*Adam moments' shapes"):
        train_in(work, f'resume={work / "shuffled"}', 'epoch_num=2')


def ctrl_c_at_call(monkeypatch, n):
    """SIGINT to this process in the n-th pass of the model over a batch (training steps' objective and
    test batches' ELBO terms)."""
    calls = [0]

    def then_ctrl_c(method):
        def counted(self, *args, **kwargs):
            calls[0] += 1
            if calls[0] == n:
                os.kill(os.getpid(), signal.SIGINT)
            return method(self, *args, **kwargs)
        return counted
    for name in ('objective', 'elbo_terms'):
        monkeypatch.setattr(DRAWModel, name, then_ctrl_c(getattr(DRAWModel, name)))


@pytest.mark.slow
def test_interrupt_mid_epoch_saves_and_resumes_exactly(work, monkeypatch):
    straight = train_in(work, 'epoch_num=2', out='straight')
    with monkeypatch.context() as m:
        ctrl_c_at_call(m, 9)  # 5 steps and a test batch in epoch 1: call 9 is epoch 2's 3rd step
        with pytest.raises(utils.Stopped, match='SIGINT at epoch 2, step 3') as stopped:
            train_in(work, 'epoch_num=2', 'save_epoch=1', out='cut')
    assert stopped.value.exit_code == 128 + signal.SIGINT
    cut = work / 'cut' / 'checkpoint'
    assert (load(cut / 'model_interrupted')['epoch'], load(cut / 'model_interrupted')['batch']) == (1, 3)
    assert not (cut / 'model_final').exists()
    train_in(work, 'epoch_num=2', f'resume={cut / "model_interrupted"}', out='cut')
    assert_same_training(load(straight / 'model_final'), load(cut / 'model_final'))


@pytest.mark.slow
@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_signal_to_a_real_run_saves_its_state_and_keeps_old_checkpoints(work, sig):
    args = [*TINY, 'epoch_num=100000', 'save_epoch=1', 'cache_dir=cache']
    proc = subprocess.Popen([sys.executable, str(ROOT / 'train.py'), *args], cwd=work, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = work / 'checkpoint' / 'model_epoch_1'
    deadline = time.time() + 120
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    before = digest(first)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert 'Resume with: python train.py resume=checkpoint/model_interrupted' in err and 'Traceback' not in err
    assert digest(first) == before  # the earlier checkpoint is untouched
    state = load(work / 'checkpoint' / 'model_interrupted')
    assert state['epoch'] >= 1 and DRAWModel(state['params']).load_state_dict(state['model'])
    assert not [p for p in (work / 'checkpoint').iterdir() if p.name.endswith('.tmp')]  # no temp files


@pytest.mark.slow
def test_ctrl_c_while_the_step_compiles_stops_the_run_with_one_line(work, tmp_path):
    """SIGINT during a first compile (inductor's caches empty), to a train.py that its shell started
    ignoring SIGINT (as a background job is): the run stops within seconds, with one line, and writes
    no model."""
    env = {**os.environ, 'TORCHINDUCTOR_CACHE_DIR': str(tmp_path / 'inductor')}
    args = [*TINY[:-1], 'compile=true', 'epoch_num=3', 'cache_dir=cache']
    proc = subprocess.Popen([sys.executable, str(ROOT / 'train.py'), *args], cwd=work, text=True, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        for line in proc.stdout:
            if line.startswith('Compiling the glimpse'):
                break
        time.sleep(1)
        assert proc.poll() is None  # still compiling
        sent = time.time()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()  # where it went on
    assert time.time() - sent < 30 and 'compiled in' not in out
    assert proc.returncode == 128 + signal.SIGINT
    assert err.strip() == 'stopped: SIGINT (Ctrl-C); every file already written is kept.'
    assert not (work / 'checkpoint' / 'model_final').exists()


def nan_loss_after(monkeypatch, good_calls):
    calls, objective = [0], DRAWModel.objective

    def objective_or_nan(self, *args):
        calls[0] += 1
        trained, bound = objective(self, *args)
        return (trained * float('nan'), bound * float('nan')) if calls[0] > good_calls else (trained, bound)

    monkeypatch.setattr(DRAWModel, 'objective', objective_or_nan)


@pytest.mark.slow
def test_non_finite_steps_are_skipped_then_training_stops(work, monkeypatch):
    good = train_in(work, 'epoch_num=2', 'save_epoch=1', out='good') / 'model_epoch_1'
    before = digest(good)
    (good.parent / 'model_final').unlink()
    nan_loss_after(monkeypatch, good_calls=0)
    with pytest.raises(utils.Stopped, match=r'3 steps in a row with a non-finite loss .*\(epoch 2, by step 3\)'):
        train_in(work, 'epoch_num=3', 'save_epoch=1', 'nonfinite_limit=3', f'resume={good}', out='good')
    assert digest(good) == before and not (good.parent / 'model_final').exists()


@pytest.mark.slow
def test_a_skipped_step_leaves_the_weights_unchanged(work, monkeypatch):
    nan_loss_after(monkeypatch, good_calls=0)
    ckpt = load(train_in(work, 'epoch_num=1', 'nonfinite_limit=100') / 'model_final')
    assert ckpt['skipped'] == 5 and ckpt['losses'] == []
    utils.seed_everything(0)
    model = DRAWModel(ckpt['params'])
    model.init_canvas(dataloader.mean_image(dataloader.load_data(ckpt['params'], log=lambda _: None).train_x,
                                            ckpt['params']))
    initial = model.state_dict()
    assert all(torch.equal(initial[k], w) for k, w in ckpt['model'].items())


def fail_writes(monkeypatch, code, name=''):
    """Every file write whose target's name contains name fails as write_atomic reports an
    OSError(code) (tested on the real writer below)."""
    real = utils.write_atomic

    def write(path, data):
        if name not in Path(path).name:
            return real(path, data)
        raise utils.WriteError(path, OSError(code, os.strerror(code)))
    monkeypatch.setattr(utils, 'write_atomic', write)


@pytest.mark.parametrize('write', [
    lambda path: utils.atomic_save({'x': torch.zeros(1000)}, path),
    lambda path: figures.save_grid(torch.rand(4, 1, 8, 8), path),
    lambda path: figures.save_gif([figures.grid(c) for c in torch.rand(3, 4, 1, 8, 8)], path),
    lambda path: figures.plot_losses(path, [3.0, 2.0, 1.0], 3, [1.5]),
])
@pytest.mark.parametrize('code, cause', [(errno.ENOSPC, 'No space left on device; free some space and run again'),
                                         (errno.EACCES, 'Permission denied'), (errno.EROFS, 'Read-only file system')])
def test_a_failed_write_names_the_file_and_keeps_the_previous_one(tmp_path, monkeypatch, write, code, cause):
    path = tmp_path / 'out.file'
    write(path)
    before = digest(path)
    calls = []

    def fsync(fd):  # the real writer, failing where a full disk fails: when the bytes must reach it
        calls.append(fd)
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(utils.os, 'fsync', fsync)
    with pytest.raises(utils.WriteError) as error:
        write(path)
    assert calls and str(error.value) == f"could not write {path}: {cause}. Any earlier out.file there is unchanged."
    assert digest(path) == before and os.listdir(tmp_path) == ['out.file']  # no temporary file left


def test_a_name_too_long_is_a_write_error(tmp_path):
    with pytest.raises(utils.WriteError, match='File name too long'):
        figures.save_grid(torch.rand(1, 1, 4, 4), tmp_path / ('x' * 300 + '.png'))
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_disk_full_at_a_checkpoint_stops_training_with_one_line(work, monkeypatch, capsys):
    checkpoints = train_in(work, 'epoch_num=1', 'save_epoch=1', out='run')
    before, earlier = digest(checkpoints / 'model_epoch_1'), load(checkpoints / 'model_final')['run']
    fail_writes(monkeypatch, errno.ENOSPC, name='model_epoch_1')
    with pytest.raises(SystemExit) as exit_:
        utils.run(lambda: train_in(work, 'epoch_num=1', 'save_epoch=1', out='run'))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 1 and len(err) == 1
    assert err[0] == (f"stopped: could not write {checkpoints / 'model_epoch_1'}: No space left on device; free "
                      f"some space and run again. Any earlier model_epoch_1 there is unchanged.")
    assert digest(checkpoints / 'runs' / earlier / 'model_epoch_1') == before  # the earlier run's, kept (runs.py)
    assert sorted(os.listdir(checkpoints)) == ['.lock', 'metrics.jsonl', 'runs']


def test_a_cache_that_cannot_be_written_is_a_warning(work, monkeypatch):
    fail_writes(monkeypatch, errno.ENOSPC)
    messages = []
    p = {**train.params, 'data_path': str(work / 'data'), 'cache_dir': str(work / 'cache')}
    data = dataloader.load_data(p, log=messages.append)
    assert len(data.train_x) + len(data.test_x) == 40
    assert any(m.startswith('warning: could not write') and m.endswith('Not cached: it is redone next time.')
               for m in messages)
    assert not (work / 'cache').exists() or not any((work / 'cache').iterdir())


def test_a_stale_cache_is_rebuilt(work):
    p = {**train.params, 'data_path': str(work / 'data'), 'cache_dir': str(work / 'cache')}
    first = dataloader.load_data(p, log=lambda m: None)
    csv = work / 'data' / 'data.csv'
    lines = csv.read_text().splitlines()
    csv.write_text('\n'.join(lines + lines[1:3]))  # two more rows: the source changed
    messages = []
    second = dataloader.load_data(p, log=messages.append)
    assert any('stale cache' in m for m in messages)
    assert len(second.train_x) + len(second.test_x) == len(first.train_x) + len(first.test_x) + 2
    assert len(list((work / 'cache').iterdir())) == 1  # replaced, not piled up


@pytest.mark.slow
@pytest.mark.parametrize('name', ['before_run_state_epoch_1', 'before_run_state_interrupted'])
def test_checkpoints_written_before_the_run_state_resume_and_end_where_a_run_ends(work, name):
    """Files of the code before training.RunState (commit a302880, its own tiny CSV and TINY settings,
    epoch_num=2; tests/fixtures/make_before_run_state.py wrote them): one after epoch 1, one stopped by
    SIGINT at epoch 2, step 2. Neither holds 'step'; each resumes and ends where today's run ends."""
    straight = load(train_in(work, 'epoch_num=2', out='straight') / 'model_final')
    resumed = load(train_in(work, f'resume={ROOT / "tests" / "fixtures" / name}', out='resumed') / 'model_final')
    assert 'step' not in load(ROOT / 'tests' / 'fixtures' / name) and resumed['step'] == 10
    assert_same_training(straight, resumed)
