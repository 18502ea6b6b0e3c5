"""Budgets for MoE and serving: active parameters, and memory = weights + KV cache (+ recurrent state); the
search's expert and Mamba axes."""
from dataclasses import asdict

import pytest
import torch

from transformers import AutoModelForCausalLM

from minitron.errors import MinitronError, SettingsError
from minitron.params import count_parameters_from_config
from minitron.prune.surgery import pruned_config
from minitron.prune.target import resolve_target
from minitron.search import SearchConfig
from minitron.importance import random_scores
from minitron.params import count_parameters
from minitron.prune import prune
from minitron.search.candidates import Architecture, ParamCounter, enumerate_candidates, refusal
from minitron.search.memory import kv_cache_bytes, memory_gb, recurrent_state_bytes
from minitron.search.rank import plan
from tests.tiny import HYBRID_FAMILIES, VOCAB_SIZE, tiny_config, tiny_model

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


@pytest.mark.parametrize("family", ["llama", "mixtral", "nemotron_h", "gpt_oss", "granitemoehybrid", "falcon_h1"])
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


def _cache_bytes(cache) -> int:
    """Every tensor a transformers cache object holds (keys, values, conv and recurrent states)."""
    total = 0
    for layer in cache.layers:
        for value in vars(layer).values():
            tensors = value.values() if isinstance(value, dict) else [value]
            total += sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
    return total


@pytest.mark.parametrize("family", HYBRID_FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("target", [{}, {"mamba_num_heads": 4, "num_hidden_layers": 3}])
def test_hybrid_memory_counts_what_the_transformers_cache_holds(family, dtype, target):
    """KV cache for attention layers only, conv + SSM state for Mamba layers: the bytes of the cache that
    transformers builds while generating (SSM state in float32 even in a bf16 model)."""
    # nemotron_h: Mamba, attention, MLP, Mamba; granitemoehybrid: Mamba, attention, Mamba, attention (its Mamba
    # sizes under other config names: mamba_n_heads, mamba_d_conv, ...)
    source = tiny_config(family)
    config = pruned_config(source, resolve_target(source, target))
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(dtype).eval()
    batch, context = 3, 20
    with torch.no_grad():
        cache = model(torch.randint(0, VOCAB_SIZE, (batch, context - 1)), use_cache=True).past_key_values
        model(torch.randint(0, VOCAB_SIZE, (batch, 1)), past_key_values=cache, use_cache=True)  # one decoded token
    value_bytes = torch.finfo(dtype).bits // 8
    counted = kv_cache_bytes(config, batch, context, value_bytes) + recurrent_state_bytes(config, batch, value_bytes)
    assert counted == _cache_bytes(cache)


def test_moe_search_varies_experts_and_expert_width_under_an_active_budget():
    config = tiny_config("qwen3_moe")  # 8 experts of 64; layer 1 dense
    settings = SearchConfig(target_active_params=0.5, max_candidates=4, **GRID)
    candidates, _ = enumerate_candidates(config, settings)
    assert {c.architecture.num_experts for c in candidates} == {8, 6, 4}
    assert {c.architecture.moe_intermediate_size for c in candidates} == {64, 48, 32}
    for candidate in candidates[::17]:  # dense and sparse layers differ: counted per kind of layer
        assert refusal(config, candidate.architecture) is None
        assert candidate.params == exact(config, candidate.architecture)
    budget, kept, _ = plan(config, settings)
    assert any({"experts", "expert_mlp"} & set(c.architecture.cut_axes(Architecture.of(config))) for c in kept)
    model = tiny_model("qwen3_moe")
    scores = random_scores(model, 0)
    for candidate in kept:
        assert candidate.params.active <= budget.limit
        pruned = prune(model, scores, candidate.architecture.target(Architecture.of(config)))
        assert count_parameters(pruned) == candidate.params


def test_hybrid_search_varies_mamba_heads_in_whole_groups():
    config = tiny_config("nemotron_h")  # 8 Mamba heads in 2 groups
    candidates, counts = enumerate_candidates(config, SearchConfig(target_params=0.6, hidden_step=12, mlp_step=16))
    assert {c.architecture.mamba_num_heads for c in candidates} == {8, 6, 4} and counts["refused"] == 0
    for candidate in candidates[::9]:  # Mamba, attention and MLP layers differ: counted per kind of layer
        assert candidate.params == exact(config, candidate.architecture)
    with pytest.raises(SettingsError, match="not a multiple of the model's 2 Mamba groups"):
        enumerate_candidates(config, SearchConfig(target_params=0.6, mamba_head_step=3))


@pytest.mark.parametrize("experts", [8, 0])  # Granite-4.0-H Tiny / Small, and Micro (the shared MLP alone)
def test_granite_hybrid_search_keeps_the_mamba_width_a_multiple_of_hidden_size(experts):
    """mamba_expand x hidden_size must stay Mamba heads x head dim (a whole-number mamba_expand): the search
    drops the hidden / Mamba head pairs `minitron prune` refuses, and keeps the others."""
    config = tiny_config("granitemoehybrid", num_local_experts=experts)  # 8 heads of 12 = 2 x hidden 48
    candidates, counts = enumerate_candidates(config, SearchConfig(target_params=0.6, **GRID))
    pairs = {(c.architecture.hidden_size, c.architecture.mamba_num_heads) for c in candidates}
    assert pairs == {(48, 8), (48, 4), (32, 8)}  # of hidden {48, 32} x heads {8, 6, 4}: 96 or 48 wide, not 72
    assert counts["refused"] > 0 and all("mamba_expand" in reason for reason in counts["refusal_examples"])
    assert {c.architecture.num_experts for c in candidates} == ({8, 6, 4} if experts else {None})
    for candidate in candidates[::11]:
        pruned = pruned_config(config, resolve_target(config, candidate.architecture.as_dict()))
        assert pruned.mamba_expand * pruned.hidden_size == pruned.mamba_n_heads * pruned.mamba_d_head
        assert candidate.params == exact(config, candidate.architecture)


def test_axes_can_be_fixed_and_an_unused_mlp_size_is_not_searched():
    config = tiny_config("qwen3_moe", mlp_only_layers=[])  # no dense layer reads intermediate_size
    settings = SearchConfig(target_active_params=0.6, fixed_axes="num_experts, num_hidden_layers", **GRID)
    candidates, _ = enumerate_candidates(config, settings)
    assert {(c.architecture.num_experts, c.architecture.num_hidden_layers, c.architecture.intermediate_size)
            for c in candidates} == {(8, 4, 64)}
    assert len({c.architecture.moe_intermediate_size for c in candidates}) == 3
    with pytest.raises(SettingsError, match="--fixed-axes: unknown axis experts"):
        SearchConfig(target_params=0.5, fixed_axes="experts")
    with pytest.raises(SettingsError, match="this model has no axis mamba_num_heads"):
        enumerate_candidates(config, SearchConfig(target_params=0.5, fixed_axes="mamba_num_heads"))


@pytest.mark.parametrize("family, overrides, key", [
    ("qwen2_moe", {}, "shared_expert_intermediate_size"),
    ("nemotron_h_moe", {}, "moe_shared_expert_intermediate_size"),
    ("granitemoehybrid", {}, "shared_intermediate_size"),
    ("granitemoehybrid", {"num_local_experts": 0}, "shared_intermediate_size"),  # Micro: its only FFN
])
def test_shared_expert_step_searches_every_familys_shared_width(family, overrides, key):
    """--shared-expert-step varies the shared expert under any family's name for it, not only qwen2_moe's."""
    config = tiny_config(family, **overrides)  # shared width 64
    candidates, _ = enumerate_candidates(config, SearchConfig(target_params=0.8, shared_expert_step=16,
                                                              fixed_axes="hidden_size", **GRID))
    assert {c.architecture.shared_expert_intermediate_size for c in candidates} == {64, 48, 32}
    source = Architecture.of(config)
    candidate = next(c for c in candidates if c.architecture.shared_expert_intermediate_size == 32)
    assert "shared_mlp" in candidate.architecture.cut_axes(source)
    model = tiny_model(family, **overrides)
    pruned = prune(model, random_scores(model, 0), candidate.architecture.target(source))
    assert getattr(pruned.config, key) == 32 and count_parameters(pruned) == candidate.params


@pytest.mark.parametrize("family, step, message", [
    ("mixtral", {"expert_width_step": 16}, "--expert-width-step: this model has no axis moe_intermediate_size"),
    ("mixtral", {"shared_expert_step": 16}, "no axis shared_expert_intermediate_size"),
    ("llama", {"expert_step": 2}, "no axis num_experts"),
    ("nemotron_h", {"expert_step": 2}, "no axis num_experts"),  # no MoE layers in this configuration
    ("qwen3_moe", {"mamba_head_step": 2}, "no axis mamba_num_heads"),
])
def test_a_step_for_an_axis_the_model_lacks_is_refused(family, step, message):
    """Like --fixed-axes, a step flag naming an axis the model does not have is an error, not silently unused."""
    with pytest.raises(SettingsError, match=message):
        enumerate_candidates(tiny_config(family), SearchConfig(target_params=0.6, **GRID, **step))
