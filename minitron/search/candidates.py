"""Candidate architectures: a grid of homogeneous sizes, their parameter counts, and the budget filter.

Every candidate passes the same checks as `minitron prune` (resolve_target, then transformers' own
config validation), so each one can really be pruned and saved. Beyond the five dense sizes, the grid
varies the MoE and Mamba axes the family's adapter has (axes.py). Parameter counts come from configs on
the meta device: a decoder layer's size depends only on the widths and on its kind (attention, Mamba,
MLP, sparse or dense MoE, as the per-layer config fields say), so one-layer models of each kind give the
count at any depth (checked against a direct count for every candidate kept), for the layers the depth
scores keep when the search has scores (counting.py).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, replace

from ..errors import MinitronError, ScoresError, SettingsError, TargetError
from ..params import ParamCount
from ..prune.surgery import pruned_config, validate_pruned_config
from ..prune.target import SIZE_KEYS, resolve_target, source_sizes
from .axes import OPTIONAL_AXES, dense_steps, optional_sizes, optional_steps
from .config import SearchConfig
from .counting import ParamCounter
from ..arch.base import text_config

WIDTH_KEYS = SIZE_KEYS[:4]  # hidden_size, intermediate_size, num_attention_heads, num_key_value_heads
MAX_GRID = 20_000  # architectures checked against transformers; beyond this the screening takes minutes
_CUT_NAMES = {"hidden_size": "hidden", "intermediate_size": "mlp", "num_experts": "experts",
              "moe_intermediate_size": "expert_mlp", "shared_expert_intermediate_size": "shared_mlp",
              "mamba_num_heads": "mamba"}
_LABELS = {"num_experts": "experts", "moe_intermediate_size": "expert MLP",
           "shared_expert_intermediate_size": "shared MLP", "mamba_num_heads": "Mamba heads"}


@dataclass(frozen=True)
class Architecture:
    """The five HF sizes of a homogeneous model, and the MoE / Mamba sizes its family has (None: no such
    axis, so a dense model's architecture is its five sizes)."""

    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    num_hidden_layers: int
    num_experts: int | None = None
    moe_intermediate_size: int | None = None
    shared_expert_intermediate_size: int | None = None
    mamba_num_heads: int | None = None

    @classmethod
    def of(cls, config) -> Architecture:
        return cls(**source_sizes(config), **optional_sizes(config))

    def as_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if value is not None}

    def widths(self) -> tuple[int, ...]:
        """Every size but the layer count (a dense model's: hidden, MLP, heads, KV heads)."""
        return tuple(v for k, v in self.as_dict().items() if k != "num_hidden_layers")

    def with_layers(self, num_hidden_layers: int) -> Architecture:
        return replace(self, num_hidden_layers=num_hidden_layers)

    def target(self, source: Architecture) -> dict:
        """The pruning target: only the sizes that differ from the source."""
        return {k: v for k, v in self.as_dict().items() if v != getattr(source, k)}

    def cut_axes(self, source: Architecture) -> tuple[str, ...]:
        """The axes cut, in the order hidden, mlp, heads, the MoE / Mamba axes, depth."""
        axes = [name for key, name in _CUT_NAMES.items()
                if getattr(self, key) is not None and getattr(self, key) < getattr(source, key)]
        if (self.num_attention_heads, self.num_key_value_heads) != (source.num_attention_heads,
                                                                    source.num_key_value_heads):
            axes.insert(len([a for a in axes if a in ("hidden", "mlp")]), "heads")
        if self.num_hidden_layers < source.num_hidden_layers:
            axes.append("depth")
        return tuple(axes)

    def cut_kind(self, source: Architecture) -> str:
        """width (layers kept), depth (only layers cut) or mixed."""
        axes = self.cut_axes(source)
        return "width" if "depth" not in axes else "depth" if axes == ("depth",) else "mixed"

    def label(self) -> str:
        extra = "".join(f", {_LABELS[key]} {getattr(self, key)}" for key in OPTIONAL_AXES
                        if getattr(self, key) is not None)
        return (f"hidden {self.hidden_size}, MLP {self.intermediate_size}, heads {self.num_attention_heads}/"
                f"{self.num_key_value_heads} KV, layers {self.num_hidden_layers}{extra}")


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


def axis_values(config, search: SearchConfig, counter: ParamCounter) -> tuple[dict[str, list], list]:
    """The sizes tried on each axis, and the (query heads, KV heads) pairs; fixed and inert axes hold one."""
    source = Architecture.of(config)
    sizes = source.as_dict()
    steps = {**dense_steps(config, search), **optional_steps(config, search, optional_sizes(config))}
    values = {key: size_grid(sizes[key], step, search.max_width_cut) if step else [sizes[key]]
              for key, step in steps.items()}
    values["num_hidden_layers"] = size_grid(source.num_hidden_layers,
                                            search.layer_step or max(1, source.num_hidden_layers // 8),
                                            search.max_depth_cut)
    fixed = search.fixed_axis_names()
    unknown = sorted(set(fixed) - set(sizes))
    if unknown:
        raise SettingsError(f"--fixed-axes: this model has no axis {', '.join(unknown)}; its axes are "
                            f"{', '.join(sizes)}")
    for key in values:
        if key in fixed or (key not in ("hidden_size", "num_hidden_layers")
                            and _inert(counter, source, key, values[key][-1])):
            values[key] = [sizes[key]]
    heads = [(q, kv) for q, kv in head_grid(source.num_attention_heads, source.num_key_value_heads, search)
             if ("num_attention_heads" not in fixed or q == source.num_attention_heads)
             and ("num_key_value_heads" not in fixed or kv == source.num_key_value_heads)]
    return values, heads


def _inert(counter: ParamCounter, source: Architecture, key: str, smallest: int) -> bool:
    """Whether cutting this axis changes no parameter count (a dense MLP size no layer uses)."""
    if smallest == getattr(source, key):
        return False
    try:
        return counter(replace(source, **{key: smallest})) == counter(source)
    except TargetError:
        return False


def grid(config, search: SearchConfig, counter: ParamCounter | None = None) -> list[Architecture]:
    """Every architecture of the grid except the source itself (not yet checked against transformers)."""
    source = Architecture.of(config)
    values, heads = axis_values(config, search, counter or ParamCounter(config))
    keys = list(values)
    size = math.prod(len(v) for v in values.values()) * len(heads)
    if size > MAX_GRID:
        raise MinitronError(f"the grid holds {size:,} architectures ({' x '.join(str(len(v)) for v in values.values())}"
                            f" x {len(heads)} head counts), more than {MAX_GRID:,}: raise the steps (--hidden-step, "
                            "--mlp-step, --expert-step, ...) or hold axes at the source's size with --fixed-axes")
    archs = []
    for combination, (q, kv) in itertools.product(itertools.product(*values.values()), heads):
        archs.append(Architecture(**dict(zip(keys, combination)), num_attention_heads=q, num_key_value_heads=kv))
    return [a for a in archs if a != source]


def refusal(config, architecture: Architecture) -> str | None:
    """Why `minitron prune` would refuse this architecture (None: it would not)."""
    try:
        validate_pruned_config(pruned_config(config, resolve_target(config, architecture.as_dict())))
    except TargetError as error:
        return str(error)
    return None


def enumerate_candidates(config, search: SearchConfig, counter: ParamCounter | None = None) -> tuple[list[Candidate], dict]:
    """Valid candidates with their (extrapolated) parameter counts, and counts of what the grid held."""
    counter = counter or ParamCounter(config)
    archs = grid(config, search, counter)
    valid, refused = [], {}
    for arch in archs:
        reason = refusal(config, arch)
        if reason is None:
            try:
                valid.append(Candidate(arch, counter(arch)))
            except (TargetError, ScoresError) as error:  # the depth scores cannot choose its layers
                reason = str(error)
        if reason is not None:
            refused.setdefault(reason, 0)
            refused[reason] += 1
    if not valid:
        example = next(iter(refused), "the grid is empty: allow larger cuts or smaller steps")
        raise MinitronError(f"no candidate architecture can be built from this model with these steps and cuts "
                            f"({len(archs)} tried); for example: {example}")
    return valid, {"grid": len(archs), "valid": len(valid), "refused": sum(refused.values()),
                   "refusal_examples": list(refused)[:3]}
