"""train.py's params as the user gives them: key=value overrides parsed to the defaults' types and
checked, once, naming the key; the keys that define a model; the spelling of the other scripts' flags."""
import math

from utils import InputError

# the params that define a model's shape: a checkpoint rebuilds its model from these alone
MODEL_KEYS = ('T', 'A', 'B', 'channel', 'z_size', 'read_N', 'write_N', 'enc_size', 'dec_size',
              'read_attn', 'write_attn', 'original_layout', 'conditional', 'canvas_bias')


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
        'compile': (lambda v: v in ('auto', 'true', 'false'), "'auto', 'true' or 'false'"),
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


def flag(name):
    """generate.py's and evaluate.py's spellings of a flag: -name, as the 2019 scripts had it, and --name."""
    return f'-{name}', f'--{name}'
