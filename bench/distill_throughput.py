"""Distillation throughput: minitron's `distill` vs NVIDIA Model Optimizer's Hugging Face `KDTrainer`.

Usage:
    python bench/distill_throughput.py                      # 3 rounds x (1 warm-up + 3 timed) steps per method,
                                                            # micro batch 4 x 256 tokens, fp32, + peak RSS
    python bench/distill_throughput.py --rounds 5 --steps 4 --warmup 2
    python bench/distill_throughput.py --no-memory          # skip the per-method peak-RSS children
    python bench/distill_throughput.py --methods minitron,plain-hf   # without ModelOpt
    python bench/distill_throughput.py --precision bf16     # bf16 autocast for every method (CPUs with AMX /
                                                            # AVX512-BF16, GPUs); writes distill_throughput_bf16.json

Setup (all methods): teacher = builtin:smollm2-135m (fp32), student = the same teacher pruned to
hidden 432 / MLP 864 (half the non-embedding parameters) from activation importance, one deep copy
of that student per method (each copy trains in place across its rounds). Same data (blocks of
builtin:python-docs, train split), micro batch, sequence length, precision (--precision: fp32, or bf16
autocast around forward and loss with fp32 weights, gradients and optimizer state), AdamW (lr 1e-4, betas
(0.9, 0.95), weight decay 0), gradient clipping at 1.0, no gradient accumulation, no evaluation, no
checkpointing, forward KL at temperature 1 on the logits only.

Methods:
  - minitron: `minitron.distill.loop.distill(student, teacher, ...)` (student and teacher run their
    base models; the LM heads and the loss run chunk by chunk inside a fused forward-KL).
  - modelopt: `modelopt.torch.distill.plugins.huggingface.KDTrainer(model=student, args=TrainingArguments
    (...), train_dataset=..., distill_args={"teacher_model": teacher, "temperature": 1.0,
    "criterion": "logits_loss"})`, `trainer.train()` (the installed version's documented API: full
    student and teacher logits, `LogitsDistillationLoss` with reduction "none", masked by labels).
  - plain-hf: a hand-written loop, `student(ids).logits`, `teacher(ids).logits` under no_grad,
    `F.kl_div(log_softmax(s), log_softmax(t), log_target=True)`, same optimizer and clipping.

Timing: the methods alternate within one process, R rounds; each round runs every method for
W warm-up + N steps (a fresh `distill` call / a fresh KDTrainer / a fresh loop each round, so the
set-up of each is outside the timed steps; the method order rotates every round). The timed
quantity is the compute of one optimizer step: for minitron the seconds behind the record's
`tokens_per_s` (forward, backward, clipping, optimizer and scheduler step); for KDTrainer the time
from the Trainer's `on_step_begin` to `on_step_end` callback (the same scope); for plain-hf the
same scope measured around the loop body. Reported: median tokens/s over the R x N timed steps of
each method and ratios of medians. The machine may be shared: only side-by-side ratios are meaningful.

Peak RSS (unless --no-memory): each method then runs W + 2 steps in a fresh child process (this
script with --child METHOD) that loads the teacher and the saved pruned student, records its RSS,
resets the kernel's peak-RSS mark (/proc/self/clear_refs) and reports VmHWM - baseline (the
training step's extra memory: activations, logits, gradients, optimizer state) and VmHWM.

Writes bench/results/distill_throughput.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    machine,
    machine_line,
    markdown_table,
    median,
    quiet_transformers,
    spread,
    write_json,
)

TEACHER = "builtin:smollm2-135m"
TARGET = {"hidden_size": 432, "intermediate_size": 864}
DATA = "builtin:python-docs"
CHILD_MARK = "CHILD_RESULT "
MIB = 1024 * 1024
ALL_METHODS = ("minitron", "modelopt", "plain-hf")
LABELS = {"minitron": "minitron `distill`", "modelopt": "ModelOpt `KDTrainer`",
          "plain-hf": "plain HF loop (full logits + F.kl_div)"}


def rss_kib(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------- methods

def run_minitron(student, teacher, blocks, args, steps: int) -> list[float]:
    """Seconds of compute per step (from the records' tokens_per_s) for `steps` steps."""
    from minitron.config import DistillConfig
    from minitron.distill.loop import distill
    config = DistillConfig(seq_len=args.seq_len, micro_batch_size=args.micro_batch, steps=steps, lr=args.lr,
                           warmup_steps=0, eval_every=0, eval_samples=1, save_every=0, loss="forward_kl",
                           temperature=1.0, ce_weight=0.0, precision=args.precision, clip_grad=1.0,
                           weight_decay=0.0)
    tokens_per_step = args.micro_batch * args.seq_len
    seconds: list[float] = []
    # eval_every=0 still validates after the last step: give it a single held-out block (outside the timing).
    distill(student, teacher, blocks, blocks[:1], config,
            on_step=lambda step, record: seconds.append(tokens_per_step / record["tokens_per_s"]))
    return seconds


class _BlockDataset(torch.utils.data.Dataset):
    def __init__(self, blocks: torch.Tensor) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict:
        ids = self.blocks[index]
        return {"input_ids": ids, "labels": ids.clone()}


def run_modelopt(student, teacher, blocks, args, steps: int, out_dir: str) -> list[float]:
    from modelopt.torch.distill.plugins.huggingface import KDTrainer
    from transformers import TrainerCallback, TrainingArguments

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.started = None

        def on_step_begin(self, args_, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args_, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.started)

    training_args = TrainingArguments(
        output_dir=out_dir, max_steps=steps, per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=1, learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=0,
        weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.95, max_grad_norm=1.0, optim="adamw_torch",
        use_cpu=True, bf16=args.precision == "bf16", fp16=False, eval_strategy="no", save_strategy="no",
        logging_strategy="no",
        report_to="none", disable_tqdm=True, dataloader_num_workers=0, dataloader_pin_memory=False,
        remove_unused_columns=False, seed=0)
    timer = StepTimer()
    trainer = KDTrainer(model=student, args=training_args, train_dataset=_BlockDataset(blocks),
                        callbacks=[timer],
                        distill_args={"teacher_model": teacher, "temperature": 1.0, "criterion": "logits_loss"})
    trainer.train()
    return timer.seconds


def run_plain_hf(student, teacher, blocks, args, steps: int) -> list[float]:
    from transformers import get_cosine_with_min_lr_schedule_with_warmup
    student.train()
    teacher.eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(optimizer, 0, steps, min_lr=4.5e-7)
    seconds = []
    for step in range(steps):
        index = torch.arange(step * args.micro_batch, (step + 1) * args.micro_batch) % len(blocks)
        ids = blocks[index]
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            s_logits = student(input_ids=ids, use_cache=False).logits[:, :-1].float()
            with torch.no_grad():
                t_logits = teacher(input_ids=ids, use_cache=False).logits[:, :-1].float()
            vocab = s_logits.shape[-1]
            loss = F.kl_div(F.log_softmax(s_logits, -1).reshape(-1, vocab),
                            F.log_softmax(t_logits, -1).reshape(-1, vocab), log_target=True, reduction="batchmean")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - started)
        del s_logits, t_logits, loss
    return seconds


def run_method(method: str, student, teacher, blocks, args, steps: int, tmp: str) -> list[float]:
    if method == "minitron":
        return run_minitron(student, teacher, blocks, args, steps)
    if method == "modelopt":
        return run_modelopt(student, teacher, blocks, args, steps, os.path.join(tmp, "kdtrainer"))
    return run_plain_hf(student, teacher, blocks, args, steps)


# ----------------------------------------------------------------------------------------------- setup

def build_student(teacher, tok, calib_blocks: int):
    from minitron import estimate_importance, iter_batches, prune, token_blocks
    calib = token_blocks(DATA, tok, 256, calib_blocks, split="train")
    scores = estimate_importance(teacher, list(iter_batches(calib, 8)), progress=False)
    return prune(teacher, scores, TARGET)


def train_blocks(tok, args):
    from minitron import token_blocks
    needed = args.micro_batch * (args.warmup + args.steps + 2)
    return token_blocks(DATA, tok, args.seq_len, max(needed, 32), split="train")


def check_modelopt() -> str | None:
    """None when ModelOpt's KDTrainer imports, else the error text."""
    try:
        from modelopt.torch.distill.plugins.huggingface import KDTrainer  # noqa: F401
        return None
    except Exception as error:  # noqa: BLE001 - report whatever stops it
        return f"{type(error).__name__}: {error}"


# ----------------------------------------------------------------------------------------------- child

def child(method: str, student_dir: str, args) -> None:
    quiet_transformers()
    from minitron import load_model
    teacher, tok = load_model(TEACHER)
    student, _ = load_model(student_dir)
    blocks = train_blocks(tok, args)
    baseline = rss_kib()
    exact = reset_peak_rss()
    if not exact:
        import resource
        baseline_hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory() as tmp:
        seconds = run_method(method, student, teacher, blocks, args, args.warmup + 2, tmp)
    peak = rss_kib("VmHWM") if exact else baseline_hwm
    print(CHILD_MARK + json.dumps({"method": method, "baseline_mib": baseline / 1024,
                                   "peak_mib": peak / 1024, "extra_mib": (peak - baseline) / 1024,
                                   "exact_reset": exact, "step_seconds": seconds}), flush=True)


def measure_memory(method: str, student_dir: str, args) -> dict:
    command = [sys.executable, __file__, "--child", method, "--student-dir", student_dir,
               "--micro-batch", str(args.micro_batch), "--seq-len", str(args.seq_len), "--lr", str(args.lr),
               "--warmup", str(args.warmup), "--steps", str(args.steps), "--precision", args.precision]
    proc = subprocess.run(command, check=False, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(CHILD_MARK):
            return json.loads(line[len(CHILD_MARK):])
    return {"method": method, "error": (proc.stderr or proc.stdout)[-2000:]}


# ------------------------------------------------------------------------------------------------ main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per method per round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of every run")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--calib-blocks", type=int, default=64, help="256-token blocks for importance")
    parser.add_argument("--methods", default=",".join(ALL_METHODS))
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="fp32, or bf16 autocast (fp32 master weights) for every method")
    parser.add_argument("--name", help="result name (default distill_throughput, _bf16 appended for bf16)")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--child", choices=ALL_METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--student-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.student_dir, args)
        return

    quiet_transformers()
    import warnings
    warnings.filterwarnings("ignore")
    from minitron import count_parameters, load_model, save_checkpoint
    info = machine()
    print(machine_line(info), flush=True)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    modelopt_error = check_modelopt() if "modelopt" in methods else None
    modelopt_version = None
    if modelopt_error:
        print(f"ModelOpt KDTrainer unavailable: {modelopt_error}", flush=True)
        methods.remove("modelopt")
    elif "modelopt" in methods:
        import modelopt
        modelopt_version = modelopt.__version__

    teacher, tok = load_model(TEACHER)
    base = build_student(teacher, tok, args.calib_blocks)
    params = {"teacher": count_parameters(teacher).as_dict(), "student": count_parameters(base).as_dict()}
    blocks = train_blocks(tok, args)
    students = {m: copy.deepcopy(base) for m in methods}
    steps = args.warmup + args.steps
    tokens_per_step = args.micro_batch * args.seq_len
    timed: dict[str, list[float]] = {m: [] for m in methods}
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = methods[r % len(methods):] + methods[:r % len(methods)]
            for method in order:
                if method in errors:
                    continue
                try:
                    seconds = run_method(method, students[method], teacher, blocks, args, steps, tmp)
                except Exception as error:  # noqa: BLE001 - a baseline that cannot run is reported, not fatal
                    errors[method] = "".join(traceback.format_exception_only(type(error), error)).strip()
                    print(f"{method} failed: {errors[method]}", flush=True)
                    traceback.print_exc()
                    continue
                if len(seconds) != steps:
                    raise RuntimeError(f"{method}: expected {steps} step timings, got {len(seconds)}")
                timed[method] += seconds[args.warmup:]
                print(f"round {r + 1}/{args.rounds} {method}: " +
                      ", ".join(f"{tokens_per_step / s:.0f}" for s in seconds[args.warmup:]) + " tok/s", flush=True)

        memory = {}
        if not args.no_memory:
            student_dir = os.path.join(tmp, "student")
            save_checkpoint(base, tok, student_dir, {"source": "distill_throughput"})
            for method in methods:
                if method in errors:
                    continue
                memory[method] = measure_memory(method, student_dir, args)
                print(f"memory {method}: {memory[method]}", flush=True)

    ran = [m for m in methods if timed[m]]
    tps = {m: [tokens_per_step / s for s in timed[m]] for m in ran}
    med = {m: median(tps[m]) for m in ran}
    rows = []
    for m in ran:
        mem = memory.get(m, {})
        rows.append([LABELS[m], len(tps[m]), round(med[m], 1), round(spread(tps[m]), 1),
                     round(med[m] / med["minitron"], 3) if "minitron" in med else "-",
                     f"{mem['extra_mib']:,.0f}" if "extra_mib" in mem else "-",
                     f"{mem['peak_mib']:,.0f}" if "peak_mib" in mem else "-"])
    table = markdown_table(["method", "timed steps", "median tok/s", "std tok/s", "vs minitron",
                            "step peak RSS over baseline (MiB)", "peak RSS (MiB)"], rows)
    ratios = {f"minitron/{m}": med["minitron"] / med[m] for m in ran if m != "minitron" and "minitron" in med}
    print()
    print(f"Teacher {params['teacher']['total']:,} params ({params['teacher']['non_embedding']:,} non-embedding), "
          f"student {params['student']['total']:,} ({params['student']['non_embedding']:,} non-embedding) "
          f"({TARGET}); micro batch {args.micro_batch} x {args.seq_len} tokens, {args.precision}, "
          f"{args.rounds} rounds x ({args.warmup} warm-up + {args.steps} timed) steps per method")
    print(table)
    for name, value in ratios.items():
        print(f"{name} median tokens/s ratio: {value:.2f}x")
    for name, error in errors.items():
        print(f"{name} could not run: {error}")
    payload = {"machine": info, "settings": vars(args) | {"teacher": TEACHER, "target": TARGET, "data": DATA},
               "modelopt_version": modelopt_version, "modelopt_import_error": modelopt_error,
               "parameters": params, "tokens_per_step": tokens_per_step,
               "step_seconds": timed, "tokens_per_s": tps, "median_tokens_per_s": med, "ratios": ratios,
               "memory": memory, "errors": errors, "table": table}
    name = args.name or ("distill_throughput" + ("_bf16" if args.precision == "bf16" else ""))
    print(f"wrote {write_json(name, payload)}")


if __name__ == "__main__":
    main()
