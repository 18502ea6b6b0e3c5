"""Importance and eval for models at the seeds' scale: data-parallel under torchrun (the same scores and
loss as one process), chunked through the LM head (never full tokens x vocabulary logits), `--device-map
auto` (accelerate), bf16 by default on GPUs."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from minitron.cli import main
from minitron.distill.dist import DistEnv
from minitron.errors import SettingsError
from minitron.eval.loss import mean_lm_loss, position_ids_from_mask
from minitron.importance import ImportanceScores
from minitron.jobs import forward_dtype, load_for_forward
from minitron.loading import load_model, save_checkpoint
from tests.data_parallel_driver import run
from tests.tiny import VOCAB_SIZE, tiny_model

DRIVER = Path(__file__).with_name("data_parallel_driver.py")
TEXT = "\n\n".join(f"Line {i}: importance is summed over every rank's calibration batches, {i * 5 % 11}."
                   for i in range(150))


def _plain_loss(model, input_ids, attention_mask) -> float:
    """Next-token loss from full float64 logits: what the chunked loss must equal."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask,
                   position_ids=position_ids_from_mask(attention_mask)).logits.double()
    targets = input_ids[:, 1:].masked_fill(~(attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()), -100)
    return float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1)))


def test_chunked_eval_equals_full_logit_loss_and_never_builds_full_logits(model):
    generator = torch.Generator().manual_seed(3)
    input_ids = torch.randint(3, VOCAB_SIZE, (3, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :4] = 0  # left padding: neither predicted nor predicting
    attention_mask[2, 9:] = 0  # right padding
    model.eval()
    with torch.no_grad():
        expected = _plain_loss(model, input_ids, attention_mask)
    head_rows = []
    handle = model.get_output_embeddings().register_forward_pre_hook(lambda m, args: head_rows.append(args[0].shape[0]))
    try:
        loss, tokens = mean_lm_loss(model, [{"input_ids": input_ids, "attention_mask": attention_mask}], chunk_size=5)
    finally:
        handle.remove()
    assert tokens == 11 + 7 + 8
    assert loss == pytest.approx(expected, rel=1e-5)  # fp32 rounding ~1e-7; a shifted label moves it by O(1)
    assert head_rows and max(head_rows) <= 5 and sum(head_rows) == tokens  # chunks of 5, no padding rows


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("data-parallel")
    torch.manual_seed(0)
    save_checkpoint(tiny_model("llama"), tokenizer, root / "model", {"stage": "test"})
    (root / "corpus.txt").write_text(TEXT)
    return root


def _torchrun(*args: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
               str(DRIVER), *args]
    result = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    # Whole batches run on each rank exactly as in one process; only the float64 summation order of
    # per-sample values differs (~1e-15). A rank's sums left out would move scores by tens of percent.
    torch.testing.assert_close(actual.double(), expected.double(), rtol=1e-5, atol=1e-7, msg=name)


def test_two_processes_give_one_process_importance_and_loss(saved):
    model, corpus = str(saved / "model"), str(saved / "corpus.txt")
    single = run(model, corpus, saved / "one")
    _torchrun(model, corpus, str(saved / "two"))
    one, two = (ImportanceScores.load(saved / name / "scores") for name in ("one", "two"))
    assert two.meta["num_samples"] == one.meta["num_samples"] == 6 and two.meta["processes"] == 2
    assert two.meta["samples_per_process"] == [4, 2]  # batches of 2: rank 0 ran batches 0 and 2, rank 1 batch 1
    assert two.meta["layer_loss_samples"] == one.meta["layer_loss_samples"] == 4
    _assert_close(two.hidden, one.hidden, "hidden")
    for index, (neurons, heads) in enumerate(zip(two.neurons, two.heads)):
        _assert_close(neurons, one.neurons[index], f"neurons.{index}")
        _assert_close(heads, one.heads[index], f"heads.{index}")
    for name in ("block_influence", "lm_loss"):
        _assert_close(two.layers[name], one.layers[name], name)
    for rank in (0, 1):  # every rank returns the loss over all blocks
        result = json.loads((saved / "two" / f"eval-{rank}.json").read_text())
        assert result["tokens"] == single["tokens"] and result["processes"] == 2
        assert result["loss"] == pytest.approx(single["loss"], rel=1e-6)


def test_device_map_auto_loads_and_evaluates_on_cpu(saved, capsys):
    plain, _ = load_model(str(saved / "model"))
    mapped, _ = load_model(str(saved / "model"), device_map="auto")
    # accelerate's map of a CPU-only machine is one device (transformers then dispatches nothing)
    assert {p.device.type for p in mapped.parameters()} == {"cpu"}
    input_ids = torch.arange(3, 19).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(mapped(input_ids).logits, plain(input_ids).logits)
    args = ["eval", "--model", str(saved / "model"), "--data", str(saved / "corpus.txt"), "--samples", "4",
            "--seq-len", "16", "--split", "train", "--device", "cpu"]
    assert main([*args, "--device-map", "auto"]) == 0
    with_map = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    assert with_map["loss"] == pytest.approx(json.loads(capsys.readouterr().out)["loss"], rel=1e-6)


def test_device_map_refused_under_torchrun_and_bf16_default_on_gpus():
    two_ranks = DistEnv(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(SettingsError, match="without torchrun"):
        load_for_forward("unused", two_ranks, dtype=None, device_map="auto")
    assert forward_dtype("auto", torch.device("cuda", 0)) == "bfloat16"
    assert forward_dtype("float32", torch.device("cuda", 0)) == "float32"  # asked for: kept
    assert forward_dtype("auto", torch.device("cpu")) == "auto"  # the checkpoint's dtype, as before
