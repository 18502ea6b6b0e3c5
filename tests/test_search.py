"""Architecture search on tiny models: budgets are never exceeded, impossible budgets say why, the winner is
marked in the tables, the latency path measures for real, and the CLI lists and runs a search."""
import csv
import json
from dataclasses import replace

import pytest
import torch

from minitron.cli import main
from minitron.errors import MinitronError
from minitron.importance import estimate_importance, random_scores
from minitron.params import count_parameters, count_parameters_from_config
from minitron.prune import prune
from minitron.prune.surgery import pruned_config
from minitron.prune.target import resolve_target
from minitron.search import SearchConfig, search
from minitron.search.candidates import Architecture, ParamCounter, enumerate_candidates
from minitron.search.rank import plan
from minitron.search.tables import ordered_rows
from minitron.speed import measure_throughput, random_model
from tests.tiny import VOCAB_SIZE, tiny_config, tiny_model, tiny_tokenizer

FAMILIES = ["llama", "qwen2", "phi3", "gemma3_text"]  # GQA everywhere (6 heads, 2 KV); tied; fused QKV; gemma
# A coarse grid keeps every test fast: hidden {48, 36, 24}, MLP {64, 48, 32}, layers {4, 3, 2}.
GRID = {"hidden_step": 12, "mlp_step": 16}


def exact_params(config, architecture: Architecture):
    return count_parameters_from_config(pruned_config(config, resolve_target(config, architecture.as_dict())))


def blocks(count: int, seed: int, seq_len: int = 16) -> torch.Tensor:
    return torch.randint(0, VOCAB_SIZE, (count, seq_len), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_parameter_counts_extrapolated_over_depth_are_exact(family):
    config = tiny_config(family)
    counter = ParamCounter(config)
    candidates, _ = enumerate_candidates(config, SearchConfig(target_params=0.5, **GRID), counter)
    for candidate in candidates[::7]:
        assert candidate.params == exact_params(config, candidate.architecture), candidate.architecture


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("fraction,budget_on", [(0.35, "total"), (0.6, "total"), (0.5, "non_embedding"),
                                                 (0.8, "non_embedding")])
def test_never_over_budget(family, fraction, budget_on):
    config = tiny_config(family)
    settings = SearchConfig(target_params=fraction, budget_on=budget_on, max_candidates=6, **GRID)
    budget, kept, counts = plan(config, settings)
    source = getattr(count_parameters_from_config(config), budget_on)
    assert budget.limit == pytest.approx(fraction * source)
    assert 1 <= len(kept) <= 6 and counts["scored"] == len(kept)
    for candidate in kept:
        value = getattr(exact_params(config, candidate.architecture), budget_on)
        assert value <= budget.limit
        assert candidate.exact and getattr(candidate.params, budget_on) == value
        if not counts["slack_widened"]:
            assert value >= budget.floor
    assert len({c.architecture for c in kept}) == len(kept)


def test_shortlist_spreads_over_kinds_of_cut():
    config = tiny_config("llama")
    source = Architecture.of(config)
    one_layer_less = exact_params(config, Architecture(*source.widths(), source.num_hidden_layers - 1)).total
    _, kept, _ = plan(config, SearchConfig(target_params=one_layer_less + 1, max_candidates=3, **GRID))
    assert [c.architecture.cut_kind(source) for c in kept] == ["width", "mixed", "depth"]


def test_pruned_model_matches_the_counted_size():
    torch.manual_seed(0)
    model = tiny_model("qwen2")
    _, kept, _ = plan(model.config, SearchConfig(target_params=0.5, max_candidates=3, **GRID))
    scores = random_scores(model, 0)
    source = Architecture.of(model.config)
    for candidate in kept:
        pruned = prune(model, scores, candidate.architecture.target(source))
        assert count_parameters(pruned) == candidate.params


def _hybrid_depth_case():
    """Tiny nemotron_h (Mamba, attention, MLP, Mamba) with layer scores that drop the cheap MLP layer where a
    count of the first three layers drops the costlier Mamba one, and a budget of exactly that count."""
    torch.manual_seed(0)
    model = tiny_model("nemotron_h")
    scores = random_scores(model, 0)
    scores.layers["random"] = torch.tensor([0.9, 0.8, 0.1, 0.7])
    first_three = exact_params(model.config, Architecture.of(model.config).with_layers(3)).total
    settings = SearchConfig(target_params=first_three, layer_step=1, max_candidates=4, candidate_tokens=0,
                            heldout_samples=2, fixed_axes="hidden_size,intermediate_size,num_attention_heads,"
                            "num_key_value_heads,mamba_num_heads")
    return model, scores, settings


def test_hybrid_depth_cuts_are_counted_with_the_layers_the_scores_keep():
    model, scores, settings = _hybrid_depth_case()
    result = search(model, None, scores, settings, heldout=blocks(2, 2), progress=False)
    assert result.candidates
    for row in result.candidates:
        pruned = prune(model, scores, row["target"])
        assert row["params"] == count_parameters(pruned).as_dict() and row["params"]["total"] <= result.budget.limit
        assert row["kept_layers"] == pruned.minitron_kept_layers
    assert [r["kept_layers"] for r in result.candidates] == [[0, 1]]  # three layers by the scores are over
    assert result.counts["over_budget_when_pruned"] == 0


def test_candidates_over_budget_once_pruned_are_dropped():
    """Counted as if the last layers went (no scores given to the plan), the three-layer cut fits the
    budget; pruned by the scores it does not, and the search leaves it out."""
    from minitron.search.rank import _score_pruned

    model, scores, settings = _hybrid_depth_case()
    source, heldout = Architecture.of(model.config), blocks(2, 2)
    budget, counted_first_layers, _ = plan(model.config, replace(settings, slack=0.2))
    assert [c.architecture.num_hidden_layers for c in counted_first_layers] == [3, 2]
    logged = []
    rows = _score_pruned(model, scores, counted_first_layers, source, heldout, settings, budget, 8, logged.append)
    assert [row["kept_layers"] for row in rows] == [[0, 1]] and rows[0]["params"]["total"] <= budget.limit
    assert any(line.startswith("dropped 1/2") and "over the budget" in line for line in logged), logged
    budget, only_three_layers, _ = plan(model.config, settings)
    with pytest.raises(MinitronError, match="every candidate exceeded the budget"):
        _score_pruned(model, scores, only_three_layers, source, heldout, settings, budget, 8, logged.append)


def test_impossible_budget_names_the_smallest_candidate():
    config = tiny_config("llama")
    settings = SearchConfig(target_params=1000, **GRID)
    candidates, _ = enumerate_candidates(config, settings)
    smallest = min(candidates, key=lambda c: c.params.total)
    with pytest.raises(MinitronError, match="no candidate meets the budget of 1,000") as error:
        plan(config, settings)
    assert smallest.architecture.label() in str(error.value)
    assert f"{exact_params(config, smallest.architecture).total:,}" in str(error.value)
    with pytest.raises(MinitronError, match="nothing to search for"):
        plan(config, SearchConfig(target_params=1e9, **GRID))


@pytest.mark.parametrize("bad,message", [
    ({}, "give one budget"), ({"target_params": 0.5, "target_latency": 10.0}, "give one budget"),
    ({"target_params": 0.5, "budget_on": "embedding"}, "--budget-on"),
    ({"target_params": 0.5, "max_width_cut": 1.0}, "--max-width-cut"),
    ({"target_params": -1.0}, "must be positive"),
])
def test_config_refuses_bad_settings(bad, message):
    with pytest.raises(MinitronError, match=message):
        SearchConfig(**bad)


def test_search_chooses_by_pruned_loss_without_distillation():
    torch.manual_seed(0)
    model = tiny_model("phi3")
    scores = estimate_importance(model, [blocks(4, 1)], layer_loss_batches=1, progress=False)
    settings = SearchConfig(target_params=0.6, max_candidates=4, candidate_tokens=0, **GRID)
    result = search(model, None, scores, settings, heldout=blocks(4, 2), progress=False)
    rows = result.candidates
    assert sorted(r["rank_pruned"] for r in rows) == list(range(1, len(rows) + 1))
    assert [r["chosen"] for r in rows].count(True) == 1
    assert result.winner["rank_pruned"] == 1 and result.winner["loss_distilled"] is None
    assert all(r["params"]["total"] <= result.budget.limit for r in rows)
    assert not result.ranking_changed and not result.winner_changed


@pytest.fixture
def one_thread():
    """Latency on 2 shared cores is steadier on one thread (and the tiny models gain nothing from two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("family", ["llama", "gemma3_text", "phi3"])
def test_measure_throughput_decodes_with_the_cache(family, one_thread):
    model = tiny_model(family)
    result = measure_throughput(model, batch_size=2, seq_len=8, new_tokens=3, repeats=1)
    assert result["prefill_tokens_per_s"] > 0 and result["decode_tokens_per_s"] > 0 and result["latency_ms"] > 0
    assert model.training is False
    with pytest.raises(MinitronError, match="max_position_embeddings"):
        measure_throughput(model, seq_len=200)


def test_latency_budget_is_measured_and_met(one_thread):
    config = tiny_config("llama")
    grid = {"hidden_step": 24, "mlp_step": 32, "kv_head_step": 2, "heads_per_group_step": 3, "layer_step": 2,
            "latency_seq_len": 16, "latency_new_tokens": 4}
    # The slowest of three readings: on a shared CPU a lucky fast reading would make the budget too tight.
    source_ms = max(measure_throughput(random_model(config), 1, 16, new_tokens=4)["latency_ms"] for _ in range(3))
    settings = SearchConfig(target_latency=0.85 * source_ms, max_candidates=3, **grid)
    budget, kept, _ = plan(config, settings)
    assert budget.metric == "latency_ms" and budget.source > 0
    assert kept and all(c.exact and c.latency_ms <= budget.limit for c in kept)
    with pytest.raises(MinitronError, match="the smallest candidate"):
        plan(config, SearchConfig(target_latency=1e-3, max_candidates=3, **grid))


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    torch.manual_seed(0)
    tiny_model("qwen3").save_pretrained(root / "teacher")
    tiny_tokenizer().save_pretrained(root / "teacher")
    text = "\n\n".join(f"Paragraph {i}: a search keeps the candidates that fit and distills the best of them, "
                       f"said document {i}." for i in range(300))
    (root / "corpus.txt").write_text(text)
    return root


SMALL = ["--hidden-step", "12", "--mlp-step", "16", "--max-candidates", "4"]


def test_cli_help_and_dry_run(teacher_folder, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "--help"])
    assert exit_info.value.code == 0
    assert "--target-latency" in capsys.readouterr().out
    assert main(["search", "--model", str(teacher_folder / "teacher"), "--target-params", "0.5", "--dry-run",
                 *SMALL]) == 0
    out = capsys.readouterr().out
    assert "would be scored" in out and out.count("| width |") + out.count("| mixed |") + out.count("| depth |") == 4
    assert main(["search", "--model", str(teacher_folder / "teacher"), "--target-params", "100", "--list",
                 *SMALL]) == 2
    assert "the smallest candidate" in capsys.readouterr().err
    assert main(["search", "--model", str(teacher_folder / "teacher"), "--target-params", "0.5"]) == 2
    assert "--out is required" in capsys.readouterr().err


def test_cli_search_with_candidate_distillation_writes_the_tables(teacher_folder, capsys):
    out = teacher_folder / "nas"
    argv = ["search", "--model", str(teacher_folder / "teacher"), "--target-params", "0.6", "--data",
            str(teacher_folder / "corpus.txt"), "--seq-len", "16", "--samples", "8", "--batch-size", "8",
            "--heldout-samples", "4", "--top-k", "2", "--candidate-tokens", "32", "--candidate-batch-size", "2",
            "--out", str(out), "--hidden-step", "12", "--mlp-step", "16", "--max-candidates", "3"]
    assert main(argv) == 0
    assert "Prune to the winner (then distill it fully) with\n  minitron prune --model " in capsys.readouterr().out
    result = json.loads((out / "search.json").read_text())
    assert {"config", "budget", "candidates", "winner", "ranking_changed"} <= set(result)
    rows = result["candidates"]
    assert len(rows) == 3 and [r["chosen"] for r in rows].count(True) == 1
    distilled = [r for r in rows if r["loss_distilled"] is not None]
    assert len(distilled) == 2 and {r["rank_pruned"] for r in distilled} == {1, 2}
    assert result["winner"]["rank_distilled"] == 1 and result["winner"]["chosen"]
    assert result["winner"]["loss_distilled"] == min(r["loss_distilled"] for r in distilled)
    assert all(r["params"]["total"] <= result["budget"]["limit"] for r in rows)
    table = list(csv.DictReader((out / "candidates.csv").open()))
    assert len(table) == 3 and [r["chosen"] for r in table].count("True") == 1
    assert table[0]["chosen"] == "True"  # the winner leads the table
    markdown = (out / "candidates.md").read_text()
    assert markdown.count("**yes**") == 1 and "Short retraining" in markdown
    assert (out / "scores" / "scores.json").is_file()  # computed on --data, kept for reuse
    assert main(argv) == 2  # an existing search is not overwritten
    assert "--overwrite" in capsys.readouterr().err


def test_dry_run_tables_show_the_expert_and_mamba_axes(tmp_path, capsys):
    """A MoE model's listing has expert columns and its active parameters; a hybrid's memory budget is listed
    in GB with its Mamba heads (the dense tables keep their five sizes, above)."""
    for family in ("qwen3_moe", "nemotron_h"):
        tiny_config(family).save_pretrained(tmp_path / family)
    assert main(["search", "--model", str(tmp_path / "qwen3_moe"), "--target-active-params", "0.6", "--dry-run",
                 "--hidden-step", "16", "--mlp-step", "16", "--max-candidates", "3"]) == 0
    out = capsys.readouterr().out
    assert "| layers | experts | expert MLP | cut | params | non-embedding | active | of budget |" in out
    assert "active parameters (60.0% of the source)" in out
    assert main(["search", "--model", str(tmp_path / "nemotron_h"), "--target-memory", "0.7", "--memory-context",
                 "64", "--dry-run", "--hidden-step", "12", "--mlp-step", "16", "--max-candidates", "3"]) == 0
    out = capsys.readouterr().out
    assert "GB (batch 1 x 64 tokens) (70.0% of the source)" in out and "| layers | Mamba heads | cut |" in out


def test_a_memory_search_tables_each_candidates_memory(teacher_folder, capsys):
    out = teacher_folder / "nas-memory"
    argv = ["search", "--model", str(teacher_folder / "teacher"), "--target-memory", "0.7", "--memory-batch", "2",
            "--memory-context", "64", "--data", str(teacher_folder / "corpus.txt"), "--seq-len", "16", "--samples",
            "8", "--batch-size", "8", "--heldout-samples", "4", "--candidate-tokens", "0", "--out", str(out),
            "--hidden-step", "12", "--mlp-step", "16", "--max-candidates", "2"]
    assert main(argv) == 0
    assert "| memory GB |" in capsys.readouterr().out
    result = json.loads((out / "search.json").read_text())
    table = list(csv.DictReader((out / "candidates.csv").open()))
    assert [float(r["memory_gb"]) for r in table] == [r["memory_gb"] for r in ordered_rows(result["candidates"])]
    assert all(float(r["memory_gb"]) <= result["budget"]["limit"] for r in table)
