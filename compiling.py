"""The compiled training step (train.py's params key compile = auto | glimpse | step | false).

torch.compile (inductor, dynamic=False) turns the training objective's forward and backward into
graphs of fused kernels: on a CPU it removes most of the tens of thousands of small operations an
eager step dispatches; on a GPU its reduce-overhead mode replays the whole step as a CUDA graph. It
compiles one of two regions. The glimpse (model.training_glimpse): DRAW repeats one glimpse T times,
so compiling it once serves all of them, in tens of seconds whatever T (PyTorch's regional compilation;
the loop around it stays eager). The step: the whole objective, all T glimpses unrolled into one graph,
somewhat faster per step where the loop's glue matters, but minutes to compile the first time and
again for every new T. Once inductor's caches hold a graph, compiling it again takes seconds. auto
picks whichever of eager, the glimpse and the step ends the planned steps soonest. Where compiling
cannot work (no C++ compiler, no Triton, an inductor error) training goes on eager, with one line
saying why.
"""
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn

import config
import utils

# What compile=auto assumes before this machine has compiled a region once: a step compiled so saves at
# least SAVED_SHARE of an eager step's time (about the least bench.py has measured on this project's CPUs; on
# CUDA, guesses: unmeasured), and a first (cold) compile costs about COLD_SECONDS + COLD_SECONDS_PER_GLIMPSE
# * T of forward and backward (the glimpse's graph is one glimpse long whatever T). A start that finds
# the graph in inductor's caches costs WARM_SHARE of a cold one. Later runs use the compile time they
# recorded. The measurements behind these: docs/speed.md (the compiled step).
REGIONS = ('glimpse', 'step')
SAVED_SHARE = {'cpu': {'glimpse': 0.25, 'step': 0.3}, 'cuda': {'glimpse': 0.3, 'step': 0.5}}
COLD_SECONDS = {'glimpse': 40.0, 'step': 40.0}
COLD_SECONDS_PER_GLIMPSE = {'glimpse': 0.0, 'step': 7.0}
WARM_SHARE = 0.1
WHAT = {'glimpse': 'the glimpse', 'step': 'the whole step'}


def unavailable(device):
    """Why torch.compile cannot compile for device here, or None."""
    if not torch._dynamo.is_dynamo_supported():
        return 'torch.compile does not support this Python or platform'
    if device.type == 'cpu':
        from torch._inductor.cpp_builder import get_cpp_compiler
        try:
            get_cpp_compiler()
        except Exception:
            return "no C++ compiler found (inductor needs g++ or clang++; install one or set CXX)"
    elif device.type == 'cuda':
        from torch.utils._triton import has_triton
        if not has_triton():
            return 'Triton is not installed (pip install triton)'
    else:
        return f'inductor does not compile for {device.type} here'
    return None


def cache_key(p, num_classes, device, region):
    """What identifies a compiled graph in the record of compile times: the class count only where the
    model is conditional (an unconditional model's graph is the same on any data of its size), T only
    for the whole step (the glimpse's graph is the same for any T)."""
    keys = [f'{k}={p[k]}' for k in (*config.MODEL_KEYS, 'batch_size', 'precision') if k != 'T' or region == 'step']
    classes = [f'classes={num_classes}'] if p['conditional'] else []
    return ' '.join([torch.__version__, device.type, region, *classes, *keys])


class Record:
    """What the next compile of each graph should cost on this machine, in cache_dir: the seconds the
    last one took where it found the graph in inductor's caches (TORCHINDUCTOR_CACHE_DIR, by default in
    the temporary folder), WARM_SHARE of them where it was a cold compile that filled those caches."""

    def __init__(self, cache_dir):
        self.path = Path(cache_dir).expanduser() / 'compile_seconds.json'
        try:
            self.seconds = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.seconds = None
        self.seconds = self.seconds if isinstance(self.seconds, dict) else {}  # a damaged file counts as none

    def get(self, key):
        """The recorded seconds, or None where there are none or inductor's caches have been cleared (their
        folder gone or empty: inductor makes it again, empty, when it looks for a C++ compiler)."""
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
        found, folder = self.seconds.get(key), Path(os.environ.get('TORCHINDUCTOR_CACHE_DIR') or default_cache_dir())
        cached = folder.is_dir() and any(folder.iterdir())
        return found if isinstance(found, (int, float)) and cached else None

    def put(self, key, seconds, cached, log):
        """Record a compile of seconds, which found its graph in inductor's caches (cached) or not."""
        expected = seconds if cached else seconds * WARM_SHARE
        self.seconds[key] = round(expected, 1)
        try:
            utils.write_atomic(self.path, json.dumps(self.seconds, indent=1).encode())
        except utils.WriteError as e:
            log(f"warning: {e} The compile time is not recorded.")


def regions(setting):
    """The regions compile=setting may compile: both for auto (it chooses), the one it names (true: the
    glimpse), none for false."""
    return {'auto': REGIONS, 'false': (), 'true': ('glimpse',)}.get(setting, (setting,))


def decide(setting, device, steps, step_seconds, T, recorded):
    """(the region to compile, or None for eager; why) for compile=setting on device: auto picks what
    ends steps eager steps of step_seconds each soonest, each region's compile costing its recorded
    seconds ({region: seconds or None}) or the cold estimate."""
    if setting == 'false':
        return None, 'compile=false'
    reason = unavailable(device)
    if reason:
        return None, f'compile={setting}, but {reason}'
    if setting != 'auto':
        return regions(setting)[0], f'compile={setting}'
    eager, shares = steps * step_seconds, SAVED_SHARE.get(device.type, {})
    ends, said = {None: eager}, []
    for region in REGIONS:
        cost = recorded.get(region)
        basis = 'as recorded here' if cost is not None else 'a first compile'
        cost = cost if cost is not None else COLD_SECONDS[region] + COLD_SECONDS_PER_GLIMPSE[region] * T
        ends[region] = cost + eager * (1 - shares.get(region, 0))
        said.append(f"{WHAT[region]} compiled about {ends[region]:,.0f} s ({cost:.0f} s to compile, {basis})")
    best = min(ends, key=ends.get)
    return best, (f"compile=auto, {steps:,} steps of {step_seconds:.2f} s: eager about {eager:,.0f} s, "
                  f"{', '.join(said)}")


def eager_step_seconds(objective, x, y, precision, repeats=2):
    """The time of one eager forward and backward pass of objective on (x, y), median of repeats
    after one untimed: a measurement that leaves the random generators and the gradients as they were."""
    times = []
    with untouched(objective, x.device), utils.autocast(x.device, precision):
        for _ in range(repeats + 1):
            start = time.perf_counter()
            objective(x, y)[0].backward()
            if x.device.type == 'cuda':
                torch.cuda.synchronize(x.device)
            times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2]


@contextmanager
def untouched(objective, device):
    """A block whose passes through objective leave the random generators and the gradients as they were."""
    try:
        with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []):
            yield
    finally:
        for w in objective.parameters():
            w.grad = None


def cache_hits():
    """How many graphs this process has found in inductor's (AOTAutograd's) cache so far."""
    from torch._dynamo.utils import counters
    return counters['aot_autograd']['autograd_cache_hit']


class Switch(nn.Module):
    """objective with region ('glimpse' or 'step', see the module's docstring) compiled for batches of
    batch_size (dynamic=False: one graph, no recompiles); other batches (an epoch's last, smaller one)
    run eager on the same weights."""

    def __init__(self, objective, batch_size, device, region):
        super().__init__()
        self.eager, self.batch_size = objective, batch_size
        self.cuda_graphs = device.type == 'cuda' and region == 'step'  # one graph replayed per step
        torch._inductor.config.fallback_random = True  # the noise eager draws, from the same generator
        if region == 'glimpse':
            glimpse = torch.compile(objective.model.training_glimpse, dynamic=False)
            self.compiled = lambda x, y, kl_weight, free_bits: objective(x, y, kl_weight, free_bits, glimpse)
        else:
            self.compiled = torch.compile(objective, dynamic=False, mode='reduce-overhead' if self.cuda_graphs else None)

    def forward(self, x, y, kl_weight=1.0, free_bits=0.0):
        if len(x) != self.batch_size:
            return self.eager(x, y, kl_weight, free_bits)
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's outputs may be overwritten
        trained, loss = self.compiled(x, y, torch.as_tensor(kl_weight, device=x.device), free_bits)
        return trained, loss.clone()  # kept past the next step, which reuses a CUDA graph's outputs


def compile_objective(objective, x, y, free_bits, precision, log, region='glimpse', record=None, key=None):
    """A Switch around objective with region compiled now by one forward and backward pass on the
    batch (x, y) (random generators and gradients left as they were) and the time put in record
    under key (a Record, or None); or objective itself, with one line saying why, where compiling fails."""
    switch = Switch(objective, len(x), x.device, region)
    hits, start = cache_hits(), time.perf_counter()
    try:
        with untouched(objective, x.device), utils.autocast(x.device, precision):
            switch(x, y, 1.0, free_bits)[0].backward()
    except Exception as e:  # a compiler missing or failing: whatever it raised, eager still trains
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ''
        log(f"compile: failed ({type(e).__name__}: {first}); training eager.")
        return objective
    seconds = time.perf_counter() - start
    if record:
        record.put(key, seconds, cache_hits() > hits, log)
    log(f"compile: {WHAT[region]} compiled in {seconds:.0f} s.")
    return switch
