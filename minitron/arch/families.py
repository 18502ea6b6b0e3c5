"""One adapter per supported family. This file and `base.py` are the only places that know HF names."""
from __future__ import annotations

from dataclasses import replace

from .base import (GU, Q, QKV, ArchAdapter, H, M, llama_like_layer_params, optional_bias_params,
                   rescale_scaled_embedding, scale_logits, soft_cap_logits, standard_global_params,
                   language_model_of, whole_projection_qk_norms)
from .falcon_h1 import FALCON_H1
from .hybrid import GRANITEMOEHYBRID, NEMOTRON_H
from .moe import MOE_ADAPTERS


def _llama_like(model_type: str, logit_transform=None, **layer_kwargs) -> ArchAdapter:
    layer = llama_like_layer_params(**layer_kwargs)
    layer |= optional_bias_params(layer)
    return ArchAdapter(model_type=model_type, global_params=standard_global_params(), layer_params=layer,
                       logit_transform=logit_transform)


LLAMA = _llama_like("llama")
MISTRAL = _llama_like("mistral")
QWEN2 = _llama_like("qwen2", attention_bias=True)
QWEN3 = _llama_like("qwen3", qk_norm=True)
# SmolLM 3's per-layer no-RoPE list (`no_rope_layers`) is subset with the kept layers by layer_config.
SMOLLM3 = _llama_like("smollm3")
# Granite's multipliers are scalars independent of every pruned size.
GRANITE = _llama_like("granite", logit_transform=scale_logits)

_GEMMA_NORMS = ("pre_feedforward_layernorm", "post_feedforward_layernorm")


def _gemma(model_type: str, qk_norm: bool) -> ArchAdapter:
    layer = llama_like_layer_params(qk_norm=qk_norm, extra_norms=_GEMMA_NORMS)
    layer |= optional_bias_params(layer)
    return ArchAdapter(
        model_type=model_type,
        global_params=standard_global_params(),
        layer_params=layer,
        # In Gemma post_attention_layernorm normalises the attention *output*; the MLP is fed by
        # pre_feedforward_layernorm.
        hidden_norms=("input_layernorm", "pre_feedforward_layernorm"),
        fix_state=rescale_scaled_embedding,
        logit_transform=soft_cap_logits,
        notes="embedding scaled by sqrt(hidden_size); soft-capping and query_pre_attn_scalar are size-free",
    )


GEMMA2 = _gemma("gemma2", qk_norm=False)
GEMMA3_TEXT = _gemma("gemma3_text", qk_norm=True)

def _olmo2(model_type: str) -> ArchAdapter:
    """OLMo 2 / 3: no norm before attention or the MLP; post_attention_layernorm and
    post_feedforward_layernorm normalise their *outputs* before the residual add."""
    layer = llama_like_layer_params(extra_norms=("post_feedforward_layernorm",))
    del layer["input_layernorm.weight"]
    layer |= optional_bias_params(layer) | whole_projection_qk_norms()
    return ArchAdapter(
        model_type=model_type,
        global_params=standard_global_params(),
        layer_params=layer,
        hidden_norms=(),
        hidden_inputs=("self_attn.q_proj", "mlp.up_proj"),
        notes="q/k norms over the whole projection (sliced with the heads, their RMS spans the kept heads); "
              "post-norms on the attention and MLP outputs",
    )


OLMO2 = _olmo2("olmo2")
OLMO3 = _olmo2("olmo3")

PHI3 = ArchAdapter(
    model_type="phi3",
    global_params=standard_global_params(),
    layer_params={
        "self_attn.qkv_proj.weight": (QKV, H),
        "self_attn.o_proj.weight": (H, Q),
        "mlp.gate_up_proj.weight": (GU, H),
        "mlp.down_proj.weight": (H, M),
        "input_layernorm.weight": (H,),
        "post_attention_layernorm.weight": (H,),
    },
)

NEMOTRON = ArchAdapter(
    model_type="nemotron",
    global_params=standard_global_params(norm_bias=True),
    layer_params=llama_like_layer_params(norm_bias=True, gated_mlp=False)
    | optional_bias_params(llama_like_layer_params(gated_mlp=False)),
    gated_mlp=False,
    notes="LayerNorm1P with bias; non-gated squared-ReLU MLP; partial rotary (head_dim is kept)",
)

# Multimodal checkpoints: the language model is pruned, the vision side is copied whole.
# Gemma3ForConditionalGeneration, unlike Gemma3ForCausalLM, applies no final logit soft-capping.
GEMMA3 = replace(language_model_of(GEMMA3_TEXT, "gemma3", ("model.vision_tower.", "model.multi_modal_projector.")),
                 logit_transform=None)
QWEN3_VL = language_model_of(QWEN3, "qwen3_vl", ("model.visual.",))

ADAPTERS = {a.model_type: a for a in
            (LLAMA, MISTRAL, QWEN2, QWEN3, GEMMA2, GEMMA3_TEXT, PHI3, NEMOTRON, GRANITE,
              SMOLLM3, OLMO2, OLMO3, GEMMA3, QWEN3_VL, NEMOTRON_H, GRANITEMOEHYBRID, FALCON_H1)}
ADAPTERS |= MOE_ADAPTERS
