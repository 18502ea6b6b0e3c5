"""Parameter counts, from a model or from a config alone (built on the meta device, no weights)."""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

from accelerate import init_empty_weights
from torch import nn
from transformers import AutoModelForCausalLM

from .arch import get_adapter

try:  # skips random initialisation, which is slow even on the meta device (about 5x for counts)
    from transformers.initialization import no_init_weights
except ImportError:  # older transformers: initialise, just slower
    no_init_weights = contextlib.nullcontext


@dataclass(frozen=True)
class ParamCount:
    total: int
    embedding: int
    non_embedding: int

    def as_dict(self) -> dict:
        return asdict(self)


def count_parameters(model: nn.Module) -> ParamCount:
    """Unique parameters (tied embeddings count once); embedding = token embedding + untied LM head."""
    adapter = get_adapter(model)
    unique = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in unique.values())
    named = dict(model.named_parameters(remove_duplicate=False))
    embedding_ids = {id(named[name]) for name in adapter.embedding_param_names() if name in named}
    embedding = sum(unique[i].numel() for i in embedding_ids)
    return ParamCount(total=total, embedding=embedding, non_embedding=total - embedding)


def model_from_config_on_meta(config) -> nn.Module:
    """The model a config describes, with parameters on the meta device: sizes without memory."""
    with init_empty_weights(), no_init_weights():
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()  # meta initialisation skips tying; tied embeddings must count once
    return model


def count_parameters_from_config(config) -> ParamCount:
    return count_parameters(model_from_config_on_meta(config))
