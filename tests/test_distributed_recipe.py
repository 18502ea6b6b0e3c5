"""A whole recipe under `torchrun --nproc-per-node 2` (gloo, CPU): one process group for every stage, rank 0
writes, and the family equals the one a single process trains with the same global batch, even when the run
is stopped by SIGTERM in the middle of a stage's distillation and started again.

Measured on 2 cores: the two runs' weights differ by at most 2e-7 (fp32 rounding of the gradient all-reduce
against one process's batch mean), the per-step losses by 1.2e-7 and the held-out losses not at all; the
tolerances below leave a margin of 50x, far below what a wrong data share or schedule moves (1e-3 and more).
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minitron.recipe import run_recipe
from tests.test_recipe import ROOT, inputs, one_thread, tiny_recipe, write_recipe  # noqa: F401 - fixtures

STAGES = ("01-searched", "02-half")


def _family_recipe(root: Path, processes: int) -> dict:
    """Two stages (a search whose candidate is distilled, then a fixed target) with a global batch of 2
    blocks on any number of processes."""
    per_process = 2 // processes
    search = {"target_params": 0.7, "max_candidates": 2, "top_k": 1, "candidate_tokens": 64,
              "candidate_batch_size": per_process, "heldout_samples": 2}
    recipe = tiny_recipe(root, correction=None)
    recipe["distill"]["micro_batch_size"] = per_process
    recipe["stages"] = [{"name": "searched", "search": search},
                        {"name": "half", "target": {"intermediate_size": 32}, "distill": {"steps": 12}}]
    recipe["eval"]["throughput"] = {"batch_size": 1, "seq_len": 8, "new_tokens": 2, "repeats": 1}
    return recipe


def _torchrun(recipe: Path, run_dir: Path, log: Path, stop_when: Path | None = None) -> tuple[int, str]:
    """`torchrun --nproc-per-node 2 -m minitron run`; with `stop_when`, SIGTERM to torchrun (as a cluster
    preempting the job) once that file has a line. Returns the exit code and what was printed."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
               "-m", "minitron", "run", str(recipe), "--out", str(run_dir), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    deadline = time.monotonic() + 400
    with open(log, "w") as output:  # a file, not a pipe: nobody reads a pipe while the run goes on
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            while stop_when is not None and not (stop_when.is_file() and stop_when.read_text().strip()):
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the run ended or stalled before it could be stopped:\n{log.read_text()[-3000:]}")
                time.sleep(0.005)
            if stop_when is not None:
                process.send_signal(signal.SIGTERM)
            process.wait(timeout=max(deadline - time.monotonic(), 1))
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)  # torchrun and both workers
    return process.returncode, log.read_text()


def _losses(run_dir: Path, stage: str) -> torch.Tensor:
    lines = (run_dir / stage / "model/metrics.jsonl").read_text().splitlines()
    return torch.tensor([json.loads(line)["loss"] for line in lines if line.strip()], dtype=torch.float64)


@pytest.mark.slow
def test_a_recipe_on_two_processes_stopped_by_sigterm_resumes_to_the_one_process_family(inputs, tmp_path):  # noqa: F811
    reference = tmp_path / "one-process"
    run_recipe(write_recipe(tmp_path / "one.yaml", _family_recipe(inputs, 1)), reference, device="cpu", report=False)
    recipe, run_dir = write_recipe(tmp_path / "two.yaml", _family_recipe(inputs, 2)), tmp_path / "two-processes"

    code, printed = _torchrun(recipe, run_dir, tmp_path / "first.log", stop_when=run_dir / "02-half/model/metrics.jsonl")
    assert code != 0 and "interrupted in 02-half (interrupted (SIGTERM) after step" in printed, printed[-3000:]
    assert printed.count("== 01-searched") == 1  # rank 0 alone reports (and writes)
    checkpoint = run_dir / "02-half/model/checkpoint"
    assert {"__0_0.distcp", "__1_0.distcp", "position.json"} <= {p.name for p in checkpoint.iterdir()}
    assert not list(checkpoint.glob("*.pt"))  # each rank wrote its own part; nothing pickled by rank 0
    stopped_at = json.loads((checkpoint / "position.json").read_text())["step"]
    assert 1 <= stopped_at < 12 and json.loads((run_dir / "run.json").read_text())["stages"][1]["status"] == "running"

    code, printed = _torchrun(recipe, run_dir, tmp_path / "second.log")
    assert code == 0, printed[-3000:]
    assert "skipping 01-searched (done)" in printed and "resuming the interrupted training" in printed

    for stage in STAGES:
        expected = load_file(str(reference / stage / "model/model.safetensors"))
        for name, tensor in load_file(str(run_dir / stage / "model/model.safetensors")).items():
            torch.testing.assert_close(tensor, expected[name], rtol=0, atol=1e-5, msg=f"{stage}: {name}")
        torch.testing.assert_close(_losses(run_dir, stage), _losses(reference, stage), rtol=0, atol=5e-6)
    searches = [json.loads((folder / "01-searched/search/search.json").read_text()) for folder in (run_dir, reference)]
    assert searches[0]["winner"]["target"] == searches[1]["winner"]["target"]
    assert [c["loss_distilled"] for c in searches[0]["candidates"]] == pytest.approx(
        [c["loss_distilled"] for c in searches[1]["candidates"]], abs=1e-5)
    members = [json.loads((folder / "run.json").read_text())["members"] for folder in (run_dir, reference)]
    assert [m["heldout_loss"] for m in members[0]] == pytest.approx([m["heldout_loss"] for m in members[1]], abs=1e-5)
