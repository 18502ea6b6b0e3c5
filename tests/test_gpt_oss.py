"""gpt_oss quirks beyond the family grid: attention sinks follow their heads, transposed experts keep each
neuron's interleaved gate and up channels with their biases, and gpt-oss-20b's published sizes.

The grid (test_prune.py, test_moe.py, ...) runs on a tiny gpt_oss too; these tests pin what only it has.
"""
import torch
from transformers import AutoConfig

from minitron.arch import get_adapter
from minitron.importance import estimate_importance
from minitron.prune import describe_pruning, prune
from tests.helpers import logits
from tests.tiny import tiny_model


def test_silent_query_heads_go_first_and_the_kept_heads_keep_their_sinks(batches):
    torch.manual_seed(0)
    model = tiny_model("gpt_oss")  # 6 query heads in 2 KV groups of 3
    adapter, head_dim, silent = get_adapter(model), model.config.head_dim, [1, 5]  # one in each group
    with torch.no_grad():
        for layer in adapter.layers(model):
            out_proj = layer.get_submodule(adapter.attn_out_proj)
            for head in silent:
                out_proj.weight[:, head * head_dim:(head + 1) * head_dim] = 0.0
    scores = estimate_importance(model, batches, progress=False)
    assert all(torch.equal(torch.sort(torch.argsort(s)[:2]).values, torch.tensor(silent)) for s in scores.heads)
    pruned = prune(model, scores, {"num_attention_heads": 4})
    kept = [0, 2, 3, 4]
    for source, small in zip(adapter.layers(model), adapter.layers(pruned)):
        torch.testing.assert_close(small.self_attn.sinks, source.self_attn.sinks[kept], atol=0, rtol=0)
    # Each head's sink is a logit in its own softmax: a kept head with another head's sink would attend otherwise.
    torch.testing.assert_close(logits(pruned, batches[0]), logits(model, batches[0]), atol=1e-5, rtol=0)


def test_each_kept_expert_keeps_its_neurons_interleaved_gate_and_up_channels_and_biases(batches):
    torch.manual_seed(0)
    model = tiny_model("gpt_oss")
    scores = estimate_importance(model, batches, progress=False)
    pruned = prune(model, scores, {"num_experts": 6, "intermediate_size": 32})
    adapter = get_adapter(model)
    for index in range(model.config.num_hidden_layers):
        source_layer, small_layer = adapter.layers(model)[index], adapter.layers(pruned)[index]
        source, small = (adapter.moe.experts_module(layer) for layer in (source_layer, small_layer))
        kept_experts = torch.sort(torch.argsort(scores.experts["weighted_output"][index], descending=True)[:6]).values
        for name in ("weight", "bias"):  # the router keeps the kept experts' rows and biases
            torch.testing.assert_close(getattr(small_layer.get_submodule(adapter.moe.router_path), name),
                                       getattr(source_layer.get_submodule(adapter.moe.router_path), name)[kept_experts])
        for new, old in enumerate(kept_experts.tolist()):
            kept = torch.sort(torch.argsort(scores.expert_neurons[index][old], descending=True)[:32]).values
            channels = torch.stack([2 * kept, 2 * kept + 1], dim=1).flatten()  # transformers: gate ::2, up 1::2
            exact = dict(atol=0, rtol=0)
            torch.testing.assert_close(small.gate_up_proj[new], source.gate_up_proj[old][:, channels], **exact)
            torch.testing.assert_close(small.gate_up_proj_bias[new], source.gate_up_proj_bias[old][channels], **exact)
            torch.testing.assert_close(small.down_proj[new], source.down_proj[old][kept], **exact)
            torch.testing.assert_close(small.down_proj_bias[new], source.down_proj_bias[old], **exact)


# openai/gpt-oss-20b's config.json, architecture fields as published (its MXFP4 quantization_config left out).
GPT_OSS_20B = dict(
    vocab_size=201088, hidden_size=2880, intermediate_size=2880, head_dim=64, num_attention_heads=64,
    num_key_value_heads=8, num_hidden_layers=24, num_local_experts=32, num_experts_per_tok=4, experts_per_token=4,
    attention_bias=True, sliding_window=128, layer_types=["sliding_attention", "full_attention"] * 12,
    max_position_embeddings=131072, initial_context_length=4096, rms_norm_eps=1e-5, rope_theta=150000,
    rope_scaling=dict(rope_type="yarn", factor=32.0, beta_fast=32.0, beta_slow=1.0, truncate=False,
                      original_max_position_embeddings=4096),
    swiglu_limit=7.0, tie_word_embeddings=False, pad_token_id=199999, eos_token_id=200002)


def closed_form_parameters(experts: int, per_token: int, hidden=2880, width=2880, layers=24, heads=64, kv_heads=8,
                           head_dim=64, vocab=201088) -> tuple[int, int]:
    """(total, active) counted by hand from the architecture, independently of transformers."""
    attention = (2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim  # q, o; k, v
                 + heads * head_dim + 2 * kv_heads * head_dim + hidden + heads)  # biases of q, k, v, o; sinks
    expert = 3 * hidden * width + 2 * width + hidden  # gate_up and down, with their biases
    shared = layers * (attention + experts * (hidden + 1) + 2 * hidden) + 2 * vocab * hidden + hidden  # + router, norms
    return shared + layers * experts * expert, shared + layers * per_token * expert


def test_gpt_oss_20b_dry_run_to_16_experts():
    source = AutoConfig.for_model("gpt_oss", **GPT_OSS_20B)
    summary = describe_pruning(source, {"num_experts": 16})
    before, after = summary["params_before"], summary["params_after"]
    assert (before.total, before.active) == closed_form_parameters(32, 4)
    assert (after.total, after.active) == closed_form_parameters(16, 4)
    # OpenAI's model card (arXiv 2508.10925, Table 1): 20.91B total, 3.61B active. Its active count leaves out
    # the input embedding table (a lookup) but counts the unembedding; minitron's `active` counts both.
    embedding_table = 201088 * 2880
    assert (round(before.total / 1e9, 2), round((before.active - embedding_table) / 1e9, 2)) == (20.91, 3.61)
    assert round(before.non_embedding / 1e9, 2) == 19.76
    pruned = summary["config"]
    assert (pruned.num_local_experts, pruned.num_experts_per_tok, pruned.intermediate_size) == (16, 4, 2880)
    assert pruned.layer_types == GPT_OSS_20B["layer_types"] and pruned.swiglu_limit == 7.0


def test_experts_run_outside_their_module_are_refused_not_scored_zero(batches):
    """gpt_oss's MLP may be swapped for a Hub kernel (`use_kernels=True`, MegaBlocks) that never calls the
    experts module, so its hooks see no token; its expert scores would be silently zero. Stand-in for that
    kernel (none can be fetched here): an MLP forward that bypasses the experts module."""
    import types

    import pytest

    from minitron.errors import MinitronError

    model = tiny_model("gpt_oss")
    mlp = get_adapter(model).layers(model)[1].mlp
    mlp.forward = types.MethodType(lambda self, hidden_states: (hidden_states * 0, None), mlp)
    with pytest.raises(MinitronError, match=r"MoE layer\(s\) \[1\] saw none of the .* tokens"):
        estimate_importance(model, batches, progress=False)
