"""Candidate architectures: a grid of homogeneous sizes, their parameter counts, and the budget filter.

Every candidate passes the same checks as `minitron prune` (resolve_target, then transformers' own
config validation), so each one can really be pruned and saved. Parameter counts come from configs on
the meta device; since every layer of a homogeneous model has the same size, a count with 1 and with 2
layers gives the count at any depth (checked against a direct count for every candidate kept).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

from ..errors import MinitronError, TargetError
from ..params import ParamCount, count_parameters_from_config
from ..prune.surgery import pruned_config, validate_pruned_config
from ..prune.target import SIZE_KEYS, resolve_target, source_sizes
from .config import SearchConfig
from ..arch.base import text_config

WIDTH_KEYS = SIZE_KEYS[:4]  # hidden_size, intermediate_size, num_attention_heads, num_key_value_heads


@dataclass(frozen=True)
class Architecture:
    """The five HF sizes of a homogeneous model."""

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    num_hidden_layers: int

    @classmethod
    def of(cls, config) -> Architecture:
        return cls(**source_sizes(config))

    def as_dict(self) -> dict:
        return asdict(self)

    def widths(self) -> tuple[int, ...]:
        return tuple(getattr(self, key) for key in WIDTH_KEYS)

    def target(self, source: Architecture) -> dict:
        """The pruning target: only the sizes that differ from the source."""
        return {k: v for k, v in self.as_dict().items() if v != getattr(source, k)}

    def cut_axes(self, source: Architecture) -> tuple[str, ...]:
        axes = []
        if self.hidden_size < source.hidden_size:
            axes.append("hidden")
        if self.intermediate_size < source.intermediate_size:
            axes.append("mlp")
        if (self.num_attention_heads, self.num_key_value_heads) != (source.num_attention_heads,
                                                                    source.num_key_value_heads):
            axes.append("heads")
        if self.num_hidden_layers < source.num_hidden_layers:
            axes.append("depth")
        return tuple(axes)

    def cut_kind(self, source: Architecture) -> str:
        """width (layers kept), depth (only layers cut) or mixed."""
        axes = self.cut_axes(source)
        return "width" if "depth" not in axes else "depth" if axes == ("depth",) else "mixed"

    def label(self) -> str:
        return (f"hidden {self.hidden_size}, MLP {self.intermediate_size}, heads {self.num_attention_heads}/"
                f"{self.num_key_value_heads} KV, layers {self.num_hidden_layers}")


@dataclass
class Candidate:
    architecture: Architecture
    params: ParamCount
    latency_ms: float | None = None  # measured on this device (latency budgets only)
    memory_gb: float | None = None  # weights + KV cache (+ state) from the config (memory budgets only)
    exact: bool = False  # params counted directly (not extrapolated over depth) / latency measured


def size_grid(source: int, step: int, max_cut: float) -> list[int]:
    """source, source - step, ... down to the largest cut allowed (never below 1)."""
    smallest = max(1, math.ceil(source * (1 - max_cut) - 1e-9))
    return list(range(source, smallest - 1, -step))


def head_grid(heads: int, kv_heads: int, config: SearchConfig) -> list[tuple[int, int]]:
    """(num_attention_heads, num_key_value_heads) pairs: whole KV groups, the same query heads in each."""
    group = heads // kv_heads
    kv_step = config.kv_head_step or max(1, kv_heads // 4)
    smallest_heads = max(1, math.ceil(heads * (1 - config.max_width_cut) - 1e-9))
    pairs = []
    for kv in size_grid(kv_heads, kv_step, config.max_width_cut):
        for per_group in range(group, 0, -config.heads_per_group_step):
            if kv * per_group >= smallest_heads:
                pairs.append((kv * per_group, kv))
    return pairs


def grid(config, search: SearchConfig) -> list[Architecture]:
    """Every architecture of the grid except the source itself (not yet checked against transformers)."""
    source = Architecture.of(config)
    hidden = size_grid(source.hidden_size, search.hidden_step or max(1, round(source.hidden_size / 8)),
                       search.max_width_cut)
    mlp = size_grid(source.intermediate_size, search.mlp_step or max(1, round(source.intermediate_size / 8)),
                    search.max_width_cut)
    layers = size_grid(source.num_hidden_layers, search.layer_step or max(1, source.num_hidden_layers // 8),
                       search.max_depth_cut)
    heads = head_grid(source.num_attention_heads, source.num_key_value_heads, search)
    archs = [Architecture(h, m, q, kv, n) for h, m, (q, kv), n in itertools.product(hidden, mlp, heads, layers)]
    return [a for a in archs if a != source]


def refusal(config, architecture: Architecture) -> str | None:
    """Why `minitron prune` would refuse this architecture (None: it would not)."""
    try:
        validate_pruned_config(pruned_config(config, resolve_target(config, architecture.as_dict())))
    except TargetError as error:
        return str(error)
    return None


class ParamCounter:
    """Parameter counts of candidates from the config alone, cached per width."""

    def __init__(self, config) -> None:
        self.config = config
        self._per_width: dict[tuple[int, ...], tuple[ParamCount, ParamCount]] = {}

    def exact(self, architecture: Architecture) -> ParamCount:
        resolved = resolve_target(self.config, architecture.as_dict())
        return count_parameters_from_config(pruned_config(self.config, resolved))

    def __call__(self, architecture: Architecture) -> ParamCount:
        if text_config(self.config).num_hidden_layers < 2:
            return self.exact(architecture)
        widths = architecture.widths()
        if widths not in self._per_width:
            one = self.exact(Architecture(*widths, 1))
            two = self.exact(Architecture(*widths, 2))
            self._per_width[widths] = one, ParamCount(*(b - a for a, b in zip(_fields(one), _fields(two))))
        one, per_layer = self._per_width[widths]
        extra = architecture.num_hidden_layers - 1
        return ParamCount(*(a + extra * d for a, d in zip(_fields(one), _fields(per_layer))))


def _fields(count: ParamCount) -> tuple[int, int, int, int]:
    return count.total, count.embedding, count.non_embedding, count.active


def enumerate_candidates(config, search: SearchConfig, counter: ParamCounter | None = None) -> tuple[list[Candidate], dict]:
    """Valid candidates with their (extrapolated) parameter counts, and counts of what the grid held."""
    counter = counter or ParamCounter(config)
    archs = grid(config, search)
    valid, refused = [], {}
    for arch in archs:
        reason = refusal(config, arch)
        if reason is None:
            valid.append(Candidate(arch, counter(arch)))
        else:
            refused.setdefault(reason, 0)
            refused[reason] += 1
    if not valid:
        example = next(iter(refused), "the grid is empty: allow larger cuts or smaller steps")
        raise MinitronError(f"no candidate architecture can be built from this model with these steps and cuts "
                            f"({len(archs)} tried); for example: {example}")
    return valid, {"grid": len(archs), "valid": len(valid), "refused": sum(refused.values()),
                   "refusal_examples": list(refused)[:3]}
