"""Tiny random models of every supported family and a tiny tokenizer, built in-process."""
from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from minitron.arch import auto_model_class

VOCAB_SIZE = 320
FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "nemotron", "granite",
            "smollm3", "olmo2", "olmo3", "gemma3", "qwen3_vl", "nemotron_h", "falcon_h1"]
# Multimodal checkpoints: the language model (sizes as above) inside, beside a tiny vision tower.
MULTIMODAL = {
    "gemma3": dict(vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, image_size=28, patch_size=14),
                   mm_tokens_per_image=4, image_token_index=5, boi_token_index=6, eoi_token_index=7),
    "qwen3_vl": dict(vision_config=dict(depth=2, hidden_size=16, intermediate_size=32, num_heads=2,
                                        out_hidden_size=48, deepstack_visual_indexes=[0, 1],
                                        num_position_embeddings=16, patch_size=4),
                     image_token_id=5, video_token_id=6, vision_start_token_id=7, vision_end_token_id=8),
}
MOE_FAMILIES = ["qwen3_moe", "qwen2_moe", "mixtral", "olmoe", "granitemoe", "nemotron_h_moe", "gpt_oss",
                "granitemoehybrid"]
FAMILIES += MOE_FAMILIES
# Grid ids that are another configuration of a model_type (the grid is keyed by family id, not model_type).
VARIANTS = {"nemotron_h_moe": "nemotron_h"}
# Mamba-2 layers among attention, or beside it (falcon_h1): tests/test_hybrid.py.
HYBRID_FAMILIES = ["nemotron_h", "granitemoehybrid", "falcon_h1"]

_COMMON = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=48,
    intermediate_size=64,
    num_attention_heads=6,
    num_key_value_heads=2,
    head_dim=8,
    num_hidden_layers=4,
    max_position_embeddings=128,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

# Family quirks switched on so that tests exercise them (peft-style: one table, every family).
_EXTRA = {
    "llama": dict(tie_word_embeddings=False),
    "mistral": dict(sliding_window=None),
    "qwen2": dict(tie_word_embeddings=True),
    "qwen3": dict(),
    "gemma2": dict(attn_logit_softcapping=50.0, final_logit_softcapping=30.0, sliding_window=8,
                   query_pre_attn_scalar=8, layer_types=["sliding_attention", "full_attention"] * 2),
    "gemma3_text": dict(sliding_window=8, query_pre_attn_scalar=8, final_logit_softcapping=30.0,
                        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]),
    "phi3": dict(),
    "nemotron": dict(partial_rotary_factor=0.5),
    "granite": dict(embedding_multiplier=4.0, residual_multiplier=0.5, attention_multiplier=0.2,
                    logits_scaling=2.0),
    "smollm3": dict(no_rope_layers=[1, 0, 1, 1]),  # 0 = this layer has no RoPE
    "olmo2": dict(),
    "olmo3": dict(sliding_window=8),  # layer_types: three sliding layers, then a full one
    "gemma3": dict(sliding_window=8, query_pre_attn_scalar=8, final_logit_softcapping=30.0,
                   layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]),
    "qwen3_vl": dict(rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 1, 1])),
    # Hybrid: Mamba-2, attention, MLP, Mamba (layer 1 is attention, as the head tests expect). Two Mamba
    # groups of four heads, and chunks of 8 so that a 16-token batch crosses a chunk boundary.
    "nemotron_h": dict(layers_block_type=["linear_attention", "full_attention", "mlp", "linear_attention"],
                       mamba_num_heads=8, mamba_head_dim=4, n_groups=2, ssm_state_size=8, conv_kernel=4,
                       chunk_size=8, use_bias=True, mlp_bias=True),
    # Nemotron 3 (Nano 30B-A3B) in small: Mamba, attention (layer 1, as above), MoE, MLP. Sigmoid routing
    # within the best one of two groups of four experts, a shared expert, routed_scaling_factor as published.
    "nemotron_h_moe": dict(layers_block_type=["linear_attention", "full_attention", "moe", "mlp"],
                           mamba_num_heads=8, mamba_head_dim=4, n_groups=2, ssm_state_size=8, conv_kernel=4,
                           chunk_size=8, use_bias=True, mlp_bias=True, n_routed_experts=8, num_experts_per_tok=2,
                           moe_intermediate_size=64, moe_shared_expert_intermediate_size=64, n_group=2,
                           topk_group=1, routed_scaling_factor=2.5, norm_topk_prob=True),
    # Mixture-of-experts: 8 experts, 2 per token; Qwen's with one dense layer, qwen2_moe with its shared expert.
    "qwen3_moe": dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=64, mlp_only_layers=[1]),
    "qwen2_moe": dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=64, mlp_only_layers=[1],
                      shared_expert_intermediate_size=64, tie_word_embeddings=True),
    "mixtral": dict(num_local_experts=8, num_experts_per_tok=2, sliding_window=None),
    "olmoe": dict(num_experts=8, num_experts_per_tok=2, norm_topk_prob=True),
    "granitemoe": dict(num_local_experts=8, num_experts_per_tok=2, embedding_multiplier=4.0, residual_multiplier=0.5,
                       attention_multiplier=0.2, logits_scaling=2.0),
    # Sliding (8 tokens) and full layers alternate; YaRN stretching 32 original positions to the 128. At the
    # default init (std 0.02) a few experts take most tokens; wider weights route the tiny batches varied.
    "gpt_oss": dict(num_local_experts=8, num_experts_per_tok=2, sliding_window=8, initializer_range=0.08,
                    rope_parameters=dict(rope_type="yarn", rope_theta=150000.0, factor=4.0, beta_fast=32.0,
                                         beta_slow=1.0, truncate=False, original_max_position_embeddings=32)),
    # Granite 4.0-H: Mamba-2 and attention alternating (layer 1 is attention, as for nemotron_h; two attention
    # layers, because transformers cannot generate with the cache of a stack left without any); every layer has
    # 8 experts and a shared MLP. Mamba width 8 x 12 = 96 = mamba_expand 2 x 48, and still a multiple (3 x) of
    # the grid's hidden_size 32. Two groups of four heads, chunks of 8 as for nemotron_h; RoPE switched on.
    "granitemoehybrid": dict(layer_types=["mamba", "attention", "mamba", "attention"], mamba_n_heads=8, mamba_d_head=12,
                             mamba_n_groups=2, mamba_d_state=8, mamba_d_conv=4, mamba_expand=2, mamba_chunk_size=8,
                             num_local_experts=8, num_experts_per_tok=2, shared_intermediate_size=64,
                             position_embedding_type="rope", embedding_multiplier=4.0, residual_multiplier=0.5,
                             attention_multiplier=0.2, logits_scaling=2.0),
    # Falcon-H1: attention and Mamba-2 in every layer. Mamba width left to mamba_expand 2 x hidden 48 = 96
    # (mamba_d_ssm None: pruning must write it out), 8 heads of 12 in two groups; the gated norm on, before
    # the gate (transformers' default; published checkpoints have none); every bias on; each muP multiplier
    # different, the five in_proj segments' included, so that a segment sliced with another's rows shows.
    "falcon_h1": dict(mamba_d_ssm=None, mamba_n_heads=8, mamba_d_head=12, mamba_n_groups=2, mamba_d_state=8,
                      mamba_d_conv=4, mamba_expand=2, mamba_chunk_size=8, mamba_rms_norm=True,
                      mamba_norm_before_gate=True, mamba_proj_bias=True, projectors_bias=True, attention_bias=True,
                      mlp_bias=True, embedding_multiplier=4.0, lm_head_multiplier=0.5, key_multiplier=0.7,
                      attention_in_multiplier=1.3, attention_out_multiplier=0.9, ssm_in_multiplier=1.25,
                      ssm_out_multiplier=0.6, mlp_multipliers=[0.9, 0.6], ssm_multipliers=[0.35, 2.0, 0.5, 1.5, 0.4]),
}


def tiny_config(family: str, **overrides):
    """A tiny config; for a multimodal family the sizes and overrides are its language model's."""
    settings = {**_COMMON, **_EXTRA[family], **overrides}
    if family in MULTIMODAL:
        return AutoConfig.for_model(family, text_config=settings, **MULTIMODAL[family])
    return AutoConfig.for_model(VARIANTS.get(family, family), **settings)


def tiny_model(family: str, **overrides):
    """A random tiny model of `family` in eval mode, eager attention (exact and deterministic on CPU)."""
    config = tiny_config(family, **overrides)
    config._attn_implementation = "eager"
    model = auto_model_class(config).from_config(config)
    _randomize_norms_(model)
    return model.eval()


def _randomize_norms_(model) -> None:
    """Norm weights (and Mamba's per-head D, gpt_oss's attention sinks) start at 1, 0 or near 0, a router's
    expert correction bias and gpt_oss's expert biases at 0; make them random so slicing errors show up. The
    biases stay small, like the router's scores' spread and the weights' scale: larger, they would add the
    same vector to every token and route all tokens alike."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith((".D", "sinks")):  # Mamba's D: nemotron_h's mixer.D, granite's mamba.D
                param.add_(torch.randn_like(param) * 0.3)
            elif name.endswith("proj_bias"):
                param.normal_(std=0.02)
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buffer.add_(torch.randn_like(buffer) * 0.02)


_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "def hello(name):\n    return f'Hello, {name}!'",
    "Pruning removes neurons, heads, channels and layers; distillation recovers accuracy.",
    "import torch\nx = torch.zeros(3)\nprint(x.sum())",
] * 20


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with at most VOCAB_SIZE tokens, trained here on a few sentences."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


# Causal LMs without a minitron adapter: everything but importance, pruning and hidden-state losses works.
GENERIC_FAMILIES = ["olmo", "starcoder2"]


def tiny_generic_model(model_type: str):
    """A random tiny model of a family minitron has no adapter for."""
    settings = {k: v for k, v in _COMMON.items() if k != "head_dim"}  # both derive it: 48 / 6 = 8
    config = AutoConfig.for_model(model_type, **settings)
    config._attn_implementation = "eager"
    return AutoModelForCausalLM.from_config(config).eval()
