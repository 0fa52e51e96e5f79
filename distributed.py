"""Data-parallel training under torchrun:  torchrun --standalone --nproc_per_node=K train.py [key=value ...]
Every process holds the whole dataset and takes its shard (every K-th image) of each epoch's
shuffled order, so batch_size is per process and a step sees K * batch_size images;
DistributedDataParallel averages the gradients, so the processes stay identical. Only rank 0
prints and writes files. Without torchrun every function here is the single-process identity."""
import os
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import utils

# how long a collective waits for the other processes before it fails (a process that died or hangs):
# then rank 0 saves model_interrupted (training.train) instead of waiting forever
COLLECTIVE_TIMEOUT = timedelta(minutes=10)


def world():
    return dist.get_world_size() if dist.is_initialized() else 1


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def start(device_name):
    """This process's device; under torchrun the process group is started first: NCCL with one GPU
    per process on CUDA, gloo on the CPU with the cores shared out."""
    device = utils.pick_device(device_name)
    if int(os.environ.get('WORLD_SIZE', 1)) == 1:
        return device
    if device.type == 'cuda':
        device = torch.device('cuda', int(os.environ['LOCAL_RANK']))
        torch.cuda.set_device(device)
        dist.init_process_group('nccl', device_id=device, timeout=COLLECTIVE_TIMEOUT)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get('LOCAL_WORLD_SIZE', 1))))
        dist.init_process_group('gloo', timeout=COLLECTIVE_TIMEOUT)
    return device


def stop():
    if dist.is_initialized():
        dist.destroy_process_group()


class Objective(torch.nn.Module):
    """model.objective as a forward pass, which DistributedDataParallel needs to average gradients."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, y, kl_weight=1.0, free_bits=0.0, glimpse=None):
        return self.model.objective(x, y, kl_weight, free_bits, glimpse)


def objective(model, device):
    """The loss function to train through: model.objective, wrapped in DDP under torchrun."""
    return parallel(Objective(model), device)


def parallel(objective, device):
    """objective (an Objective, compiled or not), wrapped in DDP under torchrun."""
    if not dist.is_initialized():
        return objective
    return DistributedDataParallel(objective, device_ids=[device.index] if device.type == 'cuda' else None)


def shard(order):
    """This process's part of an epoch's order: every world()-th index, the same count on every
    rank (up to world() - 1 images of the epoch's shuffle are left out)."""
    used = len(order) // world() * world()
    return order[rank():used:world()]


def same_everywhere(tensor):
    """tensor, replaced by rank 0's (the epoch's order, so the shards partition one shuffle)."""
    if dist.is_initialized():
        dist.broadcast(tensor, 0)
    return tensor


def rank0s(value, device):
    """The int value as rank 0 has it, on every rank (what each decides from its own clock)."""
    return int(same_everywhere(torch.tensor([int(value)], device=device)).item())


def mean(tensor):
    """The mean of tensor over the processes (the loss each logs)."""
    if dist.is_initialized():
        dist.all_reduce(tensor)
        tensor = tensor / world()
    return tensor


def agree(flag, device, now=True):
    """Whether to stop: in one process, flag itself; under torchrun, True on every rank when any
    rank's flag is set, decided only at steps every rank reaches together (now)."""
    if not dist.is_initialized():
        return bool(flag)
    if not now:
        return False
    vote = torch.tensor([float(bool(flag))], device=device)
    dist.all_reduce(vote, op=dist.ReduceOp.MAX)
    return bool(vote.item())


def same_data(data, device):
    """Refuses, in one line on every rank, data that some process decoded differently from rank 0
    (its fingerprint or its number of training images): the shards of one shuffle would not partition it."""
    if not dist.is_initialized():
        return
    mine = torch.tensor([int(data.fingerprint[:15] or '0', 16), len(data.train_x)], dtype=torch.int64, device=device)
    found = [torch.zeros_like(mine) for _ in range(world())]
    dist.all_gather(found, mine)
    differ = [r for r, t in enumerate(found) if not torch.equal(t, found[0])]
    if differ:
        raise utils.InputError(f"under torchrun, process {differ[0]} decoded other data than process 0 "
                               f"({int(found[differ[0]][1])} training images against {int(found[0][1])}, or other "
                               f"images): give every process the same data_path and data.")


@contextmanager
def peers_lost(stop):
    """Within the block, a collective that fails under torchrun (another process died or hangs past
    COLLECTIVE_TIMEOUT) calls stop(why), which saves this process's state (whole as of its last step:
    a step's collectives come before its update) and stops."""
    try:
        yield
    except (dist.DistError, RuntimeError) as e:
        if not dist.is_initialized() or isinstance(e, torch.OutOfMemoryError):
            raise
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ''
        stop(f"another process was lost ({type(e).__name__}: {first})")
