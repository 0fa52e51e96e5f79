"""Training to a time budget (train.py's params key minutes=N).

A run with minutes > 0 times its own first steps on this machine and this data, and the work between
epochs (the test bound and loss plot after each, a checkpoint and a GIF every save_epoch and at the
end), then fixes the number of steps whose rest ends the run within N minutes of its start. The
learning rate reaches 0 at the last of them: Li, Yumer and Ramanan (ICLR 2020) found a schedule
annealed to 0 at the budget's end better than a longer one cut short. Every checkpoint records the
total, so a resumed run keeps its schedule.
"""
import math
import time
from typing import NamedTuple

import utils
from dataloader import plural

clock = time.perf_counter  # what budgets are timed by (tests put a clock of their own here)
WARM_STEPS, TIMED_STEPS = 2, 50  # of the first epoch: steps run untimed, then steps timed


class Costs(NamedTuple):
    """Seconds measured on this machine, for this model and data."""
    step: float  # one training step
    epoch: float  # after each epoch (the last, partial one too): the test bound and the loss plot
    save: float  # every save_epoch epochs and at the end: a checkpoint and a GIF of 64 samples


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
    """minutes of wall-clock time from start (a clock() reading): how long is left, and how many
    steps fit in it."""

    def __init__(self, minutes, start):
        self.minutes, self.start, self.deadline = minutes, start, start + 60 * minutes
        self.costs = self.said = None  # as timed at the start (Costs); the total steps the log last gave

    def left(self):
        return self.deadline - clock()

    def spent(self):
        return clock() - self.start

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
        """Refuses a run of total steps shorter than one epoch or the KL's warm-up, naming the budget
        that would do."""
        need = max(per_epoch, p['kl_warmup'])
        if total < need:
            what = 'one epoch' if need == per_epoch else f"the KL's warm-up (kl_warmup={p['kl_warmup']})"
            enough = math.ceil((self.spent() + self.rest(need, done, costs, per_epoch, p['save_epoch'])) / 60)
            raise utils.InputError(
                f"minutes={p['minutes']:g} is too short here: after {self.spent():.0f} s of setting up, "
                f"{plural(total, 'step')} of {costs.step:.2f} s fit, fewer than {what} ({need:,} steps). "
                f"Give minutes={enough} or more.")

    def describe(self, total, costs, per_epoch, p, batch_images):
        """The start-up line: what the budget decided, and from what."""
        return (f"minutes={p['minutes']:g}: {total:,} steps, {total / per_epoch:.1f} epochs at "
                f"{batch_images / costs.step:.0f} img/s (measured: a step {costs.step:.3f} s, each epoch's test "
                f"and plot {costs.epoch:.1f} s, each checkpoint and GIF {costs.save:.1f} s; "
                f"{self.spent():.0f} s spent setting up), to end by {clock_time(60 * self.minutes)}.")
