"""Helpers that edit tiny models through the adapter tables (so tests too stay name-free)."""
from __future__ import annotations

import torch

from minitron.arch import Axis, get_adapter, text_config
from minitron.arch.moe import moe_spec


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
        if axes[0] in (Axis.MLP, Axis.SHARED_MLP):
            param[index] = 0.0
        elif axes[0] is Axis.GATE_UP:
            param[index] = 0.0
            param[index + intermediate] = 0.0
        elif axes[0] is Axis.SHARED_GATE_UP:  # a fused shared expert (granitemoehybrid): [gate; up] rows
            param[index] = 0.0
            param[index + param.shape[0] // 2] = 0.0
        elif Axis.EXPERT_GATE_UP in axes:  # every routed expert: its gate and up channels (and their biases)
            dim = axes.index(Axis.EXPERT_GATE_UP)
            param.index_fill_(dim, adapter.moe.gate_up_channels(index, param.shape[dim] // 2), 0.0)
        elif axes[:2] == (Axis.EXPERT, Axis.EXPERT_MLP) and not adapter.moe.experts_transposed:  # non-gated: up rows
            param[:, index] = 0.0


def neuron_score_rows(scores, layer: int) -> list[torch.Tensor]:
    """Every 1-D neuron score vector of a layer: its dense MLP, each routed expert, the shared expert."""
    rows = [scores.neurons[layer]] if scores.neurons[layer].numel() else []
    rows += list(scores.expert_neurons.get(layer, ()))
    return rows + ([scores.shared_neurons[layer]] if layer in scores.shared_neurons else [])


def neuron_width_target(model, removed: int) -> dict:
    """A target removing `removed` neurons from every FFN width of the model (dense, expert, shared)."""
    spec = moe_spec(model)  # None also for a family's configs without experts (a dense NemotronH)
    keys = ("intermediate_size", *(spec.width_keys() if spec else ()))
    return {key: getattr(text_config(model.config), key) - removed for key in keys}


@torch.no_grad()
def make_identity_layer_(model, layer: int) -> None:
    """Zero every projection that writes into the residual stream: the layer returns its input."""
    adapter = get_adapter(model)
    for name, param in model.named_parameters():
        param_layer, axes = adapter.axes_of(name)
        if param_layer == layer and writes_residual(name, axes, adapter.moe):
            param.zero_()


def writes_residual(name: str, axes, moe=None) -> bool:
    """Whether a layer parameter is (part of) a projection writing into the residual stream: a dense weight
    or bias with the hidden axis first (not a norm's weight), or a routed expert's down projection and its
    bias; a router reads the residual. Routed experts store (experts, out, in), or (experts, in, out) when
    transposed (gpt_oss): a non-gated up_proj (EXPERT, EXPERT_MLP, HIDDEN) reads the residual, a transposed
    down_proj with the same axes writes it."""
    if not axes or "norm" in name or (moe is not None and f".{moe.router_path}." in name):
        return False
    if axes[0] is not Axis.EXPERT:
        return axes[0] is Axis.HIDDEN
    output = axes[-1] if moe is not None and moe.experts_transposed else axes[min(1, len(axes) - 1)]
    return output is Axis.HIDDEN


def logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids, use_cache=False).logits


@torch.no_grad()
def silence_mamba_channels_(model, heads: list[int], positions: list[int]) -> None:
    """Zero the gate z and the input x of these heads x head-dim positions in every Mamba layer: their
    output is exactly 0, and so is what they add to the gated norm's sums of squares, whichever side of the
    gate the norm is on.

    z is the first block of in_proj's rows and x the first block of conv1d's channels (arch/mamba.py):
    silu(z) = 0 gates them out, and with x = silu(conv1d) = 0 the scan (and D x) gives them y = 0 too
    (Falcon-H1 may normalise y before gating it).
    """
    from minitron.arch.mamba import inner_channels

    adapter = get_adapter(model)
    _, head_dim, _, _ = adapter.mamba.sizes(model.config)
    channels = inner_channels(torch.tensor(heads), torch.tensor(positions), head_dim)
    for name, param in model.named_parameters():
        _, axes = adapter.axes_of(name)
        if axes and axes[0] in (Axis.MAMBA_IN, Axis.MAMBA_CONV):
            param[channels] = 0.0


def free_port() -> int:
    """A TCP port free right now, for torchrun's rendezvous: a fixed port clashes with any other run on it."""
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
