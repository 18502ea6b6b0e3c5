"""Helpers that edit tiny models through the adapter tables (so tests too stay name-free)."""
from __future__ import annotations

import torch

from minitron.arch import Axis, get_adapter, text_config


@torch.no_grad()
def silence_neurons_(model, layer: int, neurons: list[int]) -> None:
    """Zero the rows that produce these MLP neurons, so their activations are exactly zero."""
    adapter = get_adapter(model)
    intermediate = text_config(model.config).intermediate_size
    index = torch.tensor(neurons)
    for name, param in model.named_parameters():
        param_layer, axes = adapter.axes_of(name)
        if param_layer != layer or not axes:
            continue
        if axes[0] is Axis.MLP:
            param[index] = 0.0
        elif axes[0] is Axis.GATE_UP:
            param[index] = 0.0
            param[index + intermediate] = 0.0


@torch.no_grad()
def make_identity_layer_(model, layer: int) -> None:
    """Zero every projection that writes into the residual stream: the layer returns its input."""
    adapter = get_adapter(model)
    for name, param in model.named_parameters():
        param_layer, axes = adapter.axes_of(name)
        if param_layer == layer and axes[0] is Axis.HIDDEN and ("proj" in name):
            param.zero_()


def logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids, use_cache=False).logits


@torch.no_grad()
def silence_mamba_channels_(model, heads: list[int], positions: list[int]) -> None:
    """Zero the gate z of these heads x head-dim positions in every Mamba layer: their output is exactly 0.

    The gate is the first block of in_proj's rows (arch/mamba.py), so silu(z) = 0 multiplies them out
    before the gated norm, and they add nothing to its sums of squares.
    """
    from minitron.arch.mamba import inner_channels

    adapter = get_adapter(model)
    _, head_dim, _, _ = adapter.mamba.sizes(model.config)
    gate_rows = inner_channels(torch.tensor(heads), torch.tensor(positions), head_dim)
    for name, param in model.named_parameters():
        _, axes = adapter.axes_of(name)
        if axes and axes[0] is Axis.MAMBA_IN:
            param[gate_rows] = 0.0
