"""Data that would cost too much to decode, and caches that no longer hold what was written: each is
decoded in bounded memory, refused before it is decoded, or rebuilt, with one line said."""
import gzip
import io
import os
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from PIL import Image, ImageFile

import classifier
import dataloader
import formats
from conftest import ROOT, csv_lines, write_tiny_csv
from dataloader import Dataset
from test_fuzz import malformed_csv
from utils import InputError

NAMES = ['character_01_ka', 'digit_0', 'character_10_yna']


def params(tmp_path, **kw):
    return {'dataset': 'auto', 'data_path': str(tmp_path / 'data'), 'classes': 'all', 'test_split': 0.15,
            'A': 32, 'B': 32, 'seed': 0, 'cache_dir': str(tmp_path / 'cache'), **kw}


def load(p):
    messages = []
    return dataloader.load_data(p, log=messages.append), messages


def decode(path, block, monkeypatch):
    """formats.decode_csv reading block bytes of text at a time: (images, class names of the rows)."""
    monkeypatch.setattr(formats, 'CSV_BLOCK', block)
    x, y, _, _, classes = formats.decode_csv(path, 8, 8, log=None)
    return x[:, 0].numpy(), [classes[i] for i in y]


# -- Kaggle CSV, read a block of lines at a time -----------------------------------------------
def test_a_bad_header_is_refused_before_the_body_is_parsed(tmp_path, monkeypatch):
    path = tmp_path / 'data.csv.gz'
    header = ','.join(f'pixel_{k:04d}' for k in range(1024)) + ',label'
    row = ','.join(['0'] * 1024) + ',digit_0\n'
    path.write_bytes(gzip.compress(f'{header}\n{row * 20000}'.encode(), compresslevel=1))  # 41 MB of rows
    monkeypatch.setattr(formats.pd, 'read_csv', lambda *a, **k: pytest.fail('the body was parsed'))
    with pytest.raises(InputError) as e:
        formats.decode_csv(path, 32, 32, log=None)
    assert str(path) in str(e.value) and 'header must be pixel_0000,...,pixel_1023,character' in str(e.value)


@pytest.mark.parametrize('name', ['data.csv', 'data.csv.gz'])
def test_streamed_decoding_reads_what_whole_file_decoding_reads(tmp_path, monkeypatch, name):
    """Blocks of 64 bytes split every row (each is read on to its end), blocks of 500 split between rows,
    and both give what one block of the whole file gives: the images written, BOM, CRLF, blank lines and
    a missing last newline included."""
    imgs = np.random.default_rng(0).integers(0, 256, (30, 8, 8), dtype=np.uint8)
    lines = csv_lines(imgs, NAMES * 10)
    lines[5:5] = ['', '  ']
    text = b'\xef\xbb\xbf' + '\r\n'.join(lines).encode()
    path = tmp_path / name
    path.write_bytes(gzip.compress(text) if name.endswith('.gz') else text)
    whole = decode(path, 1 << 30, monkeypatch)
    np.testing.assert_array_equal(whole[0], imgs)
    assert whole[1] == NAMES * 10
    for block in (64, 500):
        x, names = decode(path, block, monkeypatch)
        np.testing.assert_array_equal(x, imgs)
        assert names == whole[1]


@pytest.mark.parametrize('line,field,value,says', [(27, 5, 'x', "line 27, pixel_0005: 'x'"),
                                                   (31, 64, '', 'line 31: the character (class name) is empty'),
                                                   (19, 3, '1,2', 'line 19: 66 fields where the header has 65')])
def test_a_bad_row_in_a_later_block_is_named_by_its_line(tmp_path, monkeypatch, line, field, value, says):
    lines = csv_lines(np.zeros((40, 8, 8), dtype=np.uint8), NAMES * 13 + ['digit_0'])
    lines.insert(10, '')  # blank lines count
    fields = lines[line - 1].split(',')
    fields[field] = value
    lines[line - 1] = ','.join(fields)
    path = tmp_path / 'data.csv'
    path.write_text('\n'.join(lines))
    with pytest.raises(InputError) as e:
        decode(path, 300, monkeypatch)
    assert f'{path}, {says}' in str(e.value)


def test_a_line_without_end_and_a_truncated_gzip_are_refused_with_one_line(tmp_path, monkeypatch):
    header = ','.join(f'pixel_{k:04d}' for k in range(64)) + ',character\n'
    path = tmp_path / 'data.csv'
    path.write_text(header + '0' * 5000 + '\n' + ','.join(['0'] * 64) + ',ka\n')
    monkeypatch.setattr(formats, 'LONGEST_LINE', 1000)
    with pytest.raises(InputError) as e:
        decode(path, 100, monkeypatch)
    assert f'{path}, line 2: over' in str(e.value) and 'without a line end' in str(e.value)
    path = tmp_path / 'data.csv.gz'
    path.write_bytes(gzip.compress((header + (','.join(['0'] * 64) + ',ka\n') * 2000).encode())[:-20])
    with pytest.raises(InputError) as e:
        decode(path, 1 << 20, monkeypatch)
    assert f'{path}: not a readable gzip file' in str(e.value) and '\n' not in str(e.value)


@pytest.mark.slow
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(raw=malformed_csv())
def test_malformed_csvs_read_alike_in_any_block_size(tmp_path, monkeypatch, raw):
    path = tmp_path / 'data.csv'
    path.write_bytes(raw)
    found = []
    for block in (1 << 30, 7):
        try:
            found.append(decode(path, block, monkeypatch))
        except InputError as e:
            assert 'data.csv' in str(e)
            found.append(None)
    assert (found[0] is None) == (found[1] is None)
    if found[0] is not None:
        np.testing.assert_array_equal(found[0][0], found[1][0])
        assert found[0][1] == found[1][1]


PEAK = """
import resource, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
import formats
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
x = formats.decode_csv(Path(sys.argv[1]), 32, 32, None)[0]
print(before * 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, x.numel())
"""


@pytest.mark.slow
def test_decoding_memory_is_bounded_by_the_images_not_the_text(tmp_path):
    """10,000 DHCD rows: 36 MB of text, 10 MB of images. Decoding them grows the peak memory by two
    copies of the images and a block's work space (~70 MB here); decoding the whole text at once grew
    it by ~650 MB."""
    path = tmp_path / 'data.csv'
    rng = np.random.default_rng(0)
    with open(path, 'w') as f:
        f.write(','.join(f'pixel_{k:04d}' for k in range(1024)) + ',character\n')
        for start in range(0, 10000, 1000):
            rows = rng.integers(0, 256, (1000, 1024))
            f.write(''.join(','.join(map(str, r)) + f',{NAMES[i % 3]}\n' for i, r in enumerate(rows)))
    out = subprocess.run([sys.executable, '-c', PEAK, str(path), str(ROOT)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    before, peak, images = map(int, out.stdout.split())
    assert images == 10000 * 1024
    assert peak - before < 4 * images + (100 << 20), f'{(peak - before) >> 20} MB over the imports'


# -- image folders -------------------------------------------------------------------------------
@pytest.fixture
def loads(monkeypatch):
    """The sizes of the images PIL decodes (its load), as they are decoded."""
    sizes, load = [], ImageFile.ImageFile.load
    def spy(im):
        sizes.append(im.size)
        return load(im)
    monkeypatch.setattr(ImageFile.ImageFile, 'load', spy)
    return sizes


def test_a_huge_image_is_skipped_before_it_is_decoded(tmp_path, loads):
    (tmp_path / 'ka').mkdir()
    Image.fromarray(np.full((8, 8), 90, dtype=np.uint8)).save(tmp_path / 'ka' / 'small.png')
    Image.new('1', (6000, 6000)).save(tmp_path / 'ka' / 'huge.png')  # 36 M pixels in 4 KB
    messages = []
    x, y, _ = formats.decode_class_folders(tmp_path, 8, 8, messages.append)
    assert len(x) == 1 and (x == 90).all()
    [said] = [m for m in messages if 'huge.png' in m]
    assert 'skipped 1' in said and '6000x6000' in said and '\n' not in said
    assert max(w * h for w, h in loads) <= formats.MAX_IMAGE_PIXELS


def test_a_large_jpeg_is_decoded_at_a_reduced_scale(tmp_path, loads):
    (tmp_path / 'ka').mkdir()
    Image.new('L', (4800, 4800), 200).save(tmp_path / 'ka' / 'photo.jpg')  # 23 M pixels, over the limit
    messages = []
    x, _, _ = formats.decode_class_folders(tmp_path, 8, 8, messages.append)
    assert x.shape == (1, 1, 8, 8) and (x.int() - 200).abs().max() <= 2
    assert set(loads) == {(600, 600)}  # 1/8 scale: the smallest still 8x8 or larger
    assert any('4800x4800 resized to 8x8' in m for m in messages)


def write_class_folders(root, n=4):
    for i, c in enumerate(['digit_0', 'digit_1']):
        (root / c).mkdir(parents=True, exist_ok=True)
        for j in range(n):
            Image.fromarray(np.full((32, 32), 40 * (i + 1), np.uint8)).save(root / c / f'{j}.png')


def test_a_folder_dataset_in_data_is_served_from_its_cache(tmp_path, monkeypatch):
    """The cache folder data/.cache inside the dataset, and files no decoder reads, leave its key alone."""
    write_class_folders(tmp_path / 'data')
    p = params(tmp_path, cache_dir=str(tmp_path / 'data' / '.cache'))
    first, _ = load(p)
    (tmp_path / 'data' / 'notes.txt').write_text('where these came from')
    (tmp_path / 'data' / 'digit_0' / 'Thumbs.db').write_bytes(b'\0' * 10)
    monkeypatch.setitem(formats.DECODERS, 'folder', lambda *args: pytest.fail('decoded again'))
    again, _ = load(p)
    assert torch.equal(again.train_x, first.train_x)


def test_an_image_rewritten_in_place_is_decoded_again(tmp_path):
    write_class_folders(tmp_path / 'data')
    first, _ = load(params(tmp_path))
    image = tmp_path / 'data' / 'digit_1' / '2.png'
    before = os.stat(image)
    Image.fromarray(np.full((32, 32), 250, np.uint8)).save(image)  # the same file, its folder unchanged
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns + 10 ** 9))
    again, _ = load(params(tmp_path))
    assert (torch.cat((again.train_x, again.test_x)) == 250).all((1, 2, 3)).sum() == 1
    assert not (torch.cat((first.train_x, first.test_x)) == 250).any()


# -- damaged caches -------------------------------------------------------------------------------
def flip_a_bit(b):
    """b, a file torch.save wrote, with one bit flipped in the middle of its largest tensor: it still loads."""
    with zipfile.ZipFile(io.BytesIO(b)) as z:
        entry = max(z.infolist(), key=lambda e: e.file_size)
    name, extra = struct.unpack('<HH', b[entry.header_offset + 26:entry.header_offset + 30])
    at = entry.header_offset + 30 + name + extra + entry.file_size // 2
    return b[:at] + bytes([b[at] ^ 1]) + b[at + 1:]


DAMAGE = {'truncated': lambda b: b[:len(b) // 2], 'garbage': lambda b: b'not a torch file' * 100,
          'empty': lambda b: b'', 'a bit flipped': flip_a_bit}


def one_line_about(cache, messages, redo):
    [said] = [m for m in messages if str(cache) in m]
    assert redo in said and 'cache' in said and '\n' not in said


@pytest.mark.parametrize('damage', DAMAGE)
def test_a_damaged_dataset_cache_is_rebuilt_with_one_line(tmp_path, damage):
    write_tiny_csv(tmp_path)
    first, _ = load(params(tmp_path))
    [cache] = (tmp_path / 'cache').glob('*.pt')
    cache.write_bytes(DAMAGE[damage](cache.read_bytes()))
    rebuilt, messages = load(params(tmp_path))
    one_line_about(cache, messages, 'decoding the source again')
    assert torch.equal(rebuilt.train_x, first.train_x) and torch.equal(rebuilt.test_y, first.test_y)
    _, messages = load(params(tmp_path))
    assert not any(str(cache) in m for m in messages)


@pytest.mark.parametrize('damage', DAMAGE)
def test_a_damaged_classifier_cache_is_rebuilt_with_one_line(tmp_path, monkeypatch, damage):
    trained = []
    def train(train, test, num_classes, log):
        trained.append(1)
        return classifier.Classifier(num_classes, train[0].shape[-2:]).eval(), 0.5
    monkeypatch.setattr(classifier, 'train_classifier', train)
    x, y = torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8), torch.arange(20) % 2
    data = Dataset(x, y, x, y, ['ka', 'kha'], ['', ''], 'tiny')
    p = {'binarize': 'none', 'channel': 1, 'seed': 0, 'cache_dir': str(tmp_path)}
    model, _, _ = classifier.of_splits(data, p, 'cpu', log=None)
    [cache] = tmp_path.glob('classifier-*.pt')
    cache.write_bytes(DAMAGE[damage](cache.read_bytes()))
    messages = []
    again, accuracy, _ = classifier.of_splits(data, p, 'cpu', log=messages.append)
    one_line_about(cache, messages, 'training the classifier again')
    assert len(trained) == 2 and accuracy == 0.5
    classifier.of_splits(data, p, 'cpu', log=pytest.fail)  # rebuilt: read as it is
    assert len(trained) == 2
