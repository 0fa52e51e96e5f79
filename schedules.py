"""What changes along a run, step by step: the learning rate, the KL's weight in the training objective,
and the decay of the weights' moving average. Steps count from 0 over the whole run."""
import math

WSD_DECAY = 0.2  # lr_schedule=wsd: the share of the last steps over which the rate falls to 0


def kl_weight(p, step):
    """The KL's weight in the training objective at step: a linear warm-up over kl_warmup steps, then 1."""
    return min(1.0, (step + 1) / p['kl_warmup']) if p['kl_warmup'] else 1.0


def learning_rate(p, step, total, fall=None):
    """The step size of step of a run of total steps, by lr_schedule: wsd, learning_rate held, then
    falling linearly to 0 over the last WSD_DECAY of the steps (warm-up, stable, decay, here without
    the warm-up: Hu et al. 2024, Hägele et al. 2024), or, from step d of a fall = (d, r) that a minutes=N
    run's refit set (budget.Budget.refit), linearly from r * learning_rate at d to 0 at total; cosine,
    along a half cosine from step 0 to 0 at the end (Loshchilov and Hutter 2017, SGDR without restarts);
    or constant. Where total is not yet known (a minutes=N run timing its first steps), the schedule's start."""
    if p['lr_schedule'] == 'constant' or total is None:
        return p['learning_rate']
    if p['lr_schedule'] == 'wsd':
        if fall and step >= fall[0]:
            d, r = fall
            return p['learning_rate'] * r * (total - min(step, total)) / (total - d)
        return p['learning_rate'] * min(1.0, (total - min(step, total)) / (WSD_DECAY * total))
    return p['learning_rate'] * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def ema_decay(p, step, rate=1.0):
    """The weights' moving average's decay at update step, whose learning rate is rate times
    learning_rate: d = ema, or (1 + step) / (10 + step) while that is less (TensorFlow's
    ExponentialMovingAverage rule), so the average soon forgets the initial weights; its horizon,
    1 / (1 - d) steps, shrinks in proportion to the rate as the schedule lowers it, so the average lags
    the annealed weights no more than it smooths them: max(0, 1 - (1 - d) / rate)."""
    d = min(p['ema'], (1 + step) / (10 + step))
    return max(0.0, 1 - (1 - d) / rate) if rate > 0 else 0.0
