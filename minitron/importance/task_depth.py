"""Depth by a downstream task, the seeds' rule: skip each contiguous block of k layers in turn, score the
model on an lm-eval harness task, and drop the block whose absence costs the least accuracy.

The Minitron seeds chose to drop layers 16-31 of Llama 3.1 8B this way, by Winogrande accuracy. Scores
hold one vector per block size k, under `task:NAME:dropK`: entry s is the accuracy with layers
[s, s + k) skipped (NaN where the block would run past the last layer). Needs the lm-eval harness
(`pip install 'minitron[eval]'`); a task may come from a local folder of task YAMLs (`include_path`).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import nn

from ..arch.base import ArchAdapter
from ..errors import ScoresError, SettingsError
from ..verbosity import progress_bar
from .depth import layers_skipped

TASK_PREFIX = "task:"
ACCURACY_KEYS = ("acc,none", "acc_norm,none", "exact_match,none")


def task_of(depth_metric: str | None) -> str | None:
    """NAME for "task:NAME", None for any other metric; a clear error for "task:" alone."""
    if not isinstance(depth_metric, str) or not depth_metric.startswith(TASK_PREFIX):
        return None
    name = depth_metric[len(TASK_PREFIX):].strip()
    if not name or ":" in name:
        raise SettingsError(f"--depth-metric {depth_metric!r}: write task:NAME with an lm-eval task name, "
                            "e.g. task:winogrande")
    return name


def block_metric(depth_metric: str, block_size: int) -> str:
    return f"{depth_metric}:drop{block_size}"


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as error:
        raise SettingsError("--depth-metric task:NAME scores layers with the lm-eval harness, which is not "
                            "installed: pip install 'minitron[eval]' (or pip install lm-eval)") from error
    return lm_eval, HFLM, TaskManager


class TaskScorer:
    """One lm-eval task, scored on an in-memory model as many times as asked (each block skipped)."""

    def __init__(self, model: nn.Module, tokenizer, task: str, *, include_path: str | None = None,
                 limit: int | None = None, batch_size: int = 8) -> None:
        lm_eval, hflm, task_manager = _lm_eval()
        if include_path is not None and not Path(include_path).is_dir():
            raise SettingsError(f"--task-path {include_path}: no such folder of lm-eval task YAMLs")
        self._evaluate = lm_eval.simple_evaluate
        self.task, self.limit = task, limit
        logging.getLogger("lm_eval").setLevel(logging.WARNING)  # it logs every request otherwise
        self.tasks = _task_manager(task_manager, task, include_path)
        if task not in self.tasks.all_tasks:
            where = f" in {include_path} or" if include_path else ""
            raise SettingsError(f"lm-eval knows no task {task!r}{where} among its built-in tasks; give a local "
                                "task folder with --task-path, or check the name with `lm_eval ls tasks`")
        device = str(next(model.parameters()).device)
        self.lm = hflm(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=device)

    def accuracy(self) -> float:
        results = self._evaluate(model=self.lm, tasks=[self.task], task_manager=self.tasks, limit=self.limit,
                                 log_samples=False, bootstrap_iters=0, verbosity="WARNING")
        metrics = results["results"][self.task]
        for key in ACCURACY_KEYS:
            if key in metrics:
                return float(metrics[key])
        raise ScoresError(f"lm-eval task {self.task!r} reports no accuracy ({', '.join(ACCURACY_KEYS)}); "
                          f"it reports {sorted(metrics)}: choose a multiple-choice task")


def _task_manager(task_manager, task: str, include_path: str | None):
    """A local task alone first: indexing lm-eval's thousands of built-in tasks costs about a minute."""
    if include_path is not None:
        local = task_manager(include_path=include_path, include_defaults=False, verbosity="WARNING")
        if task in local.all_tasks:
            return local
    return task_manager(include_path=include_path, verbosity="WARNING")


@torch.no_grad()
def block_task_accuracy(model: nn.Module, adapter: ArchAdapter, scorer: TaskScorer, block_size: int,
                        progress: bool = True) -> torch.Tensor:
    """(num_layers,) task accuracy with layers [s, s + block_size) skipped, at s; NaN past the last start."""
    num_layers = len(adapter.layers(model))
    if not 0 < block_size < num_layers:
        raise SettingsError(f"--task-block {block_size}: a block of layers to drop holds 1 to {num_layers - 1} "
                            f"of the model's {num_layers} layers")
    accuracy = torch.full((num_layers,), math.nan)
    starts = range(num_layers - block_size + 1)
    for start in progress_bar(starts, enabled=progress, desc=f"{scorer.task}, blocks of {block_size}", leave=False):
        with layers_skipped(model, adapter, range(start, start + block_size)):
            accuracy[start] = scorer.accuracy()
    return accuracy


def kept_layers_by_task(layer_metrics: dict[str, torch.Tensor], depth_metric: str, num_layers: int,
                        target_layers: int) -> list[int]:
    """The layers kept when the best-scoring contiguous block goes; ties go to the deepest block (the
    seeds, like Block Influence, find later layers the most redundant)."""
    block_size = num_layers - target_layers
    key = block_metric(depth_metric, block_size)
    if key not in layer_metrics:
        sizes = sorted(int(k.rsplit(":drop", 1)[1]) for k in layer_metrics if k.startswith(depth_metric + ":drop"))
        have = (f"rank blocks of {', '.join(map(str, sizes))} layers by {depth_metric}" if sizes
                else f"hold no {depth_metric} scores")
        raise ScoresError(f"the target drops {block_size} layers, but these scores {have}; rerun "
                          f"`minitron importance --depth-metric {depth_metric} --task-block {block_size}`")
    accuracy = layer_metrics[key]
    valid = [s for s in range(num_layers - block_size + 1) if not math.isnan(float(accuracy[s]))]
    best = max(valid, key=lambda s: (float(accuracy[s]), s))
    return [i for i in range(num_layers) if not best <= i < best + block_size]
