"""DRAW in a web page: one self-contained HTML file that draws with a checkpoint's weights in plain
JavaScript (web/draw.js: draw_model.py's equations) and reads and redraws handwriting drawn on it.
Written by generate.py:
    python generate.py -load_path checkpoint/model_final -html draw.html
Checked against PyTorch, and timed, in headless Chromium by tools/webcheck.py.

Class names come from data files and checkpoints: they reach the page as JSON that a script element
cannot end early, and web/page.js shows them as text, never as HTML.
"""
import base64
import copy
import html
import json
import re
from pathlib import Path

import numpy as np
import torch

import figures
import utils
from dataloader import checkpoint_glyphs

WEB = Path(__file__).resolve().parent / 'web'
DTYPES = {'fp16': torch.float16, 'fp32': torch.float32}


def page_weights(model, dtype, where):
    """The model's state dict as the page holds it: every tensor in dtype ('fp16' or 'fp32'), as
    numpy arrays; an InputError (where: the checkpoint) for weights that are not finite, or that fp16
    cannot hold."""
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    for name, v in state.items():
        if not torch.isfinite(v).all():
            raise utils.InputError(f"{where}: {name} holds non-finite weights (NaN or inf); a page cannot draw "
                                   f"with them. Export an earlier checkpoint.")
        if dtype == 'fp16' and v.abs().max() > torch.finfo(torch.float16).max:
            raise utils.InputError(f"{where}: {name} holds weights beyond fp16's range (|w| up to "
                                   f"{v.abs().max():.3g}); write the page with -html_dtype fp32.")
    return {k: v.to(DTYPES[dtype]).numpy() for k, v in state.items()}


def as_page_computes(model, dtype):
    """A copy of model, in fp32 on the CPU, with the weights the page holds (rounded to dtype and back):
    PyTorch's side of the page's exactness check."""
    copied = copy.deepcopy(model).float().cpu()
    copied.load_state_dict({k: torch.from_numpy(v).float() for k, v in page_weights(model, dtype, '').items()})
    return copied


def page_html(model, ckpt, source, dtype='fp16'):
    """The HTML of the page for the checkpoint ckpt read from source (a path): web/page.html with
    web/draw.js, web/page.js and the model (its sizes, class names and glyphs, and its weights as
    base64 of little-endian dtype values) inlined."""
    weights, title = page_weights(model, dtype, source), Path(source).name
    manifest, offset = [], 0
    for name, v in weights.items():
        manifest.append([name, list(v.shape), offset])
        offset += v.size
    blob = b''.join(np.ascontiguousarray(v).astype(v.dtype.newbyteorder('<')).tobytes() for v in weights.values())
    config = {'T': model.T, 'A': model.A, 'B': model.B, 'C': model.C, 'z_size': model.z_size,
              'read_N': model.read_N, 'write_N': model.write_N, 'read_attn': model.read_attn,
              'write_attn': model.write_attn, 'original_layout': model.original_layout,
              'num_classes': model.num_classes, 'enc_size': model.encoder.hidden_size,
              'dec_size': model.decoder.hidden_size}
    params = ckpt['params']
    about = {'title': title, 'dtype': dtype, 'weights': offset, 'epoch': ckpt.get('epoch'),
             'data': data_name(ckpt.get('data')), 'threshold': params.get('binarize') == 'threshold',
             'classes': (ckpt.get('classes') or [])[:model.num_classes]}
    glyphs = checkpoint_glyphs(ckpt)[:model.num_classes]
    about['glyphs'] = [f"data:image/png;base64,{base64.b64encode(figures.glyph_png(g)).decode('ascii')}" if g
                       else '' for g in glyphs]  # as pictures: the reader may have no Devanagari font
    model_json = script_json({'config': config, 'about': about, 'dtype': dtype, 'manifest': manifest,
                              'weights': base64.b64encode(blob).decode('ascii')})
    parts = {'TITLE': html.escape(title), 'MODEL': model_json,
             'DRAW_JS': (WEB / 'draw.js').read_text(encoding='utf-8'),
             'PAGE_JS': (WEB / 'page.js').read_text(encoding='utf-8')}
    return filled((WEB / 'page.html').read_text(encoding='utf-8'), parts)


# JSON's escapes (\u003c, ...) for '<', '>' and '&', so that no string ends the script element or opens a
# comment in it, and for U+2028 and U+2029, line ends to JavaScript before ES2019
SCRIPT_SAFE = {ord(c): f'\\u{ord(c):04x}' for c in '<>&\u2028\u2029'}


def script_json(value):
    """value as JSON text that can sit inside an HTML script element whatever strings it holds."""
    return json.dumps(value, ensure_ascii=False).translate(SCRIPT_SAFE)


def filled(template, parts):
    """template with every {{NAME}} in it replaced by parts[NAME], in one pass: the text put in for one
    placeholder is never searched for another. A placeholder that parts does not name is an error."""
    def part(match):
        if match[1] not in parts:
            raise ValueError(f"the page's template holds {match[0]}, but only {', '.join(parts)} are filled in")
        return parts[match[1]]
    return re.sub(r'\{\{(\w+)\}\}', part, template)


def data_name(record):
    """The checkpoint's data, as the page names it: the source's kind and file name, without the
    folders of the machine it was trained on ('csv train.csv.gz'); '' where it records none."""
    name = (record or {}).get('name', '')
    kind, _, where = name.partition(' ')
    return f'{kind} {Path(where).name}' if where and record.get('dataset') != 'builtin' else name
