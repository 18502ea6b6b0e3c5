"""Forward hooks that read activations for every width axis and Block Influence, in one pass.

- MLP neurons: input of the down projection (after activation / gating).
- Attention heads: what each head adds to the residual stream, ||W_o[:, h] a_h|| per token, where a_h is
  head h's slice of the output projection's input. (The plain activation norm ||a_h|| ignores W_o and
  lost to random head choices on SmolLM2: bench/heads_probe.py, docs/BENCHMARKS.md.)
- Mamba-2 heads (hybrid stacks): the same contribution through the mixer's out_proj; head-dim positions
  by the norm over heads of their out_proj input (one order shared by every head of the layer).
- Hidden channels: outputs of every norm that feeds attention or the MLP (or, in families without such
  norms, the residual stream entering them), summed over layers.
- Block Influence: 1 - cosine(h_in, h_out) of each decoder layer, averaged over tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..arch import text_config
from ..arch.base import ArchAdapter
from .aggregate import BatchAccumulator, reduce_sequence


def _first_tensor(value) -> torch.Tensor:
    return value[0] if isinstance(value, (tuple, list)) else value


@torch.no_grad()
def output_gram(weight: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(heads, head_dim, head_dim) Gram matrices W_o,h^T W_o,h of the output projection's head blocks.

    ||W_o,h a_h||^2 = a_h^T G_h a_h, which costs head_dim^2 per head and token instead of
    head_dim * hidden_size for applying W_o,h itself.
    """
    hidden, width = weight.shape
    blocks = weight.detach().float().view(hidden, width // head_dim, head_dim)
    return torch.einsum("xnd,xne->nde", blocks, blocks)


def head_contributions(activations: torch.Tensor, grams: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(batch, seq, heads * head_dim) output-projection input -> (batch, seq, heads) norms ||W_o,h a_h||."""
    batch, seq, width = activations.shape
    per_head = activations.float().view(batch, seq, width // head_dim, head_dim)
    projected = torch.einsum("bsnd,nde->bsne", per_head, grams)
    return (projected * per_head).sum(dim=-1).clamp_min(0.0).sqrt()


def _in_features(module: nn.Module | None) -> int:
    """Input width of a projection; 0 for a part the layer lacks (hybrid stacks)."""
    return 0 if module is None else module.weight.shape[1]


class ActivationCollector:
    """Registers hooks on `model`; call `begin_batch(mask)` before and `end_batch()` after each forward."""

    def __init__(self, model: nn.Module, adapter: ArchAdapter, seq_reduction: str, head_dim: int) -> None:
        self.seq_reduction = seq_reduction
        self.head_dim = head_dim
        self.layers = adapter.layers(model)
        num_layers = len(self.layers)
        # Sized up front (shapes are known even on the meta device): a rank with no batch still reduces. A
        # hybrid stack's layer lacking a part gets a size-0 accumulator, whose scores stay empty.
        self.neurons = [BatchAccumulator(_in_features(adapter.layer_module(layer, adapter.mlp_down_proj)))
                        for layer in self.layers]
        self.heads = [BatchAccumulator(_in_features(adapter.layer_module(layer, adapter.attn_out_proj)) // head_dim)
                      for layer in self.layers]
        self.hidden = BatchAccumulator(text_config(model.config).hidden_size)
        self.influence_sum = torch.zeros(num_layers, dtype=torch.float64)
        self.influence_tokens = 0.0
        self._mask: torch.Tensor | None = None
        self._hidden_batch: torch.Tensor | None = None
        self._layer_inputs: dict[int, torch.Tensor] = {}
        self._handles = []
        self._head_grams: dict[int, torch.Tensor] = {}
        self._mamba_grams: dict[int, torch.Tensor] = {}
        self.mamba_layout = adapter.mamba
        self.mamba_head_dim_size = int(getattr(model.config, adapter.mamba.head_dim_key)) if adapter.mamba else 0
        self.mamba_heads: dict[int, BatchAccumulator] = {}
        self.mamba_channels: dict[int, BatchAccumulator] = {}
        for index, layer in enumerate(self.layers):
            self._hook_layer(index, layer, adapter)

    def _hook_layer(self, index: int, layer: nn.Module, adapter: ArchAdapter) -> None:
        # A hybrid stack's layer holds only some of these parts; the rest keep empty scores.
        down = adapter.layer_module(layer, adapter.mlp_down_proj)
        out_proj = adapter.layer_module(layer, adapter.attn_out_proj)
        if down is not None:
            self._handles.append(down.register_forward_pre_hook(lambda module, args: self.neurons[index].update(
                reduce_sequence(args[0], self.seq_reduction, self._mask))))
        if out_proj is not None:
            self._head_grams[index] = output_gram(out_proj.weight, self.head_dim)
            self._handles.append(out_proj.register_forward_pre_hook(
                lambda module, args: self._record_heads(index, args[0])))
        if self.mamba_layout is not None:
            self._hook_mamba(index, adapter.layer_module(layer, self.mamba_layout.out_proj))
        for norm_name in adapter.hidden_norms:
            norm = layer.get_submodule(norm_name)
            self._handles.append(norm.register_forward_hook(lambda module, args, output: self._record_hidden(output)))
        for input_name in adapter.hidden_inputs:
            module = layer.get_submodule(input_name)
            self._handles.append(module.register_forward_pre_hook(lambda module, args: self._record_hidden(args[0])))
        self._handles.append(layer.register_forward_pre_hook(self._layer_input_hook(index), with_kwargs=True))
        self._handles.append(layer.register_forward_hook(self._layer_output_hook(index)))

    def _hook_mamba(self, index: int, out_proj: nn.Module | None) -> None:
        """Mamba heads like attention heads: each head's contribution through out_proj, from its input
        (the gated-normed SSM output); head-dim positions by their activation, pooled over the heads."""
        if out_proj is None:
            return
        self._mamba_grams[index] = output_gram(out_proj.weight, self.mamba_head_dim_size)
        self.mamba_heads[index] = BatchAccumulator(out_proj.weight.shape[1] // self.mamba_head_dim_size)
        self.mamba_channels[index] = BatchAccumulator(self.mamba_head_dim_size)
        self._handles.append(out_proj.register_forward_pre_hook(lambda module, args: self._record_mamba(index, args[0])))

    def _record_mamba(self, index: int, inner: torch.Tensor) -> None:
        contribution = head_contributions(inner, self._mamba_grams[index], self.mamba_head_dim_size)
        self.mamba_heads[index].update(reduce_sequence(contribution, self.seq_reduction, self._mask))
        batch, seq, width = inner.shape
        per_position = inner.float().view(batch, seq, -1, self.mamba_head_dim_size).norm(dim=2)
        self.mamba_channels[index].update(reduce_sequence(per_position, self.seq_reduction, self._mask))

    def _record_heads(self, index: int, attn_output: torch.Tensor) -> None:
        contribution = head_contributions(attn_output, self._head_grams[index], self.head_dim)
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

    def all_reduce_(self, env) -> None:
        """Sum every accumulator over the ranks of `env` (a `DistEnv`) in one float64 all-reduce, so
        each rank ends with the sums one process would have over all ranks' batches."""
        if env is None or not env.distributed:
            return
        from ..distill.dist import all_reduce_sum
        accumulators = [self.hidden, *self.neurons, *self.heads]
        accumulators += [self.mamba_heads[index] for index in sorted(self.mamba_heads)]
        accumulators += [self.mamba_channels[index] for index in sorted(self.mamba_channels)]
        parts = [accumulator.sums() for accumulator in accumulators]
        parts += [self.influence_sum, torch.tensor([self.influence_tokens], dtype=torch.float64)]
        pieces = all_reduce_sum(torch.cat(parts), env).cpu().split([len(part) for part in parts])
        for accumulator, piece in zip(accumulators, pieces):
            accumulator.load_sums(piece)
        self.influence_sum, self.influence_tokens = pieces[-2].clone(), float(pieces[-1])

    @staticmethod
    def per_layer(accumulators: list[BatchAccumulator], how: str) -> list[torch.Tensor]:
        """Each layer's scores; empty for a hybrid stack's layer that has no such part (never updated)."""
        return [acc.result(how) if acc.count else torch.empty(0) for acc in accumulators]

    def block_influence(self) -> torch.Tensor:
        return (self.influence_sum / max(self.influence_tokens, 1.0)).float()
