"""The budget (parameters or measured latency) and the shortlist of candidates that meet it.

A candidate is kept only when its exact value (a direct parameter count, or a real latency measurement)
is at or under the budget, so the search never returns a candidate over budget. Among those, the ones
close to the budget (within `slack`) are preferred, spread over width-only, depth-only and mixed cuts.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import MinitronError
from ..params import ParamCount
from ..prune.surgery import pruned_config
from ..prune.target import resolve_target
from ..speed import measure_throughput, random_model
from .candidates import Architecture, Candidate
from .config import SearchConfig
from .memory import memory_gb

KIND_ORDER = ("width", "mixed", "depth")  # the seeds: at these scales width beats depth


@dataclass(frozen=True)
class Budget:
    metric: str  # "total" | "non_embedding" | "active" (parameters) | "latency_ms" | "memory_gb"
    limit: float
    source: float  # the source model's value of the same metric
    slack: float
    latency_setting: dict | None = None  # batch_size, seq_len, new_tokens, device
    memory_setting: dict | None = None  # batch, context, bytes per value

    @property
    def floor(self) -> float:
        return self.limit * (1 - self.slack)

    def value(self, candidate: Candidate) -> float:
        if self.metric in ("latency_ms", "memory_gb"):
            return float(getattr(candidate, self.metric))
        return float(getattr(candidate.params, self.metric))

    def describe(self, value: float) -> str:
        if self.metric == "latency_ms":
            return f"{value:,.1f} ms"
        if self.metric == "memory_gb":
            return f"{value:,.3f} GB"
        return f"{int(value):,} {self.metric.replace('_', '-')} parameters"

    def as_dict(self) -> dict:
        return {"metric": self.metric, "limit": self.limit, "source": self.source, "slack": self.slack,
                "fraction_of_source": self.limit / self.source, "latency_setting": self.latency_setting,
                "memory_setting": self.memory_setting}


def params_budget(source: ParamCount, search: SearchConfig) -> Budget:
    """--target-params as an absolute count (a value up to 1 is a fraction of the source)."""
    source_value = getattr(source, search.budget_on)
    limit = search.target_params * source_value if search.target_params <= 1 else search.target_params
    if limit >= source_value:
        raise MinitronError(f"the budget of {int(limit):,} {search.budget_on} parameters is not smaller than the "
                            f"source model's {source_value:,}: there is nothing to search for")
    return Budget(search.budget_on, float(limit), float(source_value), search.slack)


class MemoryMeter:
    """Serving memory of candidates (minitron/search/memory.py) at the search's batch and context."""

    def __init__(self, config, search: SearchConfig, layers_for: Callable[[int], list[int]] | None = None) -> None:
        self.config, self.search, self.layers_for = config, search, layers_for  # layers_for: as ParamCounter's

    @property
    def setting(self) -> dict:
        return {"batch": self.search.memory_batch, "context": self.search.memory_context,
                "bytes_per_value": self.search.memory_bytes}

    def __call__(self, architecture, params: ParamCount) -> float:
        config = _candidate_config(self.config, architecture, self.layers_for)
        return self.of_config(config, params)

    def of_config(self, config, params: ParamCount) -> float:
        return memory_gb(config, params.total, self.search.memory_batch, self.search.memory_context,
                         self.search.memory_bytes)


def _candidate_config(config, architecture: Architecture, layers_for: Callable[[int], list[int]] | None):
    """The candidate's pruned config, with the layers a cut to its depth keeps (None: the first ones)."""
    layers = layers_for(architecture.num_hidden_layers) if layers_for is not None else None
    return pruned_config(config, resolve_target(config, architecture.as_dict()), layers)


def memory_budget(source_memory: float, search: SearchConfig, meter: MemoryMeter) -> Budget:
    """--target-memory in GB (a value up to 1 is a fraction of the source's memory)."""
    limit = search.target_memory * source_memory if search.target_memory <= 1 else search.target_memory
    if limit >= source_memory:
        raise MinitronError(f"the memory budget of {limit:,.3f} GB is not smaller than the source model's "
                            f"{source_memory:,.3f} GB at this batch and context: there is nothing to search for")
    return Budget("memory_gb", float(limit), float(source_memory), search.slack, memory_setting=meter.setting)


class LatencyMeter:
    """Latency of architectures on one device, measured on random-weight models built from the config.

    Weights do not change the speed, so no pruning is needed. Measurements are cached; `predict`
    interpolates linearly over depth between two measured depths of the same widths (layers run one
    after another), which screens a large grid with two measurements per width.
    """

    def __init__(self, config, search: SearchConfig, device: torch.device | str, dtype: torch.dtype,
                 layers_for: Callable[[int], list[int]] | None = None) -> None:
        self.config, self.search, self.device, self.dtype = config, search, torch.device(device), dtype
        self.layers_for = layers_for  # as ParamCounter's
        self._measured: dict[Architecture, float] = {}

    @property
    def setting(self) -> dict:
        return {"batch_size": self.search.latency_batch, "seq_len": self.search.latency_seq_len,
                "new_tokens": self.search.latency_new_tokens, "device": str(self.device), "dtype": str(self.dtype)}

    def __call__(self, architecture: Architecture) -> float:
        if architecture not in self._measured:
            config = _candidate_config(self.config, architecture, self.layers_for)
            model = random_model(config, device=self.device, dtype=self.dtype)
            result = measure_throughput(model, self.search.latency_batch, self.search.latency_seq_len,
                                        new_tokens=self.search.latency_new_tokens)
            self._measured[architecture] = result["latency_ms"]
            del model
        return self._measured[architecture]

    def predict(self, architecture: Architecture, shallow: int, deep: int) -> float:
        low, high = self(architecture.with_layers(shallow)), self(architecture.with_layers(deep))
        if deep == shallow:
            return low
        return low + (high - low) * (architecture.num_hidden_layers - shallow) / (deep - shallow)


def latency_budget(source: Architecture, search: SearchConfig, meter: LatencyMeter) -> Budget:
    return Budget("latency_ms", float(search.target_latency), meter(source), search.slack, meter.setting)


def with_predicted_latency(candidates: list[Candidate], meter: LatencyMeter) -> list[Candidate]:
    depths = [c.architecture.num_hidden_layers for c in candidates]
    shallow, deep = min(depths), max(depths)
    return [dataclasses.replace(c, latency_ms=meter.predict(c.architecture, shallow, deep), exact=False)
            for c in candidates]


def spread(candidates: list[Candidate], budget: Budget, source: Architecture) -> list[Candidate]:
    """All candidates, reordered: round-robin over cut kinds, and within a kind over which axes were cut,
    each group closest-to-budget first (so the first few cover width-only, mixed and depth-only cuts)."""
    closest_first = sorted(candidates, key=lambda c: (-budget.value(c), *(-v for v in c.architecture.as_dict().values())))
    kinds = []
    for kind in KIND_ORDER:
        members = [c for c in closest_first if c.architecture.cut_kind(source) == kind]
        groups: dict[tuple, list[Candidate]] = {}
        for candidate in members:
            groups.setdefault(candidate.architecture.cut_axes(source), []).append(candidate)
        kinds.append(_round_robin(list(groups.values())))
    return _round_robin([k for k in kinds if k])


def _round_robin(lists: list[list]) -> list:
    out = []
    for index in range(max((len(x) for x in lists), default=0)):
        out.extend(x[index] for x in lists if index < len(x))
    return out


def shortlist(candidates: list[Candidate], budget: Budget, search: SearchConfig, source: Architecture,
              confirm: Callable[[Candidate], Candidate]) -> tuple[list[Candidate], dict]:
    """Up to `search.max_candidates` candidates close to the budget whose exact value (see `confirm`) meets it."""
    under = [c for c in candidates if budget.value(c) <= budget.limit]
    if not under:
        raise nothing_meets(budget, candidates, confirm)
    near = [c for c in under if budget.value(c) >= budget.floor]
    kept = _confirmed(spread(near, budget, source), budget, search.max_candidates, confirm, floor=0.0)
    widened = not kept
    if widened:
        # Nothing close to the budget (a coarse grid, or measured latencies above their prediction):
        # compare the largest that fit instead, within the same slack of the best of them.
        rest = sorted((c for c in under if c not in near), key=lambda c: -budget.value(c))
        kept = _confirmed(rest, budget, search.max_candidates, confirm, floor=None)
    if not kept:
        raise nothing_meets(budget, candidates, confirm)
    return kept, {"under_budget": len(under), "near_budget": len(near), "slack_widened": widened}


def _confirmed(ordered: list[Candidate], budget: Budget, count: int, confirm, floor: float | None) -> list[Candidate]:
    """The first `count` candidates whose exact value is under the budget (and at least `floor`; None:
    within the slack of the first one kept)."""
    kept: list[Candidate] = []
    for candidate in ordered:
        if floor and budget.value(candidate) < floor * (1 - budget.slack):
            break  # `ordered` is sorted by the estimate here: the rest are further still
        candidate = confirm(candidate)
        value = budget.value(candidate)
        if value > budget.limit or (floor is not None and value < floor):
            continue
        kept.append(candidate)
        if floor is None:
            floor = value * (1 - budget.slack)
        if len(kept) == count:
            break
    return kept


def nothing_meets(budget: Budget, candidates: list[Candidate], confirm) -> MinitronError:
    smallest = confirm(min(candidates, key=budget.value))
    return MinitronError(
        f"no candidate meets the budget of {budget.describe(budget.limit)} "
        f"({budget.limit / budget.source:.1%} of the source's {budget.describe(budget.source)}): the smallest "
        f"candidate, {smallest.architecture.label()}, has {budget.describe(budget.value(smallest))}. "
        "Raise the budget, or allow larger cuts with --max-width-cut / --max-depth-cut.")
