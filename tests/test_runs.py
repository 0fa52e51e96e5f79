"""Runs in one folder, nothing of a user's lost: a new run keeps the earlier run's files under runs/<id>/,
a resume goes on in place, a second train.py is locked out, a resume checks the data, batch and
processes it goes on with and writes where its file is; writes keep a file's mode and sync the folder;
a killed run's temporary files are removed at the next start."""
import fcntl
import os
import re
import shutil
import stat

import pytest
import torch

import distributed
import runs
import train
import utils
from conftest import ROOT, write_tiny_csv
from test_reliability import TINY, ctrl_c_at_call, digest, load, train_in


@pytest.fixture
def work(tmp_path):
    return write_tiny_csv(tmp_path)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A tiny run of one epoch (model_epoch_1, model_final) that the resumes below only read."""
    work = write_tiny_csv(tmp_path_factory.mktemp('trained'))
    return work, train_in(work, 'epoch_num=1', 'save_epoch=1') / 'model_epoch_1'


def files(folder):
    """{name: digest} of the files in folder, its lock left out."""
    return {p.name: digest(p) for p in folder.iterdir() if p.is_file() and p.name != runs.LOCK}


@pytest.mark.slow
def test_a_new_run_keeps_the_earlier_runs_files_under_runs_its_id(work, capsys):
    checkpoints, images = train_in(work, 'epoch_num=2', 'save_epoch=1'), work / 'run' / 'images'
    first, first_images = files(checkpoints), files(images)
    earlier = load(checkpoints / 'model_final')['run']
    assert re.fullmatch(r'\d{8}-\d{6}-[0-9a-f]{4}', earlier)
    assert all(load(checkpoints / name)['run'] == earlier for name in ('model_epoch_1', 'model_epoch_2'))
    (checkpoints / 'notes.txt').write_text('mine')  # not train.py's: left where it is
    capsys.readouterr()
    train_in(work, 'epoch_num=1')
    assert f"Kept the earlier run {earlier}: moved 4 files to {checkpoints / 'runs' / earlier}/ and 4 files to " \
           f"{images / 'runs' / earlier}/." in capsys.readouterr().out.splitlines()
    assert files(checkpoints / 'runs' / earlier) == first and files(images / 'runs' / earlier) == first_images
    latest = load(checkpoints / 'model_final')
    assert latest['run'] != earlier and latest['epoch'] == 1
    assert sorted(os.listdir(checkpoints)) == ['.lock', 'metrics.jsonl', 'model_final', 'notes.txt', 'runs']
    train_in(work, 'epoch_num=1')  # a third: the second run kept beside the first, which stays untouched
    assert files(checkpoints / 'runs' / earlier) == first and files(checkpoints / 'runs' / latest['run'])
    assert sorted(os.listdir(images / 'runs')) == sorted([earlier, latest['run']])


@pytest.mark.slow
def test_a_resume_goes_on_in_place_as_its_run(work, monkeypatch):
    with monkeypatch.context() as m:
        ctrl_c_at_call(m, 9)  # epoch 2's 3rd step
        with pytest.raises(utils.Stopped):
            train_in(work, 'epoch_num=2', 'save_epoch=1')
    checkpoints = work / 'run' / 'checkpoint'
    run, before = load(checkpoints / 'model_epoch_1')['run'], digest(checkpoints / 'model_epoch_1')
    assert load(checkpoints / 'model_interrupted')['run'] == run
    train_in(work, 'epoch_num=2', f'resume={checkpoints / "model_interrupted"}')
    assert not (checkpoints / 'runs').exists() and not (work / 'run' / 'images' / 'runs').exists()
    assert digest(checkpoints / 'model_epoch_1') == before
    assert all(load(checkpoints / name)['run'] == run for name in ('model_epoch_2', 'model_final', 'model_interrupted'))
    shutil.copy(checkpoints / 'model_epoch_2', work / 'copied')  # the run there, resumed from a copy elsewhere
    train_in(work, 'epoch_num=3', f'resume={work / "copied"}')
    assert not (checkpoints / 'runs').exists() and load(checkpoints / 'model_final')['epoch'] == 3


@pytest.mark.slow
def test_a_file_from_before_run_ids_resumes_in_place(work):
    checkpoints = work / 'run' / 'checkpoint'
    checkpoints.mkdir(parents=True)
    shutil.copy(ROOT / 'tests' / 'fixtures' / 'before_run_state_epoch_1', checkpoints / 'model_epoch_1')
    train_in(work, 'epoch_num=2', f'resume={checkpoints / "model_epoch_1"}')
    assert not (checkpoints / 'runs').exists() and re.fullmatch(r'\d{8}-\d{6}-[0-9a-f]{4}',
                                                                load(checkpoints / 'model_final')['run'])


def test_a_second_train_py_in_a_folder_in_use_is_refused(work):
    folder = work / 'run' / 'checkpoint'
    folder.mkdir(parents=True)
    with open(folder / runs.LOCK, 'a') as held:  # as a running train.py holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(utils.InputError) as refused:
            train_in(work, 'epoch_num=1')
    assert str(refused.value) == (f"checkpoint_dir {folder}: another train.py is running there (it holds .lock); "
                                  f"wait for it to end, or give this run another folder with checkpoint_dir=...")
    assert os.listdir(folder) == ['.lock']


@pytest.mark.slow
def test_a_resume_on_other_images_of_the_same_classes_is_refused(trained, tmp_path):
    work, ckpt = trained
    lines = (work / 'data' / 'data.csv').read_text().splitlines()
    lines[1] = '255' + lines[1][1:]  # one pixel of one image
    (tmp_path / 'other.csv').write_text('\n'.join(lines))
    with pytest.raises(utils.InputError, match=rf"{ckpt}: learned csv {work / 'data' / 'data.csv'} \(fingerprint "
                                               rf"\w+\), but the data loaded now, csv {tmp_path / 'other.csv'}, "
                                               rf"differs .*; resume on the data it learned \(data_path="):
        train_in(work, f'resume={ckpt}', 'epoch_num=2', f'data_path={tmp_path / "other.csv"}', out='other')
    assert not (work / 'other' / 'checkpoint' / 'model_final').exists()


@pytest.mark.slow
def test_a_resume_on_another_list_of_classes_is_refused(trained):
    work, ckpt = trained
    with pytest.raises(utils.InputError, match=rf"{ckpt}: learned 2 classes, but csv .* now gives 1 \(-digit_0\)"):
        train_in(work, f'resume={ckpt}', 'epoch_num=2', 'classes=ka', out='other')


@pytest.mark.slow
def test_a_resume_in_another_batch_size_or_number_of_processes_is_refused(trained, monkeypatch):
    work, ckpt = trained
    assert load(ckpt)['world'] == 1
    with pytest.raises(utils.InputError, match=rf"{ckpt}: a resumed run keeps its batch size, or it would go on at "
                                               rf"the wrong image; remove batch_size=4 \(checkpoint: 8\)"):
        train_in(work, f'resume={ckpt}', 'epoch_num=2', 'batch_size=4', out='other')
    monkeypatch.setattr(distributed, 'world', lambda: 2)
    with pytest.raises(utils.InputError, match=rf"{ckpt}: trained in 1 process, resumed in 2: .*; resume it without "
                                               rf"torchrun"):
        train_in(work, f'resume={ckpt}', 'epoch_num=2', out='other')


@pytest.mark.slow
def test_a_resume_writes_by_its_file_not_where_its_checkpoint_says(work, monkeypatch):
    """A run folder moved: the resume goes on in it, with the data, images and caches of the defaults
    (or the command line), not in the folders its params recorded."""
    monkeypatch.chdir(work)
    train.main([*TINY, 'epoch_num=1', 'save_epoch=1', 'checkpoint_dir=first', 'image_dir=first_images',
                'cache_dir=first_cache'])
    (work / 'first').rename(work / 'moved')
    train.main([*TINY, 'epoch_num=2', 'resume=moved/model_epoch_1'])
    assert load(work / 'moved' / 'model_final')['epoch'] == 2 and not (work / 'first').exists()
    assert (work / 'images' / 'draw_epoch_2.gif').is_file() and (work / 'data' / '.cache').is_dir()
    assert not (work / 'first_images' / 'draw_epoch_2.gif').exists()


def test_a_write_keeps_the_files_mode_and_syncs_its_folder(tmp_path, monkeypatch):
    path, umask = tmp_path / 'model_final', os.umask(0)
    os.umask(umask)
    utils.write_atomic(path, b'one')
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # a new file: the umask's
    path.chmod(0o640)
    synced, fsync = [], os.fsync

    def recorded(fd):
        synced.append('folder' if stat.S_ISDIR(os.fstat(fd).st_mode) else 'file')
        fsync(fd)
    monkeypatch.setattr(utils.os, 'fsync', recorded)
    utils.write_atomic(path, b'two')
    assert path.read_bytes() == b'two' and stat.S_IMODE(path.stat().st_mode) == 0o640
    assert synced == ['file', 'folder']  # the bytes, then the name pointing at them


def test_a_killed_runs_temporary_files_are_removed_at_the_next_start(work, capsys):
    folder = work / 'run' / 'checkpoint'
    folder.mkdir(parents=True)
    left = ['.model_epoch_10.x_9y8z7w.tmp', '.model_final.a1b2c3d4.tmp']
    others = ['.eval.json.a1b2c3d4.tmp', '.model_final.a1b2c3d4.tmp.bak', 'model_final.tmp']  # not train.py's
    for name in left + others:
        (folder / name).write_bytes(b'half')
    for removed in (True, False):  # each start stops at the data, after the folder's chores
        with pytest.raises(utils.InputError, match='no such file'):
            train_in(work, 'epoch_num=1', f'data_path={work / "nowhere.csv"}')
        said = f"Removed 2 temporary files that a killed run left in {folder}: {', '.join(left)}."
        assert (said in capsys.readouterr().out.splitlines()) == removed
        assert sorted(os.listdir(folder)) == sorted(['.lock', *others])


def test_files_of_earlier_code_and_hostile_files_are_kept_and_nothing_else_moves(tmp_path, capsys):
    """A checkpoint without a run id, one whose id is a path, a damaged one: moved under an id from the
    newest file's time; other files and runs/ untouched; a folder under a checkpoint's name refused."""
    checkpoints, images = tmp_path / 'checkpoint', tmp_path / 'images'
    (checkpoints / 'runs' / 'old').mkdir(parents=True)
    images.mkdir()
    torch.save({'model': {}, 'params': {}}, checkpoints / 'model_epoch_10')
    torch.save({'model': {}, 'params': {}, 'run': '../../escape'}, checkpoints / 'model_final')
    (checkpoints / 'model_interrupted').write_bytes(b'damaged')
    for path in (checkpoints / 'notes.txt', checkpoints / 'runs' / 'old' / 'model_final', images / 'Generated_Image.png'):
        path.write_text('mine')
    (images / 'Loss_Curve.png').write_text('curve')
    os.utime(checkpoints / 'model_final', (1704164645, 1704164645))  # 2024-01-02 03:04:05 UTC, the newest
    for path in (checkpoints / 'model_epoch_10', checkpoints / 'model_interrupted', images / 'Loss_Curve.png'):
        os.utime(path, (1704000000, 1704000000))
    runs.keep_earlier(checkpoints, images, 'now', '', print)
    [kept] = [p for p in (checkpoints / 'runs').iterdir() if p.name != 'old']
    assert re.fullmatch(r'20240102-030405-[0-9a-f]{4}', kept.name)
    assert sorted(os.listdir(kept)) == ['model_epoch_10', 'model_final', 'model_interrupted']
    assert os.listdir(images / 'runs' / kept.name) == ['Loss_Curve.png']
    assert sorted(os.listdir(checkpoints)) == ['notes.txt', 'runs']
    assert sorted(os.listdir(images)) == ['Generated_Image.png', 'runs']
    assert (checkpoints / 'runs' / 'old' / 'model_final').read_text() == 'mine'
    (checkpoints / 'model_epoch_7').mkdir()
    with pytest.raises(utils.InputError, match=f"{checkpoints / 'model_epoch_7'} is a folder where train.py writes"):
        runs.keep_earlier(checkpoints, images, 'now', '', print)
