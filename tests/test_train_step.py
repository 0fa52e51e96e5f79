"""train.py's training step (fused Adam, no host synchronisation, optional bf16, warm-ups and free
bits) against a plain eager step written out."""
import copy
import math
import subprocess
import sys
import types

import pytest
import torch

import schedules
import train
import training
import utils
from conftest import ROOT
from distributed import Objective
from draw_model import DRAWModel

P = {**train.params, 'T': 4, 'A': 12, 'B': 12, 'z_size': 6, 'read_N': 3, 'write_N': 3, 'enc_size': 24,
     'dec_size': 24, 'kl_warmup': 0, 'free_bits': 0.0}


def setup(**kw):
    torch.manual_seed(0)
    model = DRAWModel({**P, **kw})
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.999), fused=True)
    return model, optimizer


def train_two_epochs(model, optimizer, images, p, folder, averaged=None):
    """training.train over images (unlabelled) for epoch_num epochs, writing into folder."""
    labels, p = torch.zeros(len(images), dtype=torch.long), {**p, 'checkpoint_dir': str(folder), 'image_dir': str(folder)}
    data = types.SimpleNamespace(train_x=images, classes=[], glyphs=[], record=lambda p: {})
    run = training.Run(model, averaged, optimizer, training.RunState())
    training.train(run, Objective(model), data, (images, labels), (images[:8].float() / 255, labels[:8]), p, 0.0)


def batches(n=3):
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(8, 1, 12, 12, generator=g) > 0.6).float() for _ in range(n)]


def test_step_matches_a_plain_eager_step():
    model, optimizer = setup()
    reference = copy.deepcopy(model)
    plain = torch.optim.Adam(reference.parameters(), lr=1e-3, betas=(0.5, 0.999), foreach=False)
    for i, x in enumerate(batches()):
        torch.manual_seed(i)
        loss, ok = training.train_step(Objective(model), optimizer, x, None, P)
        torch.manual_seed(i)
        expected = reference.loss(x)[0]
        plain.zero_grad()
        expected.backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), P['clip'])
        plain.step()
        assert ok and torch.allclose(loss, expected.detach(), rtol=1e-6)
    for (name, w), w_ref in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(w, w_ref, rtol=1e-5, atol=1e-6, msg=name)


def test_kl_warm_up_and_free_bits_shape_the_gradient_but_the_reported_loss_is_the_elbo():
    """The objective is recon + w_t sum_t max(free_bits, KL_t), w_t rising linearly over kl_warmup
    steps; what train_step reports is the plain negative ELBO."""
    p = {**P, 'kl_warmup': 4, 'free_bits': 0.5}
    model, optimizer = setup()
    reference = copy.deepcopy(model)
    plain = torch.optim.Adam(reference.parameters(), lr=1e-3, betas=(0.5, 0.999), foreach=False)
    for step, x in enumerate(batches(5)):
        torch.manual_seed(step)
        loss, ok = training.train_step(Objective(model), optimizer, x, None, p, step)
        torch.manual_seed(step)
        recon, kl, _ = reference.elbo_terms(x)
        kl_t, recon = kl.mean(1), recon.sum(1)
        elbo = recon.mean() + kl_t.sum()
        objective = recon.mean() + min(1, (step + 1) / 4) * torch.clamp(kl_t, min=0.5).sum()
        assert ok and torch.allclose(loss, elbo.detach(), rtol=1e-6) and not torch.allclose(loss, objective)
        plain.zero_grad()
        objective.backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), p['clip'])
        plain.step()
    for (name, w), w_ref in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(w, w_ref, rtol=1e-5, atol=1e-6, msg=name)


def test_the_kl_weight_ramps_linearly_and_then_holds():
    p = {**P, 'kl_warmup': 10}
    assert [schedules.kl_weight(p, s) for s in (0, 3, 9, 10 ** 6)] == [0.1, 0.4, 1.0, 1.0]
    assert schedules.kl_weight({**p, 'kl_warmup': 0}, 0) == 1.0


def test_the_cosine_schedule_falls_from_the_learning_rate_to_zero_at_the_last_epoch():
    p = {**P, 'learning_rate': 2e-3, 'lr_schedule': 'cosine'}
    assert [schedules.learning_rate(p, s, 100) for s in (0, 50, 100, 150)] == pytest.approx([2e-3, 1e-3, 0, 0], abs=1e-12)
    assert schedules.learning_rate(p, 25, 100) == pytest.approx(1e-3 * (1 + math.cos(math.pi / 4)))
    assert {schedules.learning_rate({**p, 'lr_schedule': 'constant'}, s, 100) for s in (0, 99, 200)} == {2e-3}


def test_the_wsd_schedule_holds_the_rate_then_falls_linearly_to_zero_over_the_last_fifth_or_from_a_refit():
    p = {**P, 'learning_rate': 2e-3, 'lr_schedule': 'wsd'}
    assert [schedules.learning_rate(p, s, 100) for s in (0, 50, 80, 90, 95, 100, 150)] == \
        pytest.approx([2e-3, 2e-3, 2e-3, 1e-3, 5e-4, 0, 0], abs=1e-12)
    assert schedules.learning_rate(p, 3, None) == 2e-3  # a minutes=N run timing its first steps
    # a fall fitted again at step 90 of 100, at a quarter of the rate: linear from there to 0 at the total
    assert [schedules.learning_rate(p, s, 100, [90, 0.25]) for s in (80, 90, 95, 100, 150)] == \
        pytest.approx([2e-3, 5e-4, 2.5e-4, 0, 0], abs=1e-12)


def test_the_epochs_test_bound_is_the_whole_splits_elbo_in_batches_of_four_training_batches_and_its_precision():
    """40 images at batch_size 4: test batches of 16, 16 and 8, each its own noise; in bf16 the
    products round (the bound moves, a little), the sums stay fp32."""
    model, _ = setup()
    x = (torch.rand(40, 1, 12, 12, generator=torch.Generator().manual_seed(2)) > 0.6).float()
    y, p = torch.zeros(40, dtype=torch.long), {**P, 'batch_size': 4, 'precision': 'fp32'}
    torch.manual_seed(3)
    expected = sum(torch.stack(model.loss(x[i:i + 16])) * len(x[i:i + 16]) for i in (0, 16, 32)) / 40
    torch.manual_seed(3)
    assert training.epoch_test(model, x, y, p) == pytest.approx(expected.tolist(), abs=1e-4)
    torch.manual_seed(3)
    in_bf16 = training.epoch_test(model, x, y, {**p, 'precision': 'bf16'})
    assert in_bf16 != pytest.approx(expected.tolist(), abs=1e-4) and in_bf16 == pytest.approx(expected.tolist(), rel=2e-3)
    assert all(isinstance(v, float) for v in in_bf16)


def test_each_step_trains_at_the_schedules_rate(monkeypatch, tmp_path):
    """Two epochs of 3 steps: the Adam group's step size at each step is the schedule's."""
    seen, step = [], training.train_step

    def recording(objective, optimizer, *args):
        seen.append(optimizer.param_groups[0]['lr'])
        return step(objective, optimizer, *args)
    monkeypatch.setattr(training, 'train_step', recording)
    model, optimizer = setup()
    p, images = {**P, 'batch_size': 16, 'epoch_num': 2}, torch.zeros(48, 1, 12, 12, dtype=torch.uint8)
    train_two_epochs(model, optimizer, images, p, tmp_path)
    assert seen == pytest.approx([schedules.learning_rate(p, s, 6) for s in range(6)]) and seen[0] == p['learning_rate']


def test_bench_times_the_step_that_the_loop_runs(monkeypatch, tmp_path, capsys):
    """bench.py's train.py rows step through training.loop_step, as train.py's loop does: a batch of
    distinct images of its data, the schedule's rate, the moving average kept; and the epoch line's
    images per second are its steps' (the test bound after them, here 10 s on a fake clock, is not counted)."""
    import bench
    calls, step = [], training.loop_step

    def recording(run, objective, train, batch, p, total):
        calls.append((run, batch.tolist(), total))
        return step(run, objective, train, batch, p, total)
    monkeypatch.setattr(training, 'loop_step', recording)
    p = {**P, 'batch_size': 8, 'epoch_num': 3, 'ema': 0.99}
    timed = bench.make_step(p, torch.device('cpu'), 'train.py')
    for _ in range(2):
        timed()
    (run, first, total), (same, second, _) = calls
    assert run is same and run.state.step == 2 and run.averaged is not None and total == 3 * bench.DATA_IMAGES // 8
    assert len(set(first + second)) == 16 and run.optimizer.param_groups[0]['lr'] == schedules.learning_rate(p, 1, total)
    calls.clear()
    now = [0.0]
    monkeypatch.setattr(training, 'time', types.SimpleNamespace(perf_counter=lambda: now[0]))
    stepping, testing = training.train_step, training.epoch_test

    def one_second(*args):
        now[0] += 1.0
        return stepping(*args)

    def ten_seconds(*args):
        now[0] += 10.0
        return testing(*args)
    monkeypatch.setattr(training, 'train_step', one_second)
    monkeypatch.setattr(training, 'epoch_test', ten_seconds)
    model, optimizer = setup()
    train_two_epochs(model, optimizer, torch.zeros(48, 1, 12, 12, dtype=torch.uint8), {**P, 'batch_size': 16,
                                                                                     'epoch_num': 1}, tmp_path)
    assert len(calls) == 3 and '13.0 s (16 img/s)' in capsys.readouterr().out  # 3 steps of 16 images in 3 s


def test_the_moving_average_s_horizon_shrinks_in_proportion_to_the_learning_rate():
    """1 / (1 - decay) is 500 steps at ema=0.998 and the full rate, 250 at half the rate, 5 at 1%, and
    none (the average is the weights) from 0.2% down to 0; the first steps keep the warm-up rule."""
    p = {**P, 'ema': 0.998}
    horizons = [1 / (1 - schedules.ema_decay(p, 10 ** 6, rate)) for rate in (1.0, 0.5, 0.01)]
    assert horizons == pytest.approx([500, 250, 5], rel=1e-3)
    assert [schedules.ema_decay(p, 10 ** 6, rate) for rate in (0.002, 0.001, 0.0)] == pytest.approx([0, 0, 0], abs=1e-9)
    assert schedules.ema_decay(p, 0, 0.5) == 0.0 and schedules.ema_decay(p, 10, 0.5) == pytest.approx(0.1)


def test_the_moving_average_follows_the_weights_after_every_step(monkeypatch, tmp_path):
    """Over two epochs of 3 steps, averaged is decay_s * itself + (1 - decay_s) * the weights after
    step s, from the initial weights, where d_s = min(ema, (1 + s) / (10 + s)) and, in the rate's fall
    (wsd: the last fifth, here step 5 at 1/1.2 of the rate), decay_s = 1 - (1 - d_s) / rate: the horizon
    1 / (1 - decay_s) shrinks with the rate. Training is untouched."""
    after, step = [], training.train_step

    def recording(objective, *args):
        out = step(objective, *args)
        after.append([w.detach().clone() for w in objective.parameters()])
        return out
    monkeypatch.setattr(training, 'train_step', recording)
    model, optimizer = setup()
    averaged = copy.deepcopy(model).requires_grad_(False)
    expected = [w.detach().clone() for w in model.parameters()]
    p, g = {**P, 'batch_size': 8, 'epoch_num': 2, 'ema': 0.3}, torch.Generator().manual_seed(2)
    images = torch.randint(0, 256, (24, 1, 12, 12), generator=g, dtype=torch.uint8)
    train_two_epochs(model, optimizer, images, p, tmp_path, averaged)
    decays = [schedules.ema_decay(p, s, schedules.learning_rate(p, s, 6) / p['learning_rate']) for s in range(6)]
    assert decays == pytest.approx([0.1, 2 / 11, 0.25, 0.3, 0.3, 1 - 0.7 * 1.2])  # the rule, then ema, then the fall
    for weights, decay in zip(after, decays):
        expected = [decay * e + (1 - decay) * w for e, w in zip(expected, weights)]
    for (name, a), e, w in zip(averaged.named_parameters(), expected, model.parameters()):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-7, msg=name)
        assert not torch.equal(a, w), name
    assert all(torch.equal(w, last) for w, last in zip(model.parameters(), after[-1]))


def test_a_non_finite_step_changes_nothing_not_even_adams_state():
    model, optimizer = setup()
    training.train_step(Objective(model), optimizer, batches(1)[0], None, P)
    weights, state = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    x = batches(1)[0]
    x[0, 0, 0, 0] = float('nan')
    loss, ok = training.train_step(Objective(model), optimizer, x, None, P)
    assert not ok and not torch.isfinite(loss)
    assert all(torch.equal(weights[k], w) for k, w in model.state_dict().items())
    after = optimizer.state_dict()['state']
    for k, s in state['state'].items():
        assert all(torch.equal(s[key], after[k][key]) for key in ('step', 'exp_avg', 'exp_avg_sq'))


def test_bf16_computes_nearly_the_same_loss_and_gradient():
    grads = {}
    for precision in ('fp32', 'bf16'):
        model, optimizer = setup()
        torch.manual_seed(0)
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=precision == 'bf16'):
            loss = model.loss(batches(1)[0])[0]
        loss.backward()
        grads[precision] = (loss.item(), torch.cat([w.grad.flatten() for w in model.parameters()]))
    (l32, g32), (l16, g16) = grads['fp32'], grads['bf16']
    assert abs(l16 - l32) < 0.02 * l32
    assert torch.nn.functional.cosine_similarity(g32, g16.float(), dim=0) > 0.98


def test_precision_auto_is_bf16_only_where_native(tmp_path, monkeypatch):
    cpu = torch.device('cpu')
    for flags, native in (('fpu sse avx2 fma', None), ('fpu avx512f avx512_bf16', 'AVX512_BF16'),
                          ('fpu amx_tile amx_bf16', 'AMX_BF16')):
        (tmp_path / 'cpuinfo').write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        found = utils.native_bf16(cpu, tmp_path / 'cpuinfo')
        assert (found is None) if native is None else native in found
    assert utils.native_bf16(cpu, tmp_path / 'absent') is None
    monkeypatch.setattr(utils, 'native_bf16', lambda device: None)
    assert utils.resolve_precision('auto', cpu)[0] == 'fp32'
    with pytest.raises(utils.InputError, match='precision=bf16: cpu has no native bfloat16'):
        utils.resolve_precision('bf16', cpu)
    monkeypatch.setattr(utils, 'native_bf16', lambda device: 'a CPU with AVX512_BF16')
    assert [utils.resolve_precision(name, cpu)[0] for name in ('auto', 'bf16', 'fp32')] == ['bf16', 'bf16', 'fp32']


@pytest.mark.slow
def test_the_scripts_flush_the_subnormals_that_the_filterbanks_underflow_into():
    if not torch.set_flush_denormal(False):
        pytest.skip('this CPU cannot flush subnormal floats to zero (torch.set_flush_denormal needs x86 with SSE3)')
    log_f = -torch.arange(120.0).view(1, 1, -1)  # Eq. 25's exponent for pixels ever farther from the filter
    f = DRAWModel(P).normalise(log_f)
    assert int(((f > 0) & (f < torch.finfo(torch.float32).tiny)).sum()) > 10
    # in a fresh process, as a script starts: its imports, then utils.run, then work on every thread
    check = ("import numpy as np, torch, bench, evaluate, generate, train, utils, webpage\n"
             "x = torch.from_numpy(np.full(10 ** 6, 1e-39, dtype=np.float32))\n"
             "utils.run(lambda: None)\n"
             "print(torch.get_num_threads(), int(((x * 1.0) != 0).sum()))")
    out = subprocess.run([sys.executable, '-c', check], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    threads, left = map(int, out.stdout.split())
    assert left == 0, f'{left} subnormals kept by some of the {threads} threads'
