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

# Settings a resume may change: none of them moves the trajectory. Every other setting must match the
# checkpoint's, so that a setting added later is refused until it is known to be safe here.
SAFE_SETTINGS = (
    "save_every", "eval_every", "chunk_size", "gradient_checkpointing", "fsdp", "teacher_sharding", "async_checkpoint",
    "report_to",  # where metrics are also sent (metrics.jsonl is always written)
    # how the global batch and the budget are spelled; global_batch and total_steps must match
    "micro_batch_size", "grad_accum", "processes", "steps", "tokens",
    # what they resolve to on this device is compared instead (student_bf16, teacher_bf16)
    "precision", "teacher_dtype",
    "data_workers",  # processes reading blocks ahead: the sampler, not they, fixes the order
)
# Derived settings, named by the flags they come from.
_DERIVED_NAMES = {
    "global_batch": "the global batch: --micro-batch-size x --grad-accum x processes",
    "total_steps": "the number of steps: --steps, or --tokens over the global batch",
    "student_bf16": "bf16 autocast of the student: --precision, whose auto follows the device",
    "teacher_bf16": "bf16 teacher weights: --teacher-dtype, whose auto follows the device",
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


def model_identity(student: str, teacher: str | None, data: str, text_field: str,
                   chat_template: str = "auto") -> dict:
    """How a file-level run names its inputs, with local paths made absolute (the same folder named
    from another working directory is the same input)."""
    identity = {"student": _absolute(student), "teacher": _absolute(teacher), "data": _absolute(data),
                "text_field": text_field}
    if chat_template != "auto":  # only when set: checkpoints written before the option still resume
        identity["chat_template"] = chat_template
    return identity


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
    refused = {name: change for name, change in changed.items() if name not in SAFE_SETTINGS}
    if refused:
        lines = [f"  {name} ({_flag(name)}): {change['from']!r} in the checkpoint, now {change['to']!r}"
                 for name, change in refused.items()]
        if "global_batch" in refused:
            lines.append("  " + batch_change_message(saved["global_batch"], saved, current["micro_batch_size"],
                                                     current["grad_accum"], current["processes"]))
        raise MinitronError(
            f"--resume continues the run in {out} as it was started, but these settings changed:\n"
            + "\n".join(lines)
            + "\nDrop those changes to continue that run, or start a new run in another --out "
              "(or replace this one: --overwrite instead of --resume).")
    history = list(saved.get("resumes", []))
    if changed:
        history.append({"step": saved.get("step"), "changed": changed})
    return history


def batch_change_message(saved_batch: int, saved: dict | None, micro_batch_size: int, grad_accum: int,
                         world_size: int) -> str:
    """Why another global batch is refused, and the exact flags that keep the checkpoint's on `world_size`
    processes (the split into micro-batches and processes may change; the product may not)."""
    was = (f" ({saved.get('micro_batch_size')} per micro-batch x {saved.get('grad_accum')} accumulated x "
           f"{saved.get('processes', '?')} processes)" if saved else "")
    now = f"{micro_batch_size} x {grad_accum} x {world_size} processes = {micro_batch_size * grad_accum * world_size}"
    if saved_batch % world_size:
        advice = f"resume on a number of processes that divides {saved_batch}"
    else:
        per_rank = saved_batch // world_size
        micro = micro_batch_size if per_rank % micro_batch_size == 0 else per_rank
        advice = f"pass --micro-batch-size {micro} --grad-accum {per_rank // micro}"
    return (f"the checkpoint was trained with a global batch of {saved_batch} blocks{was}, but this run's is {now}: "
            f"resuming with another global batch would change the data order and the learning-rate schedule; "
            f"{advice} (micro-batch x accumulation x processes = {saved_batch})")


def _flag(name: str) -> str:
    return _DERIVED_NAMES.get(name, "--" + name.replace("_", "-"))
