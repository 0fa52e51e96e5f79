"""train.py under torchrun with a fault in one process, for tests/test_distributed.py:
    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/torchrun_faults.py FAULT key=value ...
FAULT: 'die' (process 1 is killed, SIGKILL, in its third step), 'other_data' (process 1 decodes one
training image less) or 'none'."""
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import dataloader  # noqa: E402
import train  # noqa: E402
import training  # noqa: E402
import utils  # noqa: E402

fault, rank = sys.argv[1], int(os.environ['RANK'])
if fault == 'die' and rank == 1:
    step, steps = training.train_step, [0]

    def dying(*args, **kwargs):
        steps[0] += 1
        if steps[0] == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return step(*args, **kwargs)
    training.train_step = dying
if fault == 'other_data' and rank == 1:
    load = dataloader.load_data

    def one_less(*args, **kwargs):
        data = load(*args, **kwargs)
        data.train_x, data.train_y = data.train_x[1:], data.train_y[1:]
        return data
    train.load_data = one_less
utils.run(lambda: train.main(sys.argv[2:]))
