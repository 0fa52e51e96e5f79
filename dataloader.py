"""Datasets for DRAW: a source found and decoded (formats.py), cached as uint8 so the next start skips
decoding, split, narrowed to the chosen classes, and turned into the model's inputs."""
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import devanagari
import formats
from utils import InputError, plural, save_cache

CACHE_VERSION = 3  # bump when decoding changes, so old caches are rebuilt (3: the built-in set's exact warp)


@dataclass
class Dataset:
    train_x: torch.Tensor  # (n, 1, B, A) uint8
    train_y: torch.Tensor  # (n,) int64, indexes classes
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list
    glyphs: list  # each class's Devanagari glyph ('' where there is none, e.g. MNIST), for labels
    name: str  # what was loaded, for the log
    kind: str = ''  # the source (SOURCES) it was read from
    fingerprint: str = ''  # of the images, labels, split and classes: the same data gives the same

    def record(self, params):
        """What a checkpoint keeps of the data it learned, to find and check it again (for the built-in
        set, also what rendered it)."""
        drawn = {'renderer': devanagari.renderer()} if self.kind == 'builtin' else {}
        return {'name': self.name, 'dataset': self.kind, 'fingerprint': self.fingerprint,
                'data_path': str(Path(params['data_path']).expanduser().resolve()), **drawn}


def canonical(name):
    """Class names compare without case or zero padding: character_01_ka == character_1_ka."""
    return re.sub(r'\d+', lambda m: str(int(m.group())), name.strip().lower())


# -- cache --------------------------------------------------------------------------------------
def fingerprint(kind, path, A, B):
    """A key that changes when the source changes: the names, sizes and modification times of the files its
    decoder reads (for image folders, each image's, found without reading any; nothing else there, the
    cache folder included, counts); for the built-in set, what renders it."""
    if kind == 'builtin':
        root, files = Path(), []  # rendered: what renders it is in the key
    elif kind in ('uci', 'folder'):
        root, files = path, formats.image_files(kind, path)
    elif kind in ('mnist', 'binarized_mnist'):
        root, files = path.parent, sorted(p for p in path.parent.iterdir() if p.is_file())
    else:
        root, files = path.parent, [path]
    parts = [kind, str(CACHE_VERSION), str(formats.BUILTIN_PER_CLASS), str(A), str(B), str(root.resolve())]
    if kind == 'builtin':
        parts.append(devanagari.renderer())
    under = len(str(root / '_')) - 1  # a file's path under root is str(f)[under:] (root may be '.')
    for f in files:
        stat = os.stat(f)
        parts.append(f'{str(f)[under:]}:{stat.st_size}:{stat.st_mtime_ns}')
    return hashlib.sha256('\n'.join(parts).encode()).hexdigest()[:20]


def checksum(obj):
    """A checksum of what a cache holds, tensors by their bytes: a file damaged on disk no longer matches."""
    h = hashlib.sha256()
    def add(o):
        if isinstance(o, torch.Tensor):
            h.update(repr((o.dtype, tuple(o.shape))).encode())
            h.update(o.detach().cpu().contiguous().numpy())
        elif isinstance(o, dict):
            for k, v in o.items():
                h.update(repr(k).encode())
                add(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                add(v)
        else:
            h.update(repr(o).encode())
    add(obj)
    return h.hexdigest()


def save_checked(obj, path, log=print):
    """save_cache of the dict obj with its checksum, which load_checked verifies."""
    save_cache({**obj, 'digest': checksum(obj)}, path, log)


def load_checked(path, use, redo, log=print):
    """use(the dict save_checked wrote at path), or None where there is nothing sound to use: a file there
    that is unreadable, damaged (its checksum differs), from an earlier version, or stale (use returns None)
    is said in one line naming it and redo, what is done instead."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location='cpu', weights_only=True)
        fields = {k: v for k, v in saved.items() if k != 'digest'}
        if 'digest' not in saved:
            why = 'stale cache (written by an earlier version)'
        elif saved['digest'] != checksum(fields):
            why = 'damaged cache (its checksum differs)'
        elif (value := use(fields)) is not None:
            return value
        else:
            why = 'stale cache (the source changed)'
    except Exception as e:  # whatever is wrong with the file, the work is redone: it is never trusted
        why = f'unreadable cache ({type(e).__name__})'
    log(f"{path}: {why}, {redo}.")
    return None


def decode_cached(kind, path, A, B, cache_dir, log):
    """Decode the source, or read the cache of an earlier decode if the source has not changed.
    One cache file per source and size; a stale or damaged one is decoded again."""
    key = fingerprint(kind, path, A, B)
    name = hashlib.sha256(f'{kind}:{path and Path(path).resolve()}:{A}x{B}'.encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f'{kind}-{name}.pt'
    fields = ('train_x', 'train_y', 'test_x', 'test_y', 'classes')
    decoded = load_checked(cache, lambda c: tuple(c[f] for f in fields) if c['key'] == key else None,
                           'decoding the source again', log)
    if decoded is None:
        decoded = formats.DECODERS[kind](path, A, B, log)
        save_checked(dict(zip(fields, decoded), key=key), cache, log)
    return decoded


# -- splitting and filtering --------------------------------------------------------------------
def split(x, y, fraction, seed):
    """A seeded random train/test split, for sources that have none."""
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(x)))
    n_test = max(1, int(round(len(x) * fraction))) if len(x) > 1 else 0
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def glyphs_of(classes, kind):
    """The Devanagari glyph of each DHCD class name, '' for the others and for MNIST's digits."""
    known = {canonical(c): g for c, g in devanagari.GLYPHS.items()}
    return [known.get(canonical(c), '') if 'mnist' not in kind else '' for c in classes]


def checkpoint_glyphs(ckpt):
    """The glyph of each class a checkpoint names: as it records them, or from the names (older files)."""
    return ckpt.get('glyphs') or glyphs_of(ckpt.get('classes') or [], ckpt['params'].get('dataset', ''))


def select_classes(spec, classes, glyphs=(), what='classes'):
    """Indices of the classes named by spec: 'all', 'digits', or comma-separated names, each a class
    name (any case or zero padding), its last part ('ka') or its glyph ('क'); what names the setting
    in errors."""
    if spec == 'all':
        return list(range(len(classes)))
    if spec == 'digits':
        chosen = [i for i, c in enumerate(classes) if canonical(c).startswith('digit')]
        if not chosen:
            raise InputError(f"{what}='digits', but this dataset has no digit_* classes: {', '.join(classes)}.")
        return chosen
    lookup = {canonical(c): i for i, c in enumerate(classes)}
    suffixes = {canonical(c).rsplit('_', 1)[-1]: i for i, c in enumerate(classes)}
    glyphs = list(glyphs) or [''] * len(classes)
    by_glyph = {g: i for i, g in enumerate(glyphs) if g}
    chosen = []
    for name in filter(None, (n.strip() for n in spec.split(','))):
        i = lookup.get(canonical(name), suffixes.get(canonical(name), by_glyph.get(name)))
        if i is None:
            named = [f'{c} ({g})' if g else c for c, g in zip(classes, glyphs)]
            raise InputError(f"{what}: unknown class {name!r}; valid names are 'all', 'digits' or: "
                             f"{', '.join(named)}.")
        chosen.append(i)
    if not chosen:
        raise InputError(f"{what} is empty; use 'all', 'digits' or a comma-separated list of class names.")
    return sorted(set(chosen))


def keep_classes(x, y, chosen, n_classes):
    """The images of the chosen classes, relabelled 0..len(chosen)-1."""
    remap = torch.full((n_classes,), -1, dtype=torch.long)
    remap[chosen] = torch.arange(len(chosen))
    mask = remap[y] >= 0
    return x[mask], remap[y[mask]]


def load_data(params, log=print):
    """The Dataset named by params (dataset, data_path, classes, test_split, A, B, seed, cache_dir)."""
    kind, where = formats.find_source(params['dataset'], Path(params['data_path']))
    if kind == 'builtin':
        log(f"{where}: using the built-in Devanagari set, rendered from fonts (46 classes, "
            f"{formats.BUILTIN_PER_CLASS[0]} train and {formats.BUILTIN_PER_CLASS[1]} test images each). To train on DHCD, "
            f"put Kaggle's data.csv (or the UCI Train/ and Test/ folders) in {params['data_path']}/.")
    train_x, train_y, test_x, test_y, classes = decode_cached(
        kind, where, params['A'], params['B'], params['cache_dir'], log)
    if test_x is None:
        train_x, train_y, test_x, test_y = split(train_x, train_y, params['test_split'], params['seed'])
    chosen = select_classes(params['classes'], classes, glyphs_of(classes, kind))
    train_x, train_y = keep_classes(train_x, train_y, chosen, len(classes))
    test_x, test_y = keep_classes(test_x, test_y, chosen, len(classes))
    name = 'built-in rendered Devanagari' if kind == 'builtin' else f'{kind} {where}'
    log(f"Data: {name}: {len(train_x)} train / {len(test_x)} test images, {plural(len(chosen), 'class')}, "
        f"{params['A']}x{params['B']}.")
    classes = [classes[i] for i in chosen]
    digest = hashlib.sha256(repr((classes, params['A'], params['B'])).encode())
    for t in (train_x, train_y, test_x, test_y):
        digest.update(t.contiguous().numpy().tobytes())
    return Dataset(train_x, train_y, test_x, test_y, classes, glyphs_of(classes, kind), name, kind,
                   digest.hexdigest()[:16])


def plain_text(value):
    """Whether a string read from a checkpoint can be shown as it is: printable, of a sane length."""
    return isinstance(value, str) and value.isprintable() and len(value) <= 4096


def checked_record(record, where):
    """A checkpoint's record of the data it learned (None where it has none), checked to be plain text."""
    fields = ('name', 'dataset', 'fingerprint', 'data_path')
    if record and not (isinstance(record, dict) and all(plain_text(record.get(k)) for k in fields)
                       and plain_text(record.get('renderer', ''))):
        raise InputError(f"{where}: its record of the data it learned is damaged; give the data to use with "
                         f"-data PATH.")
    return record or None


def load_at(params, record, data_path, log=print):
    """The data a checkpoint's (checked) record names, read from data_path, a path the user gave, as the
    checkpoint's settings read it (its classes, split, size), if what is there is that data (its
    fingerprint matches); else None, as for a record of the built-in set, which is at no path."""
    if not record or record['dataset'] == 'builtin':
        return None
    said = []
    try:
        data = load_data({**params, 'dataset': record['dataset'], 'data_path': str(data_path)}, said.append)
    except InputError:
        data = None
    same = data is not None and data.fingerprint == record['fingerprint']
    for line in said:  # what decoding found is said either way; the summary only of the data used
        if same or not line.startswith('Data: '):
            log(line)
    return data if same else None


def rendered_elsewhere(where, record, data):
    """The line said where the built-in set rendered here is not the one a checkpoint learned (only
    fonts or a Pillow of other versions render other pixels; there is no other source to give)."""
    drawn = record.get('renderer') if plain_text(record.get('renderer')) else 'an earlier version'
    return (f"{where} learned the built-in set as rendered with fingerprint {record['fingerprint']} (by "
            f"{drawn}); here it renders as {data.fingerprint} (by "
            f"{devanagari.renderer()}): it is used as rendered here.")


def load_trained(params, record, where, log=print):
    """The data the checkpoint at where learned, looked for where params' data_path says (the user's:
    train.py's default data/; the built-in set needs none), never where the checkpoint says: its record
    (the source's kind, name, path and fingerprint) only names what to look for and tells whether what is
    found is the same data. For checkpoints without a record (the 2019 code's, older ones), params' data
    settings as they stand."""
    record = checked_record(record, where)
    if not record:
        return load_data(params, log)
    if record['dataset'] == 'builtin':
        data = load_data({**params, 'dataset': 'builtin'}, log)
        if data.fingerprint != record['fingerprint']:
            log(rendered_elsewhere(where, record, data))
        return data
    learned = f"{where} learned {record['name']} (fingerprint {record['fingerprint']})"
    here = Path(params['data_path']).expanduser()
    if not here.exists():
        raise InputError(f"{learned}; it is looked for in {here} (from {Path.cwd()}), which does not exist. Give "
                         f"the data to use with -data PATH.")
    try:
        data = load_data({**params, 'dataset': record['dataset'], 'data_path': str(here.resolve())}, log)
    except InputError as e:
        raise InputError(f"{learned}, which cannot be read from {here} ({e}) Give the data to use with "
                         f"-data PATH.") from None
    if data.fingerprint != record['fingerprint']:
        raise InputError(f"{learned}, but what is found in {here} differs: {data.name} (fingerprint "
                         f"{data.fingerprint}). Give the data to use with -data PATH.")
    return data


def to_input(x, binarize, channel, generator=None):
    """uint8 (n, 1, B, A) -> float (n, channel, B, A) in [0, 1], binarized as asked:
    'none' keeps grey levels, 'threshold' cuts at 0.5, 'sample' draws x ~ Bernoulli(intensity)."""
    x = x.float() / 255
    if binarize == 'threshold':
        x = (x >= 0.5).float()
    elif binarize == 'sample':
        x = torch.bernoulli(x, generator=generator)
    return x.expand(-1, channel, -1, -1)


def mean_image(x, p):
    """The per-pixel mean of uint8 images x as the model sees them (for binarize=sample, its
    expectation), (channel, B, A)."""
    binarize = 'threshold' if p['binarize'] == 'threshold' else 'none'
    return sum(to_input(chunk, binarize, p['channel']).sum(0) for chunk in x.split(4096)) / len(x)


def model_inputs(x, p):
    """uint8 images as the model sees them, binarized once with the run's seed: the same test images
    in every run, in train.py and in evaluate.py."""
    return to_input(x, p['binarize'], p['channel'], torch.Generator().manual_seed(p['seed']))


def class_map(names, classes):
    """For each name, its index among classes matched by canonical name, or -1, a tensor; and the
    names that match none."""
    index = {canonical(c): i for i, c in enumerate(classes)}
    remap = [index.get(canonical(c), -1) for c in names]
    return torch.tensor(remap, dtype=torch.long), [c for c, i in zip(names, remap) if i < 0]


def listing(names, most=8):
    """The first most names, comma-separated, with ', ...' when there are more."""
    return ', '.join(names[:most]) + (', ...' if len(names) > most else '')


def load_source(params, data_path, log=print):
    """The source at data_path, any format load_data reads, all its classes, as a Dataset."""
    formats.find_source('auto', Path(data_path), '-data')  # names -data in its errors
    return load_data({**params, 'dataset': 'auto', 'data_path': data_path, 'classes': 'all'}, log)


def every_image(data, classes):
    """Every image of data (both splits: a held-out file is scored whole), uint8, with labels matched
    to classes by name (-1 where its class is not among them); and its class names not among classes."""
    remap, unmatched = class_map(data.classes, classes)
    return torch.cat((data.train_x, data.test_x)), remap[torch.cat((data.train_y, data.test_y))], unmatched


def of_classes(data, classes, where, log=print):
    """data with its labels matched to classes by name, for a conditional model: images of other
    classes are left out, and said so; none matching is an InputError naming where."""
    remap, unmatched = class_map(data.classes, classes)
    if (remap < 0).all():
        raise InputError(f"{where}: none of its classes ({', '.join(data.classes[:6])}...) is one the model "
                         f"was trained on ({', '.join(classes[:6])}...); a conditional model needs its own classes.")
    if unmatched:
        log(f"{where}: {plural(len(unmatched), 'class')} not the model's, their images left out: "
            f"{listing(unmatched)}.")
    split = []
    for x, y in ((data.train_x, data.train_y), (data.test_x, data.test_y)):
        keep = remap[y] >= 0
        split += [x[keep], remap[y[keep]]]
    glyph = {canonical(c): g for c, g in zip(data.classes, data.glyphs)}
    return Dataset(*split, list(classes), [glyph.get(canonical(c), '') for c in classes], data.name)


def load_data_for(params, classes, data_path, log=print):
    """The source at data_path, all its classes, for a checkpoint to redraw; a conditional model's
    labels matched to its classes by name (of_classes)."""
    data = load_source(params, data_path, log)
    return of_classes(data, classes, data_path, log) if params['conditional'] else data
