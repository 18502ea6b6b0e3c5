"""`config.model_type` -> adapter."""
from __future__ import annotations

from ..errors import SettingsError, UnsupportedArchitectureError
from .base import ArchAdapter
from .families import ADAPTERS

SUPPORTED_MODEL_TYPES = tuple(sorted(ADAPTERS))


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
    return ADAPTERS[model_type]
