"""Hybrid Mamba-2 / attention / MLP / MoE stacks (NVIDIA Nemotron-H, Nemotron-Nano-v2, Nemotron 3; IBM Granite
4.0-H).

NemotronH's decoder layer is one pre-norm residual block `norm -> mixer`, where the mixer is a Mamba-2
mixer, attention, a squared-ReLU MLP or a MoE block, chosen per layer by `layers_block_type` (saved
configs may spell it `hybrid_override_pattern`, "M*-E"). Each kind has its own parameter names under
`mixer.`, so one table describes every kind; a layer simply lacks the others' parameters.

The MoE block (Nemotron 3 Nano 30B-A3B) is `mixer.gate` (a sigmoid router with a per-expert
`e_score_correction_bias`), `mixer.experts` (non-gated squared-ReLU experts, fused 3-D `up_proj` /
`down_proj`) and `mixer.shared_experts` (one always-active squared-ReLU MLP). Its sizes are
`n_routed_experts`, `moe_intermediate_size` and `moe_shared_expert_intermediate_size`.

Granite 4.0-H (granitemoehybrid) has two residual blocks per layer, like granitemoe: a `mamba` mixer or
`self_attn` (per `layer_types`), then granitemoe's routed experts (`block_sparse_moe`) plus an always-active
`shared_mlp`; with `num_local_experts=0` (Granite-4.0-H-Micro) only the shared MLP. Its multipliers
(embedding, residual, attention, logits) are scalars independent of every pruned size, as in granite; its
Mamba inner width is `mamba_expand x hidden_size`, rewritten after pruning (arch/mamba.py).
"""
from __future__ import annotations

from .base import (ArchAdapter, Axis, H, KEEP, llama_like_layer_params, optional_bias_params, scale_logits,
                   standard_global_params)
from .mamba import MambaLayout, mamba_cache_bytes, mamba_layer_params, rescale_gated_norms
from .moe import MoeSpec, moe_block_params

_NEMOTRON_H_MAMBA = MambaLayout()


def _has_moe_layers(config) -> bool:
    return "moe" in (getattr(config, "layers_block_type", None) or ())


_NEMOTRON_H_MOE = MoeSpec(block="mixer", router="gate", experts="experts", num_experts_key="n_routed_experts",
                          expert_width_key="moe_intermediate_size",
                          shared_width_key="moe_shared_expert_intermediate_size", shared_expert="mixer.shared_experts",
                          gated_experts=False, gated_shared_expert=False, routing_groups_key="n_group",
                          topk_group_key="topk_group", has_experts=_has_moe_layers)


def _nemotron_h_layer_params() -> dict[str, tuple[Axis, ...]]:
    attention_and_mlp = llama_like_layer_params(gated_mlp=False)
    for norm in ("input_layernorm", "post_attention_layernorm"):
        del attention_and_mlp[f"{norm}.weight"]
    attention_and_mlp |= optional_bias_params(attention_and_mlp)
    table = {name.replace("self_attn.", "mixer.").replace("mlp.", "mixer."): axes
             for name, axes in attention_and_mlp.items()}
    return {"norm.weight": (H,), **table, **mamba_layer_params(), **moe_block_params(_NEMOTRON_H_MOE)}


def _nemotron_h_unsupported(config) -> str | None:
    if _has_moe_layers(config) and getattr(config, "moe_latent_size", None) is not None:
        return ("this checkpoint's MoE layers route through a latent projection (moe_latent_size, LatentMoE as in "
                "Nemotron 3 Super), which minitron cannot prune yet; Nemotron 3 Nano's MoE layers (no latent), "
                "Mamba, attention and MLP layers work")
    return None


def _block_types(config) -> list[str]:
    """Each layer's kind (NemotronH's layers_block_type; Granite's layer_types, which its config also answers
    to as layers_block_type)."""
    return list(getattr(config, "layers_block_type", None) or ())


def _attention_layers(config) -> list[int]:
    """Only attention layers hold a KV cache; Mamba, MLP and MoE layers hold none."""
    return [index for index, kind in enumerate(_block_types(config)) if kind in ("full_attention", "attention")]


def _mamba_state_bytes(layout: MambaLayout):
    """The `state_bytes` hook of a hybrid: transformers' cache holds one conv and one SSM state per Mamba layer."""
    def state_bytes(config, batch: int, bytes_per_value: int) -> int:
        mamba_layers = sum(kind in ("linear_attention", "mamba") for kind in _block_types(config))
        return mamba_cache_bytes(layout, config, mamba_layers, batch, bytes_per_value)
    return state_bytes


NEMOTRON_H = ArchAdapter(
    model_type="nemotron_h",
    global_params={"model.embeddings.weight": (KEEP, H), "lm_head.weight": (KEEP, H), "model.norm_f.weight": (H,)},
    layer_params=_nemotron_h_layer_params(),
    mlp_down_proj="mixer.down_proj",
    attn_out_proj="mixer.o_proj",
    hidden_norms=("norm",),
    embed_path="model.embeddings",
    gated_mlp=False,
    mamba=_NEMOTRON_H_MAMBA,
    hybrid=True,
    fix_state=rescale_gated_norms(_NEMOTRON_H_MAMBA),
    unsupported_reason=_nemotron_h_unsupported,
    attention_layers=_attention_layers,
    state_bytes=_mamba_state_bytes(_NEMOTRON_H_MAMBA),
    moe=_NEMOTRON_H_MOE,
    notes="one mixer per layer (Mamba-2, attention, squared-ReLU MLP, MoE); MoE routing groups keep the same "
          "number of experts each; MoE with a latent projection (moe_latent_size) is not pruned yet",
)


_GRANITE_MAMBA = MambaLayout(num_heads_key="mamba_n_heads", head_dim_key="mamba_d_head", n_groups_key="mamba_n_groups",
                             state_size_key="mamba_d_state", conv_kernel_key="mamba_d_conv",
                             out_proj="mamba.out_proj", gated_norm_weight="mamba.norm.weight",
                             expand_key="mamba_expand")
_GRANITE_MOE = MoeSpec(block="block_sparse_moe", router="router", num_experts_key="num_local_experts",
                       expert_width_key="intermediate_size", shared_width_key="shared_intermediate_size",
                       shared_expert="shared_mlp", shared_down="output_linear", shared_gate_up="input_linear")


def _granitemoehybrid_layer_params() -> dict[str, tuple[Axis, ...]]:
    attention = {name: axes for name, axes in llama_like_layer_params().items() if not name.startswith("mlp.")}
    attention |= optional_bias_params(attention)  # attention_bias
    return attention | moe_block_params(_GRANITE_MOE) | mamba_layer_params(prefix="mamba.")


GRANITEMOEHYBRID = ArchAdapter(
    model_type="granitemoehybrid",
    global_params=standard_global_params(),
    layer_params=_granitemoehybrid_layer_params(),
    logit_transform=scale_logits,
    mamba=_GRANITE_MAMBA,
    hybrid=True,
    moe=_GRANITE_MOE,
    fix_state=rescale_gated_norms(_GRANITE_MAMBA),
    attention_layers=_attention_layers,
    state_bytes=_mamba_state_bytes(_GRANITE_MAMBA),
    notes="Mamba-2 or attention, then routed experts + a shared MLP in every layer; mamba_expand x hidden_size "
          "must stay Mamba heads x head dim",
)
