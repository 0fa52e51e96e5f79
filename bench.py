"""Measure DRAW's training throughput and generation time on this machine:
    python bench.py [--windows 5] [--steps 10] [--vs K=V[,K=V]] [--keep-subnormals] [key=value ...]
key=value are train.py's params and overrides (batch_size=32, T=64, device=cpu, ...). Prints, side by
side, the images per second of the training steps below on random binary images of the params' size
(median and range of the timed windows, after warm-up, the device synchronised at each window's end;
the variants take turns, so drift hits them alike):
  2019 code         the 2019 loop at the 2019 code's own sizes (LSTMs of 400 units, write_N 6), the rest as
                    given: what the original trains (shown where the sizes differ from those timed)
  2019-style        the 2019 loop's costs at the params' sizes: 3 channels, unfused Adam, the loss read every
                    step, fp32 (the ratios' base, like for like)
  train.py (fp32)   this repository's step as train.py's loop runs it (training.loop_step: a batch indexed from
                    the data on the device, the schedule, fused Adam, the moving average, no per-step sync)
  train.py (bf16)   the same under bf16 autocast, timed only where bf16 is native (what precision=auto uses)
  train.py (..., glimpse compiled), train.py (..., step compiled)  the step with the glimpse or the whole
                    step compiled by torch.compile (compiling.py), in the precision precision=auto picks (what
                    compile=auto chooses between; only the one asked with compile=glimpse or step, neither with
                    compile=false or where it cannot compile), after timing each compile in two fresh processes:
                    cold (empty inductor caches) and warm (the caches the first left, as for a second train.py start)
  train.py (..., K=V)  with --vs K=V[,K=V...] (repeatable): train.py's step with those params changed, in
                    the precision train.py picks for them, e.g. --vs write_N=6 to time a size against the defaults
with each step's arithmetic (matrix-product GFLOP per image, counted by torch's FlopCounterMode), the
GFLOP/s it reaches and its share of this machine's matrix-product peak, measured in the same run on
large square products of the step's precision; on a CPU, where each step's time goes (torch.profiler:
its operator calls, and its shares in matrix products, batched ones among them, a compiled graph's fused
kernels and everything else, with the products' own GFLOP/s); the time to draw 64 samples and write their PNG
and GIF (generate.py's work), median of 3; and the time and value of the test bound after each epoch
on 1,000 images, as train.py computes it and in fp32 one training batch at a time, median of 3.
Every row computes as the scripts do, with subnormal floats flushed to zero on an x86 CPU (utils.run),
the 2019 rows too, so they run faster than the 2019 code, which kept them; --keep-subnormals runs every
row as it did (a CPU's threads take the setting when they start, so one process cannot time both).
"""
import argparse
import copy
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import compiling
import config
import distributed
import figures
import train
import training
import utils
from dataloader import to_input
from draw_model import DRAWModel


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def peak_gflops(device, dtype, seconds=1.0):
    """This machine's matrix-product rate in GFLOP/s: the median of 5 windows of square products
    (2048 on a GPU, 1024 on a CPU), each about seconds / 5 long."""
    n = 2048 if device.type == 'cuda' else 1024
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    sync(device)
    start = time.perf_counter()
    a @ b
    sync(device)
    reps = max(1, int(seconds / 5 / max(time.perf_counter() - start, 1e-6)))
    rates = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        rates.append(2 * n ** 3 * reps / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)


DATA_IMAGES = 4096  # the random binary training set the train.py rows index their batches from


def step_gflop(step, images):
    """Matrix-product GFLOP per image of one call of step (forward, backward, Adam)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / images / 1e9


def make_step(p, device, style):
    """A function running one training step of a fresh model, as the variant style ('2019', 'train.py', or
    a region compiled, compiling.REGIONS) does it."""
    model = DRAWModel(p).to(device)
    if style == '2019':  # per-step host read of the loss, as the original's loss list does
        images = (torch.rand(p['batch_size'], p['channel'], p['B'], p['A'], device=device) > 0.7).float()
        optimizer = torch.optim.Adam(model.parameters(), lr=p['learning_rate'], betas=(p['beta1'], 0.999))

        def step():
            loss = model.loss(images)[0]
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), p['clip'])
            optimizer.step()
            return loss.item()
        return step
    bs, per_epoch = p['batch_size'], DATA_IMAGES // p['batch_size']
    train_x = ((torch.rand(DATA_IMAGES, 1, p['B'], p['A'], device=device) > 0.7) * 255).to(torch.uint8)
    train = train_x, torch.zeros(DATA_IMAGES, dtype=torch.long, device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=p['learning_rate'], betas=(p['beta1'], 0.999), fused=True)
    objective = distributed.objective(model, device)
    if style in compiling.REGIONS:
        objective = compiling.compile_objective(objective, to_input(train_x[:bs], p['binarize'], p['channel']), None,
                                                p['free_bits'], p['precision'], print, style)
        if not isinstance(objective, compiling.Switch):
            raise utils.InputError('the compiled step failed to compile (above); time it with compile=false.')
    averaged = copy.deepcopy(model).requires_grad_(False) if p['ema'] else None
    run, order = training.Run(model, averaged, optimizer, training.RunState()), torch.randperm(DATA_IMAGES, device=device)

    def step():
        i = run.state.step % per_epoch
        return training.loop_step(run, objective, train, order[i * bs:(i + 1) * bs], p, p['epoch_num'] * per_epoch)
    return step


ORIGINAL_SIZES = {'enc_size': 400, 'dec_size': 400, 'write_N': 6}  # the 2019 code's defaults where train.py's differ


def variants_planned(p, vs, device, precision, native, compiled):
    """{name: (params, style)} of the steps to time: the 2019 loop, train.py's step in fp32, in bf16 where
    native, with each region of compiled compiled, and with each --vs change."""
    plan = {'2019-style': ({**p, 'channel': 3, 'precision': 'fp32'}, '2019'),
            'train.py (fp32)': ({**p, 'precision': 'fp32'}, 'train.py')}
    if any(p[k] != v for k, v in ORIGINAL_SIZES.items()):
        plan = {'2019 code': ({**p, **ORIGINAL_SIZES, 'channel': 3, 'precision': 'fp32'}, '2019'), **plan}
    if native:
        plan['train.py (bf16)'] = ({**p, 'precision': 'bf16'}, 'train.py')
    for region in compiled:
        plan[f'train.py ({precision}, {region} compiled)'] = ({**p, 'precision': precision}, region)
    for change in vs:
        try:
            other = config.apply_overrides(p, change.split(','))
            config.check_params(other)
            if other['device'] != p['device']:
                raise utils.InputError('every variant runs on the same device; run bench.py once per device.')
            chosen, _ = utils.resolve_precision(other['precision'], device)
        except utils.InputError as e:
            raise utils.InputError(f'--vs {change}: {e}') from None
        asked = compiling.regions(other['compile'])  # compile=auto or false: eager, as before the run decides
        plan[f'train.py ({chosen}, {change})'] = ({**other, 'precision': chosen}, asked[0] if len(asked) == 1 else 'train.py')
    return plan


PRODUCTS, BATCHED = {'aten::mm', 'aten::addmm', 'aten::bmm', 'aten::baddbmm'}, {'aten::bmm', 'aten::baddbmm'}


def time_shares(step, steps=3):
    """Where a CPU step's time goes, from torch.profiler over steps calls of step: seconds per step in
    matrix products, in the batched ones among them (the filterbanks' small products), in a compiled
    graph's own fused kernels, and in everything else; and the operator calls per step."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        for _ in range(steps):
            step()
    events = profile.key_averages()

    def seconds(keep):
        return sum(e.self_cpu_time_total for e in events if keep(e.key)) / 1e6 / steps
    products, batched = seconds(PRODUCTS.__contains__), seconds(BATCHED.__contains__)
    fused = seconds(lambda key: key.startswith('## Call CompiledFxGraph'))
    other = seconds(lambda key: True) - products - fused
    calls = sum(e.count for e in events if e.key.startswith('aten::')) / steps
    return products, batched, fused, other, calls


def compile_seconds(region, overrides, cache):
    """Seconds to compile region of train.py's step in a fresh process with inductor's caches in the folder cache."""
    out = subprocess.run([sys.executable, __file__, '--compile-only', region, *overrides], capture_output=True,
                         text=True, env={**os.environ, 'TORCHINDUCTOR_CACHE_DIR': cache})
    if out.returncode:
        raise utils.InputError(f"compiling in a fresh process failed:\n{out.stderr.strip()[-2000:]}")
    return float(out.stdout.split()[-1])


def throughput(variants, sizes, device, windows, steps, warmup):
    """{name: [images/s of each window]}, the variants (of sizes[name] images a step) timed in turn."""
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
            rates[name].append(steps * sizes[name] / (time.perf_counter() - start))
    return rates


def generation_seconds(p, device, repeats=3):
    """Seconds to draw GIF_SAMPLES samples and write their PNG grid and GIF, median of repeats."""
    model = DRAWModel(p).to(device).eval()
    times = []
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(repeats):
            start = time.perf_counter()
            canvases = model.generate(training.GIF_SAMPLES)
            figures.save_grid(canvases[-1], Path(folder) / 'grid.png')
            figures.save_gif([figures.grid(c) for c in canvases], Path(folder) / 'draw.gif')
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def test_bound_seconds(p, device, precision, repeats=3):
    """The epoch line's test bound on 1,000 random binary images of an untrained model, taking turns: as
    train.py computes it (training.epoch_test), and in fp32 one training batch at a time. Returns the
    seconds of each (median of repeats) and the bound of each (one posterior sample per image, seeded)."""
    model = DRAWModel(p).to(device).eval()
    x = (torch.rand(1000, p['channel'], p['B'], p['A'], device=device) < 0.5).float()
    y = torch.zeros(1000, dtype=torch.long, device=device)
    ways = (lambda: training.epoch_test(model, x, y, {**p, 'precision': precision}),
            lambda: training.test_bound(model, x, y, p['batch_size']))
    times, bounds = [[], []], [None, None]
    for _ in range(repeats):
        for i, way in enumerate(ways):
            torch.manual_seed(p['seed'])
            start = time.perf_counter()
            bounds[i] = way()[0]
            sync(device)
            times[i].append(time.perf_counter() - start)
    return [statistics.median(found) for found in times], bounds


def parse_args(argv):
    """(bench's flags, train.py's key=value overrides)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--windows', type=int, default=5, help='timed windows per variant (default 5)')
    parser.add_argument('--steps', type=int, default=5, help='training steps per window (default 5)')
    parser.add_argument('--warmup', type=int, default=3, help='untimed steps per variant first (default 3)')
    parser.add_argument('--vs', action='append', default=[], metavar='K=V[,K=V]',
                        help="also time train.py's step with these params changed (repeatable)")
    parser.add_argument('--keep-subnormals', action='store_true',
                        help='compute with subnormal floats kept, as the 2019 code did (the scripts flush them to zero)')
    parser.add_argument('--compile-only', choices=compiling.REGIONS, help=argparse.SUPPRESS)  # compile_seconds' child
    args, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if min(args.windows, args.steps) < 1 or args.warmup < 0:
        parser.error('--windows and --steps must be at least 1, --warmup at least 0')
    return args, overrides


def print_rates(rates, gflop, peak, width):
    """The throughput table: each variant's images/s against the 2019 loop's, and its share of the peak."""
    base = statistics.median(rates['2019-style'])
    original = statistics.median(rates.get('2019 code', rates['2019-style']))  # the same loop where sizes agree
    print(f"{'training step':<{width}}{'images/s (median)':>18}{'range':>14}{'vs 2019-style':>15}"
          f"{'vs 2019 code':>14}{'GFLOP/image':>13}{'GFLOP/s':>9}{'of peak':>9}")
    for variant, found in rates.items():
        median = statistics.median(found)
        print(f"{variant:<{width}}{median:>18,.0f}{f'{min(found):,.0f}-{max(found):,.0f}':>14}"
              f"{median / base:>14.2f}x{median / original:>13.2f}x"
              f"{gflop[variant]:>13.3g}{gflop[variant] * median:>9,.0f}{gflop[variant] * median / peak[variant]:>9.0%}")


def print_profile(variants, gflop, peak, sizes, width):
    """Where each variant's step time goes, by operator kind (torch.profiler)."""
    print("where a step's time goes (torch.profiler, 3 steps each; matrix products' GFLOP/s and share of peak):")
    print(f"{'training step':<{width}}{'operator calls':>15}{'products':>10}{'batched':>9}{'fused':>7}"
          f"{'other':>7}{'GFLOP/s':>9}{'of peak':>9}")
    for variant, step in variants.items():
        products, batched, fused, other, calls = time_shares(step)
        total, rate = products + fused + other, gflop[variant] * sizes[variant] / products
        print(f"{variant:<{width}}{calls:>15,.0f}{products / total:>10.0%}{batched / total:>9.0%}"
              f"{fused / total:>7.0%}{other / total:>7.0%}{rate:>9,.0f}{rate / peak[variant]:>9.0%}")


def main(argv=None):
    args, overrides = parse_args(argv)
    if args.keep_subnormals:  # before the first parallel work, so every compute thread inherits it
        torch.set_flush_denormal(False)
    p = config.apply_overrides(train.params, overrides)
    config.check_params(p)
    device = utils.pick_device(p['device'])
    precision, why = utils.resolve_precision(p['precision'], device)
    torch.manual_seed(p['seed'])
    if args.compile_only:
        start = time.perf_counter()
        make_step({**p, 'precision': precision}, device, args.compile_only)
        print(f'{time.perf_counter() - start:.1f}')
        return
    native = utils.native_bf16(device)
    compiled = compiling.regions(p['compile'])
    compiled = () if compiled and compiling.unavailable(device) else compiled
    plan = variants_planned(p, args.vs, device, precision, native, compiled)  # --vs checked before any work
    with tempfile.TemporaryDirectory() as cache:
        # each region cold in a fresh process, warm in a second one, then warm here
        seconds = {region: [compile_seconds(region, overrides, cache) for _ in range(2)] for region in compiled}
        os.environ['TORCHINDUCTOR_CACHE_DIR'] = cache
        variants = {name: make_step(params, device, style) for name, (params, style) in plan.items()}
    width = max(map(len, variants)) + 2
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU, {torch.get_num_threads()} threads'
    print(f"{name}; torch {torch.__version__}; T={p['T']}, {p['A']}x{p['B']}, batch {p['batch_size']}, "
          f"read {p['read_N']}, write {p['write_N']}, LSTM {p['enc_size']}/{p['dec_size']}, z {p['z_size']}; "
          f"{args.windows} windows of {args.steps} steps; train.py trains in {precision} ({why}); subnormal floats "
          f"{'kept (--keep-subnormals)' if args.keep_subnormals else 'flushed to zero, as train.py runs'}")
    if not native:
        print(f"train.py (bf16): not timed, bf16 is not native on {device} (precision=auto uses fp32 here)")
    peaks = {'fp32': peak_gflops(device, torch.float32), **({'bf16': peak_gflops(device, torch.bfloat16)} if native else {})}
    print(f"matrix-product peak: {', '.join(f'{k} {v:,.0f} GFLOP/s' for k, v in peaks.items())}")
    sizes = {variant: params['batch_size'] for variant, (params, _) in plan.items()}  # a --vs may change it
    gflop = {variant: step_gflop(step, sizes[variant]) for variant, step in variants.items()}
    peak = {variant: peaks['bf16' if variant.startswith('train.py (bf16') else 'fp32'] for variant in variants}
    print_rates(throughput(variants, sizes, device, args.windows, args.steps, args.warmup), gflop, peak, width)
    if device.type == 'cpu':
        print_profile(variants, gflop, peak, sizes, width)
    for region, (cold, warm) in seconds.items():
        print(f"compile time of {compiling.WHAT[region]}: {cold:.0f} s cold (empty caches), {warm:.0f} s warm "
              f"(a second process)")
    if not compiled:
        print(f"compiled step: not timed ({'compile=false' if p['compile'] == 'false' else compiling.unavailable(device)})")
    print(f"generation: {training.GIF_SAMPLES} samples + PNG + GIF in {generation_seconds(p, device):.2f} s (median of 3)")
    (ours, fp32), bounds = test_bound_seconds(p, device, precision)
    print(f"the epoch's test bound, 1,000 images: {ours:.2f} s as train.py computes it ({precision}, batches of "
          f"{training.TEST_BATCHES * p['batch_size']}), {fp32:.2f} s in fp32 batches of {p['batch_size']} (median of 3); "
          f"the bound {bounds[0]:.2f} and {bounds[1]:.2f} nats (untrained; one posterior sample per image)")


if __name__ == '__main__':
    utils.run(main)
