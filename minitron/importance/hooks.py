"""Forward hooks that read activations for every width axis and Block Influence, in one pass.

- MLP neurons: input of the down projection (after activation / gating).
- Attention heads: what each head adds to the residual stream, ||W_o[:, h] a_h|| per token, where a_h is
  head h's slice of the output projection's input. (The plain activation norm ||a_h|| ignores W_o and
  lost to random head choices on SmolLM2: bench/heads_probe.py, docs/BENCHMARKS.md.)
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
        self._head_grams: dict[int, torch.Tensor] = {}
        for index, layer in enumerate(self.layers):
            self._hook_layer(index, layer, adapter)

    def _hook_layer(self, index: int, layer: nn.Module, adapter: ArchAdapter) -> None:
        out_proj = layer.get_submodule(adapter.attn_out_proj)
        self._head_grams[index] = self._output_gram(out_proj.weight)
        if adapter.moe is None or adapter.moe.experts_module(layer) is None:  # sparse layers: importance/moe.py
            down = layer.get_submodule(adapter.mlp_down_proj)
            self._handles.append(down.register_forward_pre_hook(
                lambda module, args: self.neurons[index].update(reduce_sequence(args[0], self.seq_reduction, self._mask))))
        self._handles.append(out_proj.register_forward_pre_hook(lambda module, args: self._record_heads(index, args[0])))
        for norm_name in adapter.hidden_norms:
            norm = layer.get_submodule(norm_name)
            self._handles.append(norm.register_forward_hook(lambda module, args, output: self._record_hidden(output)))
        self._handles.append(layer.register_forward_pre_hook(self._layer_input_hook(index), with_kwargs=True))
        self._handles.append(layer.register_forward_hook(self._layer_output_hook(index)))

    @torch.no_grad()
    def _output_gram(self, weight: torch.Tensor) -> torch.Tensor:
        """(heads, head_dim, head_dim) Gram matrices W_o,h^T W_o,h of the output projection's head blocks.

        ||W_o,h a_h||^2 = a_h^T G_h a_h, which costs head_dim^2 per head and token instead of
        head_dim * hidden_size for applying W_o,h itself.
        """
        hidden, width = weight.shape
        blocks = weight.detach().float().view(hidden, width // self.head_dim, self.head_dim)
        return torch.einsum("xnd,xne->nde", blocks, blocks)

    def _record_heads(self, index: int, attn_output: torch.Tensor) -> None:
        batch, seq, width = attn_output.shape
        per_head = attn_output.float().view(batch, seq, width // self.head_dim, self.head_dim)
        projected = torch.einsum("bsnd,nde->bsne", per_head, self._head_grams[index])
        contribution = (projected * per_head).sum(dim=-1).clamp_min(0.0).sqrt()
        self.heads[index].update(reduce_sequence(contribution, self.seq_reduction, self._mask))

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
            if self._mask is not None:  # padded positions are left out (where, not *: they may hold NaN)
                influence = torch.where(self._mask.bool(), influence, 0.0)
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
