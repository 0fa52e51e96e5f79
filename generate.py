"""Draw new images with a trained DRAW checkpoint:
    python generate.py -load_path checkpoint/model_final -num_output 64
writes Generated_Image.png (the final canvases) and draw_generate.gif (the canvas after each glimpse).
"""
import argparse
import time
from pathlib import Path

import torch

import utils


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-load_path', required=True, help='checkpoint file, e.g. checkpoint/model_final')
    parser.add_argument('-num_output', type=int, default=36, help='number of images to draw (default 36)')
    parser.add_argument('-t', type=int, default=None, help="glimpses to draw (default: the checkpoint's T)")
    parser.add_argument('-out_dir', default='images', help='folder for the outputs (default images/)')
    parser.add_argument('-seed', type=int, default=None, help='noise seed, for repeatable draws (default: random)')
    parser.add_argument('-device', default='auto', help='auto (CUDA when available), cpu or cuda')
    args = parser.parse_args(argv)
    if args.num_output <= 0:
        parser.error(f'-num_output must be a positive number of images, not {args.num_output}')
    if args.t is not None and args.t <= 0:
        parser.error(f'-t must be a positive number of glimpses, not {args.t}')
    if args.seed is not None and not 0 <= args.seed < 2 ** 63:
        parser.error(f'-seed must be an integer from 0 to 2**63 - 1, not {args.seed}')
    return args


def main(argv=None):
    args = parse_args(argv)
    device = utils.pick_device(args.device)
    model, params, _ = utils.load_model(args.load_path, device)
    seed = torch.seed() % 2 ** 31 if args.seed is None else args.seed
    T = args.t or params['T']
    start = time.perf_counter()
    canvases = model.generate(args.num_output, T, torch.Generator(device).manual_seed(seed))  # (T, n, C, B, A)
    out = Path(args.out_dir)
    utils.save_grid(canvases[-1], out / 'Generated_Image.png')
    utils.save_gif(canvases, out / 'draw_generate.gif')
    print(f"Drew {args.num_output} images in {T} glimpses (seed {seed}) in {time.perf_counter() - start:.2f} s: "
          f"{out / 'Generated_Image.png'}, {out / 'draw_generate.gif'}")


if __name__ == '__main__':
    utils.run(main)
