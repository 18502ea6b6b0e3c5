"""Shared pieces of the retraining studies (bench/retrain_study.py, bench/lm_eval_export.py).

- `scores_for`: importance scores computed once per setting and kept in bench/results/cache/scores-KEY/
  (an ImportanceScores folder); the key covers the model, the calibration data and sample choice, the
  aggregations, and a hash of minitron/importance/*.py, so a code change never reuses stale scores.
- `RunStore`: a results file (bench/results/NAME.json) that holds one record per run, keyed by the
  run's settings, and is rewritten after every run: a partial run keeps its results and a re-run
  skips what is finished.
- `retrain` / `evaluate`: one equal-budget distillation run and the held-out losses of a model.
"""
from __future__ import annotations

import copy
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, spread, write_json

TEACHER = "builtin:smollm2-135m"
CALIB = "builtin:python-docs"
TRAIN = "builtin:python-docstrings"
EVALS = {"python-topics": "builtin:python-topics", "python-docstrings": "builtin:python-docstrings"}
WIDTH = {"hidden_size": 432, "intermediate_size": 864}
DEPTH = {"num_hidden_layers": 15}
CACHE_DIR = RESULTS_DIR / "cache"
ROOT = Path(__file__).resolve().parent.parent


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def digest(settings: dict, length: int = 16) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:length]


def code_hash(*packages: str) -> str:
    """Hash of minitron/<package>/*.py: results keyed with it are recomputed when that code changes."""
    h = hashlib.sha1()
    for package in packages:
        for path in sorted((ROOT / "minitron" / package).glob("*.py")):
            h.update(f"{package}/{path.name}".encode() + path.read_bytes())
    return h.hexdigest()[:12]


# ------------------------------------------------------------------------------------------- importance

def calib_settings(samples: int, *, seq_len: int = 256, batch_size: int = 4, seq_reduction: str = "mean",
                   batch_reduction: str = "l2", layer_loss_batches: int = 0, pool: int | None = None,
                   subset_seed: int | None = None, data: str = CALIB, model: str = TEACHER) -> dict:
    """Everything that determines a set of scores. Samples are the first `samples` train blocks, or
    (with `pool`) a seeded random subset of the first `pool` blocks (the whole pool needs no seed)."""
    if pool is None or samples >= pool:
        pool, subset_seed = None, None
    return {"model": model, "data": data, "split": "train", "seq_len": seq_len, "samples": samples,
            "pool": pool, "subset_seed": subset_seed, "batch_size": batch_size, "seq_reduction": seq_reduction,
            "batch_reduction": batch_reduction, "layer_loss_batches": layer_loss_batches,
            "code": code_hash("importance")}


def calib_blocks(tokenizer, settings: dict) -> torch.Tensor:
    from minitron import token_blocks
    count = settings["pool"] or settings["samples"]
    blocks = token_blocks(settings["data"], tokenizer, settings["seq_len"], count, split="train")
    if settings["pool"]:
        pick = torch.randperm(count, generator=torch.Generator().manual_seed(settings["subset_seed"]))
        blocks = blocks[pick[:settings["samples"]].sort().values]
    return blocks


def scores_for(model, tokenizer, settings: dict):
    """Load the cached scores of `settings`, or compute and cache them."""
    from minitron import ImportanceScores, estimate_importance, iter_batches
    folder = CACHE_DIR / f"scores-{digest(settings)}"
    if (folder / "scores.json").is_file():
        return ImportanceScores.load(folder)
    blocks = calib_blocks(tokenizer, settings)
    started = time.perf_counter()
    scores = estimate_importance(model, list(iter_batches(blocks, settings["batch_size"])),
                                 seq_reduction=settings["seq_reduction"], batch_reduction=settings["batch_reduction"],
                                 layer_loss_batches=settings["layer_loss_batches"], progress=False,
                                 meta={"cache_key": settings})
    seconds = time.perf_counter() - started
    scores.meta["seconds"] = seconds
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    (CACHE_DIR / ".gitignore").write_text("*\n")  # cached scores are derived data: never committed
    scores.save(folder)
    log(f"importance on {len(blocks)} x {settings['seq_len']} tokens ({settings['seq_reduction']}/"
        f"{settings['batch_reduction']}, layer loss {settings['layer_loss_batches']}): {seconds:.0f} s -> {folder.name}")
    return scores


# ------------------------------------------------------------------------------------------- run store

class RunStore:
    """bench/results/NAME.json: {"study", "machines": [...], "settings", "runs": {key: record}}."""

    def __init__(self, name: str, study: str, machine_info: dict, settings: dict) -> None:
        self.name = name
        path = RESULTS_DIR / f"{name}.json"
        old = json.loads(path.read_text()) if path.is_file() else {}
        self.payload = {"study": study, "machines": old.get("machines", []) + [machine_info],
                        "settings": settings, "runs": old.get("runs", {})}

    def get(self, key: str) -> dict | None:
        return self.payload["runs"].get(key)

    def put(self, key: str, record: dict) -> None:
        self.payload["runs"][key] = record
        self.save()

    def save(self) -> Path:
        return write_json(self.name, self.payload)


# ------------------------------------------------------------------------------------- train and eval

def eval_sets(tokenizer, seq_len: int, blocks: int) -> dict:
    from minitron import token_blocks
    return {name: token_blocks(spec, tokenizer, seq_len, blocks, split="heldout", allow_fewer=True)
            for name, spec in EVALS.items()}


def evaluate(model, sets: dict, batch_size: int) -> dict:
    from minitron import evaluate_loss
    return {name: {k: v for k, v in evaluate_loss(model, blocks, batch_size=batch_size).items() if k != "tokens"}
            for name, blocks in sets.items()}


def train_pool(tokenizer, seq_len: int, needed: int, factor: int) -> torch.Tensor:
    from minitron import token_blocks
    return token_blocks(TRAIN, tokenizer, seq_len, needed * factor, split="train", allow_fewer=True)


def seed_blocks(pool: torch.Tensor, needed: int, seed: int) -> torch.Tensor:
    """The training blocks of one seed: a seeded draw from the pool (every row of a seed sees the same)."""
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))
    return pool[order[:needed]]


def retrain(pruned, teacher, blocks: torch.Tensor, val_blocks: torch.Tensor, *, steps: int, micro_batch: int,
            seq_len: int, lr: float, seed: int, loss: str = "forward_kl", ce_weight: float = 0.0,
            hidden_loss: str = "none", kept_layers=None) -> tuple:
    """A copy of `pruned` trained for `steps` steps; returns (student, curve, seconds)."""
    from minitron import DistillConfig
    from minitron.distill.loop import distill
    student = copy.deepcopy(pruned)
    config = DistillConfig(seq_len=seq_len, micro_batch_size=micro_batch, steps=steps, lr=lr,
                           warmup_steps=max(1, steps // 10), eval_every=0, eval_samples=len(val_blocks),
                           save_every=0, loss=loss, ce_weight=ce_weight, hidden_loss=hidden_loss,
                           precision="fp32", seed=seed)
    curve: list[dict] = []
    started = time.perf_counter()
    distill(student, None if loss == "ce" else teacher, blocks, val_blocks, config,
            kept_layers=list(kept_layers) if kept_layers is not None and hidden_loss != "none" else None,
            on_step=lambda step, record: curve.append(
                {k: record[k] for k in ("step", "loss", "ce", "hidden", "lr", "tokens_per_s") if k in record}))
    return student, curve, time.perf_counter() - started


# -------------------------------------------------------------------------------------------- summary

def mean_sd(values: list[float]) -> tuple[float, float]:
    return sum(values) / len(values), spread(values)


def fmt_mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    mean, sd = mean_sd(values)
    return f"{mean:.3f} ± {sd:.3f}" if len(values) > 1 else f"{mean:.3f}"


def closer_than_spread(a: list[float], b: list[float]) -> bool | None:
    """Whether the means differ by less than the larger standard deviation over seeds (None: < 2 seeds)."""
    if len(a) < 2 or len(b) < 2:
        return None
    return abs(mean_sd(a)[0] - mean_sd(b)[0]) < max(mean_sd(a)[1], mean_sd(b)[1])


def compare_to_best(rows: list[dict], field: str, set_name: str, single: str = "one seed: no spread") -> list[str]:
    """One line per row of a group: its gap to the group's best mean, flagged when within the seed spread.

    `single` is said of a gap with one value per row (one seed, or a result that no seed changes)."""
    notes = {r["label"]: r.get("single_note", {}).get(field, single) for r in rows}
    scored = [(r["label"], r[field][set_name]) for r in rows if r[field].get(set_name)]
    if len(scored) < 2:
        return []
    best_label, best = min(scored, key=lambda item: mean_sd(item[1])[0])
    lines = []
    for label, values in scored:
        if label == best_label:
            continue
        gap = mean_sd(values)[0] - mean_sd(best)[0]
        close = closer_than_spread(values, best)
        note = {True: " — closer than the spread between seeds", False: "", None: f" ({notes[label]})"}[close]
        lines.append(f"{set_name}: {label} is {gap:+.3f} above {best_label}{note}")
    return lines
