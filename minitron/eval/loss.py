"""Held-out language-modelling loss and perplexity."""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from ..verbosity import progress_bar


@torch.inference_mode()
def mean_lm_loss(model: nn.Module, batches: Iterable[dict], progress: bool = False) -> tuple[float, int]:
    """(token-weighted mean next-token loss, number of predicted tokens) over dict batches."""
    total, tokens = 0.0, 0
    for batch in progress_bar(batches, enabled=progress, desc="eval", unit="batch", leave=False):
        input_ids = batch["input_ids"]
        labels = input_ids.clone()
        if batch.get("attention_mask") is not None:
            labels[batch["attention_mask"] == 0] = -100
        output = model(input_ids=input_ids, attention_mask=batch.get("attention_mask"), labels=labels,
                       use_cache=False)
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
