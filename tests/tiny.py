"""Tiny random models of every supported family and a tiny tokenizer, built in-process."""
from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

VOCAB_SIZE = 320
FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "nemotron", "granite"]
MOE_FAMILIES = ["qwen3_moe", "qwen2_moe", "mixtral", "olmoe", "granitemoe"]
FAMILIES += MOE_FAMILIES

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
    # Mixture-of-experts: 8 experts, 2 per token; Qwen's with one dense layer, qwen2_moe with its shared expert.
    "qwen3_moe": dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=64, mlp_only_layers=[1]),
    "qwen2_moe": dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=64, mlp_only_layers=[1],
                      shared_expert_intermediate_size=64, tie_word_embeddings=True),
    "mixtral": dict(num_local_experts=8, num_experts_per_tok=2, sliding_window=None),
    "olmoe": dict(num_experts=8, num_experts_per_tok=2, norm_topk_prob=True),
    "granitemoe": dict(num_local_experts=8, num_experts_per_tok=2, embedding_multiplier=4.0, residual_multiplier=0.5,
                       attention_multiplier=0.2, logits_scaling=2.0),
}


def tiny_config(family: str, **overrides):
    settings = {**_COMMON, **_EXTRA[family], **overrides}
    return AutoConfig.for_model(family, **settings)


def tiny_model(family: str, **overrides):
    """A random tiny model of `family` in eval mode, eager attention (exact and deterministic on CPU)."""
    config = tiny_config(family, **overrides)
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config)
    _randomize_norms_(model)
    return model.eval()


def _randomize_norms_(model) -> None:
    """Norm weights start at 1 (or 0); make them random so that channel slicing errors show up."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(torch.randn_like(param) * 0.3)


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
GENERIC_FAMILIES = ["olmo2", "smollm3"]


def tiny_generic_model(model_type: str):
    """A random tiny model of a family minitron has no adapter for."""
    settings = {k: v for k, v in _COMMON.items() if k != "head_dim"}  # both derive it: 48 / 6 = 8
    config = AutoConfig.for_model(model_type, **settings)
    config._attn_implementation = "eager"
    return AutoModelForCausalLM.from_config(config).eval()
