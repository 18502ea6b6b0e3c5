"""Held-out language-modelling loss and perplexity, data-parallel under torchrun, in chunks of tokens.

The loss is computed from the decoder's final hidden states, LM head and cross entropy chunk by chunk
(`distill.chunked.chunked_cross_entropy`), so (tokens x vocabulary) logits never exist at once: at
4 x 8192 tokens and a 128K vocabulary the full fp32 logits alone would be 17 GB.

    torchrun --nproc-per-node 8 -m minitron.cli eval --model student/ --data D   # each rank its share
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
from torch import nn

from ..verbosity import progress_bar

EVAL_CHUNK_SIZE = 1024  # tokens per LM-head chunk: 1024 x 128K fp32 logits are 0.5 GB


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(batch, seq) positions counted over real tokens only, so a left-padded sequence starts at 0.

    transformers derives positions from the mask only inside `generate`; a plain forward numbers
    padding too, which shifts every real token of a left-padded row.
    """
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp_min(0)


def next_token_labels(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Labels for the model's own shifted loss: -100 wherever the token or the one before it is padding.

    With left padding the first real token would otherwise be scored as predicted from a pad position.
    """
    labels = input_ids.clone()
    if attention_mask is not None:
        real = attention_mask.bool()
        labels[~real] = -100
        labels[:, 1:][~real[:, :-1]] = -100
    return labels


def _adapter_or_none(model: nn.Module):
    """The family adapter (chunked loss), or None for a causal LM minitron has no adapter for."""
    from ..arch import get_adapter
    from ..errors import UnsupportedArchitectureError
    try:
        return get_adapter(model)
    except UnsupportedArchitectureError:
        return None


def _batch_loss_sum(model: nn.Module, adapter, batch: dict, chunk_size: int) -> tuple[float, int]:
    """(summed next-token loss, predicted tokens) of one batch; chunked through the LM head when the
    family is known, else the model's own (full-logit) loss."""
    from ..distill.chunked import chunked_cross_entropy
    input_ids, attention_mask = batch["input_ids"], batch.get("attention_mask")
    labels = next_token_labels(input_ids, attention_mask)
    position_ids = None if attention_mask is None else position_ids_from_mask(attention_mask)
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    if adapter is None:
        output = model(**inputs, labels=labels)
        count = int((labels[:, 1:] != -100).sum())
        return float(output.loss) * count, count
    hidden = adapter.base_model(model)(**inputs).last_hidden_state  # final-normed, (batch, seq, hidden)
    head_device = _head_device(model, adapter, hidden.device)
    hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1]).to(head_device)
    targets = labels[:, 1:].reshape(-1).to(head_device)
    scored = targets != -100  # padding costs no head matmul
    total, count = chunked_cross_entropy(hidden[scored], lambda h: adapter.logits_from_hidden(model, h),
                                         targets[scored], chunk_size)
    return float(total), count


def _head_device(model: nn.Module, adapter, fallback: torch.device) -> torch.device:
    """Where the LM head computes (under `device_map` it may sit on another GPU than the last layer)."""
    device = adapter.lm_head_parameters(model)[0].device
    return fallback if device.type == "meta" else device


@torch.inference_mode()
def lm_loss_sum(model: nn.Module, batches: Iterable[dict], progress: bool = False,
                chunk_size: int = EVAL_CHUNK_SIZE) -> tuple[float, int]:
    """(next-token loss summed over tokens, number of predicted tokens) over dict batches.

    Padding (attention_mask 0), left or right, neither is predicted nor predicts anything.
    """
    adapter = _adapter_or_none(model)
    total, tokens = 0.0, 0
    for batch in progress_bar(batches, enabled=progress, desc="eval", unit="batch", leave=False):
        batch_total, count = _batch_loss_sum(model, adapter, batch, chunk_size)
        total += batch_total
        tokens += count
    return total, tokens


def mean_lm_loss(model: nn.Module, batches: Iterable[dict], progress: bool = False, *,
                 chunk_size: int = EVAL_CHUNK_SIZE, env=None) -> tuple[float, int]:
    """(token-weighted mean next-token loss, number of predicted tokens) over dict batches.

    env (a `DistEnv`): `batches` are this rank's share; sums are all-reduced, so every rank returns
    the loss of all ranks' batches together.
    """
    total, tokens = lm_loss_sum(model, batches, progress, chunk_size)
    total, tokens = reduce_sums([total, tokens], env)
    return total / max(tokens, 1), int(tokens)


def reduce_sums(values: Sequence[float], env) -> list[float]:
    """Float64 sums over ranks (unchanged in one process)."""
    if env is None or not env.distributed:
        return list(values)
    from ..distill.dist import all_reduce_sum
    return all_reduce_sum(torch.tensor(values, dtype=torch.float64), env).tolist()


def rank_share(items: Sequence, env) -> list:
    """This rank's items (every world_size-th from its rank): whole batches, so each is computed as in
    one process and the reduced sums match it to rounding."""
    if env is None or not env.distributed:
        return list(items)
    return list(items[env.rank::env.world_size])


def evaluate_loss(model: nn.Module, blocks: torch.Tensor, batch_size: int = 8, progress: bool = False, *,
                  chunk_size: int = EVAL_CHUNK_SIZE, env=None) -> dict:
    """Loss, perplexity and token count of `model` on token blocks (num_blocks, seq_len).

    env (a `DistEnv` under torchrun): each rank evaluates its share of the batches; every rank
    returns the loss over all blocks.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    starts = rank_share(range(0, len(blocks), batch_size), env)
    batches = ({"input_ids": blocks[i:i + batch_size].to(device)} for i in starts)
    show = progress and (env is None or env.is_main)
    loss, tokens = mean_lm_loss(model, batches, show, chunk_size=chunk_size, env=env)
    model.train(was_training)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": tokens}
