"""The data layer: every source dataloader.py reads, written here in the exact real formats."""
import gzip

import numpy as np
import pytest
import torch
from PIL import Image

import dataloader
import formats
import train
from conftest import csv_lines, shared
from utils import InputError

CLASSES = ['character_01_ka', 'character_02_kha', 'character_10_yna', 'digit_0']  # natural order
UCI_CLASSES = ['character_1_ka', 'character_2_kha', 'character_10_yna', 'digit_0']  # not zero-padded
REAL_CLASSES = ['character_01_ka', 'character_02_kha', 'character_03_ga', 'character_04_gha', 'character_05_kna',
                'character_06_cha', 'character_11_taamatar', 'character_25_ma', 'character_32_patalosaw', 'digit_0']


# -- helpers ------------------------------------------------------------------------------------
def params(tmp_path, **kw):
    return {'dataset': 'auto', 'data_path': str(tmp_path / 'data'), 'classes': 'all', 'test_split': 0.15,
            'A': 32, 'B': 32, 'seed': 0, 'cache_dir': str(tmp_path / 'cache'), **kw}


def load(tmp_path, **kw):
    messages = []
    return dataloader.load_data(params(tmp_path, **kw), log=messages.append), messages


def load_error(tmp_path, **kw):
    with pytest.raises(InputError) as e:
        load(tmp_path, **kw)
    return str(e.value)


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.name.endswith('.gz') else data)
    return path


def images(n, side=32, seed=0):
    """n distinct uint8 images: image i has i in its top-left pixel, so it can be found after a shuffle."""
    x = np.random.default_rng(seed).integers(0, 256, (n, side, side), dtype=np.uint8)
    x[:, 0, 0] = np.arange(n)
    return x


def write_csv(path, lines, newline='\n', bom=False):
    return write(path, (b'\xef\xbb\xbf' if bom else b'') + (newline.join(lines) + newline).encode())


def standard_csv(n_per_class=5):
    """4 * n_per_class rows (20 by default), the classes written out of natural order."""
    names = [c for c in reversed(CLASSES) for _ in range(n_per_class)]
    imgs = images(len(names))
    return imgs, names, csv_lines(imgs, names)


def write_png(path, img):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def write_idx(path, array, magic):
    header = bytes([0, 0, 8, magic]) + np.array(array.shape, dtype='>u4').tobytes()
    return write(path, header + array.astype(np.uint8).tobytes())


def write_mnist(folder, gz='', train=20, test=10):  # every digit in both splits
    x, y = images(train + test, 28), np.arange(train + test) % 10
    for prefix, sl in (('train', slice(0, train)), ('t10k', slice(train, None))):
        write_idx(folder / f'{prefix}-images-idx3-ubyte{gz}', x[sl], 3)
        write_idx(folder / f'{prefix}-labels-idx1-ubyte{gz}', y[sl], 1)
    return x, y


def by_id(ds):
    """All images and labels, train and test together, ordered by the id in their top-left pixel."""
    x, y = torch.cat((ds.train_x, ds.test_x)), torch.cat((ds.train_y, ds.test_y))
    order = x[:, 0, 0, 0].long().argsort()
    return x[order, 0].numpy(), [ds.classes[i] for i in y[order]]


# -- Kaggle CSV ---------------------------------------------------------------------------------
@pytest.mark.parametrize('name,newline,bom,blank', [
    ('data.csv', '\n', False, False), ('data.csv.gz', '\n', False, False),
    ('data.csv', '\r\n', True, False), ('data.csv', '\n', False, True)], ids=['plain', 'gz', 'bom_crlf', 'blank'])
def test_csv_pixels_and_labels(tmp_path, name, newline, bom, blank):
    imgs, names, lines = standard_csv()
    if blank:
        lines = [lines[0], '', *lines[1:4], '   ', *lines[4:], '']
    write_csv(tmp_path / 'data' / name, lines, newline, bom)
    ds, _ = load(tmp_path)
    assert ds.classes == CLASSES and ds.name.startswith('csv')
    assert ds.train_x.dtype == torch.uint8 and ds.train_x.shape[1:] == (1, 32, 32)
    x, labels = by_id(ds)
    np.testing.assert_array_equal(x, imgs)
    assert labels == names


def test_csv_row_major(tmp_path):
    img = np.zeros((2, 32, 32), dtype=np.uint8)
    img[0, 0, 1], img[0, 1, 0], img[0, 31, 30] = 10, 20, 30  # pixel_0001, pixel_0032, pixel_1022
    lines = csv_lines(img, ['digit_0', 'digit_0'])
    assert lines[1].split(',')[1] == '10' and lines[1].split(',')[32] == '20' and lines[1].split(',')[1022] == '30'
    write_csv(tmp_path / 'data' / 'data.csv', lines)
    ds, _ = load(tmp_path)
    x = torch.cat((ds.train_x, ds.test_x))[:, 0]
    assert torch.equal(x[x.sum((1, 2)).argmax()], torch.from_numpy(img[0]))


def test_csv_split_seeded_disjoint_complete(tmp_path):
    write_csv(tmp_path / 'data' / 'data.csv', csv_lines(images(20), ['digit_0'] * 20))  # one class: see below
    ids = lambda t: set(t[:, 0, 0, 0].tolist())  # noqa: E731
    a, _ = load(tmp_path, seed=1)
    b, _ = load(tmp_path, seed=1)
    c, _ = load(tmp_path, seed=2)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert ids(a.train_x).isdisjoint(ids(a.test_x)) and ids(a.train_x) | ids(a.test_x) == set(range(20))
    assert len(a.test_x) == 3 and ids(a.test_x) != ids(c.test_x)


def test_csv_28x28_resized_once(tmp_path):
    write_csv(tmp_path / 'data' / 'data.csv', csv_lines(images(8, side=28), ['digit_0'] * 8))
    ds, log = load(tmp_path)
    assert ds.train_x.shape[1:] == (1, 32, 32)
    assert len([m for m in log if 'are 28x28, resized to 32x32' in m]) == 1


def replace_field(line, k, value):
    fields = line.split(',')
    fields[k] = value
    return ','.join(fields)


BAD_CSVS = {  # name: (how the good lines are broken, what the message must say)
    'field_too_many': (lambda L: L.__setitem__(3, L[3] + ',7'), 'line 4'),
    'field_too_few': (lambda L: L.__setitem__(2, L[2].split(',', 1)[1]), 'line 3'),
    'non_numeric': (lambda L: L.__setitem__(2, replace_field(L[2], 5, 'x')), 'line 3'),
    'float': (lambda L: L.__setitem__(4, replace_field(L[4], 5, '12.5')), 'line 5'),
    'negative': (lambda L: L.__setitem__(2, replace_field(L[2], 5, '-1')), 'line 3'),
    'over_255': (lambda L: L.__setitem__(2, replace_field(L[2], 5, '256')), 'line 3'),
    'after_blank_line': (lambda L: L.__setitem__(2, '\n' + replace_field(L[2], 5, 'x')), 'line 4'),  # counted
    'empty_class': (lambda L: L.__setitem__(3, replace_field(L[3], -1, '')), 'line 4'),
    'no_character_column': (lambda L: L.__setitem__(0, L[0].replace('character', 'label')), 'character'),
    'header_only': (lambda L: L.__delitem__(slice(1, None)), 'no data rows'),
    'stray_quote': (lambda L: L.__setitem__(2, replace_field(L[2], -1, '"digit_0')), ''),  # not pandas' ParserError
}


@pytest.mark.parametrize('case', BAD_CSVS)
def test_csv_bad_input(tmp_path, case):
    break_lines, expected = BAD_CSVS[case]
    lines = standard_csv(2)[2]
    break_lines(lines)
    path = write_csv(tmp_path / 'data' / 'data.csv', lines)
    msg = load_error(tmp_path)
    assert str(path) in msg and expected in msg
    if case in ('non_numeric', 'float'):
        assert 'pixel_0005' in msg


def test_csv_gz_that_is_not_gzip(tmp_path):
    path = tmp_path / 'data' / 'data.csv.gz'
    write_csv(tmp_path / 'data' / 'data.csv', standard_csv(1)[2]).rename(path)
    msg = load_error(tmp_path)
    assert str(path) in msg and 'gzip' in msg


def test_several_csvs_without_data_csv(tmp_path):
    lines = standard_csv(1)[2]
    write_csv(tmp_path / 'data' / 'a.csv', lines)
    write_csv(tmp_path / 'data' / 'b.csv.gz', lines)
    msg = load_error(tmp_path)
    assert 'a.csv' in msg and 'b.csv.gz' in msg


# -- image folders ------------------------------------------------------------------------------
def write_class_folders(root, classes, n):
    """n uniform PNGs per class, class i filled with 40 * (i + 1)."""
    for i, c in enumerate(classes):
        for j in range(n):
            write_png(root / c / f'{j:03d}.png', np.full((32, 32), 40 * (i + 1), np.uint8))


def assert_labels_match_fill(x, y):
    for img, label in zip(x[:, 0], y):
        assert (img == 40 * (int(label) + 1)).all()


def test_uci_folders(tmp_path):
    root = tmp_path / 'data' / 'DevanagariHandwrittenCharacterDataset'
    write_class_folders(root / 'Train', UCI_CLASSES, 3)
    write_class_folders(root / 'Test', UCI_CLASSES, 1)
    (root / 'Train' / 'character_1_ka' / 'broken.png').write_bytes(np.random.default_rng(0).bytes(500))
    write_png(root / 'Test' / 'digit_0' / 'big.png', np.full((40, 40), 160, np.uint8))
    ds, log = load(tmp_path)
    assert ds.name.startswith('uci') and ds.classes == UCI_CLASSES
    assert (len(ds.train_x), len(ds.test_x)) == (12, 5)
    assert ds.train_y.bincount().tolist() == [3, 3, 3, 3] and ds.test_y.bincount().tolist() == [1, 1, 1, 2]
    assert_labels_match_fill(ds.train_x, ds.train_y)
    assert_labels_match_fill(ds.test_x, ds.test_y)  # the 40x40 image too, after its resize
    assert any('skipped 1 unreadable' in m and 'broken.png' in m for m in log)
    assert any('40x40' in m and 'resized' in m for m in log)


def test_plain_class_folders(tmp_path):
    write_class_folders(tmp_path / 'data', ['digit_0', 'digit_1'], 10)
    ds, _ = load(tmp_path)
    again, _ = load(tmp_path)
    assert ds.name.startswith('folder') and ds.classes == ['digit_0', 'digit_1']
    assert (len(ds.train_x), len(ds.test_x)) == (17, 3) and torch.equal(ds.test_y, again.test_y)
    assert_labels_match_fill(ds.train_x, ds.train_y)


# -- MNIST ----------------------------------------------------------------------------------------
@pytest.mark.parametrize('gz', ['', '.gz'])
def test_mnist_idx(tmp_path, gz):
    x, y = write_mnist(tmp_path / 'data' / 'mnist', gz)
    ds, _ = load(tmp_path, A=28, B=28)
    assert ds.name.startswith('mnist') and ds.classes == [f'digit_{d}' for d in range(10)]
    np.testing.assert_array_equal(torch.cat((ds.train_x, ds.test_x))[:, 0].numpy(), x)
    np.testing.assert_array_equal(torch.cat((ds.train_y, ds.test_y)).numpy(), y)
    assert (len(ds.train_x), len(ds.test_x)) == (20, 10)


def test_mnist_truncated(tmp_path):
    write_mnist(tmp_path / 'data')
    path = tmp_path / 'data' / 'train-images-idx3-ubyte'
    path.write_bytes(path.read_bytes()[:-10])
    msg = load_error(tmp_path, A=28, B=28)
    assert str(path) in msg and 'truncated' in msg


def test_mnist_shared(tmp_path):
    folder = shared('mnist/train-images-idx3-ubyte.gz').parent
    ds, _ = load(tmp_path, data_path=str(folder), A=28, B=28)
    assert (len(ds.train_x), len(ds.test_x)) == (60000, 10000)
    assert ds.train_y.bincount().shape == (10,) and ds.train_x.dtype == torch.uint8


def write_amat(path, rows):
    return write(path, ''.join(' '.join(map(str, r)) + '\n' for r in rows).encode())


def test_binarized_mnist(tmp_path):
    rows = np.random.default_rng(0).integers(0, 2, (4, 784))
    for name, sl in (('train', slice(0, 2)), ('valid', slice(2, 3)), ('test', slice(3, 4))):
        write_amat(tmp_path / 'data' / f'binarized_mnist_{name}.amat', rows[sl])
    ds, _ = load(tmp_path, A=28, B=28)
    assert ds.name.startswith('binarized_mnist') and (len(ds.train_x), len(ds.test_x)) == (3, 1)
    assert set(torch.cat((ds.train_x, ds.test_x)).unique().tolist()) == {0, 255}
    np.testing.assert_array_equal(ds.train_x.reshape(3, 784).numpy(), rows[:3] * 255)


def test_binarized_mnist_short_row(tmp_path):
    rows = [[0] * 784, [1] * 783]
    path = write_amat(tmp_path / 'data' / 'binarized_mnist_train.amat', rows)
    for name in ('valid', 'test'):
        write_amat(tmp_path / 'data' / f'binarized_mnist_{name}.amat', rows[:1])
    msg = load_error(tmp_path, A=28, B=28)
    assert str(path) in msg and 'line 2' in msg and '783' in msg


def test_binarized_mnist_values_must_be_separated(tmp_path):
    path = write(tmp_path / 'data' / 'binarized_mnist_train.amat', ('0 ' * 782 + '11\n').encode())
    msg = load_error(tmp_path, A=28, B=28)
    assert str(path) in msg and '0/1 values' in msg


def test_csv_name_case_does_not_matter(tmp_path):
    imgs, names, lines = standard_csv()
    write_csv(tmp_path / 'data' / 'DATA.CSV', lines)
    ds, _ = load(tmp_path)
    assert ds.name.startswith('csv') and len(ds.train_x) + len(ds.test_x) == len(names)


# -- the real handwritten CSV and the cache -----------------------------------------------------
def test_real_csv_and_cache(tmp_path, monkeypatch):
    path = shared('devanagari-handwritten-10/train.csv.gz')
    ds, _ = load(tmp_path, data_path=str(path))
    x = torch.cat((ds.train_x, ds.test_x))[:, 0]
    assert len(x) == 19608 and ds.classes == REAL_CLASSES
    assert x.dtype == torch.uint8 and x.max() == 255 and x.min() == 0
    assert torch.cat((ds.train_y, ds.test_y)).bincount().shape == (10,)
    frame = torch.ones(32, 32, dtype=torch.bool)
    frame[2:30, 2:30] = False
    assert (x[:, frame] < 32).float().mean() > 0.99

    with monkeypatch.context() as m:  # the second start decodes nothing: it reads the cache
        m.setitem(formats.DECODERS, 'csv', lambda *args: pytest.fail('decoded again'))
        cached, log = load(tmp_path, data_path=str(path))
    assert torch.equal(cached.train_x, ds.train_x) and not any('unreadable cache' in m for m in log)

    [cache] = (tmp_path / 'cache').glob('*.pt')
    cache.write_bytes(b'not a torch file' * 100)
    rebuilt, log = load(tmp_path, data_path=str(path))
    assert any('unreadable cache' in m for m in log)
    assert torch.equal(rebuilt.train_x, ds.train_x) and torch.equal(rebuilt.test_y, ds.test_y)
    _, log = load(tmp_path, data_path=str(path))
    assert not any('unreadable cache' in m for m in log)


# -- classes ------------------------------------------------------------------------------------
@pytest.fixture
def five_classes(tmp_path):
    """8 rows per class, so seed 0's test split holds every class (see test_class_absent_from_test_split)."""
    names = [c for c in ['digit_1', *CLASSES] for _ in range(8)]
    write_csv(tmp_path / 'data' / 'data.csv', csv_lines(images(len(names)), names))
    return tmp_path


def test_classes_digits(five_classes):
    ds, _ = load(five_classes, classes='digits')
    assert ds.classes == ['digit_0', 'digit_1'] and len(ds.train_x) + len(ds.test_x) == 16
    assert set(torch.cat((ds.train_y, ds.test_y)).tolist()) == {0, 1}


def test_classes_by_name_and_suffix(five_classes):
    ds, _ = load(five_classes, classes='character_1_ka, kha')
    assert ds.classes == ['character_01_ka', 'character_02_kha'] and len(ds.train_x) + len(ds.test_x) == 16
    _, labels = by_id(ds)
    assert labels == ['character_01_ka'] * 8 + ['character_02_kha'] * 8  # ka rows precede kha rows in the file


def test_classes_unknown(five_classes):
    msg = load_error(five_classes, classes='ka,nope')
    assert 'nope' in msg and 'character_01_ka' in msg and 'digit_1' in msg


@pytest.mark.parametrize('spec', ['all', 'digits'])
def test_class_absent_from_test_split(tmp_path, spec):
    """A small set: the one digit image lands in train for most seeds, then the test split lacks the class."""
    names = ['character_01_ka'] * 19 + ['digit_0']
    write_csv(tmp_path / 'data' / 'data.csv', csv_lines(images(20), names))
    for seed in range(5):
        ds, _ = load(tmp_path, classes=spec, seed=seed)
        assert (ds.train_y == len(ds.classes) - 1).sum() + (ds.test_y == len(ds.classes) - 1).sum() == 1


# -- choosing the source ------------------------------------------------------------------------
@pytest.mark.parametrize('make_dir', [True, False])
def test_builtin_when_the_default_data_folder_is_absent_or_empty(tmp_path, monkeypatch, make_dir):
    monkeypatch.setattr(formats, 'BUILTIN_PER_CLASS', (2, 1))
    monkeypatch.chdir(tmp_path)
    if make_dir:
        (tmp_path / 'data').mkdir()
    ds, log = load(tmp_path, data_path=formats.DEFAULT_DATA_PATH)
    assert formats.DEFAULT_DATA_PATH == train.params['data_path']
    assert any('built-in' in m for m in log)
    assert (len(ds.train_x), len(ds.test_x), len(ds.classes)) == (92, 46, 46)


def test_csv_requested_but_absent(tmp_path):
    write_class_folders(tmp_path / 'data', ['digit_0'], 1)
    assert 'no csv data' in load_error(tmp_path, dataset='csv')


def test_unknown_dataset(tmp_path):
    assert 'cifar' in load_error(tmp_path, dataset='cifar')


# -- to_input -------------------------------------------------------------------------------------
def test_to_input():
    x = torch.tensor([0, 127, 128, 255], dtype=torch.uint8).reshape(1, 1, 2, 2)
    assert torch.allclose(dataloader.to_input(x, 'none', 1), x.float() / 255)
    assert dataloader.to_input(x, 'threshold', 1).flatten().tolist() == [0, 0, 1, 1]
    rgb = dataloader.to_input(x, 'none', 3)
    assert rgb.shape == (1, 3, 2, 2) and torch.equal(rgb[:, 0], rgb[:, 2])
    grey = torch.full((1, 1, 100, 100), 64, dtype=torch.uint8)
    a = dataloader.to_input(grey, 'sample', 1, torch.Generator().manual_seed(0))
    b = dataloader.to_input(grey, 'sample', 1, torch.Generator().manual_seed(0))
    assert set(a.unique().tolist()) <= {0, 1} and torch.equal(a, b)
    assert abs(a.mean().item() - 64 / 255) < 0.02
