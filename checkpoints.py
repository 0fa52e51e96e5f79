"""Checkpoints: written atomically with everything that rebuilds the model (params, weights) and
resumes its training; read without running code (weights_only), the 2019 implementation's files
included; turned back into a model. A checkpoint's params are data, not orders: its sizes are checked
against config.MODEL_CAPS before anything is built, and its paths are never used."""
import re
from pathlib import Path

import torch

import config
from draw_model import DRAWModel
from utils import InputError, atomic_save

SAFE_TORCH = (2, 6)  # before 2.6, torch.load(weights_only=True) could be made to run code (CVE-2025-32434)


def save_checkpoint(path, model, optimizer, params, **extra):
    """A self-describing checkpoint: weights, optimizer state, params (plain values) and extras."""
    atomic_save({'model': model.state_dict(), 'optimizer': optimizer.state_dict(), 'params': params, **extra},
                path)


def torch_version():
    """The installed torch's (major, minor)."""
    return tuple(int(part) for part in re.match(r'(\d+)\.(\d+)', torch.__version__).groups())


def read_checkpoint(path):
    """The checkpoint dict at path, loaded without executing code (weights_only), or an InputError."""
    if torch_version() < SAFE_TORCH:
        raise InputError(f"{path}: not loaded: torch {torch.__version__} can be made to run code while loading a "
                         f"checkpoint (CVE-2025-32434); install torch 2.6 or later (pip install -r requirements.txt).")
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
        write_N, fc_write = params.get('write_N'), weights.get('fc_write.weight')
        params.update(read_attn=True, write_attn=True, original_layout=True, canvas_bias=False,
                      channel=fc_write.shape[0] // write_N ** 2 if isinstance(write_N, int) and write_N > 0
                      and isinstance(fc_write, torch.Tensor) else None)
    missing = [k for k in config.MODEL_KEYS if params.get(k) is None]
    if missing:
        raise InputError(f"{path}: its params lack {', '.join(missing)}; it was not written by train.py.")
    wrong = [f'{k}={params[k]!r}' for k in config.MODEL_KEYS if not isinstance(params[k], int)]
    if wrong:
        raise InputError(f"{path}: its params hold {', '.join(wrong)} where whole numbers or booleans belong.")
    try:
        config.check_params(params)  # its sizes within config.MODEL_CAPS, before anything is built
    except InputError as e:
        raise InputError(f"{path}: its params hold {e}") from None
    return params


def check_classes(path, ckpt, conditional):
    """The checkpoint's class names and glyphs, where it has them: lists of strings within
    config.MODEL_CAPS (num_classes, name_chars), one glyph per class; at least two classes for a
    conditional model. They size the model's label input and what is drawn, so they are checked first."""
    glyphs, caps = ckpt.get('glyphs'), config.MODEL_CAPS
    for what, names in (('list of class names', ckpt.get('classes')), ('list of glyphs', glyphs)):
        if names is not None and not (isinstance(names, list) and all(isinstance(c, str) for c in names)):
            raise InputError(f"{path}: its {what} is damaged (not a list of strings).")
    classes = ckpt.get('classes') or []
    if conditional and len(classes) < 2:
        raise InputError(f"{path}: a conditional model, but its list of class names is missing or damaged.")
    if len(classes) > caps['num_classes']:
        raise InputError(f"{path}: it names {len(classes):,} classes, more than config.MODEL_CAPS's "
                         f"num_classes={caps['num_classes']:,}; it is damaged or not a DRAW checkpoint.")
    if glyphs and len(glyphs) != len(classes):
        raise InputError(f"{path}: it holds {len(glyphs):,} glyphs for {len(classes):,} classes; it is damaged.")
    longest = max(classes + (glyphs or []), key=len, default='')
    if len(longest) > caps['name_chars']:
        raise InputError(f"{path}: a class name or glyph of {len(longest):,} characters ({longest[:20]!r}...), "
                         f"more than config.MODEL_CAPS's name_chars={caps['name_chars']}; it is damaged.")


def with_user_paths(params, defaults):
    """The checkpoint's params over defaults (train.py's), but for the paths (config.PATH_KEYS), which
    are the defaults': the folders a checkpoint names are never read or written."""
    return {**defaults, **{k: v for k, v in params.items() if k not in config.PATH_KEYS}}


def load_model(path, device, weights='model'):
    """(model on device in eval mode, params, checkpoint) from a checkpoint file, with its weights
    of that key: 'model' (the moving average, where training kept one), or 'training_model' (the
    weights Adam trained, saved beside their average)."""
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt.get(weights), dict):
        raise InputError(f"{path}: holds no {weights} (it was trained with ema=0, or before ema): its model is "
                         f"the trained weights; score it without -weights trained.")
    params = model_params(path, ckpt)
    check_classes(path, ckpt, params['conditional'])
    model = DRAWModel(params, len(ckpt['classes']) if params['conditional'] else 0)
    try:
        model.load_state_dict(ckpt[weights])
    except RuntimeError as e:
        first = str(e).split('\n')[1].strip() if '\n' in str(e) else str(e)
        raise InputError(f"{path}: its weights do not fit its params ({first}).") from None
    return model.to(device).eval(), params, ckpt
