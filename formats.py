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
import csv
import functools
import gzip
import io
import itertools
import math
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

import devanagari
from utils import InputError, natural_key

SOURCES = ('auto', 'csv', 'uci', 'binarized_mnist', 'mnist', 'folder', 'builtin')
IMAGE_SUFFIXES = {'.png', '.jpg', '.jpeg', '.bmp', '.gif', '.tif', '.tiff', '.webp'}
BUILTIN_PER_CLASS = (300, 50)  # rendered images per class: train, test
DEFAULT_DATA_PATH = 'data'  # train.py's data_path default: only there a missing or empty folder means the built-in set


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
CSV_BLOCK = 1 << 22  # bytes of CSV text parsed at a time (~1,100 DHCD rows): the work space beside the images
LONGEST_LINE = 1 << 26  # bytes: no row of an image CSV is longer (a 2048x2048 image's is ~15 MB)
MAX_IMAGE_PIXELS = 1 << 24  # an image that would decode larger (4096x4096) is skipped before it is decoded


def opened(path):
    """path opened for reading bytes, decompressed as read when it ends in .gz."""
    if not path.is_file():
        raise InputError(f"{path}: file not found; the {path.parent} folder is incomplete.")
    return gzip.open(path, 'rb') if path.suffix.lower() == '.gz' else open(path, 'rb')


def read(f, path, size=-1):
    """size bytes of f (all with -1), a damaged file an InputError naming path."""
    try:
        return f.read(size)
    except (OSError, EOFError, zlib.error) as e:
        kind = 'gzip file' if path.suffix.lower() == '.gz' else 'file'
        raise InputError(f"{path}: not a readable {kind} ({e}); download it again.") from None


def read_bytes(path):
    with opened(path) as f:
        return read(f, path)


def count_per_line(raw, chars):
    """For each line of raw text: how many of its bytes are in chars, and how many are not blank.
    Counted from the positions of those bytes, a few bytes of work space per byte of text."""
    buf = np.frombuffer(raw, dtype=np.uint8)
    ends = np.flatnonzero(buf == ord('\n'))
    def per_line(members):
        table = np.zeros(256, dtype=bool)
        table[list(members)] = True
        return np.bincount(np.searchsorted(ends, np.flatnonzero(table[buf])), minlength=len(ends) + 1)
    lengths = np.diff(np.concatenate(([0], ends + 1, [len(buf)])))
    return per_line(chars), lengths - per_line(b' \t\r\n')


def text_blocks(path, size=None):
    """(the number of its first line, whole lines of path's text), about size bytes at a time, read as
    they are needed: the BOM dropped, CRLF read as LF."""
    size, line = size or CSV_BLOCK, 1
    with opened(path) as f:
        text = read(f, path, size).removeprefix(b'\xef\xbb\xbf')
        while text:
            more = read(f, path, size)
            cut = text.rfind(b'\n') + 1 if more else len(text)
            if not cut:  # no line end yet: read on
                if len(text) > LONGEST_LINE:
                    raise InputError(f"{path}, line {line}: over {LONGEST_LINE >> 20} MB without a line end; "
                                     f"not a CSV of images.")
                text += more
                continue
            block = text[:cut].replace(b'\r\n', b'\n')
            yield line, block
            line += block.count(b'\n')
            text = text[cut:] + more


def csv_header(path, blocks):
    """The CSV's first non-blank line, checked against Kaggle's layout: (that line, its pixel columns,
    the number of the next line, the rest of its block)."""
    for first, text in blocks:
        blank = len(text) - len(text.lstrip(b' \t\r\n'))
        if blank < len(text):
            start = text.rfind(b'\n', 0, blank) + 1
            header, _, rest = text[start:].partition(b'\n')
            break
    else:
        raise InputError(f"{path}: no data rows under the header; a DHCD CSV has one row per image.")
    try:
        found = next(csv.reader([header.decode('utf-8', 'replace')]))
    except csv.Error:
        found = header.decode('utf-8', 'replace').split(',')
    side = math.isqrt(len(found) - 1)
    pixels = [f'pixel_{k:04d}' for k in range(side * side)]
    if not pixels or found != [*pixels, 'character']:
        raise InputError(f"{path}: the header must be pixel_0000,...,pixel_1023,character (Kaggle's DHCD "
                         f"layout: one column per pixel of a square image, then the class); found "
                         f"{len(found)} columns: {', '.join(found[:3])}, ...")
    return header, pixels, first + text.count(b'\n', 0, start) + 1, rest


def csv_rows(path, text, first, header, pixels):
    """The rows in text, whole lines of the CSV from line number first: their pixels, uint8 (n, pixels),
    and class names. Blank lines are skipped; a bad row is an InputError naming its line."""
    commas, filled = count_per_line(text, b',')
    lines = np.flatnonzero(filled)
    bad = lines[commas[lines] != len(pixels)]
    if len(bad):
        raise InputError(f"{path}, line {first + bad[0]}: {commas[bad[0]] + 1} fields where the header has "
                         f"{len(pixels) + 1}; each row needs one value per pixel, then the class name.")
    if not len(lines):
        return np.zeros((0, len(pixels)), dtype=np.uint8), pd.Series([], dtype=str)
    split = text.split(b'\n')
    body = b'\n'.join([header, *(split[i] for i in lines)])
    try:
        df = pd.read_csv(io.BytesIO(body), low_memory=False, dtype={'character': str}, keep_default_na=False)
    except (pd.errors.ParserError, ValueError) as e:
        raise InputError(f"{path}: not a readable CSV ({e}).") from None
    numbers = df.iloc[:, :-1]  # the pixel columns, as the header was checked
    if not all(kind in 'iuf' for kind in numbers.dtypes.map(lambda t: t.kind)):  # some value was not a number
        numbers = numbers.apply(pd.to_numeric, errors='coerce')
    values = numbers.to_numpy(dtype=np.float32)
    bad = np.isnan(values) | (values < 0) | (values > 255) | (values != np.round(values))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise InputError(f"{path}, line {first + lines[row]}, {pixels[col]}: "
                         f"{df[pixels[col]].iat[row]!r} is not a pixel value (an integer 0-255).")
    names = df['character'].str.strip()
    if (names == '').any():
        row = int(np.flatnonzero((names == '').to_numpy())[0])
        raise InputError(f"{path}, line {first + lines[row]}: the character (class name) is empty.")
    return values.astype(np.uint8), names


def decode_csv(path, A, B, log):
    """Kaggle's layout, read a block of lines at a time: the header is checked before any row is parsed,
    and no more than a block of text is held beside the images."""
    blocks = text_blocks(path)
    header, pixels, first, rest = csv_header(path, blocks)
    rows = [csv_rows(path, text, n, header, pixels) for n, text in itertools.chain([(first, rest)], blocks)]
    images = np.concatenate([x for x, _ in rows])
    if not len(images):
        raise InputError(f"{path}: no data rows under the header; a DHCD CSV has one row per image.")
    names = pd.concat([n for _, n in rows], ignore_index=True)
    classes = sorted(names.unique(), key=natural_key)
    labels = names.map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=np.int64, copy=True)
    side = math.isqrt(len(pixels))
    x = torch.from_numpy(images.reshape(-1, 1, side, side))
    return resize(x, A, B, path, log), torch.from_numpy(labels), None, None, classes


def decode_image(path, A, B):
    """(the image at path, grey, resized to A x B; its own width and height), or (None, None, why not).
    Its size is read from its header first: one that would decode larger than MAX_IMAGE_PIXELS is
    skipped undecoded; a JPEG decodes at the smallest scale (1/2 to 1/8) still A x B or larger."""
    try:
        with Image.open(path) as im:
            size = im.size
            im.draft('L', (A, B))
            if im.size[0] * im.size[1] > MAX_IMAGE_PIXELS:
                return None, None, (f"{path.name}: {im.size[0]}x{im.size[1]} pixels, over the limit of "
                                    f"{MAX_IMAGE_PIXELS:,} (formats.MAX_IMAGE_PIXELS); shrink it or remove it")
            grey = im.convert('L')
            return np.asarray(grey if grey.size == (A, B) else grey.resize((A, B), Image.BILINEAR)), size, None
    except Exception as e:  # PIL raises many types for broken files; each is reported by name
        return None, None, f"{path.name}: {type(e).__name__}: {e}"


def class_folder_files(root, classes=None):
    """The images under root/<class>/ (classes: root's subfolders, unless given), their labels, the classes."""
    classes = classes or sorted((d.name for d in subdirs(root)), key=natural_key)
    files, labels = [], []
    for i, name in enumerate(classes):
        folder = root / name
        found = sorted(e.name for e in os.scandir(folder) if os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES) \
            if folder.is_dir() else []
        files += [folder / f for f in found]
        labels += [i] * len(found)
    return files, labels, classes


def uci_folders(root):
    """The Train and Test folders of the UCI layout at root."""
    dirs = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    return dirs['train'], dirs['test']


def image_files(kind, path):
    """Every image file the decoder of this uci or folder source reads."""
    if kind == 'folder':
        return class_folder_files(path)[0]
    train, test = uci_folders(path)
    files, _, classes = class_folder_files(train)
    return files + class_folder_files(test, classes)[0]


def decode_class_folders(root, A, B, log, classes=None):
    """Images under root/<class>/, each resized to A x B as it is decoded; unreadable and oversized
    files are skipped, counted and reported."""
    files, labels, classes = class_folder_files(root, classes)
    with ThreadPoolExecutor() as pool:
        decoded = list(pool.map(functools.partial(decode_image, A=A, B=B), files))
    errors = [err for _, _, err in decoded if err]
    if errors:
        log(f"{root}: skipped {len(errors)} unreadable or oversized image(s) of {len(files)}, e.g. {errors[0]}")
    keep = [i for i, (img, _, _) in enumerate(decoded) if img is not None]
    if not keep:
        raise InputError(f"{root}: no readable images in its class folders ({', '.join(classes[:5])}...).")
    other = sorted({decoded[i][1] for i in keep} - {(A, B)})
    if other:
        log(f"{root}: images of size {', '.join(f'{w}x{h}' for w, h in other)} resized to {A}x{B}.")
    x = np.stack([decoded[i][0] for i in keep])
    return torch.from_numpy(x).unsqueeze(1), torch.tensor([labels[i] for i in keep]), classes


def decode_uci(root, A, B, log):
    train, test = uci_folders(root)
    train_x, train_y, classes = decode_class_folders(train, A, B, log)
    test_x, test_y, _ = decode_class_folders(test, A, B, log, classes)
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
    """(n, 1, h, w) uint8 -> (n, 1, B, A), with one line said when a resize happens; in chunks, so the
    float work space stays small beside the images."""
    if x.shape[-2:] == (B, A):
        return x
    if log:
        log(f"{where}: images are {x.shape[-1]}x{x.shape[-2]}, resized to {A}x{B} (set A and B to keep them).")
    def resized(chunk):
        y = F.interpolate(chunk.float(), size=(B, A), mode='bilinear', antialias=True, align_corners=False)
        return y.round().clamp(0, 255).to(torch.uint8)
    return torch.cat([resized(chunk) for chunk in x.split(4096)])
