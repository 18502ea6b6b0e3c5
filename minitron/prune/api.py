"""`minitron.prune(model, scores, target) -> model`: one-shot homogeneous structured pruning."""
from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from ..arch import get_adapter
from ..arch.base import ArchAdapter, text_config
from ..errors import ScoresError, TargetError
from ..fingerprint import model_fingerprint
from ..importance.scores import ImportanceScores
from ..loading import source_dtype
from ..params import count_parameters, count_parameters_from_config
from .select import plan_from_scores
from .surgery import build_model, pruned_config, slice_state_dict, validate_pruned_config
from .target import ResolvedTarget, resolve_target

DEPTH_METRICS = ("block_influence", "lm_loss", "magnitude", "random")


def prune(model: nn.Module, scores: ImportanceScores, target: Mapping,
          depth_metric: str | None = None, expert_metric: str | None = None) -> nn.Module:
    """A new, smaller model; `model` itself is left untouched.

    target: HF config names (`hidden_size`, `intermediate_size`, `num_attention_heads`,
        `num_key_value_heads`, `num_hidden_layers`) and/or `drop_layers` (source layer indices).
    depth_metric: which layer score picks the layers kept when `num_hidden_layers` shrinks
        ("lm_loss", "block_influence", ...); default: lm_loss when present, else Block Influence.
    expert_metric: which expert score picks the routed experts kept when `num_experts` shrinks
        ("weighted_output": router-weighted expert output per token, the default; "reap": the same
        averaged over the expert's routed tokens only; "frequency"; "random").
    """
    adapter = get_adapter(model)
    if not isinstance(scores, ImportanceScores):
        raise ScoresError(f"prune needs ImportanceScores (from estimate_importance, magnitude_scores, "
                          f"random_scores or ImportanceScores.load), got {type(scores).__name__}")
    resolved = _resolve_for(adapter, model.config, target)
    validate_pruned_config(pruned_config(model.config, resolved))
    scores.check_matches(model_fingerprint(model))
    plan = plan_from_scores(scores, model.config, resolved, depth_metric, expert_metric)
    new_config = pruned_config(model.config, resolved, plan.layers)
    new_state = slice_state_dict(adapter, model.state_dict(), plan, model.config)
    if adapter.fix_state is not None:
        adapter.fix_state(new_state, model.config, new_config)
    pruned = build_model(new_config, new_state, dtype=model.dtype)
    pruned.generation_config = model.generation_config
    pruned.train(model.training)
    pruned.minitron_kept_layers = plan.layers  # recorded in minitron.json by the caller
    pruned.minitron_source_dtype = source_dtype(model)  # saved as its source was, whatever it computed in
    return pruned


def describe_pruning(config, target: Mapping) -> dict:
    """A dry run from the config alone: resulting sizes and parameter counts, no weights needed."""
    resolved: ResolvedTarget = _resolve_for(get_adapter(config), config, target)
    new_config = pruned_config(config, resolved)
    validate_pruned_config(new_config)
    before = count_parameters_from_config(config)
    after = count_parameters_from_config(new_config)
    return {"config": new_config, "target": resolved, "params_before": before, "params_after": after}


def _resolve_for(adapter: ArchAdapter, config, target: Mapping) -> ResolvedTarget:
    """resolve_target, then what this family cannot prune (a multimodal projector fixes hidden_size)."""
    resolved = resolve_target(config, target)
    source_hidden = text_config(config).hidden_size
    if adapter.keeps_hidden_size and resolved.hidden_size != source_hidden:
        raise TargetError(f"{adapter.model_type} is multimodal: its projector maps image features into the "
                          f"language model's hidden_size ({source_hidden}), which therefore stays; prune "
                          "intermediate_size, heads or layers instead")
    return resolved


def parameter_summary(model: nn.Module) -> dict:
    return count_parameters(model).as_dict()
