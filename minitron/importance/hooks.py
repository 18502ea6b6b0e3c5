"""Forward hooks that read activations for every width axis and Block Influence, in one pass.

- MLP neurons: input of the down projection (after activation / gating).
- Attention heads: input of the output projection viewed as (heads, head_dim); L2 over head_dim.
- Hidden channels: outputs of every norm that feeds attention or the MLP, summed over layers.
- Block Influence: 1 - cosine(h_in, h_out) of each decoder layer, averaged over tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..arch.base import ArchAdapter
from .aggregate import BatchAccumulator, reduce_sequence


def _first_tensor(value) -> torch.Tensor:
    return value[0] if isinstance(value, (tuple, list)) else value


class ActivationCollector:
    """Registers hooks on `model`; call `begin_batch(mask)` before and `end_batch()` after each forward."""

    def __init__(self, model: nn.Module, adapter: ArchAdapter, seq_reduction: str, head_dim: int) -> None:
        self.seq_reduction = seq_reduction
        self.head_dim = head_dim
        self.layers = adapter.layers(model)
        num_layers = len(self.layers)
        self.neurons = [BatchAccumulator() for _ in range(num_layers)]
        self.heads = [BatchAccumulator() for _ in range(num_layers)]
        self.hidden = BatchAccumulator()
        self.influence_sum = torch.zeros(num_layers, dtype=torch.float64)
        self.influence_tokens = 0.0
        self._mask: torch.Tensor | None = None
        self._hidden_batch: torch.Tensor | None = None
        self._layer_inputs: dict[int, torch.Tensor] = {}
        self._handles = []
        for index, layer in enumerate(self.layers):
            self._hook_layer(index, layer, adapter)

    def _hook_layer(self, index: int, layer: nn.Module, adapter: ArchAdapter) -> None:
        down = layer.get_submodule(adapter.mlp_down_proj)
        out_proj = layer.get_submodule(adapter.attn_out_proj)
        self._handles.append(down.register_forward_pre_hook(
            lambda module, args: self.neurons[index].update(reduce_sequence(args[0], self.seq_reduction, self._mask))))
        self._handles.append(out_proj.register_forward_pre_hook(lambda module, args: self._record_heads(index, args[0])))
        for norm_name in adapter.hidden_norms:
            norm = layer.get_submodule(norm_name)
            self._handles.append(norm.register_forward_hook(lambda module, args, output: self._record_hidden(output)))
        self._handles.append(layer.register_forward_pre_hook(self._layer_input_hook(index), with_kwargs=True))
        self._handles.append(layer.register_forward_hook(self._layer_output_hook(index)))

    def _record_heads(self, index: int, attn_output: torch.Tensor) -> None:
        batch, seq, width = attn_output.shape
        per_head = attn_output.float().view(batch, seq, width // self.head_dim, self.head_dim)
        head_norms = torch.linalg.vector_norm(per_head, dim=-1)
        self.heads[index].update(reduce_sequence(head_norms, self.seq_reduction, self._mask))

    def _record_hidden(self, norm_output) -> None:
        reduced = reduce_sequence(_first_tensor(norm_output), self.seq_reduction, self._mask)
        self._hidden_batch = reduced if self._hidden_batch is None else self._hidden_batch + reduced

    def _layer_input_hook(self, index: int):
        def hook(module, args, kwargs):
            self._layer_inputs[index] = args[0] if args else kwargs["hidden_states"]
        return hook

    def _layer_output_hook(self, index: int):
        def hook(module, args, output):
            h_in = self._layer_inputs.pop(index)
            cosine = F.cosine_similarity(h_in.float(), _first_tensor(output).float(), dim=-1)
            influence = 1.0 - cosine
            if self._mask is not None:
                influence = influence * self._mask.to(influence.dtype)
            self.influence_sum[index] += influence.sum().double().cpu()
        return hook

    def begin_batch(self, mask: torch.Tensor | None, num_tokens: int) -> None:
        self._mask = mask
        self._hidden_batch = None
        self.influence_tokens += num_tokens

    def end_batch(self) -> None:
        if self._hidden_batch is not None:
            self.hidden.update(self._hidden_batch)
        self._hidden_batch = None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def block_influence(self) -> torch.Tensor:
        return (self.influence_sum / max(self.influence_tokens, 1.0)).float()
