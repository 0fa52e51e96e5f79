"""generate.py's class-conditional draws, attention overlays and reconstructions, end to end."""
import imageio.v3 as iio
import numpy as np
import pytest
import torch

import generate
from conftest import csv_lines, run
from draw_model import DRAWModel


def frames(path):
    return iio.imread(path, index=None, extension='.gif')


@pytest.fixture
def asked(monkeypatch):
    """The labels generate.py passes to the model, recorded."""
    seen, draw = [], DRAWModel.generate

    def recording(self, n, y=None, *args, **kw):
        seen.append(None if y is None else y.tolist())
        return draw(self, n, y, *args, **kw)

    monkeypatch.setattr(DRAWModel, 'generate', recording)
    return seen


@pytest.mark.slow
@pytest.mark.parametrize('flags, labels', [
    (['-char', 'character_01_ka'], [0, 0, 0, 0]), (['-char', 'KA'], [0, 0, 0, 0]), (['-char', 'क'], [0, 0, 0, 0]),
    (['-char', 'digit_00'], [1, 1, 1, 1]), (['-char', '०,ka'], [0, 1, 0, 1]), (['-label', '1'], [1, 1, 1, 1]),
    ([], [0, 1, 0, 1]), (['-per_class', '3'], [0, 0, 0, 1, 1, 1])])
def test_conditional_draws_the_class_asked_for(trained_conditional, tmp_path, asked, flags, labels):
    generate.main(['-load_path', str(trained_conditional / 'checkpoint' / 'model_final'), '-num_output', '4',
                   '-out_dir', str(tmp_path), '-seed', '0', *flags])
    assert asked == [labels]


@pytest.mark.slow
def test_per_class_grid_has_a_labelled_row_per_class(trained_conditional, tmp_path):
    out = run('generate.py', '-load_path', 'checkpoint/model_final', '-per_class', '3', '-out_dir', str(tmp_path),
              cwd=trained_conditional)
    assert out.returncode == 0, out.stderr
    png = iio.imread(tmp_path / 'Generated_Image.png')
    images = png[:, -(3 * 34 + 2) * 2:]  # 3 columns of 32 px + 2 px borders, doubled
    margin = png[:, :-(3 * 34 + 2) * 2]
    assert png.shape[0] == (2 * 34 + 2) * 2 and margin.shape[1] > 100  # two rows, a label margin
    for row in (slice(4, 68), slice(72, 136)):  # each row's label: dark text on white
        assert (margin[row] < 128).sum() > 50
    assert images.shape[1] == 208 and len(frames(tmp_path / 'draw_generate.gif')) == 3


@pytest.mark.slow
@pytest.mark.parametrize('flags, message', [
    (['-char', 'xyz'], "unknown class 'xyz'; valid names are"), (['-label', '2'], 'knows 2 classes, 0 to 1'),
    (['-per_class', '0'], '-per_class must be a positive'), (['-data', 'x.csv'], 'use it with -reconstruct'),
    (['-char', 'ka', '-label', '0'], 'not allowed with')])
def test_bad_class_requests_are_refused_clearly(trained_conditional, flags, message):
    out = run('generate.py', '-load_path', 'checkpoint/model_final', *flags, cwd=trained_conditional)
    assert out.returncode == 2 and message in out.stderr and 'Traceback' not in out.stderr
    if flags == ['-char', 'xyz']:
        assert 'character_01_ka (क), digit_0 (०)' in out.stderr


@pytest.mark.slow
def test_an_unconditional_model_refuses_a_class(trained):
    work, _ = trained
    out = run('generate.py', '-load_path', 'checkpoint/model_final', '-char', 'ka', cwd=work)
    assert out.returncode == 2 and 'unconditional model' in out.stderr and 'conditional=True' in out.stderr


@pytest.mark.slow
def test_show_attention_draws_the_write_window_of_every_glimpse(trained, tmp_path, monkeypatch):
    work, _ = trained
    boxes = []
    monkeypatch.setattr(generate.figures, 'with_boxes',
                        lambda images, b, scale=4: boxes.append(b) or generate_boxes(images, b, scale))
    generate.main(['-load_path', str(work / 'checkpoint' / 'model_final'), '-num_output', '4', '-seed', '0',
                   '-show_attention', '-out_dir', str(tmp_path)])
    gif = frames(tmp_path / 'draw_generate.gif')
    assert gif.shape[0] == 3 and gif.ndim == 4  # one RGB frame per glimpse
    red = (gif[..., 0] > 200) & (gif[..., 1] < 100)
    assert all(red[t].sum() > 0 for t in range(3))
    assert len(boxes) == 3 and all(b[0][0].shape == (4, 3) for b in boxes)


generate_boxes = generate.figures.with_boxes


def test_box_is_drawn_where_the_window_is():
    image = torch.zeros(1, 1, 16, 16)
    picture = generate.figures.with_boxes(image, [(torch.tensor([[7.0, 4.0, 6.0]]), (255, 0, 0))], scale=4)
    red = (picture[0, 0] > 0.9) & (picture[0, 1] < 0.1)
    ys, xs = np.nonzero(red.numpy())
    centre = (7 + 0.5) * 4, (4 + 0.5) * 4  # pixel 7's middle, upscaled
    assert xs.min() == pytest.approx(centre[0] - 12, abs=1) and xs.max() == pytest.approx(centre[0] + 12, abs=1)
    assert ys.min() == pytest.approx(centre[1] - 12, abs=1) and ys.max() == pytest.approx(centre[1] + 12, abs=1)


@pytest.mark.slow
def test_reconstruct_shows_the_image_beside_its_canvas(trained, tmp_path):
    work, _ = trained
    out = run('generate.py', '-load_path', 'checkpoint/model_final', '-reconstruct', '-num_output', '4',
              '-out_dir', str(tmp_path), '-data', 'data/data.csv', cwd=work)
    assert out.returncode == 0, out.stderr
    gif = frames(tmp_path / 'draw_reconstruct.gif')
    assert gif.shape[0] == 3 and gif.ndim == 4
    green = (gif[..., 1] > 180) & (gif[..., 0] < 120)  # the read window, on the real image
    red = (gif[..., 0] > 200) & (gif[..., 1] < 100)  # the write window, on the canvas
    assert green.any() and red.any()
    png = iio.imread(tmp_path / 'Reconstruction.png')
    assert png.shape == (2 * (2 * 34 + 2), 2 * (2 * 67 + 2))  # 2x2 pairs of 65-px-wide images
    out = run('generate.py', '-load_path', 'checkpoint/model_final', '-reconstruct', '-data', 'nowhere', cwd=work)
    assert out.returncode == 2 and out.stderr.startswith(f'error: -data nowhere: no such file or folder (from {work})')


@pytest.mark.slow
def test_reconstruct_of_other_data_lists_the_classes_it_leaves_out(trained_conditional, tmp_path):
    images = np.random.default_rng(5).integers(0, 256, (12, 32, 32), dtype=np.uint8)
    other = tmp_path / 'other.csv'
    other.write_text('\n'.join(csv_lines(images, ['character_01_ka', 'character_02_kha', 'character_03_ga'] * 4)))
    out = run('generate.py', '--load_path', 'checkpoint/model_final', '--reconstruct', '--num_output', '2',
              '--out_dir', str(tmp_path), '--data', str(other), cwd=trained_conditional)
    assert out.returncode == 0, out.stderr
    assert f"{other}: 2 classes not the model's, their images left out: character_02_kha, character_03_ga." \
        in out.stdout
