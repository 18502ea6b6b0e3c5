"""Mixture-of-experts families: where the router and the fused experts live, and what their config calls things.

transformers 5 stores the routed experts of a layer as two fused 3-D parameters, `experts.gate_up_proj`
(experts, 2 x width, hidden) holding [gate; up] halves, and `experts.down_proj` (experts, hidden, width)
(gpt_oss lays them out otherwise, below), and routes with a linear router (experts, hidden). The router
returns the top-k expert indices and their weights, both (tokens, k); the experts module is called as
`experts(hidden (tokens, hidden), top_k_index, top_k_weights)`, which is where importance estimation
reads the routing (`minitron/importance/moe.py`).

Families (their config names differ):
- qwen3_moe, qwen2_moe: `num_experts`, `moe_intermediate_size`; dense layers (`mlp_only_layers`,
  `decoder_sparse_step`) keep the plain MLP of `intermediate_size`; qwen2_moe adds an always-active
  shared expert (`shared_expert_intermediate_size`) whose output is gated by `shared_expert_gate`.
- mixtral, olmoe, granitemoe: the expert width is `intermediate_size`; granitemoe's block is
  `block_sparse_moe` with a `router`. OLMoE normalises q/k over the whole projection with norms sized
  from `hidden_size`, so its attention width must stay equal to the hidden size.
- nemotron_h (Nemotron 3, arch/hybrid.py): non-gated squared-ReLU experts (`experts.up_proj`
  (experts, width, hidden)), an always-active non-gated shared expert, and a DeepSeek-V3-style router:
  sigmoid scores plus a per-expert `e_score_correction_bias` choose the experts, within the `topk_group`
  best of `n_group` contiguous groups of experts.
- gpt_oss: experts stored transposed, (experts, in, out), with gate and up channels interleaved
  ([g0, u0, g1, u1, ...]) and a bias on both projections; a clamped SwiGLU (`swiglu_alpha`,
  `swiglu_limit`, size-free); a `router` with a bias; attention with biases and one learned sink logit
  per query head (`self_attn.sinks`, sliced with the heads); alternating sliding / full `layer_types`.
- granitemoehybrid (arch/hybrid.py): granitemoe's block beside a layer-level `shared_mlp` with a fused
  [gate; up] `input_linear` (`shared_intermediate_size`); with `num_local_experts=0` only the shared MLP.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import (H, KEEP, ArchAdapter, Axis, llama_like_layer_params, optional_bias_params,
                   scale_logits, standard_global_params)

EXPERT, EG, EM, SM, SG = Axis.EXPERT, Axis.EXPERT_GATE_UP, Axis.EXPERT_MLP, Axis.SHARED_MLP, Axis.SHARED_GATE_UP


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
    shared_gate_up: str | None = None
    """The shared expert's fused [gate; up] input projection, relative to the shared expert
    (granitemoehybrid's `input_linear`); None: separate gate_proj / up_proj, or up_proj alone."""
    attention_width_is_hidden: bool = False
    """OLMoE sizes its q/k norms from hidden_size: heads x head_dim must equal hidden_size."""
    gated_experts: bool = True
    """Routed experts hold a fused [gate; up] `gate_up_proj`; False: a plain `up_proj` (NemotronH)."""
    gated_shared_expert: bool = True
    """The shared expert has gate_proj / up_proj and the block a `shared_expert_gate` (qwen2_moe); False:
    up_proj / down_proj only (NemotronH). Not read when `shared_gate_up` names a fused projection."""
    routing_groups_key: str | None = None
    """Config name of the number of contiguous expert groups the router picks groups from (`n_group`)."""
    topk_group_key: str | None = None
    """Config name of how many groups each token's experts may come from (`topk_group`)."""
    has_experts: Callable[[object], bool] | None = None
    """Given a config, whether it has sparse layers at all (None: always; NemotronH only with 'moe' layers)."""
    experts_transposed: bool = False
    """Fused expert tensors are (experts, in, out) (gpt_oss), not (experts, out, in)."""
    gate_up_interleaved: bool = False
    """gate_up channels alternate [g0, u0, g1, u1, ...] (gpt_oss), not [gate; up] halves."""
    experts_call: tuple[str, str, str] = ("hidden_states", "top_k_index", "top_k_weights")
    """Names of the experts module's arguments: tokens (tokens, hidden), expert indices and router weights
    (tokens, k), for a hook that receives them as keywords."""

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

    def routing_groups(self, config) -> tuple[int, int]:
        """(n_group, topk_group) of grouped routing; (1, 1) for a router that picks among all experts."""
        if self.routing_groups_key is None:
            return 1, 1
        return int(getattr(config, self.routing_groups_key) or 1), int(getattr(config, self.topk_group_key) or 1)

    def gate_up_channels(self, neurons: torch.Tensor, width: int) -> torch.Tensor:
        """The gate_up channels of these expert neurons (..., n) -> (..., 2n), in storage order: sorted
        neurons give sorted channels, so a kept subset keeps the layout."""
        if self.gate_up_interleaved:
            return torch.stack([2 * neurons, 2 * neurons + 1], dim=-1).flatten(-2)
        return torch.cat([neurons, width + neurons], dim=-1)

    def expert_matrices(self, experts: nn.Module) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """(gate (experts, width, hidden), up (same), down (experts, hidden, width)), whatever the storage;
        gate is None for non-gated experts (NemotronH's plain `up_proj`)."""
        if not self.gated_experts:
            return None, experts.up_proj, experts.down_proj
        gate_up, down = experts.gate_up_proj, experts.down_proj
        if self.experts_transposed:
            gate_up, down = gate_up.transpose(1, 2), down.transpose(1, 2)
        if self.gate_up_interleaved:
            return gate_up[:, 0::2], gate_up[:, 1::2], down
        gate, up = gate_up.chunk(2, dim=1)
        return gate, up, down

    def expert_width(self, experts: nn.Module) -> int:
        return self.expert_matrices(experts)[2].shape[-1]


def _submodule_or_none(layer: nn.Module, path: str) -> nn.Module | None:
    try:
        return layer.get_submodule(path)
    except AttributeError:
        return None


def expert_forward(spec: MoeSpec, experts: nn.Module, expert: int,
                   tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One routed expert on (tokens, hidden): (its neuron activations (tokens, width), its output (tokens, hidden)).

    The computation of transformers' fused experts for one expert, unweighted by the router. The gating
    is the module's own `_apply_gate` (what transformers' expert kernels call): [gate; up] SwiGLU for most
    families, the interleaved, clamped SwiGLU for gpt_oss; non-gated experts (NemotronH) compute act(up x).
    """
    def project(inputs: torch.Tensor, weight: torch.Tensor, bias_name: str) -> torch.Tensor:
        out = inputs @ weight if spec.experts_transposed else F.linear(inputs, weight)
        bias = getattr(experts, bias_name, None)
        return out if bias is None else out + bias[expert]

    if spec.gated_experts:
        activation = experts._apply_gate(project(tokens, experts.gate_up_proj[expert], "gate_up_proj_bias"))
    else:
        activation = experts.act_fn(project(tokens, experts.up_proj[expert], "up_proj_bias"))
    return activation, project(activation, experts.down_proj[expert], "down_proj_bias")


def moe_block_params(spec: MoeSpec) -> dict[str, tuple[Axis, ...]]:
    """The sparse block's table: router (rows and any bias, DeepSeek-style correction bias included),
    routed experts in their storage (fused [gate; up], transposed and interleaved with biases, or a plain
    up_proj), and the shared expert if the family has one."""
    router, experts = spec.router_path, spec.experts_path
    table = {f"{router}.weight": (EXPERT, H), f"{router}.bias": (EXPERT,),
             f"{router}.e_score_correction_bias": (EXPERT,)}
    if spec.experts_transposed:  # gpt_oss: (experts, in, out), with biases
        table |= {f"{experts}.gate_up_proj": (EXPERT, H, EG), f"{experts}.down_proj": (EXPERT, EM, H),
                  f"{experts}.gate_up_proj_bias": (EXPERT, EG), f"{experts}.down_proj_bias": (EXPERT, H)}
    elif spec.gated_experts:
        table |= {f"{experts}.gate_up_proj": (EXPERT, EG, H), f"{experts}.down_proj": (EXPERT, H, EM)}
    else:  # NemotronH: non-gated experts
        table |= {f"{experts}.up_proj": (EXPERT, EM, H), f"{experts}.down_proj": (EXPERT, H, EM)}
    return table if spec.shared_expert is None else table | _shared_expert_params(spec)


def _shared_expert_params(spec: MoeSpec) -> dict[str, tuple[Axis, ...]]:
    """The always-active shared expert: a fused [gate; up] input (granitemoehybrid), gate_proj / up_proj with
    the block's `shared_expert_gate` (qwen2_moe), or a plain up_proj (NemotronH); then its down projection."""
    shared, down = spec.shared_expert, f"{spec.shared_expert}.{spec.shared_down}"
    table = {f"{down}.weight": (H, SM), f"{down}.bias": (H,)}
    if spec.shared_gate_up is not None:
        return table | {f"{shared}.{spec.shared_gate_up}.weight": (SG, H)}
    table |= {f"{shared}.up_proj.weight": (SM, H), f"{shared}.up_proj.bias": (SM,)}
    if spec.gated_shared_expert:
        table |= {f"{shared}.gate_proj.weight": (SM, H), f"{spec.block}.shared_expert_gate.weight": (KEEP, H)}
    return table


def _moe_layer_params(spec: MoeSpec, **llama_kwargs) -> dict[str, tuple[Axis, ...]]:
    table = llama_like_layer_params(**llama_kwargs)  # keeps the plain-MLP entries for dense layers
    table |= optional_bias_params(table)
    return table | moe_block_params(spec)


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

# gpt_oss's clamped SwiGLU (swiglu_alpha, swiglu_limit) and its sinks' values are size-free.
GPT_OSS = _moe_adapter("gpt_oss", MoeSpec(router="router", num_experts_key="num_local_experts",
                                          expert_width_key="intermediate_size", experts_transposed=True,
                                          gate_up_interleaved=True,
                                          experts_call=("hidden_states", "router_indices", "routing_weights")),
                       attention_bias=True, extra_params={"self_attn.sinks": (Axis.HEADS,)},
                       notes="transposed experts with interleaved gate/up and biases; clamped SwiGLU; "
                             "one attention sink per query head")

MOE_ADAPTERS = {a.model_type: a for a in (QWEN3_MOE, QWEN2_MOE, MIXTRAL, OLMOE, GRANITEMOE, GPT_OSS)}


def moe_spec(model_or_config) -> MoeSpec | None:
    """The MoE spec of a model or config (None for dense families, unsupported ones, and a family's
    configs without sparse layers, such as a NemotronH of Mamba, attention and MLP layers only)."""
    from .families import ADAPTERS  # the hybrid families carry MoE specs too

    config = getattr(model_or_config, "config", model_or_config)
    adapter = ADAPTERS.get(getattr(config, "model_type", None))
    spec = None if adapter is None else adapter.moe
    if spec is None or (spec.has_experts is not None and not spec.has_experts(config)):
        return None
    return spec
