"""train.py and generate.py end to end, as a user runs them, with tiny settings."""
import re
import subprocess

import imageio.v3 as iio
import pytest
import torch

import checkpoints
import generate
import train
import utils
from conftest import ROOT, TINY, original_checkpoint, run
from draw_model import DRAWModel


def gif_frames(path):
    return len(iio.imread(path, index=None, extension='.gif'))


@pytest.mark.slow
def test_train_writes_every_output(trained):
    work, stdout = trained
    bound, recon, kl = map(float, re.search(r'test bound (\S+) nats \(reconstruction (\S+) \+ KL (\S+)\)',
                                             stdout.splitlines()[-2]).groups())
    assert 'epoch 2/2' in stdout and abs(bound - recon - kl) < 0.02 and kl > 0
    for name in ('model_epoch_1', 'model_epoch_2', 'model_final'):
        assert (work / 'checkpoint' / name).is_file()
    assert iio.imread(work / 'images' / 'Training_Data.png').shape == (2 * 206, 2 * 206)  # 34 images: 6x6 grid of 32 px + 2 px borders
    assert iio.imread(work / 'images' / 'Loss_Curve.png').ndim == 3
    for epoch in (1, 2):
        assert gif_frames(work / 'images' / f'draw_epoch_{epoch}.gif') == 3  # one frame per glimpse


@pytest.mark.slow
def test_checkpoint_is_self_describing_and_safe(trained):
    work, _ = trained
    ckpt = torch.load(work / 'checkpoint' / 'model_final', weights_only=True)
    assert ckpt['epoch'] == 2 and len(ckpt['test_bounds']) == 2 and len(ckpt['losses']) == 2 * 3  # 34 images, batch 16
    assert ckpt['params']['T'] == 3 and ckpt['classes'] == ['character_01_ka', 'digit_0']
    assert all(isinstance(v, (int, float, str, bool)) for v in ckpt['params'].values())
    model = DRAWModel(ckpt['params'])
    model.load_state_dict(ckpt['model'])


@pytest.mark.slow
def test_generate_draws_from_the_checkpoint(trained):
    work, _ = trained
    out = run('generate.py', '-load_path', 'checkpoint/model_final', '-num_output', '5', '-seed', '1',
              '-out_dir', 'gen', cwd=work)
    assert out.returncode == 0, out.stderr
    assert iio.imread(work / 'gen' / 'Generated_Image.png').shape == (2 * 70, 2 * 104)  # 3 columns, 2 rows
    assert gif_frames(work / 'gen' / 'draw_generate.gif') == 3
    generate.main(['-load_path', str(work / 'checkpoint' / 'model_final'), '-t', '7', '-num_output', '1',
                   '-out_dir', str(work / 'gen7'), '-seed', '1'])
    assert gif_frames(work / 'gen7' / 'draw_generate.gif') == 7


@pytest.mark.slow
def test_generate_is_repeatable_with_a_seed(trained, tmp_path):
    work, _ = trained
    for name in ('a', 'b'):
        generate.main(['-load_path', str(work / 'checkpoint' / 'model_final'), '-seed', '5',
                       '-out_dir', str(tmp_path / name)])
    assert (tmp_path / 'a' / 'Generated_Image.png').read_bytes() == (tmp_path / 'b' / 'Generated_Image.png').read_bytes()


@pytest.mark.slow
def test_training_is_reproducible(trained, tmp_path):
    work, _ = trained
    (tmp_path / 'data').symlink_to(work / 'data')
    train.main(['epoch_num=2', 'save_epoch=1', *TINY, f'data_path={work / "data"}',
                f'checkpoint_dir={tmp_path / "ck"}', f'image_dir={tmp_path / "im"}', f'cache_dir={tmp_path / "c"}'])
    a = torch.load(work / 'checkpoint' / 'model_final', weights_only=True)['model']
    b = torch.load(tmp_path / 'ck' / 'model_final', weights_only=True)['model']
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_builtin_default_is_announced_and_trains(tmp_path):
    out = run('train.py', 'epoch_num=1', 'T=2', 'enc_size=8', 'dec_size=8', 'z_size=2', 'read_N=2', 'write_N=2',
              'batch_size=256', cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert 'data/ does not exist: using the built-in Devanagari set' in out.stdout
    assert "put Kaggle's data.csv" in out.stdout
    assert '46 classes' in out.stdout and (tmp_path / 'checkpoint' / 'model_final').is_file()


@pytest.mark.slow
def test_original_checkpoint_loads_and_generates(tmp_path):
    weights = original_checkpoint(tmp_path / 'model_epoch_50')
    model, params, _ = checkpoints.load_model(tmp_path / 'model_epoch_50', torch.device('cpu'))
    assert params['original_layout'] and params['channel'] == 3 and 'device' not in params
    assert all(torch.equal(model.state_dict()[k], w) for k, w in weights.items())
    out = run('generate.py', '-load_path', str(tmp_path / 'model_epoch_50'), '-num_output', '4', '-t', '5',
              '-out_dir', str(tmp_path / 'out'), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert iio.imread(tmp_path / 'out' / 'Generated_Image.png').shape == (2 * 70, 2 * 70, 3)
    assert gif_frames(tmp_path / 'out' / 'draw_generate.gif') == 5


@pytest.mark.slow
def test_checkpoint_saved_on_a_gpu_loads_on_a_cpu(trained, tmp_path, monkeypatch):
    """A GPU run's file records 'cuda:0' as every tensor's location; saving with that tag mimics one."""
    work, _ = trained
    ckpt = torch.load(work / 'checkpoint' / 'model_final', map_location='cpu', weights_only=True)
    with monkeypatch.context() as m:
        m.setattr(torch.serialization, 'location_tag', lambda storage: 'cuda:0')
        torch.save(ckpt, tmp_path / 'from_gpu')
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match='CUDA'):
            torch.load(tmp_path / 'from_gpu', weights_only=True)  # what a plain torch.load does here
    model, _, _ = checkpoints.load_model(tmp_path / 'from_gpu', torch.device('cpu'))
    assert all(torch.equal(model.state_dict()[k], w) for k, w in ckpt['model'].items())


@pytest.mark.slow
def test_bench_prints_the_side_by_side_table(tmp_path):
    out = run('bench.py', '--windows', '2', '--steps', '1', '--warmup', '0', 'T=2', 'enc_size=8', 'dec_size=8',
              'batch_size=4', '--vs', 'write_N=3,read_N=3', '--vs', 'precision=fp32', '--vs', 'batch_size=8', cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    speeds, _, shares = out.stdout.partition("where a step's time goes")
    rows = {line.split('  ')[0]: line.split() for line in speeds.splitlines()}
    native = utils.native_bf16(torch.device('cpu'))
    assert {'2019-style', 'train.py (fp32)'} <= set(rows) and ('train.py (bf16)' in rows) == bool(native)
    assert float(rows['2019 code'][-3]) > float(rows['2019-style'][-3])  # its own sizes: LSTMs of 400 units
    changed = f"train.py ({'bf16' if native else 'fp32'}, write_N=3,read_N=3)"  # --vs: the same step, other params
    assert float(rows[changed][-3]) != float(rows['train.py (fp32)'][-3])  # its own arithmetic: other sizes
    assert 'train.py (fp32, precision=fp32)' in rows  # a precision it asks for is the one it runs in
    other_batch = f"train.py ({'bf16' if native else 'fp32'}, batch_size=8)"  # its own batch: per image the same
    assert float(rows[other_batch][-3]) == pytest.approx(float(rows['train.py (fp32)'][-3]))
    found = re.search(r"test bound, 1,000 images: \S+ s as train.py computes it \((\w+), batches of 16\), \S+ s in fp32 "
                      r"batches of 4 \(median of 3\); the bound (\S+) and (\S+) nats", out.stdout)
    assert found and float(found[2]) == pytest.approx(float(found[3]), rel=0.01)  # other batches: other noise
    refused = run('bench.py', '--vs', 'device=cuda:1', cwd=tmp_path)
    assert refused.returncode == 2 and refused.stderr.strip() == (
        'error: --vs device=cuda:1: every variant runs on the same device; run bench.py once per device.')
    assert native or 'train.py (bf16): not timed, bf16 is not native on cpu' in out.stdout  # and not run
    assert 'subnormal floats flushed to zero, as train.py runs' in out.stdout  # utils.run, every row
    assert rows['2019-style'][3] == '1.00x' and re.search(r'matrix-product peak: fp32 [\d,]+ GFLOP/s', out.stdout)
    for name in {'2019-style', 'train.py (fp32)', 'train.py (bf16)', changed} & set(rows):
        assert float(rows[name][-3]) > 0 and rows[name][-1].endswith('%')  # GFLOP/image, ..., share of peak
    assert re.search(r'generation: 64 samples \+ PNG \+ GIF in \d+\.\d\d s', out.stdout)
    compiled = [f"train.py ({'bf16' if native else 'fp32'}, {region} compiled)" for region in ('glimpse', 'step')]
    eager = 'train.py (bf16)' if native else 'train.py (fp32)'
    for name in compiled:  # what compile=auto chooses between
        assert float(rows[name][-3]) == pytest.approx(float(rows[eager][-3]))  # the same arithmetic, counted
    variant = ('2019-style', 'train.py (')
    spent = {line.split('  ')[0]: line.split()[-7:] for line in shares.splitlines() if line.startswith(variant)}
    assert set(spent) == {name for name in rows if name.startswith(variant)}  # every step timed, profiled
    for name, (calls, products, batched, fused, other, _, share) in spent.items():
        shares_of_step = [float(v.rstrip('%')) for v in (products, fused, other)]
        assert sum(shares_of_step) == pytest.approx(100, abs=2) and float(batched.rstrip('%')) <= shares_of_step[0]
        assert (shares_of_step[1] > 0) == (name in compiled) and share.endswith('%')  # fused kernels: compiled only
        if name in compiled:
            assert int(calls.replace(',', '')) < int(spent[eager][0].replace(',', '')) / 2  # fewer operators
    for region in ('the glimpse', 'the whole step'):
        assert re.search(rf'compile time of {region}: \d+ s cold \(empty caches\), \d+ s warm \(a second process\)',
                         out.stdout)


@pytest.mark.slow
def test_checkpoint_from_before_the_canvas_bias_loads_resumes_and_draws(trained, tmp_path):
    """Files of earlier versions have no canvas_bias (c_0 = 0): they rebuild without one."""
    work, _ = trained
    ckpt = torch.load(work / 'checkpoint' / 'model_epoch_1', map_location='cpu', weights_only=True)
    ckpt['model'] = ckpt.pop('training_model')  # they hold the trained weights only
    for key in ('canvas_bias', 'kl_warmup', 'free_bits', 'lr_schedule', 'ema'):
        del ckpt['params'][key]
    del ckpt['model']['canvas_bias']
    group, state = ckpt['optimizer']['param_groups'][0], ckpt['optimizer']['state']
    ckpt['optimizer']['state'] = {i - 1: s for i, s in state.items() if i > 0}  # canvas_bias, the model's own, is first
    group['params'] = group['params'][:-1]
    torch.save(ckpt, tmp_path / 'older')
    model, params, _ = checkpoints.load_model(tmp_path / 'older', torch.device('cpu'))
    assert model.canvas_bias is None and params['canvas_bias'] is False
    out = run('generate.py', '-load_path', str(tmp_path / 'older'), '-num_output', '4', '-out_dir', str(tmp_path), cwd=work)
    assert out.returncode == 0, out.stderr
    out = run('train.py', 'epoch_num=2', *TINY, f'resume={tmp_path / "older"}', f'checkpoint_dir={tmp_path / "ck"}',
              f'image_dir={tmp_path / "im"}', cwd=work)
    assert out.returncode == 0 and 'epoch 2/2' in out.stdout, out.stderr
    resumed = torch.load(tmp_path / 'ck' / 'model_final', weights_only=True)
    assert 'training_model' not in resumed
    assert tuple(resumed['params'][k] for k in ('canvas_bias', 'kl_warmup', 'free_bits', 'lr_schedule', 'ema')) == \
        (False, 0, 0.0, 'constant', 0.0)  # as it was trained


@pytest.mark.slow
def test_every_file_the_scripts_write_stays_out_of_git():
    if not (ROOT / '.git').exists():
        pytest.skip('not a git checkout')
    written = ['images/Training_Data.png', 'images/Loss_Curve.png', 'images/draw_epoch_10.gif',
               'images/Generated_Image.png', 'images/draw_generate.gif', 'images/Reconstruction.png',
               'images/draw_reconstruct.gif', 'images/kl_per_glimpse.png', 'images/Transfer.png', 'draw.html',
               'checkpoint/model_final',
               'checkpoint/model_epoch_10', 'checkpoint/model_interrupted', 'data/.cache/csv-0123.pt', 'data/data.csv']
    out = subprocess.run(['git', 'check-ignore', '--no-index', *written], cwd=ROOT, capture_output=True, text=True)
    assert sorted(out.stdout.split()) == sorted(written)
