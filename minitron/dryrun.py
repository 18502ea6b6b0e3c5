"""Dry runs with memory: every stage of a recipe (or one pruning) with what each process would hold.

    minitron run recipes/llama-3.1-8b-width.yaml --dry-run --nproc 8 --gpu-memory 80
    minitron run recipes/llama-3.1-8b-width.yaml --dry-run --teacher-config llama-8b/config.json  # offline

Nothing is loaded but configs (the teacher's `config.json`, from the Hub cache, a folder, or
`--teacher-config`); sizes come from models built on the meta device (`minitron.memory`).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from typing import TYPE_CHECKING

from .config import DistillConfig

if TYPE_CHECKING:  # the CLI imports this module to build its parser: sizing code loads on use
    from .memory import Layout, StageMemory


def _training_settings(config: DistillConfig, micro_batch_size: int | None, seq_len: int | None) -> dict:
    return {"micro_batch_size": micro_batch_size or config.micro_batch_size, "seq_len": seq_len or config.seq_len,
            "chunk_size": config.chunk_size, "gradient_checkpointing": config.gradient_checkpointing}


def recipe_memory(recipe, teacher_config, layout: Layout, *, micro_batch_size: int | None = None,
                  seq_len: int | None = None) -> tuple[list[StageMemory], list[str]]:
    """(one row per stage step: correction, then importance / prune / distill / eval per stage; lines
    for the stages whose architecture a search decides, which cannot be sized before it runs)."""
    from .memory import forward_memory_placed, prune_memory, training_memory
    from .recipe import plan_recipe
    plans = plan_recipe(recipe, teacher_config)
    rows: list[StageMemory] = []
    unknown: list[str] = []
    correction = recipe.correction_config()
    if correction is not None:
        rows.append(training_memory("00-correction train", teacher_config, None, layout=layout,
                                    **_training_settings(correction, micro_batch_size, seq_len)))
    parent = teacher_config
    for index, (stage, plan) in enumerate(zip(recipe.stages, plans), start=1):
        name = f"{index:02d}-{stage.name}"
        if parent is not None:
            data, _ = stage.importance_configs(recipe)
            rows.append(forward_memory_placed(f"{name} importance", parent, batch_size=data.batch_size,
                                              seq_len=seq_len or data.seq_len, layout=layout))
        if parent is None or plan["config"] is None:
            unknown.append(f"{name}: architecture chosen by a search when it runs; size it with `minitron prune "
                           "--dry-run` on the winner")
            parent = None
            continue
        student = plan["config"]
        teacher = teacher_config if stage.teacher_source(recipe) == "teacher" else parent
        rows.append(prune_memory(f"{name} prune", parent, student, layout))
        rows.append(training_memory(f"{name} distill", student, teacher, layout=layout,
                                    **_training_settings(stage.distill_config(recipe), micro_batch_size, seq_len)))
        rows.append(forward_memory_placed(f"{name} eval", student, batch_size=recipe.eval.batch_size,
                                          seq_len=seq_len or recipe.eval.seq_len or recipe.data.seq_len,
                                          layout=layout))
        parent = student
    return rows, unknown


def describe_recipe_memory(recipe: str | Path, layout: Layout, *, teacher_config=None,
                           micro_batch_size: int | None = None, seq_len: int | None = None) -> str:
    """The plan (architectures and sizes) and the memory table of `minitron run --dry-run`."""
    from .jobs import load_config
    from .memory import format_memory_table
    from .recipe import describe_plan, load_recipe
    recipe = load_recipe(recipe)
    teacher_config = load_config(teacher_config) if isinstance(teacher_config, (str, Path)) else teacher_config
    if teacher_config is None:
        teacher_config = load_config(recipe.teacher)
    rows, unknown = recipe_memory(recipe, teacher_config, resolved_layout(layout, recipe),
                                  micro_batch_size=micro_batch_size, seq_len=seq_len)
    table = format_memory_table(rows, resolved_layout(layout, recipe))
    return "\n".join([describe_plan(recipe, teacher_config), "", table, *unknown])


def resolved_layout(layout: Layout, recipe=None) -> Layout:
    """A layout whose sharding was left open (None) takes the recipe's `fsdp` setting."""
    if layout.sharding is not None:
        return layout
    from .memory import Layout
    fsdp = bool(recipe is not None and recipe.distill.get("fsdp"))
    return Layout(layout.processes, "fsdp" if fsdp else "ddp", layout.teacher_sharding, layout.gpu_memory_gib)


def describe_prune_memory(summary: dict, layout: Layout, *, micro_batch_size: int | None = None,
                          seq_len: int | None = None) -> str:
    """Memory of the steps around one pruning (`minitron prune --dry-run`): importance on the source,
    the pruning itself, distilling the result from the source (with gradient checkpointing) and eval."""
    from .memory import format_memory_table, forward_memory_placed, prune_memory, training_memory
    source, pruned = summary["source_config"], summary["config"]
    layout = resolved_layout(layout)
    from .arch import text_config
    # Default: 4,096 tokens, or the model's own context where that is shorter (longer is refused elsewhere).
    seq_len = seq_len or min(4096, getattr(text_config(source), "max_position_embeddings", None) or 4096)
    settings = {"micro_batch_size": micro_batch_size or 1, "seq_len": seq_len, "chunk_size": 1024,
                "gradient_checkpointing": True}
    batch = micro_batch_size or 1
    rows = [forward_memory_placed("importance", source, batch_size=batch, seq_len=seq_len, layout=layout),
            prune_memory("prune", source, pruned, layout),
            training_memory("distill", pruned, source, layout=layout, **settings),
            forward_memory_placed("eval", pruned, batch_size=batch, seq_len=seq_len, layout=layout)]
    return format_memory_table(rows, layout)


def add_fit_options(parser: argparse.ArgumentParser) -> None:
    """The --dry-run memory options of `minitron run` and `minitron prune`."""
    group = parser.add_argument_group("Memory (with --dry-run)")
    group.add_argument("--nproc", type=int, default=1, help="Processes (GPUs) the run would use (default: 1).")
    group.add_argument("--sharding", default=None, choices=["ddp", "fsdp"],
                       help="Student training: ddp (replicated) or fsdp (FSDP2 shards); default: the recipe's fsdp setting for run, ddp for prune.")
    group.add_argument("--teacher-sharding", default="auto", choices=["auto", "replicate", "shard"],
                       help="Teacher: replicate (bf16 on every process), shard (FSDP2), or auto (replicated when it "
                            "fits); distill's --teacher-sharding takes replicate or shard.")
    group.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU (default: 80).")
    group.add_argument("--micro-batch-size", dest="dry_micro_batch", type=int, default=None,
                       help="Micro-batch per process to size activations at (default: each stage's own).")
    group.add_argument("--seq-len", dest="dry_seq_len", type=int, default=None,
                       help="Sequence length to size activations at (default: each stage's own).")


def layout_from_args(args: argparse.Namespace) -> Layout:
    from .memory import Layout
    return Layout(args.nproc, args.sharding, args.teacher_sharding, args.gpu_memory)
