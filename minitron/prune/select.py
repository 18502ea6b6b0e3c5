"""Which parts to keep, from importance scores: the top-k of every axis, in their original order."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..arch.base import text_config
from ..errors import TargetError
from ..importance.scores import ImportanceScores
from ..importance.task_depth import kept_layers_by_task, task_of
from .moe import plan_moe
from .target import ResolvedTarget, hybrid_attention_layers


@dataclass
class KeepPlan:
    """Indices into the *source* model of everything the pruned model keeps (sorted ascending)."""

    hidden: torch.Tensor
    layers: list[int]
    neurons: dict[int, torch.Tensor]  # source layer index -> kept MLP neurons
    q_heads: dict[int, torch.Tensor]  # source layer index -> kept query heads
    kv_heads: dict[int, torch.Tensor]  # source layer index -> kept KV heads
    mamba_heads: dict[int, torch.Tensor] = field(default_factory=dict)  # Mamba layer -> kept heads
    mamba_head_dim: dict[int, torch.Tensor] = field(default_factory=dict)  # Mamba layer -> kept head-dim positions
    experts: dict[int, torch.Tensor] = field(default_factory=dict)  # source layer -> kept routed experts
    expert_neurons: dict[int, torch.Tensor] = field(default_factory=dict)  # -> (kept experts, kept neurons)
    shared_neurons: dict[int, torch.Tensor] = field(default_factory=dict)  # -> kept shared-expert neurons


def top_k_sorted(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores, in ascending index order (ties resolved by lower index)."""
    order = torch.argsort(scores.float(), descending=True, stable=True)
    return torch.sort(order[:k]).values


def select_heads(head_scores: torch.Tensor, num_kv_heads: int, target: ResolvedTarget) -> tuple[torch.Tensor, torch.Tensor]:
    """GQA-aware head choice: keep whole KV groups, then the same number of query heads in each.

    HF's `repeat_kv` maps query head h to KV head h // group, so query heads of one group are
    contiguous. Groups are ranked by the summed importance of their query heads.
    """
    group = head_scores.numel() // num_kv_heads
    per_group = head_scores.float().view(num_kv_heads, group)
    kept_groups = top_k_sorted(per_group.sum(dim=1), target.num_key_value_heads)
    heads_per_group = target.num_attention_heads // target.num_key_value_heads
    kept_heads = [g * group + top_k_sorted(per_group[g], heads_per_group) for g in kept_groups.tolist()]
    return torch.cat(kept_heads), kept_groups


# The LM-loss increase is the seeds' depth criterion and far better than Block Influence when both
# exist (demo: held-out loss 6.15 vs 10.64 after dropping 15 of SmolLM2's 30 layers).
LAYER_METRIC_PREFERENCE = ("lm_loss", "block_influence", "magnitude", "random")


def default_depth_metric(scores: ImportanceScores) -> str:
    """The LM-loss metric when the scores have it, else Block Influence, else whatever they hold."""
    for metric in LAYER_METRIC_PREFERENCE:
        if metric in scores.layers:
            return metric
    return next(iter(scores.layers), "block_influence")


def select_layers(scores: ImportanceScores, config, target: ResolvedTarget, depth_metric: str | None) -> list[int]:
    if target.drop_layers is not None:  # resolve_target refused lists that drop every attention layer
        return [i for i in range(scores.num_layers) if i not in set(target.drop_layers)]
    return layers_for_depth(scores, config, target.num_hidden_layers, depth_metric)


def layers_for_depth(scores: ImportanceScores, config, num_layers: int, depth_metric: str | None) -> list[int]:
    """The source layers a cut to `num_layers` keeps: the best by `depth_metric`, and in a hybrid stack at
    least one attention layer (see keep_an_attention_layer)."""
    depth_metric = depth_metric or default_depth_metric(scores)
    if num_layers == scores.num_layers:
        return list(range(scores.num_layers))
    if task_of(depth_metric):  # the seeds' rule: one contiguous block, chosen by task accuracy
        kept = kept_layers_by_task(scores.layers, depth_metric, scores.num_layers, num_layers)
    else:
        kept = top_k_sorted(scores.layer_scores(depth_metric), num_layers).tolist()
    return keep_an_attention_layer(config, kept, scores, depth_metric)


def keep_an_attention_layer(config, kept: list[int], scores: ImportanceScores, depth_metric: str) -> list[int]:
    """`kept`, or when it holds none of a hybrid stack's attention layers, `kept` with its lowest-scored
    layer swapped for the best-scored attention layer.

    transformers cannot generate with a cache from a NemotronH / Granite hybrid without attention layers
    (its cache's get_seq_length reads the first attention layer), so a depth cut keeps one; its size is
    what the search counts as well (layers_for_depth is what both call)."""
    attention = hybrid_attention_layers(config)
    if not attention or set(kept) & set(attention):
        return kept
    if task_of(depth_metric):
        raise TargetError(f"{depth_metric} drops the block of layers that holds every attention layer "
                          f"({attention}) of this hybrid stack, keeping layers {kept}; transformers cannot "
                          "generate with a cache from a hybrid without attention. Drop other layers with "
                          "drop_layers (--drop-layers), keeping at least one of them")
    layer_scores = scores.layer_scores(depth_metric).float()
    best_attention = max(attention, key=lambda index: (layer_scores[index].item(), -index))
    weakest = min(kept, key=lambda index: (layer_scores[index].item(), -index))
    return sorted({*kept, best_attention} - {weakest})


def plan_from_scores(scores: ImportanceScores, config, target: ResolvedTarget,
                     depth_metric: str | None = None, expert_metric: str | None = None) -> KeepPlan:
    layers = select_layers(scores, config, target, depth_metric)
    neurons, q_heads, kv_heads = {}, {}, {}
    for layer in layers:  # a hybrid stack's layer without an MLP (attention) has empty scores for it
        if scores.neurons[layer].numel():
            neurons[layer] = top_k_sorted(scores.neurons[layer], target.intermediate_size)
        if scores.heads[layer].numel():
            q_heads[layer], kv_heads[layer] = select_heads(scores.heads[layer], text_config(config).num_key_value_heads, target)
    hidden = top_k_sorted(scores.hidden, target.hidden_size)
    experts, expert_neurons, shared_neurons = plan_moe(scores, layers, target.moe, expert_metric, top_k_sorted)
    plan = KeepPlan(hidden=hidden, layers=layers, neurons=neurons, q_heads=q_heads, kv_heads=kv_heads,
                    experts=experts, expert_neurons=expert_neurons, shared_neurons=shared_neurons)
    if scores.mamba_heads:
        plan.mamba_heads, plan.mamba_head_dim = select_mamba(scores, config, target, layers)
    return plan


def select_mamba(scores: ImportanceScores, config, target: ResolvedTarget,
                 layers: list[int]) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Per kept Mamba layer: the best heads of every group, and the best head-dim positions."""
    from ..arch import get_adapter
    from ..arch.mamba import select_mamba_heads

    heads, head_dim, groups, _ = get_adapter(config).mamba.sizes(config)
    kept_heads = target.mamba_num_heads or heads
    kept_dim = target.mamba_head_dim or head_dim
    chosen = [layer for layer in layers if layer in scores.mamba_heads]
    return ({layer: select_mamba_heads(scores.mamba_heads[layer], groups, kept_heads) for layer in chosen},
            {layer: top_k_sorted(scores.mamba_head_dim[layer], kept_dim) for layer in chosen})
