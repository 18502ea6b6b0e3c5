"""Dry runs against NVIDIA's published hybrid compressions, from their configs alone (meta device, no download).

Nemotron-H 8B -> 4B (hidden 4096 -> 3072, FFN 21504 -> 12288, Mamba heads 128 -> 112, all else kept) and
Nemotron-Nano-12B-v2 -> 9B (hidden 5120 -> 4480, FFN 20480 -> 15680, layers 62 -> 56, Mamba heads kept).
The HF config.json files themselves are not in the searchable index, so every value below is taken from NVIDIA's
own code that loads those checkpoints (shapes must match, so the numbers are the checkpoints'):
  [MB]  NVIDIA-NeMo/Megatron-Bridge src/megatron/bridge/models/nemotronh/nemotron_h_provider.py
        (NemotronHModelProvider{8B,4B}, NemotronNanoModelProvider{12Bv2,9Bv2}: pattern, hidden, FFN,
        attention heads, kv_channels 128, num_query_groups 8, mamba heads / head dim / state 128 / groups 8)
  [MBT] NVIDIA-NeMo/Megatron-Bridge tests/unit_tests/models/nemotronh/test_nemotron_h_bridge.py
        (`nemotronh_8b_config_dict`, the 8B's config.json: vocab_size 131072, conv_kernel 4, use_conv_bias,
        use_bias / mlp_bias false, tie_word_embeddings false, attention_head_dim 128, num_key_value_heads 8)
  [MLM] NVIDIA/Megatron-LM examples/post_training/modelopt/conf/nvidia/{Nemotron-H-8B-Base-8K,
        Nemotron-H-4B-Instruct, NVIDIA-Nemotron-Nano-9B-v2}.sh (same sizes; --disable-bias-linear,
        --untie-embeddings-and-output-weights; the 9B's --padded-vocab-size 131072)
  [MIX] NVIDIA/Megatron-LM megatron/core/ssm/mamba_mixer.py (d_conv=4 default, which those conf scripts keep;
        asserts conv_bias and no linear bias)
Not found verbatim for the 4B and 12B: vocab_size (131072 there too is consistent with the published parameter
counts checked below, but no config.json copy was found) and conv_kernel ([MIX]'s default; third-party summaries
of the Nemotron Nano 2 paper, arXiv 2508.14444, quote a convolution window of 4 for the 12B).

Nemotron 3 Nano 30B-A3B's config (nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16) as published: the same values
in Megatron-Bridge's Nemotron3NanoProvider and in copies of its config.json in several public repositories.
"""
import pytest
from transformers import AutoConfig

from minitron.prune import describe_pruning

# Patterns: [MB] and [MLM] for all four; the 12B's counts (28 Mamba, 28 MLP, 6 attention) are its model card's.
NEMOTRON_H_PATTERN = "M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-"  # 8B and 4B, 52 layers
NANO_12B_PATTERN = "M-M-M-M*-M-M-M-M*-M-M-M-M*-M-M-M-M*-M-M-M-M*-M-M-M-M*-M-M-M-M-"  # 62 layers
NANO_9B_PATTERN = "M-M-M-MM-M-M-M*-M-M-M*-M-M-M-M*-M-M-M-M*-M-MM-M-M-M-M-M-"  # 56 layers
# One of the 7 sets of 12B layers whose removal leaves the 9B's pattern (each drops two attention, three MLP and
# one Mamba layer). NVIDIA does not say which layers it dropped in anything found; the pattern is what is tested.
NANO_DROPPED_LAYERS = [7, 8, 23, 24, 48, 52]
# vocab / tie / bias / conv: [MBT] for the 8B, [MLM] + [MIX] for the others (see the docstring for the gaps).
# KV heads 8 of 128 (num_query_groups, kv_channels), Mamba groups 8, state 128: [MB] and [MLM] for all four.
# head_dim is transformers' name; NVIDIA's remote-code config.json spells it attention_head_dim ([MBT]).
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
    # 8B: NemotronHModelProvider8B [MB]; 4B target: NemotronHModelProvider4B [MB] (the 4B card: "pruned and
    # distilled from Nemotron-H-8B-Base-8K"). Mamba head dim 64 is NemotronHModelProvider's default [MB].
    source = nemotron_h_config(hidden_size=4096, intermediate_size=21504, num_attention_heads=32,
                               mamba_num_heads=128, mamba_head_dim=64, pattern=NEMOTRON_H_PATTERN)
    result = describe_pruning(source, {"hidden_size": 3072, "intermediate_size": 12288, "mamba_num_heads": 112})
    pruned = result["config"]
    assert (pruned.hidden_size, pruned.intermediate_size, pruned.mamba_num_heads, pruned.mamba_head_dim) == \
        (3072, 12288, 112, 64)
    assert pruned.hybrid_override_pattern == NEMOTRON_H_PATTERN and pruned.n_groups == 8
    assert result["params_before"].total == closed_form_parameters(4096, 21504, 32, 128, 64, NEMOTRON_H_PATTERN)
    assert result["params_after"].total == closed_form_parameters(3072, 12288, 32, 112, 64, NEMOTRON_H_PATTERN)
    # No exact published count was found: the 4B card says "This model has 4B of model parameters" and the Hub
    # labels the 8B models "8B".
    # The 4B's two bf16 shards on the Hub (4.99 GB + 3.98 GB, 2 bytes a parameter) put it in [4.48B, 4.49B).
    assert round(result["params_before"].total / 1e9) == 8
    assert 4.48e9 <= result["params_after"].total < 4.49e9


def test_nemotron_nano_12b_v2_to_9b():
    # 12B: NemotronNanoModelProvider12Bv2 [MB]; 9B target: NemotronNanoModelProvider9Bv2 [MB] and
    # NVIDIA-Nemotron-Nano-9B-v2.sh [MLM]: 128 Mamba heads of 80 and 40 attention heads in both.
    source = nemotron_h_config(hidden_size=5120, intermediate_size=20480, num_attention_heads=40,
                               mamba_num_heads=128, mamba_head_dim=80, pattern=NANO_12B_PATTERN)
    result = describe_pruning(source, {"hidden_size": 4480, "intermediate_size": 15680,
                                       "drop_layers": NANO_DROPPED_LAYERS})
    pruned = result["config"]
    assert pruned.num_hidden_layers == 56 and pruned.hybrid_override_pattern == NANO_9B_PATTERN
    assert (pruned.hidden_size, pruned.intermediate_size, pruned.mamba_num_heads) == (4480, 15680, 128)
    assert result["params_before"].total == closed_form_parameters(5120, 20480, 40, 128, 80, NANO_12B_PATTERN)
    assert result["params_after"].total == closed_form_parameters(4480, 15680, 40, 128, 80, NANO_9B_PATTERN)
    # 12.31B: the NVIDIA-Nemotron-Nano-12B-v2-Base model card ("Number of model parameters: 12.31B").
    # 8.89B: the Hub's safetensors count for NVIDIA-Nemotron-Nano-9B-v2 as quoted by third-party listings; no
    # NVIDIA page stating it was found.
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
