"""DRAW's training loop, as train.py runs it: the step (the warmed-up, free-bits objective, clipping,
fused Adam, the weights' moving average), the learning-rate and KL-weight schedules, epochs over the
data with their test bound, GIFs and checkpoints, a minutes=N run's length fixed from its measured
speed (budget.py), and the training state that checkpoints keep for an exact resume."""
import io
import math
import signal
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

import budget
import distributed
import figures
import utils
from dataloader import to_input

LOG_EVERY = 20  # steps between reads of the loss from the device (progress bar, non-finite check)
TEST_BATCHES = 4  # the test bound's batches, in training batches
WSD_DECAY = 0.2  # lr_schedule=wsd: the share of the last steps over which the rate falls to 0


def log(message):
    if distributed.rank() == 0:
        print(message)


def kl_weight(p, step):
    """The KL's weight in the training objective at step, counted from 0 over the whole run: a linear
    warm-up over kl_warmup steps, then 1."""
    return min(1.0, (step + 1) / p['kl_warmup']) if p['kl_warmup'] else 1.0


def learning_rate(p, step, total, fall=None):
    """The step size of step (from 0) of a run of total steps, by lr_schedule: wsd, learning_rate held,
    then falling linearly to 0 over the last WSD_DECAY of the steps (warm-up, stable, decay, here without
    the warm-up: Hu et al. 2024, Hägele et al. 2024), or, from step d of a fall = (d, r) that a minutes=N
    run's refit_length set, linearly from r * learning_rate at d to 0 at total; cosine, along a half
    cosine from step 0 to 0 at the end (Loshchilov and Hutter 2017, SGDR without restarts); or constant.
    Where total is not yet known (a minutes=N run timing its first steps), the schedule's start."""
    if p['lr_schedule'] == 'constant' or total is None:
        return p['learning_rate']
    if p['lr_schedule'] == 'wsd':
        if fall and step >= fall[0]:
            d, r = fall
            return p['learning_rate'] * r * (total - min(step, total)) / (total - d)
        return p['learning_rate'] * min(1.0, (total - min(step, total)) / (WSD_DECAY * total))
    return p['learning_rate'] * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def ema_decay(p, step, rate=1.0):
    """The weights' moving average's decay at update step (from 0, over the whole run), whose learning
    rate is rate times learning_rate: d = ema, or (1 + step) / (10 + step) while that is less
    (TensorFlow's ExponentialMovingAverage rule), so the average soon forgets the initial weights; its
    horizon, 1 / (1 - d) steps, shrinks in proportion to the rate as the schedule lowers it, so the
    average lags the annealed weights no more than it smooths them: max(0, 1 - (1 - d) / rate)."""
    d = min(p['ema'], (1 + step) / (10 + step))
    return max(0.0, 1 - (1 - d) / rate) if rate > 0 else 0.0


@torch.no_grad()
def update_average(averaged, weights, decay):
    """averaged's parameters := decay * themselves + (1 - decay) * weights (Polyak averaging, as an
    exponential moving average), on the device, without host synchronisation."""
    torch._foreach_lerp_(list(averaged.parameters()), list(weights), 1 - decay)  # one kernel for all weights


def train_step(objective, optimizer, x, y, p, step=0):
    """Update number step through objective (distributed.objective(model)), with no host
    synchronisation: returns the negative ELBO (averaged over the processes; not the warm-up or
    free-bits objective the gradient came from) and whether it, the objective and the gradient norm
    are finite, device tensors. A non-finite step changes nothing: fused Adam skips it on the device
    (its found_inf, as under a GradScaler), moments and step count included."""
    with utils.autocast(x.device, p['precision']):
        trained, loss = objective(x, y, kl_weight(p, step), p['free_bits'])
    optimizer.zero_grad(set_to_none=True)
    trained.backward()
    norm = torch.nn.utils.clip_grad_norm_(objective.parameters(), p['clip'])  # of the averaged gradient
    loss = distributed.mean(loss.detach().float())
    ok = torch.isfinite(loss + trained.detach() + norm)
    optimizer.found_inf = (~ok).float()
    optimizer.step()
    return loss, ok


def run_length(p, state, per_epoch):
    """The number of steps in the whole run: epoch_num epochs, or what a minutes=N run fixed (None
    while it times its first steps)."""
    return state['total_steps'] or (None if p['minutes'] else p['epoch_num'] * per_epoch)


def train_steps(objective, optimizer, train_x, train_y, p, state, bar, stop, averaged=None, until=None, left=None):
    """The rest of the epoch: batches state['batch'] onward of this process's shard of state['order'],
    until the epoch ends, the run's last step, batch until (when given) or a stop signal; after every
    step the moving average of the weights, averaged (a model, or None), follows them. Losses stay on
    the device and are read every LOG_EVERY steps (or nonfinite_limit, if fewer), when the progress bar
    (with the seconds left(), when given) and the non-finite count are brought up to date. Returns this
    call's losses and whether a stop signal ended it."""
    bs, losses, oks, mine = p['batch_size'], [], [], distributed.shard(state['order'])
    per_epoch = -(-len(mine) // bs)
    first_step, total = state['epoch'] * per_epoch, run_length(p, state, per_epoch)  # in the whole run
    last = min(per_epoch, per_epoch if until is None else until, total - first_step if total else per_epoch)
    every = min(LOG_EVERY, p['nonfinite_limit'])  # a run of nonfinite_limit bad steps is seen within as many more
    in_a_row = torch.tensor(state['bad_in_a_row'], device=train_x.device)
    longest, stopped = in_a_row.clone(), False
    while state['batch'] < last:
        if distributed.agree(stop.received, train_x.device, now=len(losses) % every == 0):
            stopped = True
            break
        batch = mine[state['batch'] * bs:(state['batch'] + 1) * bs]
        lr = learning_rate(p, first_step + state['batch'], total, state['fall'])
        for group in optimizer.param_groups:
            group['lr'] = lr
        loss, ok = train_step(objective, optimizer, to_input(train_x[batch], p['binarize'], p['channel']),
                              train_y[batch], p, first_step + state['batch'])
        if averaged is not None:
            update_average(averaged, objective.parameters(),
                           ema_decay(p, first_step + state['batch'], lr / p['learning_rate']))
        in_a_row = (in_a_row + 1) * ~ok
        longest = torch.maximum(longest, in_a_row)
        losses.append(loss)
        oks.append(ok)
        state['batch'] += 1
        bar.update(1)
        if len(losses) % every == 0 or state['batch'] >= last:
            recent = torch.stack(losses[-every:])[torch.stack(oks[-every:])]
            shown = {'left': budget.clock_time(left())} if left else {}
            bar.set_postfix(loss=f'{recent.mean().item():.1f}' if len(recent) else 'non-finite', **shown)
            state['bad_in_a_row'] = int(in_a_row)
            if longest >= p['nonfinite_limit']:
                state['skipped'] += int((~torch.stack(oks)).sum())
                raise utils.Stopped(f"{int(longest)} steps in a row with a non-finite loss or gradient "
                                    f"(epoch {state['epoch'] + 1}, by step {state['batch']}), none applied. "
                                    f"Checkpoints already written are intact; try a lower learning_rate or clip.")
    oks = torch.stack(oks) if oks else torch.zeros(0, dtype=torch.bool)
    state['skipped'] += int((~oks).sum())
    losses = torch.stack(losses)[oks].tolist() if len(oks) else []
    state['losses'] += losses
    return losses, stopped


@torch.no_grad()
def test_bound(model, test_x, test_y, batch_size, precision='fp32'):
    """The negative ELBO on the test split and its two terms (reconstruction, KL), in nats per image,
    one posterior sample per image, in batches of batch_size under precision's autocast. A KL near 0
    means the model ignores its latents."""
    total = torch.zeros(3, device=test_x.device)
    with utils.autocast(test_x.device, precision):
        for i in range(0, len(test_x), batch_size):
            x = test_x[i:i + batch_size]
            total += torch.stack(model.loss(x, test_y[i:i + batch_size])).float() * len(x)
    return (total / len(test_x)).tolist()


def epoch_test(model, test_x, test_y, p):
    """The epoch line's test bound (test_bound): in the training's precision (evaluate.py computes in
    fp32), in batches of TEST_BATCHES training batches (no gradients are kept: fewer, larger products,
    half the time; bench.py times both)."""
    return test_bound(model, test_x, test_y, TEST_BATCHES * p['batch_size'], p['precision'])


def fresh_state():
    return {'epoch': 0, 'batch': 0, 'order': None, 'losses': [], 'test_bounds': [], 'skipped': 0, 'bad_in_a_row': 0,
            'total_steps': None, 'fall': None}


def restore(model, optimizer, ckpt, train_x, averaged=None):
    """The training state saved in ckpt, loaded into model, optimizer, every random generator and
    averaged (the moving average, when kept: the checkpoint's 'model', whose training weights are
    then its 'training_model'; it starts at the weights where the checkpoint kept none)."""
    try:
        model.load_state_dict(ckpt.get('training_model', ckpt['model']))
        if averaged is not None:
            averaged.load_state_dict(ckpt['model'])
        saved = ckpt['optimizer']  # its groups' implementation flags (unfused before this version) yield to ours
        flags = [{k: v for k, v in group.items() if k in ('fused', 'foreach', 'capturable')} for group in optimizer.param_groups]
        optimizer.load_state_dict({**saved, 'param_groups': [{**g, **f} for g, f in zip(saved['param_groups'], flags)]})
        moments = [optimizer.state.get(w, {}).get('exp_avg') for w in model.parameters()]
        if any(m is not None and m.shape != w.shape for m, w in zip(moments, model.parameters())):
            raise ValueError("its Adam moments' shapes are not its weights'")  # fused Adam would crash on them
        utils.set_rng_state(ckpt['rng'])
        state = {k: ckpt[k] if k not in ('total_steps', 'fall') else ckpt.get(k) for k in fresh_state()}  # older: none
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
        raise utils.InputError(f"resume: the checkpoint's training state is damaged or does not fit its params "
                               f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}).") from None
    if state['order'] is not None:
        if len(state['order']) != len(train_x):
            raise utils.InputError(f"resume: the interrupted epoch ran over {len(state['order'])} images, the data "
                                   f"now has {len(train_x)}; resume with the data it was trained on.")
        state['order'] = state['order'].to(train_x.device)
    return state


def run_epochs(model, objective, optimizer, train, test, p, state, save, scorer=None, averaged=None, plan=None):
    """Epochs state['epoch'] + 1 onward over train and test, (images, labels) each, training model
    through objective (train.step_objective) for run_length steps in all (the last epoch may be partial);
    a minutes=N run first fixes that length by its plan (a budget.Budget), see fix_length, then fits it
    again at the start of every epoch, see refit_length. On SIGINT or SIGTERM, saves model_interrupted
    and stops. The test bound, the GIFs and the scores are of the weights' moving average, averaged,
    when there is one. Under torchrun only rank 0 evaluates and writes."""
    train_x, main = train[0], distributed.rank() == 0
    shown = model if averaged is None else averaged
    image_dir, steps = Path(p['image_dir']), -(-(len(train_x) // distributed.world()) // p['batch_size'])

    def epochs():  # in the whole run; None while a minutes=N run times its first steps
        total = run_length(p, state, steps)
        return total and -(-total // steps)
    left = plan.left if plan and not state['total_steps'] else None  # a resumed run has no deadline
    last = None  # the costs of the epoch before, in a minutes=N run
    with utils.StopSignals() as stop:
        while epochs() is None or state['epoch'] < epochs():
            epoch = state['epoch'] + 1
            if state['order'] is None:
                state['order'] = distributed.same_everywhere(torch.randperm(len(train_x), device=train_x.device))
            if left and last:
                refit_length(plan, p, state, steps, last)
            start, first = time.perf_counter(), state['batch']
            with tqdm(total=steps, initial=state['batch'], unit='batch', desc=f"epoch {epoch}/{epochs() or '?'}",
                      leave=False, disable=None if main else True) as bar:
                model.train()
                run = lambda until: train_steps(objective, optimizer, *train, p, state, bar, stop, averaged,
                                                until, left)
                losses, stopped = [], False
                if epochs() is None:
                    chores = lambda: chore_seconds(model, shown, test, optimizer, p, state, steps, scorer)
                    losses, stopped = fix_length(plan, run, p, state, steps, chores)
                    bar.set_description(f"epoch {epoch}/{epochs()}")
                if not stopped:
                    began, done = budget.clock(), state['batch']
                    more, stopped = run(None)
                    losses += more
                    stepped = (budget.clock() - began) / (state['batch'] - done) if state['batch'] > done else None
            if stopped:
                path = save('model_interrupted')
                signum = stop.received or signal.SIGTERM  # under torchrun, another rank's signal
                raise utils.Stopped(f"{signal.Signals(signum).name} at epoch {epoch}, step {state['batch']}: "
                                    f"saved {path}. Resume with: python train.py resume={path}", 128 + signum)
            images = min(len(train_x), state['batch'] * p['batch_size'] * distributed.world()) - \
                first * p['batch_size'] * distributed.world()
            state.update(epoch=epoch, batch=0, order=None)
            if left:  # this epoch's costs, for the next epoch's refit_length (its test and plot on rank 0, below)
                last = plan.costs._replace(step=stepped) if stepped else None
            if not main:
                continue
            shown.eval()
            began = budget.clock()
            bound, recon, kl = epoch_test(shown, *test, p)
            state['test_bounds'].append(bound)
            seconds = time.perf_counter() - start
            skipped = f"  ({state['skipped']} non-finite steps skipped so far)" if state['skipped'] else ''
            print(f"epoch {epoch}/{epochs()}  train loss {sum(losses) / max(1, len(losses)):.2f}  "
                  f"test bound {bound:.2f} nats (reconstruction {recon:.2f} + KL {kl:.2f})  {seconds:.1f} s "
                  f"({images / seconds:.0f} img/s){f', {budget.clock_time(left())} left' if left else ''}{skipped}")
            figures.plot_losses(image_dir / 'Loss_Curve.png', state['losses'], steps, state['test_bounds'])
            if last:
                last = last._replace(epoch=budget.clock() - began)
            if epoch % p['save_epoch'] == 0:
                save(f'model_epoch_{epoch}')
            if epoch % p['save_epoch'] == 0 or epoch == epochs():
                draw_gif(shown, p, train_x.device, image_dir / f'draw_epoch_{epoch}.gif')
                if scorer:
                    print('\n'.join(scorer(shown)))


def draw_gif(model, p, device, path):
    """64 samples of model drawn glimpse by glimpse, as a GIF at path; the same z each time (the seed)."""
    noise = torch.Generator(device).manual_seed(p['seed'])
    labels = torch.arange(64, device=device) % model.num_classes if p['conditional'] else None
    figures.save_gif([figures.grid(c) for c in model.generate(64, labels, generator=noise)], path)


def fix_length(plan, run, p, state, per_epoch, chores):
    """Fixes state['total_steps'] of a minutes=N run, in its first epoch, by its plan (a budget.Budget):
    times budget.TIMED_STEPS steps after budget.WARM_STEPS untimed (run(until) trains to batch until of
    the epoch), and on rank 0, which does them, the work between epochs (chores() -> seconds after each
    epoch, seconds at each save). Says what it fixed, and sets p['epoch_num'] to the epochs that spans;
    returns the steps' losses and whether a stop signal came."""
    available = per_epoch - state['batch']
    warm, timed = min(budget.WARM_STEPS, available // 2), min(budget.TIMED_STEPS, available - available // 2)
    losses, stopped = run(state['batch'] + warm)
    if stopped:
        return losses, True
    started = budget.clock()
    more, stopped = run(state['batch'] + timed)
    if stopped:
        return losses + more, True
    plan.costs = costs = budget.Costs((budget.clock() - started) / timed,
                                      *(chores() if distributed.rank() == 0 else (0, 0)))
    state['total_steps'] = plan.said = distributed.rank0s(plan.fit(state['batch'], costs, per_epoch, p['save_epoch']),
                                                         state['order'].device)
    plan.check(state['total_steps'], state['batch'], costs, per_epoch, p)
    p['epoch_num'] = -(-state['total_steps'] // per_epoch)  # what the checkpoints' params say it spans
    log(plan.describe(state['total_steps'], costs, per_epoch, p, p['batch_size'] * distributed.world()))
    return losses + more, False


def refit_length(plan, p, state, per_epoch, costs):
    """Fits the total steps of a minutes=N run again, at the start of an epoch, to the costs of the
    epoch before (budget.Costs; the saves as timed at the start), so that a machine that slows down or
    speeds up later still ends the run on time; a cosine run keeps its first total. A wsd run whose rate
    has begun to fall, or whose fall would have begun under the new total, falls from here on linearly
    from its rate now to 0 at the new total (state['fall'], see learning_rate): the rate never jumps.
    Moves the total by 1% or more, and says so where it is 5% or more from the total last said."""
    done, total = state['epoch'] * per_epoch, state['total_steps']
    if p['lr_schedule'] == 'cosine':
        return
    fitted = distributed.rank0s(max(done + 1, plan.fit(done, costs, per_epoch, p['save_epoch'])), state['order'].device)
    if abs(fitted - total) < 0.01 * total:
        return
    rate = learning_rate(p, done, total, state['fall']) / p['learning_rate']
    if p['lr_schedule'] == 'wsd' and (rate < 1 or done > (1 - WSD_DECAY) * fitted):
        state['fall'] = [done, rate]
    state['total_steps'], p['epoch_num'] = fitted, -(-fitted // per_epoch)
    if abs(fitted - plan.said) >= 0.05 * plan.said:  # the epoch lines show smaller moves in their count
        plan.said = fitted
        log(f"minutes={p['minutes']:g}: {fitted:,} steps now ({fitted / per_epoch:.1f} epochs), from the last epoch's "
            f"{costs.step:.3f} s a step and {costs.epoch:.1f} s of test and plot, to end by "
            f"{budget.clock_time(60 * p['minutes'])}.")


def chore_seconds(model, shown, test, optimizer, p, state, per_epoch, scorer):
    """(the seconds after each epoch: the test bound, timed on two batches, and the loss plot; the seconds
    at each save: a GIF, written to a temporary folder, the sample scores where asked, a checkpoint's
    bytes), timed now on shown with the random generators left as they were; model is left training."""
    test_x, test_y = test
    bs = TEST_BATCHES * p['batch_size']  # one test batch
    with torch.random.fork_rng(devices=[test_x.device] if test_x.device.type == 'cuda' else []), \
            tempfile.TemporaryDirectory() as folder:
        shown.eval()
        epoch = budget.timed(lambda: epoch_test(shown, test_x[:bs], test_y[:bs], p)) * len(test_x) / len(test_x[:bs])
        epoch += budget.timed(lambda: figures.plot_losses(Path(p['image_dir']) / 'Loss_Curve.png', state['losses'],
                                                        per_epoch, state['test_bounds']))
        save = budget.timed(lambda: draw_gif(shown, p, test_x.device, Path(folder) / 'timing.gif')) + \
            budget.timed(lambda: scorer and scorer(shown)) + \
            budget.timed(lambda: torch.save([shown.state_dict(), optimizer.state_dict()], io.BytesIO()))
    model.train()
    return epoch, save
