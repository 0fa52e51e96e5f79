"""Train DRAW. Hyperparameters are the params dict below; override any of them from the command
line for scripted runs:  python train.py epoch_num=1 batch_size=32 dataset=csv
"""
import copy
import io
import math
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

import budget
import classifier
import compiling
import distributed
import utils
from dataloader import load_data, mean_image, model_inputs, plural, to_input
from draw_model import DRAWModel

params = {
    # data
    'dataset': 'auto',  # auto (the first found) | csv | uci | binarized_mnist | mnist | folder | builtin
    'data_path': 'data',  # folder searched for the dataset, or a .csv / .csv.gz file
    'classes': 'all',  # 'all', 'digits', or comma-separated class names, e.g. character_01_ka,kha
    'test_split': 0.15,  # held-out fraction where the source has no official test split (CSV, plain folders)
    'binarize': 'none',  # none: grey levels as targets | threshold: at 0.5 | sample: x ~ Bernoulli, fresh each use
    'cache_dir': 'data/.cache',  # decoded datasets (uint8), so the next start skips decoding
    # model (the paper's names)
    'T': 25,  # glimpses: steps of the recurrence, canvas updates
    'A': 32,  # image width in pixels (images of another size are resized)
    'B': 32,  # image height in pixels
    'channel': 1,  # 1: grayscale; 3: RGB (the grey images repeated, as the 2019 implementation read them)
    'z_size': 100,  # dimension of the latent z_t drawn at each glimpse
    'read_N': 6,  # read glimpse is read_N x read_N Gaussian filters (eqs. 19-27)
    'write_N': 10,  # write patch is write_N x write_N (eqs. 28-29); the 2019 code: 6 (README, "Training recipe")
    'enc_size': 400,  # encoder LSTM units
    'dec_size': 400,  # decoder LSTM units
    'read_attn': True,  # False: read the whole image and error image (Eq. 17)
    'write_attn': True,  # False: write the whole canvas from a linear layer (Eq. 18)
    'original_layout': False,  # True: the 2019 code's shared attention layer and 0-based grid (for its checkpoints)
    'conditional': False,  # True: learn p(x | class), the one-hot label fed to encoder and decoder at every glimpse
    'canvas_bias': True,  # True: c_0 is a learned per-pixel bias, started at the data's mean logit | False: c_0 = 0 (2019 code)
    # optimisation
    'batch_size': 128,  # images per step
    'epoch_num': 50,  # passes over the training split
    'minutes': 0.0,  # > 0: train this many minutes from the start (steps fitted to the measured speed; not epoch_num)
    'learning_rate': 2e-3,  # Adam step size (at the start, under lr_schedule)
    'lr_schedule': 'cosine',  # cosine: the step size falls along a half cosine to 0 at epoch_num | constant
    'beta1': 0.5,  # Adam beta1 (beta2 = 0.999)
    'kl_warmup': 250,  # steps over which the KL's weight in the training objective rises linearly from 0 (0: none)
    'free_bits': 0.25,  # nats: each glimpse's batch-mean KL counts as at least this in the training objective
    'clip': 5.0,  # gradient-norm clipping threshold
    'ema': 0.998,  # decay per step of the weights' moving average: what is tested, drawn and saved (0: none)
    'precision': 'auto',  # auto: bf16 where native (CPUs with AVX512-BF16 or AMX, bf16 GPUs), else fp32 | fp32 | bf16
    'compile': 'auto',  # auto: torch.compile the step where the run wins back the compile time | true | false
    'seed': 0,  # seeds the split, initialisation, noise and data order
    'device': 'auto',  # auto (CUDA when available) | cpu | cuda | cuda:1 ...
    'nonfinite_limit': 10,  # non-finite losses or gradients in a row (each update skipped) before training stops
    'resume': '',  # a checkpoint to continue from exactly (model_epoch_N, model_interrupted); '' starts afresh
    # output
    'save_epoch': 10,  # every this many epochs: a checkpoint and a generation GIF
    'sample_scores': False,  # True: also score 1,000 samples with a classifier of the data (evaluate.py's scores)
    'checkpoint_dir': 'checkpoint',  # model_epoch_{N}, model_final
    'image_dir': 'images',  # Training_Data.png, Loss_Curve.png, draw_epoch_{N}.gif
}


LOG_EVERY = 20  # steps between reads of the loss from the device (progress bar, non-finite check)


def kl_weight(p, step):
    """The KL's weight in the training objective at step, counted from 0 over the whole run: a linear
    warm-up over kl_warmup steps, then 1."""
    return min(1.0, (step + 1) / p['kl_warmup']) if p['kl_warmup'] else 1.0


def learning_rate(p, step, total):
    """The step size of step (from 0) of a run of total steps: learning_rate along a half cosine from
    step 0 to 0 at the end (Loshchilov and Hutter 2017, SGDR without restarts), or constant. Where total
    is not yet known (a minutes=N run timing its first steps), the schedule's start, learning_rate."""
    if p['lr_schedule'] == 'constant' or total is None:
        return p['learning_rate']
    return p['learning_rate'] * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def ema_decay(p, step):
    """The weights' moving average's decay at update step (from 0, over the whole run): ema, or
    (1 + step) / (10 + step) while that is less (TensorFlow's ExponentialMovingAverage rule), so the
    average soon forgets the initial weights."""
    return min(p['ema'], (1 + step) / (10 + step))


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
        for group in optimizer.param_groups:
            group['lr'] = learning_rate(p, first_step + state['batch'], total)
        loss, ok = train_step(objective, optimizer, to_input(train_x[batch], p['binarize'], p['channel']),
                              train_y[batch], p, first_step + state['batch'])
        if averaged is not None:
            update_average(averaged, objective.parameters(), ema_decay(p, first_step + state['batch']))
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
def test_bound(model, test_x, test_y, batch_size):
    """The negative ELBO on the test split and its two terms (reconstruction, KL), in nats per image,
    one posterior sample per image. A KL near 0 means the model ignores its latents."""
    total = torch.zeros(3, device=test_x.device)
    for i in range(0, len(test_x), batch_size):
        x = test_x[i:i + batch_size]
        total += torch.stack(model.loss(x, test_y[i:i + batch_size])) * len(x)
    return (total / len(test_x)).tolist()


def prepare_data(p, device):
    """The dataset on the device: (images, labels) of train, images as uint8, and of test, images as
    model inputs (binarized once, seeded)."""
    data = load_data(p, log)
    if len(data.train_x) == 0 or len(data.test_x) == 0:
        raise utils.InputError(f"{data.name}: {len(data.train_x)} train and {len(data.test_x)} test images "
                               f"after the class filter; both splits need at least one.")
    if p['conditional'] and len(data.classes) < 2:
        raise utils.InputError(f"conditional=True: {data.name} has {len(data.classes)} class; a class-conditional "
                               f"model needs labelled data with at least two classes.")
    fixed = torch.Generator().manual_seed(p['seed'])
    test_x = model_inputs(data.test_x, p).to(device)
    sample = data.train_x[torch.randperm(len(data.train_x), generator=fixed)[:64]]
    if distributed.rank() == 0:
        utils.save_grid(to_input(sample, p['binarize'], p['channel'], fixed), Path(p['image_dir']) / 'Training_Data.png')
    return data, (data.train_x.to(device), data.train_y.to(device)), (test_x, data.test_y.to(device))


def usage():
    """This docstring and every params key with its default and meaning, from the params dict's own
    comments in this file (one source of truth)."""
    source = Path(__file__).read_text(encoding='utf-8')
    block = source[source.index('\nparams = {'):source.index('\n}\n', source.index('\nparams = {'))]
    lines = [__doc__.strip(), '', 'params (key=value, defaults shown):']
    for line in block.splitlines()[2:]:
        key, comment = re.match(r"\s*(?:'(\w+)':.*?)?#\s*(.*)", line).groups()
        lines.append(f"  {f'{key}={params[key]}':<28}{comment}" if key else f"  -- {comment}")
    return '\n'.join(lines)


def configure(argv):
    """params with the command line's overrides; when resuming, the checkpoint's params under them."""
    if {'-h', '--help'} & set(argv):
        print(usage())
        sys.exit(0)
    p, given = utils.apply_overrides(params, argv), {arg.partition('=')[0] for arg in argv}
    if {'minutes', 'epoch_num'} <= given and p['minutes']:
        raise utils.InputError(f"minutes={p['minutes']:g} and epoch_num={p['epoch_num']}: give one of them (minutes "
                               f"fits the steps to a time, epoch_num counts passes over the data).")
    ckpt = None
    if p['resume']:
        ckpt = utils.read_checkpoint(p['resume'])
        if 'rng' not in ckpt:
            raise utils.InputError(f"{p['resume']}: holds no training state (not written by this train.py); "
                                   f"generate.py can draw from it, but training cannot resume from it.")
        # files from before the recipe keys trained without them: c_0 = 0 (model_params), no warm-up, no free
        # bits, a constant learning rate (their own learning_rate is in their params), no moving average
        saved = {**params, 'kl_warmup': 0, 'free_bits': 0.0, 'lr_schedule': 'constant', 'ema': 0.0,
                 **{k: v for k, v in utils.model_params(p['resume'], ckpt).items() if k in params}}
        p = utils.apply_overrides({**saved, 'resume': p['resume']}, argv)
        changed = [f"{k}={p[k]!r} (checkpoint: {saved[k]!r})" for k in utils.MODEL_KEYS if p[k] != saved[k]]
        if changed:
            raise utils.InputError(f"{p['resume']}: a resumed run keeps the model it saved; remove "
                                   f"{', '.join(changed)}.")
        total = ckpt.get('total_steps')
        if (total and {'minutes', 'epoch_num'} & given) or (p['minutes'] and not saved['minutes']):
            raise utils.InputError(
                f"{p['resume']}: a resumed run keeps its length: " + (
                    f"the {total:,} steps that minutes={saved['minutes']:g} fixed; remove minutes= and epoch_num=."
                    if total else f"epoch_num={saved['epoch_num']} (raise it to train on); remove minutes=."))
        if total and ckpt.get('epoch', 0) >= p['epoch_num'] and not ckpt.get('batch'):
            raise utils.InputError(f"{p['resume']}: finished the {total:,} steps that minutes={p['minutes']:g} "
                                   f"fixed; nothing to do. To train longer, start a new run.")
        if ckpt.get('epoch', 0) >= p['epoch_num'] and not ckpt.get('batch'):
            raise utils.InputError(f"{p['resume']}: finished epoch {ckpt['epoch']} of epoch_num={p['epoch_num']}; "
                                   f"nothing to do. To train on, raise epoch_num, e.g. resume={p['resume']} "
                                   f"epoch_num={ckpt['epoch'] + 10}.")
    utils.check_params(p)
    return p, ckpt


def fresh_state():
    return {'epoch': 0, 'batch': 0, 'order': None, 'losses': [], 'test_bounds': [], 'skipped': 0, 'bad_in_a_row': 0,
            'total_steps': None}


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
        state = {k: ckpt[k] if k != 'total_steps' else ckpt.get(k) for k in fresh_state()}  # older files: no total
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
    through objective (see step_objective) for run_length steps in all (the last epoch may be partial);
    a minutes=N run first fixes that length by its plan (a budget.Budget), see fix_length. On SIGINT or
    SIGTERM, saves model_interrupted and stops. The test bound, the GIFs and the scores are of the
    weights' moving average, averaged, when there is one. Under torchrun only rank 0 evaluates and writes."""
    train_x, main = train[0], distributed.rank() == 0
    shown = model if averaged is None else averaged
    image_dir, steps = Path(p['image_dir']), -(-(len(train_x) // distributed.world()) // p['batch_size'])

    def epochs():  # in the whole run; None while a minutes=N run times its first steps
        total = run_length(p, state, steps)
        return total and -(-total // steps)
    left = plan.left if plan and not state['total_steps'] else None  # a resumed run has no deadline
    with utils.StopSignals() as stop:
        while epochs() is None or state['epoch'] < epochs():
            epoch = state['epoch'] + 1
            if state['order'] is None:
                state['order'] = distributed.same_everywhere(torch.randperm(len(train_x), device=train_x.device))
            start, first = time.perf_counter(), state['batch']
            with tqdm(total=steps, initial=state['batch'], unit='batch', desc=f"epoch {epoch}/{epochs() or '?'}",
                      leave=False, disable=None if main else True) as bar:
                model.train()
                run = lambda until: train_steps(objective, optimizer, *train, p, state, bar, stop, averaged,
                                                until, left)
                losses, stopped = [], False
                if epochs() is None:
                    losses, stopped = fix_length(plan, run, model, shown, test, optimizer, p, state, steps)
                    bar.set_description(f"epoch {epoch}/{epochs()}")
                if not stopped:
                    more, stopped = run(None)
                    losses += more
            if stopped:
                path = save('model_interrupted')
                signum = stop.received or signal.SIGTERM  # under torchrun, another rank's signal
                raise utils.Stopped(f"{signal.Signals(signum).name} at epoch {epoch}, step {state['batch']}: "
                                    f"saved {path}. Resume with: python train.py resume={path}", 128 + signum)
            images = min(len(train_x), state['batch'] * p['batch_size'] * distributed.world()) - \
                first * p['batch_size'] * distributed.world()
            state.update(epoch=epoch, batch=0, order=None)
            if not main:
                continue
            shown.eval()
            bound, recon, kl = test_bound(shown, *test, p['batch_size'])
            state['test_bounds'].append(bound)
            seconds = time.perf_counter() - start
            skipped = f"  ({state['skipped']} non-finite steps skipped so far)" if state['skipped'] else ''
            print(f"epoch {epoch}/{epochs()}  train loss {sum(losses) / max(1, len(losses)):.2f}  "
                  f"test bound {bound:.2f} nats (reconstruction {recon:.2f} + KL {kl:.2f})  {seconds:.1f} s "
                  f"({images / seconds:.0f} img/s){f', {budget.clock_time(left())} left' if left else ''}{skipped}")
            utils.plot_losses(image_dir / 'Loss_Curve.png', state['losses'], steps, state['test_bounds'])
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
    utils.save_gif([utils.grid(c) for c in model.generate(64, labels, generator=noise)], path)


def fix_length(plan, run, model, shown, test, optimizer, p, state, per_epoch):
    """Fixes state['total_steps'] of a minutes=N run, in its first epoch, by its plan (a budget.Budget):
    times budget.TIMED_STEPS steps after budget.WARM_STEPS untimed (run(until) trains to batch until of
    the epoch), then, on rank 0, which does them, a test batch, the loss plot, a GIF (written to a
    temporary folder) and a checkpoint's bytes, leaving the random generators as they were. Says what it
    fixed, and sets p['epoch_num'] to the epochs that spans; returns the steps' losses and whether a stop
    signal came."""
    available = per_epoch - state['batch']
    warm, timed = min(budget.WARM_STEPS, available // 2), min(budget.TIMED_STEPS, available - available // 2)
    losses, stopped = run(state['batch'] + warm)
    if stopped:
        return losses, True
    started = budget.clock()
    more, stopped = run(state['batch'] + timed)
    if stopped:
        return losses + more, True
    step, (test_x, test_y), bs = (budget.clock() - started) / timed, test, p['batch_size']
    epoch = save = 0.0
    if distributed.rank() == 0:
        with torch.random.fork_rng(devices=[test_x.device] if test_x.device.type == 'cuda' else []), \
                tempfile.TemporaryDirectory() as folder:
            shown.eval()
            epoch = budget.timed(lambda: test_bound(shown, test_x[:2 * bs], test_y[:2 * bs], bs)) * \
                len(test_x) / len(test_x[:2 * bs])
            epoch += budget.timed(lambda: utils.plot_losses(Path(p['image_dir']) / 'Loss_Curve.png', state['losses'],
                                                            per_epoch, state['test_bounds']))
            save = budget.timed(lambda: draw_gif(shown, p, test_x.device, Path(folder) / 'timing.gif')) + \
                budget.timed(lambda: torch.save({'model': shown.state_dict(), 'optim': optimizer.state_dict()},
                                                io.BytesIO()))
            model.train()
    costs = budget.Costs(step, epoch, save)
    total = plan.fit(state['batch'], costs, per_epoch, p['save_epoch'])
    state['total_steps'] = int(distributed.same_everywhere(torch.tensor([total], device=test_x.device)).item())
    plan.check(state['total_steps'], state['batch'], costs, per_epoch, p)
    p['epoch_num'] = -(-state['total_steps'] // per_epoch)  # what the checkpoints' params say it spans
    log(plan.describe(state['total_steps'], costs, per_epoch, p, bs * distributed.world()))
    return losses + more, False


def sample_scorer(data, train, test, p):
    """model -> evaluate.py's sample-quality lines, with the data's classifier (trained now if not cached)."""
    clf, accuracy = classifier.of_data(data, train, test, p)
    noise = torch.Generator(test[0].device)
    return lambda model: classifier.score_lines(
        classifier.sample_scores(model, clf, test[0], 1000, noise.manual_seed(p['seed'])), data.classes, accuracy)


def main(argv=None):
    start = budget.clock()
    p, ckpt = configure(sys.argv[1:] if argv is None else argv)
    for key in ('checkpoint_dir', 'image_dir'):  # proven writable now, not at the first save; ~ expanded
        p[key] = str(utils.writable_dir(p[key], key))
    device = distributed.start(p['device'])
    try:
        train_on(p, ckpt, device, start)
    finally:
        distributed.stop()


def train_on(p, ckpt, device, start):
    precision, why = utils.resolve_precision(p['precision'], device)
    utils.seed_everything(p['seed'])
    data, train, test = prepare_data(p, device)
    model = DRAWModel(p, len(data.classes)).to(device)
    if model.canvas_bias is not None and not ckpt:
        model.init_canvas(mean_image(train[0], p))
    optimizer = torch.optim.Adam(model.parameters(), lr=p['learning_rate'], betas=(p['beta1'], 0.999), fused=True)
    averaged = copy.deepcopy(model).requires_grad_(False) if p['ema'] else None
    state = restore(model, optimizer, ckpt, train[0], averaged) if ckpt else fresh_state()

    def save(name):  # 'model' is what generate.py and evaluate.py load: the average, when kept
        path = Path(p['checkpoint_dir']) / name
        training = {} if averaged is None else {'training_model': model.state_dict()}
        if distributed.rank() == 0:
            utils.save_checkpoint(path, model if averaged is None else averaged, optimizer, p, **state, **training,
                                  classes=data.classes, glyphs=data.glyphs, data=data.record(p), rng=utils.rng_state())
        return path

    resumed = f", resuming after epoch {state['epoch']} step {state['batch']}" if ckpt else ''
    processes = f" in each of {distributed.world()} processes" if distributed.world() > 1 else ''
    length = (plural(p['epoch_num'], 'epoch') if not p['minutes'] else f"{p['minutes']:g} minutes" if not
              state['total_steps'] else f"{plural(state['total_steps'], 'step')} (as minutes={p['minutes']:g} fixed)")
    log(f"Training on {device} in {precision} ({why}): {sum(w.numel() for w in model.parameters()):,} parameters, "
        f"{length} of {len(train[0])} images, batch {p['batch_size']}{processes}{resumed}.")
    if distributed.world() > 1:
        torch.manual_seed(p['seed'] + distributed.rank())  # each process its own noise; the order is rank 0's
    p = {**p, 'precision': precision}
    plan = budget.Budget(p['minutes'], start) if p['minutes'] else None
    objective = step_objective(model, train, p, state, len(data.classes), plan)
    scorer = sample_scorer(data, train, test, p) if p['sample_scores'] and distributed.rank() == 0 else None
    run_epochs(model, objective, optimizer, train, test, p, state, save, scorer, averaged, plan)
    path = save('model_final')
    log(f"Saved {path}, {budget.clock_time(budget.clock() - start)} after the start. "
        f"Draw with: python generate.py -load_path {path} -num_output 64")


def step_objective(model, train, p, state, num_classes, plan=None):
    """What training steps through: model.objective, compiled when compile asks for it (auto: where the
    steps left win back the compile time, from an eager step timed on the first batch; in a minutes=N
    run, the steps that its plan's time left would hold eager), in DDP under torchrun."""
    train_x, train_y = train
    objective = distributed.Objective(model)
    bs, shard = p['batch_size'], len(distributed.shard(torch.arange(len(train_x))))
    per_epoch, total = -(-shard // bs), run_length(p, state, -(-shard // bs))
    # the steps left to compile: none where every batch is smaller than batch_size (those run eager)
    steps = 0 if shard < bs else total - state['epoch'] * per_epoch - state['batch'] if total else None
    x, y = to_input(train_x[:bs], p['binarize'], p['channel']), train_y[:bs]
    key, record = compiling.cache_key(p, num_classes, train_x.device), compiling.Record(p['cache_dir'])
    timing = p['compile'] == 'auto' and steps != 0
    seconds = compiling.eager_step_seconds(objective, x, y, p['precision']) if timing else 0
    if steps is None:  # a minutes=N run's, before it is fixed
        steps = int(max(0.0, plan.left()) / seconds) if seconds else 1
    chosen, why = compiling.decide(p['compile'], train_x.device, steps, seconds, p['T'], record.get(key))
    chosen = bool(distributed.same_everywhere(torch.tensor([int(chosen)], device=train_x.device)).item()) and steps > 0
    log(f"{'Compiling' if chosen else 'Not compiling'} the training step ({why}).")
    if chosen:
        objective = compiling.compile_objective(objective, x, y, p['free_bits'], p['precision'], log, record, key)
    return distributed.parallel(objective, train_x.device)


def log(message):
    if distributed.rank() == 0:
        print(message)


if __name__ == '__main__':
    utils.run(main)
