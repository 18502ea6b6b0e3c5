"""Depth importance by ablation: the LM-loss increase when one decoder layer is skipped.

Costlier than Block Influence (one forward per layer per batch), so it runs on a few batches only.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import nn

from ..arch.base import ArchAdapter
from ..eval.loss import lm_loss_sum, reduce_sums
from ..verbosity import progress_bar


class SkipLayer(nn.Module):
    """Stands in for a decoder layer and returns its input unchanged (as a 1-tuple where the family's layers
    return one)."""

    def __init__(self, replaced: nn.Module, as_tuple: bool = False) -> None:
        super().__init__()
        self.as_tuple = as_tuple
        # Some families read per-layer attributes (attention type, NemotronH's block type) from the layer object.
        for name in ("attention_type", "layer_idx", "is_sliding", "block_type"):
            if hasattr(replaced, name):
                setattr(self, name, getattr(replaced, name))

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor | tuple[torch.Tensor]:
        return (hidden_states,) if self.as_tuple else hidden_states


@contextlib.contextmanager
def layers_skipped(model: nn.Module, adapter: ArchAdapter, indices: Sequence[int]) -> Iterator[None]:
    layers = adapter.layers(model)
    originals = {i: layers[i] for i in indices}
    try:
        for i in indices:
            layers[i] = SkipLayer(originals[i], as_tuple=adapter.layer_returns_tuple)
        yield
    finally:
        for i, layer in originals.items():
            layers[i] = layer


def layer_loss_increase(model: nn.Module, adapter: ArchAdapter, batches: Sequence[dict],
                        progress: bool = True, env=None) -> torch.Tensor:
    """(num_layers,) LM-loss increase when each layer alone is skipped; higher = more important.

    env (a `DistEnv`): `batches` are this rank's share; the loss sums are all-reduced (one call), so
    every rank returns what one process would over all ranks' batches. Losses are chunked through the
    LM head (`eval.loss`): no (tokens x vocabulary) logits.
    """
    baseline_sum, tokens = lm_loss_sum(model, batches)
    skipped_sums = []
    for index in progress_bar(range(len(adapter.layers(model))), enabled=progress, desc="layer-skip loss",
                              leave=False):
        with layers_skipped(model, adapter, [index]):
            skipped_sums.append(lm_loss_sum(model, batches)[0])
    *sums, tokens = reduce_sums([baseline_sum, *skipped_sums, tokens], env)
    means = torch.tensor(sums, dtype=torch.float64) / max(tokens, 1)
    return (means[1:] - means[0]).float()
