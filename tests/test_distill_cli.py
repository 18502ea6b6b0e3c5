"""`minitron distill` / `finetune` from the command line, on one process and under torchrun (gloo)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from minitron.cli import main
from minitron.importance import random_scores
from minitron.loading import save_checkpoint
from minitron.prune import prune
from tests.helpers import free_port
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


# A hidden-state loss, accumulation (gradients reduced on the last micro-batch only) and 3 held-out blocks,
# which 2 processes cannot split evenly (validation must still run the same forwards on both).
SPLIT = ["--hidden-loss", "cosine", "--grad-accum", "2", "--eval-samples", "3"]


# DDP with --teacher-sharding auto: resolved once, on every rank alike, to replicate (no FSDP2, no GPU).
@pytest.mark.parametrize("sharding", [["--teacher-sharding", "auto"], ["--fsdp", "--teacher-sharding", "shard"]],
                         ids=["ddp", "fsdp2"])
def test_two_processes_match_one(run_dir, sharding):
    single = run_dir / "single"
    if not single.exists():
        assert main(_distill_args(run_dir, single, "--micro-batch-size", "2", *SPLIT)) == 0
    double = run_dir / "double"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
               "-m", "minitron.cli", *_distill_args(run_dir, double, "--micro-batch-size", "1", *SPLIT, *sharding)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("--teacher-sharding auto: replicate") == (0 if "--fsdp" in sharding else 1)  # rank 0
    records = [[json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
               for folder in (double, single)]
    for key in ("loss", "hidden"):
        torch.testing.assert_close(*(torch.tensor([r[key] for r in rs], dtype=torch.float64) for rs in records),
                                   rtol=1e-4, atol=1e-5, msg=key)
    for key in ("val_student_loss", "val_teacher_loss", "val_kl"):  # all 3 blocks, not 2 or 4
        torch.testing.assert_close(records[0][-1][key], records[1][-1][key], rtol=1e-4, atol=1e-5, msg=key)
    # Under FSDP2 rank 1 never reads the sharded models' files: it builds them on the meta device and
    # receives its shards from rank 0. DDP needs the whole student on every rank.
    readers = [0] if "--fsdp" in sharding else [0, 1]
    assert json.loads((double / "minitron.json").read_text())["weights_read_on_ranks"] == {
        "student": readers, "teacher": readers}
    from transformers import AutoModelForCausalLM
    one, two = (AutoModelForCausalLM.from_pretrained(folder) for folder in (single, double))
    for (name, a), b in zip(one.state_dict().items(), two.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    shutil.rmtree(double)


@pytest.mark.slow  # as long as the torchrun test above (~1.5 min on 2 busy cores), and the same DDP path
def test_accelerate_launch_runs_the_same_distillation(run_dir, tmp_path):
    """The README's `accelerate launch` line: accelerate's launcher starts the same processes as torchrun
    (`--multi_gpu` is its name for "several processes"; on CPUs they talk over gloo), and the result is the
    one-process run's."""
    single = run_dir / "single"
    if not single.exists():
        assert main(_distill_args(run_dir, single, "--micro-batch-size", "2")) == 0
    launched = tmp_path / "accelerate"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf")}  # no user accelerate config
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               str(free_port()), "-m", "minitron.cli", *_distill_args(run_dir, launched, "--micro-batch-size", "1", "--quiet")]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("distill: model written to") == 1  # rank 0 alone reports (and writes)
    torch.testing.assert_close(torch.tensor(_losses(launched), dtype=torch.float64),
                               torch.tensor(_losses(single), dtype=torch.float64), rtol=1e-3, atol=1e-4)


def test_missing_student_folder_is_refused(run_dir, tmp_path, capsys):
    argv = ["distill", "--student", str(tmp_path / "nowhere"), "--teacher", str(run_dir / "teacher"),
            "--data", str(run_dir / "corpus.txt"), "--out", str(tmp_path / "out"), *COMMON]
    assert main(argv) == 2 and "does not exist" in capsys.readouterr().err


def _interrupt_at_first_checkpoint(argv, out) -> int:
    """Run the CLI in-process and press Ctrl-C (SIGINT) once the run has written its first checkpoint."""
    finished = threading.Event()

    def press_ctrl_c():
        while not finished.is_set():
            if (out / "checkpoint" / "settings.json").is_file():
                os.kill(os.getpid(), signal.SIGINT)  # handled in the main thread, by the training loop
                return
            time.sleep(0.002)

    presser = threading.Thread(target=press_ctrl_c)
    presser.start()
    try:
        return main(argv)
    finally:
        finished.set()
        presser.join()


def test_resume_refuses_changed_settings_and_records_safe_ones(run_dir, capsys):
    out = run_dir / "resumed"
    assert _interrupt_at_first_checkpoint(_distill_args(run_dir, out, "--steps", "40", "--save-every", "2"), out) == 130
    stopped_at = json.loads((out / "checkpoint" / "settings.json").read_text())["step"]
    capsys.readouterr()
    argv = _distill_args(run_dir, out, "--steps", "40", "--save-every", "2", "--resume", "--lr", "5e-3")
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "lr (--lr): 0.001 in the checkpoint, now 0.005" in error and "another --out" in error
    assert main([*_distill_args(run_dir, out, "--steps", "40", "--resume"), "--data", "builtin:python-topics"]) == 2
    assert "data (--data)" in capsys.readouterr().err and (out / "checkpoint" / "position.json").is_file()
    assert main(_distill_args(run_dir, out, "--steps", "40", "--save-every", "7", "--resume")) == 0
    record = json.loads((out / "minitron.json").read_text())
    assert record["config"]["lr"] == 1e-3 and len(_losses(out)) == 40
    assert record["resumes"] == [{"step": stopped_at, "changed": {"save_every": {"from": 2, "to": 7}}}]


def test_a_teacher_with_another_tokenizer_is_refused_before_any_work(run_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM
    from tests.test_distill import _other_tokenizer
    teacher = AutoModelForCausalLM.from_pretrained(run_dir / "teacher")
    save_checkpoint(teacher, _other_tokenizer(tiny_tokenizer()), tmp_path / "teacher", {"stage": "test"})
    argv = ["distill", "--student", str(run_dir / "student"), "--teacher", str(tmp_path / "teacher"),
            "--data", str(run_dir / "corpus.txt"), "--out", str(tmp_path / "out"), *COMMON]
    assert main(argv) == 2
    assert "the teacher's tokenizer is not the student's" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
