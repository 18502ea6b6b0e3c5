"""Granite 4.0-H (granitemoehybrid) beyond the grid: the expert-free Micro variant and mamba_expand.

The family grid, tests/test_moe.py and tests/test_hybrid.py run on the tiny MoE variant; Granite-4.0-H-Micro
has `num_local_experts=0`, where every layer's feed-forward part is the shared MLP alone.
"""
import pytest
import torch
from transformers import AutoModelForCausalLM

from minitron.errors import TargetError
from minitron.importance import estimate_importance, magnitude_scores
from minitron.params import count_parameters, count_parameters_from_config
from minitron.prune import describe_pruning, prune
from tests.helpers import logits, silence_neurons_
from tests.tiny import tiny_config, tiny_model

OWN_SIZES = dict(hidden_size=48, shared_intermediate_size=64, num_attention_heads=6, num_key_value_heads=2,
                 num_hidden_layers=4, mamba_num_heads=8, mamba_head_dim=12)


@pytest.fixture
def micro():
    torch.manual_seed(0)
    return tiny_model("granitemoehybrid", num_local_experts=0, position_embedding_type="nope")  # as published


def test_micro_has_no_experts_and_counts_every_parameter_as_active(micro):
    assert all(layer.block_sparse_moe is None for layer in micro.model.layers) and micro.model.rotary_emb is None
    counted = count_parameters(micro)
    assert counted == count_parameters_from_config(micro.config) and counted.active == counted.total


def test_micro_silent_shared_neurons_go_first_and_change_nothing(micro, batches):
    same = prune(micro, estimate_importance(micro, batches, progress=False), OWN_SIZES)
    torch.testing.assert_close(logits(same, batches[0]), logits(micro, batches[0]), atol=1e-5, rtol=0)
    silent = [3, 10, 17, 22, 31, 40, 51, 63]
    for layer in range(4):
        silence_neurons_(micro, layer, silent)
    scores = estimate_importance(micro, batches, progress=False)
    assert sorted(scores.shared_neurons) == [0, 1, 2, 3] and not scores.experts["reap"]
    for layer_scores in scores.shared_neurons.values():
        assert torch.all(layer_scores[silent] == 0)
        assert torch.all(torch.topk(layer_scores, len(silent), largest=False).values == 0)
    pruned = prune(micro, scores, {"shared_intermediate_size": 64 - len(silent)})
    assert pruned.config.shared_intermediate_size == 56 and pruned.config.num_local_experts == 0
    torch.testing.assert_close(logits(pruned, batches[0]), logits(micro, batches[0]), atol=1e-5, rtol=0)


def test_micro_cut_round_trips_and_generates_with_its_cache(micro, batches, tmp_path):
    # The shared width under minitron's (qwen2_moe's) name; any width works without grouped_mm experts.
    target = dict(hidden_size=24, shared_expert_intermediate_size=36, mamba_num_heads=4, mamba_head_dim=6,
                  num_attention_heads=4, num_key_value_heads=2)
    pruned = prune(micro, magnitude_scores(micro), target)
    assert (pruned.config.shared_intermediate_size, pruned.config.mamba_expand) == (36, 1)
    pruned.save_pretrained(tmp_path)
    reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    torch.testing.assert_close(logits(reloaded.eval(), batches[0]), logits(pruned, batches[0]), atol=1e-5, rtol=0)
    assert count_parameters(reloaded) == count_parameters_from_config(reloaded.config)
    prompt, settings = batches[0][:1, :6], dict(max_new_tokens=12, do_sample=False, pad_token_id=0)
    assert torch.equal(reloaded.generate(prompt, use_cache=True, **settings),
                       reloaded.generate(prompt, use_cache=False, **settings))


@pytest.mark.parametrize("target, message", [
    ({"num_experts": 2}, "larger than the source"),
    ({"shared_intermediate_size": 65}, "larger than the source"),
    ({"shared_intermediate_size": 32, "shared_expert_intermediate_size": 40}, "name the same size"),
])
def test_impossible_micro_targets_are_refused(target, message):
    with pytest.raises(TargetError, match=message):
        describe_pruning(tiny_config("granitemoehybrid", num_local_experts=0), target)


@pytest.mark.parametrize("target, expand", [({}, 2), ({"hidden_size": 32}, 3), ({"hidden_size": 24}, 4),
                                            ({"mamba_num_heads": 4}, 1), ({"mamba_head_dim": 6}, 1)])
def test_mamba_expand_follows_the_pruned_widths(target, expand):
    summary = describe_pruning(tiny_config("granitemoehybrid"), target)
    config = summary["config"]
    assert config.mamba_expand == expand
    assert config.mamba_expand * config.hidden_size == config.mamba_n_heads * config.mamba_d_head


def test_a_shared_width_target_on_a_family_without_one_is_refused():
    with pytest.raises(TargetError, match="no shared expert"):
        describe_pruning(tiny_config("mixtral"), {"shared_intermediate_size": 32})


def test_memory_sizes_read_a_config_holding_infinity():
    # Granite's time_step_limit is (0.0, inf), which transformers writes as {"__float__": "Infinity"} in JSON;
    # the dry run's memory table re-reads configs from that JSON.
    from minitron.memory import sizes_of
    config = tiny_config("granitemoehybrid")
    assert config.time_step_limit[1] == float("inf")
    assert sizes_of(config).params == count_parameters_from_config(config).total
