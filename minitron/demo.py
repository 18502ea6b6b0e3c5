"""`minitron demo`: the whole recipe on the built-in teacher, sized for a laptop CPU.

    minitron demo                 # 6-12 minutes on 2 free cores (6 min measured); writes runs/demo/ and runs/demo/report.html
    minitron demo --quick         # a smoke run of the same chain (a few minutes)

It runs the shipped recipe `recipes/smollm2-cpu.yaml` (read it: every number is explained there):
SmolLM2-135M-Instruct (built in) is corrected briefly on CPython's documentation, then pruned and
distilled 100% -> 70% (a fixed width target) -> 50% (chosen by a small architecture search among width,
depth and mixed cuts), every member is evaluated on held-out text, and a report and model cards are
written. Running it again resumes where it stopped and skips finished stages.
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

from .recipe import run_recipe
from .recipe.schema import parse_recipe, recipe_path

RECIPE = "smollm2-cpu"


def _quick(raw: dict) -> dict:
    """The same chain with a few steps per stage: checks that everything runs, not how good it gets."""
    raw = copy.deepcopy(raw)
    raw["importance"] = {**raw.get("importance", {}), "samples": 8}
    if raw.get("correction"):
        raw["correction"] = {**raw["correction"], "steps": 2, "save_every": 0}
    raw["distill"] = {**raw.get("distill", {}), "steps": 4, "warmup_steps": 1, "eval_every": 0, "save_every": 0}
    for stage in raw["stages"]:
        if "search" in stage:
            stage["search"] = {**stage["search"], "max_candidates": 3, "candidate_tokens": 512}
    raw["eval"] = {**raw.get("eval", {}), "samples": 4}
    return raw


def run_demo(out: str = "runs/demo", quick: bool = False) -> dict:
    source = recipe_path(RECIPE)
    raw = yaml.safe_load(source.read_text())
    recipe = parse_recipe(_quick(raw) if quick else raw, where=str(source))
    print(f"minitron demo: running {source}{' (quick)' if quick else ''} into {out}/", flush=True)
    run = run_recipe(recipe, out)
    report = Path(out) / "report.html"
    print("\n" + _summary(run["members"]))
    print(f"\nreport: {report.resolve()}\nmodels: " + ", ".join(
        str(Path(out) / stage["model"]) for stage in run["stages"] if stage.get("model")))
    return run


def _summary(members: list[dict]) -> str:
    teacher = members[0]
    lines = ["| member | params | non-embedding | held-out loss | perplexity |", "|---|---:|---:|---:|---:|"]
    for member in members:
        params = member["params"]
        share = params["non_embedding"] / teacher["params"]["non_embedding"]
        lines.append(f"| {member['name']} | {params['total'] / 1e6:.1f}M | {params['non_embedding'] / 1e6:.1f}M "
                     f"({share:.0%}) | {member['heldout_loss']:.3f} | {member['perplexity']:.1f} |")
    return "\n".join(lines)
