"""Compare training runs by what they reach against the minutes they took:
    python train.py ... > old.log;  python train.py ... > new.log
    python compare.py old=old.log new.log -out images/bound_vs_minutes.png
reads train.py's epoch lines from each log (label=path, or the file's name) and plots the test
bound after every epoch against the time so far: the epoch lines' seconds (each epoch's training and
its test bound) summed, so start-up and checkpoint writing are left out.
    python compare.py -scores built-in=runs/b5,runs/b10 handwritten=runs/h5,runs/h10 -out images/scores.png
plots, for each series of run folders (each holding train.py's log as train.log and evaluate.py's
output on its model_final as eval.log), the share of samples the classifier recognises against the
minutes from train.py's start to its model_final.
"""
import argparse
import re
from pathlib import Path

import figures
import utils

EPOCH = re.compile(r'^epoch (\d+)/\d+ .*test bound ([\d.]+) nats .*  ([\d.]+) s \(', re.M)
SAVED = re.compile(r'^Saved \S+, (?:(\d+):)?(\d+):(\d\d) after the start', re.M)
RECOGNISABLE = re.compile(r'^\s*recognisable \(p >= 0\.9\)\s+([\d.]+)%', re.M)


def read(path, pattern, what):
    """Every match of pattern in the text file at path; an InputError naming what is missing where none."""
    try:
        found = pattern.findall(Path(path).read_text(errors='replace'))
    except OSError as e:
        raise utils.InputError(f"{path}: cannot read it ({e.strerror}).") from None
    if not found:
        raise utils.InputError(f"{path}: no {what} in it.")
    return found


def curve(path):
    """(minutes of training at each epoch's end, test bounds) from a train.py log."""
    found = read(path, EPOCH, "epoch lines of train.py ('epoch 1/50  train loss ...')")
    minutes, total = [], 0.0
    for _, _, seconds in found:
        total += float(seconds) / 60
        minutes.append(total)
    return minutes, [float(bound) for _, bound, _ in found]


def scores(folders):
    """(minutes from start to model_final, recognisable %) of each run folder, in the order given."""
    points = []
    for folder in folders:
        hours, minutes, seconds = read(Path(folder) / 'train.log', SAVED, "line 'Saved ..., m:ss after the start'")[-1]
        share = read(Path(folder) / 'eval.log', RECOGNISABLE, "evaluate.py line 'recognisable (p >= 0.9) ...'")[0]
        points.append((60 * int(hours or 0) + int(minutes) + int(seconds) / 60, float(share)))
    return [m for m, _ in points], [s for _, s in points]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('runs', nargs='+', help='train.py logs, each as label=path or path; with -scores, '
                                                'label=folder,folder,...')
    parser.add_argument('-scores', action='store_true', help="plot evaluate.py's recognisable share of run folders")
    parser.add_argument('-out', default='images/bound_vs_minutes.png', help='the plot (default %(default)s)')
    parser.add_argument('-title', default=None, help='the plot title')
    args = parser.parse_args(argv)
    runs = {}
    for spec in args.runs:
        label, sep, path = spec.partition('=')
        label, path = (label, path) if sep else (Path(spec).stem, spec)
        runs[label] = scores(path.split(',')) if args.scores else curve(path)
    if args.scores:
        figures.plot_curves(Path(args.out), runs, args.title or 'Recognisable samples against training time',
                          "minutes from train.py's start to model_final", 'samples recognisable (p >= 0.9), %')
        for label, (minutes, shares) in runs.items():
            print(f"{label:>24}: " + ', '.join(f"{s:.1f}% at {m:.1f} min" for m, s in zip(minutes, shares)))
    else:
        figures.plot_curves(Path(args.out), runs, args.title or 'Test bound against training time',
                          'minutes (epoch lines, summed)', 'test bound (-ELBO), nats per image')
        for label, (minutes, bounds) in runs.items():
            print(f"{label:>24}: {bounds[-1]:.2f} nats after {minutes[-1]:.1f} min ({len(bounds)} epochs), "
                  f"best {min(bounds):.2f}")
    print(f"wrote {args.out}")


if __name__ == '__main__':
    utils.run(main)
