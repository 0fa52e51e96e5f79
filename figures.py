"""Pictures of what DRAW does: attention windows drawn as boxes on the images, and grids with one
labelled row per class. Inputs are (n, C, H, W) tensors in [0, 1]; outputs are uint8 arrays, as
utils.grid makes, ready for utils.save_gif or a PNG."""
import functools

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

import devanagari

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
    """A grid picture (H, W) or (H, W, 3) uint8 (utils.grid's, its images pad pixels apart) with a
    white margin on its left holding labels[r] beside row r."""
    row_height = (picture.shape[0] - pad) // len(labels)
    font = label_font(max(10, min(22, row_height // 2)))
    width = 8 + max(int(font.getlength(text)) for text in labels)
    margin = Image.new('L' if picture.ndim == 2 else 'RGB', (width, picture.shape[0]), 'white')
    draw = ImageDraw.Draw(margin)
    for r, text in enumerate(labels):
        draw.text((4, pad + r * row_height + (row_height - pad) // 2), text, fill='black', font=font, anchor='lm')
    return np.concatenate((np.asarray(margin), picture), axis=1)


def class_label(name, glyph):
    """A row label: the glyph and the class name ('क  character_01_ka'), or the name alone."""
    return f'{glyph}  {name}' if glyph else name
