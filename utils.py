"""Helpers shared by train.py and generate.py: errors, config, devices, checkpoints, images, plots."""
import math
import os
import random
import re
import signal
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import imageio.v3 as iio
import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from torchvision.utils import make_grid

from draw_model import DRAWModel

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)

MODEL_KEYS = ('T', 'A', 'B', 'channel', 'z_size', 'read_N', 'write_N', 'enc_size', 'dec_size',
              'read_attn', 'write_attn', 'original_layout', 'conditional', 'canvas_bias')


class InputError(Exception):
    """A problem with the user's input: its message says what and what to do, without a traceback."""


class Stopped(Exception):
    """Training stopped early (a signal, or non-finite losses), its state saved; exit_code for the shell."""

    def __init__(self, message, exit_code=1):
        super().__init__(message)
        self.exit_code = exit_code


def run(main):
    """Run a script's main(), turning InputError (exit status 2) and Stopped into one clear line."""
    try:
        main()
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Stopped as e:
        print(f"stopped: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


class StopSignals:
    """Within the block, SIGINT (Ctrl-C) and SIGTERM only set .received, so the loop can save its
    state at the next step boundary; a second Ctrl-C stops at once."""

    def __enter__(self):
        self.received = None
        self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def handle(self, signum, frame):
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


# -- configuration ------------------------------------------------------------------------------
def parse_value(key, text, default):
    """text cast to the type of default, or an InputError naming the key."""
    kind = type(default)
    if kind is bool and text.lower() in ('1', 'true', 'yes', 'on', '0', 'false', 'no', 'off'):
        return text.lower() in ('1', 'true', 'yes', 'on')
    if kind is not bool:
        try:
            return kind(text)
        except ValueError:
            pass
    raise InputError(f"{key}={text!r}: expected {kind.__name__} (default {default!r}).")


def check_params(params):
    """Values out of range fail here, once, naming the key (types are checked by apply_overrides)."""
    rules = {key: (lambda v: v >= 1, 'at least 1') for key in
             ('T', 'batch_size', 'A', 'B', 'z_size', 'enc_size', 'dec_size', 'epoch_num', 'save_epoch',
              'nonfinite_limit')}
    rules['kl_warmup'] = (lambda v: v >= 0, '0 or more')
    rules.update({
        'read_N': (lambda v: v >= 2 or not params['read_attn'], 'at least 2 with read attention'),
        'write_N': (lambda v: v >= 2 or not params['write_attn'], 'at least 2 with write attention'),
        'channel': (lambda v: v in (1, 3), '1 (grayscale) or 3 (RGB)'),
        'learning_rate': (lambda v: 0 < v < math.inf, 'a positive number'),
        'beta1': (lambda v: 0 <= v < 1, 'in [0, 1)'),
        'clip': (lambda v: 0 < v <= math.inf, 'positive (inf turns clipping off)'),
        'free_bits': (lambda v: 0 <= v < math.inf, 'a number of nats, 0 or more'),
        'test_split': (lambda v: 0 < v < 1, 'a fraction between 0 and 1'),
        'seed': (lambda v: 0 <= v < 2 ** 32, 'an integer from 0 to 2**32 - 1'),
        'binarize': (lambda v: v in ('none', 'threshold', 'sample'), "'none', 'threshold' or 'sample'"),
        'precision': (lambda v: v in ('fp32', 'bf16'), "'fp32' or 'bf16'"),
    })
    for key, (ok, what) in rules.items():
        if key in params and not ok(params[key]):
            raise InputError(f"{key}={params[key]!r}: must be {what}.")


def apply_overrides(params, args):
    """A copy of params with key=value overrides from the command line, type-checked."""
    params = dict(params)
    for arg in args:
        key, sep, text = arg.partition('=')
        if not sep:
            raise InputError(f"{arg!r}: overrides are key=value, e.g. epoch_num=1 batch_size=32.")
        if key not in params:
            raise InputError(f"unknown key {key!r}; valid keys: {', '.join(params)}.")
        params[key] = parse_value(key, text, params[key])
    return params


def pick_device(name):
    """'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:N' or 'mps', checked against this machine."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ('cpu', 'cuda', 'mps'):
        raise InputError(f"device={name!r} is not a device to train on; use auto, cpu, cuda or cuda:N.")
    if (device.type == 'cuda' and (device.index or 0) >= torch.cuda.device_count()) or \
            (device.type == 'mps' and not torch.backends.mps.is_available()):
        raise InputError(f"device={name!r} is not available here ({torch.cuda.device_count()} CUDA devices); "
                         f"use device=auto or cpu.")
    return device


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state():
    """Every random generator's state, as tensors and plain values (loadable with weights_only)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {'torch': torch.get_rng_state(), 'cuda': torch.cuda.get_rng_state_all(),
            'numpy': [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            'python': random.getstate()}


def set_rng_state(state):
    torch.set_rng_state(state['torch'])
    if state['cuda'] and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state['cuda'])
    name, keys, pos, has_gauss, gauss = state['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state['python']
    random.setstate((version, tuple(internal), gauss_next))


# -- files, written atomically: a crash mid-write leaves any previous file whole ---------------
@contextmanager
def atomic_path(path):
    """Yields a temporary name beside path; renames it onto path only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix=path.suffix)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        with open(tmp, 'rb+') as f:
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the file from other users
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_save(obj, path):
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(path, model, optimizer, params, **extra):
    """A self-describing checkpoint: weights, optimizer state, params (plain values) and extras."""
    atomic_save({'model': model.state_dict(), 'optimizer': optimizer.state_dict(), 'params': params, **extra},
                path)


def read_checkpoint(path):
    """The checkpoint dict at path, loaded without executing code (weights_only), or an InputError."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a directory; give the checkpoint file, e.g. checkpoint/model_final.")
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint file.")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty; it is not a checkpoint.")
    try:
        # torch.device is the one non-tensor object the 2019 implementation's checkpoints hold.
        with torch.serialization.safe_globals([torch.device]):
            ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        found = re.search(r'GLOBAL ([\w.]+)', str(e))
        if found:
            raise InputError(f"{path}: refused, it asks for {found.group(1)}, which is not a tensor or a plain "
                             f"value (loading it could run code). Only load checkpoints you trust.") from None
        raise InputError(f"{path}: not a readable checkpoint, it is truncated or another kind of file "
                         f"({type(e).__name__}).") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get('model'), dict) \
            or not isinstance(ckpt.get('params'), dict):
        raise InputError(f"{path}: not a DRAW checkpoint (expected a dict with 'model' and 'params').")
    return ckpt


def model_params(path, ckpt):
    """The params that rebuild the checkpoint's model; the 2019 layout is recognised by its
    single shared attention layer."""
    params, weights = dict(ckpt['params']), ckpt['model']
    params.pop('device', None)  # the 2019 files hold a torch.device: never reused
    params.setdefault('conditional', False)  # older files: unconditional, c_0 = 0
    params.setdefault('canvas_bias', False)
    if 'fc_attention.weight' in weights:
        write_N = params.get('write_N')
        params.update(read_attn=True, write_attn=True, original_layout=True, canvas_bias=False,
                      channel=weights['fc_write.weight'].shape[0] // write_N ** 2 if write_N else None)
    missing = [k for k in MODEL_KEYS if params.get(k) is None]
    if missing:
        raise InputError(f"{path}: its params lack {', '.join(missing)}; it was not written by train.py.")
    wrong = [f'{k}={params[k]!r}' for k in MODEL_KEYS if not isinstance(params[k], int)]
    if wrong:
        raise InputError(f"{path}: its params hold {', '.join(wrong)} where whole numbers or booleans belong.")
    try:
        check_params(params)
    except InputError as e:
        raise InputError(f"{path}: its params hold {e}") from None
    return params


def load_model(path, device):
    """(model on device in eval mode, params, checkpoint) from a checkpoint file."""
    ckpt = read_checkpoint(path)
    params = model_params(path, ckpt)
    classes = ckpt.get('classes')
    if params['conditional'] and not (isinstance(classes, list) and len(classes) >= 2
                                      and all(isinstance(c, str) for c in classes)):
        raise InputError(f"{path}: a conditional model, but its list of class names is missing or damaged.")
    model = DRAWModel(params, len(classes) if params['conditional'] else 0)
    try:
        model.load_state_dict(ckpt['model'])
    except RuntimeError as e:
        first = str(e).split('\n')[1].strip() if '\n' in str(e) else str(e)
        raise InputError(f"{path}: its weights do not fit its params ({first}).") from None
    return model.to(device).eval(), params, ckpt


# -- images and plots ---------------------------------------------------------------------------
def grid(images, scale=2, ncol=None):
    """(n, C, H, W) in [0, 1] -> a grid of ncol columns (default: near-square), upscaled: uint8
    (H', W') for grayscale, (H', W', 3) for RGB (grayscale files are smaller, their GIFs undithered).
    Images sit 2 * scale pixels apart."""
    ncol = ncol or math.ceil(math.sqrt(len(images)))
    g = make_grid(images.detach().float().cpu(), nrow=ncol, padding=2, pad_value=0.5)  # (3, H', W')
    g = F.interpolate(g.unsqueeze(0), scale_factor=scale, mode='nearest')[0]
    g = (g.clamp(0, 1) * 255).round().byte()
    return g[0].numpy() if images.shape[1] == 1 else g.permute(1, 2, 0).numpy()


def save_png(picture, path):
    """A uint8 picture (H, W) or (H, W, 3), as grid makes."""
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, picture, extension='.png')


def save_grid(images, path):
    save_png(grid(images), path)


def save_gif(frames, path, frame_ms=100, hold_ms=2000):
    """frames, one uint8 picture per glimpse (as grid makes), -> an animated GIF, the last held.
    A bar under each frame shows the glimpse count (and keeps frames distinct, so none is merged)."""
    out = []
    for t, frame in enumerate(frames):
        bar = np.zeros((6, *frame.shape[1:]), dtype=np.uint8)
        bar[2:5, :math.ceil(frame.shape[1] * (t + 1) / len(frames))] = 255
        out.append(np.concatenate((frame, bar)))
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, np.stack(out), extension='.gif', loop=0,
                    duration=[frame_ms] * (len(out) - 1) + [hold_ms])


def plot_losses(path, train_losses, steps_per_epoch, test_bounds):
    """Train loss per iteration and test bound per epoch, both in nats per image."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(np.arange(1, len(train_losses) + 1), train_losses, lw=0.6, alpha=0.8, label='train loss (minibatch)')
    epochs_x = steps_per_epoch * np.arange(1, len(test_bounds) + 1)
    ax.plot(epochs_x, test_bounds, 'o-', color='C3', label='test bound (-ELBO), per epoch')
    values = np.concatenate((train_losses, test_bounds))
    values = values[np.isfinite(values)]
    if len(values) > 1:  # leave out the first steps' spike, so the curve's later part is readable
        low, high = np.percentile(values, [0, 98])
        ax.set_ylim(low - 0.05 * (high - low) - 1, high + 0.1 * (high - low) + 1)
    ax.set_xlabel('iteration')
    ax.set_ylabel('nats per image')
    ax.set_title('DRAW training: negative ELBO')
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_curves(path, runs, title):
    """Test bound against training minutes, one line per run: {label: (minutes, bounds)}."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, (minutes, bounds) in runs.items():
        ax.plot(minutes, bounds, 'o-', ms=3, label=label)
    ax.set_xlabel('minutes (epoch lines, summed)')
    ax.set_ylabel('test bound (-ELBO), nats per image')
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_kl(path, kl_per_glimpse, title):
    """Bars of the KL of each glimpse, nats per image: where the model spends its information."""
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(np.arange(1, len(kl_per_glimpse) + 1), kl_per_glimpse, color='C0')
    ax.set_xlabel('glimpse t')
    ax.set_ylabel('KL(Q(z_t | x) || P(z_t)), nats')
    ax.set_title(title)
    ax.grid(alpha=0.3, axis='y')
    save_figure(fig, path)


def save_figure(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches='tight', format='png')
    plt.close(fig)
