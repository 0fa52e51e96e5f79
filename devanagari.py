"""
Built-in Devanagari training set: the 46 classes of the Devanagari Handwritten
Character Dataset (DHCD), rendered from fonts instead of downloaded.

Fonts: Noto Sans Devanagari (variable font, drawn at several weights) and Kalam
(Light, Regular, Bold), both under the SIL Open Font License 1.1, installed by the
pip packages fontpkg-noto-sans-devanagari and fontpkg-kalam.

Each (glyph, face) is rendered once with PIL at 2x resolution; every sample then gets
a random affine + elastic warp as batched torch ops driven by a seeded generator, and
lands in DHCD's convention: 32x32 uint8, white strokes on black, 2-pixel black frame.
"""
import functools
import importlib
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont, features

_SUFFIXES = ("ka kha ga gha kna cha chha ja jha yna taamatar thaa daa dhaa adna tabala "
             "tha da dha na pa pha ba bha ma yaw ra la waw motosaw petchiryakha patalosaw "
             "ha chhya tra gya").split()
_LETTERS = "क ख ग घ ङ च छ ज झ ञ ट ठ ड ढ ण त थ द ध न प फ ब भ म य र ल व श ष स ह क्ष त्र ज्ञ".split()
CLASSES = [f"character_{i:02d}_{s}" for i, s in enumerate(_SUFFIXES, 1)] + [f"digit_{d}" for d in range(10)]
GLYPHS = dict(zip(CLASSES, _LETTERS + list("०१२३४५६७८९")))

HI = 56                              # working resolution of the 28x28 inner area (2x supersampled)
FIT = 52                             # longest glyph side at HI resolution (26 px in the final image)
NOTO_WEIGHTS = (400, 550, 700, 850)  # wght axis values of the variable font
FONTS = {"fontpkg_noto_sans_devanagari": ["NotoSansDevanagari[wdth,wght].ttf"],
         "fontpkg_kalam": ["Kalam-Light.ttf", "Kalam-Regular.ttf", "Kalam-Bold.ttf"]}

LAYOUT = ImageFont.Layout.RAQM if features.check("raqm") else ImageFont.Layout.BASIC


def font_paths() -> list[Path]:
    """The font files used, checked to exist."""
    paths = []
    for module, names in FONTS.items():
        package = module.replace("_", "-")
        try:
            root = Path(importlib.import_module(module).__file__).parent / "files"
        except ImportError as e:
            raise ImportError(f"Devanagari fonts missing: pip install {package}") from e
        for name in names:
            if not (root / name).is_file():
                raise FileNotFoundError(f"{root / name} not found: pip install --force-reinstall {package}")
            paths.append(root / name)
    return paths


def _fonts(size=96):
    if LAYOUT != ImageFont.Layout.RAQM:
        warnings.warn("Pillow was built without RAQM text layout (libraqm): the conjuncts "
                      "क्ष त्र ज्ञ will render as separate letters instead of single glyphs")
    noto, *kalam = font_paths()
    fonts = []
    for weight in NOTO_WEIGHTS:
        font = ImageFont.truetype(noto, size, layout_engine=LAYOUT)
        font.set_variation_by_axes([weight if a["name"] == b"Weight" else a["default"]
                                    for a in font.get_variation_axes()])
        fonts.append(font)
    return fonts + [ImageFont.truetype(path, size, layout_engine=LAYOUT) for path in kalam]


def _render(text, font):
    """Glyph cropped to its ink, scaled to FIT px on its longest side, centred on HI x HI."""
    left, top, right, bottom = font.getbbox(text)
    img = Image.new("L", (right - left + 8, bottom - top + 8))
    ImageDraw.Draw(img).text((4 - left, 4 - top), text, fill=255, font=font)
    img = img.crop(img.getbbox())
    s = FIT / max(img.size)
    img = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.Resampling.LANCZOS)
    canvas = Image.new("L", (HI, HI))
    canvas.paste(img, ((HI - img.width) // 2, (HI - img.height) // 2))
    return np.asarray(canvas, dtype=np.float32) / 255


@functools.lru_cache(maxsize=1)
def _base_images():
    """(classes, faces, HI, HI) float in [0, 1], rendered once per process."""
    fonts = _fonts()
    return torch.from_numpy(np.stack([[_render(GLYPHS[c], f) for f in fonts] for c in CLASSES]))


def _warp(x, g):
    """Random affine (rotation, scale, shear, translation) + elastic warp of x (n, 1, HI, HI)."""
    n = x.shape[0]
    uniform = lambda lo, hi, *shape: lo + (hi - lo) * torch.rand(n, *shape, generator=g)
    angle, shear = uniform(-0.17, 0.17), uniform(-0.25, 0.25)  # +-10 degrees, shear factor
    scale, shift = uniform(0.9, 1.05, 2), uniform(-0.08, 0.08, 2)  # per axis; shift +-1 px
    cos, sin, one, zero = angle.cos(), angle.sin(), torch.ones(n), torch.zeros(n)
    rotate = torch.stack([cos, -sin, sin, cos], 1).view(n, 2, 2)
    skew = torch.stack([one, shear, zero, one], 1).view(n, 2, 2)
    # affine_grid maps output to input coordinates, so dividing by scale enlarges the glyph
    theta = torch.cat([rotate @ skew / scale.view(n, 1, 2), shift.view(n, 2, 1)], 2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # elastic distortion: a coarse random displacement field, smoothly upsampled
    coarse = 0.06 * torch.randn(n, 2, 4, 4, generator=g)
    grid = grid + F.interpolate(coarse, size=(HI, HI), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def render_dataset(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (n, 1, 32, 32), labels int64 (n,)), n = 46 * n_per_class, grouped by class."""
    bases = _base_images()
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(CLASSES)).repeat_interleave(n_per_class)
    faces = torch.randint(bases.shape[1], labels.shape, generator=g)
    images = []
    for idx in torch.arange(len(labels)).split(4096):
        x = _warp(bases[labels[idx], faces[idx]].unsqueeze(1), g)
        x = F.avg_pool2d(x, 2)                    # area-downsample to 28x28
        images.append(F.pad(x, (2, 2, 2, 2)))     # black 2-pixel frame -> 32x32
    images = (torch.cat(images) * 255).round().clamp(0, 255).to(torch.uint8)
    return images, labels
