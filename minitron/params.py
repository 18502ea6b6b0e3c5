"""Parameter counts, from a model or from a config alone (built on the meta device, no weights)."""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

from accelerate import init_empty_weights
from torch import nn

from .arch import auto_model_class, get_adapter
from .errors import UnsupportedArchitectureError

try:  # skips random initialisation, which is slow even on the meta device (about 5x for counts)
    from transformers.initialization import no_init_weights
except ImportError:  # older transformers: initialise, just slower
    no_init_weights = contextlib.nullcontext


@dataclass(frozen=True)
class ParamCount:
    total: int
    embedding: int
    non_embedding: int
    active: int
    """Parameters one token uses: the total less the routed experts it is not sent to (MoE, as model
    cards count them: embeddings, LM head, attention, routers, shared experts and k of E experts)."""

    def as_dict(self) -> dict:
        return asdict(self)


def count_parameters(model: nn.Module) -> ParamCount:
    """Unique parameters (tied embeddings count once); embedding = token embedding + untied LM head.

    Works for any causal LM: a family's adapter names its embedding parameters, and any other model's
    come from `get_input_embeddings` / `get_output_embeddings`.
    """
    unique = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in unique.values())
    embedding = sum(unique[i].numel() for i in _embedding_param_ids(model) if i in unique)
    return ParamCount(total=total, embedding=embedding, non_embedding=total - embedding,
                      active=total - inactive_expert_parameters(model))


def inactive_expert_parameters(model: nn.Module) -> int:
    """Routed-expert parameters a token does not use: (E - k) / E of every sparse layer's experts (0 if dense)."""
    try:
        adapter = get_adapter(model)
    except UnsupportedArchitectureError:
        return 0
    if adapter.moe is None:
        return 0
    per_token = model.config.num_experts_per_tok
    inactive = 0
    for layer in adapter.layers(model):
        experts = adapter.moe.experts_module(layer)
        if experts is None:
            continue
        params = list(experts.parameters())
        num_experts = params[0].shape[0]  # fused expert tensors lead with the expert dimension
        inactive += sum(p.numel() for p in params) // num_experts * (num_experts - per_token)
    return inactive


def _embedding_param_ids(model: nn.Module) -> set[int]:
    try:
        names = get_adapter(model).embedding_param_names()
    except UnsupportedArchitectureError:
        modules = (model.get_input_embeddings(), model.get_output_embeddings())
        return {id(p) for module in modules if module is not None for p in module.parameters()}
    named = dict(model.named_parameters(remove_duplicate=False))
    return {id(named[name]) for name in names if name in named}


def model_from_config_on_meta(config) -> nn.Module:
    """The model a config describes, with parameters on the meta device: sizes without memory."""
    with init_empty_weights(), no_init_weights():
        model = auto_model_class(config).from_config(config)
    model.tie_weights()  # meta initialisation skips tying; tied embeddings must count once
    return model


def count_parameters_from_config(config) -> ParamCount:
    return count_parameters(model_from_config_on_meta(config))
