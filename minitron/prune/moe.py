"""Mixture-of-experts pruning: targets, which experts and expert neurons to keep, and the config rewrite.

Axes (config names are the family's, see minitron/arch/moe.py):
- whole experts (`num_experts` / `num_local_experts`): the top experts of each layer by the expert
  metric, with their router rows (and biases);
- the expert FFN width (`moe_intermediate_size`, or `intermediate_size` where that is the expert width):
  the config has one size, so every kept expert keeps the same number of neurons, each its own best;
- the shared-expert width (`shared_expert_intermediate_size`: qwen2_moe's name, also accepted for
  NemotronH's `moe_shared_expert_intermediate_size` and granitemoehybrid's `shared_intermediate_size`, as
  `num_experts` is for `num_local_experts`);
- `num_experts_per_tok` is kept unless a target lowers it.

Grouped routing (NemotronH's `n_group` / `topk_group`, after DeepSeek-V3): transformers splits the
experts into `n_group` contiguous groups, scores each group by its two best experts, and routes a
token only within its `topk_group` best groups. Pruning keeps `n_group` and the same number of
experts in every group, each group its own best (like Mamba heads within their groups): every kept
expert stays in the group it was trained in. Routing is unchanged when the dropped experts were never
among a group's two best scores (those choose the groups) nor picked; with topk_group < n_group an expert
that was never picked can still have ranked its group, and dropping it can re-route tokens. Picking the
best experts globally would regroup them (group g is simply experts [g * E / n_group, (g + 1) * E /
n_group)) and change which experts compete. So the kept count must be
a multiple of n_group with at least two experts per group, and enough experts in `topk_group` groups
for `num_experts_per_tok`.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..arch.moe import MoeSpec, moe_spec
from ..errors import ScoresError, TargetError

# Target names accepted on top of the dense ones; `num_experts` means the family's own name for it.
EXPERT_COUNT_KEYS = ("num_experts", "num_local_experts")
# The shared-expert width: Qwen's name, NemotronH's and granitemoehybrid's; any of them means the family's own.
SHARED_WIDTH_KEYS = ("shared_expert_intermediate_size", "moe_shared_expert_intermediate_size",
                     "shared_intermediate_size")
MOE_TARGET_KEYS = (*EXPERT_COUNT_KEYS, "moe_intermediate_size", *SHARED_WIDTH_KEYS, "num_experts_per_tok")
EXPERT_METRICS = ("reap", "weighted_output", "frequency", "random")
# transformers runs routed experts through torch's grouped_mm, whose rows must be 16-byte aligned: 8 bf16
# values (torch 2.13 on CPU: "strides should be multiple of 16 bytes" for an expert width of 59).
GROUPED_MM_MULTIPLE = 8
# The accumulated router-weighted output beat REAP's per-routed-token mean by far on the MoEfied SmolLM2
# (held-out loss 7.67 vs 10.17 with half the experts, teacher 6.64: docs/BENCHMARKS.md).
DEFAULT_EXPERT_METRIC = "weighted_output"


@dataclass(frozen=True)
class MoeSizes:
    num_experts: int
    num_experts_per_tok: int
    expert_width: int
    shared_width: int | None
    routing_groups: int = 1
    """Contiguous expert groups of grouped routing (n_group): each keeps num_experts / routing_groups."""


def source_moe_sizes(config, spec: MoeSpec) -> MoeSizes:
    shared = getattr(config, spec.shared_width_key) if spec.shared_width_key else None
    return MoeSizes(int(getattr(config, spec.num_experts_key)), int(config.num_experts_per_tok),
                    int(getattr(config, spec.expert_width_key)), None if shared is None else int(shared))


def resolve_moe_sizes(config, target: Mapping, sizes: dict, check_size) -> MoeSizes | None:
    """The MoE sizes of the pruned model (None for a dense family); refuses what cannot be built.

    sizes: the already-resolved dense sizes (the expert width may be `intermediate_size`).
    check_size(key, value, source_value) -> int validates one requested size.
    """
    spec = moe_spec(config)
    requested = [key for key in MOE_TARGET_KEYS if target.get(key) is not None]
    if spec is None:
        if requested:
            raise TargetError(f"{', '.join(requested)}: this {config.model_type} model has no experts")
        return None
    source = source_moe_sizes(config, spec)
    expert_request = _requested_once(target, EXPERT_COUNT_KEYS)
    num_experts = check_size(*expert_request, source.num_experts) if expert_request else source.num_experts
    per_token = source.num_experts_per_tok
    if target.get("num_experts_per_tok") is not None:
        per_token = check_size("num_experts_per_tok", target["num_experts_per_tok"], per_token)
    if per_token > num_experts and source.num_experts:  # Granite-4.0-H-Micro has no routed experts at all
        raise TargetError(f"num_experts={num_experts} is fewer than the {per_token} experts every token is routed "
                          f"to (num_experts_per_tok); keep at least {per_token} experts or lower num_experts_per_tok")
    _check_routing_groups(config, spec, source.num_experts, num_experts, per_token)
    widths = _resolve_widths(config, spec, source, target, sizes, check_size)
    _check_attention_width(config, spec, sizes)
    if source.num_experts:  # without routed experts nothing runs through grouped_mm
        _check_grouped_mm_widths(config, {"hidden_size": sizes["hidden_size"],
                                          spec.expert_width_key: widths[spec.expert_width_key]})
    return MoeSizes(num_experts, per_token, widths[spec.expert_width_key],
                    widths.get(spec.shared_width_key) if spec.shared_width_key else None,
                    routing_groups=spec.routing_groups(config)[0])


def _requested_once(target: Mapping, keys: tuple[str, ...]) -> tuple[str, object] | None:
    """(key, value) of the one size that several names in `keys` stand for; None when none is given."""
    given = [key for key in keys if target.get(key) is not None]
    if len({target[key] for key in given}) > 1:
        raise TargetError(f"{' and '.join(given)} name the same size; give one of them")
    return (given[0], target[given[0]]) if given else None


def _check_routing_groups(config, spec: MoeSpec, source_experts: int, num_experts: int, per_token: int) -> None:
    """Grouped routing (module docstring): every group keeps num_experts / n_group >= 2 experts, and the
    topk_group groups a token may use hold at least num_experts_per_tok of them."""
    if spec.routing_groups_key is None:
        return
    groups, topk_group = spec.routing_groups(config)
    least_per_group = max(2, -(-per_token // topk_group))  # the group score sums its two best experts
    per_group = num_experts // groups
    if num_experts % groups == 0 and per_group >= least_per_group:
        return
    allowed = f"multiples of {groups} from {groups * least_per_group} to {source_experts}" if groups > 1 \
        else f"{least_per_group} to {source_experts}"
    raise TargetError(
        f"num_experts={num_experts}: this {config.model_type} model routes within {spec.routing_groups_key}="
        f"{groups} groups of experts, each token using its {spec.topk_group_key}={topk_group} best group(s) for "
        f"num_experts_per_tok={per_token} experts; pruning keeps the same number of experts in every group "
        f"(at least 2, and enough for num_experts_per_tok), so the allowed num_experts are {allowed}")


def _resolve_widths(config, spec: MoeSpec, source: MoeSizes, target: Mapping, sizes: dict,
                    check_size) -> dict[str, int]:
    """The expert width and the shared-expert width (where the family has one), by config name."""
    width = sizes.get(spec.expert_width_key, target.get(spec.expert_width_key))
    widths = {spec.expert_width_key: source.expert_width if width is None
              else check_size(spec.expert_width_key, width, source.expert_width)}
    if target.get("moe_intermediate_size") is not None and spec.expert_width_key != "moe_intermediate_size":
        raise TargetError(f"moe_intermediate_size: {config.model_type} has no such size; its expert width is "
                          f"{spec.expert_width_key}")
    shared_request = _requested_once(target, SHARED_WIDTH_KEYS)
    if shared_request and spec.shared_width_key is None:
        raise TargetError(f"{shared_request[0]}: {config.model_type} has no such size (no shared expert); its "
                          f"expert width is {spec.expert_width_key}")
    if spec.shared_width_key is not None:
        widths[spec.shared_width_key] = check_size(*shared_request, source.shared_width) if shared_request \
            else source.shared_width
    return widths


def _check_attention_width(config, spec: MoeSpec, sizes: dict) -> None:
    if not spec.attention_width_is_hidden:
        return
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    width = sizes["num_attention_heads"] * head_dim
    if width != sizes["hidden_size"]:
        raise TargetError(
            f"{config.model_type} sizes its q/k norms from hidden_size, so num_attention_heads x head_dim "
            f"({sizes['num_attention_heads']} x {head_dim}) must equal hidden_size ({sizes['hidden_size']}); "
            "prune hidden_size and num_attention_heads together")


def _check_grouped_mm_widths(config, widths: dict[str, int]) -> None:
    for key, value in widths.items():
        if value != getattr(config, key) and value % GROUPED_MM_MULTIPLE:
            raise TargetError(
                f"{key}={value}: transformers computes {config.model_type} experts with torch's grouped_mm, which "
                f"needs 16-byte-aligned rows, so this size must be a multiple of {GROUPED_MM_MULTIPLE} (e.g. "
                f"{value // GROUPED_MM_MULTIPLE * GROUPED_MM_MULTIPLE or GROUPED_MM_MULTIPLE})")


def rewrite_moe_config_(new_config, spec: MoeSpec | None, sizes: MoeSizes | None) -> None:
    if spec is None or sizes is None:
        return
    setattr(new_config, spec.num_experts_key, sizes.num_experts)
    new_config.num_experts_per_tok = sizes.num_experts_per_tok
    setattr(new_config, spec.expert_width_key, sizes.expert_width)
    if spec.shared_width_key:
        setattr(new_config, spec.shared_width_key, sizes.shared_width)


def plan_moe(scores, layers: list[int], sizes: MoeSizes | None, expert_metric: str | None, top_k_sorted):
    """(kept experts, kept neurons per kept expert (experts, width), kept shared neurons), per source layer."""
    experts, expert_neurons, shared_neurons = {}, {}, {}
    if sizes is None:
        return experts, expert_neurons, shared_neurons
    metric = expert_metric or DEFAULT_EXPERT_METRIC
    for layer in layers:
        if layer in scores.expert_neurons:
            kept = _kept_experts(scores.expert_scores(metric)[layer], sizes, top_k_sorted)
            experts[layer] = kept
            per_expert = scores.expert_neurons[layer][kept]
            expert_neurons[layer] = torch.stack([top_k_sorted(row, sizes.expert_width) for row in per_expert])
        if layer in scores.shared_neurons and sizes.shared_width is not None:
            shared_neurons[layer] = top_k_sorted(scores.shared_neurons[layer], sizes.shared_width)
    return experts, expert_neurons, shared_neurons


def _kept_experts(expert_scores: torch.Tensor, sizes: MoeSizes, top_k_sorted) -> torch.Tensor:
    """The best num_experts / routing_groups experts of every contiguous routing group, ascending."""
    per_group = expert_scores.float().view(sizes.routing_groups, -1)
    kept_per_group = sizes.num_experts // sizes.routing_groups
    return torch.cat([group * per_group.shape[1] + top_k_sorted(per_group[group], kept_per_group)
                      for group in range(sizes.routing_groups)])


def moe_axis_index(axis, layer: int, plan, config) -> torch.Tensor:
    """Kept indices along an MoE axis of a source layer; a 2-D (kept experts, kept neurons) index is per expert."""
    from ..arch.base import Axis
    try:
        if axis is Axis.EXPERT:
            return plan.experts[layer]
        if axis is Axis.EXPERT_MLP:
            return plan.expert_neurons[layer]
        if axis is Axis.EXPERT_GATE_UP:  # each kept neuron's gate and up channels
            spec = moe_spec(config)
            return spec.gate_up_channels(plan.expert_neurons[layer], getattr(config, spec.expert_width_key))
        neurons = plan.shared_neurons[layer]
        if axis is Axis.SHARED_GATE_UP:  # [gate; up] halves of a fused shared expert (granitemoehybrid)
            return torch.cat([neurons, getattr(config, moe_spec(config).shared_width_key) + neurons])
        return neurons
    except KeyError:
        raise ScoresError(f"the importance scores hold no expert scores for layer {layer}; recompute them with "
                          "`minitron importance` (this minitron scores experts)") from None
