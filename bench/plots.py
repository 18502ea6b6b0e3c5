"""Plots for docs/BENCHMARKS.md, drawn from the results the studies wrote (no model is run).

Usage:
    python bench/plots.py           # reads bench/results/*.json, writes docs/img/*.png

Figures (each one skipped, with a message, when its results file is missing):
  width_vs_depth.png  held-out loss vs retraining tokens, width and depth students (retrain_width_vs_depth
                      and retrain_width_vs_depth_long)
  losses.png          held-out loss after equal retraining per loss (retrain_losses)
  criteria.png        held-out loss after pruning and after equal retraining per criterion (retrain_criteria)
  inference_speed.png prefill / decode speed-up of the students vs their parameter-ratio ideal (inference_speed)
"""
from __future__ import annotations

import json
import sys
from statistics import fmean
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR

OUT_DIR = Path(__file__).resolve().parent.parent / "docs" / "img"
TEXTS = ("python-topics", "python-docstrings")
TEXT_LABELS = {"python-topics": "python-topics (other kind of text)",
               "python-docstrings": "python-docstrings (training distribution)"}


def load(name: str) -> dict | None:
    path = RESULTS_DIR / f"{name}.json"
    if not path.is_file():
        print(f"skip: {path} is missing")
        return None
    return json.loads(path.read_text())


def save(figure: Figure, name: str) -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    path = OUT_DIR / f"{name}.png"
    figure.savefig(path, dpi=110, bbox_inches="tight")
    print(f"wrote {path}")


def width_vs_depth() -> None:
    short, long = load("retrain_width_vs_depth"), load("retrain_width_vs_depth_long")
    if short is None:
        return
    figure = Figure(figsize=(10, 3.6))
    axes = figure.subplots(1, 2)
    budgets = [(short, short["settings"]["steps"])] + ([(long, long["settings"]["steps"])] if long else [])
    tokens_per_step = short["settings"]["micro_batch"] * short["settings"]["seq_len"]
    for ax, text in zip(axes, TEXTS):
        for row, color in (("width", "tab:blue"), ("depth", "tab:orange")):
            xs, ys = [0], None
            for payload, steps in budgets:
                entry = next(e for e in payload["summary"] if e["label"].startswith(row))
                ys = ys or [entry["pruned"][text][0]]
                xs.append(steps * tokens_per_step)
                ys.append(fmean(entry["retrained"][text]))
            ax.plot(xs, ys, marker="o", color=color, label=entry["label"])
        ax.axhline(short["teacher"][text]["loss"], color="grey", linestyle="--", label="teacher")
        ax.set_title(TEXT_LABELS[text], fontsize=10)
        ax.set_xlabel("retraining tokens (0 = right after pruning)")
        ax.set_ylabel("held-out loss")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle("Width vs depth at half the non-embedding parameters (30K: mean of 2 seeds; 92K: seed 0)",
                    fontsize=10)
    save(figure, "width_vs_depth")


def bars(name: str, title: str, with_pruned: bool) -> None:
    payload = load(name)
    if payload is None:
        return
    rows = [e for e in payload["summary"] if e.get("retrained") and e["retrained"].get(TEXTS[0])]
    figure = Figure(figsize=(10, 0.35 * len(rows) + 1.6))
    axes = figure.subplots(1, 2, sharey=True)
    labels = [e["label"] for e in rows]
    for ax, text in zip(axes, TEXTS):
        positions = range(len(rows))
        retrained = [fmean(e["retrained"][text]) for e in rows]
        ax.barh(positions, retrained, color="tab:blue", label="after retraining")
        if with_pruned:
            ax.scatter([e["pruned"][text][0] for e in rows], positions, color="tab:red", marker="|", s=120,
                       label="right after pruning")
        ax.axvline(payload["teacher"][text]["loss"], color="grey", linestyle="--", label="teacher")
        ax.set_title(TEXT_LABELS[text], fontsize=10)
        ax.set_xlabel("held-out loss (lower is better)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(rows)), labels, fontsize=8)
    axes[0].invert_yaxis()
    axes[1].legend(fontsize=8, loc="lower right")
    figure.suptitle(title, fontsize=10)
    save(figure, name.removeprefix("retrain_"))


def inference_speed() -> None:
    payload = load("inference_speed")
    if payload is None:
        return
    figure = Figure(figsize=(10, 3.4))
    axes = figure.subplots(1, len(payload["results"]))
    for ax, (batch, result) in zip(axes, payload["results"].items()):
        rows = [r for r in result["rows"] if r["model"] != "teacher"]
        positions = range(len(rows))
        width = 0.27
        ax.bar([p - width for p in positions], [r["prefill_speedup"] for r in rows], width, label="prefill")
        ax.bar(list(positions), [r["decode_speedup"] for r in rows], width, label="decode")
        ax.bar([p + width for p in positions], [r["ideal"]["total"] for r in rows], width, color="lightgrey",
               label="ideal (total-parameter ratio)")
        ax.set_xticks(list(positions), [r["model"] for r in rows], fontsize=8)
        ax.set_title(f"batch {batch}", fontsize=10)
        ax.set_ylabel("speed-up over the teacher")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle("Inference speed-up at half the non-embedding parameters (2 CPU cores, fp32)", fontsize=10)
    save(figure, "inference_speed")


def main() -> None:
    width_vs_depth()
    bars("retrain_losses", "Retraining losses at equal tokens (mean of 2 seeds)", with_pruned=False)
    bars("retrain_criteria", "Importance criteria at one target, after 6,144 retraining tokens (seed 0)",
         with_pruned=True)
    inference_speed()


if __name__ == "__main__":
    main()
