"""File-level distillation and fine-tuning: `minitron distill` and `minitron finetune`."""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from ..data.cache import prepare_data
from ..data.checks import check_data, check_seq_len
from ..errors import MinitronError, OutputError
from ..io import replace_directory
from ..loading import load_tokenizer, locate_model, publish_into
from ..outputs import check_output, is_empty_folder, pending_folder, require_text
from .checkpoint import CHECKPOINT_DIR, checkpoint_path, has_checkpoint, saved_settings
from .dist import distributed_session, on_main
from .loop import distill
from .materialise import load_for_rank, loaded_on_ranks
from .resume import check_resume, model_identity, run_settings
from .sharding import resolve_teacher_sharding, shards_teacher, uses_fsdp
from .vocab import check_same_tokenizer
from ..config import DistillConfig
from ..arch.base import text_config


def resumable_folder(out: str | Path) -> Path | None:
    """The folder holding the checkpoint of an interrupted run into `out`, if there is one.

    A run started with --overwrite trains in `.OUT.pending` beside `out` (the old output stays until the
    new one is complete), so that folder is looked at first.
    """
    for folder in (pending_folder(Path(out)), Path(out)):
        if has_checkpoint(folder):
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
                text_field: str = "text", chat_template: str = "auto", resume: bool = False,
                overwrite: bool = False, device: str | None = None, save_dtype: str | None = None) -> dict:
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
        check_seq_len(spec, config.seq_len)
    check_data(data, text_field, chat_template=chat_template, tokenizer_of=student)
    with distributed_session(device) as env:
        distilling = teacher is not None and config.loss != "ce"
        # Cheap checks first: the tokenizers (no weights), then the folder and a resume's settings.
        teacher_tokenizer = load_tokenizer(teacher) if distilling else None
        student_tokenizer = load_tokenizer(student)
        if distilling:
            check_same_tokenizer(student_tokenizer, teacher_tokenizer)
        # Rank 0 checks and prepares the folder; the others wait and train in the folder it chose.
        folder, saved = on_main(env, lambda: _prepare_output(student, teacher, data, out, resume, overwrite))
        if distilling:  # before the resume check, which compares the concrete choice
            config = resolve_teacher_sharding(config, env, student, teacher)
        identity = model_identity(student, teacher if distilling else None, data, text_field, chat_template)
        resumes = check_resume(saved, run_settings(config, env.world_size, env.device.type, identity),
                               out) if resume else []
        # Tokenized once into the cache (rank 0 builds, the others wait), or a folder from `minitron tokenize`;
        # before the weights load, so that a data problem costs no model loading.
        shards = prepare_data(data, student_tokenizer, text_field=text_field, chat_template=chat_template)
        # A model FSDP2 will shard is read by rank 0 alone; the others receive their shards from it.
        student_model, tokenizer = load_for_rank(student, env, "float32", sharded=uses_fsdp(config, env))
        tokenizer = tokenizer or student_tokenizer
        check_seq_len(student_model, config.seq_len)  # a GGUF file's config comes with its weights
        teacher_model = None
        if distilling:
            teacher_dtype = "bfloat16" if config.teacher_bf16(env.device.type) else "float32"
            teacher_model, _ = load_for_rank(teacher, env, teacher_dtype, sharded=shards_teacher(config, env))
            check_seq_len(teacher_model, config.seq_len)
        loaded_on = {name: loaded_on_ranks(model, env)
                     for name, model in (("student", student_model), ("teacher", teacher_model)) if model is not None}
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
                  "epochs": round(needed / max(len(train), 1), 3), "weights_read_on_ranks": loaded_on,
                  **({"resumes": resumes} if resumes else {})}  # settings changed on resume, from which step
        # The published model is whole: under FSDP every rank helps gather the full tensors.
        full_state = get_model_state_dict(trained, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        history = [*_source_history(student), record]
        on_main(env, lambda: _publish(trained, tokenizer, folder, Path(out), {**record, "history": history},
                                      full_state, save_dtype))
        return record


def _prepare_output(student: str, teacher: str | None, data: str, out: str, resume: bool,
                    overwrite: bool) -> tuple[Path, dict | None]:
    """The folder to train in (see prepare_run_folder) and the settings of the checkpoint it holds."""
    check_output(out, inputs=[student, teacher, data], replace=overwrite)
    if resume and resumable_folder(out) == pending_folder(Path(out)):
        check_output(out, inputs=[student, teacher, data], replace=True)  # completing it will replace out
    folder = prepare_run_folder(out, resume, overwrite, is_main=True)
    return folder, saved_settings(folder)


def _publish(trained, tokenizer, folder: Path, out: Path, record: dict, full_state: dict,
             save_dtype: str | None) -> None:
    publish_into(trained, tokenizer, folder, record, state_dict=full_state, save_dtype=save_dtype)
    shutil.rmtree(checkpoint_path(folder), ignore_errors=True)
    if folder != out:
        replace_directory(folder, out)  # the previous output goes only now, with the new one complete


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
