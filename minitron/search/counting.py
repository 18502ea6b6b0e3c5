"""Parameter counts of candidate architectures from the config alone, without building each candidate.

A decoder layer's parameters depend only on the widths and on the layer's kind (attention, Mamba, MLP,
sparse or dense MoE, sliding or full: whatever its per-layer config fields say). So the count of a model
that keeps n of its layers is a shared part (embeddings, final norm, LM head) plus one count per kept
layer, taken from one-layer models of each kind and one two-layer model: shared = count([a]) + count([b])
- count([a, b]). Which n layers: those the depth scores keep (`scored_depths`) when the search has scores,
as `minitron prune` keeps them; else the first n (a config-only estimate: in a stack whose layers differ
in kind the pruned model can then differ in size).

Each count is a sum of products of sizes, so it depends on a size exactly when changing that size once
changes it: each kind's one-layer count is cached under the sizes it depends on, found by one probe per
size (a Mamba layer does not depend on the attention heads), which keeps a large grid to a few hundred
meta-device builds.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import fields, replace
from typing import TYPE_CHECKING

from ..errors import TargetError
from ..importance.scores import ImportanceScores
from ..params import ParamCount, count_parameters_from_config
from ..prune.select import layers_for_depth
from ..prune.surgery import pruned_config
from ..prune.target import resolve_target
from ..arch.base import text_config

if TYPE_CHECKING:
    from .candidates import Architecture

Count = tuple[int, int, int, int]  # total, embedding, non_embedding, active


class ParamCounter:
    """`counter(architecture)`: its ParamCount (exact, see the module docstring); `exact` builds it."""

    def __init__(self, config, layers_for: Callable[[int], list[int]] | None = None) -> None:
        """layers_for: the source layers a cut to n layers keeps (None: the first n)."""
        self.config = config
        self.kinds = layer_kinds(config)
        self.layers_for = layers_for
        self._depends: dict[int, tuple[str, ...]] = {}  # layer kind -> sizes its one-layer count reads
        self._one_layer: dict[tuple, Count] = {}

    def kept_layers(self, num_layers: int) -> list[int]:
        return self.layers_for(num_layers) if self.layers_for is not None else list(range(num_layers))

    def config_of(self, architecture: Architecture, kept_layers: list[int] | None = None):
        """The pruned model's config: these sizes, and the layers a cut to its depth keeps."""
        resolved = resolve_target(self.config, architecture.as_dict())
        layers = kept_layers if kept_layers is not None else self.kept_layers(architecture.num_hidden_layers)
        return pruned_config(self.config, resolved, layers)

    def exact(self, architecture: Architecture, kept_layers: list[int] | None = None) -> ParamCount:
        return count_parameters_from_config(self.config_of(architecture, kept_layers))

    def __call__(self, architecture: Architecture) -> ParamCount:
        if len(self.kinds) < 2:
            return self.exact(architecture)
        first = self._first_layers()
        a, b = self._pair()
        one = {kind: self._count_one(architecture, kind, index) for kind, index in first.items()}
        pair = self._count_pair(architecture, a, b)
        shared = _combine(one[self.kinds[a]], one[self.kinds[b]], pair, signs=(1, 1, -1))
        total = shared
        for index in self.kept_layers(architecture.num_hidden_layers):
            total = _combine(total, one[self.kinds[index]], shared, signs=(1, 1, -1))
        return ParamCount(*total)

    def _first_layers(self) -> dict[int, int]:
        first: dict[int, int] = {}
        for index, kind in enumerate(self.kinds):
            first.setdefault(kind, index)
        return first

    def _pair(self) -> tuple[int, int]:
        """Two layers of one kind when there are (their count depends on that kind's sizes only), else 0, 1."""
        seen: dict[int, int] = {}
        for index, kind in enumerate(self.kinds):
            if kind in seen:
                return seen[kind], index
            seen[kind] = index
        return 0, 1

    def _count_one(self, architecture: Architecture, kind: int, index: int) -> Count:
        if kind not in self._depends:
            self._depends[kind] = self._sizes_read(architecture, index)
        key = ("one", kind, *(getattr(architecture, name) for name in self._depends[kind]))
        if key not in self._one_layer:
            self._one_layer[key] = _fields(self.exact(architecture.with_layers(1), [index]))
        return self._one_layer[key]

    def _count_pair(self, architecture: Architecture, a: int, b: int) -> Count:
        same_kind = self.kinds[a] == self.kinds[b]
        names = self._depends[self.kinds[a]] if same_kind else _width_names(architecture)
        key = ("pair", *(getattr(architecture, name) for name in names))
        if key not in self._one_layer:
            self._one_layer[key] = _fields(self.exact(architecture.with_layers(2), [a, b]))
        return self._one_layer[key]

    def _sizes_read(self, architecture: Architecture, index: int) -> tuple[str, ...]:
        """The sizes a one-layer model of layer `index`'s kind depends on (one the probes cannot change counts)."""
        one_layer = architecture.with_layers(1)
        base = self.exact(one_layer, [index])
        return tuple(name for name in _width_names(architecture) if self._changes(one_layer, name, index, base))

    def _changes(self, one_layer: Architecture, name: str, index: int, base: ParamCount) -> bool:
        for probe in _probes(one_layer, name):
            try:
                return self.exact(probe, [index]) != base
            except TargetError:
                continue  # refused (e.g. not a multiple of the Mamba groups): try a larger cut
        return True


def _width_names(architecture: Architecture) -> tuple[str, ...]:
    return tuple(f.name for f in fields(architecture)
                 if f.name != "num_hidden_layers" and getattr(architecture, f.name) is not None)


def _probes(architecture: Architecture, name: str) -> list[Architecture]:
    """The architecture with `name` a little smaller, in ways `minitron prune` may accept."""
    q, kv = architecture.num_attention_heads, architecture.num_key_value_heads
    if name == "num_attention_heads":  # one query head fewer in every KV group
        return [replace(architecture, num_attention_heads=q - kv)] if q > kv else []
    if name == "num_key_value_heads":  # one KV group fewer, with its query heads
        return [replace(architecture, num_attention_heads=q - q // kv, num_key_value_heads=kv - 1)] if kv > 1 else []
    value = getattr(architecture, name)
    return [replace(architecture, **{name: smaller}) for smaller in (value - 1, value - 8, value // 2)
            if 0 < smaller < value]


def scored_depths(config, scores: ImportanceScores | None, depth_metric: str | None) -> Callable[[int], list[int]] | None:
    """n -> the source layers `minitron prune` keeps when these scores cut the depth to n (None: no scores)."""
    if scores is None:
        return None
    return functools.cache(lambda num_layers: layers_for_depth(scores, config, num_layers, depth_metric))


def layer_kinds(config) -> list[int]:
    """One id per source layer, the same for layers whose one-layer configs are the same (same kind)."""
    num_layers = text_config(config).num_hidden_layers
    if num_layers < 2:
        return [0] * num_layers
    one_layer = resolve_target(config, {"num_hidden_layers": 1})
    ids: dict[str, int] = {}
    return [ids.setdefault(pruned_config(config, one_layer, [index]).to_json_string(use_diff=False), len(ids))
            for index in range(num_layers)]


def _fields(count: ParamCount) -> Count:
    return count.total, count.embedding, count.non_embedding, count.active


def _combine(*counts: Count, signs: tuple[int, ...]) -> Count:
    return tuple(sum(sign * count[i] for sign, count in zip(signs, counts)) for i in range(4))
