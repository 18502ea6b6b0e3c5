"""Dry runs against NVIDIA's published hybrid compressions, from their configs alone (meta device, no download).

Nemotron 3 Nano 30B-A3B's config (nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16) as published: the same values
in Megatron-Bridge's Nemotron3NanoProvider and in copies of its config.json in several public repositories.

Sizes are the published ones (Megatron-Bridge's NemotronH providers and the HF configs): Nemotron-H 8B -> 4B
(hidden 4096 -> 3072, FFN 21504 -> 12288, Mamba heads 128 -> 112) and Nemotron-Nano-12B-v2 -> 9B
(hidden 5120 -> 4480, FFN 20480 -> 15680, layers 62 -> 56). All use a 131072-token vocabulary, untied
embeddings, attention with 8 KV heads of 128, Mamba-2 with 8 groups, state 128 and a 4-tap convolution.
"""
import pytest
from transformers import AutoConfig

from minitron.prune import describe_pruning

NEMOTRON_H_PATTERN = "M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-"  # 8B and 4B, 52 layers
NANO_12B_PATTERN = "M-M-M-M*-M-M-M-M*-M-M-M-M*-M-M-M-M*-M-M-M-M*-M-M-M-M*-M-M-M-M-"  # 62 layers
NANO_9B_PATTERN = "M-M-M-MM-M-M-M*-M-M-M*-M-M-M-M*-M-M-M-M*-M-MM-M-M-M-M-M-"  # 56 layers
# Layers of the 12B whose removal leaves the 9B's pattern (two attention, three MLP, one Mamba layer).
NANO_DROPPED_LAYERS = [7, 8, 23, 24, 48, 52]
_SHARED = dict(vocab_size=131072, num_key_value_heads=8, head_dim=128, n_groups=8, ssm_state_size=128,
               conv_kernel=4, use_conv_bias=True, use_bias=False, mlp_bias=False, tie_word_embeddings=False)


def nemotron_h_config(*, hidden_size, intermediate_size, num_attention_heads, mamba_num_heads, mamba_head_dim,
                      pattern):
    return AutoConfig.for_model("nemotron_h", hidden_size=hidden_size, intermediate_size=intermediate_size,
                                num_attention_heads=num_attention_heads, mamba_num_heads=mamba_num_heads,
                                mamba_head_dim=mamba_head_dim, hybrid_override_pattern=pattern, **_SHARED)


def closed_form_parameters(hidden, ffn, heads, mamba_heads, mamba_head_dim, pattern, vocab=131072, kv_heads=8,
                           head_dim=128, groups=8, state=128, kernel=4, experts=0, expert_width=0,
                           shared_width=0) -> int:
    """Parameters counted by hand from the architecture, independently of transformers."""
    inner, bc = mamba_heads * mamba_head_dim, 2 * groups * state
    mamba = hidden * (2 * inner + bc + mamba_heads) + (inner + bc) * (kernel + 1) + 3 * mamba_heads + inner \
        + inner * hidden
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    moe = experts * (2 * hidden * expert_width + hidden) + 2 * hidden * shared_width  # experts, router, shared
    per_kind = {"M": mamba, "*": attention, "-": 2 * hidden * ffn, "E": moe}
    layers = sum(per_kind[kind] + hidden for kind in pattern)  # + each block's pre-norm
    return layers + 2 * vocab * hidden + hidden


def test_nemotron_h_8b_to_4b():
    source = nemotron_h_config(hidden_size=4096, intermediate_size=21504, num_attention_heads=32,
                               mamba_num_heads=128, mamba_head_dim=64, pattern=NEMOTRON_H_PATTERN)
    result = describe_pruning(source, {"hidden_size": 3072, "intermediate_size": 12288, "mamba_num_heads": 112})
    pruned = result["config"]
    assert (pruned.hidden_size, pruned.intermediate_size, pruned.mamba_num_heads, pruned.mamba_head_dim) == \
        (3072, 12288, 112, 64)
    assert pruned.hybrid_override_pattern == NEMOTRON_H_PATTERN and pruned.n_groups == 8
    assert result["params_before"].total == closed_form_parameters(4096, 21504, 32, 128, 64, NEMOTRON_H_PATTERN)
    assert result["params_after"].total == closed_form_parameters(3072, 12288, 32, 112, 64, NEMOTRON_H_PATTERN)
    # The model cards' sizes: 8.1B and 4.49B.
    assert round(result["params_before"].total / 1e9, 1) == 8.1
    assert round(result["params_after"].total / 1e9, 2) == 4.49


def test_nemotron_nano_12b_v2_to_9b():
    source = nemotron_h_config(hidden_size=5120, intermediate_size=20480, num_attention_heads=40,
                               mamba_num_heads=128, mamba_head_dim=80, pattern=NANO_12B_PATTERN)
    result = describe_pruning(source, {"hidden_size": 4480, "intermediate_size": 15680,
                                       "drop_layers": NANO_DROPPED_LAYERS})
    pruned = result["config"]
    assert pruned.num_hidden_layers == 56 and pruned.hybrid_override_pattern == NANO_9B_PATTERN
    assert (pruned.hidden_size, pruned.intermediate_size, pruned.mamba_num_heads) == (4480, 15680, 128)
    assert result["params_before"].total == closed_form_parameters(5120, 20480, 40, 128, 80, NANO_12B_PATTERN)
    assert result["params_after"].total == closed_form_parameters(4480, 15680, 40, 128, 80, NANO_9B_PATTERN)
    # The model cards' sizes: 12.31B and 8.89B.
    assert round(result["params_before"].total / 1e9, 2) == 12.31
    assert round(result["params_after"].total / 1e9, 2) == 8.89


@pytest.mark.parametrize("target, message", [
    ({"mamba_num_heads": 100}, "multiple of the 8 Mamba groups"),
    ({"hidden_size": 5000, "mamba_num_heads": 256}, "larger than the source"),
])
def test_published_configs_refuse_impossible_mamba_targets(target, message):
    from minitron.errors import TargetError

    source = nemotron_h_config(hidden_size=4096, intermediate_size=21504, num_attention_heads=32,
                               mamba_num_heads=128, mamba_head_dim=64, pattern=NEMOTRON_H_PATTERN)
    with pytest.raises(TargetError, match=message):
        describe_pruning(source, target)


NANO_3_PATTERN = "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME"  # 23 Mamba, 23 MoE, 6 attention layers


def nemotron_3_nano_config():
    return AutoConfig.for_model(
        "nemotron_h", vocab_size=131072, hidden_size=2688, intermediate_size=1856,
        hybrid_override_pattern=NANO_3_PATTERN,
        num_attention_heads=32, num_key_value_heads=2, head_dim=128, mamba_num_heads=64, mamba_head_dim=64,
        ssm_state_size=128, n_groups=8, conv_kernel=4, use_conv_bias=True, mamba_proj_bias=False, use_bias=False,
        mlp_bias=False, n_routed_experts=128, n_shared_experts=1, num_experts_per_tok=6, moe_intermediate_size=1856,
        moe_shared_expert_intermediate_size=3712, n_group=1, topk_group=1, norm_topk_prob=True,
        routed_scaling_factor=2.5, tie_word_embeddings=False)


def test_nemotron_3_nano_30b_a3b_to_96_experts():
    result = describe_pruning(nemotron_3_nano_config(), {"num_experts": 96})
    before, after = result["params_before"], result["params_after"]
    nano = dict(kv_heads=2, expert_width=1856, shared_width=3712)
    assert before.total == closed_form_parameters(2688, 1856, 32, 64, 64, NANO_3_PATTERN, experts=128, **nano)
    assert after.total == closed_form_parameters(2688, 1856, 32, 64, 64, NANO_3_PATTERN, experts=96, **nano)
    # NVIDIA's card: "3.2B active (3.6B with embeddings), 31.6B total"; 3.2B counts the LM head, not the
    # input embedding (3.228B: Mamba, attention, routers, shared experts and 6 of 128 experts per MoE layer).
    input_embedding = 131072 * 2688
    assert (round(before.total / 1e9, 1), round(before.active / 1e9, 1)) == (31.6, 3.6)
    assert round((before.active - input_embedding) / 1e9, 1) == 3.2
    unused_experts = 23 * (128 - 6) * 2 * 2688 * 1856
    assert before.active == before.total - unused_experts
    assert before.active - after.active == 23 * 32 * 2688  # a token still uses 6 experts: only router rows go
    pruned = result["config"]
    assert (pruned.n_routed_experts, pruned.num_experts_per_tok, pruned.hybrid_override_pattern) == \
        (96, 6, NANO_3_PATTERN)


@pytest.mark.parametrize("target, message", [
    ({"num_experts": 4}, "fewer than the 6 experts every token is routed to"),
    ({"num_experts": 96, "moe_intermediate_size": 1850}, "multiple of 8"),
    ({"num_experts": 160}, "larger than the source"),
])
def test_nemotron_3_nano_refuses_impossible_expert_targets(target, message):
    from minitron.errors import TargetError

    with pytest.raises(TargetError, match=message):
        describe_pruning(nemotron_3_nano_config(), target)
