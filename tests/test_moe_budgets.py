"""Budgets for MoE and serving: active parameters, and memory = weights + KV cache (+ recurrent state)."""
from dataclasses import asdict

import pytest

from minitron.errors import MinitronError, SettingsError
from minitron.params import count_parameters_from_config
from minitron.prune.surgery import pruned_config
from minitron.prune.target import resolve_target
from minitron.search import SearchConfig
from minitron.search.candidates import ParamCounter, enumerate_candidates
from minitron.search.memory import kv_cache_bytes, memory_gb
from minitron.search.rank import plan
from tests.tiny import tiny_config

GRID = {"hidden_step": 16, "mlp_step": 16}  # multiples of 8: MoE expert widths must stay so


def exact(config, architecture):
    return count_parameters_from_config(pruned_config(config, resolve_target(config, architecture.as_dict())))


@pytest.mark.parametrize("family", ["mixtral", "gpt_oss"])
def test_active_parameter_counts_extrapolated_over_depth_are_exact(family):
    config = tiny_config(family)
    candidates, _ = enumerate_candidates(config, SearchConfig(target_active_params=0.5, **GRID), ParamCounter(config))
    for candidate in candidates[::5]:
        assert candidate.params == exact(config, candidate.architecture)
        assert candidate.params.active < candidate.params.total  # 2 of 8 experts per token


@pytest.mark.parametrize("family,fraction", [("mixtral", 0.5), ("mixtral", 0.7), ("gpt_oss", 0.5)])
def test_active_budget_is_never_exceeded(family, fraction):
    config = tiny_config(family)
    budget, kept, _ = plan(config, SearchConfig(target_active_params=fraction, max_candidates=4, **GRID))
    assert budget.metric == "active"
    assert budget.limit == pytest.approx(fraction * count_parameters_from_config(config).active)
    for candidate in kept:
        assert exact(config, candidate.architecture).active <= budget.limit


def test_active_budget_is_one_budget_and_survives_a_round_trip():
    settings = SearchConfig(target_active_params=0.5)
    assert (settings.target_params, settings.budget_on) == (0.5, "active")
    assert SearchConfig(**asdict(settings)).budget_on == "active"
    with pytest.raises(SettingsError, match="give one budget"):
        SearchConfig(target_active_params=0.5, target_params=0.4)
    with pytest.raises(SettingsError, match="give one budget"):
        SearchConfig(target_memory=1.0, target_params=0.4)


def test_kv_cache_counts_every_attention_layer_and_caps_sliding_windows():
    llama = tiny_config("llama")  # 4 layers, 2 KV heads of 8
    assert kv_cache_bytes(llama, batch=3, context=100, bytes_per_value=2) == 4 * 2 * 2 * 8 * 3 * 100 * 2
    gemma = tiny_config("gemma3_text")  # 3 of 4 layers slide over 8 tokens
    assert kv_cache_bytes(gemma, batch=1, context=100, bytes_per_value=2) == 2 * 2 * 8 * (100 + 3 * 8) * 2
    gpt_oss = tiny_config("gpt_oss")  # sliding (8 tokens) and full layers alternate
    assert kv_cache_bytes(gpt_oss, batch=1, context=100, bytes_per_value=2) == 2 * 2 * 8 * (2 * 100 + 2 * 8) * 2


@pytest.mark.parametrize("family", ["llama", "mixtral", "gpt_oss"])
def test_memory_budget_is_never_exceeded(family):
    config = tiny_config(family)
    settings = SearchConfig(target_memory=0.6, memory_batch=4, memory_context=512, max_candidates=4, **GRID)
    budget, kept, _ = plan(config, settings)
    source = memory_gb(config, count_parameters_from_config(config).total, 4, 512, 2)
    assert budget.metric == "memory_gb" and budget.limit == pytest.approx(0.6 * source)
    for candidate in kept:
        candidate_config = pruned_config(config, resolve_target(config, candidate.architecture.as_dict()))
        assert memory_gb(candidate_config, exact(config, candidate.architecture).total, 4, 512, 2) <= budget.limit
        assert candidate.memory_gb <= budget.limit


def test_memory_budget_above_the_source_is_refused():
    with pytest.raises(MinitronError, match="not smaller than the source"):
        plan(tiny_config("llama"), SearchConfig(target_memory=1e3, **GRID))
