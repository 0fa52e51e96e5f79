"""Training to a time budget (train.py's params key minutes=N).

A run with minutes > 0 times its own first steps on this machine and this data, and the work between
epochs (the test bound and loss plot after each, a checkpoint and a GIF every save_epoch and at the
end), then fixes the number of steps whose rest ends the run within N minutes of its start. The
learning rate reaches 0 at the last of them: Li, Yumer and Ramanan (ICLR 2020) found a schedule
annealed to 0 at the budget's end better than a longer one cut short. After every epoch the total is
fitted again to that epoch's costs, so a machine that slows down or speeds up still ends on time. Every
checkpoint records the total (training.RunState), so a resumed run keeps its schedule.

The training loop (training.train) tells its Budget where it is: epoch_begins, step_ends (True once the
first steps are timed: then fix), epoch_trained and epoch_tested. Everything else is arithmetic here.
"""
import math
import time
from typing import NamedTuple

import distributed
import schedules
import utils
from utils import plural

clock = time.perf_counter  # what budgets are timed by (tests put a clock of their own here)
WARM_STEPS, TIMED_STEPS = 2, 50  # of the first epoch: steps run untimed, then steps timed


class Costs(NamedTuple):
    """Seconds measured on this machine, for this model and data."""
    step: float  # one training step
    epoch: float  # after each epoch (the last, partial one too): the test bound and the loss plot
    save: float  # every save_epoch epochs and at the end: a checkpoint and a generation GIF


def timed(work):
    """The seconds that work() takes by the budget's clock."""
    start = clock()
    work()
    return clock() - start


def clock_time(seconds):
    """seconds as m:ss (or h:mm:ss)."""
    minutes, s = divmod(max(0, round(seconds)), 60)
    return f'{minutes // 60}:{minutes % 60:02d}:{s:02d}' if minutes >= 60 else f'{minutes}:{s:02d}'


class Budget:
    """minutes of wall-clock time from start (a clock() reading): how long is left, how many steps fit
    in it, and the run's length decided and refitted from the costs measured as it goes."""

    def __init__(self, minutes, start):
        self.minutes, self.start, self.deadline = minutes, start, start + 60 * minutes
        self.costs = self.said = None  # as timed at the start (Costs); the total steps the log last gave
        self.last = None  # the costs of the epoch before (Costs), once one ran steps after the length was fixed
        self.timer = self.step_seconds = self.began = self.done = self.stepped = None
        self.warm_end = self.timed_end = None

    def left(self):
        return self.deadline - clock()

    def spent(self):
        return clock() - self.start

    # -- what the training loop tells the budget --------------------------------------------------
    def epoch_begins(self, state, per_epoch, p):
        """Before an epoch's steps: refits the length to the epoch before's costs, where there are any;
        in an epoch whose length is not fixed yet, marks the steps to leave untimed (WARM_STEPS) and to
        time (TIMED_STEPS). Returns the refit's line for the log, or None."""
        said = self.refit(state, per_epoch, p) if self.last else None
        if state.total_steps is None:
            available = per_epoch - state.batch
            self.warm_end = state.batch + min(WARM_STEPS, available // 2)
            self.timed_end = self.warm_end + min(TIMED_STEPS, available - available // 2)
            self.timer = clock() if self.warm_end == state.batch else None
        self.began, self.done = clock(), state.batch
        return said

    def step_ends(self, state):
        """After each step: True once the timed steps of a run whose length is unfixed are done (fix it now)."""
        if state.total_steps is not None:
            return False
        if state.batch == self.warm_end:
            self.timer = clock()
        if state.batch == self.timed_end:
            self.step_seconds = (clock() - self.timer) / (self.timed_end - self.warm_end)
        return state.batch == self.timed_end

    def fix(self, state, per_epoch, p, chores):
        """Fixes state.total_steps from the timed steps and chores, the seconds (after each epoch, at each
        save) of the work between epochs (measured on rank 0; (0, 0) elsewhere); refuses a budget too
        short, shortens the KL's warm-up to a short run (check). Returns the line for the log."""
        self.costs = Costs(self.step_seconds, *chores)
        state.total_steps = self.said = distributed.rank0s(
            self.fit(state.batch, self.costs, per_epoch, p['save_epoch']), state.order.device)
        shortened = self.check(state.total_steps, state.batch, self.costs, per_epoch, p)
        self.began, self.done = clock(), state.batch
        return self.describe(state.total_steps, self.costs, per_epoch, p, p['batch_size'] * distributed.world()) + \
            shortened

    def epoch_trained(self, state):
        """After an epoch's steps, before its test: the seconds a step took since the length was fixed."""
        self.stepped = (clock() - self.began) / (state.batch - self.done) if state.batch > self.done else None
        self.began = clock()

    def epoch_tested(self):
        """After an epoch's test and loss plot: the costs the next epoch's refit fits to."""
        self.last = self.costs._replace(step=self.stepped, epoch=clock() - self.began) if self.stepped else None

    def refit(self, state, per_epoch, p):
        """Fits the total steps again, at the start of an epoch, to the costs of the epoch before (the
        saves as timed at the start); a cosine run keeps its first total. A wsd run whose rate has begun
        to fall, or whose fall would have begun under the new total, falls from here on linearly from
        its rate now to 0 at the new total (state.fall, see schedules.learning_rate): the rate never
        jumps. Moves the total by 1% or more; returns a line where it is 5% or more from the total last
        said, else None."""
        done, total = state.step, state.total_steps
        if p['lr_schedule'] == 'cosine':
            return None
        fitted = distributed.rank0s(max(done + 1, self.fit(done, self.last, per_epoch, p['save_epoch'])),
                                    state.order.device)
        if abs(fitted - total) < 0.01 * total:
            return None
        rate = schedules.learning_rate(p, done, total, state.fall) / p['learning_rate']
        if p['lr_schedule'] == 'wsd' and (rate < 1 or done > (1 - schedules.WSD_DECAY) * fitted):
            state.fall = [done, rate]
        state.total_steps = fitted
        if abs(fitted - self.said) < 0.05 * self.said:  # the epoch lines show smaller moves in their count
            return None
        self.said = fitted
        return (f"minutes={p['minutes']:g}: {fitted:,} steps now ({fitted / per_epoch:.1f} epochs), from the last "
                f"epoch's {self.last.step:.3f} s a step and {self.last.epoch:.1f} s of test and plot, to end by "
                f"{clock_time(60 * p['minutes'])}.")

    # -- arithmetic -------------------------------------------------------------------------------
    def rest(self, total, done, costs, per_epoch, save_epoch):
        """The seconds that the rest of a run of total steps takes once done of them are taken, the work
        after each epoch already finished done: the steps, every later epoch's test and plot, the
        checkpoints and GIFs still to come."""
        epochs, finished = -(-total // per_epoch), done // per_epoch
        return (total - done) * costs.step + (epochs - finished) * costs.epoch + \
            (epochs // save_epoch + 1 - finished // save_epoch) * costs.save

    def fit(self, done, costs, per_epoch, save_epoch):
        """The number of steps in the whole run: the most whose rest ends by the deadline (by bisection:
        the rest grows with the steps)."""
        left = self.left()
        low, high = done, done + max(0, int(left / costs.step))
        while low < high:
            middle = (low + high + 1) // 2
            fits = self.rest(middle, done, costs, per_epoch, save_epoch) <= left
            low, high = (middle, high) if fits else (low, middle - 1)
        return low

    def check(self, total, done, costs, per_epoch, p):
        """Refuses a run with no step left after the done ones (those timed), naming the budget that would
        give it one more epoch. Where fewer steps fit than twice the KL's warm-up, shortens the warm-up
        to half the run (in p, which checkpoints keep, so a resume goes on with it): returns the line
        saying so, or ''."""
        if total <= done:
            enough = math.ceil((self.spent() + self.rest(done + per_epoch, done, costs, per_epoch, p['save_epoch'])) / 60)
            raise utils.InputError(
                f"minutes={p['minutes']:g} is too short here: after {self.spent():.0f} s of setting up and "
                f"{plural(done, 'step')} timed, no step of {costs.step:.2f} s is left. Give minutes={enough} or more.")
        if total >= 2 * p['kl_warmup']:
            return ''
        p['kl_warmup'] = max(1, total // 2)
        return f" The KL's warm-up is shortened to half the run, {plural(p['kl_warmup'], 'step')}."

    def describe(self, total, costs, per_epoch, p, batch_images):
        """The start-up line: what the budget decided, and from what."""
        return (f"minutes={p['minutes']:g}: {total:,} steps, {total / per_epoch:.1f} epochs at "
                f"{batch_images / costs.step:.0f} img/s (measured: a step {costs.step:.3f} s, each epoch's test "
                f"and plot {costs.epoch:.1f} s, each checkpoint and GIF {costs.save:.1f} s; "
                f"{self.spent():.0f} s spent setting up), to end by {clock_time(60 * self.minutes)}.")
