"""DRAW's training loop, as train.py runs it: the step (the warmed-up, free-bits objective, clipping,
fused Adam, the weights' moving average), epochs over the data with their test bound, metrics, GIFs and
checkpoints, and the run's state (RunState) that checkpoints keep for an exact resume. The schedules
along the run are in schedules.py; a minutes=N run's length is decided by its budget.Budget."""
import io
import json
import math
import signal
import tempfile
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from tqdm import tqdm

import budget
import checkpoints
import distributed
import figures
import schedules
import utils
from dataloader import to_input

LOG_EVERY = 20  # steps between reads of the loss from the device (progress bar, non-finite check)
TEST_BATCHES = 4  # the test bound's batches, in training batches
GIF_SAMPLES = 64  # samples in each generation GIF
METRICS = 'metrics.jsonl'  # in checkpoint_dir: one JSON object per epoch, per length fixed or refitted, and at the end


def log(message):
    if distributed.rank() == 0:
        print(message)


def steps_per_epoch(images, batch_size):
    """The steps of one epoch in each process: its shard of images (distributed.shard) in batches, the
    last one smaller."""
    return math.ceil(images // distributed.world() / batch_size)


@dataclass
class RunState:
    """Where a run stands: every checkpoint saves it (as top-level keys) and a resume restores it."""
    epoch: int = 0  # epochs finished
    batch: int = 0  # steps done in the epoch under way
    step: int = 0  # steps done in the whole run
    order: torch.Tensor | None = None  # the shuffle of the epoch under way (None between epochs)
    losses: list = field(default_factory=list)  # the train loss of every finite step
    test_bounds: list = field(default_factory=list)  # after every epoch
    skipped: int = 0  # non-finite steps skipped
    bad_in_a_row: int = 0  # the non-finite steps that end the run so far
    total_steps: int | None = None  # the length a minutes=N run fixed; None: epoch_num epochs
    fall: list | None = None  # [step, rate]: where a refit restarted the wsd rate's fall (schedules.learning_rate)
    run: str | None = None  # the run's id (runs.py): every checkpoint of the run holds it, a resume keeps it

    def total(self, p, per_epoch):
        """The steps of the whole run: what minutes=N fixed, or epoch_num epochs (None while timing)."""
        return self.total_steps or (None if p['minutes'] else p['epoch_num'] * per_epoch)

    def epochs(self, p, per_epoch):
        """The epochs of the whole run, the last one maybe partial (None while timing)."""
        total = self.total(p, per_epoch)
        return total and math.ceil(total / per_epoch)

    def epoch_steps(self, p, per_epoch):
        """The steps of the epoch under way: all of them, or up to the run's last."""
        total = self.total(p, per_epoch)
        return per_epoch if total is None else min(per_epoch, total - self.step + self.batch)

    def saved(self):
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def restored(cls, ckpt, per_epoch, train_x, run):
        """The state saved in ckpt (files from before RunState lack step, total_steps and fall), its
        epoch's order on train_x's device, under the run id run; refused where the interrupted epoch ran
        over other data."""
        later = ('step', 'total_steps', 'fall', 'run')  # what older files lack; the id is checked by the caller
        saved = {f.name: ckpt[f.name] for f in fields(cls) if f.name not in later}
        state = cls(**saved, step=ckpt.get('step', ckpt['epoch'] * per_epoch + ckpt['batch']),
                    total_steps=ckpt.get('total_steps'), fall=ckpt.get('fall'), run=run)
        if state.order is not None:
            if len(state.order) != len(train_x):
                raise utils.InputError(f"resume: the interrupted epoch ran over {len(state.order)} images, the data "
                                       f"now has {len(train_x)}; resume with the data it was trained on.")
            state.order = state.order.to(train_x.device)
        return state


@dataclass
class Run:
    """What a checkpoint saves and a resume restores: the trained weights, their moving average
    (None with ema=0), Adam, and the RunState."""
    model: torch.nn.Module
    averaged: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    state: RunState

    @property
    def shown(self):
        """What is tested, drawn and saved as 'model': the moving average, where kept."""
        return self.model if self.averaged is None else self.averaged

    def restore(self, ckpt, per_epoch, train_x):
        """Loads ckpt's training state: weights (its 'training_model', where it kept the average as
        'model'), the average, Adam, every random generator and the RunState, whose run id stays the one
        this run was given (train.py: the checkpoint's own, where it holds a well-formed one)."""
        try:
            self.model.load_state_dict(ckpt.get('training_model', ckpt['model']))
            if self.averaged is not None:
                self.averaged.load_state_dict(ckpt['model'])
            saved = ckpt['optimizer']  # its groups' implementation flags (older files: unfused) yield to ours
            flags = [{k: v for k, v in g.items() if k in ('fused', 'foreach', 'capturable')}
                     for g in self.optimizer.param_groups]
            self.optimizer.load_state_dict({**saved, 'param_groups': [{**g, **f} for g, f in
                                                                      zip(saved['param_groups'], flags)]})
            moments = [self.optimizer.state.get(w, {}).get('exp_avg') for w in self.model.parameters()]
            if any(m is not None and m.shape != w.shape for m, w in zip(moments, self.model.parameters())):
                raise ValueError("its Adam moments' shapes are not its weights'")  # fused Adam would crash on them
            utils.set_rng_state(ckpt['rng'])
            self.state = RunState.restored(ckpt, per_epoch, train_x, self.state.run)
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
            raise utils.InputError(f"resume: the checkpoint's training state is damaged or does not fit its params "
                                   f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}).") from None

    def save(self, name, p, data):
        """The checkpoint checkpoint_dir/name (written by rank 0 only), with the number of processes
        that trained it; its path."""
        path = Path(p['checkpoint_dir']) / name
        if distributed.rank() == 0:
            trained = {} if self.averaged is None else {'training_model': self.model.state_dict()}
            checkpoints.save_checkpoint(path, self.shown, self.optimizer, p, **self.state.saved(), **trained,
                                        world=distributed.world(), classes=data.classes, glyphs=data.glyphs,
                                        data=data.record(p), rng=utils.rng_state())
        return path


class Metrics:
    """checkpoint_dir/metrics.jsonl on rank 0: one JSON object a line (tools/compare.py reads it),
    started afresh by a new run and appended to by a resumed one."""

    def __init__(self, p, resumed, start):
        self.path = Path(p['checkpoint_dir']) / METRICS if distributed.rank() == 0 else None
        if self.path and not resumed:
            self.path.unlink(missing_ok=True)
        self.start = start

    def write(self, event, **values):
        if self.path:
            line = json.dumps({'event': event, **values, 'elapsed': round(budget.clock() - self.start, 3)})
            try:
                with open(self.path, 'a') as f:
                    f.write(line + '\n')
            except OSError as e:
                raise utils.WriteError(self.path, e) from None


class NonFinite:
    """Counts the steps in a row whose loss or gradient is not finite, on the device; read every
    `every` steps, it stops the run at nonfinite_limit of them."""

    def __init__(self, p, device):
        self.limit, self.every, self.device = p['nonfinite_limit'], min(LOG_EVERY, p['nonfinite_limit']), device
        self.losses, self.oks = [], []

    def begin(self, state):
        """At an epoch's start (or where a resume left it)."""
        self.in_a_row = torch.tensor(state.bad_in_a_row, device=self.device)
        self.longest, self.losses, self.oks = self.in_a_row.clone(), [], []

    def add(self, loss, ok):
        self.in_a_row = (self.in_a_row + 1) * ~ok
        self.longest = torch.maximum(self.longest, self.in_a_row)
        self.losses.append(loss)
        self.oks.append(ok)

    def read(self, state):
        """The mean of the recent finite losses (None if none); raises Stopped at the limit."""
        recent = torch.stack(self.losses[-self.every:])[torch.stack(self.oks[-self.every:])]
        state.bad_in_a_row = int(self.in_a_row)
        if self.longest >= self.limit:
            state.skipped += int((~torch.stack(self.oks)).sum())
            raise utils.Stopped(f"{int(self.longest)} steps in a row with a non-finite loss or gradient "
                                f"(epoch {state.epoch + 1}, by step {state.batch}), none applied. "
                                f"Checkpoints already written are intact; try a lower learning_rate or clip.")
        return recent.mean().item() if len(recent) else None

    def finite(self, state):
        """The epoch's finite losses not yet kept, as floats, kept in state with the count of those skipped."""
        oks = torch.stack(self.oks) if self.oks else torch.zeros(0, dtype=torch.bool)
        state.skipped += int((~oks).sum())
        losses = torch.stack(self.losses)[oks].tolist() if len(oks) else []
        state.losses += losses
        self.losses, self.oks = [], []
        return losses


def train(run, objective, data, train, test, p, start, plan=None, scorer=None):
    """Trains run through objective (train.step_objective) on train, (images, labels), from where its
    state stands to the run's last step: epoch_num epochs, or as many steps as a minutes=N run's plan (a
    budget.Budget) fits to its deadline; then saves model_final and returns its path. After each epoch:
    the test bound on test, the loss plot and metrics, and every save_epoch epochs a checkpoint, a GIF and
    the scores (scorer) of the moving average. On SIGINT or SIGTERM, saves model_interrupted and stops.
    Under torchrun only rank 0 evaluates and writes. start: the script's start, by budget.clock."""
    state, train_x, bs = run.state, train[0], p['batch_size']
    per_epoch, main = steps_per_epoch(len(train_x), bs), distributed.rank() == 0
    metrics, watch = Metrics(p, state.step > 0, start), NonFinite(p, train_x.device)
    with utils.StopSignals() as stop, distributed.peers_lost(lambda why: interrupted(run, p, data, watch, why=why)):
        while state.total(p, per_epoch) is None or state.step < state.total(p, per_epoch):
            if state.order is None:
                state.order = distributed.same_everywhere(torch.randperm(len(train_x), device=train_x.device))
            said = plan.epoch_begins(state, per_epoch, p) if plan else None
            if said:
                log(said)
                metrics.write('length', epoch=state.epoch, total_steps=state.total_steps)
            began, first, mine = time.perf_counter(), state.batch, distributed.shard(state.order)
            watch.begin(state)
            with tqdm(total=per_epoch, initial=state.batch, unit='batch', leave=False, disable=None if main else True,
                      desc=f"epoch {state.epoch + 1}/{state.epochs(p, per_epoch) or '?'}") as bar:
                run.model.train()
                while state.batch < state.epoch_steps(p, per_epoch):
                    if distributed.agree(stop.received, train_x.device, now=(state.batch - first) % watch.every == 0):
                        interrupted(run, p, data, watch, stop.received)
                    watch.add(*loop_step(run, objective, train, mine[state.batch * bs:(state.batch + 1) * bs], p,
                                         state.total(p, per_epoch)))
                    bar.update(1)
                    if (state.batch - first) % watch.every == 0 or state.batch == state.epoch_steps(p, per_epoch):
                        loss = watch.read(state)
                        bar.set_postfix(loss='non-finite' if loss is None else f'{loss:.1f}',
                                        **({'left': budget.clock_time(plan.left())} if plan else {}))
                    if plan and state.total_steps is None:  # timing: each step's loss read, so it has finished
                        watch.read(state)
                        if plan.step_ends(state):
                            log(plan.fix(state, per_epoch, p, chore_seconds(run, test, p, per_epoch, scorer)
                                         if main else (0, 0)))
                            metrics.write('length', epoch=state.epoch, total_steps=state.total_steps)
                            bar.set_description(f"epoch {state.epoch + 1}/{state.epochs(p, per_epoch)}")
            images = min(len(train_x), state.batch * bs * distributed.world()) - first * bs * distributed.world()
            end_epoch(run, watch.finite(state), time.perf_counter() - began, images, data, test, p, plan, scorer,
                      metrics)
        path = run.save('model_final', p, data)
    metrics.write('final', path=str(path), epoch=state.epoch, step=state.step)
    return path


def end_epoch(run, losses, seconds, images, data, test, p, plan, scorer, metrics):
    """After an epoch's steps: on rank 0, the test bound, the epoch line and metrics, the loss plot,
    and every save_epoch epochs (and after the last) a checkpoint, a GIF and the sample scores."""
    state, image_dir, per_epoch = run.state, Path(p['image_dir']), steps_per_epoch(len(data.train_x), p['batch_size'])
    if plan:
        plan.epoch_trained(state)
    state.epoch, state.batch, state.order = state.epoch + 1, 0, None
    if distributed.rank() != 0:
        if plan:
            plan.epoch_tested()
        return
    run.shown.eval()
    began, trained = time.perf_counter(), seconds
    bound, recon, kl = epoch_test(run.shown, *test, p)
    state.test_bounds.append(bound)
    seconds += time.perf_counter() - began
    loss, epochs = sum(losses) / max(1, len(losses)), state.epochs(p, per_epoch)
    left = f', {budget.clock_time(plan.left())} left' if plan else ''
    skipped = f"  ({state.skipped} non-finite steps skipped so far)" if state.skipped else ''
    print(f"epoch {state.epoch}/{epochs}  train loss {loss:.2f}  test bound {bound:.2f} nats (reconstruction "
          f"{recon:.2f} + KL {kl:.2f})  {seconds:.1f} s ({images / trained:.0f} img/s){left}{skipped}")
    metrics.write('epoch', epoch=state.epoch, epochs=epochs, step=state.step, train_loss=loss, test_bound=bound,
                  reconstruction=recon, kl=kl, seconds=round(seconds, 3), images_per_second=round(images / trained, 1),
                  left=round(plan.left(), 1) if plan else None, skipped=state.skipped)
    figures.plot_losses(image_dir / 'Loss_Curve.png', state.losses, per_epoch, state.test_bounds)
    if plan:
        plan.epoch_tested()
    if state.epoch % p['save_epoch'] == 0:
        run.save(f'model_epoch_{state.epoch}', p, data)
    if state.epoch % p['save_epoch'] == 0 or state.epoch == epochs:
        draw_gif(run.shown, p, test[0].device, image_dir / f'draw_epoch_{state.epoch}.gif')
        if scorer:
            print('\n'.join(scorer(run.shown)))


def interrupted(run, p, data, watch, signum=None, why=None):
    """Saves model_interrupted, the state as of the last step done, and stops: on a signal (under
    torchrun, another rank's signal reads as SIGTERM) with its exit status, or, why, where another
    process of torchrun was lost."""
    watch.finite(run.state)
    path = run.save('model_interrupted', p, data)
    signum = signum or signal.SIGTERM
    what = why or signal.Signals(signum).name
    raise utils.Stopped(f"{what} at epoch {run.state.epoch + 1}, step {run.state.batch}: "
                        f"saved {path}. Resume with: python train.py resume={path}", 1 if why else 128 + signum)


def chore_seconds(run, test, p, per_epoch, scorer):
    """(the seconds after each epoch: the test bound, timed on one test batch, and the loss plot; the
    seconds at each save: a GIF, written to a temporary folder, the sample scores where asked, a
    checkpoint's bytes), timed now on run.shown with the random generators left as they were; the
    model is left training."""
    test_x, test_y = test
    bs, shown = TEST_BATCHES * p['batch_size'], run.shown
    with torch.random.fork_rng(devices=[test_x.device] if test_x.device.type == 'cuda' else []), \
            tempfile.TemporaryDirectory() as folder:
        shown.eval()
        epoch = budget.timed(lambda: epoch_test(shown, test_x[:bs], test_y[:bs], p)) * len(test_x) / len(test_x[:bs])
        epoch += budget.timed(lambda: figures.plot_losses(Path(p['image_dir']) / 'Loss_Curve.png', run.state.losses,
                                                        per_epoch, run.state.test_bounds))
        save = budget.timed(lambda: draw_gif(shown, p, test_x.device, Path(folder) / 'timing.gif')) + \
            budget.timed(lambda: scorer and scorer(shown)) + \
            budget.timed(lambda: torch.save([shown.state_dict(), run.optimizer.state_dict()], io.BytesIO()))
    run.model.train()
    return epoch, save


def loop_step(run, objective, train, batch, p, total):
    """One step of train's loop (and what bench.py times): the learning rate of the schedule for a run of
    total steps, the update through objective on the images of train (images, labels) at the indices
    batch (train_step), the moving average's, and the run's count of steps. Returns train_step's
    (loss, finite), device tensors."""
    state, (train_x, train_y) = run.state, train
    rate = schedules.learning_rate(p, state.step, total, state.fall)
    for group in run.optimizer.param_groups:
        group['lr'] = rate
    done = train_step(objective, run.optimizer, to_input(train_x[batch], p['binarize'], p['channel']),
                      train_y[batch], p, state.step)
    if run.averaged is not None:
        update_average(run.averaged, objective.parameters(), schedules.ema_decay(p, state.step, rate / p['learning_rate']))
    state.batch, state.step = state.batch + 1, state.step + 1
    return done


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
        trained, loss = objective(x, y, schedules.kl_weight(p, step), p['free_bits'])
    optimizer.zero_grad(set_to_none=True)
    trained.backward()
    norm = torch.nn.utils.clip_grad_norm_(objective.parameters(), p['clip'])  # of the averaged gradient
    loss = distributed.mean(loss.detach().float())
    ok = torch.isfinite(loss + trained.detach() + norm)
    optimizer.found_inf = (~ok).float()
    optimizer.step()
    return loss, ok


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


def draw_gif(model, p, device, path):
    """GIF_SAMPLES samples of model drawn glimpse by glimpse, as a GIF at path; the same z each time (the seed)."""
    noise = torch.Generator(device).manual_seed(p['seed'])
    labels = torch.arange(GIF_SAMPLES, device=device) % model.num_classes if p['conditional'] else None
    figures.save_gif([figures.grid(c) for c in model.generate(GIF_SAMPLES, labels, generator=noise)], path)
