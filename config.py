"""train.py's params as the user gives them: key=value overrides parsed to the defaults' types and
checked, once, naming the key; the keys that define a model, and the caps on its sizes; the keys that name
paths; the spelling of the other scripts' flags."""
import math

from utils import InputError

# the params that define a model's shape: a checkpoint rebuilds its model from these alone
MODEL_KEYS = ('T', 'A', 'B', 'channel', 'z_size', 'read_N', 'write_N', 'enc_size', 'dec_size',
              'read_attn', 'write_attn', 'original_layout', 'conditional', 'canvas_bias')

# The largest model train.py trains and a checkpoint may ask for, checked before anything is built: twice
# the paper's largest (T=64 glimpses; 800-unit LSTMs for SVHN; 100x100 cluttered MNIST, 12x12 glimpses),
# so that the weights (at most about 2.2 GB in fp32, RGB 128x128 without read attention) and a 64-sample
# generation's canvases (T x 64 x C x B x A floats, at most 1.6 GB) fit in a few GB. num_classes and
# name_chars bound a checkpoint's list of classes and each class name and glyph. web/page.js holds the
# same numbers, in its own MODEL_CAPS.
MODEL_CAPS = {'T': 128, 'A': 128, 'B': 128, 'read_N': 64, 'write_N': 64, 'z_size': 512, 'enc_size': 1024,
              'dec_size': 1024, 'num_classes': 10000, 'name_chars': 200}

# the params that name a file or folder: the user's to choose, never a checkpoint's
PATH_KEYS = ('data_path', 'cache_dir', 'checkpoint_dir', 'image_dir', 'resume')


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
    """Values out of range fail here, once, naming the key (types are checked by apply_overrides); the
    model's sizes within MODEL_CAPS, and attention windows no larger than the image."""
    rules = {key: (lambda v: v >= 1, 'at least 1') for key in ('batch_size', 'epoch_num', 'save_epoch',
                                                               'nonfinite_limit')}
    rules.update({key: (lambda v, cap=MODEL_CAPS[key]: 1 <= v <= cap,
                        f"at least 1 and at most {MODEL_CAPS[key]} (config.MODEL_CAPS)")
                  for key in ('T', 'A', 'B', 'z_size', 'enc_size', 'dec_size')})
    rules.update({key: window_rule(params, key, attn) for key, attn in (('read_N', 'read_attn'),
                                                                         ('write_N', 'write_attn'))})
    rules['kl_warmup'] = (lambda v: v >= 0, '0 or more')
    rules.update({
        'channel': (lambda v: v in (1, 3), '1 (grayscale) or 3 (RGB)'),
        'learning_rate': (lambda v: 0 < v < math.inf, 'a positive number'),
        'minutes': (lambda v: 0 <= v < math.inf, 'a number of minutes, 0 or more (0: epoch_num sets the length)'),
        'beta1': (lambda v: 0 <= v < 1, 'in [0, 1)'),
        'clip': (lambda v: 0 < v <= math.inf, 'positive (inf turns clipping off)'),
        'free_bits': (lambda v: 0 <= v < math.inf, 'a number of nats, 0 or more'),
        'ema': (lambda v: 0 <= v < 1, 'in [0, 1) (0: no moving average)'),
        'test_split': (lambda v: 0 < v < 1, 'a fraction between 0 and 1'),
        'seed': (lambda v: 0 <= v < 2 ** 32, 'an integer from 0 to 2**32 - 1'),
        'binarize': (lambda v: v in ('none', 'threshold', 'sample'), "'none', 'threshold' or 'sample'"),
        'lr_schedule': (lambda v: v in ('cosine', 'wsd', 'constant'), "'cosine', 'wsd' or 'constant'"),
        'precision': (lambda v: v in ('auto', 'fp32', 'bf16'), "'auto', 'fp32' or 'bf16'"),
        'compile': (lambda v: v in ('auto', 'glimpse', 'step', 'true', 'false'), "'auto', 'glimpse', 'step' or 'false'"),
    })
    for key, (ok, what) in rules.items():
        if key not in params:
            continue
        try:
            fine = ok(params[key])
        except TypeError:  # a checkpoint's value of another type (train.py's overrides are typed)
            fine = False
        if not fine:
            raise InputError(f"{key}={params[key]!r}: must be {what}.")


def window_rule(params, key, attn):
    """The rule of an attention window's side N (read_N, write_N): within MODEL_CAPS; with that attention,
    at least 2 and no more than the image's smaller side (A or B; checked before it)."""
    cap, name = MODEL_CAPS[key], attn.replace('_attn', '')
    if not params.get(attn):
        return lambda v: v <= cap, f"at most {cap} (config.MODEL_CAPS)"
    side = min(params['A'], params['B'])
    return (lambda v: 2 <= v <= min(side, cap),
            f"at least 2 with {name} attention, and at most {min(side, cap)} (the image's smaller side, "
            f"min(A, B), and config.MODEL_CAPS's {cap})")


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


def flag(name):
    """generate.py's and evaluate.py's spellings of a flag: -name, as the 2019 scripts had it, and --name."""
    return f'-{name}', f'--{name}'
