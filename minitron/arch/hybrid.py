"""Hybrid Mamba-2 / attention / MLP stacks (NVIDIA Nemotron-H, Nemotron-Nano-v2; IBM Granite 4.0-H).

NemotronH's decoder layer is one pre-norm residual block `norm -> mixer`, where the mixer is a Mamba-2
mixer, attention, a squared-ReLU MLP or a MoE block, chosen per layer by `layers_block_type` (saved
configs may spell it `hybrid_override_pattern`, "M*-E"). Each kind has its own parameter names under
`mixer.`, so one table describes every kind; a layer simply lacks the others' parameters.

Granite 4.0-H (granitemoehybrid) has two residual blocks per layer, like granitemoe: a `mamba` mixer or
`self_attn` (per `layer_types`), then granitemoe's routed experts (`block_sparse_moe`) plus an always-active
`shared_mlp`; with `num_local_experts=0` (Granite-4.0-H-Micro) only the shared MLP. Its multipliers
(embedding, residual, attention, logits) are scalars independent of every pruned size, as in granite; its
Mamba inner width is `mamba_expand x hidden_size`, rewritten after pruning (arch/mamba.py).
"""
from __future__ import annotations

from .base import (ArchAdapter, Axis, H, KEEP, llama_like_layer_params, optional_bias_params, scale_logits,
                   standard_global_params)
from .mamba import MambaLayout, mamba_layer_params, rescale_gated_norms
from .moe import MoeSpec, routed_expert_params

_NEMOTRON_H_MAMBA = MambaLayout()


def _nemotron_h_layer_params() -> dict[str, tuple[Axis, ...]]:
    attention_and_mlp = llama_like_layer_params(gated_mlp=False)
    for norm in ("input_layernorm", "post_attention_layernorm"):
        del attention_and_mlp[f"{norm}.weight"]
    attention_and_mlp |= optional_bias_params(attention_and_mlp)
    table = {name.replace("self_attn.", "mixer.").replace("mlp.", "mixer."): axes
             for name, axes in attention_and_mlp.items()}
    return {"norm.weight": (H,), **table, **mamba_layer_params()}


def _nemotron_h_unsupported(config) -> str | None:
    kinds = set(getattr(config, "layers_block_type", None) or ())
    if "moe" in kinds:
        return ("this checkpoint has mixture-of-experts layers ('E' in hybrid_override_pattern), which minitron "
                "cannot prune in NemotronH yet; Mamba / attention / MLP stacks (Nemotron-H, Nemotron-Nano-v2) work")
    return None


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
    notes="one mixer per layer (Mamba-2, attention, squared-ReLU MLP); MoE layers ('E') are not pruned yet",
)


_GRANITE_MAMBA = MambaLayout(num_heads_key="mamba_n_heads", head_dim_key="mamba_d_head", n_groups_key="mamba_n_groups",
                             state_size_key="mamba_d_state", out_proj="mamba.out_proj",
                             gated_norm_weight="mamba.norm.weight", expand_key="mamba_expand")
_GRANITE_MOE = MoeSpec(block="block_sparse_moe", router="router", num_experts_key="num_local_experts",
                       expert_width_key="intermediate_size", shared_width_key="shared_intermediate_size",
                       shared_expert="shared_mlp", shared_down="output_linear")


def _granitemoehybrid_layer_params() -> dict[str, tuple[Axis, ...]]:
    attention = {name: axes for name, axes in llama_like_layer_params().items() if not name.startswith("mlp.")}
    attention |= optional_bias_params(attention)  # attention_bias
    shared = {"shared_mlp.input_linear.weight": (Axis.SHARED_GATE_UP, H),  # [gate; up]
              "shared_mlp.output_linear.weight": (H, Axis.SHARED_MLP)}
    return attention | routed_expert_params(_GRANITE_MOE) | shared | mamba_layer_params(prefix="mamba.")


GRANITEMOEHYBRID = ArchAdapter(
    model_type="granitemoehybrid",
    global_params=standard_global_params(),
    layer_params=_granitemoehybrid_layer_params(),
    logit_transform=scale_logits,
    mamba=_GRANITE_MAMBA,
    hybrid=True,
    moe=_GRANITE_MOE,
    fix_state=rescale_gated_norms(_GRANITE_MAMBA),
    notes="Mamba-2 or attention, then routed experts + a shared MLP in every layer; mamba_expand x hidden_size "
          "must stay Mamba heads x head dim",
)
