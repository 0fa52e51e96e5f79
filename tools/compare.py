"""Compare training runs by what they reach against the minutes they took, from the files the scripts
write:
    python tools/compare.py old=runs/a/metrics.jsonl new=runs/b/metrics.jsonl -out images/bound_vs_minutes.png
reads the epoch records of train.py's metrics.jsonl (one JSON object a line, written in its
checkpoint_dir beside the checkpoints; label=path, or the path as the label) and plots the test bound
after every epoch against the time so far: the records' "seconds" (each epoch's training and its test
bound) summed, so start-up and checkpoint writing are left out. A run resumed from an earlier
checkpoint repeats epochs: the later records replace the earlier ones from that epoch on.
    python tools/compare.py -scores built-in=runs/b5,runs/b10 handwritten=runs/h5,runs/h10 -out images/scores.png
plots, for each series of run folders, the share of samples the classifier recognises against the
minutes from train.py's start to its model_final. A run folder is a run's checkpoint_dir, holding
train.py's metrics.jsonl (its last "final" record's "elapsed" is the time) and eval.json, written by
    python evaluate.py -load_path runs/h5/model_final -json runs/h5/eval.json
(its "samples" "recognisable" is the share, a fraction).
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: figures, utils
import figures  # noqa: E402
import utils  # noqa: E402

WRITTEN = {'epoch': 'after every epoch', 'final': 'when it writes model_final'}


def read_text(path):
    """The text of the file at path, or an InputError saying why it cannot be read."""
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise utils.InputError(f"{path}: cannot read it ({getattr(e, 'strerror', None) or e}).") from None


def parsed(text, path, line=0):
    """The JSON object in text, line number line of the file at path (0: the whole file), or an
    InputError naming the file and the line."""
    try:
        found = json.loads(text)
    except json.JSONDecodeError as e:
        raise utils.InputError(f"{path}, line {line or e.lineno}: not valid JSON ({e.msg}); the file is "
                               f"damaged.") from None
    if not isinstance(found, dict):
        raise utils.InputError(f"{path}{f', line {line}' if line else ''}: a JSON {type(found).__name__}, not an "
                               f"object; the file is damaged.")
    return found


def number(value, error):
    """value, where it is a number; else an InputError saying error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise utils.InputError(error)
    return value


def records(path, event):
    """(line number, record) of every record of that event in train.py's metrics.jsonl at path."""
    found = [(n, parsed(line, path, n)) for n, line in enumerate(read_text(path).splitlines(), 1) if line.strip()]
    found = [(n, r) for n, r in found if r.get('event') == event]
    if not found:
        raise utils.InputError(f"{path}: no {event!r} record in it; train.py writes one {WRITTEN[event]}.")
    return found


def curve(path):
    """(minutes of training at each epoch's end, test bounds) from train.py's metrics.jsonl."""
    kept = []
    for n, r in records(path, 'epoch'):
        epoch, bound, seconds = (number(r.get(key), f"{path}, line {n}: an epoch record without a number {key!r}.")
                                 for key in ('epoch', 'test_bound', 'seconds'))
        while kept and kept[-1][0] >= epoch:  # resumed from an earlier checkpoint: those epochs were redone
            kept.pop()
        kept.append((epoch, bound, seconds))
    minutes, total = [], 0.0
    for _, _, seconds in kept:
        total += seconds / 60
        minutes.append(total)
    return minutes, [bound for _, bound, _ in kept]


def scores(folders):
    """(minutes from start to model_final, recognisable %) of each run folder, in the order given."""
    points = []
    for folder in map(Path, folders):
        metrics, evaluated = folder / 'metrics.jsonl', folder / 'eval.json'
        n, final = records(metrics, 'final')[-1]
        elapsed = number(final.get('elapsed'), f"{metrics}, line {n}: a final record without a number 'elapsed'.")
        samples = parsed(read_text(evaluated), evaluated).get('samples')
        share = number(samples.get('recognisable') if isinstance(samples, dict) else None,
                       f"{evaluated}: no sample scores in it (\"samples\": {{\"recognisable\": ...}}); run "
                       f"evaluate.py with -num_samples above 0.")
        points.append((elapsed / 60, 100 * share))
    return [m for m, _ in points], [s for _, s in points]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('runs', nargs='+', help="train.py's metrics.jsonl files, each as label=path or path; with "
                                                "-scores, label=folder,folder,...")
    parser.add_argument('-scores', action='store_true', help="plot evaluate.py's recognisable share of run folders")
    parser.add_argument('-out', default='images/bound_vs_minutes.png', help='the plot (default %(default)s)')
    parser.add_argument('-title', default=None, help='the plot title')
    args = parser.parse_args(argv)
    runs = {}
    for spec in args.runs:
        label, sep, path = spec.partition('=')
        label, path = (label, path) if sep else (spec, spec)
        runs[label] = scores(path.split(',')) if args.scores else curve(path)
    if args.scores:
        figures.plot_curves(Path(args.out), runs, args.title or 'Recognisable samples against training time',
                            "minutes from train.py's start to model_final", 'samples recognisable (p >= 0.9), %')
        for label, (minutes, shares) in runs.items():
            print(f"{label:>24}: " + ', '.join(f"{s:.1f}% at {m:.1f} min" for m, s in zip(minutes, shares)))
    else:
        figures.plot_curves(Path(args.out), runs, args.title or 'Test bound against training time',
                            'minutes (epoch records, summed)', 'test bound (-ELBO), nats per image')
        for label, (minutes, bounds) in runs.items():
            print(f"{label:>24}: {bounds[-1]:.2f} nats after {minutes[-1]:.1f} min ({len(bounds)} epochs), "
                  f"best {min(bounds):.2f}")
    print(f"wrote {args.out}")


if __name__ == '__main__':
    utils.run(main)
