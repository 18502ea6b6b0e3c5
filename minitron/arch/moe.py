"""Mixture-of-experts families: where the router and the fused experts live, and what their config calls things.

transformers 5 stores the routed experts of a layer as two fused 3-D parameters, `experts.gate_up_proj`
(experts, 2 x width, hidden) holding [gate; up] halves, and `experts.down_proj` (experts, hidden, width),
and routes with a linear router (experts, hidden). The router returns the top-k expert indices and their
weights; the experts module is called as `experts(hidden (tokens, hidden), top_k_index, top_k_weights)`,
which is where importance estimation reads the routing (`minitron/importance/moe.py`).

Families (their config names differ):
- qwen3_moe, qwen2_moe: `num_experts`, `moe_intermediate_size`; dense layers (`mlp_only_layers`,
  `decoder_sparse_step`) keep the plain MLP of `intermediate_size`; qwen2_moe adds an always-active
  shared expert (`shared_expert_intermediate_size`) whose output is gated by `shared_expert_gate`.
- mixtral, olmoe, granitemoe: the expert width is `intermediate_size`; granitemoe's block is
  `block_sparse_moe` with a `router`. OLMoE normalises q/k over the whole projection with norms sized
  from `hidden_size`, so its attention width must stay equal to the hidden size.
- granitemoehybrid (arch/hybrid.py): granitemoe's block beside a layer-level `shared_mlp` with a fused
  [gate; up] `input_linear` (`shared_intermediate_size`); with `num_local_experts=0` only the shared MLP.
Not covered: gpt_oss (experts stored (experts, in, out) with interleaved gate/up, biases and a clamped
activation; per-head attention sinks).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import (H, KEEP, ArchAdapter, Axis, llama_like_layer_params, optional_bias_params,
                   scale_logits, standard_global_params)

EXPERT, EG, EM, SM = Axis.EXPERT, Axis.EXPERT_GATE_UP, Axis.EXPERT_MLP, Axis.SHARED_MLP


@dataclass(frozen=True)
class MoeSpec:
    """Where one family keeps its sparse block, and the config names of its MoE sizes."""

    block: str = "mlp"
    """The sparse block inside a decoder layer (dense layers hold a plain MLP under the same name)."""
    router: str = "gate"
    experts: str = "experts"
    num_experts_key: str = "num_experts"
    expert_width_key: str = "moe_intermediate_size"
    shared_width_key: str | None = None
    shared_expert: str | None = None
    """The always-active shared expert (a gated MLP), relative to the decoder layer."""
    shared_down: str = "down_proj"
    """The shared expert's down projection, relative to the shared expert."""
    attention_width_is_hidden: bool = False
    """OLMoE sizes its q/k norms from hidden_size: heads x head_dim must equal hidden_size."""

    @property
    def router_path(self) -> str:
        return f"{self.block}.{self.router}"

    @property
    def experts_path(self) -> str:
        return f"{self.block}.{self.experts}"

    @property
    def shared_down_proj(self) -> str | None:
        return None if self.shared_expert is None else f"{self.shared_expert}.{self.shared_down}"

    def experts_module(self, layer: nn.Module) -> nn.Module | None:
        """The layer's fused experts, or None for a dense layer."""
        return _submodule_or_none(layer, self.experts_path)

    def shared_down_module(self, layer: nn.Module) -> nn.Module | None:
        """The shared expert's down projection (its input is the neuron activation), or None where the
        layer has no shared expert (qwen2_moe's dense layers)."""
        return None if self.shared_down_proj is None else _submodule_or_none(layer, self.shared_down_proj)

    def width_keys(self) -> tuple[str, ...]:
        """Config names of the MoE widths this family has (the expert width, the shared one)."""
        return tuple(k for k in (self.expert_width_key, self.shared_width_key) if k)


def _submodule_or_none(layer: nn.Module, path: str) -> nn.Module | None:
    try:
        return layer.get_submodule(path)
    except AttributeError:
        return None


def expert_forward(experts: nn.Module, expert: int, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One routed expert on (tokens, hidden): (its neuron activations (tokens, width), its output (tokens, hidden)).

    The computation of transformers' fused experts for one expert, unweighted by the router.
    """
    gate, up = F.linear(tokens, experts.gate_up_proj[expert]).chunk(2, dim=-1)
    activation = experts.act_fn(gate) * up
    return activation, F.linear(activation, experts.down_proj[expert])


def routed_expert_params(spec: MoeSpec) -> dict[str, tuple[Axis, ...]]:
    """The router and the fused routed experts of a sparse block."""
    return {
        f"{spec.router_path}.weight": (EXPERT, H),
        f"{spec.router_path}.bias": (EXPERT,),
        f"{spec.experts_path}.gate_up_proj": (EXPERT, EG, H),
        f"{spec.experts_path}.down_proj": (EXPERT, H, EM),
    }


def _moe_layer_params(spec: MoeSpec, **llama_kwargs) -> dict[str, tuple[Axis, ...]]:
    table = llama_like_layer_params(**llama_kwargs)  # keeps the plain-MLP entries for dense layers
    table |= optional_bias_params(table)
    table |= routed_expert_params(spec)
    if spec.shared_expert is not None:
        shared = spec.shared_expert
        table |= {f"{shared}.gate_proj.weight": (SM, H), f"{shared}.up_proj.weight": (SM, H),
                  f"{shared}.down_proj.weight": (H, SM), f"{spec.block}.shared_expert_gate.weight": (KEEP, H)}
    return table


def _moe_adapter(model_type: str, spec: MoeSpec, logit_transform=None, notes: str = "",
                 extra_params: dict | None = None, **llama_kwargs) -> ArchAdapter:
    return ArchAdapter(model_type=model_type, global_params=standard_global_params(),
                       layer_params=_moe_layer_params(spec, **llama_kwargs) | (extra_params or {}),
                       logit_transform=logit_transform, moe=spec, notes=notes)


QWEN3_MOE = _moe_adapter("qwen3_moe", MoeSpec(), qk_norm=True)
QWEN2_MOE = _moe_adapter("qwen2_moe", MoeSpec(shared_width_key="shared_expert_intermediate_size",
                                              shared_expert="mlp.shared_expert"), attention_bias=True)
MIXTRAL = _moe_adapter("mixtral", MoeSpec(num_experts_key="num_local_experts", expert_width_key="intermediate_size"))
# OLMoE's q/k norms span the whole projection (qk_norm=False: they are listed below on the Q/KV axes).
OLMOE = _moe_adapter("olmoe", MoeSpec(expert_width_key="intermediate_size", attention_width_is_hidden=True),
                     notes="q/k RMSNorm over the whole projection: head pruning changes its statistics",
                     extra_params={"self_attn.q_norm.weight": (Axis.Q,), "self_attn.k_norm.weight": (Axis.KV,)})
GRANITEMOE = _moe_adapter("granitemoe", MoeSpec(block="block_sparse_moe", router="router",
                                                num_experts_key="num_local_experts",
                                                expert_width_key="intermediate_size"),
                          logit_transform=scale_logits)

MOE_ADAPTERS = {a.model_type: a for a in (QWEN3_MOE, QWEN2_MOE, MIXTRAL, OLMOE, GRANITEMOE)}


def moe_spec(model_or_config) -> MoeSpec | None:
    """The MoE spec of a model or config (None for dense families and unsupported ones)."""
    from .families import ADAPTERS  # every family, hybrids with experts included (it imports this module)

    config = getattr(model_or_config, "config", model_or_config)
    adapter = ADAPTERS.get(getattr(config, "model_type", None))
    return None if adapter is None else adapter.moe
