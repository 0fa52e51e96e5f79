"""A run's identity and its folders: the id every checkpoint keeps (and a resume continues), the lock
that keeps a second train.py out of a checkpoint folder in use, and an earlier run's files moved
aside into runs/<its id>/ before a new run writes its own, so nothing of it is lost."""
import fcntl
import itertools
import os
import re
import secrets
import time
from contextlib import contextmanager
from pathlib import Path

import checkpoints
from utils import InputError, plural

LOCK = '.lock'  # in checkpoint_dir, flock-ed for the whole run
KEPT = 'runs'  # checkpoint_dir/runs/<id>/ and image_dir/runs/<id>/: earlier runs' files
CHECKPOINT_FILES = re.compile(r'model_epoch_\d+|model_final|model_interrupted|metrics\.jsonl')
IMAGE_FILES = re.compile(r'Training_Data\.png|Loss_Curve\.png|draw_epoch_\d+\.gif')
# what utils.write_atomic leaves of a checkpoint when killed mid-write: .{name}.{mkstemp's 8 characters}.tmp
TEMPORARY = re.compile(r'\.(model_epoch_\d+|model_final|model_interrupted)\.[a-z0-9_]{8}\.tmp')
ID = re.compile(r'[\w-]{1,64}')  # what a run id may be: a folder's name, never a path


def new_id(seconds=None):
    """A short unique run id: its start (or seconds') UTC time and 4 hex digits, e.g. 20260105-142233-a3f9."""
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime(seconds))}-{secrets.token_hex(2)}"


def id_of(ckpt):
    """The run id a checkpoint holds, where it holds a well-formed one (files from before run ids: None)."""
    found = ckpt.get('run') if ckpt else None
    return found if isinstance(found, str) and ID.fullmatch(found) else None


@contextmanager
def folder_lock(folder):
    """Holds an exclusive flock on folder/.lock within the block (the kernel drops it if the process
    dies: never stale); a folder locked by another process is an InputError at once."""
    handle = None
    try:
        handle = open(Path(folder) / LOCK, 'a')
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise InputError(f"checkpoint_dir {folder}: another train.py is running there (it holds {LOCK}); wait "
                         f"for it to end, or give this run another folder with checkpoint_dir=...") from None
    except OSError as e:
        print(f"warning: checkpoint_dir {folder} cannot be locked ({e.strerror or e}); make sure no other "
              f"train.py writes there.")
    try:
        yield
    finally:
        if handle:
            handle.close()


def remove_temporary(folder, log):
    """Removes the temporary files of checkpoints that a killed run left in folder; one line if any."""
    removed = sorted(p.name for p in Path(folder).iterdir() if TEMPORARY.fullmatch(p.name) and p.is_file())
    for name in removed:
        (Path(folder) / name).unlink()
    if removed:
        log(f"Removed {plural(len(removed), 'temporary file')} that a killed run left in {folder}: "
            f"{', '.join(removed)}.")


def outputs(folder, pattern, key):
    """train.py's files directly in folder (runs/ and every other name left alone), newest first; a
    folder under such a name is refused, as the run's write there would fail at its end."""
    found = [p for p in Path(folder).iterdir() if pattern.fullmatch(p.name)]
    folders = [p for p in found if p.is_dir() and not p.is_symlink()]
    if folders:
        raise InputError(f"{folders[0]} is a folder where train.py writes a file; move it away, or give "
                         f"another {key}=...")
    return sorted(found, key=lambda p: p.lstat().st_mtime, reverse=True)


def run_of(files):
    """The id of the run whose files these are: the newest readable checkpoint's, or for files from
    before run ids (or none readable), one from the newest file's time."""
    for path in files:
        if path.name != 'metrics.jsonl':
            try:
                return id_of(checkpoints.read_checkpoint(path)) or new_id(files[0].lstat().st_mtime)
            except InputError:  # damaged or foreign: the next
                continue
    return new_id(files[0].lstat().st_mtime)


def keep_earlier(checkpoint_dir, image_dir, run, resumed, log):
    """Before run writes in checkpoint_dir: the files of another run there (a resume of the run there
    continues in place), and train.py's images in image_dir, moved into runs/<its id>/ beside them."""
    saved = outputs(checkpoint_dir, CHECKPOINT_FILES, 'checkpoint_dir')
    images = outputs(image_dir, IMAGE_FILES, 'image_dir')
    if saved and resumed and Path(resumed).resolve().parent == Path(checkpoint_dir).resolve():
        return
    earlier = run_of(saved) if saved else None
    if (saved and earlier == run) or not (saved or images):
        return
    name = earlier or run_of(images)
    for n in itertools.count(1):  # never into a folder already there: what runs/ holds is never touched
        kept = [Path(folder) / KEPT / (name if n == 1 else f'{name}-{n}') for folder in (checkpoint_dir, image_dir)]
        if not any(os.path.lexists(k) for k in kept):
            break
    try:
        for files, into in ((saved, kept[0]), (images, kept[1])):
            if files:
                into.mkdir(parents=True, exist_ok=True)
            for path in files:
                os.rename(path, into / path.name)
    except OSError as e:
        raise InputError(f"could not move the earlier run's files into {e.filename2 or e.filename} "
                         f"({e.strerror or e}); move them yourself, or give another checkpoint_dir=...") from None
    moved = [f"{plural(len(files), 'file')} to {into}/" for files, into in ((saved, kept[0]), (images, kept[1])) if files]
    log(f"Kept {f'the earlier run {earlier}' if earlier else 'the images of an earlier run'}: moved "
        f"{' and '.join(moved)}.")
