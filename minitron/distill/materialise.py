"""Weights read once under FSDP2: rank 0 loads a model that will be sharded, the other ranks build it on
the meta device (no memory, no file read), and once `fully_shard` has split it every rank receives its
shard from rank 0 (`set_model_state_dict(..., broadcast_from_rank0=True)`, the torchtitan / torchtune
pattern). No rank but 0 ever holds a full copy; rank 0 holds one until the broadcast.

A model every rank needs whole (DDP's student, a replicated teacher) is loaded on every rank as before.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ..loading import empty_model, load_model
from .dist import DistEnv


def load_for_rank(spec: str, env: DistEnv, dtype: str, sharded: bool):
    """(model, tokenizer or None): loaded, or without weights on ranks > 0 when it will be sharded."""
    if sharded and not env.is_main:
        model = empty_model(spec, dtype)
        if model is not None:  # None: a GGUF file, whose weights come with its config
            return model, None
    return load_model(spec, device=str(env.device), dtype=dtype)


def holds_weights(model: nn.Module) -> bool:
    return not any(parameter.is_meta for parameter in model.parameters())


def loaded_on_ranks(model: nn.Module, env: DistEnv) -> list[int]:
    """The ranks that read `model`'s weights from its files (recorded in minitron.json)."""
    if not env.distributed:
        return [0]
    holders: list = [None] * env.world_size
    dist.all_gather_object(holders, holds_weights(model))
    return [rank for rank, held in enumerate(holders) if held]


def to_device_(model: nn.Module, device: torch.device) -> nn.Module:
    """`model.to(device)`, leaving meta parameters (weights still to come from rank 0) where they are."""
    return model._apply(lambda tensor: tensor if tensor.is_meta else tensor.to(device))


def full_state_on_rank0(root: nn.Module, env: DistEnv) -> dict:
    """What rank 0 broadcasts after sharding (taken before: `fully_shard` replaces the parameters)."""
    return dict(root.state_dict()) if env.is_main else {}


def load_from_rank0_(root: nn.Module, full_state: dict, device: torch.device) -> None:
    """Fill the FSDP2-sharded `root` on every rank from rank 0's full state (collective: all ranks call it).

    Meta parameters get storage first (`to_empty`, swapping tensors so that a tied embedding and LM head
    stay one parameter); buffers, which no state dict holds whole (rotary frequencies are non-persistent),
    are broadcast as well, `to_empty` having cleared them.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    if not holds_weights(root):
        swapping = torch.__future__.get_swap_module_params_on_conversion()
        torch.__future__.set_swap_module_params_on_conversion(True)
        try:
            root.to_empty(device=device)
        finally:
            torch.__future__.set_swap_module_params_on_conversion(swapping)
    set_model_state_dict(root, full_state,
                         options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    for buffer in root.buffers():
        dist.broadcast(buffer, src=0)
