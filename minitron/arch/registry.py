"""`config.model_type` -> adapter."""
from __future__ import annotations

import weakref

import torch
from torch import nn

from ..errors import SettingsError, UnsupportedArchitectureError
from .base import ArchAdapter
from .families import ADAPTERS

SUPPORTED_MODEL_TYPES = tuple(sorted(ADAPTERS))
_GENERIC: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def get_adapter(model_or_config) -> ArchAdapter:
    """The adapter for a model or config; a clear error listing the supported families otherwise."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise SettingsError(f"expected a Hugging Face causal LM or its config, got {type(model_or_config).__name__}; "
                            "load one with minitron.load_model(...)")
    if model_type not in ADAPTERS:
        raise UnsupportedArchitectureError(
            f"model_type {model_type!r} is not supported yet. Supported: {', '.join(SUPPORTED_MODEL_TYPES)}. "
            "A new family needs one adapter table in minitron/arch/families.py."
        )
    adapter = ADAPTERS[model_type]
    reason = adapter.unsupported_reason(config) if adapter.unsupported_reason is not None else None
    if reason:
        raise UnsupportedArchitectureError(f"model_type {model_type!r}: {reason}")
    return adapter


def auto_model_class(config):
    """The Auto class that builds this config's model: AutoModelForCausalLM, or for a multimodal checkpoint
    that transformers files only under image-text-to-text (Qwen3-VL), AutoModelForImageTextToText."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)
    model_type = getattr(config, "model_type", None)
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        return AutoModelForImageTextToText
    return AutoModelForCausalLM


def logits_adapter(model: nn.Module) -> ArchAdapter:
    """What distillation on logits needs (base model, LM head, decoder layers) for any causal LM.

    A supported family gets its own adapter. Any other `AutoModelForCausalLM` gets one read from the
    model itself (`get_decoder`, `get_output_embeddings`): enough for logit losses, validation and
    fine-tuning, but it knows no pruning axes. `check_logits_adapter` verifies it once before training.
    """
    model_type = getattr(model.config, "model_type", None)
    if model_type in ADAPTERS:
        return ADAPTERS[model_type]
    if model not in _GENERIC:  # read once per model: the training step asks for it on every micro-batch
        _GENERIC[model] = _generic_adapter(model, model_type)
    return _GENERIC[model]


def _generic_adapter(model: nn.Module, model_type: str | None) -> ArchAdapter:
    names = {id(module): name for name, module in model.named_modules()}
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    if decoder is None or head is None or id(decoder) not in names or id(head) not in names:
        raise UnsupportedArchitectureError(
            f"model_type {model_type!r}: its decoder or LM head cannot be found, so it cannot be trained here")
    base_path = names[id(decoder)]
    return ArchAdapter(model_type=model_type, global_params={}, layer_params={}, base_model_path=base_path,
                       lm_head_path=names[id(head)], layers_path=f"{base_path}.layers",
                       embed_path=names.get(id(model.get_input_embeddings()), "model.embed_tokens"))


@torch.no_grad()
def check_logits_adapter(model: nn.Module) -> None:
    """Refuse a family without an adapter whose logits are not lm_head(final hidden state).

    Distillation computes logits from the base model's last hidden state, chunk by chunk; a family that
    scales or caps its logits (as Gemma and Granite do) needs those quirks in an adapter.
    """
    if getattr(model.config, "model_type", None) in ADAPTERS:
        return
    adapter = logits_adapter(model)
    device = next(model.parameters()).device
    input_ids = torch.arange(8, device=device).unsqueeze(0) % model.config.vocab_size
    was_training = model.training
    model.eval()
    expected = model(input_ids=input_ids, use_cache=False).logits.float()
    hidden = adapter.base_model(model)(input_ids=input_ids, use_cache=False).last_hidden_state
    computed = adapter.logits_from_hidden(model, hidden).float()
    model.train(was_training)
    if not torch.allclose(computed, expected, rtol=1e-3, atol=1e-3 * float(expected.abs().max()) + 1e-5):
        raise UnsupportedArchitectureError(
            f"model_type {model.config.model_type!r} is not supported yet for distillation: its logits are not "
            "the LM head of the last hidden state (a scale or soft cap?), so it needs an adapter in "
            "minitron/arch/families.py")
