"""Helpers shared by the scripts: errors and signals, devices and precision, random state, files written atomically."""
import errno
import io
import os
import random
import re
import signal
import stat
import sys
import tempfile
from contextlib import suppress
from pathlib import Path

import numpy as np
import torch


class InputError(Exception):
    """A problem with the user's input: its message says what and what to do, without a traceback."""


class Stopped(Exception):
    """Training stopped early (a signal, or non-finite losses), its state saved; exit_code for the shell."""

    def __init__(self, message, exit_code=1):
        super().__init__(message)
        self.exit_code = exit_code


def run(main):
    """Run a script's main(), turning InputError (exit status 2), Stopped and a Ctrl-C outside the training
    loop (decoding, compiling; the loop saves its state first) into one clear line. Ctrl-C is heard even
    where the shell started the script ignoring it (a background job), as the training loop's handler
    hears it there: no moment of a run is deaf to it. On an x86 CPU, subnormal floats (below 1.2e-38)
    are flushed to zero first, before the threads that compute start (they inherit the setting): the
    filterbanks' softmax (Eqs. 25-26) underflows into that range for the pixels far from a filter, and a
    CPU handles each such operand in slow microcode (docs/speed.md)."""
    torch.set_flush_denormal(True)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        main()
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Stopped as e:
        print(f"stopped: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("stopped: SIGINT (Ctrl-C); every file already written is kept.", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)


class StopSignals:
    """Within the block, SIGINT (Ctrl-C) and SIGTERM only set .received, so the loop can save its
    state at the next step boundary; a second Ctrl-C stops at once."""

    def __enter__(self):
        self.received = None
        self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def handle(self, signum, frame):
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def pick_device(name, setting='device={}'):
    """'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:N' or 'mps', checked against this machine.
    Errors spell the choice as setting does: train.py's 'device={}', the other scripts' '-device {}'."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ('cpu', 'cuda', 'mps'):
        raise InputError(f"{setting.format(name)} is not a device; use {setting.format('auto')}, cpu, cuda or cuda:N.")
    if (device.type == 'cuda' and (device.index or 0) >= torch.cuda.device_count()) or \
            (device.type == 'mps' and not torch.backends.mps.is_available()):
        raise InputError(f"{setting.format(name)} is not available here ({torch.cuda.device_count()} CUDA "
                         f"devices); use {setting.format('auto')} or {setting.format('cpu')}.")
    return device


def native_bf16(device, cpuinfo='/proc/cpuinfo'):
    """Why bfloat16 runs at full speed on device, or None where it is emulated (and slower than fp32):
    CUDA GPUs with bf16 units (Ampere on), CPUs with AVX512-BF16 or AMX (the flags in Linux's cpuinfo)."""
    if device.type == 'cuda':
        return 'a CUDA GPU with bf16 units' if torch.cuda.is_bf16_supported(including_emulation=False) else None
    if device.type == 'cpu':
        try:
            flags = set(re.findall(r'^flags\s*:(.*)$', Path(cpuinfo).read_text(), re.M)[0].split())
        except (OSError, IndexError):
            return None
        found = sorted({'avx512_bf16', 'amx_bf16'} & flags)
        return f"a CPU with {' and '.join(f.upper() for f in found)}" if found else None
    return None


def resolve_precision(name, device):
    """(the precision to train in, why): 'auto' is bf16 where it is native to device, fp32 elsewhere;
    an explicit bf16 where it is not native is refused (it runs up to 15x slower than fp32 there)."""
    native = native_bf16(device)
    if name == 'fp32':
        return 'fp32', 'precision=fp32'
    if native:
        return 'bf16', f"precision={name}, {native}"
    if name == 'bf16':
        raise InputError(f"precision=bf16: {device} has no native bfloat16 (a CPU with AVX512-BF16 or AMX, or a "
                         f"GPU with bf16 units), where it runs many times slower than fp32; use precision=auto "
                         f"or fp32.")
    return 'fp32', f"precision=auto, no native bf16 on {device}"


def autocast(device, precision):
    """The autocast a training step runs under: bf16 products where precision is bf16."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == 'bf16')


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state():
    """Every random generator's state, as tensors and plain values (loadable with weights_only)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {'torch': torch.get_rng_state(), 'cuda': torch.cuda.get_rng_state_all(),
            'numpy': [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            'python': random.getstate()}


def set_rng_state(state):
    torch.set_rng_state(state['torch'])
    if state['cuda'] and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state['cuda'])
    name, keys, pos, has_gauss, gauss = state['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state['python']
    random.setstate((version, tuple(internal), gauss_next))


# -- files, written atomically: a crash mid-write leaves any previous file whole ---------------
class WriteError(Stopped):
    """A file could not be written (no space, no permission, read-only, name too long...): the earlier
    file under its name is unchanged."""

    def __init__(self, path, error):
        cause = error.strerror or str(error)
        hint = '; free some space and run again' if error.errno in (errno.ENOSPC, errno.EDQUOT) else ''
        super().__init__(f"could not write {path}: {cause}{hint}. Any earlier {Path(path).name} there is unchanged.")


def write_atomic(path, data):
    """bytes -> path through a temporary file beside it, renamed onto path only once whole on disk, the
    folder's new entry then synced too; a file replaced keeps its permissions. An OSError becomes a
    WriteError naming path, with the temporary file removed."""
    path, tmp = Path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name[:64]}.', suffix='.tmp')
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask  # mkstemp's 0600 would hide the file from other users
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as e:
        raise WriteError(path, e) from None
    finally:
        if tmp and os.path.exists(tmp):
            with suppress(OSError):  # never hides the error that got here
                os.remove(tmp)
    with suppress(OSError):  # the rename on disk too; some filesystems cannot sync a folder
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def atomic_save(obj, path):
    """torch.save, serialised in memory first: torch's own file writer reports a full disk as an
    internal error, a plain write as the OSError it is."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getbuffer())


def save_cache(obj, path, log=print):
    """atomic_save for a cache: a file that cannot be written is a warning, and the work is redone next time."""
    try:
        atomic_save(obj, path)
    except WriteError as e:
        log(f"warning: {e} Not cached: it is redone next time.")


def writable_dir(folder, name):
    """folder, created if missing and proven writable now (a file made and removed in it), or an
    InputError naming the setting name and the reason: found before any work, not at the first save."""
    folder = Path(folder).expanduser()
    try:
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, 'it is a file, not a folder')
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise InputError(f"{name} {folder}: cannot write there ({e.strerror or e}); choose another folder.") from None
    return folder


def plural(n, noun):
    return f"{n} {noun}{'' if n == 1 else 'es' if noun.endswith('s') else 's'}"


def natural_key(name):
    """Sort 'character_2_kha' before 'character_10_yna'."""
    return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', name)]
