"""Impossible targets, bad scores and unknown architectures are refused clearly, before any work."""
import importlib
import json

import pytest
import torch
from transformers import AutoConfig

from minitron.arch import SUPPORTED_MODEL_TYPES, get_adapter, text_config
from minitron.errors import ScoresError, TargetError, UnsupportedArchitectureError
from minitron.importance import ImportanceScores, estimate_importance, random_scores
from minitron.prune import describe_pruning, parse_layer_list, prune, resolve_target
from tests.tiny import tiny_config, tiny_model

BAD_TARGETS = [
    ({"hidden_size": 64}, "larger than the source"),
    ({"intermediate_size": 0}, "must be positive"),
    ({"num_hidden_layers": -1}, "must be positive"),
    ({"num_attention_heads": 5}, "not a multiple of num_key_value_heads"),
    ({"num_attention_heads": 4, "num_key_value_heads": 1}, "per KV group"),
    ({"drop_layers": [0, 4]}, "out of range"),
    ({"drop_layers": [1, 1]}, "more than once"),
    ({"drop_layers": [0, 1, 2, 3]}, "all 4 layers"),
    ({"drop_layers": [0], "num_hidden_layers": 2}, "leaving 3"),
    ({"hidden_size": 31.5}, "whole number"),
    ({"hiden_size": 32}, "unknown target key"),
]


@pytest.mark.parametrize("target,message", BAD_TARGETS)
def test_impossible_targets_are_refused(target, message):
    with pytest.raises(TargetError, match=message):
        resolve_target(tiny_config("llama"), target)


def test_bad_target_is_refused_before_any_work(monkeypatch):
    model = tiny_model("llama")
    scores = random_scores(model)
    api = importlib.import_module("minitron.prune.api")
    monkeypatch.setattr(api, "slice_state_dict", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(TargetError):
        prune(model, scores, {"num_attention_heads": 5})


def test_mha_head_pruning_keeps_mha():
    config = tiny_config("llama", num_key_value_heads=6)
    resolved = resolve_target(config, {"num_attention_heads": 4})
    assert resolved.num_key_value_heads == 4


def test_scores_from_another_model_are_refused(batches):
    model, other = tiny_model("llama"), tiny_model("llama")
    scores = estimate_importance(other, batches, progress=False)
    with pytest.raises(ScoresError, match="not on this model"):
        prune(model, scores, {"hidden_size": 36})


def test_scores_serve_the_same_model_in_another_dtype(model, batches):
    """The fingerprint identifies the weights, not their dtype: fp32 scores prune the bf16 copy."""
    scores = estimate_importance(model, batches, progress=False)
    pruned = prune(model.to(torch.bfloat16), scores, {"intermediate_size": 32})
    assert pruned.dtype == torch.bfloat16 and text_config(pruned.config).intermediate_size == 32


def test_scores_of_an_older_format_are_refused(tmp_path):
    model = tiny_model("llama")
    random_scores(model).save(tmp_path / "scores")
    meta_path = tmp_path / "scores" / "scores.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "format_version": 1}))
    with pytest.raises(ScoresError, match="format 1.*recompute them"):
        ImportanceScores.load(tmp_path / "scores")


def test_scores_round_trip_and_corruption(tmp_path, batches):
    model = tiny_model("qwen3")
    scores = estimate_importance(model, batches, layer_loss_batches=1, progress=False, meta={"data": "unit"})
    scores.save(tmp_path / "scores")
    loaded = ImportanceScores.load(tmp_path / "scores")
    assert loaded.fingerprint == scores.fingerprint and loaded.meta["data"] == "unit"
    assert set(loaded.layers) == {"block_influence", "lm_loss"}
    for a, b in zip(loaded.neurons + loaded.heads, scores.neurons + scores.heads):
        assert torch.equal(a, b)
    (tmp_path / "scores" / "scores.safetensors").write_bytes(b"garbage")
    with pytest.raises(ScoresError, match="corrupt"):
        ImportanceScores.load(tmp_path / "scores")
    with pytest.raises(ScoresError, match="holds no importance scores"):
        ImportanceScores.load(tmp_path / "missing")
    meta = json.loads((tmp_path / "scores" / "scores.json").read_text())
    assert meta["seq_reduction"] == "mean" and meta["batch_reduction"] == "l2"


@pytest.mark.parametrize("seq", ["mean", "l2", "var"])
@pytest.mark.parametrize("batch", ["mean", "l2", "var"])
def test_every_aggregation_pair_gives_finite_scores(seq, batch, batches):
    scores = estimate_importance(tiny_model("llama"), batches, seq_reduction=seq, batch_reduction=batch,
                                 progress=False)
    assert all(t.isfinite().all() and (t >= 0).all() for t in [scores.hidden, *scores.neurons, *scores.heads])


def test_unsupported_architecture_lists_supported():
    config = AutoConfig.for_model("gpt2", n_layer=1, n_embd=16, n_head=2, vocab_size=32)
    with pytest.raises(UnsupportedArchitectureError) as error:
        get_adapter(config)
    assert all(name in str(error.value) for name in SUPPORTED_MODEL_TYPES)


def test_dry_run_from_config_alone():
    summary = describe_pruning(tiny_config("gemma2"), {"hidden_size": 24, "num_hidden_layers": 2})
    assert summary["params_after"].total < summary["params_before"].total
    assert summary["config"].layer_types == ["sliding_attention", "full_attention"]


def test_layer_list_parsing():
    assert parse_layer_list("3,5,7-9") == [3, 5, 7, 8, 9]
    with pytest.raises(TargetError):
        parse_layer_list("a-b")


def test_config_transformers_would_refuse_is_caught_before_work():
    with pytest.raises(TargetError, match="not a multiple of the number of attention heads"):
        describe_pruning(tiny_config("llama"), {"hidden_size": 44})
    model = tiny_model("llama")
    with pytest.raises(TargetError, match="transformers refuses"):
        prune(model, random_scores(model), {"hidden_size": 44})


@pytest.mark.parametrize("target", [["--num-experts", "4"], ["--hidden-size", "1000"], ["--mamba-num-heads", "4"]])
def test_prune_refuses_an_impossible_target_before_loading_weights(tmp_path, capsys, target):
    """The config alone decides: with unreadable weights, the error is still the target's."""
    from minitron.cli import main
    from tests.tiny import tiny_model, tiny_tokenizer
    folder = tmp_path / "model"
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    argv = ["prune", "--model", str(folder), "--criterion", "magnitude", *target, "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert target[0].removeprefix("--").replace("-", "_") in error and "safetensors" not in error, error


def test_inspect_shows_the_expert_and_mamba_sizes(tmp_path):
    from minitron.jobs import inspect_model
    for family, keys in (("qwen3_moe", ("num_experts", "num_experts_per_tok", "moe_intermediate_size")),
                         ("nemotron_h", ("mamba_num_heads", "mamba_head_dim", "n_groups")),
                         ("granitemoehybrid", ("num_local_experts", "shared_intermediate_size", "mamba_n_heads",
                                               "mamba_d_head", "mamba_n_groups", "mamba_d_state"))):
        tiny_config(family).save_pretrained(tmp_path / family)
        info = inspect_model(str(tmp_path / family))
        assert all(info[key] == getattr(tiny_config(family), key) for key in keys), (family, info)


def test_inspect_shows_the_layer_kinds_of_a_hybrid(tmp_path):
    from minitron.jobs import inspect_model
    tiny_config("granitemoehybrid").save_pretrained(tmp_path / "granite")  # mamba, attention x2 (transformers names)
    assert inspect_model(str(tmp_path / "granite"))["layer_types"] == ", ".join(["linear_attention, full_attention"] * 2)
    tiny_config("gemma2").save_pretrained(tmp_path / "gemma2")
    assert inspect_model(str(tmp_path / "gemma2"))["layer_types"] == ", ".join(["sliding_attention, full_attention"] * 2)
    tiny_config("llama").save_pretrained(tmp_path / "llama")  # one kind only: nothing to show
    assert "layer_types" not in inspect_model(str(tmp_path / "llama"))
