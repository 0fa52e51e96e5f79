import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from PIL import ImageFont, features

import devanagari
from conftest import ROOT

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
    peaks = images[shaped].amax((1, 2, 3))
    assert (peaks >= 240).all() and peaks.median() >= 250  # stroke cores at (nearly) full intensity
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


def reference_warp(x, u):
    """The warp as torch's own kernels compute it (affine_grid, bicubic interpolate, grid_sample), in
    float64: what devanagari._warp must equal up to rounding."""
    n, hi = len(x), devanagari.HI
    between = lambda lo, hi, v: lo + (hi - lo) * v
    angle = 2 * torch.atan(between(-0.085, 0.085, u[:, 0]))
    shear, scale, shift = between(-0.25, 0.25, u[:, 1]), between(0.9, 1.05, u[:, 2:4]), between(-0.08, 0.08, u[:, 4:6])
    cos, sin, one, zero = angle.cos(), angle.sin(), torch.ones(n, dtype=x.dtype), torch.zeros(n, dtype=x.dtype)
    rotate = torch.stack([cos, -sin, sin, cos], 1).view(n, 2, 2)
    skew = torch.stack([one, shear, zero, one], 1).view(n, 2, 2)
    theta = torch.cat([rotate @ skew / scale.view(n, 1, 2), shift.view(n, 2, 1)], 2)
    grid = F.affine_grid(theta, [n, 1, hi, hi], align_corners=False)
    coarse = between(-0.06 * math.sqrt(3), 0.06 * math.sqrt(3), u[:, 6:38]).view(n, 2, 4, 4)
    grid = grid + F.interpolate(coarse, size=(hi, hi), mode='bicubic', align_corners=True).permute(0, 2, 3, 1)
    return F.grid_sample(x[:, None], grid, mode='bilinear', padding_mode='zeros', align_corners=False)[:, 0]


def test_the_warp_is_torchs_affine_elastic_warp():
    """Written with exactly rounded operations only, the warp still computes what affine_grid, bicubic
    interpolate and grid_sample give for the same draw, to rounding (strong warps included, so taps
    fall outside the image)."""
    u, _ = devanagari._uniforms(3, 64, 38)
    u[:8] = torch.tensor([0.0, 1.0]).repeat(4)[:, None].expand(8, 38)  # the extremes of every parameter
    x = devanagari._base_images()[torch.arange(64) % 46, torch.arange(64) % 7].double() / 255
    assert torch.allclose(devanagari._warp(x, u), reference_warp(x, u), atol=1e-12, rtol=0)


RENDER = """
import json, sys, tempfile, torch
sys.path.insert(0, {root!r})
import dataloader, train
params = {{**train.params, 'dataset': 'builtin', 'cache_dir': tempfile.mkdtemp()}}
shipped = torch.load({root!r} + '/checkpoint/devanagari_builtin', map_location='cpu', weights_only=True)
trained = dataloader.load_trained(params, shipped['data'], 'the shipped model', log=lambda line: None)
print(json.dumps([torch.backends.cpu.get_cpu_capability(), trained.fingerprint]))
"""


@pytest.mark.slow
def test_the_built_in_set_is_the_same_bytes_on_every_cpu():
    """Rendered under each kernel set torch picks by CPU (plain C++, AVX2, and this machine's best),
    the built-in set has one fingerprint, and it is the one the shipped model learned: a resume, a
    score and the shipped model's tests agree on every CPU."""
    found = {}
    for capability in ('default', 'avx2', None):
        env = {k: v for k, v in os.environ.items() if k != 'ATEN_CPU_CAPABILITY'}
        if capability:
            env['ATEN_CPU_CAPABILITY'] = capability
        out = subprocess.run([sys.executable, '-c', RENDER.format(root=str(ROOT))], env=env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        kernels, fingerprint = json.loads(out.stdout.splitlines()[-1])
        found[kernels] = fingerprint
    assert 'DEFAULT' in found and len(set(found.values())) == 1, found
    shipped = torch.load(ROOT / 'checkpoint' / 'devanagari_builtin', map_location='cpu', weights_only=True)
    if shipped['data']['renderer'] == devanagari.renderer():  # else other pixels are expected (docs/data.md)
        assert set(found.values()) == {shipped['data']['fingerprint']}
