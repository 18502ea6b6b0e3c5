"""Architecture adapters: the only package that knows Hugging Face module and parameter names."""
from .base import ArchAdapter, Axis, text_config
from .registry import SUPPORTED_MODEL_TYPES, auto_model_class, check_logits_adapter, get_adapter, logits_adapter

__all__ = ["ArchAdapter", "Axis", "SUPPORTED_MODEL_TYPES", "auto_model_class", "check_logits_adapter", "get_adapter",
           "logits_adapter", "text_config"]
