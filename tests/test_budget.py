"""minutes=N: the steps fitted to a measured speed, on an injected clock; the schedule over them; resume."""
import math
import os
import random
import re
import signal

import pytest

import budget
import schedules
import train
import training
import utils
from conftest import write_tiny_csv
from test_reliability import assert_same_training, load, train_in

# the tiny CSV: 34 train images, batch 8: 5 steps an epoch, the first epoch's 2 untimed and 3 timed
BUDGETED = ['kl_warmup=5', 'save_epoch=10']
STEP, TEST, GIF = 1.0, 0.5, 2.0  # seconds on the injected clock: a training step, a test bound, a GIF


@pytest.fixture
def clock(tmp_path, monkeypatch):
    """An injected clock that only training steps (STEP), test bounds (TEST) and GIFs (GIF) move; the
    tiny CSV in tmp_path. Yields the clock's reading, a one-item list."""
    write_tiny_csv(tmp_path)
    now = [0.0]
    monkeypatch.setattr(budget, 'clock', lambda: now[0])

    def costing(seconds, work):
        def run(*args, **kwargs):
            now[0] += seconds
            return work(*args, **kwargs)
        return run
    for name, seconds in (('train_step', STEP), ('epoch_test', TEST), ('draw_gif', GIF)):
        monkeypatch.setattr(training, name, costing(seconds, getattr(training, name)))
    yield now


@pytest.mark.slow
def test_fit_takes_the_most_steps_whose_rest_ends_by_the_deadline(monkeypatch):
    """Bisection against counting up, over random costs: steps, a test and plot after every epoch (the
    last partial one too), a checkpoint and GIF every save_epoch epochs and at the end."""
    rng = random.Random(0)
    monkeypatch.setattr(budget, 'clock', lambda: 100.0)
    for _ in range(200):
        costs = budget.Costs(rng.uniform(0.01, 2), rng.uniform(0, 20), rng.uniform(0, 30))
        per_epoch, save_epoch, done = rng.randint(1, 50), rng.randint(1, 5), rng.randint(0, 30)
        plan = budget.Budget(rng.uniform(0.1, 20), start=100.0 - rng.uniform(0, 60))
        total = plan.fit(done, costs, per_epoch, save_epoch)
        left = plan.left()
        finished = done // per_epoch  # epochs whose test, plot and save are behind
        rest = lambda n: (n - done) * costs.step + (math.ceil(n / per_epoch) - finished) * costs.epoch + \
            (math.ceil(n / per_epoch) // save_epoch + 1 - finished // save_epoch) * costs.save
        expected = done
        while rest(expected + 1) <= left:
            expected += 1
        assert total == expected


@pytest.mark.slow
def test_the_run_fits_its_budget_and_the_rate_falls_to_zero_at_its_last_step(clock, tmp_path, capsys):
    """minutes=0.5 (30 s) on the injected clock: 5 steps timed (5 s) and the timing's test and GIF (2.5 s)
    leave 22.5 s, which hold 18 more steps (18 s), 5 epoch tests (2.5 s) and the final GIF (2 s): 23 steps,
    4 epochs and 3 steps of a fifth. The run ends at the deadline, not after it."""
    ckpt = load(train_in(tmp_path, 'minutes=0.5', *BUDGETED) / 'model_final')
    out = capsys.readouterr().out
    assert 'minutes=0.5: 23 steps, 4.6 epochs at 8 img/s' in out and ckpt['total_steps'] == 23
    assert clock[0] == 30.0 and len(ckpt['losses']) == 23 == ckpt['step'] and ckpt['epoch'] == 5
    assert 'epoch 5/5' in out and '0:02 left' in out and 'epoch 6' not in out  # then the final GIF, 2 s
    p = {**train.params, **ckpt['params']}
    last = ckpt['optimizer']['param_groups'][0]['lr']
    assert p['lr_schedule'] == 'wsd' and last == schedules.learning_rate(p, 22, 23) == pytest.approx(p['learning_rate'] / 4.6)
    assert schedules.learning_rate(p, 23, 23) == 0  # where the fall ends: the end of the last step


@pytest.mark.slow
def test_a_run_whose_steps_slow_down_is_fitted_again_and_still_ends_by_its_deadline(clock, tmp_path, capsys, monkeypatch):
    """After the first epoch every step takes 2 s, not the 1 s timed. At epoch 3's start, 10 steps done at
    18.5 s, the 11.5 s left hold 4 more steps, a test and the final GIF: 14 steps in all, not 23, and the
    rate, held at learning_rate until then under either total, falls over the last fifth of the 14."""
    step, steps = training.train_step, [0]

    def slower(*args, **kwargs):
        steps[0] += 1
        clock[0] += 1.0 if steps[0] > 5 else 0.0
        return step(*args, **kwargs)
    monkeypatch.setattr(training, 'train_step', slower)
    ckpt = load(train_in(tmp_path, 'minutes=0.5', *BUDGETED) / 'model_final')
    out = capsys.readouterr().out
    assert 'minutes=0.5: 23 steps' in out and "minutes=0.5: 14 steps now (2.8 epochs), from the last epoch's 2.000 s a " \
        "step and 0.5 s of test and plot, to end by 0:30." in out
    assert ckpt['total_steps'] == 14 == ckpt['step'] == len(ckpt['losses']) and ckpt['epoch'] == 3 and clock[0] == 29.0
    assert ckpt['params']['epoch_num'] == train.params['epoch_num']  # the params as given: the length is the state's
    p = {**train.params, **ckpt['params']}
    assert ckpt['optimizer']['param_groups'][0]['lr'] == schedules.learning_rate(p, 13, 14) == pytest.approx(2e-3 / 2.8)


@pytest.mark.slow
def test_a_slowdown_in_the_rate_s_fall_is_fitted_again_and_the_rate_falls_on_from_where_it_was(clock, tmp_path, monkeypatch):
    """minutes=1 (60 s): 48 steps once epoch 1's costs are known, the rate falling from step 38.4. Every
    step after the 36th takes 1.5 s.
    At epoch 9's start, 40 steps done at 0.833 of the rate (8 / 9.6), epoch 8's 1.4 s a step fit 45 steps
    in all: from step 40 the rate falls on linearly from 0.833 to 0 at step 45 (steps 40 to 44: 0.833 to
    0.167), never jumping, and the run ends at 58.5 s. A run interrupted after that and resumed ends where it ends."""
    step, steps, rates = training.train_step, [0], []

    def slower(objective, optimizer, *args, **kwargs):
        steps[0] += 1
        clock[0] += 0.5 if steps[0] > 36 else 0.0
        rates.append(optimizer.param_groups[0]['lr'] / 2e-3)
        if steps[0] == interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)
        return step(objective, optimizer, *args, **kwargs)
    monkeypatch.setattr(training, 'train_step', slower)
    interrupt_at = None
    straight = load(train_in(tmp_path, 'minutes=1', *BUDGETED, out='straight') / 'model_final')
    assert straight['total_steps'] == 45 and straight['fall'] == [40, pytest.approx(8 / 9.6)] and clock[0] == 58.5
    assert rates == pytest.approx([1.0] * 39 + [9 / 9.6] + [8 / 9.6 * (45 - s) / 5 for s in range(40, 45)])
    clock[0], steps[0], interrupt_at = 0.0, 0, 43
    with pytest.raises(utils.Stopped):
        train_in(tmp_path, 'minutes=1', *BUDGETED, out='resumed')
    interrupted = tmp_path / 'resumed' / 'checkpoint' / 'model_interrupted'
    assert load(interrupted)['fall'] == straight['fall']
    resumed = load(train_in(tmp_path, f'resume={interrupted}', out='resumed') / 'model_final')
    assert resumed['total_steps'] == 45 and resumed['fall'] == straight['fall']
    assert_same_training(straight, resumed)


@pytest.mark.slow
def test_a_resumed_budget_run_keeps_its_steps_and_ends_where_the_uninterrupted_one_ends(clock, tmp_path, monkeypatch):
    straight = load(train_in(tmp_path, 'minutes=0.5', *BUDGETED, out='straight') / 'model_final')
    clock[0], steps, step = 0.0, [0], training.train_step

    def ctrl_c_at_step_12(*args, **kwargs):
        steps[0] += 1
        if steps[0] == 12:
            os.kill(os.getpid(), signal.SIGINT)
        return step(*args, **kwargs)
    monkeypatch.setattr(training, 'train_step', ctrl_c_at_step_12)
    with pytest.raises(utils.Stopped):
        train_in(tmp_path, 'minutes=0.5', *BUDGETED, out='resumed')
    interrupted = tmp_path / 'resumed' / 'checkpoint' / 'model_interrupted'
    assert load(interrupted)['total_steps'] == 23
    clock[0] = 1e6  # long past the first start's deadline: the steps are fixed, not the time
    resumed = load(train_in(tmp_path, f'resume={interrupted}', out='resumed') / 'model_final')
    assert resumed['total_steps'] == 23
    assert_same_training(straight, resumed)
    with pytest.raises(utils.InputError, match='finished the 23 steps that minutes=0.5 fixed'):
        train_in(tmp_path, f'resume={tmp_path / "resumed" / "checkpoint" / "model_final"}', out='resumed')
    with pytest.raises(utils.InputError, match='keeps its length: the 23 steps that minutes=0.5 fixed; remove'):
        train_in(tmp_path, f'resume={interrupted}', 'minutes=5', out='resumed')


@pytest.mark.slow
def test_a_budget_with_no_step_left_is_refused_and_a_short_one_shortens_the_warm_up(clock, tmp_path, capsys):
    """batch 4: 9 steps an epoch, 7 of them run before the decision (2 untimed, 5 timed; clock 9.5 s
    with the timing's test and GIF). 6 s hold no step more. 30 s hold 23 steps (as above), fewer than twice
    the KL's warm-up of 250: it is shortened to half the run, and the run ends on time."""
    with pytest.raises(utils.InputError, match=r"minutes=0.1 is too short here: after 10 s of setting up and 7 steps "
                                               r"timed, no step of 1.00 s is left. Give minutes=1 or more."):
        train_in(tmp_path, 'minutes=0.1', 'batch_size=4', *BUDGETED)
    capsys.readouterr()
    clock[0] = 0.0
    ckpt = load(train_in(tmp_path, 'minutes=0.5', 'save_epoch=10', out='short') / 'model_final')
    assert re.search(r"minutes=0.5: 23 steps, 4.6 epochs at 8 img/s .*, to end by 0:30. The KL's warm-up is "
                     r"shortened to half the run, 11 steps.\n", capsys.readouterr().out)
    assert ckpt['params']['kl_warmup'] == 11 and ckpt['total_steps'] == 23 and clock[0] == 30.0
    with pytest.raises(utils.InputError, match='minutes=0.5 and epoch_num=3: give one of them'):
        train_in(tmp_path, 'minutes=0.5', 'epoch_num=3')
    epochs = train_in(tmp_path, 'epoch_num=1', out='epochs') / 'model_final'
    with pytest.raises(utils.InputError, match=r'keeps its length: epoch_num=1 \(raise it to train on\); remove minutes='):
        train_in(tmp_path, f'resume={epochs}', 'minutes=1', out='epochs')
