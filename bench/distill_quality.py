"""Distillation quality: KD vs CE retraining vs training from scratch, same pruned architecture and token budget.

Usage:
    python bench/distill_quality.py                        # 60 steps x micro batch 4 x 256 tokens per run
    python bench/distill_quality.py --steps 30             # a smaller budget (a shared 2-core CPU is slow)
    python bench/distill_quality.py --methods kd,ce        # a subset; --seeds 0,1 for two seeds
    # runs split over two processes, then combined into bench/results/distill_quality.json:
    python bench/distill_quality.py --methods kd,ce,scratch --scratch-lrs 5e-4 --results distill_quality_a
    python bench/distill_quality.py --methods scratch --scratch-lrs 2e-3 --skip-baselines --results distill_quality_b
    python bench/distill_quality.py --merge distill_quality_a,distill_quality_b
    # KD from a corrected teacher (the seeds' teacher correction: CE fine-tuning on the training text first):
    python bench/distill_quality.py --steps 40 --methods kd-corrected --results distill_quality_corrected

Setup:
  - teacher: builtin:smollm2-135m (SmolLM2-135M-Instruct), fp32 on CPU.
  - student: the teacher width-pruned to hidden 432 / MLP 864 (half the non-embedding parameters)
    from activation importance on 64 x 256-token calibration blocks of builtin:python-docs (train
    split); every method starts from a copy of this one pruned model, except "scratch".
  - training text: builtin:python-docstrings, train split, steps x micro batch distinct 256-token
    blocks (the default budget, 60 x 4 x 256 = 61,440 tokens, is seen once).
  - every run: `minitron.distill.loop.distill` with the same steps, micro batch, sequence length,
    warm-up (a tenth of the run), cosine decay to 4.5e-7, AdamW (betas 0.9/0.95, no weight decay),
    clipping at 1.0, fp32, seed 0; only the loss, the starting weights and the peak lr differ:
      kd       forward KL to the teacher's logits (logit-only, ce_weight 0), lr 5e-4
      ce       next-token cross entropy on the same text, no teacher, lr 5e-4
      scratch  the same architecture randomly initialised (AutoModelForCausalLM.from_config(
               student.config), seeded), cross entropy; run at lr 5e-4 and at 2e-3, the better of
               the two (lower mean held-out loss) is the "scratch" row, both are reported.
      kd-corrected  KD as above, from a corrected teacher: a copy of the teacher first fine-tuned with
               cross entropy on the same training blocks (--correction-steps, --correction-lr), as the
               seeds do before distilling; the corrected teacher's own held-out loss is reported too.
  - evaluation: mean next-token loss (`minitron.evaluate_loss`) on held-out 256-token blocks of
    builtin:python-topics (language reference text, never trained on by any method) and of the
    held-out split of builtin:python-docstrings (the training distribution); also the teacher's
    and the just-pruned (untrained) student's loss on both.

Writes bench/results/distill_quality.json (after every run, so a partial run keeps its results)
and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, machine_line, markdown_table, quiet_transformers, write_json

TEACHER = "builtin:smollm2-135m"
TARGET = {"hidden_size": 432, "intermediate_size": 864}
CALIB = "builtin:python-docs"
TRAIN = "builtin:python-docstrings"
EVALS = {"python-topics": "builtin:python-topics", "python-docstrings": "builtin:python-docstrings"}
METHODS = ("kd", "ce", "scratch", "kd-corrected")


def evaluate(model, eval_sets: dict, batch_size: int) -> dict:
    from minitron import evaluate_loss
    return {name: evaluate_loss(model, blocks, batch_size=batch_size) for name, blocks in eval_sets.items()}


def train(method: str, lr: float, seed: int, pruned, teacher, train_blocks, heldout_blocks, args) -> tuple:
    from transformers import AutoModelForCausalLM

    from minitron.config import DistillConfig
    from minitron.distill.loop import distill
    torch.manual_seed(seed)
    if method == "scratch":
        student = AutoModelForCausalLM.from_config(copy.deepcopy(pruned.config), dtype=torch.float32)
    else:
        student = copy.deepcopy(pruned)
    config = DistillConfig(seq_len=args.seq_len, micro_batch_size=args.micro_batch, steps=args.steps, lr=lr,
                           warmup_steps=max(1, args.steps // 10), eval_every=0, eval_samples=len(heldout_blocks),
                           save_every=0, loss="forward_kl" if method.startswith("kd") else "ce", ce_weight=0.0,
                           precision="fp32", seed=seed)
    curve = []
    started = time.perf_counter()
    distill(student, teacher if method.startswith("kd") else None, train_blocks, heldout_blocks, config,
            on_step=lambda step, record: curve.append(record))
    return student, curve, time.perf_counter() - started


def correct_teacher(teacher, train_blocks, heldout_blocks, args):
    """A copy of the teacher fine-tuned with cross entropy on the training blocks (teacher correction)."""
    from minitron.config import DistillConfig
    from minitron.distill.loop import distill
    steps = args.correction_steps or args.steps
    corrected = copy.deepcopy(teacher)
    config = DistillConfig(seq_len=args.seq_len, micro_batch_size=args.micro_batch, steps=steps,
                           lr=args.correction_lr, warmup_steps=max(1, steps // 10), eval_every=0,
                           eval_samples=len(heldout_blocks), save_every=0, loss="ce", precision="fp32", seed=0)
    distill(corrected, None, train_blocks[: steps * args.micro_batch], heldout_blocks, config)
    return corrected.eval()


def mean_loss(result: dict) -> float:
    return sum(r["loss"] for r in result.values()) / len(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=5e-4, help="peak lr of kd, ce and the first scratch run")
    parser.add_argument("--scratch-lrs", default="5e-4,2e-3")
    parser.add_argument("--calib-blocks", type=int, default=64)
    parser.add_argument("--eval-blocks", type=int, default=24, help="held-out 256-token blocks per eval set")
    parser.add_argument("--eval-batch", type=int, default=4)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--correction-steps", type=int, default=None, help="kd-corrected: teacher fine-tuning "
                        "steps on the training blocks (default: --steps)")
    parser.add_argument("--correction-lr", type=float, default=5e-5, help="kd-corrected: teacher fine-tuning lr")
    parser.add_argument("--results", default="distill_quality", help="bench/results/NAME.json to write")
    parser.add_argument("--skip-baselines", action="store_true", help="do not evaluate teacher / pruned")
    parser.add_argument("--merge", help="NAME,NAME,...: no training; combine the runs of these result files "
                        "(written by earlier invocations with the same settings) into --results")
    args = parser.parse_args()
    if args.merge:
        merge(args)
        return
    quiet_transformers()
    import warnings
    warnings.filterwarnings("ignore")
    from minitron import (
        count_parameters,
        estimate_importance,
        iter_batches,
        load_model,
        prune,
        token_blocks,
    )

    info = machine()
    print(machine_line(info), flush=True)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    scratch_lrs = [float(x) for x in args.scratch_lrs.split(",")]

    teacher, tok = load_model(TEACHER)
    calib = token_blocks(CALIB, tok, 256, args.calib_blocks, split="train")
    scores = estimate_importance(teacher, list(iter_batches(calib, 8)), progress=False)
    pruned = prune(teacher, scores, TARGET)
    params = {"teacher": count_parameters(teacher).as_dict(), "student": count_parameters(pruned).as_dict()}
    train_blocks = token_blocks(TRAIN, tok, args.seq_len, args.steps * args.micro_batch, split="train")
    eval_sets = {name: token_blocks(spec, tok, args.seq_len, args.eval_blocks, split="heldout", allow_fewer=True)
                 for name, spec in EVALS.items()}
    tokens = args.steps * args.micro_batch * args.seq_len
    print(f"teacher {params['teacher']['total']:,} params, student {params['student']['total']:,} "
          f"({params['student']['non_embedding']:,} non-embedding); train {tokens:,} tokens of {TRAIN}; "
          f"eval blocks: " + ", ".join(f"{n} {len(b)} x {args.seq_len}" for n, b in eval_sets.items()), flush=True)
    # distill validates after its last step; one held-out block keeps that cheap (we evaluate ourselves).
    val_blocks = eval_sets["python-docstrings"][:1]

    payload = {"machine": info, "settings": vars(args) | {"teacher": TEACHER, "target": TARGET, "calib": CALIB,
                                                          "train": TRAIN, "evals": EVALS, "tokens": tokens},
               "parameters": params, "eval_blocks": {n: len(b) for n, b in eval_sets.items()}, "baselines": {},
               "runs": []}

    def save():
        write_json(args.results, payload)

    started = time.perf_counter()
    if not args.skip_baselines:
        payload["baselines"]["teacher"] = evaluate(teacher, eval_sets, args.eval_batch)
        payload["baselines"]["pruned"] = evaluate(pruned, eval_sets, args.eval_batch)
    for name, result in payload["baselines"].items():
        print(f"{name}: " + ", ".join(f"{k} {v['loss']:.4f}" for k, v in result.items())
              + f" ({time.perf_counter() - started:.0f} s)", flush=True)
    save()

    plan = []
    for seed in seeds:
        for method in methods:
            for lr in (scratch_lrs if method == "scratch" else [args.lr]):
                plan.append((method, lr, seed))
    corrected = None
    if "kd-corrected" in methods:
        corrected = correct_teacher(teacher, train_blocks, val_blocks, args)
        payload["baselines"]["corrected teacher"] = evaluate(corrected, eval_sets, args.eval_batch)
        print("corrected teacher: " + ", ".join(f"{k} {v['loss']:.4f}" for k, v in
                                                  payload["baselines"]["corrected teacher"].items()), flush=True)
        save()
    for method, lr, seed in plan:
        source = corrected if method == "kd-corrected" else teacher
        student, curve, seconds = train(method, lr, seed, pruned, source, train_blocks, val_blocks, args)
        result = evaluate(student, eval_sets, args.eval_batch)
        run = {"method": method, "lr": lr, "seed": seed, "tokens": tokens, "train_seconds": seconds,
               "eval": result, "train_loss_first": curve[0]["loss"], "train_loss_last": curve[-1]["loss"],
               "curve": [{k: r[k] for k in ("step", "loss", "lr", "tokens_per_s") if k in r} for r in curve]}
        payload["runs"].append(run)
        save()
        print(f"{method} lr {lr:g} seed {seed}: " + ", ".join(f"{k} {v['loss']:.4f}" for k, v in result.items())
              + f"; train loss {curve[0]['loss']:.3f} -> {curve[-1]['loss']:.3f}; {seconds:.0f} s", flush=True)
        del student
    payload["total_seconds"] = time.perf_counter() - started
    report(payload, args.results)


def merge(args) -> None:
    """Combine runs from several result files (same settings) into one payload and report it."""
    import json

    from common import RESULTS_DIR
    names = [n.strip() for n in args.merge.split(",") if n.strip()]
    parts = [json.loads((RESULTS_DIR / f"{n}.json").read_text()) for n in names]
    keys = ("steps", "micro_batch", "seq_len", "calib_blocks", "eval_blocks", "tokens")
    for name, part in zip(names[1:], parts[1:]):
        differ = [k for k in keys if part["settings"][k] != parts[0]["settings"][k]]
        if differ or part["eval_blocks"] != parts[0]["eval_blocks"]:
            raise SystemExit(f"{name}: settings differ from {names[0]} ({differ or 'eval_blocks'})")
    payload = copy.deepcopy(parts[0])
    payload["merged_from"] = {n: {"machine": p["machine"], "runs": [(r["method"], r["lr"], r["seed"])
                                                                    for r in p["runs"]]}
                              for n, p in zip(names, parts)}
    for part in parts[1:]:
        payload["baselines"] = {**part["baselines"], **payload["baselines"]}
        have = {(r["method"], r["lr"], r["seed"]) for r in payload["runs"]}
        payload["runs"] += [r for r in part["runs"] if (r["method"], r["lr"], r["seed"]) not in have]
    order = {m: i for i, m in enumerate(METHODS)}
    payload["runs"].sort(key=lambda r: (r["seed"], order[r["method"]], r["lr"]))
    payload.pop("total_seconds", None)
    report(payload, args.results)


def report(payload: dict, results: str) -> None:
    """Build the table and the KD < CE < scratch summary, write `results`.json, print."""
    settings, params = payload["settings"], payload["parameters"]
    tokens = settings["tokens"]
    seeds = sorted({r["seed"] for r in payload["runs"]})
    # Table: baselines, then per method (scratch: the better lr per seed, plus every scratch run listed).
    names = list(EVALS)
    headers = ["method", "lr", "seed", "train tokens"] + [h for n in names for h in (f"{n} loss", f"{n} ppl")]

    def row(label, lr, seed, tok_count, result):
        cells = []
        for n in names:
            cells += [round(result[n]["loss"], 4), round(result[n]["perplexity"], 2)]
        return [label, lr, seed, tok_count] + cells

    rows = []
    if payload["baselines"]:
        rows = [row("teacher (SmolLM2-135M)", "-", "-", 0, payload["baselines"]["teacher"]),
                row("pruned, no training", "-", "-", 0, payload["baselines"]["pruned"])]
    if "corrected teacher" in payload["baselines"]:
        rows.append(row("teacher after correction (CE fine-tuning)", "-", "-", 0,
                        payload["baselines"]["corrected teacher"]))
    labels = {"kd": "KD (forward KL, logits only)", "ce": "CE retraining (no teacher)",
              "scratch": "same architecture from scratch (CE)",
              "kd-corrected": "KD from the corrected teacher"}
    best_scratch = {}
    for seed in seeds:
        scratch_runs = [r for r in payload["runs"] if r["method"] == "scratch" and r["seed"] == seed]
        if scratch_runs:
            best_scratch[seed] = min(scratch_runs, key=lambda r: mean_loss(r["eval"]))
    for run in payload["runs"]:
        label = labels[run["method"]]
        if run["method"] == "scratch":
            label += " (kept: better lr)" if run is best_scratch.get(run["seed"]) else " (worse lr)"
        rows.append(row(label, f"{run['lr']:g}", run["seed"], run["tokens"], run["eval"]))
    table = markdown_table(headers, rows)
    payload["table"] = table
    payload["best_scratch_lr"] = {seed: r["lr"] for seed, r in best_scratch.items()}
    summary = {}
    for seed in seeds:
        by = {r["method"]: r for r in payload["runs"] if r["seed"] == seed and r["method"] != "scratch"}
        if seed in best_scratch:
            by["scratch"] = best_scratch[seed]
        summary[seed] = {m: {n: r["eval"][n]["loss"] for n in names} for m, r in by.items()}
        if all(m in by for m in ("kd", "ce", "scratch")):
            summary[seed]["kd_lt_ce_lt_scratch"] = {
                n: by["kd"]["eval"][n]["loss"] < by["ce"]["eval"][n]["loss"] < by["scratch"]["eval"][n]["loss"]
                for n in names}
        if "kd-corrected" in by and "ce" in by:
            summary[seed]["kd_corrected_lt_ce"] = {
                n: by["kd-corrected"]["eval"][n]["loss"] < by["ce"]["eval"][n]["loss"] for n in names}
    payload["summary"] = summary
    path = write_json(results, payload)
    print()
    print(f"Student: {TARGET} pruned from {TEACHER} ({params['student']['total']:,} params); "
          f"{settings['steps']} steps x {settings['micro_batch']} x {settings['seq_len']} = {tokens:,} training "
          f"tokens of {TRAIN} (train split); held-out eval: "
          + ", ".join(f"{n} {b} x {settings['seq_len']} tokens" for n, b in payload["eval_blocks"].items()))
    print(table)
    for seed, s in summary.items():
        if "kd_lt_ce_lt_scratch" in s:
            print(f"seed {seed}: KD < CE < scratch held-out loss: {s['kd_lt_ce_lt_scratch']}")
        if "kd_corrected_lt_ce" in s:
            print(f"seed {seed}: KD from the corrected teacher < CE held-out loss: {s['kd_corrected_lt_ce']}")
    if "total_seconds" in payload:
        print(f"total {payload['total_seconds'] / 60:.1f} min")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
