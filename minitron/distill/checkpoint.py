"""Training checkpoints: written atomically, complete enough that a resumed run continues exactly.

`out/checkpoint/` holds the student's and the loss module's weights, the optimizer and scheduler
states, the step, the data position (samples consumed, and the global batch that consumed them), the RNG
states and the run settings. The position is counted in samples, so a run may resume on another number
of processes as long as the global batch (hence the learning-rate schedule) stays the same. The same code
serves plain, DDP and FSDP2 models: torch.distributed.checkpoint's state-dict helpers gather full tensors
where needed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

from ..errors import MinitronError
from ..io import atomic_directory
from .resume import batch_change_message

CHECKPOINT_DIR = "checkpoint"
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def checkpoint_path(out: str | Path) -> Path:
    return Path(out) / CHECKPOINT_DIR


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


def save_training_state(out: str | Path, *, trainable: nn.Module, optimizer, scheduler, step: int,
                        global_batch: int, settings: dict, is_main: bool) -> None:
    """Every rank takes part in gathering the state; only the main rank writes."""
    model_state = get_model_state_dict(trainable, options=_FULL)
    optimizer_state = get_optimizer_state_dict(trainable, optimizer, options=_FULL)
    if not is_main:
        return
    state = {"model": model_state, "optimizer": optimizer_state, "scheduler": scheduler.state_dict(),
             "step": step, "samples_consumed": step * global_batch, "global_batch": global_batch,
             "rng": torch.get_rng_state()}
    with atomic_directory(checkpoint_path(out)) as staging:
        torch.save(state, staging / "state.pt")
        (staging / "settings.json").write_text(json.dumps({**settings, "step": step}, indent=2, default=str))


def load_training_state(out: str | Path, *, trainable: nn.Module, optimizer, scheduler) -> TrainingPosition:
    """Restore everything saved by `save_training_state`; returns the position to continue from."""
    path = checkpoint_path(out) / "state.pt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError as error:
        raise MinitronError(f"nothing to resume: {path} does not exist") from error
    except Exception as error:  # torch raises several types for truncated or garbled files
        raise MinitronError(f"the checkpoint {path} is corrupt ({error}); start again with --overwrite") from error
    set_model_state_dict(trainable, state["model"], options=_FULL)
    set_optimizer_state_dict(trainable, optimizer, state["optimizer"], options=_FULL)
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    settings = saved_settings(out) or {}
    # Checkpoints from before the position was recorded: their global batch is the one in their settings.
    global_batch = state.get("global_batch") or settings.get("global_batch") or (
        settings.get("micro_batch_size", 0) * settings.get("grad_accum", 0) * settings.get("processes", 1))
    return TrainingPosition(step=int(state["step"]), global_batch=int(global_batch), settings=settings,
                            samples_consumed=int(state.get("samples_consumed", int(state["step"]) * global_batch)))


def saved_settings(out: str | Path) -> dict | None:
    path = checkpoint_path(out) / "settings.json"
    return json.loads(path.read_text()) if path.is_file() else None
