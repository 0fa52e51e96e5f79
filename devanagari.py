"""
Built-in Devanagari training set: the 46 classes of the Devanagari Handwritten
Character Dataset (DHCD), rendered from fonts instead of downloaded.

Fonts: Noto Sans Devanagari (variable font, drawn at several weights) and Kalam
(Light, Regular, Bold), both under the SIL Open Font License 1.1, installed by the
pip packages fontpkg-noto-sans-devanagari and fontpkg-kalam.

Each (glyph, face) is rendered once with PIL at 2x resolution; every sample then gets
a random affine + elastic warp, computed so that every CPU gives the same bytes for a
seed, and lands in DHCD's convention: 32x32 uint8, white strokes on black, 2-pixel black frame.
"""
import functools
import hashlib
import importlib
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont, __version__ as PILLOW, features

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
WARP = 2  # the warp's version: bump when a change to it draws other pixels


@functools.lru_cache(maxsize=1)
def renderer() -> str:
    """What draws the built-in set here, all that can change its pixels on any CPU: the warp's version,
    Pillow and the libraries it draws glyphs with, and the font files (by content; hashed once per
    process, not at every cache lookup and checkpoint)."""
    fonts = hashlib.sha256(b"".join(path.read_bytes() for path in font_paths())).hexdigest()[:12]
    return (f"warp {WARP}, Pillow {PILLOW} (FreeType {features.version('freetype2')}, raqm "
            f"{features.version('raqm')}), fonts {fonts}")


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
    """Glyph cropped to its ink, scaled to FIT px on its longest side, centred on HI x HI, uint8."""
    left, top, right, bottom = font.getbbox(text)
    img = Image.new("L", (right - left + 8, bottom - top + 8))
    ImageDraw.Draw(img).text((4 - left, 4 - top), text, fill=255, font=font)
    img = img.crop(img.getbbox())
    s = FIT / max(img.size)
    img = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.Resampling.LANCZOS)
    canvas = Image.new("L", (HI, HI))
    canvas.paste(img, ((HI - img.width) // 2, (HI - img.height) // 2))
    return np.asarray(canvas)


@functools.lru_cache(maxsize=1)
def _base_images():
    """(classes, faces, HI, HI) uint8, rendered once per process."""
    fonts = _fonts()
    return torch.from_numpy(np.stack([[_render(GLYPHS[c], f) for f in fonts] for c in CLASSES]))


# The warp below gives the same bytes on every CPU: float64 and only the operations IEEE 754 rounds
# exactly (+ - * /, sqrt, floor, round), each a separate elementwise op, so no SIMD width, FMA, library
# kernel (sin, matmul, grid_sample) or summation order can change a result. Its random numbers come
# from PCG64's raw stream, whose bits numpy keeps stable across versions and machines.
def _uniforms(seed, n, k):
    """(n, k) float64 uniforms in [0, 1) and n raw 64-bit integers, from seed's PCG64 stream."""
    raw = np.random.PCG64(seed).random_raw(n * (k + 1)).reshape(n, k + 1)
    u = (raw[:, 1:] >> np.uint64(11)).astype(np.float64) * 2.0 ** -53  # 53 random bits, exact
    return torch.from_numpy(u), torch.from_numpy((raw[:, 0] >> np.uint64(1)).astype(np.int64))


def _linear_map(x, w):
    """x (..., m) times w (k, m) transposed: (..., k), summed term by term in a fixed order."""
    out = x[..., None, 0] * w[:, 0]
    for j in range(1, w.shape[1]):
        out = out + x[..., None, j] * w[:, j]
    return out


def _bicubic_weights(size, coarse, a=-0.75):
    """(size, coarse) weights of cubic-convolution upsampling (Keys 1981, a = -0.75 as in
    torch.nn.functional.interpolate), corners aligned, indices clamped at the border."""
    w = torch.zeros(size, coarse, dtype=torch.float64)
    for i in range(size):
        src = i * (coarse - 1) / (size - 1)
        i0 = min(int(src), coarse - 2)
        t = src - i0
        for k, d in zip(range(i0 - 1, i0 + 3), (1 + t, t, 1 - t, 2 - t)):  # d: distance to tap k
            kernel = ((a + 2) * d - (a + 3)) * d * d + 1 if d <= 1 else ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
            w[i, min(max(k, 0), coarse - 1)] += kernel
    return w


def _bilinear(img, px, py):
    """img (n, HI, HI) sampled at pixel coordinates (px, py) (n, HI, HI), zero outside."""
    padded = F.pad(img, (1, 1, 1, 1)).flatten(1)  # a zero border: any tap outside reads 0
    x0, y0 = px.floor(), py.floor()
    fx, fy = px - x0, py - y0
    x0, y0 = (x0.clamp(-2, HI).long() + 1).flatten(1), (y0.clamp(-2, HI).long() + 1).flatten(1)
    x1, y1 = (x0 + 1).clamp(max=HI + 1), (y0 + 1).clamp(max=HI + 1)
    x0, y0 = x0.clamp(min=0), y0.clamp(min=0) * (HI + 2)
    y1 = y1 * (HI + 2)
    tap = lambda y, x: padded.gather(1, y + x).view_as(px)
    top = tap(y0, x0) * (1 - fx) + tap(y0, x1) * fx
    bottom = tap(y1, x0) * (1 - fx) + tap(y1, x1) * fx
    return top * (1 - fy) + bottom * fy


def _warp(x, u):
    """Random affine (rotation, scale, shear, translation) + elastic warp of x (n, HI, HI) float64,
    driven by u (n, 38) uniforms."""
    n = x.shape[0]
    between = lambda lo, hi, v: lo + (hi - lo) * v
    t = between(-0.085, 0.085, u[:, 0])                      # tan(angle / 2): angle within +-9.7 degrees
    cos, sin = (1 - t * t) / (1 + t * t), 2 * t / (1 + t * t)  # rotation without sin or cos
    shear = between(-0.25, 0.25, u[:, 1])
    sx, sy = between(0.9, 1.05, u[:, 2]), between(0.9, 1.05, u[:, 3])  # dividing by scale enlarges the glyph
    tx, ty = between(-0.08, 0.08, u[:, 4]), between(-0.08, 0.08, u[:, 5])  # +-1 px
    # output pixel centres in [-1, 1], mapped to input coordinates: rotation @ shear, columns / scale
    c = ((2 * torch.arange(HI, dtype=torch.float64) + 1) / HI - 1)
    gx, gy = c.view(1, 1, HI), c.view(1, HI, 1)
    m = [v.view(n, 1, 1) for v in (cos / sx, (cos * shear - sin) / sy, sin / sx, (sin * shear + cos) / sy, tx, ty)]
    # elastic distortion: a coarse 4x4 random displacement field (std 0.06), smoothly upsampled
    coarse = between(-0.06 * math.sqrt(3), 0.06 * math.sqrt(3), u[:, 6:38]).view(n, 2, 4, 4)
    w = _bicubic_weights(HI, 4)
    ex, ey = _linear_map(_linear_map(coarse, w).transpose(-1, -2), w).transpose(-1, -2).unbind(1)  # (n, HI, HI)
    u_in = m[0] * gx + m[1] * gy + m[4] + ex
    v_in = m[2] * gx + m[3] * gy + m[5] + ey
    return _bilinear(x, ((u_in + 1) * HI - 1) / 2, ((v_in + 1) * HI - 1) / 2)  # to pixel coordinates


def render_dataset(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (n, 1, 32, 32), labels int64 (n,)), n = 46 * n_per_class, grouped by class;
    the same bytes on every CPU."""
    bases = _base_images()
    labels = torch.arange(len(CLASSES)).repeat_interleave(n_per_class)
    u, raw = _uniforms(seed, len(labels), 38)
    faces = raw % bases.shape[1]
    images = []
    for idx in torch.arange(len(labels)).split(512):
        x = _warp(bases[labels[idx], faces[idx]].double() / 255, u[idx])
        x = x.view(-1, HI // 2, 2, HI // 2, 2)
        x = (x[:, :, 0, :, 0] + x[:, :, 0, :, 1] + x[:, :, 1, :, 0] + x[:, :, 1, :, 1]) / 4  # area-downsample to 28x28
        images.append(F.pad(x, (2, 2, 2, 2)).unsqueeze(1))  # black 2-pixel frame -> 32x32
    images = (torch.cat(images) * 255).round().clamp(0, 255).to(torch.uint8)
    return images, labels
