"""File-level distillation and fine-tuning: `minitron distill` and `minitron finetune`."""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from ..data.cache import prepare_data
from ..errors import MinitronError, OutputError
from ..io import replace_directory
from ..loading import load_model, load_tokenizer, locate_model, publish_into
from ..outputs import check_output, is_empty_folder, pending_folder, require_text
from .checkpoint import CHECKPOINT_DIR, checkpoint_path, saved_settings
from .dist import barrier, close_distributed, init_distributed
from .loop import distill
from .resume import check_resume, model_identity, run_settings
from .vocab import check_same_tokenizer
from ..config import DistillConfig
from ..arch.base import text_config


def resumable_folder(out: str | Path) -> Path | None:
    """The folder holding the checkpoint of an interrupted run into `out`, if there is one.

    A run started with --overwrite trains in `.OUT.pending` beside `out` (the old output stays until the
    new one is complete), so that folder is looked at first.
    """
    for folder in (pending_folder(Path(out)), Path(out)):
        if (checkpoint_path(folder) / "state.pt").is_file():
            return folder
    return None


def prepare_run_folder(out: str | Path, resume: bool, overwrite: bool, is_main: bool) -> Path:
    """The folder this run trains in: `out` itself, or, when it replaces a previous output, a pending
    folder that is renamed onto `out` once the new model is complete."""
    out = Path(out)
    if resume:
        folder = resumable_folder(out)
        if folder is None:
            raise MinitronError(f"nothing to resume in {out}: no {CHECKPOINT_DIR}/ folder"
                                + (" (the run there already finished)" if (out / "config.json").is_file() else ""))
        return folder
    pending = pending_folder(out)
    if is_main:
        shutil.rmtree(pending, ignore_errors=True)  # an abandoned --overwrite run; this one starts afresh
    if is_empty_folder(out):
        if is_main:
            out.mkdir(parents=True, exist_ok=True)
        return out
    if not overwrite:
        raise OutputError(f"{out} holds another run; pass --resume to continue it or --overwrite to replace it")
    if is_main:
        pending.mkdir(parents=True)
    return pending


def _source_history(student_spec: str) -> list:
    record_path = Path(student_spec) / "minitron.json"
    if not record_path.is_file():
        return []
    record = json.loads(record_path.read_text())
    return record.get("history", [record])


def run_distill(student: str, teacher: str | None, data: str, out: str, config: DistillConfig, *,
                text_field: str = "text", resume: bool = False, overwrite: bool = False,
                device: str | None = None, save_dtype: str | None = None) -> dict:
    """Distill (or, with teacher None and loss "ce", fine-tune) and publish the student into `out`.

    The student trains in fp32 (with bf16 autocast where `config.student_bf16`) and is saved in
    `save_dtype`, by default the dtype of the checkpoint it came from.
    """
    student = require_text(student, "--student" if teacher is not None else "--model")
    if teacher is not None:
        require_text(teacher, "--teacher")
    require_text(data, "--data")
    out = require_text(out, "--out")
    for spec in filter(None, (student, teacher)):
        locate_model(spec)  # a missing folder fails at once, before the run folder is touched
    check_output(out, inputs=[student, teacher, data], replace=overwrite)
    if resume and resumable_folder(out) == pending_folder(Path(out)):
        check_output(out, inputs=[student, teacher, data], replace=True)  # completing it will replace out
    env = init_distributed(device)
    try:
        distilling = teacher is not None and config.loss != "ce"
        # Cheap checks first: the tokenizers (no weights), then the folder and a resume's settings.
        teacher_tokenizer = load_tokenizer(teacher) if distilling else None
        student_tokenizer = load_tokenizer(student)
        if distilling:
            check_same_tokenizer(student_tokenizer, teacher_tokenizer)
        folder = prepare_run_folder(out, resume, overwrite, env.is_main)
        identity = model_identity(student, teacher if distilling else None, data, text_field)
        resumes = check_resume(saved_settings(folder), run_settings(config, env.world_size, env.device.type, identity),
                               out) if resume else []
        barrier(env)
        # Tokenized once into the cache (rank 0 builds, the others wait), or a folder from `minitron tokenize`;
        # before the weights load, so that a data problem costs no model loading.
        shards = prepare_data(data, student_tokenizer, text_field=text_field)
        student_model, tokenizer = load_model(student, device=str(env.device), dtype="float32")
        teacher_model = None
        if distilling:
            teacher_dtype = "bfloat16" if config.teacher_bf16(env.device.type) else "float32"
            teacher_model, _ = load_model(teacher, device=str(env.device), dtype=teacher_dtype)
        needed = config.total_steps(env.world_size) * config.global_batch(env.world_size)
        train = shards.dataset("train", config.seq_len)
        heldout = shards.blocks("heldout", config.seq_len, config.eval_samples, allow_fewer=True)
        kept_layers = _kept_layers(student, teacher_model)
        trained = distill(student_model, teacher_model, train, heldout, config, tokenizer=tokenizer,
                          teacher_tokenizer=teacher_tokenizer, out=folder, resume=resume, kept_layers=kept_layers,
                          env=env, identity=identity)
        final = _final_metrics(folder)
        record = {"stage": "distill" if teacher_model is not None else "finetune", "student": student,
                  "teacher": teacher, "data": data, "config": asdict(config), "final": final,
                  "prepared_data": str(shards.folder), "train_blocks": len(train),
                  "epochs": round(needed / max(len(train), 1), 3),
                  **({"resumes": resumes} if resumes else {})}  # settings changed on resume, from which step
        # Under FSDP the student's parameters are shards: every rank helps gather the full tensors.
        full_state = get_model_state_dict(trained, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if env.is_main:
            publish_into(trained, tokenizer, folder, {**record, "history": [*_source_history(student), record]},
                         state_dict=full_state, save_dtype=save_dtype)
            shutil.rmtree(checkpoint_path(folder), ignore_errors=True)
            if folder != Path(out):
                replace_directory(folder, Path(out))  # the previous output goes only now, with the new one complete
        barrier(env)
        return record
    finally:
        close_distributed(env)


def _kept_layers(student_spec: str, teacher) -> list[int] | None:
    record_path = Path(student_spec) / "minitron.json"
    if teacher is None or not record_path.is_file():
        return None
    kept = json.loads(record_path.read_text()).get("kept_layers")
    if kept and max(kept) < text_config(teacher.config).num_hidden_layers and len(kept) == len(set(kept)):
        return kept
    return None


def _final_metrics(out: str | Path) -> dict:
    path = Path(out) / "metrics.jsonl"
    if not path.is_file():
        return {}
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return lines[-1] if lines else {}
