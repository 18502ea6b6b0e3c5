"""Mixture-of-experts pruning: experts, expert widths, routing-based importance, parameter counts.

The generic grid (test_prune.py, test_arch.py, ...) runs on every MoE family too; these tests cover
what only MoE models have.
"""
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from minitron.arch import Axis, get_adapter
from minitron.arch.moe import moe_spec
from minitron.errors import ScoresError, TargetError
from minitron.importance import estimate_importance, random_scores
from minitron.importance.scores import ImportanceScores
from minitron.params import count_parameters, count_parameters_from_config
from minitron.prune import describe_pruning, prune
from tests.helpers import logits, writes_residual
from tests.tiny import MOE_FAMILIES, tiny_config, tiny_model

CHANNEL = 0  # the residual channel the never-routed expert's router row reads


@pytest.fixture(params=MOE_FAMILIES)
def moe_model(request):
    torch.manual_seed(0)
    return tiny_model(request.param)


def sparse_layers(model) -> list[int]:
    adapter = get_adapter(model)
    return [i for i, layer in enumerate(adapter.layers(model)) if adapter.moe.experts_module(layer) is not None]


@torch.no_grad()
def never_route_experts_(model, experts: list[int]) -> None:
    """Push these experts' router logits to about -1e4 on every token, so no token is ever routed to them.

    A linear router without bias cannot do that for arbitrary inputs, so residual channel CHANNEL is made
    a positive constant (embedding column set, nothing writes to it, norm weights 1 there): the router
    rows -1e4 * e_CHANNEL then give a large negative logit whatever the token (sigmoid routers: a score of 0).
    """
    adapter = get_adapter(model)
    model.get_input_embeddings().weight[:, CHANNEL] = 0.05  # about the size of the others: routing stays varied
    for name, param in model.named_parameters():
        layer, axes = adapter.axes_of(name)
        if layer is None or Axis.HIDDEN not in axes:
            continue
        if writes_residual(name, axes, adapter.moe):
            param.select(axes.index(Axis.HIDDEN), CHANNEL).zero_()
        elif "norm" in name and axes == (Axis.HIDDEN,):
            param[CHANNEL] = 1.0
    for index in sparse_layers(model):
        router = adapter.layers(model)[index].get_submodule(adapter.moe.router_path)
        router.weight[:, CHANNEL] = 0.0
        router.weight[experts] = 0.0
        router.weight[experts, CHANNEL] = -1e4


def never_routed_experts(model) -> list[int]:
    """Expert 5, and under grouped routing expert 1 of every group of four: each group loses as many."""
    groups, _ = moe_spec(model).routing_groups(model.config)
    return [5] if groups == 1 else [group * 4 + 1 for group in range(groups)]


def test_never_routed_expert_is_pruned_first_and_changes_nothing(moe_model, batches):
    never = never_routed_experts(moe_model)
    never_route_experts_(moe_model, never)
    scores = estimate_importance(moe_model, batches, progress=False)
    routed = torch.ones(8, dtype=torch.bool)
    routed[never] = False
    for layer in sparse_layers(moe_model):
        for metric in ("reap", "weighted_output", "frequency"):
            expert_scores = scores.experts[metric][layer]
            assert (expert_scores[never] == 0).all() and (expert_scores[routed] > 0).all()
        assert torch.all(scores.expert_neurons[layer][never] == 0)  # neurons count routed tokens only
    num_experts = getattr(moe_model.config, get_adapter(moe_model).moe.num_experts_key)
    pruned = prune(moe_model, scores, {"num_experts": num_experts - len(never)})
    torch.testing.assert_close(logits(pruned, batches[0]), logits(moe_model, batches[0]), atol=1e-5, rtol=0)


def test_expert_and_width_cut_round_trips_through_plain_transformers(moe_model, batches, tmp_path):
    spec = get_adapter(moe_model).moe
    scores = estimate_importance(moe_model, batches, progress=False)
    target = {"num_experts": 4, "num_experts_per_tok": 1, **{key: 32 for key in spec.width_keys()}}
    pruned = prune(moe_model, scores, target)
    assert getattr(pruned.config, spec.num_experts_key) == 4 and pruned.config.num_experts_per_tok == 1
    assert all(getattr(pruned.config, key) == 32 for key in spec.width_keys())
    pruned.save_pretrained(tmp_path)
    reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    torch.testing.assert_close(logits(reloaded.eval(), batches[0]), logits(pruned, batches[0]), atol=1e-5, rtol=0)
    prompt, settings = batches[0][:1, :6], dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(pruned.generate(prompt, use_cache=True, **settings),
                       pruned.generate(prompt, use_cache=False, **settings))
    assert count_parameters(reloaded) == count_parameters_from_config(reloaded.config)


def test_each_kept_expert_keeps_its_own_best_neurons(batches):
    model = tiny_model("mixtral")
    scores = estimate_importance(model, batches, progress=False)
    pruned = prune(model, scores, {"num_experts": 6, "intermediate_size": 32})
    adapter = get_adapter(model)
    source, small = (adapter.moe.experts_module(adapter.layers(m)[0]) for m in (model, pruned))
    kept_experts = torch.sort(torch.argsort(scores.experts["weighted_output"][0], descending=True)[:6]).values
    for new, old in enumerate(kept_experts.tolist()):
        kept = torch.sort(torch.argsort(scores.expert_neurons[0][old], descending=True)[:32]).values
        torch.testing.assert_close(small.down_proj[new], source.down_proj[old][:, kept], atol=0, rtol=0)
        torch.testing.assert_close(small.gate_up_proj[new], source.gate_up_proj[old][torch.cat([kept, 64 + kept])],
                                   atol=0, rtol=0)


@pytest.mark.parametrize("moe_family", ["qwen2_moe", "gpt_oss", "nemotron_h_moe"])  # all three expert layouts
def test_reap_is_the_router_weighted_expert_output_norm(batches, moe_family):
    """Reference: the real experts module run with each expert alone, on the routing it was given."""
    model = tiny_model(moe_family)
    layer = sparse_layers(model)[0]  # NemotronH's first layer is a Mamba one
    experts = get_adapter(model).moe.experts_module(get_adapter(model).layers(model)[layer])
    calls = []
    handle = experts.register_forward_pre_hook(lambda module, args: calls.append([a.detach() for a in args]))
    scores = estimate_importance(model, batches, progress=False)
    handle.remove()
    weighted, routed = torch.zeros(8, dtype=torch.float64), torch.zeros(8, dtype=torch.float64)
    with torch.no_grad():
        for hidden, index, weights in calls:
            for expert in range(8):
                tokens, slots = torch.where(index == expert)
                alone = torch.full_like(index, expert)[tokens]
                one_hot = torch.zeros_like(weights[tokens])
                one_hot[:, 0] = 1.0
                output = experts(hidden[tokens], alone, one_hot)  # the expert's own output, unweighted
                weighted[expert] += (weights[tokens, slots].double() * output.double().norm(dim=-1)).sum()
                routed[expert] += tokens.numel()
    reap, weighted_output = (scores.experts[metric][layer].double() for metric in ("reap", "weighted_output"))
    torch.testing.assert_close(reap, weighted / routed.clamp_min(1), rtol=1e-4, atol=1e-6)
    total_tokens = sum(call[0].shape[0] for call in calls)
    torch.testing.assert_close(weighted_output, weighted / total_tokens, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(scores.experts["frequency"][layer].double(), routed / total_tokens, rtol=1e-6, atol=0)
    assert scores.experts["frequency"][layer].sum() == pytest.approx(model.config.num_experts_per_tok, rel=1e-5)


def test_expert_metric_chooses_the_experts_kept(batches):
    model = tiny_model("olmoe")
    scores = estimate_importance(model, batches, progress=False)
    kept = {}
    for metric in ("reap", "weighted_output", "frequency", "random"):
        pruned = prune(model, scores, {"num_experts": 3}, expert_metric=metric)
        kept[metric] = get_adapter(pruned).layers(pruned)[0].get_submodule("mlp.gate").weight
    assert len({tuple(w.flatten()[:8].tolist()) for w in kept.values()}) > 1
    with pytest.raises(ScoresError, match="no expert metric 'bogus'"):
        prune(model, scores, {"num_experts": 3}, expert_metric="bogus")


def test_moe_scores_survive_save_and_load(tmp_path, batches):
    model = tiny_model("qwen2_moe")
    scores = estimate_importance(model, batches, progress=False)
    loaded = ImportanceScores.load(scores.save(tmp_path / "scores"))
    assert set(loaded.experts) == {"reap", "weighted_output", "frequency", "random"}
    for layer in sparse_layers(model):
        torch.testing.assert_close(loaded.experts["reap"][layer], scores.experts["reap"][layer])
        torch.testing.assert_close(loaded.expert_neurons[layer], scores.expert_neurons[layer])
        torch.testing.assert_close(loaded.shared_neurons[layer], scores.shared_neurons[layer])
    assert 1 not in loaded.expert_neurons and loaded.neurons[1].numel() == 64  # layer 1 is dense


def test_random_baseline_prunes_experts(moe_model, batches):
    pruned = prune(moe_model, random_scores(moe_model), {"num_experts": 4})
    assert logits(pruned, batches[0]).isfinite().all()


@pytest.mark.parametrize("family,target,message", [
    ("qwen2_moe", {"num_experts": 1}, "num_experts_per_tok"),
    ("qwen2_moe", {"num_experts": 9}, "larger than the source"),
    ("mixtral", {"num_experts_per_tok": 3}, "larger than the source"),
    ("qwen3_moe", {"moe_intermediate_size": 60}, "multiple of 8"),
    ("mixtral", {"hidden_size": 44}, "multiple of 8"),
    ("mixtral", {"moe_intermediate_size": 32}, "no such size"),
    ("llama", {"num_experts": 4}, "has no experts"),
    ("olmoe", {"hidden_size": 40}, "q/k norms"),
    ("granitemoe", {"num_experts": 4, "num_local_experts": 5}, "name the same size"),
    # NemotronH: two routing groups of four experts, one group per token (tests/tiny.py).
    ("nemotron_h_moe", {"num_experts": 6, "hidden_size": 44}, "multiple of 8"),
    ("nemotron_h_moe", {"num_experts": 7}, "allowed num_experts are multiples of 2 from 4 to 8"),
    ("nemotron_h_moe", {"num_experts": 2}, "allowed num_experts are multiples of 2 from 4 to 8"),
    ("nemotron_h_moe", {"shared_expert_intermediate_size": 32, "moe_shared_expert_intermediate_size": 40},
     "name the same size"),
    ("mixtral", {"shared_expert_intermediate_size": 32}, "no shared expert"),
    ("gpt_oss", {"moe_intermediate_size": 32}, "no such size"),
    ("gpt_oss", {"intermediate_size": 36}, "multiple of 8"),
    ("gpt_oss", {"num_experts": 4, "num_local_experts": 6}, "name the same size"),
])
def test_impossible_moe_targets_are_refused_before_any_work(family, target, message):
    with pytest.raises(TargetError, match=message):
        describe_pruning(tiny_config(family), target)


def test_total_and_active_parameters_from_config_equal_the_built_model(moe_model):
    config = moe_model.config
    spec = get_adapter(moe_model).moe
    counted = count_parameters(moe_model)
    assert count_parameters_from_config(config) == counted
    experts, per_token = getattr(config, spec.num_experts_key), config.num_experts_per_tok
    width = getattr(config, spec.expert_width_key)
    per_expert = (3 if spec.gated_experts else 2) * config.hidden_size * width  # NemotronH: up and down only
    if config.model_type == "gpt_oss":  # biases on the gate_up and down projections
        per_expert += 2 * width + config.hidden_size
    unused = len(sparse_layers(moe_model)) * (experts - per_token) * per_expert
    assert counted.active == counted.total - unused


def qwen3_30b_a3b_config():
    """Qwen/Qwen3-30B-A3B's published config.json, written out (no download).

    Checked against NVIDIA/Megatron-LM examples/post_training/modelopt/conf/Qwen/Qwen3-30B-A3B.sh (48 layers,
    hidden 2048, FFN 6144, 32 heads, 4 query groups of kv-channels 128, 128 experts of 768, top-8, max positions
    40960, rotary base 1e6, untied embeddings; --make-vocab-size-divisible-by 1187 = 151936 / 128) and a verbatim
    copy of the Hub's config.json quoted in public code (the search index does not name that repository): also
    vocab_size 151936, decoder_sparse_step 1, mlp_only_layers [], norm_topk_prob true, rms_norm_eps 1e-06.
    """
    return AutoConfig.for_model(
        "qwen3_moe", vocab_size=151936, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
        num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4, head_dim=128, num_experts=128,
        num_experts_per_tok=8, decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True,
        max_position_embeddings=40960, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False)


def test_qwen3_30b_a3b_dry_run_to_96_experts():
    summary = describe_pruning(qwen3_30b_a3b_config(), {"num_experts": 96})
    before, after = summary["params_before"], summary["params_after"]
    # The model card's "30.5B in total and 3.3B activated", "(Non-Embedding): 29.9B" (quoted from the
    # Qwen/Qwen3-30B-A3B-{Instruct,Thinking}-2507 cards, same shapes; the original card was not in the index),
    # which truncates to 0.1B (3.353B activated: embeddings, LM head, attention, routers, 8 of 128 experts a layer).
    tenths = lambda count: int(count / 1e8) / 10  # noqa: E731
    assert (tenths(before.total), tenths(before.active), tenths(before.non_embedding)) == (30.5, 3.3, 29.9)
    assert before.active == 3_353_032_704
    removed_per_layer = 32 * (3 * 2048 * 768 + 2048)  # 32 experts and their router rows
    assert before.total - after.total == 48 * removed_per_layer
    assert before.active - after.active == 48 * 32 * 2048  # a token still uses 8 experts: only router rows go
    assert summary["config"].num_experts == 96 and summary["config"].num_experts_per_tok == 8
