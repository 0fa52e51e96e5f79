"""Train DRAW. Hyperparameters are the params dict below; override any of them from the command
line for scripted runs:  python train.py epoch_num=1 batch_size=32 dataset=csv
"""
import copy
import re
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

import budget
import checkpoints
import classifier
import compiling
import config
import distributed
import figures
import runs
import utils
import training
from dataloader import load_data, mean_image, model_inputs, rendered_elsewhere, to_input
from draw_model import DRAWModel
from training import log
from utils import plural

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
    'write_N': 10,  # write patch is write_N x write_N (eqs. 28-29); the 2019 code: 6 (docs/recipe.md)
    'enc_size': 256,  # encoder LSTM units (the paper's MNIST model; the 2019 code: 400, docs/recipe.md)
    'dec_size': 256,  # decoder LSTM units (as enc_size)
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
    'lr_schedule': 'wsd',  # wsd: held, then falling linearly to 0 over the run's last fifth | cosine | constant
    'beta1': 0.5,  # Adam beta1 (beta2 = 0.999)
    'kl_warmup': 250,  # steps over which the KL's weight in the training objective rises linearly from 0 (0: none)
    'free_bits': 0.25,  # nats: each glimpse's batch-mean KL counts as at least this in the training objective
    'clip': 5.0,  # gradient-norm clipping threshold
    'ema': 0.998,  # decay per step of the weights' moving average, its horizon shrunk with the rate: tested, drawn, saved (0: none)
    'precision': 'auto',  # auto: bf16 where native (CPUs with AVX512-BF16 or AMX, bf16 GPUs), else fp32 | fp32 | bf16
    'compile': 'auto',  # auto: torch.compile what ends the run soonest, eager included | glimpse (true: the same) | step | false
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


def prepare_data(p, device, ckpt=None):
    """The dataset on the device: (images, labels) of train, images as uint8, and of test, images as
    model inputs (binarized once, seeded); for a resume, checked to be the data that ckpt learned."""
    data = load_data(p, log)
    distributed.same_data(data, device)
    if len(data.train_x) == 0 or len(data.test_x) == 0:
        raise utils.InputError(f"{data.name}: {len(data.train_x)} train and {len(data.test_x)} test images "
                               f"after the class filter; both splits need at least one.")
    if p['conditional'] and len(data.classes) < 2:
        raise utils.InputError(f"conditional=True: {data.name} has {len(data.classes)} class; a class-conditional "
                               f"model needs labelled data with at least two classes.")
    if ckpt:
        check_same_data(ckpt, data, p['resume'])
    fixed = torch.Generator().manual_seed(p['seed'])
    test_x = model_inputs(data.test_x, p).to(device)
    sample = data.train_x[torch.randperm(len(data.train_x), generator=fixed)[:training.GIF_SAMPLES]]
    if distributed.rank() == 0:
        figures.save_grid(to_input(sample, p['binarize'], p['channel'], fixed), Path(p['image_dir']) / 'Training_Data.png')
    return data, (data.train_x.to(device), data.train_y.to(device)), (test_x, data.test_y.to(device))


def check_same_data(ckpt, data, where):
    """A resume refused on other data than the checkpoint at where learned: another list of classes, or
    other images (the fingerprint of images, labels, split and classes), but for the built-in set rendered
    otherwise here, which is said. Older files, without them, pass."""
    classes, record = ckpt.get('classes'), ckpt.get('data') if isinstance(ckpt.get('data'), dict) else {}
    learned = f"(data_path={record['data_path']})" if isinstance(record.get('data_path'), str) else ''
    if isinstance(classes, list) and classes != data.classes:
        changes = [*(f'-{c}' for c in classes if c not in data.classes),
                   *(f'+{c}' for c in data.classes if c not in classes)]
        raise utils.InputError(f"{where}: learned {plural(len(classes), 'class')}, but {data.name} now gives "
                               f"{len(data.classes)} ({', '.join(changes[:6]) or 'in another order'}); resume on "
                               f"the data and classes it learned {learned}, or start a new run.")
    if record.get('fingerprint') and record['fingerprint'] != data.fingerprint:
        if record.get('dataset') == 'builtin' and data.kind == 'builtin':  # no other source to give
            return log(rendered_elsewhere(where, record, data))
        raise utils.InputError(f"{where}: learned {record.get('name')} (fingerprint {record['fingerprint']}), but the "
                               f"data loaded now, {data.name}, differs (fingerprint {data.fingerprint}); resume on "
                               f"the data it learned {learned}, or start a new run.")


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
    p, given = config.apply_overrides(params, argv), {arg.partition('=')[0] for arg in argv}
    if {'minutes', 'epoch_num'} <= given and p['minutes']:
        raise utils.InputError(f"minutes={p['minutes']:g} and epoch_num={p['epoch_num']}: give one of them (minutes "
                               f"fits the steps to a time, epoch_num counts passes over the data).")
    ckpt = None
    if p['resume']:
        ckpt = checkpoints.read_checkpoint(p['resume'])
        if 'rng' not in ckpt:
            raise utils.InputError(f"{p['resume']}: holds no training state (not written by this train.py); "
                                   f"generate.py can draw from it, but training cannot resume from it.")
        # files from before the recipe keys trained without them: c_0 = 0 (model_params), no warm-up, no free
        # bits, a constant learning rate (their own learning_rate is in their params), no moving average;
        # its paths are the user's: the run goes on in the folder of the file resumed, data and images as given
        saved = checkpoints.with_user_paths(
            {k: v for k, v in checkpoints.model_params(p['resume'], ckpt).items() if k in params},
            {**params, 'kl_warmup': 0, 'free_bits': 0.0, 'lr_schedule': 'constant', 'ema': 0.0,
             'checkpoint_dir': str(Path(p['resume']).parent)})
        p = config.apply_overrides({**saved, 'resume': p['resume']}, argv)
        changed = [f"{k}={p[k]!r} (checkpoint: {saved[k]!r})" for k in config.MODEL_KEYS if p[k] != saved[k]]
        if changed:
            raise utils.InputError(f"{p['resume']}: a resumed run keeps the model it saved; remove "
                                   f"{', '.join(changed)}.")
        if p['batch_size'] != saved['batch_size']:
            raise utils.InputError(f"{p['resume']}: a resumed run keeps its batch size, or it would go on at the wrong "
                                   f"image; remove batch_size={p['batch_size']} (checkpoint: {saved['batch_size']}).")
        total = ckpt.get('total_steps')
        if (total and {'minutes', 'epoch_num'} & given) or (p['minutes'] and not saved['minutes']):
            raise utils.InputError(
                f"{p['resume']}: a resumed run keeps its length: " + (
                    f"the {total:,} steps that minutes={saved['minutes']:g} fixed; remove minutes= and epoch_num=."
                    if total else f"epoch_num={saved['epoch_num']} (raise it to train on); remove minutes=."))
        finished = ckpt['step'] >= total if total and 'step' in ckpt else \
            ckpt.get('epoch', 0) >= p['epoch_num'] and not ckpt.get('batch')  # older files: epoch_num as fixed
        if finished and total:
            raise utils.InputError(f"{p['resume']}: finished the {total:,} steps that minutes={p['minutes']:g} "
                                   f"fixed; nothing to do. To train longer, start a new run.")
        if finished:
            raise utils.InputError(f"{p['resume']}: finished epoch {ckpt['epoch']} of epoch_num={p['epoch_num']}; "
                                   f"nothing to do. To train on, raise epoch_num, e.g. resume={p['resume']} "
                                   f"epoch_num={ckpt['epoch'] + 10}.")
    config.check_params(p)
    return p, ckpt


def sample_scorer(data, train, test, p):
    """model -> evaluate.py's sample-quality lines, with the data's classifier (trained now if not cached)."""
    clf, accuracy = classifier.of_data(data, train, test, p)
    noise = torch.Generator(test[0].device)
    return lambda model: classifier.score_lines(classifier.sample_scores(
        model, clf, test[0], classifier.SCORED_SAMPLES, noise.manual_seed(p['seed'])), data.classes, accuracy)


def main(argv=None):
    start = budget.clock()
    p, ckpt = configure(sys.argv[1:] if argv is None else argv)
    for key in ('checkpoint_dir', 'image_dir'):  # proven writable now, not at the first save; ~ expanded
        p[key] = str(utils.writable_dir(p[key], key))
    device = distributed.start(p['device'])
    try:
        check_world(ckpt, p['resume'])
        run_id = runs.id_of(ckpt) or runs.new_id()  # a resume goes on as its run
        with runs.folder_lock(p['checkpoint_dir']) if distributed.rank() == 0 else nullcontext():
            if distributed.rank() == 0:
                runs.remove_temporary(p['checkpoint_dir'], log)
                runs.keep_earlier(p['checkpoint_dir'], p['image_dir'], run_id, p['resume'], log)
            train_on(p, ckpt, device, start, run_id)
    finally:
        distributed.stop()


def check_world(ckpt, where):
    """A resume refused in another number of processes than its checkpoint trained in (older files: not
    recorded, not checked): each one's share of the epoch would change."""
    world = ckpt.get('world') if ckpt else None
    if isinstance(world, int) and world != distributed.world():
        raise utils.InputError(f"{where}: trained in {plural(world, 'process')}, resumed in {distributed.world()}: "
                               f"each one's share of the epoch would change, and the run go on at the wrong image; "
                               f"resume it " + (f"with torchrun --nproc_per_node={world}." if world > 1 else
                                                "without torchrun."))


def train_on(p, ckpt, device, start, run_id):
    precision, why = utils.resolve_precision(p['precision'], device)
    utils.seed_everything(p['seed'])
    data, train, test = prepare_data(p, device, ckpt)
    model = DRAWModel(p, len(data.classes)).to(device)
    if model.canvas_bias is not None and not ckpt:
        model.init_canvas(mean_image(train[0], p))
    optimizer = torch.optim.Adam(model.parameters(), lr=p['learning_rate'], betas=(p['beta1'], 0.999), fused=True)
    averaged = copy.deepcopy(model).requires_grad_(False) if p['ema'] else None
    run = training.Run(model, averaged, optimizer, training.RunState(run=run_id))
    if ckpt:
        run.restore(ckpt, training.steps_per_epoch(len(train[0]), p['batch_size']), train[0])
    state = run.state
    resumed = f", resuming after epoch {state.epoch} step {state.batch}" if ckpt else ''
    processes = f" in each of {distributed.world()} processes" if distributed.world() > 1 else ''
    length = plural(p['epoch_num'], 'epoch')
    if p['minutes']:  # a resumed budget run keeps the steps it fixed
        length = f"{state.total_steps:,} steps (as minutes={p['minutes']:g} fixed)" if state.total_steps \
            else f"{p['minutes']:g} minutes"
    log(f"Training on {device} in {precision} ({why}): {sum(w.numel() for w in model.parameters()):,} parameters, "
        f"{length} of {len(train[0])} images, batch {p['batch_size']}{processes}{resumed}.")
    if distributed.world() > 1:
        torch.manual_seed(p['seed'] + distributed.rank())  # each process its own noise; the order is rank 0's
    p = {**p, 'precision': precision}
    plan = budget.Budget(p['minutes'], start) if p['minutes'] and not state.total_steps else None
    objective = step_objective(model, train, p, state, len(data.classes), plan)
    scorer = sample_scorer(data, train, test, p) if p['sample_scores'] and distributed.rank() == 0 else None
    path = training.train(run, objective, data, train, test, p, start, plan, scorer)
    log(f"Saved {path}, {budget.clock_time(budget.clock() - start)} after the start. "
        f"Draw with: python generate.py -load_path {path} -num_output {training.GIF_SAMPLES}")


def step_objective(model, train, p, state, num_classes, plan=None):
    """What training steps through: model.objective, its glimpse or whole step compiled when compile
    asks for it (auto: whichever ends the steps left soonest, from an eager step timed on the first batch;
    in a minutes=N run, the steps that its plan's time left would hold eager), in DDP under torchrun."""
    train_x, train_y = train
    objective, bs = distributed.Objective(model), p['batch_size']
    total = state.total(p, training.steps_per_epoch(len(train_x), bs))
    # the steps left to compile: none where every batch is smaller than batch_size (those run eager)
    steps = 0 if len(train_x) // distributed.world() < bs else None if total is None else total - state.step
    x, y = to_input(train_x[:bs], p['binarize'], p['channel']), train_y[:bs]
    record = compiling.Record(p['cache_dir'])
    keys = {region: compiling.cache_key(p, num_classes, train_x.device, region) for region in compiling.REGIONS}
    timing = p['compile'] == 'auto' and steps != 0
    seconds = compiling.eager_step_seconds(objective, x, y, p['precision']) if timing else 0
    if steps is None:  # a minutes=N run's, before its length is fixed
        steps = int(max(0.0, plan.left()) / seconds) if seconds else 1
    region, why = compiling.decide(p['compile'], train_x.device, steps, seconds, p['T'],
                                   {region: record.get(key) for region, key in keys.items()})
    chosen = distributed.rank0s(compiling.REGIONS.index(region) + 1 if region and steps > 0 else 0, train_x.device)
    region = compiling.REGIONS[chosen - 1] if chosen else None  # rank 0's choice, on every rank
    log(f"{f'Compiling {compiling.WHAT[region]}' if region else 'Not compiling the training step'} ({why}).")
    if region:
        objective = compiling.compile_objective(objective, x, y, p['free_bits'], p['precision'], log, region,
                                                record, keys[region])
    return distributed.parallel(objective, train_x.device)


if __name__ == '__main__':
    utils.run(main)
