"""Structured pruning: targets, selection from scores, tensor surgery."""
from .api import DEPTH_METRICS, describe_pruning, prune
from .target import TARGET_KEYS, ResolvedTarget, parse_layer_list, resolve_target

__all__ = ["DEPTH_METRICS", "TARGET_KEYS", "ResolvedTarget", "describe_pruning", "parse_layer_list",
           "prune", "resolve_target"]
