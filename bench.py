"""Measure DRAW's training throughput and generation time on this machine:
    python bench.py [--windows 5] [--steps 10] [key=value ...]
key=value are train.py's params and overrides (batch_size=32, T=64, device=cpu, ...). Prints, side by
side, the images per second of three training steps on random binary images of the params' size
(median and range of the timed windows, after warm-up, the device synchronised at each window's end;
the variants take turns, so drift hits them alike):
  2019-style   the 2019 loop's costs: 3 channels, unfused Adam, the loss read every step, fp32
  train.py     this repository's step (fused Adam, no per-step sync), at the params' precision
  + bf16       the same with precision=bf16
and the time to draw 64 samples and write their GIF (generate.py's work), median of 3.
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import distributed
import train
import utils
from draw_model import DRAWModel


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def make_step(p, device, style):
    """A function running one training step of a fresh model, as the variant style does it."""
    model = DRAWModel(p).to(device)
    images = (torch.rand(p['batch_size'], p['channel'], p['B'], p['A'], device=device) > 0.7).float()
    if style == '2019':  # per-step host read of the loss, as the original's loss list does
        optimizer = torch.optim.Adam(model.parameters(), lr=p['learning_rate'], betas=(p['beta1'], 0.999))

        def step():
            loss = model.loss(images)[0]
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), p['clip'])
            optimizer.step()
            return loss.item()
        return step
    optimizer = torch.optim.Adam(model.parameters(), lr=p['learning_rate'], betas=(p['beta1'], 0.999), fused=True)
    objective = distributed.objective(model, device)
    return lambda: train.train_step(objective, optimizer, images, None, p)


def throughput(variants, p, device, windows, steps, warmup):
    """{name: [images/s of each window]}, the variants timed in turn."""
    rates = {name: [] for name in variants}
    for step in variants.values():
        for _ in range(warmup):
            step()
    sync(device)
    for _ in range(windows):
        for name, step in variants.items():
            start = time.perf_counter()
            for _ in range(steps):
                step()
            sync(device)
            rates[name].append(steps * p['batch_size'] / (time.perf_counter() - start))
    return rates


def generation_seconds(p, device, repeats=3):
    """Seconds to draw 64 samples and write their PNG grid and GIF, median of repeats."""
    model = DRAWModel(p).to(device).eval()
    times = []
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(repeats):
            start = time.perf_counter()
            canvases = model.generate(64)
            utils.save_grid(canvases[-1], Path(folder) / 'grid.png')
            utils.save_gif([utils.grid(c) for c in canvases], Path(folder) / 'draw.gif')
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--windows', type=int, default=5, help='timed windows per variant (default 5)')
    parser.add_argument('--steps', type=int, default=10, help='training steps per window (default 10)')
    parser.add_argument('--warmup', type=int, default=3, help='untimed steps per variant first (default 3)')
    args, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if min(args.windows, args.steps) < 1 or args.warmup < 0:
        parser.error('--windows and --steps must be at least 1, --warmup at least 0')
    p = utils.apply_overrides(train.params, overrides)
    utils.check_params(p)
    device = utils.pick_device(p['device'])
    torch.manual_seed(p['seed'])
    variants = {'2019-style': make_step({**p, 'channel': 3}, device, '2019'),
                f"train.py ({p['precision']})": make_step(p, device, 'train.py')}
    if p['precision'] != 'bf16':
        variants['train.py (bf16)'] = make_step({**p, 'precision': 'bf16'}, device, 'train.py')
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU, {torch.get_num_threads()} threads'
    print(f"{name}; torch {torch.__version__}; T={p['T']}, {p['A']}x{p['B']}, batch {p['batch_size']}, "
          f"read {p['read_N']}, write {p['write_N']}, LSTM {p['enc_size']}/{p['dec_size']}, z {p['z_size']}; "
          f"{args.windows} windows of {args.steps} steps")
    rates = throughput(variants, p, device, args.windows, args.steps, args.warmup)
    base = statistics.median(rates['2019-style'])
    print(f"{'training step':<20}{'images/s (median)':>18}{'range':>18}{'vs 2019-style':>15}")
    for variant, found in rates.items():
        median = statistics.median(found)
        print(f"{variant:<20}{median:>18,.0f}{f'{min(found):,.0f}-{max(found):,.0f}':>18}{median / base:>14.2f}x")
    print(f"generation: 64 samples + PNG + GIF in {generation_seconds(p, device):.2f} s (median of 3)")


if __name__ == '__main__':
    utils.run(main)
