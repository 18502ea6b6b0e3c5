"""Dry runs against NVIDIA's published hybrid compressions, from their configs alone (meta device, no download).

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
                           head_dim=128, groups=8, state=128, kernel=4) -> int:
    """Parameters counted by hand from the architecture, independently of transformers."""
    inner, bc = mamba_heads * mamba_head_dim, 2 * groups * state
    mamba = hidden * (2 * inner + bc + mamba_heads) + (inner + bc) * (kernel + 1) + 3 * mamba_heads + inner \
        + inner * hidden
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    per_kind = {"M": mamba, "*": attention, "-": 2 * hidden * ffn}
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
