"""Baseline criteria to compare against activation importance: weight magnitude and seeded random."""
from __future__ import annotations

import torch
from torch import nn

from ..arch import get_adapter, text_config
from ..arch.base import Axis
from ..fingerprint import model_fingerprint
from .moe import moe_baseline_fields
from .scores import ImportanceScores


def _sizes(config) -> tuple[int, int, int, int, int]:
    config = text_config(config)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return (config.hidden_size, config.intermediate_size, config.num_attention_heads, head_dim,
            config.num_hidden_layers)


@torch.no_grad()
def magnitude_scores(model: nn.Module) -> ImportanceScores:
    """L2 norm of every weight slice that touches a channel, neuron, head or layer."""
    adapter = get_adapter(model)
    hidden_size, intermediate, heads, head_dim, num_layers = _sizes(model.config)
    hidden = torch.zeros(hidden_size, dtype=torch.float64)
    neurons = [torch.zeros(intermediate, dtype=torch.float64) for _ in range(num_layers)]
    q_channels = [torch.zeros(heads * head_dim, dtype=torch.float64) for _ in range(num_layers)]
    layer_norms = torch.zeros(num_layers, dtype=torch.float64)
    for name, tensor in model.state_dict().items():
        layer, axes = adapter.axes_of(name)
        squares = tensor.double() ** 2
        if layer is not None:
            layer_norms[layer] += squares.sum()
        for dim, axis in enumerate(axes):
            other = [d for d in range(tensor.dim()) if d != dim]
            per_index = squares.sum(dim=other) if other else squares
            if axis is Axis.HIDDEN:
                hidden += per_index
            elif axis is Axis.MLP:
                neurons[layer] += per_index
            elif axis is Axis.GATE_UP:
                neurons[layer] += per_index[:intermediate] + per_index[intermediate:]
            elif axis is Axis.Q:
                q_channels[layer] += per_index
            elif axis is Axis.QKV:
                q_channels[layer] += per_index[: heads * head_dim]
    head_scores = [c.view(heads, head_dim).sum(dim=1).sqrt().float() for c in q_channels]
    mamba_heads, mamba_head_dim = _mamba_magnitudes(model, adapter)
    return ImportanceScores(
        hidden=hidden.sqrt().float(), neurons=[n.sqrt().float() for n in neurons], heads=head_scores,
        layers={"magnitude": layer_norms.sqrt().float()}, fingerprint=model_fingerprint(model),
        meta={"criterion": "magnitude"}, mamba_heads=mamba_heads, mamba_head_dim=mamba_head_dim,
        **moe_baseline_fields(model, adapter, "magnitude"))


def _mamba_magnitudes(model: nn.Module, adapter) -> tuple[dict, dict]:
    """Mamba heads and head-dim positions by the norm of out_proj's columns that read them."""
    if adapter.mamba is None:
        return {}, {}
    heads, head_dim, _, _ = adapter.mamba.sizes(model.config)
    scores_heads, scores_dim = {}, {}
    for index, layer in enumerate(adapter.layers(model)):
        out_proj = adapter.layer_module(layer, adapter.mamba.out_proj)
        if out_proj is not None:
            squares = (out_proj.weight.detach().double() ** 2).sum(dim=0).view(heads, head_dim)
            scores_heads[index] = squares.sum(dim=1).sqrt().float()
            scores_dim[index] = squares.sum(dim=0).sqrt().float()
    return scores_heads, scores_dim


def random_scores(model: nn.Module, seed: int = 0) -> ImportanceScores:
    """Uniform random scores from a seeded generator: the floor any criterion must beat."""
    hidden_size, intermediate, heads, _, num_layers = _sizes(model.config)
    generator = torch.Generator().manual_seed(seed)
    scores = ImportanceScores(
        hidden=torch.rand(hidden_size, generator=generator),
        neurons=[torch.rand(intermediate, generator=generator) for _ in range(num_layers)],
        heads=[torch.rand(heads, generator=generator) for _ in range(num_layers)],
        layers={"random": torch.rand(num_layers, generator=generator)},
        fingerprint=model_fingerprint(model), meta={"criterion": "random", "seed": seed},
        **moe_baseline_fields(model, get_adapter(model), "random", seed))
    layout = get_adapter(model).mamba
    if layout is not None:  # every layer gets Mamba scores; only Mamba layers' are ever read
        mamba_heads, mamba_head_dim, _, _ = layout.sizes(model.config)
        for layer in range(num_layers):
            scores.mamba_heads[layer] = torch.rand(mamba_heads, generator=generator)
            scores.mamba_head_dim[layer] = torch.rand(mamba_head_dim, generator=generator)
    return scores
