"""TII Falcon-H1: attention and a Mamba-2 mixer side by side in every decoder layer, then a gated MLP.

Each layer computes `h + ssm_out x mamba(ssm_in x n) + attn_out x self_attn(attn_in x n)` with
`n = input_layernorm(h)`, then `+ down x feed_forward(pre_ff_layernorm(.))`: every layer holds a KV cache
and a Mamba state (transformers' "hybrid" cache layers). The muP multipliers are scalars (embedding,
lm_head, key, attention in/out, SSM in/out, MLP gate/down) independent of every pruned size, except
`ssm_multipliers`: five scalars, one per in_proj segment [z | x | B | C | dt]. transformers turns them into
a per-row `mup_vector` buffer of in_proj's output size, not saved but rebuilt from the config at load, so
the pruned model's buffer follows its pruned in_proj rows segment by segment.

The Mamba inner width is `mamba_d_ssm`, or mamba_expand x hidden_size when that is None: the pruned config
always writes `mamba_d_ssm` out (arch/mamba.py), so pruning hidden_size never resizes the mixers. The
optional gated norm (`mamba_rms_norm`) is kept at its scale by the same rescale as NemotronH's, whether it
normalises before (`mamba_norm_before_gate`) or after the gate.
"""
from __future__ import annotations

from .base import ArchAdapter, Axis, H, KEEP, llama_like_layer_params, optional_bias_params
from .mamba import MambaLayout, mamba_cache_bytes, mamba_layer_params, rescale_gated_norms

_FALCON_H1_MAMBA = MambaLayout(num_heads_key="mamba_n_heads", head_dim_key="mamba_d_head",
                               n_groups_key="mamba_n_groups", state_size_key="mamba_d_state",
                               conv_kernel_key="mamba_d_conv", out_proj="mamba.out_proj",
                               gated_norm_weight="mamba.norm.weight", inner_width_key="mamba_d_ssm")


def _falcon_h1_layer_params() -> dict[str, tuple[Axis, ...]]:
    dense = llama_like_layer_params(extra_norms=("pre_ff_layernorm",))
    del dense["post_attention_layernorm.weight"]
    dense |= optional_bias_params(dense)  # attention_bias, mlp_bias
    dense = {name.replace("mlp.", "feed_forward."): axes for name, axes in dense.items()}
    # mamba_proj_bias switches on in_proj's bias, projectors_bias out_proj's: absent ones are never looked up.
    return dense | mamba_layer_params(prefix="mamba.")


def multiply_logits(logits, config):
    """Falcon-H1 multiplies lm_head's output by lm_head_multiplier (a size-free muP scalar)."""
    return logits * config.lm_head_multiplier


def _falcon_h1_state_bytes(config, batch: int, bytes_per_value: int) -> int:
    """Every layer holds a Mamba state beside its KV cache."""
    return mamba_cache_bytes(_FALCON_H1_MAMBA, config, config.num_hidden_layers, batch, bytes_per_value)


FALCON_H1 = ArchAdapter(
    model_type="falcon_h1",
    global_params={"model.embed_tokens.weight": (KEEP, H), "lm_head.weight": (KEEP, H),
                   "model.final_layernorm.weight": (H,)},
    layer_params=_falcon_h1_layer_params(),
    mlp_down_proj="feed_forward.down_proj",
    hidden_norms=("input_layernorm", "pre_ff_layernorm"),
    logit_transform=multiply_logits,
    mamba=_FALCON_H1_MAMBA,
    fix_state=rescale_gated_norms(_FALCON_H1_MAMBA),
    state_bytes=_falcon_h1_state_bytes,
    layer_returns_tuple=True,
    notes="attention and Mamba-2 in parallel in every layer; muP multipliers are per-size-free scalars "
          "(ssm_multipliers per in_proj segment); mamba_d_ssm written out after pruning",
)
