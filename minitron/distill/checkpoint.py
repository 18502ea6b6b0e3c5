"""Training checkpoints: sharded, written atomically, complete enough that a resumed run continues exactly.

`out/checkpoint/` is a torch.distributed.checkpoint folder: every rank writes its own part of the
student's and the loss module's weights and of the optimizer state (under FSDP2 its shards; under DDP
the replicated tensors are written once, spread over the ranks), with no gather to rank 0 and no pickled
tensors. Beside them, `position.json` (the step, the data position in samples consumed and the global
batch that consumed them, the scheduler state) and `settings.json` (the run settings, for --resume).

The folder is written as `.checkpoint.partial` and renamed once every rank's part is in it, so a crash
while saving leaves the previous checkpoint as it was. With `asynchronous`, the state is copied to CPU
memory and written by a background thread while training continues (torch's `dcp.async_save`).

The position is counted in samples and torch.distributed.checkpoint reshards on load, so a run may
resume on another number of processes as long as the global batch (hence the learning-rate schedule)
stays the same.
"""
from __future__ import annotations

import json
import shutil
import warnings
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

from ..errors import MinitronError
from ..io import atomic_write_text, replace_directory
from .dist import DistEnv, barrier, on_main
from .resume import batch_change_message

CHECKPOINT_DIR = "checkpoint"
POSITION_FILE = "position.json"
SETTINGS_FILE = "settings.json"
LEGACY_FILE = "state.pt"  # minitron before sharded checkpoints: the whole state, pickled by rank 0
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
# dcp warns that it assumes one process whenever no process group runs (also from the thread of an
# asynchronous save, out of reach of warnings.catch_warnings): for minitron that is the intent.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


def checkpoint_path(out: str | Path) -> Path:
    return Path(out) / CHECKPOINT_DIR


def has_checkpoint(folder: str | Path) -> bool:
    """Whether `folder` holds a complete checkpoint (an incomplete one never gets the final name)."""
    path = checkpoint_path(folder)
    return (path / POSITION_FILE).is_file() or (path / LEGACY_FILE).is_file()


@dataclass(frozen=True)
class TrainingPosition:
    """Where a checkpointed run stands: optimizer steps taken and the samples they consumed."""
    step: int
    samples_consumed: int
    global_batch: int
    settings: dict

    def resume_step(self, config, world_size: int) -> int:
        """The step to continue from with `config` on `world_size` processes; refuses another global batch."""
        global_batch = config.global_batch(world_size)
        if global_batch != self.global_batch:
            raise MinitronError(batch_change_message(self.global_batch, self.settings, config.micro_batch_size,
                                                     config.grad_accum, world_size))
        return self.samples_consumed // global_batch


def _sharded_state(trainable: nn.Module, optimizer) -> dict:
    """What every rank contributes: its own tensors (shards under FSDP2), named by parameter."""
    return {"model": get_model_state_dict(trainable), "optimizer": get_optimizer_state_dict(trainable, optimizer),
            "rng": torch.get_rng_state()}


class Checkpointer:
    """Writes `out/checkpoint/` (see the module docstring); one per training run, on every rank."""

    def __init__(self, out: str | Path, env: DistEnv, *, trainable: nn.Module, optimizer, scheduler,
                 global_batch: int, settings: dict, asynchronous: bool = False) -> None:
        self.trainable, self.optimizer, self.scheduler = trainable, optimizer, scheduler
        self.global_batch, self.settings = global_batch, settings
        self.folder = checkpoint_path(out)
        self.staging = self.folder.with_name(f".{CHECKPOINT_DIR}.partial")
        self.env = env
        self.asynchronous = asynchronous
        self._pending: tuple[Future, dict] | None = None
        # The background writer's collectives get their own group: on the training group they could
        # interleave with the gradient all-reduces of the main thread.
        self._group = dist.new_group(backend="gloo") if asynchronous and env.distributed else None

    def save(self, step: int, *, wait: bool = False) -> None:
        """Every rank writes its part of the state at `step`; `wait` finishes even an asynchronous save."""
        self.wait()
        on_main(self.env, self._clear_staging)
        state = _sharded_state(self.trainable, self.optimizer)
        position = {"step": step, "samples_consumed": step * self.global_batch, "global_batch": self.global_batch,
                    "processes": self.env.world_size, "scheduler": self.scheduler.state_dict()}
        extras = {"position": position, "settings": {**self.settings, "step": step}}
        if self.asynchronous and not wait:
            self._pending = (dcp.async_save(state, checkpoint_id=self.staging, process_group=self._group,
                                            no_dist=not self.env.distributed), extras)
            return
        dcp.save(state, checkpoint_id=self.staging, no_dist=not self.env.distributed)
        on_main(self.env, lambda: self._publish(extras))

    def poll(self) -> None:
        """Publish the asynchronous save as soon as it is complete (no collective: called every step)."""
        if self._pending is not None and self._pending[0].done():
            self._finish()

    def wait(self) -> None:
        """Finish the asynchronous save under way, if any: its files complete, then the rename."""
        if self._pending is not None:
            self._finish()
        barrier(self.env)  # no rank goes on (to the next save, or to publishing the model) before the rename

    def _finish(self) -> None:
        future, extras = self._pending
        self._pending = None
        future.result()
        if self.env.is_main:  # rank 0 coordinates the save: its future ends once every rank's part is written
            self._publish(extras)

    def _clear_staging(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir(parents=True)

    def _publish(self, extras: dict) -> None:
        """Rank 0, once every rank's files are written (dcp's last step gathers them all): the small files,
        then the rename that makes the checkpoint the one a resume finds."""
        atomic_write_text(self.staging / SETTINGS_FILE, json.dumps(extras["settings"], indent=2, default=str))
        atomic_write_text(self.staging / POSITION_FILE, json.dumps(extras["position"], indent=2))
        replace_directory(self.staging, self.folder)


def load_training_state(out: str | Path, *, trainable: nn.Module, optimizer, scheduler) -> TrainingPosition:
    """Restore what `Checkpointer.save` wrote, on any number of processes; returns the position."""
    folder = checkpoint_path(out)
    if (folder / LEGACY_FILE).is_file() and not (folder / POSITION_FILE).is_file():
        return _load_legacy(out, trainable=trainable, optimizer=optimizer, scheduler=scheduler)
    try:
        position = json.loads((folder / POSITION_FILE).read_text())
    except FileNotFoundError as error:
        raise MinitronError(f"nothing to resume: {folder / POSITION_FILE} does not exist") from error
    except json.JSONDecodeError as error:
        raise MinitronError(f"the checkpoint {folder} is corrupt ({error}); start again with --overwrite") from error
    state = _sharded_state(trainable, optimizer)
    try:
        dcp.load(state, checkpoint_id=folder, no_dist=not dist.is_initialized())
    except Exception as error:  # dcp raises several types for missing or garbled files
        raise MinitronError(f"the checkpoint {folder} cannot be read ({error}); start again with --overwrite") \
            from error
    set_model_state_dict(trainable, state["model"])
    set_optimizer_state_dict(trainable, optimizer, state["optimizer"])
    scheduler.load_state_dict(position["scheduler"])
    torch.set_rng_state(state["rng"])
    return TrainingPosition(step=int(position["step"]), samples_consumed=int(position["samples_consumed"]),
                            global_batch=int(position["global_batch"]), settings=saved_settings(out) or {})


def _load_legacy(out: str | Path, *, trainable: nn.Module, optimizer, scheduler) -> TrainingPosition:
    """A checkpoint from before sharding: one pickled file, read whole by every rank."""
    path = checkpoint_path(out) / LEGACY_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises several types for truncated or garbled files
        raise MinitronError(f"the checkpoint {path} is corrupt ({error}); start again with --overwrite") from error
    set_model_state_dict(trainable, state["model"], options=_FULL)
    set_optimizer_state_dict(trainable, optimizer, state["optimizer"], options=_FULL)
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    settings = saved_settings(out) or {}
    global_batch = state.get("global_batch") or settings.get("global_batch") or (
        settings.get("micro_batch_size", 0) * settings.get("grad_accum", 0) * settings.get("processes", 1))
    return TrainingPosition(step=int(state["step"]), global_batch=int(global_batch), settings=settings,
                            samples_consumed=int(state.get("samples_consumed", int(state["step"]) * global_batch)))


def saved_settings(out: str | Path) -> dict | None:
    path = checkpoint_path(out) / SETTINGS_FILE
    return json.loads(path.read_text()) if path.is_file() else None
