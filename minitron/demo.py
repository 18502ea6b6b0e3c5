"""`minitron demo`: the recipe on the built-in teacher, sized for a laptop CPU.

    minitron demo                 # ~5-8 minutes on 2 cores; writes runs/demo/
    minitron demo --quick         # a smoke run

Steps: load SmolLM2-135M-Instruct (built in), estimate importance on CPython's documentation, prune it
to about half its non-embedding parameters twice (width: hidden + MLP channels; depth: half the layers),
and compare held-out loss and perplexity of the teacher and both students. Scores are reused when the
demo runs again on the same teacher.
"""
from __future__ import annotations

import json
from pathlib import Path

from .config import DataConfig, ImportanceConfig
from .data import token_blocks
from .errors import ScoresError
from .eval import evaluate_loss
from .fingerprint import model_fingerprint
from .importance import ImportanceScores
from .io import atomic_write_text
from .jobs import compute_scores
from .loading import DEFAULT_TEACHER, load_model, save_checkpoint
from .params import count_parameters
from .prune import prune

DATA = "builtin:python-docs"
# About half of SmolLM2-135M's 106M non-embedding parameters, two ways. hidden_size stays a multiple
# of the 9 heads: transformers' Llama config refuses anything else.
WIDTH_TARGET = {"hidden_size": 432, "intermediate_size": 864}
DEPTH_TARGET = {"num_hidden_layers": 15}


def _scores(model, tokenizer, folder: Path, data: DataConfig, settings: ImportanceConfig) -> ImportanceScores:
    try:
        scores = ImportanceScores.load(folder)
        scores.check_matches(model_fingerprint(model))
        if scores.meta.get("num_samples") == data.samples and "lm_loss" in scores.layers:
            print(f"reusing importance scores in {folder}")
            return scores
    except ScoresError:
        pass
    scores = compute_scores(model, tokenizer, data, settings)
    scores.save(folder)
    return scores


def run_demo(out: str = "runs/demo", quick: bool = False) -> dict:
    out_dir = Path(out)
    data = DataConfig(data=DATA, samples=16 if quick else 128, seq_len=256, batch_size=8)
    settings = ImportanceConfig(layer_loss_samples=4 if quick else 8)
    print(f"[1/4] loading the teacher ({DEFAULT_TEACHER})")
    teacher, tokenizer = load_model(DEFAULT_TEACHER)
    heldout = token_blocks(DATA, tokenizer, data.seq_len, 8 if quick else 32, split="heldout")
    print(f"[2/4] importance on {data.samples} x {data.seq_len} tokens of {DATA}")
    scores = _scores(teacher, tokenizer, out_dir / "scores", data, settings)
    students = {
        "width (hidden 432, MLP 864)": ("width", WIDTH_TARGET, None),
        "depth (15 layers, Block Influence)": ("depth-bi", DEPTH_TARGET, "block_influence"),
        "depth (15 layers, LM-loss)": ("depth-lm", DEPTH_TARGET, "lm_loss"),
    }
    print("[3/4] pruning and evaluating on held-out text")
    rows = [_row("teacher", teacher, heldout, data.batch_size)]
    for label, (folder, target, metric) in students.items():
        student = prune(teacher, scores, target, depth_metric=metric)
        save_checkpoint(student, tokenizer, out_dir / folder, {
            "stage": "prune", "source": DEFAULT_TEACHER, "target": target, "depth_metric": metric,
            "kept_layers": student.minitron_kept_layers, "params": count_parameters(student).as_dict()})
        rows.append(_row(label, student, heldout, data.batch_size) | {"folder": str(out_dir / folder)})
    table = _markdown(rows)
    print("[4/4] results (held-out loss right after pruning, no retraining yet)\n")
    print(table)
    atomic_write_text(out_dir / "results.md", table + "\n")
    atomic_write_text(out_dir / "results.json", json.dumps(rows, indent=2))
    print(f"\nmodels, scores and this table are in {out_dir}/")
    return {"rows": rows}


def _row(label: str, model, heldout, batch_size: int) -> dict:
    counts = count_parameters(model)
    metrics = evaluate_loss(model, heldout, batch_size, progress=True)
    return {"model": label, "params": counts.total, "non_embedding": counts.non_embedding, **metrics}


def _markdown(rows: list[dict]) -> str:
    teacher = rows[0]
    lines = ["| model | params | non-embedding | held-out loss | perplexity |", "|---|---:|---:|---:|---:|"]
    for row in rows:
        share = row["non_embedding"] / teacher["non_embedding"]
        lines.append(f"| {row['model']} | {row['params'] / 1e6:.1f}M | {row['non_embedding'] / 1e6:.1f}M "
                     f"({share:.0%}) | {row['loss']:.3f} | {row['perplexity']:.1f} |")
    return "\n".join(lines)
