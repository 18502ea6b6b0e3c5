"""Prepared data under torchrun (gloo, 2 processes): each rank reads its share of the global batch, the losses
equal one process's, and a run interrupted on 2 processes resumes on 1 (and the reverse) at the same sample,
with the same schedule, to the same weights as an uninterrupted run."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minitron.data.shards import write_shards
from minitron.importance import random_scores
from minitron.loading import save_checkpoint
from minitron.prune import prune
from tests.distributed_driver import run
from tests.tiny import tiny_model

DRIVER = Path(__file__).with_name("distributed_driver.py")
TEXT = "\n\n".join(f"Line {i}: a student learns from a teacher what the pruning took away, {i * 7 % 13}."
                   for i in range(120))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("distributed-data")
    torch.manual_seed(0)
    teacher = tiny_model("llama")
    save_checkpoint(teacher, tokenizer, root / "teacher", {"stage": "test"})
    student = prune(teacher, random_scores(teacher), {"intermediate_size": 32})
    save_checkpoint(student, tokenizer, root / "student", {"stage": "prune"})
    (root / "corpus.txt").write_text(TEXT)
    write_shards(str(root / "corpus.txt"), tokenizer, root / "prepared")
    run(root, root / "reference", {"micro_batch_size": 2}, stop_after=None, resume=False)  # one process, batch 2
    return root


def _torchrun(run_dir: Path, out: Path, overrides: dict, *extra: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
               str(DRIVER), str(run_dir), str(out), json.dumps(overrides), *extra]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def _losses(out: Path) -> torch.Tensor:
    return torch.tensor([json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()])


def _assert_same_run(out: Path, reference: Path) -> None:
    torch.testing.assert_close(_losses(out), _losses(reference), rtol=1e-4, atol=1e-5)
    lrs = [[json.loads(line)["lr"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
           for folder in (out, reference)]
    assert lrs[0] == pytest.approx(lrs[1], rel=1e-9)  # the same learning-rate schedule
    weights, expected = (torch.load(folder / "final.pt") for folder in (out, reference))
    for name, value in expected.items():
        torch.testing.assert_close(weights[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_two_processes_interrupted_then_one_resumes(run_dir):
    out = run_dir / "two-then-one"
    _torchrun(run_dir, out, {"micro_batch_size": 1}, "--stop-after", "2")  # global batch 2 = 1 x 2 ranks
    assert (out / "checkpoint").is_dir() and not (out / "final.pt").exists()
    # Two ranks with one block each give the losses of one process with both blocks.
    torch.testing.assert_close(_losses(out), _losses(run_dir / "reference")[:2], rtol=1e-4, atol=1e-5)
    run(run_dir, out, {"micro_batch_size": 2}, stop_after=None, resume=True)
    _assert_same_run(out, run_dir / "reference")


def test_one_process_interrupted_then_two_resume(run_dir):
    out = run_dir / "one-then-two"
    run(run_dir, out, {"micro_batch_size": 1, "grad_accum": 2}, stop_after=2, resume=False)
    assert (out / "checkpoint").is_dir()
    _torchrun(run_dir, out, {"micro_batch_size": 1}, "--resume")
    _assert_same_run(out, run_dir / "reference")
