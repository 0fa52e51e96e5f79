"""Draw new images with a trained DRAW checkpoint:
    python generate.py -load_path checkpoint/model_final -num_output 64
writes Generated_Image.png (the final canvases) and draw_generate.gif (the canvas after each glimpse).

A class-conditional checkpoint (trained with conditional=True) draws the class asked for, by name,
last part or glyph (-char ka, -char क, -label 0), or a grid with one labelled row per class
(-per_class 8). -show_attention draws each glimpse's write window on the GIF's frames.
-reconstruct redraws real test images instead (of -data PATH, or of the checkpoint's own data):
Reconstruction.png and draw_reconstruct.gif, the image beside the canvas, with the read (green) and
write (red) windows of every glimpse. With -as ka,kha (conditional models) it also decodes each
image's z_t as each named class (Transfer.png: the same hand, another character) and prints the
share a classifier of the data recognises as the class asked.
-html PATH writes one self-contained web page instead, that draws with this checkpoint in the browser
and redraws handwriting drawn on it (webpage.py).
"""
import argparse
import time
from pathlib import Path

import torch

import checkpoints
import classifier
import config
import figures
import train
import utils
import webpage
from dataloader import checkpoint_glyphs, load_data_for, load_trained, select_classes, to_input


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(*config.flag('load_path'), required=True, help='checkpoint file, e.g. checkpoint/model_final')
    parser.add_argument(*config.flag('num_output'), type=int, default=36, help='number of images to draw (default 36)')
    parser.add_argument(*config.flag('t'), type=int, default=None, help="glimpses to draw (default: the checkpoint's T)")
    parser.add_argument(*config.flag('out_dir'), default='images', help='folder for the outputs (default images/)')
    parser.add_argument(*config.flag('seed'), type=int, default=None,
                        help='noise seed, for repeatable draws (default: random)')
    parser.add_argument(*config.flag('device'), default='auto', help='auto (CUDA when available), cpu or cuda')
    which = parser.add_mutually_exclusive_group()
    which.add_argument(*config.flag('char'), help="conditional models: the class to draw, e.g. character_01_ka, ka "
                                                 "or क (comma-separated for several)")
    which.add_argument(*config.flag('label'), type=int, help='conditional models: the class to draw, by index')
    which.add_argument(*config.flag('per_class'), type=int,
                       help='conditional models: K images of every class, one row each')
    which.add_argument(*config.flag('reconstruct'), action='store_true',
                       help='redraw real test images instead of sampling')
    which.add_argument(*config.flag('html'), metavar='PATH',
                       help='write a web page that draws with this checkpoint in the browser (e.g. draw.html)')
    parser.add_argument(*config.flag('data'),
                        help=f"with -reconstruct: the data to redraw (default: the checkpoint's own, looked for "
                             f"in {train.params['data_path']}/)")
    parser.add_argument('-as', '--as', dest='as_classes', metavar='NAMES',
                        help='with -reconstruct, conditional models: redraw each image as these classes too, '
                             'e.g. ka,kha or all')
    parser.add_argument(*config.flag('html_dtype'), choices=tuple(webpage.DTYPES), default='fp16',
                        help="with -html: the weights' precision in the page (default fp16, half the size)")
    parser.add_argument(*config.flag('show_attention'), action='store_true',
                        help='draw the write window of every glimpse')
    args = parser.parse_args(argv)
    for flag in ('num_output', 't', 'per_class'):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            parser.error(f'-{flag} must be a positive number, not {value}')
    if args.seed is not None and not 0 <= args.seed < 2 ** 63:
        parser.error(f'-seed must be an integer from 0 to 2**63 - 1, not {args.seed}')
    if args.data and not args.reconstruct:
        parser.error('-data names the images to redraw: use it with -reconstruct')
    if args.as_classes and not args.reconstruct:
        parser.error('-as redraws real images as other classes: use it with -reconstruct')
    return args


def class_labels(args, model, classes, glyphs):
    """The class of each image to draw ((n,) or None for an unconditional model) and the grid's
    row labels (None but for -per_class)."""
    asked = next((f'-{a}' for a in ('char', 'label', 'per_class') if getattr(args, a) is not None), None)
    if not model.num_classes:
        if asked:
            raise utils.InputError(f"{args.load_path}: an unconditional model (trained without conditional=True) "
                                   f"cannot draw a chosen class; drop {asked}, or train with conditional=True.")
        return None, None
    if args.per_class:
        labels = torch.arange(len(classes)).repeat_interleave(args.per_class)
        return labels, [figures.class_label(c, g) for c, g in zip(classes, glyphs)]
    if args.label is not None:
        if not 0 <= args.label < len(classes):
            raise utils.InputError(f"-label {args.label}: this model knows {len(classes)} classes, 0 to "
                                   f"{len(classes) - 1} (0 = {classes[0]}, {len(classes) - 1} = {classes[-1]}).")
        chosen = [args.label]
    else:
        chosen = select_classes(args.char, classes, glyphs, what='-char') if args.char else range(len(classes))
    return torch.tensor(chosen)[torch.arange(args.num_output) % len(chosen)], None


def reconstruction(model, params, ckpt, args, generator):
    """The data, real test images x and their labels y (None for an unconditional model), and the
    redrawing: canvases (T, n, C, B, A), every glimpse's z_t (T, n, z_size) and (read, write) boxes."""
    data = load_data_for(params, ckpt.get('classes') or [], args.data) if args.data \
        else load_trained(params, ckpt.get('data'), args.load_path)
    pick = torch.randperm(len(data.test_x), generator=generator)[:args.num_output]
    x = to_input(data.test_x[pick], params['binarize'], params['channel'], generator).to(model.pixels_a.device)
    y = data.test_y[pick].to(x.device) if model.num_classes else None
    windows = []
    with torch.no_grad():
        logits, _, _, zs = model(x, y, args.t, windows)
    return data, x, y, torch.sigmoid(logits), zs, windows


def transfer(model, params, data, x, y, zs, targets):
    """Each image's z_t decoded with each target class's label instead of its own: the final canvases,
    and the share of them (those asked for another class than the image's own) that a
    classifier of the data takes for the class asked."""
    device = x.device
    as_class = torch.stack([model.generate(len(x), torch.full_like(y, k), len(zs), zs=zs)[-1] for k in targets],
                           dim=1)  # (n, k, C, B, A)
    clf = classifier.of_splits(data, params, device)[0]
    predicted = classifier.apply(clf, as_class.flatten(0, 1)).argmax(1).view(len(x), len(targets))
    asked = torch.tensor(targets, device=device).expand(len(x), -1)
    moved = asked != y[:, None]  # redrawn as another class than its own
    return as_class, (predicted == asked)[moved].double().mean().item(), int(moved.sum())


def as_classes(args, model, classes, glyphs):
    """The indices of the classes -as names."""
    if not model.num_classes:
        raise utils.InputError(f"-as: {args.load_path} is an unconditional model (trained without "
                               f"conditional=True); only a class-conditional model redraws an image as another class.")
    return select_classes(args.as_classes, classes, glyphs, what='-as')


def write_page(model, ckpt, args):
    """-html: the web page that draws with this checkpoint (webpage.py)."""
    path = Path(args.html).expanduser()
    if path.is_dir():
        raise utils.InputError(f"-html {path} is a folder; give the page's file name, e.g. {path / 'draw.html'}.")
    utils.writable_dir(path.parent, '-html')
    html = webpage.page_html(model, ckpt, args.load_path, args.html_dtype).encode()
    try:
        utils.write_atomic(path, html)
    except utils.WriteError as e:
        raise utils.InputError(str(e)) from None
    print(f"Wrote {path} ({len(html) / 1e6:.1f} MB, the weights in {args.html_dtype}): open it in a browser; it "
          f"needs no network.")


def frames_of(canvases, windows, x=None, ncol=None):
    """One picture per glimpse: the canvases, with the write window drawn when windows are given,
    and the real images x beside them (read window on x) when reconstructing."""
    frames = []
    for t, images in enumerate(canvases):
        if x is not None:
            read, write = windows[t]
            images = figures.side_by_side(figures.with_boxes(x, [(read, figures.READ)]),
                                          figures.with_boxes(images, [(write, figures.WRITE)]))
        elif windows:
            images = figures.with_boxes(images, [(windows[t], figures.WRITE)])
        frames.append(figures.grid(images, scale=1 if windows else 2, ncol=ncol))
    return frames


def main(argv=None):
    args = parse_args(argv)
    device = utils.pick_device(args.device, '-device {}')
    model, params, ckpt = checkpoints.load_model(args.load_path, device)
    if args.html:
        return write_page(model, ckpt, args)
    out = utils.writable_dir(args.out_dir, '-out_dir')  # before any work
    params = checkpoints.with_user_paths(params, train.params)  # 2019 files name no data settings: the defaults
    classes = ckpt.get('classes') or []
    glyphs = checkpoint_glyphs(ckpt)
    targets = as_classes(args, model, classes, glyphs) if args.as_classes else None
    seed = torch.seed() % 2 ** 31 if args.seed is None else args.seed
    start = time.perf_counter()
    if args.reconstruct:
        data, x, y, canvases, zs, windows = reconstruction(model, params, ckpt, args,
                                                           torch.Generator().manual_seed(seed))
        figures.save_png(figures.grid(figures.side_by_side(x, canvases[-1])), out / 'Reconstruction.png')
        figures.save_gif(frames_of(canvases, windows, x), out / 'draw_reconstruct.gif')
        names = ('Reconstruction.png', 'draw_reconstruct.gif')
        if targets:
            as_class, share, n = transfer(model, params, data, x, y, zs, targets)
            rows = [figures.class_label(classes[k], glyphs[k]) for k in y.tolist()]
            png = figures.grid(torch.cat((x[:, None], as_class), dim=1).flatten(0, 1), ncol=1 + len(targets))
            figures.save_png(figures.label_rows(png, rows, pad=2 * 2), out / 'Transfer.png')
            names += ('Transfer.png',)
            print(f"Transfer.png: each row a real image, then it redrawn as "
                  f"{', '.join(classes[k] for k in targets)}. Of the {n} redrawn as another class than their own, "
                  f"{100 * share:.1f}% are recognised as the class asked (by a classifier of {data.name}).")
    else:
        labels, rows = class_labels(args, model, classes, glyphs)
        n = args.num_output if labels is None else len(labels)
        windows = [] if args.show_attention and model.write_attn else None
        canvases = model.generate(n, None if labels is None else labels.to(device), args.t,
                                  torch.Generator(device).manual_seed(seed), windows)  # (T, n, C, B, A)
        png, frames = figures.grid(canvases[-1], ncol=args.per_class), frames_of(canvases, windows, ncol=args.per_class)
        if rows:  # a label beside every row: its class
            png = figures.label_rows(png, rows, pad=2 * 2)
            frames = [figures.label_rows(f, rows, pad=2 * (1 if windows else 2)) for f in frames]
        figures.save_png(png, out / 'Generated_Image.png')
        figures.save_gif(frames, out / 'draw_generate.gif')
        names = ('Generated_Image.png', 'draw_generate.gif')
        if args.show_attention and not model.write_attn:
            print('-show_attention: this model writes without attention (write_attn=False); no windows to draw.')
    print(f"Drew {canvases.shape[1]} images in {canvases.shape[0]} glimpses (seed {seed}) in "
          f"{time.perf_counter() - start:.2f} s: {', '.join(str(out / name) for name in names)}")


if __name__ == '__main__':
    utils.run(main)
