"""Compare training runs by the test bound they reach against the minutes they trained:
    python train.py ... > old.log;  python train.py ... > new.log
    python compare.py old=old.log new.log -out images/bound_vs_minutes.png
reads train.py's epoch lines from each log (label=path, or the file's name) and plots the test
bound after every epoch against the time so far: the epoch lines' seconds (each epoch's training and
its test bound) summed, so start-up and checkpoint writing are left out.
"""
import argparse
import re
from pathlib import Path

import utils

EPOCH = re.compile(r'^epoch (\d+)/\d+ .*test bound ([\d.]+) nats .*  ([\d.]+) s \(', re.M)


def curve(path):
    """(minutes of training at each epoch's end, test bounds) from a train.py log."""
    try:
        found = EPOCH.findall(Path(path).read_text(errors='replace'))
    except OSError as e:
        raise utils.InputError(f"{path}: cannot read it ({e.strerror}).") from None
    if not found:
        raise utils.InputError(f"{path}: no epoch lines of train.py in it ('epoch 1/50  train loss ...').")
    minutes, total = [], 0.0
    for _, _, seconds in found:
        total += float(seconds) / 60
        minutes.append(total)
    return minutes, [float(bound) for _, bound, _ in found]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('logs', nargs='+', help='train.py logs, each as label=path or path')
    parser.add_argument('-out', default='images/bound_vs_minutes.png', help='the plot (default %(default)s)')
    parser.add_argument('-title', default='Test bound against training time', help='the plot title')
    args = parser.parse_args(argv)
    runs = {}
    for spec in args.logs:
        label, sep, path = spec.partition('=')
        runs[label if sep else Path(spec).stem] = curve(path if sep else spec)
    utils.plot_curves(Path(args.out), runs, args.title)
    for label, (minutes, bounds) in runs.items():
        print(f"{label:>24}: {bounds[-1]:.2f} nats after {minutes[-1]:.1f} min ({len(bounds)} epochs), "
              f"best {min(bounds):.2f}")
    print(f"wrote {args.out}")


if __name__ == '__main__':
    utils.run(main)
