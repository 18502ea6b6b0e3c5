"""Importance estimation speed vs a plain forward pass, and its peak memory vs the number of samples.

Usage:
    python bench/importance_speed.py                      # defaults: 6 batches of 4 x 256, 3 repeats,
                                                          # memory at 8, 32, 128 samples (batch 8)
    python bench/importance_speed.py --batches 2 --repeats 2 --memory-samples 8,16   # quick run
    python bench/importance_speed.py --skip-memory

Part 1 (speed), on the built-in teacher, inside torch.inference_mode(), over the same batches:
  - importance: minitron.estimate_importance(model, batches)   (hooks + accumulation + fingerprint)
  - plain:      model(input_ids, use_cache=False)              (full logits over every position)
  - keep1:      model(input_ids, use_cache=False, logits_to_keep=1) (what importance runs internally)
The three are interleaved (the order rotates every repeat) after one untimed warm-up of each, and
the median token rates and their ratios are reported.

Part 2 (memory): one child process per sample count (this script with --child-memory N) loads the
model and data, resets the kernel's peak-RSS mark (/proc/self/clear_refs), runs importance estimation,
and reports ru_maxrss (whole child), the peak RSS of the estimation phase, and the score state size.
Writes bench/results/importance_speed.json.
"""
from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

import minitron

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (Timer, machine, machine_line, markdown_table, median, quiet_transformers,  # noqa: E402
                    tensor_bytes, write_json)

CHILD_MARK = "CHILD_RESULT "


def proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def load(args, num_blocks: int):
    model, tokenizer = minitron.load_model(args.model)
    blocks = minitron.token_blocks(args.data, tokenizer, args.seq_len, num_blocks, split="train")
    return model, blocks


def child_memory(args) -> None:
    model, blocks = load(args, args.child_memory)
    batches = list(minitron.iter_batches(blocks, args.memory_batch_size))
    gc.collect()
    rss_before = proc_status_kib("VmRSS")
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:  # "5" resets the peak RSS (VmHWM) of this process to its current RSS
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    with Timer() as t:
        scores = minitron.estimate_importance(model, batches, progress=False)
    result = {"samples": args.child_memory, "tokens": int(blocks.numel()), "seconds": t.seconds,
              "rss_before_kib": rss_before, "maxrss_after_load_kib": maxrss_before,
              "peak_rss_estimation_kib": proc_status_kib("VmHWM") if reset else None,
              "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
              "hwm_reset": reset, "score_bytes": tensor_bytes(scores),
              "num_samples_in_scores": scores.meta["num_samples"]}
    print(CHILD_MARK + json.dumps(result), flush=True)


def speed(args) -> dict:
    model, blocks = load(args, args.batches * args.batch_size)
    batches = list(minitron.iter_batches(blocks, args.batch_size))
    tokens = int(blocks.numel())

    def run_importance():
        minitron.estimate_importance(model, batches, progress=False)

    def run_plain():
        for batch in batches:
            model(batch, use_cache=False)

    def run_keep1():
        for batch in batches:
            model(batch, use_cache=False, logits_to_keep=1)

    variants = {"importance": run_importance, "plain": run_plain, "keep1": run_keep1}
    names = list(variants)
    seconds = {name: [] for name in names}
    with torch.inference_mode():
        minitron.estimate_importance(model, batches[:1], progress=False)  # warm-up, untimed
        model(batches[0], use_cache=False)
        model(batches[0], use_cache=False, logits_to_keep=1)
        for repeat in range(args.repeats):
            order = names[repeat % len(names):] + names[:repeat % len(names)]
            for name in order:
                gc.collect()
                with Timer() as t:
                    variants[name]()
                seconds[name].append(t.seconds)
                print(f"  repeat {repeat + 1}/{args.repeats} {name:<10} {tokens / t.seconds:8.1f} tokens/s",
                      file=sys.stderr, flush=True)
        from minitron.fingerprint import model_fingerprint  # runs inside estimate_importance too
        fingerprint_seconds = []
        for _ in range(args.repeats):
            with Timer() as t:
                model_fingerprint(model)
            fingerprint_seconds.append(t.seconds)
    rates = {name: [tokens / s for s in seconds[name]] for name in names}
    paired = {other: [a / b for a, b in zip(seconds[other], seconds["importance"])] for other in ("plain", "keep1")}
    return {"tokens_per_pass": tokens, "batches": args.batches, "batch_size": args.batch_size,
            "seq_len": args.seq_len, "repeats": args.repeats, "seconds": seconds, "rates": rates,
            "median_rate": {name: median(rates[name]) for name in names},
            "ratio_vs_plain": median(rates["importance"]) / median(rates["plain"]),
            "ratio_vs_keep1": median(rates["importance"]) / median(rates["keep1"]),
            "paired_ratio_median": {k: median(v) for k, v in paired.items()}, "paired_ratios": paired,
            "fingerprint_seconds_median": median(fingerprint_seconds)}


def memory(args) -> list[dict]:
    results = []
    for samples in args.memory_samples * args.memory_repeats:
        command = [sys.executable, __file__, "--child-memory", str(samples), "--model", args.model,
                   "--data", args.data, "--seq-len", str(args.seq_len),
                   "--memory-batch-size", str(args.memory_batch_size)]
        done = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith(CHILD_MARK)]
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"child for {samples} samples failed ({done.returncode}):\n{done.stderr[-3000:]}")
        results.append(json.loads(lines[-1][len(CHILD_MARK):]))
        print(f"  memory child {samples} samples done", file=sys.stderr, flush=True)
    return results


def print_speed(result: dict) -> None:
    rates = result["median_rate"]
    print(f"### Speed: {result['batches']} batches of {result['batch_size']} x {result['seq_len']} tokens, "
          f"{result['repeats']} interleaved repeats (median)\n")
    rows = [["importance (estimate_importance)", rates["importance"], 1.0],
            ["plain forward (full logits)", rates["plain"], rates["importance"] / rates["plain"]],
            ["forward, logits_to_keep=1", rates["keep1"], rates["importance"] / rates["keep1"]]]
    print(markdown_table(["pass", "tokens/s (median)", "importance / this"], rows))
    verdict = "meets" if result["ratio_vs_plain"] >= 0.85 else "MISSES"
    print(f"\nimportance / plain = {result['ratio_vs_plain']:.3f} ({verdict} the >= 0.85 target); "
          f"importance / keep1 = {result['ratio_vs_keep1']:.3f}; medians of per-repeat paired ratios: "
          + "; ".join(f"vs {k} {result['paired_ratio_median'][k]:.3f} (range {min(v):.3f}-{max(v):.3f})"
                      for k, v in result["paired_ratios"].items()) + "; "
          f"model_fingerprint (inside each importance pass): {result['fingerprint_seconds_median']:.2f} s\n")


def print_memory(args, results: list[dict]) -> dict:
    mib = lambda kib: kib / 1024 if kib is not None else float("nan")  # noqa: E731
    print(f"### Peak memory vs samples ({args.seq_len} tokens each, batch {args.memory_batch_size}, "
          "one child process each)\n")
    rows = [[r["samples"], r["tokens"], mib(r["rss_before_kib"]), mib(r["peak_rss_estimation_kib"]),
             mib(r["ru_maxrss_kib"]), r["score_bytes"], r["seconds"]] for r in results]
    print(markdown_table(["samples", "tokens", "RSS before estimation (MiB)", "peak RSS during estimation (MiB)",
                          "ru_maxrss at end (MiB)", "score bytes", "seconds"], rows))
    low, high = min(r["samples"] for r in results), max(r["samples"] for r in results)
    worst = lambda n, key: max(r[key] or 0 for r in results if r["samples"] == n)  # noqa: E731
    growth = {"samples": [low, high],
              "ru_maxrss": worst(high, "ru_maxrss_kib") / worst(low, "ru_maxrss_kib"),
              "estimation_peak": (worst(high, "peak_rss_estimation_kib") / worst(low, "peak_rss_estimation_kib")
                                  if all(r["hwm_reset"] for r in results) else None),
              "score_bytes": worst(high, "score_bytes") / worst(low, "score_bytes")}
    est = f"{growth['estimation_peak']:.3f}" if growth["estimation_peak"] is not None else "n/a"
    print(f"\n{high} vs {low} samples (largest value of each): ru_maxrss x{growth['ru_maxrss']:.3f}, "
          f"estimation-phase peak x{est}, score state x{growth['score_bytes']:.3f}")
    return growth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:smollm2-135m")
    parser.add_argument("--data", default="builtin:python-docs")
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-samples", type=lambda s: [int(x) for x in s.split(",")], default=[8, 32, 128])
    parser.add_argument("--memory-batch-size", type=int, default=8)
    parser.add_argument("--memory-repeats", type=int, default=1, help="children per sample count (interleaved)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--child-memory", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    quiet_transformers()
    if args.child_memory is not None:
        child_memory(args)
        return
    info = machine()
    print(machine_line(info) + "\n")
    with Timer() as total:
        speed_result = None if args.skip_speed else speed(args)
        memory_result = [] if args.skip_memory else memory(args)
    payload = {"machine": info, "args": {k: v for k, v in vars(args).items() if k != "child_memory"},
               "speed": speed_result, "memory": memory_result}
    if speed_result:
        print_speed(speed_result)
    if memory_result:
        payload["memory_growth"] = print_memory(args, memory_result)
    payload["total_seconds"] = total.seconds
    path = write_json("importance_speed", payload)
    print(f"\n(total {total.seconds:.0f} s; results in {path})")


if __name__ == "__main__":
    main()
