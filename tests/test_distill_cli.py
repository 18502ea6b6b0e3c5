"""`minitron distill` / `finetune` from the command line, on one process and under torchrun (gloo)."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from minitron.cli import main
from minitron.importance import random_scores
from minitron.loading import save_checkpoint
from minitron.prune import prune
from tests.tiny import tiny_model, tiny_tokenizer

TEXT = "\n\n".join(f"Line {i}: a student learns from a teacher what the pruning took away, {i * 7 % 13}."
                   for i in range(300))
COMMON = ["--seq-len", "16", "--steps", "3", "--lr", "1e-3", "--warmup-steps", "1", "--clip-grad", "0", "--eval-every", "0",
          "--eval-samples", "4", "--device", "cpu", "--precision", "fp32"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    torch.manual_seed(0)
    teacher, tokenizer = tiny_model("llama"), tiny_tokenizer()
    save_checkpoint(teacher, tokenizer, root / "teacher", {"stage": "test"})
    student = prune(teacher, random_scores(teacher), {"intermediate_size": 32, "drop_layers": [1]})
    save_checkpoint(student, tokenizer, root / "student", {"stage": "prune", "kept_layers": [0, 2, 3]})
    (root / "corpus.txt").write_text(TEXT)
    return root


def _losses(folder) -> list[float]:
    return [json.loads(line)["loss"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _distill_args(run_dir, out, *extra):
    return ["distill", "--student", str(run_dir / "student"), "--teacher", str(run_dir / "teacher"),
            "--data", str(run_dir / "corpus.txt"), "--out", str(out), *COMMON, *extra]


def test_distill_writes_a_plain_student_with_history(run_dir):
    out = run_dir / "one"
    assert main(_distill_args(run_dir, out, "--micro-batch-size", "2", "--hidden-loss", "cosine")) == 0
    record = json.loads((out / "minitron.json").read_text())
    assert [h["stage"] for h in record["history"]] == ["prune", "distill"]
    assert not (out / "checkpoint").exists()
    from safetensors.torch import load_file
    names = load_file(str(out / "model.safetensors")).keys()
    assert not any("projection" in n or "hidden_loss" in n for n in names)
    assert main(_distill_args(run_dir, out, "--micro-batch-size", "2")) == 2  # holds another run
    assert main(_distill_args(run_dir, out, "--micro-batch-size", "2", "--resume")) == 2  # finished


def test_finetune_trains_the_teacher(run_dir):
    out = run_dir / "corrected"
    assert main(["finetune", "--model", str(run_dir / "teacher"), "--data", str(run_dir / "corpus.txt"),
                 "--out", str(out), *COMMON]) == 0
    assert (out / "config.json").is_file() and len(_losses(out)) == 3


@pytest.mark.parametrize("sharding", [[], ["--fsdp"]], ids=["ddp", "fsdp2"])
def test_two_processes_match_one(run_dir, sharding):
    single = run_dir / "single"
    if not single.exists():
        assert main(_distill_args(run_dir, single, "--micro-batch-size", "2")) == 0
    double = run_dir / "double"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533",
               "-m", "minitron.cli", *_distill_args(run_dir, double, "--micro-batch-size", "1", *sharding)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    torch.testing.assert_close(torch.tensor(_losses(double)), torch.tensor(_losses(single)), rtol=1e-4, atol=1e-5)
    from transformers import AutoModelForCausalLM
    one, two = (AutoModelForCausalLM.from_pretrained(folder) for folder in (single, double))
    for (name, a), b in zip(one.state_dict().items(), two.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    shutil.rmtree(double)


def test_missing_student_folder_is_refused(run_dir, tmp_path, capsys):
    argv = ["distill", "--student", str(tmp_path / "nowhere"), "--teacher", str(run_dir / "teacher"),
            "--data", str(run_dir / "corpus.txt"), "--out", str(tmp_path / "out"), *COMMON]
    assert main(argv) == 2 and "does not exist" in capsys.readouterr().err
