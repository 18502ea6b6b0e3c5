"""What a resumed run may change: it continues the checkpoint's run, so it cannot train another one.

Every checkpoint saves the run's settings (`run_settings`). On `--resume` they are compared with the
new command's (`check_resume`): a change to a setting that shapes the training trajectory (the data,
the models, the schedule, the loss, the batch...) is refused, naming each one, because honouring it
would mix two runs under one record and ignoring it would record a run that never happened. The
other settings (how often to save or validate, memory savers, sharding, how the global batch is split
into micro-batches and processes) leave the trajectory as it was: they are honoured, and the change
is recorded with the step it took effect from.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from ..config import DistillConfig
from ..errors import MinitronError

# setting -> how the user names it; the derived entries stand for the flags they come from.
TRAJECTORY_SETTINGS = {
    "student": "--student", "teacher": "--teacher", "data": "--data", "text_field": "--text-field",
    "seq_len": "--seq-len",
    "global_batch": "the global batch (--micro-batch-size x --grad-accum x processes)",
    "total_steps": "the number of steps (--steps, or --tokens over the global batch)",
    "lr": "--lr", "min_lr": "--min-lr", "warmup_steps": "--warmup-steps", "weight_decay": "--weight-decay",
    "clip_grad": "--clip-grad", "loss": "--loss", "temperature": "--temperature", "top_k": "--top-k",
    "jsd_beta": "--jsd-beta", "ce_weight": "--ce-weight", "hidden_loss": "--hidden-loss",
    "hidden_weight": "--hidden-weight", "seed": "--seed",
    "student_bf16": "bf16 autocast of the student (--precision; auto follows the device)",
    "teacher_bf16": "bf16 teacher weights (--teacher-dtype; auto follows the device)",
    # Not the trajectory, but the held-out curve: before and after would be measured on other blocks.
    "eval_samples": "--eval-samples",
}
_BOOKKEEPING = ("resumes", "step")  # saved with the settings, compared with nothing


def run_settings(config: DistillConfig, world_size: int, device_type: str, identity: dict | None = None) -> dict:
    """The settings a checkpoint records: the config, what it implies for this world size and kind of
    device, and `identity` (what the run trains: student, teacher, data...), as JSON values."""
    settings = {**asdict(config), "global_batch": config.global_batch(world_size),
                "total_steps": config.total_steps(world_size), "processes": world_size,
                "student_bf16": config.student_bf16(device_type), "teacher_bf16": config.teacher_bf16(device_type),
                **(identity or {})}
    return json.loads(json.dumps(settings, default=str))


def model_identity(student: str, teacher: str | None, data: str, text_field: str) -> dict:
    """How a file-level run names its inputs, with local paths made absolute (the same folder named
    from another working directory is the same input)."""
    return {"student": _absolute(student), "teacher": _absolute(teacher), "data": _absolute(data),
            "text_field": text_field}


def _absolute(spec: str | None) -> str | None:
    if spec is None:
        return None
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def check_resume(saved: dict | None, current: dict, out: str | Path) -> list[dict]:
    """Refuse a resume whose trajectory settings differ from the checkpoint's; return the run's resume
    history, this resume's honoured changes included (`{"step": N, "changed": {name: {"from", "to"}}}`).

    Settings the checkpoint does not record (one written by an older minitron) cannot be compared.
    """
    if saved is None:
        return []
    compared = [name for name in current if name in saved and name not in _BOOKKEEPING]
    changed = {name: {"from": saved[name], "to": current[name]} for name in compared if saved[name] != current[name]}
    refused = {name: change for name, change in changed.items() if name in TRAJECTORY_SETTINGS}
    if refused:
        lines = [f"  {name} ({TRAJECTORY_SETTINGS[name]}): {change['from']!r} in the checkpoint, now {change['to']!r}"
                 for name, change in refused.items()]
        raise MinitronError(
            f"--resume continues the run in {out} as it was started, but these settings changed:\n"
            + "\n".join(lines)
            + "\nDrop those changes to continue that run, or start a new run in another --out "
              "(or replace this one: --overwrite instead of --resume).")
    history = list(saved.get("resumes", []))
    if changed:
        history.append({"step": saved.get("step"), "changed": changed})
    return history
