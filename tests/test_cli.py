"""The command line end to end on a tiny model saved to a local folder (no network)."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from minitron.cli import main
from minitron.loading import load_model
from tests.tiny import tiny_model, tiny_tokenizer

TEXT = "\n\n".join(f"Paragraph {i}: pruning keeps the neurons that matter and distillation recovers "
                   f"the rest, said document number {i}." for i in range(400))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model, tokenizer = tiny_model("qwen3"), tiny_tokenizer()
    model.save_pretrained(root / "teacher")
    tokenizer.save_pretrained(root / "teacher")
    (root / "corpus.txt").write_text(TEXT)
    return root


def test_importance_prune_inspect_eval(workspace, capsys):
    teacher, data = str(workspace / "teacher"), str(workspace / "corpus.txt")
    common = ["--data", data, "--samples", "8", "--seq-len", "32", "--batch-size", "4"]
    assert main(["importance", "--model", teacher, "--out", str(workspace / "scores"),
                 "--layer-loss-samples", "4", *common]) == 0
    meta = json.loads((workspace / "scores" / "scores.json").read_text())
    assert meta["num_samples"] == 8 and meta["data"] == data
    assert main(["prune", "--model", teacher, "--scores", str(workspace / "scores"), "--hidden-size", "36",
                 "--intermediate-size", "40", "--num-hidden-layers", "3", "--depth-metric", "lm_loss",
                 "--out", str(workspace / "pruned")]) == 0
    record = json.loads((workspace / "pruned" / "minitron.json").read_text())
    assert record["params_after"]["total"] < record["params_before"]["total"]
    reloaded = AutoModelForCausalLM.from_pretrained(workspace / "pruned")
    assert reloaded.config.hidden_size == 36 and reloaded.config.num_hidden_layers == 3
    model, tokenizer = load_model(str(workspace / "pruned"))
    assert tokenizer is not None and model.config.intermediate_size == 40
    capsys.readouterr()
    assert main(["inspect", str(workspace / "pruned"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"]["total"] == record["params_after"]["total"]
    assert main(["eval", "--model", str(workspace / "pruned"), *common]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tokens"] == 8 * 31 and result["loss"] > 0


def test_dry_run_prints_architecture(workspace, capsys):
    assert main(["prune", "--model", str(workspace / "teacher"), "--num-attention-heads", "3",
                 "--num-key-value-heads", "1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "num_attention_heads" in out and "params total" in out


@pytest.mark.parametrize("argv,message", [
    (["prune", "--model", "{teacher}", "--hidden-size", "96", "--criterion", "random", "--out", "{tmp}/x"],
     "larger than the source"),
    (["prune", "--model", "{tmp}/nowhere/", "--criterion", "random", "--hidden-size", "8", "--out", "{tmp}/x"],
     "does not exist"),
    (["prune", "--model", "{teacher}", "--out", "{tmp}/x"], "give at least one target"),
    (["prune", "--model", "{teacher}", "--scores", "{tmp}/none", "--hidden-size", "36", "--out", "{tmp}/x"],
     "holds no importance scores"),
    (["importance", "--model", "{teacher}", "--data", "{tmp}/missing.txt", "--out", "{tmp}/s"], "does not exist"),
    (["importance", "--model", "{teacher}", "--samples", "0", "--out", "{tmp}/s"], "must be positive"),
])
def test_bad_input_gets_a_clear_error(workspace, tmp_path, capsys, argv, message):
    argv = [a.format(teacher=workspace / "teacher", tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_existing_output_is_not_overwritten(workspace, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    (out / "minitron.json").write_text("{}")  # a folder minitron wrote: --overwrite may replace it
    argv = ["prune", "--model", str(workspace / "teacher"), "--criterion", "random", "--hidden-size", "36",
            "--out", str(out)]
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "precious"
    assert main([*argv, "--overwrite"]) == 0 and (out / "config.json").is_file()
    assert not (out / "keep.txt").exists()


def test_lm_eval_tasks_need_the_optional_extra(workspace, capsys):
    pytest.importorskip("minitron")
    try:
        import lm_eval  # noqa: F401
        pytest.skip("lm-eval is installed here")
    except ImportError:
        pass
    argv = ["eval", "--model", str(workspace / "teacher"), "--data", str(workspace / "corpus.txt"), "--samples", "2",
            "--seq-len", "16", "--tasks", "hellaswag"]
    assert main(argv) == 2 and "lm-eval" in capsys.readouterr().err
