"""How the student and the teacher are spread over the processes: DDP or FSDP2 for the student, the
teacher replicated (default) or FSDP2-sharded (`--teacher-sharding shard`).

Under FSDP2 (`--fsdp` under torchrun) each decoder layer is a unit and the rest of the model (embedding,
final norm, LM head, the hidden-loss projections) is the root unit. FSDP2 keeps a root's parameters
gathered from its forward until its backward, and the LM head runs in the loss after the base model's
forward, chunk by chunk: as part of the root, the head is all-gathered once per micro-batch and its
gradient reduce-scattered once, with the root's, however many loss chunks there are (as its own unit it
was gathered per chunk, twice with the backward's recompute). Gathered, its weight is a plain tensor, so
the fused chunked loss (no head recompute in backward) runs under FSDP2 as under DDP.

bf16 under FSDP2 is a `MixedPrecisionPolicy`: bf16 parameters gathered and computed with, fp32 gradient
reductions into fp32 shards (which the optimizer updates), no autocast; DDP keeps fp32 weights and autocast.

A sharded model's weights come from rank 0 once it is split (`materialise`): the other ranks may build it
on the meta device, so that only rank 0 ever reads or holds it whole.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace

import torch
from torch import nn

from ..arch import logits_adapter
from ..config import DistillConfig
from .dist import DistEnv
from .materialise import full_state_on_rank0, load_from_rank0_


def uses_fsdp(config: DistillConfig, env: DistEnv) -> bool:
    """FSDP2 shards over a process group: without one (a single process) `--fsdp` changes nothing, so the
    same recipe runs on 1 or N processes."""
    return config.fsdp and _process_group()


def resolve_teacher_sharding(config: DistillConfig, env: DistEnv, student: str, teacher: str) -> DistillConfig:
    """`--teacher-sharding auto` made concrete, before anything loads (the same on every rank, and recorded
    so that a resume makes the same choice): shard under FSDP2 on GPUs where the dry run's estimate of a
    replicated teacher (`memory.replicated_teacher_fits`, from the two configs) does not fit the device's
    memory; replicate otherwise (one process, DDP, CPUs: sharding is then unavailable or not about memory)."""
    if config.teacher_sharding != "auto":
        return config
    choice = "replicate"
    if uses_fsdp(config, env) and env.device.type == "cuda":
        from ..errors import UnsupportedArchitectureError
        from ..jobs import load_config
        from ..memory import GIB, replicated_teacher_fits
        gpu_memory = torch.cuda.get_device_properties(env.device).total_memory / GIB
        try:
            fits = replicated_teacher_fits(
                load_config(student), load_config(teacher), processes=env.world_size, fsdp=True,
                gpu_memory_gib=gpu_memory, micro_batch_size=config.micro_batch_size, seq_len=config.seq_len,
                chunk_size=config.chunk_size, gradient_checkpointing=config.gradient_checkpointing)
        except UnsupportedArchitectureError:  # no size table for this family: sharding is the safe side
            fits = False
        choice = "replicate" if fits else "shard"
    if env.is_main:
        print(f"--teacher-sharding auto: {choice}", flush=True)
    return replace(config, teacher_sharding=choice)


def shards_teacher(config: DistillConfig, env: DistEnv) -> bool:
    return config.teacher_sharding == "shard" and _process_group()


def _process_group() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def autocast(env: DistEnv, config: DistillConfig):
    """bf16 autocast around the student's forward and loss, unless FSDP2's mixed precision does the casting."""
    enabled = config.student_bf16(env.device.type) and not uses_fsdp(config, env)
    return torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=enabled)


def mixed_precision_policy(config: DistillConfig, env: DistEnv):
    """bf16 parameters, fp32 gradient reductions where the student trains in bf16; else the default (fp32)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy
    if not config.student_bf16(env.device.type):
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)


class TeacherModule(nn.Module):
    """The teacher's base model behind one forward (final-normed hidden states; the LM head runs later in
    the loss), so that a sharded teacher's root unit holds its embedding, final norm and LM head."""

    def __init__(self, teacher: nn.Module) -> None:
        super().__init__()
        self.teacher = teacher

    def forward(self, input_ids: torch.Tensor):
        return logits_adapter(self.teacher).base_model(self.teacher)(input_ids=input_ids, use_cache=False)


def wrap_student(train_module: nn.Module, env: DistEnv, config: DistillConfig) -> nn.Module:
    """The module the training step calls: FSDP2-sharded, DDP, or `train_module` itself on one process."""
    if uses_fsdp(config, env):
        return _fully_shard(train_module, train_module.student, mixed_precision_policy(config, env), env)
    if env.distributed:
        device_ids = [env.device.index] if env.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(train_module, device_ids=device_ids)
    return train_module


def wrap_teacher(teacher: nn.Module, env: DistEnv, config: DistillConfig) -> TeacherModule:
    """The teacher's forward: replicated on every process (its own dtype), or FSDP2-sharded when asked."""
    module = TeacherModule(teacher)
    if not shards_teacher(config, env):
        return module
    dtype = torch.bfloat16 if config.student_bf16(env.device.type) else None
    from torch.distributed.fsdp import MixedPrecisionPolicy
    return _fully_shard(module, teacher, MixedPrecisionPolicy(param_dtype=dtype), env)


def _fully_shard(root: nn.Module, model: nn.Module, policy, env: DistEnv) -> nn.Module:
    """Shard `root` (each decoder layer of `model` a unit) and fill every rank's shards from rank 0's
    weights: the other ranks may hold the model on the meta device (`materialise.load_for_rank`)."""
    from torch.distributed.fsdp import fully_shard
    full_state = full_state_on_rank0(root, env)
    for layer in logits_adapter(model).layers(model):
        fully_shard(layer, mp_policy=policy)
    sharded = fully_shard(root, mp_policy=policy)
    load_from_rank0_(sharded, full_state, env.device)
    return sharded


@contextlib.contextmanager
def gradient_sync(wrapped: nn.Module, enabled: bool) -> Iterator[None]:
    """Reduce gradients only on an optimizer step's last micro-batch; the others accumulate locally.

    Wrap the micro-batch's forward and backward: FSDP2 decides in backward, DDP in forward.
    """
    from torch.distributed.fsdp import FSDPModule
    if isinstance(wrapped, FSDPModule):
        wrapped.set_requires_gradient_sync(enabled)
        yield
    elif isinstance(wrapped, nn.parallel.DistributedDataParallel) and not enabled:
        with wrapped.no_sync():
            yield
    else:
        yield


def release_teacher(teacher_module: nn.Module | None) -> None:
    """Free a sharded teacher's gathered root (embedding, norm, LM head) once its loss chunks have run:
    FSDP2 keeps a root gathered until its backward, and a teacher has none."""
    from torch.distributed.fsdp import FSDPModule
    if isinstance(teacher_module, FSDPModule):
        teacher_module.reshard()
