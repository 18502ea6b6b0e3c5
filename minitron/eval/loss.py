"""Held-out language-modelling loss and perplexity."""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from ..verbosity import progress_bar


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


@torch.inference_mode()
def mean_lm_loss(model: nn.Module, batches: Iterable[dict], progress: bool = False) -> tuple[float, int]:
    """(token-weighted mean next-token loss, number of predicted tokens) over dict batches.

    Padding (attention_mask 0), left or right, neither is predicted nor predicts anything.
    """
    total, tokens = 0.0, 0
    for batch in progress_bar(batches, enabled=progress, desc="eval", unit="batch", leave=False):
        input_ids, attention_mask = batch["input_ids"], batch.get("attention_mask")
        labels = next_token_labels(input_ids, attention_mask)
        position_ids = None if attention_mask is None else position_ids_from_mask(attention_mask)
        output = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       labels=labels, use_cache=False)
        count = int((labels[:, 1:] != -100).sum())
        total += float(output.loss) * count
        tokens += count
    return total / max(tokens, 1), tokens


def evaluate_loss(model: nn.Module, blocks: torch.Tensor, batch_size: int = 8, progress: bool = False) -> dict:
    """Loss, perplexity and token count of `model` on token blocks (num_blocks, seq_len)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    batches = [{"input_ids": blocks[i:i + batch_size].to(device)} for i in range(0, len(blocks), batch_size)]
    loss, tokens = mean_lm_loss(model, batches, progress)
    model.train(was_training)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": tokens}
