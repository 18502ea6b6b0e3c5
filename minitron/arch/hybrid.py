"""Hybrid Mamba-2 / attention / MLP / MoE stacks (NVIDIA Nemotron-H, Nemotron-Nano-v2, Nemotron 3).

NemotronH's decoder layer is one pre-norm residual block `norm -> mixer`, where the mixer is a Mamba-2
mixer, attention, a squared-ReLU MLP or a MoE block, chosen per layer by `layers_block_type` (saved
configs may spell it `hybrid_override_pattern`, "M*-E"). Each kind has its own parameter names under
`mixer.`, so one table describes every kind; a layer simply lacks the others' parameters.

The MoE block (Nemotron 3 Nano 30B-A3B) is `mixer.gate` (a sigmoid router with a per-expert
`e_score_correction_bias`), `mixer.experts` (non-gated squared-ReLU experts, fused 3-D `up_proj` /
`down_proj`) and `mixer.shared_experts` (one always-active squared-ReLU MLP). Its sizes are
`n_routed_experts`, `moe_intermediate_size` and `moe_shared_expert_intermediate_size`.
"""
from __future__ import annotations

from .base import ArchAdapter, Axis, H, KEEP, llama_like_layer_params, optional_bias_params
from .mamba import MambaLayout, mamba_cache_bytes, mamba_layer_params, rescale_gated_norms
from .moe import MoeSpec, moe_block_params

_NEMOTRON_H_MAMBA = MambaLayout()


def _has_moe_layers(config) -> bool:
    return "moe" in (getattr(config, "layers_block_type", None) or ())


_NEMOTRON_H_MOE = MoeSpec(block="mixer", router="gate", experts="experts", num_experts_key="n_routed_experts",
                          expert_width_key="moe_intermediate_size",
                          shared_width_key="moe_shared_expert_intermediate_size", shared_expert="shared_experts",
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
    return list(getattr(config, "layers_block_type", None) or ())


def _nemotron_h_attention_layers(config) -> list[int]:
    """Only attention layers hold a KV cache; Mamba, MLP and MoE layers hold none."""
    return [index for index, kind in enumerate(_block_types(config)) if kind in ("full_attention", "attention")]


def _nemotron_h_state_bytes(config, batch: int, bytes_per_value: int) -> int:
    mamba_layers = sum(kind in ("linear_attention", "mamba") for kind in _block_types(config))
    return mamba_cache_bytes(_NEMOTRON_H_MAMBA, config, mamba_layers, batch, bytes_per_value)


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
    attention_layers=_nemotron_h_attention_layers,
    state_bytes=_nemotron_h_state_bytes,
    moe=_NEMOTRON_H_MOE,
    notes="one mixer per layer (Mamba-2, attention, squared-ReLU MLP, MoE); MoE routing groups keep the same "
          "number of experts each; MoE with a latent projection (moe_latent_size) is not pruned yet",
)
