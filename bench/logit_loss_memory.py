"""Peak memory of the logit distillation loss: naive full logits vs `chunked_logit_loss`.

Usage:
    python bench/logit_loss_memory.py                       # vocab 256000, hidden 1024, 4096 tokens,
                                                            # chunk 1024, fp32
    python bench/logit_loss_memory.py --tokens 2048 --chunk 512          # smaller / faster
    python bench/logit_loss_memory.py --vocab 32000 --hidden 512 --dtype bfloat16

Both variants compute forward KL between a student head Linear(hidden, vocab) and a teacher head
Linear(teacher_hidden, vocab) applied to random (tokens, hidden) states, then run backward
(gradients w.r.t. the student hidden states and the student head weight):
  - naive-plain: full (tokens x vocab) logits, hand-written autograd loss
               F.kl_div(log_softmax(s), log_softmax(t), log_target=True), backward.
  - naive:   full logits, minitron's ForwardKL (fused: saves only its (tokens x vocab) gradient).
  - chunked: minitron.distill.chunked_logit_loss(ForwardKL(), ..., chunk_size=chunk), backward
             (activation-checkpoint path: backward recomputes each chunk's logits; what FSDP2 uses).
  - fused:   the same with head_params=[student head weight] (the path `distill` takes by default:
             each chunk's head gradients are taken in forward; one head-sized gradient buffer more).

Each variant runs in a fresh child process (this script with --child VARIANT) so one cannot
inherit the other's allocator state. The child builds the heads and inputs, runs a tiny warm-up
of the same code path (lazy library init), then records its RSS as the baseline. On CPU it resets
the kernel's peak-RSS mark (/proc/self/clear_refs, "5") and reports VmHWM - baseline; where that
reset is unavailable it falls back to ru_maxrss - baseline (an upper bound: setup peaks count).
On CUDA it reports torch.cuda.max_memory_allocated() - memory_allocated() at the baseline.
The student head's weight gradient (vocab x hidden) is part of both peaks, as in training.
Writes bench/results/logit_loss_memory.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Timer, machine, machine_line, markdown_table, write_json  # noqa: E402

CHILD_MARK = "CHILD_RESULT "
MIB = 1024 * 1024
VARIANTS = ("naive-plain", "naive", "chunked", "fused")


def rss_kib(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def child_env() -> dict:
    """Environment for the children: glibc malloc with a fixed mmap threshold.

    By default glibc raises its mmap threshold (up to 32 MiB) after the first large free, so
    later chunk-sized buffers come from the heap and freed ones stay resident: RSS then measures
    allocator fragmentation rather than live tensors. A fixed threshold keeps every large tensor
    in its own mapping that is returned to the OS on free.
    """
    return os.environ | {"MALLOC_MMAP_THRESHOLD_": str(1 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 20)}


def run_variant(variant: str, student_head: nn.Module, teacher_head: nn.Module, student_hidden: torch.Tensor,
                teacher_hidden: torch.Tensor, chunk: int) -> float:
    from minitron.distill import ForwardKL, chunked_logit_loss
    if variant == "naive-plain":  # what one writes by hand: autograd through log_softmax + kl_div
        student_logits = student_head(student_hidden)
        with torch.no_grad():
            teacher_logits = teacher_head(teacher_hidden)
        loss = F.kl_div(F.log_softmax(student_logits.float(), -1), F.log_softmax(teacher_logits.float(), -1),
                        reduction="sum", log_target=True) / len(student_logits)
    elif variant == "naive":
        student_logits = student_head(student_hidden)
        with torch.no_grad():
            teacher_logits = teacher_head(teacher_hidden)
        total, count = ForwardKL()(student_logits, teacher_logits)
        loss = total / count
    else:
        head_params = [student_head.weight] if variant == "fused" else None
        loss = chunked_logit_loss(ForwardKL(), student_hidden, teacher_hidden, student_head, teacher_head,
                                  chunk_size=chunk, head_params=head_params).mean()
    loss.backward()
    return float(loss.detach())


def child(args) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    student_head = nn.Linear(args.hidden, args.vocab, bias=False, device=device, dtype=dtype)
    teacher_head = nn.Linear(args.teacher_hidden or args.hidden, args.vocab, bias=False, device=device, dtype=dtype)
    teacher_head.requires_grad_(False)

    def inputs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.randn(n, args.hidden, device=device, dtype=dtype, requires_grad=True),
                torch.randn(n, teacher_head.in_features, device=device, dtype=dtype))

    warm_s, warm_t = inputs(8)  # lazy init (kernels, autograd engine threads) outside the measurement
    run_variant(args.child, student_head, teacher_head, warm_s, warm_t, 4)
    student_head.weight.grad = None
    del warm_s, warm_t
    student_hidden, teacher_hidden = inputs(args.tokens)

    if device.type == "cuda":
        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        baseline = rss_kib() * 1024
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            reset = True
        except OSError:
            reset = False
    with Timer() as timer:
        loss = run_variant(args.child, student_head, teacher_head, student_hidden, teacher_hidden, args.chunk)
        if device.type == "cuda":
            torch.cuda.synchronize()
    if device.type == "cuda":
        peak, method = torch.cuda.max_memory_allocated(), "cuda.max_memory_allocated"
    elif reset:
        peak, method = rss_kib("VmHWM") * 1024, "VmHWM after clear_refs"
    else:  # ru_maxrss is KiB on Linux
        peak, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss"
    print(CHILD_MARK + json.dumps({
        "variant": args.child, "peak_mib": (peak - baseline) / MIB, "baseline_mib": baseline / MIB,
        "method": method, "seconds": timer.seconds, "loss": loss, "device": str(device),
        "grad_hidden_norm": float(student_hidden.grad.float().norm()),
        "grad_head_norm": float(student_head.weight.grad.float().norm()),
    }), flush=True)


def estimate_mib(variant: str, args) -> float:
    """Rough peak above baseline, to skip a variant that would not fit (an OOM kill hits neighbours too).

    In units of one fp32 logits buffer: autograd keeps ~7 of them, the fused loss ~4, the chunked
    path ~3 chunk buffers, plus one or two head-weight gradients.
    """
    unit = 4 * args.vocab / MIB
    weight_grad = args.hidden * unit
    per_variant = {"naive-plain": 7.5 * args.tokens * unit + weight_grad,
                   "naive": 4.5 * args.tokens * unit + weight_grad,
                   "chunked": 3.5 * min(args.chunk, args.tokens) * unit + 2 * weight_grad,
                   "fused": 3.5 * min(args.chunk, args.tokens) * unit + 3 * weight_grad}
    return per_variant[variant]


def available_mib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.mem_get_info()[0] / MIB
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", type=int, default=256000)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--teacher-hidden", type=int, default=None, help="default: --hidden")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated subset of " + ", ".join(VARIANTS))
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    results, skipped = {}, {}
    for variant in [v for v in VARIANTS if v in args.variants.split(",")]:
        need, have = estimate_mib(variant, args), available_mib()
        if need > 0.85 * have:
            skipped[variant] = f"skipped: needs ~{need:,.0f} MiB, {have:,.0f} MiB available"
            continue
        cmd = [sys.executable, __file__, "--child", variant] + sys.argv[1:]
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(CHILD_MARK)]
        if proc.returncode != 0 or not lines:
            sys.exit(f"{variant} child failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
        results[variant] = json.loads(lines[-1][len(CHILD_MARK):]) | {"child_wall_s": time.perf_counter() - started}
    if not results:
        sys.exit("every variant was skipped: " + "; ".join(skipped.values()))

    for name in ("naive-plain", "naive"):
        for r in results.values():
            if name in results:
                r[f"ratio_to_{name}"] = r["peak_mib"] / results[name]["peak_mib"]
    losses = [r["loss"] for r in results.values()]
    rel = (max(losses) - min(losses)) / max(abs(losses[0]), 1e-12)
    first = next(iter(results.values()))
    info = machine()
    setup = (f"vocab {args.vocab}, hidden {args.hidden}, teacher hidden {args.teacher_hidden or args.hidden}, "
             f"{args.tokens} tokens, chunk {args.chunk}, {args.dtype}, device {first['device']}")
    print(f"Logit-loss peak memory above baseline ({first['method']}): {setup}")
    print(machine_line(info) + "\n")

    def ratio(r: dict, name: str) -> str:
        return f"{r[f'ratio_to_{name}']:.3f}" if f"ratio_to_{name}" in r else "-"

    rows = [[name, float(r["peak_mib"]), ratio(r, "naive-plain"), ratio(r, "naive"), float(r["seconds"])]
            for name, r in results.items()]
    rows += [[name, why, "-", "-", "-"] for name, why in skipped.items()]
    print(markdown_table(["variant", "peak MiB", "ratio to naive-plain", "ratio to naive", "seconds"], rows))
    print(f"\nLosses agree to {rel:.1e} (relative).")
    for variant in ("chunked", "fused"):
        for name in ("naive-plain", "naive"):
            if variant in results and name in results:
                met = results[variant][f"ratio_to_{name}"] <= 0.25
                print(f"Target {variant} <= 1/4 of {name}: {'met' if met else 'NOT met'}")
    bits = torch.finfo(getattr(torch, args.dtype)).bits
    print(f"One {args.tokens} x {args.vocab} fp32 logits tensor = {args.tokens * args.vocab * 4 / MIB:,.0f} MiB; "
          f"one {args.chunk}-token chunk = {args.chunk * args.vocab * 4 / MIB:,.0f} MiB; "
          f"head weight gradient = {args.hidden * args.vocab * bits / 8 / MIB:,.0f} MiB")
    path = write_json("logit_loss_memory", {"config": vars(args) | {"child": None}, "machine": info,
                                            "results": results, "skipped": skipped, "loss_relative_spread": rel})
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()
