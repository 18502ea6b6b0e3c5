"""Expert importance for mixture-of-experts layers, read from the routing itself.

A forward pre-hook on each layer's fused experts module receives what the router decided:
`(hidden (tokens, hidden), top_k_index (tokens, k), top_k_weights (tokens, k))` (gpt_oss names them
`router_indices` and `routing_weights`: its softmax over the top-k logits, also (tokens, k)). For every
expert the hook recomputes its output on the tokens routed to it (transformers fuses all experts in one
call, so no per-expert module exists to hook) and accumulates:
- reap: the router-weighted output norm, mean over the tokens routed to the expert of
  gate_weight x ||expert(x)|| (REAP, arXiv 2510.13999; NVIDIA Model Optimizer's Minitron scores experts
  by the same router-weighted output); an expert never routed scores 0;
- weighted_output: the same router-weighted output norm summed over the routed tokens and divided by
  all tokens, i.e. the expert's expected contribution per token (reap x frequency);
- frequency: the share of tokens routed to the expert (the usual baseline);
- expert neurons: mean |activation| at the expert's down-projection input, over its routed tokens only;
- shared-expert neurons (qwen2_moe, nemotron_h, granitemoehybrid): mean |activation| at the shared
  down-projection input, over all tokens (granitemoehybrid without routed experts: the shared MLP alone).
Padding tokens (attention mask 0) are left out everywhere.
"""
from __future__ import annotations

import torch
from torch import nn

from ..arch.base import ArchAdapter, Axis
from ..arch.moe import MoeSpec, expert_forward, moe_spec
from ..errors import MinitronError


class ExpertCollector:
    """Hooks on every sparse layer; `begin_batch(mask)` before each forward (mask (batch, seq) or None)."""

    def __init__(self, model: nn.Module, adapter: ArchAdapter, seed: int = 0) -> None:
        self.spec: MoeSpec = adapter.moe
        self.seed = seed
        self._token_mask: torch.Tensor | None = None
        self._handles = []
        self.weighted_norm: dict[int, torch.Tensor] = {}
        self.routed: dict[int, torch.Tensor] = {}
        self.neuron_sum: dict[int, torch.Tensor] = {}
        self.shared_sum: dict[int, torch.Tensor] = {}
        self.tokens = 0
        for index, layer in enumerate(adapter.layers(model)):
            experts = self.spec.experts_module(layer)
            if experts is not None:
                num_experts, width = experts.down_proj.shape[0], self.spec.expert_width(experts)
                self.weighted_norm[index] = torch.zeros(num_experts, dtype=torch.float64)
                self.routed[index] = torch.zeros(num_experts, dtype=torch.float64)
                self.neuron_sum[index] = torch.zeros(num_experts, width, dtype=torch.float64)
                self._handles.append(experts.register_forward_pre_hook(self._experts_hook(index), with_kwargs=True))
            down = self.spec.shared_down_module(layer)  # granitemoehybrid without experts: the shared MLP alone
            if down is not None:
                self.shared_sum[index] = torch.zeros(down.in_features, dtype=torch.float64)
                self._handles.append(down.register_forward_pre_hook(self._shared_hook(index)))

    def begin_batch(self, mask: torch.Tensor | None, num_tokens: int) -> None:
        self._token_mask = None if mask is None else mask.reshape(-1).bool()
        self.tokens += num_tokens

    def _experts_hook(self, index: int):
        def hook(module, args, kwargs):
            values = list(args) + [kwargs[k] for k in self.spec.experts_call if k in kwargs]
            self._record_experts(index, module, *values[:3])
        return hook

    @torch.no_grad()
    def _record_experts(self, index: int, experts: nn.Module, hidden: torch.Tensor, top_k_index: torch.Tensor,
                        top_k_weights: torch.Tensor) -> None:
        routed = top_k_index
        if self._token_mask is not None:  # padded tokens are routed too: route them nowhere here
            routed = torch.where(self._token_mask.to(routed.device)[:, None], routed, -1)
        for expert in routed[routed >= 0].unique().tolist():
            token_ids, slots = torch.where(routed == expert)
            activation, output = expert_forward(self.spec, experts, expert, hidden[token_ids])
            weights = top_k_weights[token_ids, slots].double()
            self.weighted_norm[index][expert] += float((weights * output.double().norm(dim=-1)).sum())
            self.routed[index][expert] += token_ids.numel()
            self.neuron_sum[index][expert] += activation.double().abs().sum(dim=0).cpu()

    def _shared_hook(self, index: int):
        def hook(module, args):
            activation = args[0].reshape(-1, args[0].shape[-1]).double()
            if self._token_mask is not None:
                activation = torch.where(self._token_mask.to(activation.device)[:, None], activation, 0.0)
            self.shared_sum[index] += activation.abs().sum(dim=0).cpu()
        return hook

    def all_reduce_(self, env) -> None:
        """Sum every accumulator over the ranks of `env` (a `DistEnv`, data-parallel importance) in one
        float64 all-reduce, so each rank holds the sums one process would have over all batches."""
        if env is None or not env.distributed:
            return
        from ..distill.dist import all_reduce_sum
        fields = [self.weighted_norm, self.routed, self.neuron_sum, self.shared_sum]
        parts = [field[index] for field in fields for index in sorted(field)]
        flat = torch.cat([part.reshape(-1) for part in parts] + [torch.tensor([float(self.tokens)], dtype=torch.float64)])
        summed = all_reduce_sum(flat, env).cpu()
        offset = 0
        for field in fields:
            for index in sorted(field):
                size = field[index].numel()
                field[index] = summed[offset:offset + size].view_as(field[index]).clone()
                offset += size
        self.tokens = int(round(float(summed[offset])))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _check_every_layer_routed(self) -> None:
        """Every token is routed to k experts in every MoE layer: a layer whose hook saw none was run by
        something else (a hub kernel replacing the experts' forward, `use_kernels=True`), and its scores
        would be silently zero."""
        silent = [index for index, routed in self.routed.items() if self.tokens and not routed.sum()]
        if silent:
            raise MinitronError(f"the experts of MoE layer(s) {silent} saw none of the {self.tokens:,} tokens: "
                                "their forward did not run through the experts module (a kernel from the Hub, "
                                "use_kernels=True, replaces it); load the model without kernels to score experts")

    def score_fields(self) -> dict:
        """The MoE fields of ImportanceScores."""
        self._check_every_layer_routed()
        generator = torch.Generator().manual_seed(self.seed)
        reap, weighted, frequency, random, neurons = {}, {}, {}, {}, {}
        for index, routed in self.routed.items():
            count = routed.clamp_min(1.0)
            reap[index] = (self.weighted_norm[index] / count).float()
            weighted[index] = (self.weighted_norm[index] / max(self.tokens, 1)).float()
            frequency[index] = (routed / max(self.tokens, 1)).float()
            random[index] = torch.rand(routed.numel(), generator=generator)
            neurons[index] = (self.neuron_sum[index] / count[:, None]).float()
        shared = {index: (total / max(self.tokens, 1)).float() for index, total in self.shared_sum.items()}
        return {"experts": {"reap": reap, "weighted_output": weighted, "frequency": frequency, "random": random},
                "expert_neurons": neurons, "shared_neurons": shared}


@torch.no_grad()
def moe_baseline_fields(model: nn.Module, adapter: ArchAdapter, criterion: str, seed: int = 0) -> dict:
    """MoE fields for the baselines: "magnitude" (L2 norm of each expert's / neuron's weights) or "random".

    Both criteria fill every expert metric name, so any --expert-metric works with baseline scores.
    """
    if moe_spec(model) is None:
        return {}
    generator = torch.Generator().manual_seed(seed + 1)
    experts, neurons, shared = {}, {}, {}
    for index, layer in enumerate(adapter.layers(model)):
        module = adapter.moe.experts_module(layer)
        if module is not None:
            experts[index], neurons[index] = _expert_baseline(adapter.moe, module, criterion, generator)
        if adapter.moe.shared_down_module(layer) is not None:
            shared[index] = _shared_scores(model, adapter, index, criterion, generator)
    return {"experts": {metric: experts for metric in ("reap", "weighted_output", "frequency", "random")},
            "expert_neurons": neurons, "shared_neurons": shared}


def _expert_baseline(spec: MoeSpec, module: nn.Module, criterion: str,
                     generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(expert scores (experts,), neuron scores (experts, width)) of one layer's fused experts."""
    gate, up, down = (None if m is None else m.double() for m in spec.expert_matrices(module))
    num_experts, width = down.shape[0], down.shape[-1]
    if criterion == "random":
        return torch.rand(num_experts, generator=generator), torch.rand(num_experts, width, generator=generator)
    per_neuron = up.pow(2).sum(dim=-1) + down.pow(2).sum(dim=1)  # (experts, width)
    if gate is not None:  # non-gated experts (NemotronH) have up and down only
        per_neuron += gate.pow(2).sum(dim=-1)
    return per_neuron.sum(dim=1).sqrt().float(), per_neuron.sqrt().float()


def _shared_scores(model, adapter: ArchAdapter, layer: int, criterion: str, generator) -> torch.Tensor:
    prefix = adapter.layer_prefix(layer)
    width = adapter.moe.shared_down_module(adapter.layers(model)[layer]).in_features
    if criterion == "random":
        return torch.rand(width, generator=generator)
    total = torch.zeros(width, dtype=torch.float64)
    for name, param in model.named_parameters():
        axes = adapter.axes_of(name)[1] if name.startswith(prefix) else ()
        for dim, axis in enumerate(axes):
            if axis in (Axis.SHARED_MLP, Axis.SHARED_GATE_UP):
                others = [d for d in range(param.dim()) if d != dim]  # none for a bias
                per_channel = param.double().pow(2).sum(dim=others) if others else param.double().pow(2)
                # a fused [gate; up] (granitemoehybrid) holds two channels per neuron
                total += per_channel if axis is Axis.SHARED_MLP else per_channel[:width] + per_channel[width:]
    return total.sqrt().float()
