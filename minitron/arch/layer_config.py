"""Per-layer config fields after a depth cut: every one must describe the kept layers, in their order.

Configs describe per-layer behaviour in three ways, and each is rewritten so that every kept layer
behaves as it did in the source:
- lists with one entry per layer (`layer_types`, `no_rope_layers`, ...): subset to the kept layers;
- lists of layer indices (`mlp_only_layers`): renumbered to the kept layers' new positions;
- scalars that encode a per-layer rule: a threshold (Qwen's `max_window_layers`: layers below it use
  full attention) stays a threshold, because kept layers keep their order; a period (Gemma 3's
  `sliding_window_pattern`, Qwen-MoE's `decoder_sparse_step`) rarely survives a cut, so it is
  rewritten when one still fits, and otherwise the explicit list that transformers reads instead
  (`layer_types`, `mlp_only_layers`) carries the behaviour.
"""
from __future__ import annotations

from collections.abc import Sequence

# "Layers below this index are one kind, the rest the other": max_window_layers (Qwen2/Qwen3 and their
# relatives: layers >= it slide when use_sliding_window), first_k_dense_replace (DeepSeek: dense below it).
LAYER_THRESHOLDS = ("max_window_layers", "first_k_dense_replace")
# Lists of layer indices, not one entry per layer.
LAYER_INDEX_LISTS = ("mlp_only_layers",)
# Lists that are not per-layer even when their length happens to equal the layer count.
NOT_PER_LAYER = ("architectures", "eos_token_id", "bad_words_ids", "suppress_tokens", "begin_suppress_tokens",
                 "drop_layers", "mtp_layers_block_type", *LAYER_INDEX_LISTS)
# Gemma 3's backward-compatible period: layer i is full attention when (i + 1) % period == 0, else sliding.
SLIDING_PATTERN_FIELDS = ("_sliding_window_pattern", "sliding_window_pattern")


def subset_layer_fields_(config, source_config, kept_layers: Sequence[int]) -> None:
    """Rewrite every per-layer field of `config` (a copy of `source_config`) for `kept_layers` only."""
    num_layers = source_config.num_hidden_layers
    new_index = {old: new for new, old in enumerate(kept_layers)}
    for key, value in list(vars(config).items()):
        if isinstance(value, list) and len(value) == num_layers and key not in NOT_PER_LAYER:
            setattr(config, key, [value[i] for i in kept_layers])
    for key in LAYER_THRESHOLDS:
        threshold = getattr(source_config, key, None)
        if isinstance(threshold, int) and not isinstance(threshold, bool):
            setattr(config, key, sum(1 for old in kept_layers if old < threshold))
    _rewrite_sparse_step_(config, source_config, kept_layers)
    for key in LAYER_INDEX_LISTS:
        indices = getattr(config, key, None)
        if isinstance(indices, list):
            setattr(config, key, [new_index[old] for old in indices if old in new_index])
    _rewrite_sliding_pattern_(config)


def _rewrite_sparse_step_(config, source_config, kept_layers: Sequence[int]) -> None:
    """Qwen-MoE: layer i is sparse when (i + 1) % decoder_sparse_step == 0 and i is not in mlp_only_layers.

    A period rarely survives a cut: the dense layers become the explicit list mlp_only_layers
    (in source indices here; renumbered with the other index lists), and the step becomes 1.
    """
    step = getattr(source_config, "decoder_sparse_step", None)
    if not isinstance(step, int) or step <= 1:
        return
    dense = set(getattr(source_config, "mlp_only_layers", None) or [])
    dense |= {old for old in range(source_config.num_hidden_layers) if (old + 1) % step}
    config.mlp_only_layers = sorted(old for old in dense if old in set(kept_layers))
    config.decoder_sparse_step = 1


def _rewrite_sliding_pattern_(config) -> None:
    """Keep Gemma 3's period only where it still reproduces the (already subset) `layer_types`.

    transformers reads `layer_types` whenever it is given and falls back to the period only without
    it, so where no period fits the cut stack the stale number is removed rather than saved.
    """
    layer_types = getattr(config, "layer_types", None)
    for key in SLIDING_PATTERN_FIELDS:
        if not hasattr(config, key) or not isinstance(layer_types, list):
            continue
        candidates = [getattr(config, key), *range(1, len(layer_types) + 2)]  # the source's own period first
        fitting = [period for period in candidates if isinstance(period, int) and period > 0
                   and layer_types == sliding_pattern_layer_types(period, len(layer_types))]
        if fitting:
            setattr(config, key, fitting[0])
        else:
            delattr(config, key)


def sliding_pattern_layer_types(period: int, num_layers: int) -> list[str]:
    """The layer_types Gemma 3 derives from a period (the last layer of each period is full attention)."""
    return ["sliding_attention" if (i + 1) % period else "full_attention" for i in range(num_layers)]
