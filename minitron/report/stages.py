"""Report sections drawn stage by stage: layer importance, neuron and head importance, the architecture
search, and the distillation curves."""
from __future__ import annotations

from functools import lru_cache

from ..prune.select import select_heads
from ..prune.target import ResolvedTarget
from . import plots
from .family import NOT_PART
from .markup import esc, figure, fmt, human, note, paragraph, subsection, table
from .runfolder import (
    Run,
    arch_label,
    kept_layers,
    load_scores,
    model_config,
    number,
    read_json,
    read_metrics,
)

STATUS_DETAIL = {"running": "(in progress)", "pending": "(not started)"}


def _detail(stage: dict) -> str:
    parent = f"from {stage['parent']}" if stage.get("parent") else ""
    return " ".join(filter(None, [parent, STATUS_DETAIL.get(stage.get("status"), "")]))


class StageData:
    """What the figures need about one stage, read once and shared by the sections."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.colors = run.colors()
        self._scores = lru_cache(maxsize=None)(self._load_scores)

    def _load_scores(self, name: str):
        stage = next(s for s in self.run.stages if s["name"] == name)
        return load_scores(self.run.path(stage.get("scores")))

    def scores(self, stage: dict):
        return self._scores(stage["name"])

    def dropped(self, stage: dict, num_layers: int) -> list[int]:
        kept = kept_layers(self.run.path(stage.get("pruned")))
        return [] if kept is None else [i for i in range(num_layers) if i not in set(kept)]

    def pruned_arch(self, stage: dict) -> dict | None:
        arch = model_config(self.run.path(stage.get("pruned")))
        if arch is None:
            member = self.run.stage_member(stage)
            arch = (member or {}).get("architecture")
        return arch if isinstance(arch, dict) else None

    def source_arch(self, stage: dict, scores) -> dict | None:
        """The parent model's sizes: from the scores, the parent's folder, or the member it was."""
        arch = scores.meta.get("architecture")
        if not isinstance(arch, dict):
            arch = model_config(self.run.path(stage.get("parent")))
        if not isinstance(arch, dict):
            parent = next((m for m in self.run.members if m.get("model") == stage.get("parent")), None)
            arch = (parent or {}).get("architecture")
        return arch if isinstance(arch, dict) else None


def layer_importance(data: StageData) -> str:
    blocks = []
    for stage in data.run.stages:
        scores = data.scores(stage)
        if scores is None or not scores.layers:
            continue
        metrics = {name: scores.layers[name].tolist() for name in ("block_influence", "lm_loss")
                   if name in scores.layers}
        metrics |= {name: values.tolist() for name, values in scores.layers.items() if name not in metrics}
        dropped = data.dropped(stage, scores.num_layers)
        plot = plots.layer_importance(metrics, dropped, data.colors[stage["name"]])
        what = (f"dropped layers {', '.join(map(str, dropped))}" if dropped
                else "kept every layer (the cut was in width only)")
        caption = ("Higher means the layer matters more. Block Influence is how much a layer changes its input "
                   "(1 − cosine similarity); the LM-loss increase is how much held-out loss rises when the layer "
                   f"is skipped, the seeds' better depth criterion. This stage {what}.")
        blocks.append(subsection(stage["name"], figure(plot, f"layer importance, {stage['name']}", caption),
                                 _detail(stage)))
    return "".join(blocks) or note(f"Layer importance was {NOT_PART}: no stage saved importance scores.")


def width_importance(data: StageData) -> str:
    blocks = []
    for stage in data.run.stages:
        scores = data.scores(stage)
        if scores is None or not scores.neurons:
            continue
        pruned = data.pruned_arch(stage)
        kept_neurons = (pruned or {}).get("intermediate_size")
        plot = plots.neuron_head_heatmaps([t.tolist() for t in scores.neurons], [t.tolist() for t in scores.heads],
                                          kept_neurons, _kept_heads(data, stage, scores, pruned),
                                          data.dropped(stage, scores.num_layers))
        caption = ("Left: each layer's MLP neurons, sorted, as a fraction of that layer's most important one; "
                   "the dashed line is the pruning cut (neurons right of it were removed). A steep fall-off "
                   "means a few neurons carry the layer and width pruning is cheap there. Right: each layer's "
                   "attention heads as a fraction of its best head; × marks heads the pruning removed. "
                   "Faded rows are layers dropped in depth.")
        blocks.append(subsection(stage["name"], figure(plot, f"neuron and head importance, {stage['name']}",
                                                       caption), _detail(stage)))
    return "".join(blocks) or note(f"Neuron and head importance was {NOT_PART}: no stage saved importance scores.")


def _kept_heads(data: StageData, stage: dict, scores, pruned: dict | None) -> dict[int, list[int]] | None:
    """Heads each kept layer kept, by the pruner's own rule (whole KV groups, then top heads per group)."""
    source = data.source_arch(stage, scores)
    if not pruned or not source or not scores.heads:
        return None
    try:
        source_heads, source_kv = int(source["num_attention_heads"]), int(source["num_key_value_heads"])
        target = ResolvedTarget(hidden_size=0, intermediate_size=0, num_hidden_layers=0, drop_layers=None,
                                num_attention_heads=int(pruned["num_attention_heads"]),
                                num_key_value_heads=int(pruned["num_key_value_heads"]))
    except (KeyError, TypeError, ValueError):
        return None
    if source_heads != scores.heads[0].numel() or source_kv <= 0 or source_heads % source_kv:
        return None
    dropped = set(data.dropped(stage, scores.num_layers))
    return {layer: select_heads(scores.heads[layer], source_kv, target)[0].tolist()
            for layer in range(scores.num_layers) if layer not in dropped}


def search(data: StageData) -> str:
    blocks = []
    for stage in data.run.stages:
        result = read_json(data.run.path(stage.get("search")))
        if stage.get("search") and result is None:
            blocks.append(subsection(stage["name"], note(f"{stage['search']} is missing or unreadable."),
                                     _detail(stage)))
        elif result is not None:
            blocks.append(subsection(stage["name"], _search_block(result, data.colors[stage["name"]]),
                                     _detail(stage)))
    return "".join(blocks) or note(f"Architecture search was {NOT_PART}: every stage pruned to a fixed target.")


def _search_block(result: dict, color: str) -> str:
    candidates = [c for c in result.get("candidates") or [] if isinstance(c, dict)]
    if not candidates:
        return note("The search kept no candidate (no architecture met the budget).")
    for candidate in candidates:
        candidate["label"] = arch_label(candidate.get("architecture") or candidate.get("target"), short=True)
    ordered = sorted(candidates, key=lambda c: (c.get("rank_pruned") is None, c.get("rank_pruned") or 0))
    rows = [[c["label"], c.get("cut") or "—", human(number((c.get("params") or {}).get("total"))), _latency(c),
             _with_rank(c.get("loss_pruned"), c.get("rank_pruned")),
             _with_rank(c.get("loss_distilled"), c.get("rank_distilled")), "★ chosen" if c.get("chosen") else ""]
            for c in ordered]
    classes = ["chosen" if c.get("chosen") else "" for c in ordered]
    parts = [paragraph(_search_summary(result, candidates)),
             table(["candidate (H F A L)", "cut", "params", "latency", "loss after pruning (rank)",
                    "after short distillation (rank)", ""], rows, numeric_from=2, row_classes=classes)]
    if any(c.get("loss_distilled") is not None for c in candidates):
        caption = ("Left: each briefly distilled candidate's held-out loss right after pruning against after "
                   "short distillation; the star is the one chosen. Right: the two rankings, one line per "
                   "candidate: crossing lines are rankings that short retraining changed, the reason to "
                   "retrain before choosing.")
        parts.append(figure(plots.search_losses(candidates, color), "search: loss after pruning vs after "
                            "short distillation", caption))
    else:
        parts.append(note("No candidate was distilled briefly: the winner is the best right after pruning."))
    return "".join(parts)


def _search_summary(result: dict, candidates: list[dict]) -> str:
    budget_text = budget_description(result.get("budget"))
    distilled = sum(1 for c in candidates if c.get("loss_distilled") is not None)
    changed = result.get("ranking_changed")
    flip = ("Short distillation changed the ranking." if changed else
            "Short distillation kept the ranking." if changed is False else "")
    return (f"Budget: {budget_text or 'not recorded'}. {len(candidates)} candidates met it; {distilled} were "
            f"distilled briefly. {flip}")


def budget_description(budget) -> str:
    """'total parameters ≤ 68.0K (50% of the source)' from search.json's budget, or its raw fields."""
    if not isinstance(budget, dict):
        return str(budget) if budget else ""
    metric, limit, share = budget.get("metric"), number(budget.get("limit")), number(budget.get("fraction_of_source"))
    if metric is None or limit is None:
        return ", ".join(f"{k}={v}" for k, v in budget.items())
    what = {"total": "total parameters", "non_embedding": "non-embedding parameters"}.get(metric, metric)
    amount = f"{limit:.1f} ms" if metric == "latency_ms" else human(limit)
    return f"{what} ≤ {amount}" + (f" ({share:.0%} of the source)" if share is not None else "")


def _with_rank(loss, rank) -> str:
    loss = number(loss)
    if loss is None:
        return "—"
    return f"{loss:.4f} ({rank})" if rank is not None else f"{loss:.4f}"


def _latency(candidate: dict) -> str:
    latency = number(candidate.get("latency_ms"))
    return f"{latency:.1f} ms" if latency is not None else "—"


def distillation(data: StageData) -> str:
    blocks = []
    for stage in data.run.stages:
        records = read_metrics(data.run.path(stage.get("model")))
        if not records:
            continue
        plot = plots.distillation_curves(records, data.colors[stage["name"]])
        blocks.append(subsection(stage["name"], _distill_facts(records) + figure(
            plot, f"distillation curves, {stage['name']}", _curve_caption(stage)), _detail(stage)))
    return "".join(blocks) or note(f"Distillation was {NOT_PART}: no stage wrote metrics.jsonl.")


def _curve_caption(stage: dict) -> str:
    if stage.get("kind") == "correction":
        return ("Teacher correction: the teacher fine-tuned with next-token loss on the distillation data, so it "
                "is not shifted from the text the students see. Left: its held-out loss; right: training loss.")
    return ("Left: held-out loss of the student (solid) and of its teacher (dashed); the gap is what distillation "
            "has still to recover. Right: the training objective (KL divergence to the teacher's next-token "
            "distribution), which should fall fast and then flatten.")


def _distill_facts(records: list[dict]) -> str:
    first = next((r for r in records if r.get("val_student_loss") is not None), None)
    last = next((r for r in reversed(records) if r.get("val_student_loss") is not None), None)
    facts = [f"{records[-1]['step']} steps", f"{human(number(records[-1].get('tokens')))} tokens"]
    if first is not None and last is not None:
        change = f"{fmt(first['val_student_loss'])} → " if first is not last else ""
        facts.append(f"held-out loss {change}{fmt(last['val_student_loss'])}")
        if last.get("val_teacher_loss") is not None:
            facts.append(f"teacher {fmt(last['val_teacher_loss'])}")
    return f'<p class="facts">{esc(" · ".join(facts))}</p>'
