"""FSDP2 distillation steps on 2 gloo processes (CPU): collectives per optimizer step, and bf16
MixedPrecisionPolicy vs bf16 autocast (peak memory, tokens/s).

Usage:
    python bench/fsdp2_step.py collectives               # this checkout
    python bench/fsdp2_step.py collectives --tree /tmp/old   # another checkout (e.g. `git archive main`)
    python bench/fsdp2_step.py collectives --teacher-sharding shard --grad-accum 4 --chunks 1,8   # a part
    python bench/fsdp2_step.py precision --steps 6

Models (built in each process, seed 0): a Llama teacher (hidden 128, 4 layers, vocabulary 4096, untied LM
head, as Llama-3-8B) and a 2-layer student of the same width; `minitron.distill.loop.distill` with
`fsdp=True` under `torchrun --nproc-per-node 2` (gloo), forward KL, fp32 unless said otherwise.

collectives: each run trains 3 steps; the collectives of step 2 (a steady-state step: not the first,
not the last, which also validates) are counted on rank 0 by wrapping `torch.distributed`'s
all-gather / reduce-scatter / all-reduce functions, and are attributed to the FSDP2 parameter group
that issued them (FSDPParamGroup.unshard / post_backward). The grid: micro-batch 1 x 32 tokens,
--chunk-size 32 / 8 / 4 (1, 4, 8 loss chunks per micro-batch), --grad-accum 1 and 4, and the teacher
sharded or replicated (`--teacher-sharding`, where the code has it).

precision: micro-batch 2 x 128 tokens, grad-accum 2, chunk 64, hidden 256, vocabulary 8192, --precision
bf16; two variants in turn, each in its own torchrun: `policy` (the code as it is: MixedPrecisionPolicy,
bf16 parameters and fp32 reductions, no autocast) and `autocast` (the same code with the policy swapped
for the autocast path that ran before: fp32 parameters, bf16 autocast). Reported per rank 0: median
tokens/s over the steps after the first, and the step's peak RSS above the RSS when the step began
(/proc/self/clear_refs resets the peak mark each step; median over the same steps).
Writes bench/results/fsdp2_step_{collectives,precision}.json and prints Markdown tables.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
MARK = "FSDP2_STEP "


# ------------------------------------------------------------------------------------------------ child

def build_models(hidden: int, vocab: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    common = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=4, num_key_value_heads=2,
                  vocab_size=vocab, max_position_embeddings=512, tie_word_embeddings=False)
    teacher = LlamaForCausalLM(LlamaConfig(num_hidden_layers=4, **common))
    student = LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, **common))
    return student, teacher


def group_kinds(student, teacher) -> dict[int, str]:
    """id(module) -> 'student layer' ... for the modules an FSDP2 parameter group may be built on."""
    from minitron.arch import logits_adapter
    kinds = {}
    for role, model in (("student", student), ("teacher", teacher)):
        kinds |= {id(layer): f"{role} layers" for layer in logits_adapter(model).layers(model)}
        kinds[id(model.get_output_embeddings())] = f"{role} LM head (own unit)"
    return kinds


def group_label(group, kinds: dict[int, str], student) -> str:
    module = group.modules[0]
    if id(module) in kinds:
        return kinds[id(module)]
    holds_student = any(m is student for m in module.modules())
    return "student root (embedding, norm, LM head)" if holds_student else "teacher root (embedding, norm[, LM head])"


def count_collectives(student, teacher) -> tuple[collections.Counter, list]:
    """Wrap torch.distributed's collectives; count them per (label, kind) into the returned Counter."""
    import torch.distributed as dist
    from torch.distributed.fsdp._fully_shard._fsdp_param_group import FSDPParamGroup
    counts: collections.Counter = collections.Counter()
    current = ["outside FSDP (loss sums, stop flag)"]
    kinds = group_kinds(student, teacher)

    def labelled(method):
        def run(group, *args, **kwargs):
            previous, current[0] = current[0], group_label(group, kinds, student)
            try:
                return method(group, *args, **kwargs)
            finally:
                current[0] = previous
        return run

    def counted(name, function):
        def run(*args, **kwargs):
            counts[(current[0], name)] += 1
            return function(*args, **kwargs)
        return run

    FSDPParamGroup.unshard = labelled(FSDPParamGroup.unshard)
    FSDPParamGroup.post_backward = labelled(FSDPParamGroup.post_backward)
    for name, short in (("all_gather_single", "all-gather"), ("all_gather_into_tensor", "all-gather"),
                        ("reduce_scatter_single", "reduce-scatter"), ("reduce_scatter_tensor", "reduce-scatter"),
                        ("all_reduce", "all-reduce")):
        if hasattr(dist, name):
            setattr(dist, name, counted(short, getattr(dist, name)))
    return counts, current


def use_autocast_instead_of_the_policy() -> None:
    """The autocast path: fp32 parameters under FSDP2, the student's forward and loss in bf16 autocast."""
    import torch
    from minitron.distill import sharding
    from torch.distributed.fsdp import MixedPrecisionPolicy
    sharding.mixed_precision_policy = lambda config, env: MixedPrecisionPolicy()  # fp32 parameters
    sharding.autocast = lambda env, config: torch.autocast(env.device.type, dtype=torch.bfloat16,
                                                        enabled=config.student_bf16(env.device.type))


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def child(args) -> None:
    import dataclasses

    import torch
    from minitron.config import DistillConfig
    from minitron.distill.dist import close_distributed, init_distributed
    from minitron.distill.loop import distill
    torch.set_num_threads(1)
    env = init_distributed("cpu")
    settings = json.loads(args.settings)
    student, teacher = build_models(settings.pop("hidden"), settings.pop("vocab"))
    if settings.pop("autocast", False):
        use_autocast_instead_of_the_policy()
    known = {f.name for f in dataclasses.fields(DistillConfig)}
    config = DistillConfig(**{k: v for k, v in settings.items() if k in known})
    generator = torch.Generator().manual_seed(1)
    blocks = torch.randint(0, teacher.config.vocab_size, (64, config.seq_len), generator=generator)
    counts, _ = count_collectives(student, teacher)
    per_step, marks = [], {"rss": rss_kib("VmRSS")}

    def on_step(step, record):
        peak = rss_kib("VmHWM")
        per_step.append({"step": step, "collectives": dict(counts), "tokens_per_s": record["tokens_per_s"],
                         "peak_extra_mib": (peak - marks["rss"]) / 1024, "loss": record["loss"]})
        counts.clear()
        Path("/proc/self/clear_refs").write_text("5")
        marks["rss"] = rss_kib("VmRSS")

    Path("/proc/self/clear_refs").write_text("5")
    distill(student, teacher, blocks, blocks[:4], config, env=env, on_step=on_step)
    if env.is_main:
        for row in per_step:
            row["collectives"] = {f"{label}|{kind}": n for (label, kind), n in row["collectives"].items()}
        print(MARK + json.dumps(per_step), flush=True)
    close_distributed(env)


# ----------------------------------------------------------------------------------------------- driver

def torchrun(tree: Path, settings: dict) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tree)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29571",
               str(Path(__file__).resolve()), "child", "--settings", json.dumps(settings)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    for line in result.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    raise RuntimeError(f"child failed ({result.returncode}):\n{result.stderr[-4000:]}")


BASE = dict(seq_len=32, micro_batch_size=1, steps=3, lr=1e-3, warmup_steps=1, eval_every=0, eval_samples=4,
            save_every=0, precision="fp32", fsdp=True, data_workers=0, clip_grad=0.0, hidden=128, vocab=4096)


def collectives(args) -> dict:
    rows = []
    for sharding in args.teacher_sharding.split(","):
        for grad_accum in map(int, args.grad_accum.split(",")):
            for chunk_size in (32 // int(chunks) for chunks in args.chunks.split(",")):
                settings = {**BASE, "chunk_size": chunk_size, "grad_accum": grad_accum, "teacher_sharding": sharding}
                step = torchrun(args.tree, settings)[1]
                rows.append({"teacher_sharding": sharding, "grad_accum": grad_accum, "chunks": 32 // chunk_size,
                             "collectives": step["collectives"]})
                print(json.dumps(rows[-1]), flush=True)
    return {"tree": str(args.tree), "rows": rows}


def precision(args) -> dict:
    settings = {**BASE, "seq_len": 128, "micro_batch_size": 2, "grad_accum": 2, "chunk_size": 64, "hidden": 256,
                "vocab": 8192, "steps": args.steps, "precision": "bf16"}
    result = {}
    for variant in ("policy", "autocast", "policy", "autocast")[: 2 * args.rounds]:
        steps = torchrun(args.tree, {**settings, "autocast": variant == "autocast"})[1:]
        result.setdefault(variant, []).extend(steps)
    summary = {variant: {"tokens_per_s": statistics.median(s["tokens_per_s"] for s in steps),
                         "peak_extra_mib": statistics.median(s["peak_extra_mib"] for s in steps),
                         "losses": [s["loss"] for s in steps]} for variant, steps in result.items()}
    return {"settings": settings, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("collectives", "precision", "child"))
    parser.add_argument("--tree", type=Path, default=BENCH.parent, help="checkout whose minitron/ runs")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=1, help="precision: variant pairs, alternating")
    parser.add_argument("--teacher-sharding", default="shard,replicate",
                        help="collectives: the settings to run (older code has only shard)")
    parser.add_argument("--grad-accum", default="1,4", help="collectives: accumulation steps to run")
    parser.add_argument("--chunks", default="1,4,8", help="collectives: loss chunks per micro-batch to run")
    parser.add_argument("--settings", default="{}")
    args = parser.parse_args()
    if args.part == "child":
        return child(args)
    sys.path.insert(0, str(BENCH))
    from common import machine, write_json
    started = time.perf_counter()
    payload = {"machine": machine(), **(collectives(args) if args.part == "collectives" else precision(args))}
    payload["seconds"] = round(time.perf_counter() - started, 1)
    name = f"fsdp2_step_{args.part}" + ("" if args.tree == BENCH.parent else "_" + args.tree.name)
    print(json.dumps(payload, indent=1))
    print("written", write_json(name, payload))


if __name__ == "__main__":
    main()
