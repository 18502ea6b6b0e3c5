"""`minitron.search(model, tokenizer, scores, config, heldout=...)`: lightweight architecture search in memory.

    result = minitron.search(model, tokenizer, scores, SearchConfig(target_params=0.5), heldout=heldout,
                             train=train)
    small = minitron.prune(model, scores, result.winner["target"])

1. Enumerate homogeneous candidates that meet the budget (see candidates.py, budget.py).
2. Prune each one from the same importance scores and score it by held-out loss.
3. Briefly distill the best `top_k` from the teacher (each from a fresh prune, same data and seed), score
   them again, and choose the winner by the loss after that retraining: rankings change after retraining.
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from torch import nn

from ..config import DistillConfig
from ..distill.dist import current_env, init_distributed, on_main
from ..distill.loop import distill
from ..errors import MinitronError
from ..eval import evaluate_loss
from ..fingerprint import model_fingerprint
from ..importance.scores import ImportanceScores
from ..params import count_parameters
from ..prune import prune
from ..verbosity import progress_enabled
from .budget import (
    Budget,
    LatencyMeter,
    MemoryMeter,
    latency_budget,
    memory_budget,
    params_budget,
    shortlist,
    with_predicted_latency,
)
from .candidates import Architecture, Candidate, ParamCounter, enumerate_candidates
from .config import SearchConfig
from .counting import scored_depths
from .memory import memory_gb


@dataclass
class SearchResult:
    """Every scored candidate (rows as in search.json), the winner and whether retraining reordered them."""

    config: SearchConfig
    budget: Budget
    source: dict  # architecture, params, heldout loss (and latency) of the model searched from
    candidates: list[dict]
    winner: dict
    ranking_changed: bool
    winner_changed: bool
    counts: dict  # how many architectures the grid held, were valid, met the budget
    seconds: float

    def to_dict(self) -> dict:
        return {"config": asdict(self.config), "budget": self.budget.as_dict(), "source": self.source,
                "counts": self.counts, "candidates": self.candidates, "winner": self.winner,
                "ranking_changed": self.ranking_changed, "winner_changed": self.winner_changed,
                "seconds": self.seconds}


def plan(model_config, search: SearchConfig, *, device="cpu", dtype=None, log=None,
         scores: ImportanceScores | None = None) -> tuple[Budget, list[Candidate], dict]:
    """The budget and the shortlisted candidates, from the config alone (latency: random-weight models).

    scores: the importance scores candidates are pruned with; a depth cut is then counted with the layers
    they keep (search.depth_metric), as pruning keeps them, and not as if the last layers went.
    """
    source = Architecture.of(model_config)
    layers_for = scored_depths(model_config, scores, search.depth_metric)
    counter = ParamCounter(model_config, layers_for)
    candidates, counts = enumerate_candidates(model_config, search, counter)
    if search.target_memory is not None:
        meter = MemoryMeter(model_config, search, layers_for)
        budget = memory_budget(meter(source, counter.exact(source)), search, meter)
        candidates = [replace(c, memory_gb=meter(c.architecture, c.params)) for c in candidates]
        confirm = lambda c: _with_memory(replace(c, params=counter.exact(c.architecture), exact=True), meter)
    elif search.target_latency is None:
        budget = params_budget(counter.exact(source), search)
        confirm = lambda c: replace(c, params=counter.exact(c.architecture), exact=True)
    else:
        import torch
        meter = LatencyMeter(model_config, search, device, dtype or torch.float32, layers_for)
        if log:
            log(f"measuring latency on {meter.device}: {len({c.architecture.widths() for c in candidates})} widths "
                "at two depths each, then the shortlisted candidates")
        budget = latency_budget(source, search, meter)
        candidates = with_predicted_latency(candidates, meter)
        confirm = lambda c: replace(c, params=counter.exact(c.architecture),
                                    latency_ms=meter(c.architecture), exact=True)
    kept, selection = shortlist(candidates, budget, search, source, confirm)
    return budget, kept, {**counts, **selection, "scored": len(kept)}


def _with_memory(candidate: Candidate, meter: MemoryMeter) -> Candidate:
    return replace(candidate, memory_gb=meter(candidate.architecture, candidate.params))


def _row(candidate: Candidate, source: Architecture, loss: float) -> dict:
    arch = candidate.architecture
    return {"target": arch.target(source), "architecture": arch.as_dict(), "cut": arch.cut_kind(source),
            "cut_axes": list(arch.cut_axes(source)), "params": candidate.params.as_dict(),
            "latency_ms": candidate.latency_ms, "memory_gb": candidate.memory_gb, "loss_pruned": loss, "loss_distilled": None,
            "rank_pruned": None, "rank_distilled": None, "chosen": False}


def _candidate_distill_config(search: SearchConfig, seq_len: int, eval_blocks: int) -> DistillConfig:
    return DistillConfig(seq_len=seq_len, micro_batch_size=search.candidate_batch_size, tokens=search.candidate_tokens,
                         lr=search.candidate_lr, min_lr=search.candidate_lr / 100, eval_every=0,
                         eval_samples=eval_blocks, save_every=0, seed=search.seed)


def search(model: nn.Module, tokenizer, scores: ImportanceScores, config: SearchConfig, *, heldout,
           train=None, teacher: nn.Module | None = None, out: str | Path | None = None, progress: bool = True,
           batch_size: int = 8) -> SearchResult:
    """Search architectures of `model` that meet `config`'s budget; see the module docstring.

    heldout / train: token blocks (num_blocks, seq_len); train is needed when config.candidate_tokens > 0.
    teacher: the model distilled from (default: `model` itself). out: also write search.json,
    candidates.csv and candidates.md there. tokenizer is unused today (kept for a data-spec API).
    """
    started = time.perf_counter()
    show = progress and progress_enabled()  # a progress log: silent under --quiet and on ranks > 0
    log = (lambda text: print(f"[search] {text}", file=sys.stderr, flush=True)) if show else (lambda text: None)
    if config.distills and train is None:
        raise MinitronError("candidate distillation needs training blocks (train=...), or candidate_tokens=0")
    scores.check_matches(model_fingerprint(model))
    device = next(model.parameters()).device
    # Under torchrun every rank distills the same candidates together: rank 0 plans (it alone measures
    # latencies) and its losses decide the order, so no rank can pick other candidates than the rest.
    env = current_env()
    budget, shortlisted, counts = on_main(env, lambda: plan(model.config, config, device=device, dtype=model.dtype,
                                                            log=log, scores=scores))
    source = Architecture.of(model.config)
    log(f"{counts['grid']} architectures in the grid, {counts['valid']} valid, {counts['under_budget']} within "
        f"{budget.describe(budget.limit)}; scoring {len(shortlisted)}")
    source_info = {"architecture": source.as_dict(), "params": count_parameters(model).as_dict(),
                   "loss": evaluate_loss(model, heldout, batch_size)["loss"],
                   "latency_ms": budget.source if budget.metric == "latency_ms" else None}
    scored = _score_pruned(model, scores, shortlisted, source, heldout, config, budget, batch_size, log)
    rows = on_main(env, lambda: scored)
    counts["over_budget_when_pruned"] = len(shortlisted) - len(rows)
    by_pruned = sorted(range(len(rows)), key=lambda i: rows[i]["loss_pruned"])
    for rank, index in enumerate(by_pruned, 1):
        rows[index]["rank_pruned"] = rank
    top = by_pruned[:config.top_k] if config.distills else []
    _distill_top(model, teacher if teacher is not None else model, scores, rows, top, train, heldout, config,
                 batch_size, log)
    rows = on_main(env, lambda: rows)  # rank 0's losses after distillation choose the winner everywhere
    by_distilled = sorted(top, key=lambda i: rows[i]["loss_distilled"])
    for rank, index in enumerate(by_distilled, 1):
        rows[index]["rank_distilled"] = rank
    winner_index = by_distilled[0] if by_distilled else by_pruned[0]
    rows[winner_index]["chosen"] = True
    result = SearchResult(config=config, budget=budget, source=source_info, candidates=rows,
                          winner=rows[winner_index], ranking_changed=by_distilled != top,
                          winner_changed=winner_index != by_pruned[0], counts=counts,
                          seconds=round(time.perf_counter() - started, 2))
    log(f"winner: {Architecture(**rows[winner_index]['architecture']).label()}"
        + (f"; retraining {'changed' if result.ranking_changed else 'kept'} the ranking" if top else ""))
    if out is not None:
        from .tables import write_outputs
        write_outputs(out, result.to_dict())
    return result


def _score_pruned(model, scores, shortlisted, source, heldout, config: SearchConfig, budget: Budget, batch_size,
                  log) -> list[dict]:
    """One table row per candidate: pruned from the same scores, scored on the same held-out blocks.

    Each pruned model's parameters (and memory) are counted again: a candidate the pruned model exceeds
    the budget with is dropped, so the search never returns one over budget."""
    rows = []
    for index, candidate in enumerate(shortlisted):
        pruned = prune(model, scores, candidate.architecture.target(source), depth_metric=config.depth_metric,
                       expert_metric=config.expert_metric)
        candidate = _as_pruned(candidate, pruned, config)
        label = f"{index + 1}/{len(shortlisted)}: {candidate.architecture.label()}"
        if budget.metric != "latency_ms" and budget.value(candidate) > budget.limit:
            log(f"dropped {label}: pruned, it has {budget.describe(budget.value(candidate))}, over the budget "
                f"of {budget.describe(budget.limit)}")
            continue
        rows.append(_row(candidate, source, evaluate_loss(pruned, heldout, batch_size)["loss"]))
        rows[-1]["kept_layers"] = list(pruned.minitron_kept_layers)
        del pruned
        log(f"pruned {label}: loss {rows[-1]['loss_pruned']:.4f}")
    if not rows:
        raise MinitronError(f"every candidate exceeded the budget of {budget.describe(budget.limit)} once pruned; "
                            "raise the budget or lower --slack")
    return rows


def _as_pruned(candidate: Candidate, pruned: nn.Module, search: SearchConfig) -> Candidate:
    """The candidate with the pruned model's own parameter count (and memory, for a memory budget)."""
    params = count_parameters(pruned)
    memory = None if candidate.memory_gb is None else memory_gb(pruned.config, params.total, search.memory_batch,
                                                                search.memory_context, search.memory_bytes)
    return replace(candidate, params=params, memory_gb=memory)


def _distill_top(model, teacher, scores, rows, top, train, heldout, config: SearchConfig, batch_size, log) -> None:
    """Fill loss_distilled of the rows in `top`: each a fresh prune, the same data, seed and steps."""
    device = next(model.parameters()).device
    # distill() freezes the teacher; give it back to the caller as it came.
    trainable = {name: p.requires_grad for name, p in teacher.named_parameters()}
    try:
        for position, index in enumerate(top, 1):
            log(f"distilling {position}/{len(top)}: {Architecture(**rows[index]['architecture']).label()} "
                f"({config.candidate_tokens:,} tokens)")
            rows[index]["loss_distilled"] = _distill_and_score(model, teacher, scores, rows[index], train, heldout,
                                                               config, batch_size, device)
            log(f"  loss {rows[index]['loss_pruned']:.4f} -> {rows[index]['loss_distilled']:.4f}")
    finally:
        for name, param in teacher.named_parameters():
            param.requires_grad_(trainable[name])


def _distill_and_score(model, teacher, scores, row, train, heldout, config: SearchConfig, batch_size, device) -> float:
    """Held-out loss of a fresh prune of this candidate after the short distillation."""
    student = prune(model, scores, row["target"], depth_metric=config.depth_metric,
                    expert_metric=config.expert_metric).requires_grad_(True)
    # Validation inside the loop is only its last step's; one block per process keeps it cheap (scored below
    # instead), and gives every process the same number of forward passes.
    env = init_distributed(str(device))
    settings = _candidate_distill_config(config, train.shape[1], env.world_size)
    student = distill(student, teacher, train, heldout[:env.world_size], settings, kept_layers=row["kept_layers"],
                      env=env)
    loss = evaluate_loss(student, heldout, batch_size)["loss"]
    del student
    return loss
