"""Pruning targets: a plain dict of HF config names, validated against the source before any work."""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..arch.mamba import MAMBA_TARGET_KEYS
from ..errors import TargetError
from .moe import MOE_TARGET_KEYS, MoeSizes, resolve_moe_sizes

SIZE_KEYS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
             "num_hidden_layers")
MAMBA_KEYS = MAMBA_TARGET_KEYS  # hybrid stacks only
TARGET_KEYS = (*SIZE_KEYS, "drop_layers", *MAMBA_KEYS, *MOE_TARGET_KEYS)
_LAYER_ENTRY = re.compile(r"(?P<start>[0-9]+)(?:\s*-\s*(?P<end>[0-9]+))?")


@dataclass(frozen=True)
class ResolvedTarget:
    """Every size of the pruned model, and the layers to drop when they were listed explicitly."""

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    num_hidden_layers: int
    drop_layers: tuple[int, ...] | None
    mamba_num_heads: int | None = None
    """Mamba-2 heads per Mamba layer (None: the source's, or no Mamba layers)."""
    mamba_head_dim: int | None = None
    moe: MoeSizes | None = None
    """Experts, experts per token and expert widths of a mixture-of-experts model (None: dense)."""


def source_sizes(config) -> dict[str, int]:
    from ..arch.base import text_config  # a multimodal checkpoint's sizes are its language model's
    return {key: int(getattr(text_config(config), key)) for key in SIZE_KEYS}


def resolve_target(config, target: Mapping) -> ResolvedTarget:
    """Fill unspecified sizes from the source and refuse anything the source cannot become."""
    if not isinstance(target, Mapping):
        raise TargetError(f"a target is a mapping of config names to sizes, e.g. {{'hidden_size': 384}}; "
                          f"got {type(target).__name__}")
    unknown = sorted(set(target) - set(TARGET_KEYS))
    if unknown:
        raise TargetError(f"unknown target key(s) {unknown}; allowed: {', '.join(TARGET_KEYS)}")
    source = source_sizes(config)
    sizes = dict(source)
    for key in SIZE_KEYS:
        if target.get(key) is not None:
            sizes[key] = _positive_int(key, target[key], source[key])
    if target.get("num_attention_heads") is not None and target.get("num_key_value_heads") is None \
            and source["num_attention_heads"] == source["num_key_value_heads"]:
        sizes["num_key_value_heads"] = sizes["num_attention_heads"]  # multi-head attention stays MHA
    if target.get("num_key_value_heads") is not None and target.get("num_attention_heads") is None:
        # Whole KV groups are pruned, each with its query heads: the query heads go with them.
        group = source["num_attention_heads"] // source["num_key_value_heads"]
        sizes["num_attention_heads"] = sizes["num_key_value_heads"] * group
    _check_heads(sizes, source)
    drop_layers = _resolve_drop_layers(target.get("drop_layers"), source["num_hidden_layers"])
    if drop_layers is not None:
        remaining = source["num_hidden_layers"] - len(drop_layers)
        if target.get("num_hidden_layers") is not None and sizes["num_hidden_layers"] != remaining:
            raise TargetError(f"drop_layers removes {len(drop_layers)} of {source['num_hidden_layers']} layers, "
                              f"leaving {remaining}, but num_hidden_layers={sizes['num_hidden_layers']}")
        sizes["num_hidden_layers"] = remaining
        _check_keeps_attention(config, drop_layers)
    moe = resolve_moe_sizes(config, target, sizes, _positive_int)
    mamba = _resolve_mamba(config, target, sizes["hidden_size"])
    return ResolvedTarget(**sizes, drop_layers=drop_layers, moe=moe, **mamba)


def hybrid_attention_layers(config) -> list[int]:
    """The attention layers of a stack whose layers differ in kind, by the family adapter's
    `attention_layers` hook ([] for other families: there, every layer is attention)."""
    from ..arch.base import text_config
    from ..arch.families import ADAPTERS  # not get_adapter: targets of any family are resolved here

    hook = getattr(ADAPTERS.get(getattr(config, "model_type", None)), "attention_layers", None)
    return list(hook(text_config(config))) if hook is not None else []


def _check_keeps_attention(config, drop_layers: tuple[int, ...]) -> None:
    """transformers cannot generate with a cache from a hybrid (NemotronH, Granite) without attention layers."""
    attention = hybrid_attention_layers(config)
    if attention and set(attention) <= set(drop_layers):
        raise TargetError(f"drop_layers {list(drop_layers)} removes every attention layer ({attention}) of this "
                          f"hybrid {config.model_type} stack, and transformers cannot generate with a cache from "
                          f"a hybrid without attention: leave at least one of them (e.g. layer {attention[-1]}) "
                          "out of drop_layers, or give num_hidden_layers instead (the scores then choose, keeping "
                          "the best attention layer)")


def _resolve_mamba(config, target: Mapping, hidden_size: int) -> dict[str, int]:
    """The Mamba sizes a target asks for, checked against the source's Mamba-2 mixers and the hidden size."""
    from ..arch.families import ADAPTERS  # the family's config names for its Mamba sizes

    asked = {key: target[key] for key in MAMBA_KEYS if target.get(key) is not None}
    adapter = ADAPTERS.get(getattr(config, "model_type", None))
    layout = adapter.mamba if adapter is not None else None
    if layout is None:
        if asked:
            raise TargetError(f"{', '.join(asked)}: model_type {config.model_type!r} has no Mamba layers; these "
                              "targets apply to hybrid Mamba stacks such as nemotron_h and granitemoehybrid")
        return {}
    heads, head_dim, groups, _ = layout.sizes(config)
    resolved = {"mamba_num_heads": heads, "mamba_head_dim": head_dim}
    for key, value in asked.items():
        resolved[key] = _positive_int(key, value, resolved[key])
    if resolved["mamba_num_heads"] % groups:
        raise TargetError(f"mamba_num_heads={resolved['mamba_num_heads']} is not a multiple of the {groups} Mamba "
                          f"groups ({layout.n_groups_key}): heads are pruned evenly within the groups, so give a "
                          f"multiple of {groups}")
    problem = layout.inner_width_problem(resolved["mamba_num_heads"], resolved["mamba_head_dim"], hidden_size)
    if problem:
        raise TargetError(f"{config.model_type}: {problem}")
    return resolved if asked else {}


def _positive_int(key: str, value, source_value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise TargetError(f"{key} must be a whole number, got {value!r}")
    if value <= 0:
        raise TargetError(f"{key} must be positive, got {value}")
    if value > source_value:
        raise TargetError(f"{key}={value} is larger than the source model's {source_value}; "
                          "pruning can only make a model smaller")
    return value


def _check_heads(sizes: dict, source: dict) -> None:
    heads, kv_heads = sizes["num_attention_heads"], sizes["num_key_value_heads"]
    if heads % kv_heads:
        raise TargetError(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}; "
                          "every KV group must keep the same number of query heads: give num_attention_heads "
                          f"as a multiple of {kv_heads}")
    group = source["num_attention_heads"] // source["num_key_value_heads"]
    if heads // kv_heads > group:
        raise TargetError(
            f"num_attention_heads={heads} over num_key_value_heads={kv_heads} needs {heads // kv_heads} query "
            f"heads per KV group, but the source has only {group}; keep more KV heads or fewer query heads")


def _resolve_drop_layers(drop_layers, num_layers: int) -> tuple[int, ...] | None:
    if drop_layers is None:
        return None
    indices = check_layer_indices(drop_layers, "drop_layers")
    for index in indices:
        if index >= num_layers:
            raise TargetError(f"drop_layers index {index} is out of range: the source has layers 0..{num_layers - 1}")
    if len(indices) >= num_layers:
        raise TargetError(f"drop_layers would remove all {num_layers} layers; keep at least one")
    return tuple(sorted(indices))


def check_layer_indices(indices, where: str = "drop_layers") -> list[int]:
    """A non-empty list of distinct non-negative layer indices, or a TargetError saying what is wrong.

    The range against a model's layer count is checked where the model is known (`resolve_target`).
    """
    if isinstance(indices, (str, bytes)) or not hasattr(indices, "__iter__"):
        raise TargetError(f"{where} must be a list of layer indices, got {indices!r}")
    indices = list(indices)
    if not indices:
        raise TargetError(f"{where} lists no layers; give at least one index (or leave it out to drop none)")
    for index in indices:
        if isinstance(index, bool) or not isinstance(index, int):
            raise TargetError(f"{where} holds {index!r}, which is not a layer index")
        if index < 0:
            raise TargetError(f"{where} holds {index}: layer indices count from 0 (negative indices are not "
                              "accepted)")
    repeated = sorted({index for index in indices if indices.count(index) > 1})
    if repeated:
        raise TargetError(f"{where} lists layer(s) {repeated} more than once: {indices}")
    return indices


def parse_layer_list(text: str) -> list[int]:
    """'16-31' or '3,5,7-9' -> [16, ..., 31] / [3, 5, 7, 8, 9] (inclusive ranges), for the CLI and recipes.

    Anything else is refused: empty entries, backwards ranges ('2-1'), negative or non-numeric
    indices, and layers listed twice.
    """
    hint = "use layer indices and ascending ranges like '3,5,16-31'"
    if not isinstance(text, str) or not text.strip():
        raise TargetError(f"the layer list is empty; {hint}")
    layers: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        match = _LAYER_ENTRY.fullmatch(part)
        if not part:
            raise TargetError(f"layer list {text!r} has an empty entry (a stray comma); {hint}")
        if part.startswith("-") and part[1:].strip().isdigit():
            raise TargetError(f"layer list {text!r} holds {part}: layers count from 0, negative indices are "
                              "not accepted")
        if match is None:
            raise TargetError(f"cannot read {part!r} in layer list {text!r}; {hint}")
        start, end = int(match["start"]), int(match["end"] or match["start"])
        if end < start:
            raise TargetError(f"range {part!r} in layer list {text!r} runs backwards; write {end}-{start}")
        layers.extend(range(start, end + 1))
    return check_layer_indices(layers, f"layer list {text!r}")
