"""The on-disk formats DRAW reads: where each source's files sit under a folder, and how each is
decoded into uint8 images (n, 1, B, A), integer labels and class names. Nothing here caches, splits or
selects classes: dataloader.py assembles datasets from what these return.

Sources (train.py's `dataset` key names one; 'auto' takes the first found under `data_path`):
  csv              Kaggle DHCD `data.csv` (or any *.csv / *.csv.gz): pixel_0000..pixel_1023,character
  uci              UCI DHCD folders Train/<class>/*.png and Test/<class>/*.png (the official split)
  binarized_mnist  binarized_mnist_{train,valid,test}.amat[.gz] (train + valid for training)
  mnist            the four MNIST idx files, gzipped or not
  folder           any folder of class subfolders of images (the 2019 implementation's layout)
  builtin          all 46 DHCD classes rendered from Devanagari fonts: no download needed
"""
import gzip
import io
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

import devanagari
from utils import InputError

SOURCES = ('auto', 'csv', 'uci', 'binarized_mnist', 'mnist', 'folder', 'builtin')
IMAGE_SUFFIXES = {'.png', '.jpg', '.jpeg', '.bmp', '.gif', '.tif', '.tiff', '.webp'}
BUILTIN_PER_CLASS = (300, 50)  # rendered images per class: train, test
DEFAULT_DATA_PATH = 'data'  # train.py's data_path default: only there a missing or empty folder means the built-in set


def natural_key(name):
    """Sort 'character_2_kha' before 'character_10_yna'."""
    return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', name)]


# -- finding the source -------------------------------------------------------------------------
def subdirs(d):
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith('.'))


def find_csv(root):
    found = sorted(p for p in root.iterdir() if p.is_file() and p.name.lower().endswith(('.csv', '.csv.gz')))
    preferred = [p for p in found if p.name.lower() == 'data.csv']
    if len(found) > 1 and not preferred:
        names = ', '.join(p.name for p in found)
        raise InputError(f"{root}: several CSV files ({names}); set data_path to the one to train on.")
    return (preferred or found or [None])[0]


def find_uci(root):
    for d in [root, *subdirs(root), *(p for s in subdirs(root) for p in subdirs(s))]:
        names = {p.name.lower() for p in subdirs(d)}
        if {'train', 'test'} <= names:
            return d
    return None


def find_file(root, names):
    """The first file under root (searched recursively) with one of these names, or None."""
    found = sorted(p for name in names for p in root.rglob(name) if '.cache' not in p.parts)
    return found[0] if found else None


def find_folder(root):
    def has_class_folders(d):
        return any(any(f.suffix.lower() in IMAGE_SUFFIXES for f in sub.iterdir()) for sub in subdirs(d))
    return next((d for d in [root, *subdirs(root)] if has_class_folders(d)), None)


FINDERS = {  # in the order 'auto' tries them
    'csv': find_csv,
    'uci': find_uci,
    'binarized_mnist': lambda root: find_file(root, ['binarized_mnist_train.amat', 'binarized_mnist_train.amat.gz']),
    'mnist': lambda root: find_file(root, ['train-images-idx3-ubyte', 'train-images-idx3-ubyte.gz']),
    'folder': find_folder,
}


def find_source(dataset, data_path, setting='data_path'):
    """(source kind, path) for the dataset key; ('builtin', reason) when 'auto' finds nothing at the
    default data_path. A path the user gave must hold data (~ is expanded); errors name it as setting
    (train.py's data_path, or another script's flag)."""
    if dataset not in SOURCES:
        raise InputError(f"dataset={dataset!r} is not a source; choose one of {', '.join(SOURCES)}.")
    if dataset == 'builtin':
        return 'builtin', 'dataset=builtin'
    fallback = setting == 'data_path' and dataset == 'auto' and data_path == Path(DEFAULT_DATA_PATH)
    data_path = data_path.expanduser()
    if data_path.is_file():
        if dataset in ('auto', 'csv') and data_path.name.lower().endswith(('.csv', '.csv.gz')):
            return 'csv', data_path
        raise InputError(f"{setting} {data_path} is a file but not a .csv or .csv.gz; "
                         f"point {setting} at a CSV or at the folder holding the data.")
    if not data_path.is_dir():
        if not fallback:
            kind = 'file' if data_path.name.lower().endswith(('.csv', '.csv.gz')) else 'file or folder'
            hint = ', or leave data_path out for the built-in set' if setting == 'data_path' else ''
            raise InputError(f"{setting} {data_path}: no such {kind} (from {Path.cwd()}); give the path of your "
                             f"data{hint}.")
        return 'builtin', f"{data_path}/ does not exist"
    for kind, finder in FINDERS.items():
        if dataset in ('auto', kind):
            path = finder(data_path)
            if path is not None:
                return kind, path
    if not fallback:
        raise InputError(f"{setting} {data_path}: no {'' if dataset == 'auto' else dataset + ' '}data found in "
                         f"this folder; the README lists the layouts read.")
    return 'builtin', f"no dataset found in {data_path}/"


# -- decoders: each returns (train_x, train_y, test_x or None, test_y or None, classes) ----------
def read_bytes(path):
    if not path.is_file():
        raise InputError(f"{path}: file not found; the {path.parent} folder is incomplete.")
    data = path.read_bytes()
    if path.suffix == '.gz':
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise InputError(f"{path}: not a readable gzip file ({e}); download it again.") from None
    return data


def count_per_line(raw, chars):
    """For each line of raw text: how many of its bytes are in chars, and how many are not blank."""
    buf = np.frombuffer(raw, dtype=np.uint8)
    bounds = np.concatenate(([0], np.flatnonzero(buf == ord('\n')) + 1, [len(buf)]))
    def per_line(mask):
        return np.diff(np.concatenate(([0], np.cumsum(mask)))[bounds])
    return per_line(np.isin(buf, list(chars))), per_line(~np.isin(buf, list(b' \t\r\n')))


def decode_csv(path, A, B, log):
    raw = read_bytes(path).removeprefix(b'\xef\xbb\xbf').replace(b'\r\n', b'\n')
    commas, filled = count_per_line(raw, b',')
    lines = np.flatnonzero(filled)  # blank lines are skipped
    if len(lines) < 2:
        raise InputError(f"{path}: no data rows under the header; a DHCD CSV has one row per image.")
    bad = lines[commas[lines] != commas[lines[0]]]
    if len(bad):
        raise InputError(f"{path}, line {bad[0] + 1}: {commas[bad[0]] + 1} fields where the header has "
                         f"{commas[lines[0]] + 1}; each row needs one value per pixel, then the class name.")
    text = b'\n'.join(line for line in raw.split(b'\n') if line.strip())
    try:
        df = pd.read_csv(io.BytesIO(text), low_memory=False, dtype={'character': str}, keep_default_na=False)
    except (pd.errors.ParserError, ValueError) as e:
        raise InputError(f"{path}: not a readable CSV ({e}).") from None
    pixel_cols = [c for c in df.columns if str(c).startswith('pixel')]
    side = int(round(len(pixel_cols) ** 0.5))
    if 'character' not in df.columns or not pixel_cols or side * side != len(pixel_cols) \
            or len(df.columns) != len(pixel_cols) + 1:
        raise InputError(f"{path}: the header must be pixel_0000,...,pixel_1023,character (Kaggle's DHCD "
                         f"layout: one column per pixel of a square image, then the class); found "
                         f"{len(df.columns)} columns: {', '.join(map(str, df.columns[:3]))}, ...")
    pixels = df[pixel_cols].apply(pd.to_numeric, errors='coerce').to_numpy(dtype=np.float32)
    bad = np.isnan(pixels) | (pixels < 0) | (pixels > 255) | (pixels != np.round(pixels))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise InputError(f"{path}, line {lines[row + 1] + 1}, {pixel_cols[col]}: "
                         f"{df[pixel_cols[col]].iat[row]!r} is not a pixel value (an integer 0-255).")
    names = df['character'].str.strip()
    if (names == '').any():
        row = int(np.flatnonzero((names == '').to_numpy())[0])
        raise InputError(f"{path}, line {lines[row + 1] + 1}: the character (class name) is empty.")
    classes = sorted(names.unique(), key=natural_key)
    labels = names.map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=np.int64, copy=True)
    x = torch.from_numpy(pixels.astype(np.uint8).reshape(-1, 1, side, side))
    return resize(x, A, B, path, log), torch.from_numpy(labels), None, None, classes


def decode_image(path):
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert('L')), None
    except Exception as e:  # PIL raises many types for broken files; each is reported by name
        return None, f"{path.name}: {type(e).__name__}: {e}"


def decode_class_folders(root, A, B, log, classes=None):
    """Images under root/<class>/; unreadable files are skipped, counted and reported."""
    classes = classes or sorted((d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith('.')),
                                key=natural_key)
    files, labels = [], []
    for i, name in enumerate(classes):
        found = sorted(f for f in (root / name).iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) \
            if (root / name).is_dir() else []
        files += found
        labels += [i] * len(found)
    with ThreadPoolExecutor() as pool:
        decoded = list(pool.map(decode_image, files, chunksize=256))
    errors = [err for _, err in decoded if err]
    if errors:
        log(f"{root}: skipped {len(errors)} unreadable image(s) of {len(files)}, e.g. {errors[0]}")
    keep = [i for i, (img, _) in enumerate(decoded) if img is not None]
    if not keep:
        raise InputError(f"{root}: no readable images in its class folders ({', '.join(classes[:5])}...).")
    images = [decoded[i][0] for i in keep]
    other = sorted({img.shape[::-1] for img in images} - {(A, B)})
    if other:
        log(f"{root}: images of size {', '.join(f'{w}x{h}' for w, h in other)} resized to {A}x{B}.")
    x = np.stack([img if img.shape == (B, A) else np.asarray(Image.fromarray(img).resize((A, B), Image.BILINEAR))
                  for img in images])
    return torch.from_numpy(x).unsqueeze(1), torch.tensor([labels[i] for i in keep]), classes


def decode_uci(root, A, B, log):
    dirs = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    train_x, train_y, classes = decode_class_folders(dirs['train'], A, B, log)
    test_x, test_y, _ = decode_class_folders(dirs['test'], A, B, log, classes)
    return train_x, train_y, test_x, test_y, classes


def decode_folder(root, A, B, log):
    x, y, classes = decode_class_folders(root, A, B, log)
    return x, y, None, None, classes


def read_idx(path):
    raw = read_bytes(path)
    if len(raw) < 4 or raw[:2] != b'\0\0' or raw[2] != 8 or len(raw) < 4 + 4 * raw[3]:
        raise InputError(f"{path}: not an idx file of unsigned bytes (the MNIST format).")
    dims = np.frombuffer(raw, dtype='>u4', count=raw[3], offset=4)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * raw[3])
    if data.size != np.prod(dims):
        raise InputError(f"{path}: holds {data.size} bytes where its header promises {np.prod(dims)}; "
                         f"the file is truncated, download it again.")
    return torch.from_numpy(data.reshape(*dims).copy())


def decode_mnist(path, A, B, log):
    folder, gz = path.parent, '.gz' if path.suffix == '.gz' else ''
    split = {}
    for name, prefix in (('train', 'train'), ('test', 't10k')):
        x = read_idx(folder / f'{prefix}-images-idx3-ubyte{gz}').unsqueeze(1)
        y = read_idx(folder / f'{prefix}-labels-idx1-ubyte{gz}').long()
        if x.dim() != 4 or y.dim() != 1 or len(x) != len(y):
            raise InputError(f"{folder}: {prefix} images {tuple(x.shape)} and labels {tuple(y.shape)} do not "
                             f"match; the MNIST files are damaged or mixed up.")
        split[name] = resize(x, A, B, path, log if name == 'train' else None), y
    return *split['train'], *split['test'], [f'digit_{d}' for d in range(10)]


def read_amat(path):
    raw = read_bytes(path)
    digits, filled = count_per_line(raw, b'01')
    lines = np.flatnonzero(filled)
    buf = np.frombuffer(raw, dtype=np.uint8)
    is_digit = (buf == ord('0')) | (buf == ord('1'))
    if not len(lines) or not np.isin(buf, list(b'01 \t\r\n')).all() or (is_digit[1:] & is_digit[:-1]).any():
        raise InputError(f"{path}: expected rows of 784 space-separated 0/1 values (the .amat layout).")
    bad = lines[digits[lines] != 784]
    if len(bad):
        raise InputError(f"{path}, line {bad[0] + 1}: {digits[bad[0]]} values where a 28x28 image has 784.")
    x = buf[is_digit] - ord('0')
    return torch.from_numpy(x.reshape(-1, 1, 28, 28) * 255)


def decode_binarized_mnist(path, A, B, log):
    suffix = '.amat.gz' if path.name.endswith('.gz') else '.amat'
    part = {s: read_amat(path.parent / f'binarized_mnist_{s}{suffix}') for s in ('train', 'valid', 'test')}
    train_x = resize(torch.cat((part['train'], part['valid'])), A, B, path, log)
    test_x = resize(part['test'], A, B, path, None)
    # The binarized set has no labels: one class holds every image.
    return train_x, torch.zeros(len(train_x), dtype=torch.long), test_x, \
        torch.zeros(len(test_x), dtype=torch.long), ['unlabelled']


def decode_builtin(_, A, B, log):
    (train_x, train_y), (test_x, test_y) = (devanagari.render_dataset(n, seed)
                                            for seed, n in enumerate(BUILTIN_PER_CLASS))
    return (resize(train_x, A, B, 'built-in set', log), train_y, resize(test_x, A, B, 'built-in set', None),
            test_y, list(devanagari.CLASSES))


DECODERS = {'csv': decode_csv, 'uci': decode_uci, 'folder': decode_folder, 'mnist': decode_mnist,
            'binarized_mnist': decode_binarized_mnist, 'builtin': decode_builtin}


def resize(x, A, B, where, log):
    """(n, 1, h, w) uint8 -> (n, 1, B, A), with one line said when a resize happens."""
    if x.shape[-2:] == (B, A):
        return x
    if log:
        log(f"{where}: images are {x.shape[-1]}x{x.shape[-2]}, resized to {A}x{B} (set A and B to keep them).")
    y = F.interpolate(x.float(), size=(B, A), mode='bilinear', antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8)
