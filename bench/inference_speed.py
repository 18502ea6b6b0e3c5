"""Inference speed of width- and depth-pruned students against the teacher and the parameter-ratio ideal.

Usage:
    python bench/inference_speed.py                          # batch 1 and 8, 256-token prompt, 32 new tokens, 5 rounds
    python bench/inference_speed.py --batch-sizes 1 --rounds 3
    python bench/inference_speed.py --scores SCORES_FOLDER   # students pruned from saved importance scores
    python bench/inference_speed.py --batch-sizes 1 --seq-len 32 --new-tokens 4 --rounds 1 --name smoke   # smoke

Models: the teacher builtin:smollm2-135m and two students at about half its non-embedding
parameters: width (hidden 432, MLP 864) and depth (15 of 30 layers). Speed depends on the
architecture, not on the weights' values, so by default the students are pruned with magnitude
scores (no calibration pass; weight norms, and layer norms for depth); --scores uses saved scores.
All fp32 on this machine's device, the models' default attention.

Measured with `minitron.speed.measure_throughput` (one greedy request: a prefill of --seq-len random
tokens per sequence, then --new-tokens tokens decoded one by one with the KV cache). Side by side in
one process: one untimed warm-up request per model, then --rounds rounds, each timing one request per
model with the order rotated every round. Reported per model: median prefill and decode tokens/s
over the rounds; speed-up = the median over rounds of (student rate / teacher rate) in the same round;
ideal = teacher parameters / student parameters, non-embedding and total (the LM head's matmul costs
as much per token as its parameter count says, so the total ratio is the better prediction when the
head is a large part of the model, as here: 28 M of 135 M). Efficiency = speed-up / ideal.

Writes bench/results/inference_speed.json and prints Markdown tables.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, machine_line, markdown_table, quiet_transformers, write_json

TEACHER = "builtin:smollm2-135m"
STUDENTS = {"width (hidden 432, MLP 864)": ({"hidden_size": 432, "intermediate_size": 864}, None),
            "depth (15 layers)": ({"num_hidden_layers": 15}, "magnitude")}
METRICS = ("prefill_tokens_per_s", "decode_tokens_per_s")


def build_models(scores_folder: str | None) -> tuple[dict, str]:
    from minitron import ImportanceScores, load_model, magnitude_scores, prune
    teacher, _ = load_model(TEACHER)
    if scores_folder:
        scores = ImportanceScores.load(scores_folder)
        source = f"importance scores from {scores_folder}"
    else:
        scores = magnitude_scores(teacher)
        source = "magnitude scores (weights do not change speed)"
    models = {"teacher": teacher}
    for label, (target, metric) in STUDENTS.items():
        if metric == "magnitude" and scores_folder:
            metric = None  # saved activation scores: the default metric (LM loss when present)
        models[label] = prune(teacher, scores, target, depth_metric=metric).eval()
    return models, source


def measure(models: dict, batch_size: int, args) -> dict:
    """Per model: the list over rounds of each metric (warm-up request first, untimed)."""
    from minitron.speed import measure_throughput
    names = list(models)
    kwargs = {"batch_size": batch_size, "seq_len": args.seq_len, "new_tokens": args.new_tokens}
    for name in names:
        measure_throughput(models[name], repeats=1, warmup=0, **kwargs)
    rounds: dict = {name: {m: [] for m in (*METRICS, "latency_ms")} for name in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            result = measure_throughput(models[name], repeats=1, warmup=0, seed=r, **kwargs)
            for metric in rounds[name]:
                rounds[name][metric].append(result[metric])
        print(f"batch {batch_size} round {r + 1}/{args.rounds}: " + "; ".join(
            f"{n.split(' ')[0]} prefill {rounds[n]['prefill_tokens_per_s'][-1]:.0f} decode "
            f"{rounds[n]['decode_tokens_per_s'][-1]:.1f} tok/s" for n in names), file=sys.stderr, flush=True)
    return rounds


def summarize(rounds: dict, params: dict) -> list[dict]:
    teacher = rounds["teacher"]
    rows = []
    for name, values in rounds.items():
        row = {"model": name, "params": params[name]}
        ideal = {kind: params["teacher"][kind] / params[name][kind] for kind in ("non_embedding", "total")}
        for metric in METRICS:
            ratios = [s / t for s, t in zip(values[metric], teacher[metric])]
            speedup = statistics.median(ratios)
            row[metric] = statistics.median(values[metric])
            row[metric.replace("tokens_per_s", "speedup")] = speedup
            row[metric.replace("tokens_per_s", "speedup_range")] = [min(ratios), max(ratios)]
            row[metric.replace("tokens_per_s", "efficiency")] = {k: speedup / v for k, v in ideal.items()}
        row["ideal"] = ideal
        row["latency_ms"] = statistics.median(values["latency_ms"])
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    out = []
    for r in rows:
        out.append([r["model"], r["params"]["total"], r["params"]["non_embedding"],
                    f"{r['prefill_tokens_per_s']:,.1f}", f"{r['decode_tokens_per_s']:,.2f}",
                    f"{r['prefill_speedup']:.2f}x ({r['prefill_speedup_range'][0]:.2f}-{r['prefill_speedup_range'][1]:.2f})",
                    f"{r['decode_speedup']:.2f}x ({r['decode_speedup_range'][0]:.2f}-{r['decode_speedup_range'][1]:.2f})",
                    f"{r['ideal']['non_embedding']:.2f}x / {r['ideal']['total']:.2f}x",
                    f"{r['prefill_efficiency']['total']:.2f} / {r['decode_efficiency']['total']:.2f}"])
    return markdown_table(["model", "params (total)", "non-embedding", "prefill tok/s", "decode tok/s",
                           "prefill speed-up (range)", "decode speed-up (range)", "ideal: non-emb / total",
                           "efficiency vs total ideal: prefill / decode"], out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes, each its own table")
    parser.add_argument("--seq-len", type=int, default=256, help="prompt tokens per sequence (prefill)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per request (decode)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scores", help="ImportanceScores folder of the teacher (default: magnitude scores)")
    parser.add_argument("--name", default="inference_speed", help="results file bench/results/NAME.json")
    args = parser.parse_args()
    quiet_transformers()
    import warnings
    warnings.filterwarnings("ignore")
    import torch

    from minitron import count_parameters
    info = machine()
    print(machine_line(info), flush=True)
    started = time.perf_counter()
    models, source = build_models(args.scores)
    params = {name: count_parameters(model).as_dict() for name, model in models.items()}
    attention = {name: model.config._attn_implementation for name, model in models.items()}
    payload = {"machine": info, "settings": vars(args) | {"teacher": TEACHER, "students": STUDENTS, "source": source},
               "parameters": params, "attention": attention, "results": {}}
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        with torch.inference_mode():
            rounds = measure(models, batch_size, args)
        rows = summarize(rounds, params)
        payload["results"][str(batch_size)] = {"rounds": rounds, "rows": rows, "table": table(rows)}
        write_json(args.name, payload)  # after every batch size: a partial run keeps its results
        print(f"\n### Batch {batch_size}: prompt {args.seq_len} tokens, {args.new_tokens} new tokens, "
              f"{args.rounds} interleaved rounds (medians; speed-up = median of per-round ratios)\n")
        print(payload["results"][str(batch_size)]["table"])
    payload["total_seconds"] = time.perf_counter() - started
    print(f"\nStudents from {source}; attention: " + ", ".join(f"{k} {v}" for k, v in attention.items()))
    print(f"(total {payload['total_seconds']:.0f} s; results in {write_json(args.name, payload)})")


if __name__ == "__main__":
    main()
