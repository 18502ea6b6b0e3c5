"""NemotronH's MoE layers (Nemotron 3): the correction bias, grouped routing, and what is refused.

The family grid (test_prune.py, test_moe.py, ...) runs the tiny `nemotron_h_moe` too (tests/tiny.py: two
routing groups of four experts, each token routed within its best group); these tests cover what only
NemotronH's router has.
"""
import pytest
import torch

from minitron.arch import get_adapter
from minitron.errors import TargetError, UnsupportedArchitectureError
from minitron.importance import estimate_importance, random_scores
from minitron.prune import describe_pruning, prune
from tests.helpers import logits
from tests.tiny import tiny_config, tiny_model

MOE_LAYER = 2  # tests/tiny.py: Mamba, attention, MoE, MLP


def router(model):
    adapter = get_adapter(model)
    return adapter.layers(model)[MOE_LAYER].get_submodule(adapter.moe.router_path)


@pytest.fixture
def moe_model():
    torch.manual_seed(0)
    return tiny_model("nemotron_h_moe")  # float32: transformers' grouped_mm experts take no float64


def test_own_moe_sizes_change_nothing(moe_model, batches):
    same = prune(moe_model, estimate_importance(moe_model, batches, progress=False),
                 {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 64,
                  "moe_shared_expert_intermediate_size": 64})
    torch.testing.assert_close(logits(same, batches[0]), logits(moe_model, batches[0]), atol=1e-5, rtol=0)


def test_experts_the_correction_bias_never_selects_go_first_and_change_nothing(moe_model, batches):
    # A -inf correction bias keeps an expert out of every token's choice (and out of its group's score).
    never = [1, 6]  # one in each routing group of four
    with torch.no_grad():
        router(moe_model).e_score_correction_bias[never] = float("-inf")
    scores = estimate_importance(moe_model, batches, progress=False)
    frequency = scores.experts["frequency"][MOE_LAYER]
    assert (frequency[never] == 0).all() and (frequency.sum() - frequency[never].sum()) > 0
    pruned = prune(moe_model, scores, {"num_experts": 6})
    kept = [expert for expert in range(8) if expert not in never]
    torch.testing.assert_close(router(pruned).e_score_correction_bias, router(moe_model).e_score_correction_bias[kept])
    torch.testing.assert_close(logits(pruned, batches[0]), logits(moe_model, batches[0]), atol=1e-5, rtol=0)


def test_every_routing_group_keeps_the_same_number_of_experts(moe_model):
    # The four best experts are all in group 0; a global top-4 would empty group 1 and regroup the rest.
    scores = random_scores(moe_model)
    for metric in scores.experts:
        scores.experts[metric][MOE_LAYER] = torch.tensor([8.0, 7.0, 6.0, 5.0, 1.0, 2.0, 3.0, 4.0])
    pruned = prune(moe_model, scores, {"num_experts": 4})
    assert pruned.config.n_routed_experts == 4 and pruned.config.n_group == 2 and pruned.config.topk_group == 1
    torch.testing.assert_close(router(pruned).weight, router(moe_model).weight[[0, 1, 6, 7]], atol=0, rtol=0)


def test_expert_targets_are_checked_against_the_routing_before_any_work():
    config = tiny_config("nemotron_h_moe", num_experts_per_tok=3)  # one group of four per token
    with pytest.raises(TargetError, match="allowed num_experts are multiples of 2 from 6 to 8"):
        describe_pruning(config, {"num_experts": 4})
    assert describe_pruning(config, {"num_experts": 4, "num_experts_per_tok": 2})["config"].n_routed_experts == 4
    with pytest.raises(TargetError, match="has no experts"):  # a NemotronH without MoE layers
        describe_pruning(tiny_config("nemotron_h"), {"num_experts": 4})


def test_latent_moe_is_refused_clearly():
    config = tiny_config("nemotron_h_moe", moe_latent_size=16)
    with pytest.raises(UnsupportedArchitectureError, match="moe_latent_size"):
        get_adapter(config)
