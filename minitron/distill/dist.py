"""One distributed path driven by torchrun's environment; a single process is world size 1.

    torchrun --nproc-per-node 4 -m minitron.cli distill ...   # data parallel (DDP), or --fsdp
    torchrun --nproc-per-node 8 -m minitron run recipe.yaml   # one process group for every stage

A run holds one process group from start to end (`distributed_session`): a recipe's stages, and the
distillations inside them, join the group already running instead of starting and ending their own.
Files are written by rank 0 while the others wait (`on_main`), so N processes write nothing twice.
"""
from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistEnv:
    """Read RANK / WORLD_SIZE / LOCAL_RANK (set by torchrun); start the process group when > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device in (None, "auto", "cuda")
    if device not in (None, "auto", "cuda"):
        resolved = torch.device(device)
    elif use_cuda:
        resolved = torch.device("cuda", local_rank)
    else:
        resolved = torch.device("cpu")
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)  # NCCL and every later .cuda() use this rank's own GPU
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo")
    return DistEnv(rank=rank, world_size=world_size, local_rank=local_rank, device=resolved)


def current_env() -> DistEnv:
    """The running process group as a DistEnv (world size 1 when none runs), without starting one: for
    code that is called both inside a torchrun job and in a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    on_gpu = dist.get_backend() == "nccl" or (torch.cuda.is_available() and torch.cuda.is_initialized())
    device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
    return DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(),
                   local_rank=int(os.environ.get("LOCAL_RANK", "0")), device=device)


@contextlib.contextmanager
def distributed_session(device: str | None = None) -> Iterator[DistEnv]:
    """The process group for the duration of the block: started here unless one is already running (a
    recipe's, around its stages), and ended at the end only by the call that started it."""
    starts_group = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    env = init_distributed(device)
    try:
        yield env
    finally:
        if starts_group and dist.is_initialized():
            dist.destroy_process_group()


Result = TypeVar("Result")


def on_main(env: DistEnv, action: Callable[[], Result]) -> Result:
    """Run `action` on rank 0 alone while the other ranks wait; every rank returns its result or raises its
    error, so that all of them take the same branch afterwards (and none waits forever for a failed rank 0).

    For the steps that write files or decide from them: the others would race rank 0 or read half its work.
    The result must be picklable and small (paths, a run.json).
    """
    if not env.distributed:
        return action()
    outcome: list = [None]
    if env.is_main:
        try:
            outcome[0] = ("result", action())
        except BaseException as error:  # noqa: BLE001 - re-raised on every rank below
            outcome[0] = ("error", _portable(error))
    dist.broadcast_object_list(outcome, src=0)
    kind, value = outcome[0]
    if kind == "error":
        raise value
    return value


def _portable(error: BaseException) -> BaseException:
    """`error`, or a MinitronError with its message where it cannot travel to the other ranks."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - exceptions whose constructor takes other arguments than .args
        from ..errors import MinitronError
        return MinitronError(f"{type(error).__name__}: {error}")


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def all_reduce_sum(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum a small tensor over ranks (gloo needs it on the CPU, NCCL on the GPU)."""
    if env.distributed:
        values = values.to(env.device if env.device.type == "cuda" else "cpu")
        dist.all_reduce(values)
    return values


def close_distributed(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()
