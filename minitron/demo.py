"""`minitron demo`: the recipe on the built-in teacher, sized for a laptop CPU.

    minitron demo                 # ~15 minutes on 2 free cores; writes runs/demo/
    minitron demo --quick         # a smoke run

Steps: load SmolLM2-135M-Instruct (built in), estimate importance on CPython's documentation, prune it
to about half its non-embedding parameters (width: hidden + MLP channels; depth: half the layers, by
Block Influence and by LM loss), distill the width and LM-loss depth students briefly from the teacher,
and compare held-out loss and perplexity before and after. Scores are reused when the demo runs again.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from .config import DataConfig, DistillConfig, ImportanceConfig
from .data import token_blocks
from .distill.loop import distill
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
    students = {  # label: (folder, target, depth metric, distill it?)
        "width (hidden 432, MLP 864)": ("width", WIDTH_TARGET, None, True),
        "depth (15 layers, Block Influence)": ("depth-bi", DEPTH_TARGET, "block_influence", False),
        "depth (15 layers, LM loss)": ("depth-lm", DEPTH_TARGET, "lm_loss", True),
    }
    distill_config = DistillConfig(seq_len=data.seq_len, micro_batch_size=4, steps=4 if quick else 20, lr=5e-4,
                                   warmup_steps=3, eval_every=0, eval_samples=len(heldout), save_every=0)
    train = token_blocks(DATA, tokenizer, data.seq_len, distill_config.steps * distill_config.micro_batch_size)
    print("[3/4] pruning, evaluating on held-out text, distilling")
    rows = [_row("teacher", teacher, heldout, data.batch_size)]
    for label, (folder, target, metric, retrain) in students.items():
        student = prune(teacher, scores, target, depth_metric=metric)
        record = {"stage": "prune", "source": DEFAULT_TEACHER, "target": target, "depth_metric": metric,
                  "kept_layers": student.minitron_kept_layers, "params": count_parameters(student).as_dict()}
        save_checkpoint(student, tokenizer, out_dir / folder, record)
        row = _row(label, student, heldout, data.batch_size) | {"folder": str(out_dir / folder)}
        if retrain:
            distill(student, teacher, train, heldout, distill_config, kept_layers=student.minitron_kept_layers)
            row["distilled_loss"] = evaluate_loss(student, heldout, data.batch_size)["loss"]
            save_checkpoint(student, tokenizer, out_dir / f"{folder}-distilled", {
                "stage": "distill", "teacher": DEFAULT_TEACHER, "tokens": distill_config.steps *
                distill_config.micro_batch_size * data.seq_len, "history": [record]})
        rows.append(row)
    table = _markdown(rows, distill_config.steps * distill_config.micro_batch_size * data.seq_len)
    print("[4/4] results: held-out loss right after pruning and after a short distillation\n")
    print(table)
    atomic_write_text(out_dir / "results.md", table + "\n")
    atomic_write_text(out_dir / "results.json", json.dumps(rows, indent=2))
    print(f"\nmodels, scores and this table are in {out_dir}/")
    return {"rows": rows}


def _row(label: str, model, heldout, batch_size: int) -> dict:
    counts = count_parameters(model)
    metrics = evaluate_loss(model, heldout, batch_size, progress=True)
    return {"model": label, "params": counts.total, "non_embedding": counts.non_embedding, **metrics}


def _markdown(rows: list[dict], distill_tokens: int) -> str:
    teacher = rows[0]
    lines = ["| model | params | non-embedding | held-out loss after pruning (ppl) | "
             f"after distilling {distill_tokens:,} tokens (ppl) |", "|---|---:|---:|---:|---:|"]
    for row in rows:
        share = row["non_embedding"] / teacher["non_embedding"]
        after = row.get("distilled_loss")
        after_text = f"{after:.3f} ({math.exp(after):.1f})" if after is not None else "—"
        lines.append(f"| {row['model']} | {row['params'] / 1e6:.1f}M | {row['non_embedding'] / 1e6:.1f}M "
                     f"({share:.0%}) | {row['loss']:.3f} ({row['perplexity']:.1f}) | {after_text} |")
    return "\n".join(lines)
