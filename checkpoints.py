"""Checkpoints: written atomically with everything that rebuilds the model (params, weights) and
resumes its training; read without running code (weights_only), the 2019 implementation's files
included; turned back into a model."""
import re
from pathlib import Path

import torch

import config
from draw_model import DRAWModel
from utils import InputError, atomic_save


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
    missing = [k for k in config.MODEL_KEYS if params.get(k) is None]
    if missing:
        raise InputError(f"{path}: its params lack {', '.join(missing)}; it was not written by train.py.")
    wrong = [f'{k}={params[k]!r}' for k in config.MODEL_KEYS if not isinstance(params[k], int)]
    if wrong:
        raise InputError(f"{path}: its params hold {', '.join(wrong)} where whole numbers or booleans belong.")
    try:
        config.check_params(params)
    except InputError as e:
        raise InputError(f"{path}: its params hold {e}") from None
    return params


def load_model(path, device, weights='model'):
    """(model on device in eval mode, params, checkpoint) from a checkpoint file, with its weights
    of that key: 'model' (the moving average, where training kept one), or 'training_model' (the
    weights Adam trained, saved beside their average)."""
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt.get(weights), dict):
        raise InputError(f"{path}: holds no {weights} (it was trained with ema=0, or before ema): its model is "
                         f"the trained weights; score it without -weights trained.")
    params = model_params(path, ckpt)
    classes = ckpt.get('classes')
    if params['conditional'] and not (isinstance(classes, list) and len(classes) >= 2
                                      and all(isinstance(c, str) for c in classes)):
        raise InputError(f"{path}: a conditional model, but its list of class names is missing or damaged.")
    model = DRAWModel(params, len(classes) if params['conditional'] else 0)
    try:
        model.load_state_dict(ckpt[weights])
    except RuntimeError as e:
        first = str(e).split('\n')[1].strip() if '\n' in str(e) else str(e)
        raise InputError(f"{path}: its weights do not fit its params ({first}).") from None
    return model.to(device).eval(), params, ckpt
