"""Every picture the scripts write: grids of images, PNGs, GIFs of the canvas glimpse by glimpse, the
loss curve, the KL per glimpse and curves of runs; attention windows drawn as boxes on the images, and
grids with one labelled row per class. Images come as (n, C, H, W) tensors in [0, 1]; pictures are uint8
arrays, as grid makes, ready for save_gif or save_png. Files are written atomically (utils.write_atomic)."""
import functools
import io
import math

import imageio.v3 as iio
import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

import devanagari
import utils

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)

def grid(images, scale=2, ncol=None):
    """(n, C, H, W) in [0, 1] -> a grid of ncol columns (default: near-square), upscaled: uint8
    (H', W') for grayscale, (H', W', 3) for RGB (grayscale files are smaller, their GIFs undithered).
    Images sit 2 * scale pixels apart."""
    ncol = ncol or math.ceil(math.sqrt(len(images)))
    g = make_grid(images.detach().float().cpu(), nrow=ncol, padding=2, pad_value=0.5)  # (3, H', W')
    g = F.interpolate(g.unsqueeze(0), scale_factor=scale, mode='nearest')[0]
    g = (g.clamp(0, 1) * 255).round().byte()
    return g[0].numpy() if images.shape[1] == 1 else g.permute(1, 2, 0).numpy()


def save_png(picture, path):
    """A uint8 picture (H, W) or (H, W, 3), as grid makes."""
    utils.write_atomic(path, iio.imwrite('<bytes>', picture, extension='.png'))


def save_grid(images, path):
    save_png(grid(images), path)


def save_gif(frames, path, frame_ms=100, hold_ms=2000):
    """frames, one uint8 picture per glimpse (as grid makes), -> an animated GIF, the last held.
    A bar under each frame shows the glimpse count (and keeps frames distinct, so none is merged)."""
    out = []
    for t, frame in enumerate(frames):
        bar = np.zeros((6, *frame.shape[1:]), dtype=np.uint8)
        bar[2:5, :math.ceil(frame.shape[1] * (t + 1) / len(frames))] = 255
        out.append(np.concatenate((frame, bar)))
    utils.write_atomic(path, iio.imwrite('<bytes>', np.stack(out), extension='.gif', loop=0,
                                   duration=[frame_ms] * (len(out) - 1) + [hold_ms]))


def plot_losses(path, train_losses, steps_per_epoch, test_bounds):
    """Train loss per iteration and test bound per epoch, both in nats per image."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(np.arange(1, len(train_losses) + 1), train_losses, lw=0.6, alpha=0.8, label='train loss (minibatch)')
    epochs_x = steps_per_epoch * np.arange(1, len(test_bounds) + 1)
    ax.plot(epochs_x, test_bounds, 'o-', color='C3', label='test bound (-ELBO), per epoch')
    values = np.concatenate((train_losses, test_bounds))
    values = values[np.isfinite(values)]
    if len(values) > 1:  # leave out the first steps' spike, so the curve's later part is readable
        low, high = np.percentile(values, [0, 98])
        ax.set_ylim(low - 0.05 * (high - low) - 1, high + 0.1 * (high - low) + 1)
    ax.set_xlabel('iteration')
    ax.set_ylabel('nats per image')
    ax.set_title('DRAW training: negative ELBO')
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_curves(path, runs, title, xlabel, ylabel):
    """One line per run, {label: (xs, ys)}, e.g. the test bound against training minutes."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, (xs, ys) in runs.items():
        ax.plot(xs, ys, 'o-', ms=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_kl(path, kl_per_glimpse, title):
    """Bars of the KL of each glimpse, nats per image: where the model spends its information."""
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(np.arange(1, len(kl_per_glimpse) + 1), kl_per_glimpse, color='C0')
    ax.set_xlabel('glimpse t')
    ax.set_ylabel('KL(Q(z_t | x) || P(z_t)), nats')
    ax.set_title(title)
    ax.grid(alpha=0.3, axis='y')
    save_figure(fig, path)


def save_figure(fig, path):
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=120, bbox_inches='tight', format='png')
    plt.close(fig)
    utils.write_atomic(path, buffer.getbuffer())


READ, WRITE = (60, 220, 60), (235, 50, 50)  # box colours: green where DRAW reads, red where it writes


def with_boxes(images, boxes, scale=4):
    """images upscaled by scale, in RGB, with each box drawn on its image: boxes is a list of
    ((n, 3) tensor of centre x, centre y, side in pixels (DRAWModel.box), colour) pairs, a None
    tensor drawing nothing. Returns (n, 3, H * scale, W * scale) in [0, 1]."""
    pixels = (images.detach().float().cpu().clamp(0, 1).expand(-1, 3, -1, -1) * 255).round().byte()
    out = []
    for i, image in enumerate(pixels):
        picture = Image.fromarray(image.permute(1, 2, 0).numpy()).resize(
            (image.shape[2] * scale, image.shape[1] * scale), Image.NEAREST)
        draw = ImageDraw.Draw(picture)
        for box, colour in boxes:
            if box is None:
                continue
            x, y, side = (box[i].cpu().double() * scale).tolist()  # pixel k spans [k, k+1) * scale
            x, y = x + scale / 2, y + scale / 2
            edges = np.clip([x - side / 2, y - side / 2, x + side / 2, y + side / 2], 0, np.array(picture.size * 2) - 1)
            draw.rectangle(tuple(edges), outline=colour)  # a window wider than the image: its border
            draw.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill=colour)
        out.append(torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1))
    return torch.stack(out).float() / 255


def side_by_side(left, right):
    """(n, C, H, W) pairs joined along the width, a grey line between: (n, C, H, 2W + 1)."""
    line = torch.full_like(left[..., :1], 0.5)
    return torch.cat((left, line, right), dim=3)


@functools.lru_cache(maxsize=4)
def label_font(size):
    """The project's Devanagari font (it has Latin letters too), or Pillow's own if it is missing."""
    try:
        return ImageFont.truetype(str(devanagari.font_paths()[0]), size, layout_engine=devanagari.LAYOUT)
    except (ImportError, FileNotFoundError, OSError):
        return ImageFont.load_default(size)


def label_rows(picture, labels, pad):
    """A grid picture (H, W) or (H, W, 3) uint8 (grid's, its images pad pixels apart) with a
    white margin on its left holding labels[r] beside row r."""
    row_height = (picture.shape[0] - pad) // len(labels)
    font = label_font(max(10, min(22, row_height // 2)))
    width = 8 + max(int(font.getlength(text)) for text in labels)
    margin = Image.new('L' if picture.ndim == 2 else 'RGB', (width, picture.shape[0]), 'white')
    draw = ImageDraw.Draw(margin)
    for r, text in enumerate(labels):
        draw.text((4, pad + r * row_height + (row_height - pad) // 2), text, fill='black', font=font, anchor='lm')
    return np.concatenate((np.asarray(margin), picture), axis=1)


def glyph_png(glyph, size=36):
    """A PNG (bytes) of glyph in the project's font, black on transparent, size pixels tall: for pages
    that cannot count on the reader's machine having a Devanagari font."""
    font = label_font(size * 3 // 4)
    left, top, right, bottom = font.getbbox(glyph, anchor='mm')
    picture = Image.new('LA', (max(size, right - left + 4), size))
    ImageDraw.Draw(picture).text((picture.width / 2, size / 2), glyph, fill=(0, 255), font=font, anchor='mm')
    buffer = io.BytesIO()
    picture.save(buffer, format='png')
    return buffer.getvalue()


def class_label(name, glyph):
    """A row label: the glyph and the class name ('क  character_01_ka'), or the name alone."""
    return f'{glyph}  {name}' if glyph else name
