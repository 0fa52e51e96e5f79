import pytest
import torch
from PIL import ImageFont, features

import devanagari

N = 40  # samples per class


@pytest.fixture(scope="module")
def data():
    return devanagari.render_dataset(N, seed=0)


def test_classes_and_glyphs():
    suffixes = ("ka kha ga gha kna cha chha ja jha yna taamatar thaa daa dhaa adna tabala tha da dha "
                "na pa pha ba bha ma yaw ra la waw motosaw petchiryakha patalosaw ha chhya tra gya").split()
    expected = [f"character_{i:02d}_{s}" for i, s in enumerate(suffixes, 1)] + [f"digit_{d}" for d in range(10)]
    assert devanagari.CLASSES == expected
    assert devanagari.CLASSES[0] == "character_01_ka" and devanagari.CLASSES[35] == "character_36_gya"
    assert set(devanagari.GLYPHS) == set(expected)
    assert devanagari.GLYPHS["character_36_gya"] == "\u091c\u094d\u091e"  # ज्ञ
    assert devanagari.GLYPHS["character_34_chhya"] == "\u0915\u094d\u0937"  # क्ष
    assert devanagari.GLYPHS["digit_7"] == "\u096d"  # ७


def test_font_paths():
    paths = devanagari.font_paths()
    assert len(paths) == 4 and all(p.is_file() for p in paths)


def test_shapes_dtypes_labels(data):
    images, labels = data
    assert images.shape == (46 * N, 1, 32, 32) and images.dtype == torch.uint8
    assert labels.shape == (46 * N,) and labels.dtype == torch.int64
    assert torch.equal(labels.bincount(), torch.full((46,), N))


def test_black_frame(data):
    images, _ = data
    inner = torch.zeros(32, 32, dtype=torch.bool)
    inner[2:30, 2:30] = True
    assert images[..., ~inner].eq(0).all()


def test_white_strokes_on_black(data):
    images = data[0].float()
    per_image = images.mean((1, 2, 3))
    assert per_image.min() > 5 and per_image.max() < 150  # every image has ink, none is mostly white
    assert 20 < per_image.mean() < 90
    shaped = torch.ones(len(images), dtype=torch.bool)
    if devanagari.LAYOUT != ImageFont.Layout.RAQM:  # unshaped conjuncts are three letters squeezed thin
        conjuncts = [devanagari.CLASSES.index(c) for c in ("character_34_chhya", "character_35_tra", "character_36_gya")]
        shaped = ~torch.isin(data[1], torch.tensor(conjuncts))
    assert (images[shaped].amax((1, 2, 3)) >= 250).all()  # full-intensity stroke cores
    assert images.eq(0).float().mean() > 0.5  # mostly black background


def test_deterministic():
    a, _ = devanagari.render_dataset(3, seed=7)
    b, _ = devanagari.render_dataset(3, seed=7)
    c, _ = devanagari.render_dataset(3, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_rng_state_untouched():
    state = torch.get_rng_state()
    devanagari.render_dataset(1, seed=0)
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.skipif(not features.check("raqm"), reason="Pillow without RAQM: conjuncts are not shaped")
def test_conjuncts_are_single_clusters():
    # shaped, a conjunct is about as wide as one letter; unshaped, its letters sit side by side
    for font in devanagari._fonts():
        width = lambda text: font.getbbox(text)[2] - font.getbbox(text)[0]
        for conjunct in ("क्ष", "त्र", "ज्ञ"):
            first, _, second = conjunct
            assert width(conjunct) < 0.8 * (width(first) + width(second)), (font.getname(), conjunct)


def test_classes_distinguishable(data):
    images, labels = data
    x = images.float().view(46, N, -1) / 255
    # the mean images of two different classes differ much more than two halves of one class
    half_a, half_b = x[:, ::2].mean(1), x[:, 1::2].mean(1)
    within = (half_a - half_b).abs().mean()
    between = (half_a[:, None] - half_a[None]).abs().mean(2).sum() / (46 * 45)  # diagonal is 0
    assert between > 2 * within
    # a nearest-class-mean classifier fit on seed 0 does far better than chance on seed 1
    test_images, test_labels = devanagari.render_dataset(5, seed=1)
    distances = torch.cdist(test_images.float().flatten(1) / 255, x.mean(1))
    assert (distances.argmin(1) == test_labels).float().mean() > 0.3  # chance is 1/46
