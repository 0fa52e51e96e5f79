"""The model this repository ships, from a train.py checkpoint: what drawing and scoring need (the
weights' moving average, params, classes and glyphs, the data record, where the run stood and its
test bounds), without the optimiser's state, the trained weights beside their average or the losses.
    python tools/ship.py /tmp/ship/checkpoint/model_final checkpoint/devanagari_builtin
docs/model.md says how the shipped file was trained.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import checkpoints  # noqa: E402
import torch  # noqa: E402
import utils  # noqa: E402

KEPT = ('model', 'params', 'classes', 'glyphs', 'data', 'run', 'epoch', 'step', 'total_steps', 'test_bounds')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('source', help="a train.py checkpoint, e.g. a finished run's model_final")
    parser.add_argument('out', help='the file to write, e.g. checkpoint/devanagari_builtin')
    args = parser.parse_args(argv)
    checkpoints.load_model(args.source, torch.device('cpu'))  # refused here if it does not load
    ckpt = checkpoints.read_checkpoint(args.source)
    if ckpt.get('batch'):
        raise utils.InputError(f"{args.source}: stopped within an epoch; ship a finished run's model_final.")
    utils.atomic_save({key: ckpt[key] for key in KEPT if key in ckpt}, args.out)
    print(f"wrote {args.out}: {Path(args.out).stat().st_size / 1e6:.2f} MB (from {Path(args.source).stat().st_size / 1e6:.2f} MB)")


if __name__ == '__main__':
    utils.run(main)
