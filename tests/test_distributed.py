"""torchrun data-parallel training on the CPU (gloo), 2 processes, end to end."""
import subprocess
import sys

import pytest
import torch

import distributed
from conftest import ROOT, TINY, run, write_tiny_csv


@pytest.mark.slow
def test_torchrun_trains_on_shards_and_rank_0_alone_writes(tmp_path):
    work = write_tiny_csv(tmp_path)
    out = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                          str(ROOT / 'train.py'), 'epoch_num=2', 'save_epoch=1', *TINY], cwd=work,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count('epoch 1/2 ') == 1 and out.stdout.count('Saved checkpoint/model_final') == 1
    assert 'batch 16 in each of 2 processes' in out.stdout
    ckpt = torch.load(work / 'checkpoint' / 'model_final', weights_only=True)
    assert len(ckpt['losses']) == 2 * 2  # 34 images: shards of 17 per process, 2 steps of 16 each per epoch
    drawn = run('generate.py', '-load_path', 'checkpoint/model_final', '-num_output', '4', '-out_dir', 'gen', cwd=work)
    assert drawn.returncode == 0 and (work / 'gen' / 'draw_generate.gif').is_file(), drawn.stderr


def test_shards_partition_the_order(monkeypatch):
    order = torch.randperm(11)
    monkeypatch.setattr(distributed, 'world', lambda: 3)
    parts = []
    for r in range(3):
        monkeypatch.setattr(distributed, 'rank', lambda r=r: r)
        parts.append(distributed.shard(order))
    assert all(len(part) == 3 for part in parts)  # equal steps on every rank; 2 images sit this epoch out
    assert len(set(torch.cat(parts).tolist())) == 9 and set(torch.cat(parts).tolist()) <= set(order.tolist())


def torchrun_with(fault, folder, *args):
    return subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                           str(ROOT / 'tests' / 'torchrun_faults.py'), fault, *TINY, *args], cwd=folder,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_process_that_dies_leaves_rank_0_s_state_saved(tmp_path):
    """Process 1 is killed in its third step: process 0's collective fails (or torchrun stops it), and it
    saves model_interrupted, as of its last whole step, with one line; that file resumes."""
    work = write_tiny_csv(tmp_path)
    out = torchrun_with('die', work, 'epoch_num=3')
    assert out.returncode != 0
    assert 'saved checkpoint/model_interrupted' in out.stderr, out.stderr[-3000:]
    ckpt = torch.load(work / 'checkpoint' / 'model_interrupted', weights_only=True)
    assert ckpt['step'] == 2 and len(ckpt['losses']) == 2
    resumed = torchrun_with('none', work, 'resume=checkpoint/model_interrupted')
    assert resumed.returncode == 0 and 'resuming after epoch 1 step 0' in resumed.stdout, resumed.stderr[-3000:]


@pytest.mark.slow
def test_processes_that_decoded_other_data_are_refused(tmp_path):
    work = write_tiny_csv(tmp_path)
    out = torchrun_with('other_data', work, 'epoch_num=1')
    assert out.returncode != 0 and 'process 1 decoded other data than process 0' in out.stderr, out.stderr[-3000:]
    assert not (work / 'checkpoint' / 'model_final').exists()
