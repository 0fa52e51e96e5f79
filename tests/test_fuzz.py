"""Property-based tests: malformed input either loads correctly or fails with the project's own
clear error; never an unhandled exception, never a silently wrong result."""
import csv
import io
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

import formats
import generate
import train
import utils
from draw_model import DRAWModel

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PIXELS = [f'pixel_{k:04d}' for k in range(16)]  # 4x4 images keep every example small
TOKENS = ['0', '7', '128', '255', '', 'nan', 'inf', '-1', '256', '1.5', '12.0', 'abc', ' 7', '+5', '1e2', '0x10',
          '"12"', '3 4', '\t9', 'ka', 'digit_0', '05', 'NA', '"a,b"']


@st.composite
def malformed_csv(draw):
    """A 4x4-image Kaggle-style CSV, mutated: odd tokens, missing or extra fields, a wrong header,
    blank lines, BOM, CRLF, truncation."""
    good_header = PIXELS + ['character']  # listed thrice: most examples get past the header
    header = draw(st.sampled_from([good_header] * 3 + [PIXELS[:-1] + ['character'], PIXELS,
                                                       PIXELS + ['character', 'extra'], ['character'] + PIXELS]))
    rows = []
    for _ in range(draw(st.integers(0, 4))):
        row = [str(draw(st.integers(0, 255))) for _ in PIXELS] + [draw(st.sampled_from(['ka', 'kha', 'digit_0']))]
        for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2]))):
            action = draw(st.sampled_from(['replace', 'replace', 'replace', 'drop', 'add']))
            where = draw(st.integers(0, len(row) - 1))
            if action == 'replace':
                row[where] = draw(st.sampled_from(TOKENS) | st.text(max_size=3))
            elif action == 'drop':
                del row[where]
            else:
                row.insert(where, draw(st.sampled_from(TOKENS)))
        rows.append(','.join(row))
    lines = [','.join(header), *rows]
    for _ in range(draw(st.integers(0, 2))):
        lines.insert(draw(st.integers(1, len(lines))), draw(st.sampled_from(['', ' ', '\t'])))
    text = draw(st.sampled_from(['\n', '\r\n'])).join(lines) + draw(st.sampled_from(['', '\n']))
    if draw(st.sampled_from([False, False, True])):
        text = text[:draw(st.integers(0, len(text)))]
    return (b'\xef\xbb\xbf' if draw(st.booleans()) else b'') + text.encode('utf-8', 'replace')


def strict_reading(raw):
    """An independent reader of the format: (pixels, names) if raw is a valid DHCD CSV, else None."""
    rows = [r for r in csv.reader(io.StringIO(raw.decode('utf-8-sig', 'replace'))) if any(f.strip() for f in r)]
    if len(rows) < 2 or rows[0] != PIXELS + ['character']:
        return None
    pixels, names = [], []
    for row in rows[1:]:
        if len(row) != 17 or not row[16].strip():
            return None
        try:
            values = [float(v) for v in row[:16]]
        except ValueError:
            return None
        if not all(math.isfinite(v) and v == int(v) and 0 <= v <= 255 for v in values):
            return None
        pixels.append(values)
        names.append(row[16].strip())
    return np.array(pixels).reshape(-1, 4, 4), names


@SETTINGS
@given(raw=malformed_csv())
def test_csv_reads_right_or_says_why(tmp_path_factory, raw):
    folder = tmp_path_factory.mktemp('csv')
    (folder / 'data.csv').write_bytes(raw)
    try:
        x, y, _, _, classes = formats.decode_csv(folder / 'data.csv', 4, 4, log=lambda m: None)
    except utils.InputError as e:
        assert 'data.csv' in str(e)
        return
    expected = strict_reading(raw)
    assert expected is not None, 'accepted a CSV that is not valid'
    pixels, names = expected
    np.testing.assert_array_equal(x[:, 0].numpy(), pixels)
    assert [classes[i] for i in y] == names


@SETTINGS
@given(blobs=st.lists(st.binary(max_size=300), min_size=1, max_size=3), good=st.integers(0, 2))
def test_image_folders_skip_or_refuse_broken_files(tmp_path_factory, blobs, good):
    root = tmp_path_factory.mktemp('imgs')
    (root / 'ka').mkdir()
    for i in range(good):
        Image.fromarray(np.full((8, 8), 40 * i + 1, dtype=np.uint8)).save(root / 'ka' / f'good{i}.png')
    for i, blob in enumerate(blobs):
        (root / 'ka' / f'bad{i}.png').write_bytes(blob)
    messages = []
    try:
        x, y, _ = formats.decode_class_folders(root, 8, 8, messages.append)
    except utils.InputError as e:
        assert good == 0 and 'no readable images' in str(e)
        return
    assert good <= len(x) <= good + len(blobs) and x.dtype == torch.uint8
    assert len(x) == good + len(blobs) or any('skipped' in m for m in messages)


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    p = {**train.params, 'T': 2, 'A': 8, 'B': 8, 'z_size': 2, 'read_N': 2, 'write_N': 2, 'enc_size': 4,
         'dec_size': 4}
    path = tmp_path_factory.mktemp('ckpt') / 'model'
    torch.save({'model': DRAWModel(p).state_dict(), 'params': p}, path)
    return path


FLAGS = ['-load_path', '-num_output', '-t', '-seed', '-out_dir', '-device', '-h', '--', 'CKPT', 'x', '0', '-1',
         '3', '50', 'abc', '', 'cpu', 'cuda', 'meta', '2.5', '-num_output=2', str(2 ** 70), '-5']


@pytest.mark.slow
@SETTINGS
@given(args=st.lists(st.sampled_from(FLAGS) | st.text(max_size=6), max_size=7))
def test_generate_arguments(checkpoint, tmp_path_factory, monkeypatch_module, args):
    monkeypatch_module.chdir(tmp_path_factory.getbasetemp())
    args = [str(checkpoint) if a == 'CKPT' else a for a in args]
    try:
        generate.main(args)
    except SystemExit as e:  # argparse: help (0) or a usage error (2)
        assert e.code in (0, 2)
    except utils.InputError as e:
        assert str(e)


@pytest.fixture(scope='module')
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as m:
        yield m


VALUES = ['1', '0', '-3', '2.5', '1e-3', 'true', 'no', 'maybe', '', 'nan', 'inf', 'all', 'digits', 'ka', 'cpu',
          'cuda:3', 'meta', 'auto', 'csv', 'none', 'sample', '1e309', str(2 ** 40)]


@SETTINGS
@given(overrides=st.lists(st.tuples(st.sampled_from(list(train.params)) | st.text(max_size=5),
                                    st.sampled_from(VALUES) | st.text(max_size=5)), max_size=4),
       raw=st.lists(st.text(max_size=8), max_size=2))
def test_train_overrides(overrides, raw):
    argv = [f'{k}={v}' for k, v in overrides] + raw
    try:
        p, _ = train.configure(argv)
        device = utils.pick_device(p['device'])
        utils.seed_everything(p['seed'])
    except utils.InputError as e:
        assert str(e)
        return
    assert all(type(p[k]) is type(v) for k, v in train.params.items())
    assert device.type in ('cpu', 'cuda', 'mps')
