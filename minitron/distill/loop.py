"""`minitron.distill(student, teacher, data, config) -> student`: one loop for any world size.

    minitron distill --student pruned/ --teacher builtin:smollm2-135m --data builtin:python-docs --steps 200 --out student/
    torchrun --nproc-per-node 2 -m minitron.cli distill ...        # the same loop, data parallel
"""
from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from ..arch import check_logits_adapter, get_adapter
from ..config import DistillConfig
from ..errors import MinitronError
from .checkpoint import Checkpointer, load_training_state, saved_settings
from .dist import DistEnv, all_reduce_sum, init_distributed
from .losses import balance_weight
from .materialise import holds_weights, to_device_
from .metrics import MetricsLog, ProgressBar
from . import sharding
from .resume import check_resume, run_settings
from .steps import TrainModule, build_hidden_loss, compute_step_losses, make_logit_loss
from .validate import validate
from .vocab import check_vocabularies


class TrainingInterrupted(KeyboardInterrupt):
    """Raised after Ctrl-C or SIGTERM once a resumable checkpoint has been written."""


class _StopFlag:
    """First Ctrl-C, or SIGTERM (a cluster's preemption): finish the current step, checkpoint, stop.
    Second Ctrl-C: stop at once. SIGTERM never stops at once: schedulers send it to every process of a
    job and torchrun forwards it again, so a second one is no request to hurry."""

    _SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested: str | None = None  # the name of the signal that asked to stop
        self._previous: dict = {}

    def __enter__(self):
        def handler(signum, frame):
            if self.requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.requested = self.requested or signal.Signals(signum).name
        for signum in self._SIGNALS:
            with contextlib.suppress(ValueError):  # not the main thread: keep the default behaviour
                self._previous[signum] = signal.signal(signum, handler)
        return self

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)


def _autocast(env: DistEnv, config: DistillConfig):
    return sharding.autocast(env, config)  # module attribute: the FSDP2 bench swaps it for the old path


def _wrap(train_module: TrainModule, env: DistEnv, config: DistillConfig,
          teacher: nn.Module | None) -> tuple[nn.Module, nn.Module | None]:
    """(the student's step module: DDP, FSDP2 or itself; the teacher's forward: replicated or FSDP2-sharded)."""
    teacher_module = sharding.wrap_teacher(teacher, env, config) if teacher is not None else None
    return sharding.wrap_student(train_module, env, config), teacher_module


def _train_dataset(train_blocks, seq_len: int):
    """A map-style dataset of training blocks from a tensor, prepared shards, or a dataset as is."""
    from ..data.loader import TensorBlocks
    from ..data.shards import TokenShards
    if isinstance(train_blocks, torch.Tensor):
        return TensorBlocks(train_blocks)
    if isinstance(train_blocks, TokenShards):
        return train_blocks.dataset("train", seq_len)
    return train_blocks


def distill(student: nn.Module, teacher: nn.Module | None, train_blocks, heldout_blocks=None,
            config: DistillConfig | None = None, *, tokenizer=None, teacher_tokenizer=None,
            out: str | Path | None = None, resume: bool = False, kept_layers: list[int] | None = None,
            env: DistEnv | None = None, identity: dict | None = None,
            on_step: Callable[[int, dict], None] | None = None) -> nn.Module:
    """Train `student` to match `teacher` (or, with config.loss == "ce", on next-token loss alone).

    train_blocks: (num_blocks, seq_len) token ids, a map-style dataset of blocks, prepared `TokenShards`, or a
        data spec or prepared folder (then `tokenizer` is needed and the held-out blocks default to the data's
        held-out split). Blocks are visited in a seeded order, epoch after epoch (see minitron.data.loader).
        tokenizer, teacher_tokenizer: given both, they must be the same tokenizer, and the models' tables may
        differ by padding rows; else the tables must have the same size. out: where checkpoints and
        metrics.jsonl go (None: no checkpoints). identity: what the run trains (student, teacher, data specs),
        saved with the checkpoints; `resume` refuses a change to it or to a setting that shapes training
        (`resume.check_resume`). Returns the trained student (unwrapped, on env.device).
    """
    if config is None:
        raise MinitronError("distill needs a DistillConfig with a budget (steps or tokens)")
    env = env or init_distributed()
    settings = _checked_settings(student, teacher, config, env, tokenizer, teacher_tokenizer, out, resume, identity)
    if isinstance(train_blocks, str):
        train_blocks, heldout_blocks = _blocks_from_spec(train_blocks, heldout_blocks, tokenizer, config)
    torch.manual_seed(config.seed)
    # Weights on the meta device stay there: under FSDP2 rank 0 broadcasts them once the model is sharded.
    to_device_(student, env.device).train()
    if config.gradient_checkpointing:
        student.gradient_checkpointing_enable()
    if teacher is not None:
        to_device_(teacher, env.device).eval().requires_grad_(False)
    logit_loss = make_logit_loss(config)
    hidden_loss, layer_pairs = build_hidden_loss(config, student, teacher, kept_layers) if teacher else (None, [])
    train_module = to_device_(TrainModule(student, hidden_loss), env.device)
    total_steps = config.total_steps(env.world_size)
    # Wrap first: FSDP2 replaces parameters with sharded ones, and the optimizer must hold those.
    wrapped, teacher_module = _wrap(train_module, env, config, teacher)
    _check_materialised(train_module, teacher)
    optimizer = torch.optim.AdamW(train_module.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  betas=(0.9, 0.95))
    warmup = min(config.warmup_steps, max(total_steps // 10, 1)) if total_steps > 1 else 0
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(optimizer, warmup, total_steps, min_lr=config.min_lr)
    start_step = 0
    if resume:
        position = load_training_state(out, trainable=train_module, optimizer=optimizer, scheduler=scheduler)
        start_step = position.resume_step(config, env.world_size)
    log = MetricsLog(out, env.is_main, resume_step=start_step if resume else None, report_to=config.report_to,
                     settings=vars(config))
    checkpoints = None if out is None else Checkpointer(
        out, env, trainable=train_module, optimizer=optimizer, scheduler=scheduler, settings=settings,
        global_batch=config.global_batch(env.world_size), asynchronous=config.async_checkpoint)
    try:
        with _batches(_train_dataset(train_blocks, config.seq_len), config, env, start_step) as batches:
            _train(wrapped, train_module, student, (teacher, teacher_module), batches, heldout_blocks, config, env, optimizer,
                   scheduler, logit_loss, hidden_loss, layer_pairs, start_step, total_steps, checkpoints, log,
                   on_step)
        if checkpoints is not None:
            checkpoints.wait()  # an asynchronous save still being written
    finally:
        log.close()
    return student


def _check_materialised(train_module: nn.Module, teacher: nn.Module | None) -> None:
    for name, model in (("student", train_module), ("teacher", teacher)):
        if model is not None and not holds_weights(model):
            raise MinitronError(f"the {name} has weights on the meta device, which only an FSDP2-sharded model "
                                "receives (from rank 0); load it with minitron.load_model on every process")


def _checked_settings(student, teacher, config: DistillConfig, env: DistEnv, tokenizer, teacher_tokenizer, out,
                      resume: bool, identity: dict | None) -> dict:
    """The settings checkpoints record, once the inputs are known to fit together (before any work)."""
    if teacher is None and config.loss != "ce":
        raise MinitronError("a teacher is required for a distillation loss (or use --loss ce)")
    if teacher is not None:
        check_vocabularies(student, teacher, tokenizer, teacher_tokenizer)
    _check_families(student, teacher, config)
    settings = run_settings(config, env.world_size, env.device.type, identity)
    if resume:
        if out is None:
            raise MinitronError("resume=True needs the folder of the interrupted run (out=...)")
        settings["resumes"] = check_resume(saved_settings(out), settings, out)
    return settings


def _check_families(student: nn.Module, teacher: nn.Module | None, config: DistillConfig) -> None:
    """Logit losses work on any causal LM; hidden-state losses pair layers through a family adapter."""
    for model in filter(None, (student, teacher)):
        if config.hidden_loss != "none":
            get_adapter(model)  # a clear "not supported yet" for families without one
        check_logits_adapter(model)


def _blocks_from_spec(spec: str, heldout_blocks, tokenizer, config: DistillConfig):
    """Prepared shards for a spec (tokenized once into the cache) or a prepared folder, and held-out blocks."""
    from ..data.cache import prepare_data
    if tokenizer is None:
        raise MinitronError("a data spec needs the student's tokenizer: distill(..., tokenizer=tokenizer)")
    shards = prepare_data(spec, tokenizer)
    if heldout_blocks is None:
        heldout_blocks = shards.blocks("heldout", config.seq_len, config.eval_samples, allow_fewer=True)
    return shards, heldout_blocks


@contextlib.contextmanager
def _batches(dataset, config: DistillConfig, env: DistEnv, start_step: int):
    """This rank's micro-batches from the step `start_step` on: the position is the samples consumed."""
    from ..data.loader import train_loader
    loader = train_loader(dataset, micro_batch_size=config.micro_batch_size, grad_accum=config.grad_accum,
                          rank=env.rank, world_size=env.world_size, seed=config.seed,
                          start_sample=start_step * config.global_batch(env.world_size),
                          workers=config.data_workers, pin_memory=env.device.type == "cuda")
    batches = iter(loader)
    try:
        yield batches
    finally:
        # The sampler is endless: stop the reader processes now rather than whenever the iterator is collected.
        getattr(batches, "_shutdown_workers", lambda: None)()


def _train(wrapped, train_module, student, teachers, batches, heldout_blocks, config, env, optimizer,
           scheduler, logit_loss, hidden_loss, layer_pairs, start_step, total_steps, checkpoints, log,
           on_step) -> None:
    """teachers: (the teacher model, the module that runs its forward: replicated or FSDP2-sharded)."""
    tokens_per_step = config.global_batch(env.world_size) * config.seq_len
    bar = ProgressBar(total_steps, start_step, env.is_main)
    with _StopFlag() as stop:
        for step in range(start_step, total_steps):
            started = time.perf_counter()
            micro_batches = [next(batches) for _ in range(config.grad_accum)]
            losses = _optimizer_step(wrapped, train_module, student, teachers, micro_batches, config, env,
                                     optimizer, scheduler, logit_loss, hidden_loss, layer_pairs)
            seconds = time.perf_counter() - started
            record = {"step": step + 1, "tokens": (step + 1) * tokens_per_step, "lr": scheduler.get_last_lr()[0],
                      "tokens_per_s": tokens_per_step / seconds, **losses}
            last = step + 1 == total_steps
            if (config.eval_every and (step + 1) % config.eval_every == 0) or last:
                record |= validate(wrapped, student, teachers[0], heldout_blocks, config, env,
                                   teacher_module=teachers[1])
            log.write(record)
            bar.update(record)
            if on_step is not None:
                on_step(step + 1, record)
            if _agreed(bool(stop.requested), env):
                if checkpoints is not None:
                    checkpoints.save(step + 1, wait=True)
                bar.close()
                raise TrainingInterrupted(f"interrupted ({stop.requested or 'on another rank'}) after step "
                                          f"{step + 1}; resume with --resume")
            if checkpoints is not None and config.save_every and (step + 1) % config.save_every == 0 and not last:
                checkpoints.save(step + 1)
            if checkpoints is not None:
                checkpoints.poll()
    bar.close()


def _agreed(flag: bool, env: DistEnv) -> bool:
    """Every rank stops at the same step when any of them was interrupted."""
    return bool(all_reduce_sum(torch.tensor([float(flag)]), env).item() > 0)


def _optimizer_step(wrapped, train_module, student, teachers, micro_batches, config, env, optimizer,
                    scheduler, logit_loss, hidden_loss, layer_pairs) -> dict:
    sums = torch.zeros(3, dtype=torch.float64)
    step_losses = lambda input_ids, balance: compute_step_losses(  # noqa: E731
        wrapped, student, teachers[0], input_ids.to(env.device, non_blocking=True), config, logit_loss, layer_pairs,
        hidden_loss, balance, teacher_module=teachers[1])
    balance = None
    if hidden_loss is not None:
        if torch.isnan(hidden_loss.balance):  # first step: measure this step's own global batch
            hidden_loss.balance.fill_(_measure_balance(micro_batches, step_losses, env, config))
        balance = float(hidden_loss.balance)
    for index, input_ids in enumerate(micro_batches):
        # Gradients are reduced on the last micro-batch only (FSDP2 decides in backward, DDP in forward).
        with sharding.gradient_sync(wrapped, index == len(micro_batches) - 1):
            with _autocast(env, config):
                losses = step_losses(input_ids, balance)
            (losses.total / config.grad_accum).backward()
        sums += torch.tensor([losses.logit or losses.ce, losses.ce, losses.hidden], dtype=torch.float64)
    if config.clip_grad > 0:
        torch.nn.utils.clip_grad_norm_(train_module.parameters(), config.clip_grad)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    sums = all_reduce_sum(sums, env) / (config.grad_accum * env.world_size)
    if hidden_loss is not None:  # the next step's weight: this step's global logit / hidden means
        hidden_loss.balance.fill_(float(balance_weight(sums[0], sums[2])))
    return {"loss": float(sums[0]), "ce": float(sums[1]), "hidden": float(sums[2])}


@torch.no_grad()
def _measure_balance(micro_batches, step_losses, env: DistEnv, config: DistillConfig) -> float:
    """balance_weight of the global logit and hidden means of one global batch (a forward pass, no backward)."""
    sums = torch.zeros(2, dtype=torch.float64)
    for input_ids in micro_batches:
        with _autocast(env, config):
            losses = step_losses(input_ids, 0.0)
        sums += torch.tensor([losses.logit, losses.hidden], dtype=torch.float64)
    sums = all_reduce_sum(sums, env)
    return float(balance_weight(sums[0], sums[1]))
