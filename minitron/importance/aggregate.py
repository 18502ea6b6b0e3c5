"""Reductions of activations over the sequence and over the batch (the paper's ablation axes).

Sequence: (batch, seq, channels) -> (batch, channels), per sample. Batch: a running accumulator of
sums and sums of squares, so memory stays flat however many samples pass through.
"""
from __future__ import annotations

import torch

REDUCTIONS = ("mean", "l2", "var")


def reduce_sequence(activations: torch.Tensor, how: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(batch, seq, channels) -> (batch, channels) in fp32; `mask` (batch, seq) drops padding tokens.

    mean: mean of |a|; l2: L2 norm of a; var: variance of a (population).
    """
    values = activations.float()
    if mask is None:
        if how == "mean":  # an L1 norm is one fused pass, with no |a| temporary
            return torch.linalg.vector_norm(values, ord=1, dim=1) / values.shape[1]
        if how == "l2":
            return torch.linalg.vector_norm(values, dim=1)
        return values.var(dim=1, unbiased=False)
    # Padded positions are zeroed, not multiplied by 0: what a model computes there may be inf or NaN.
    values = torch.where(mask.bool().unsqueeze(-1), values, 0.0)
    weights = mask.to(values.dtype).unsqueeze(-1)
    count = weights.sum(dim=1).clamp_min(1.0)
    if how == "mean":
        return (values.abs() * weights).sum(dim=1) / count
    if how == "l2":
        return ((values * values) * weights).sum(dim=1).sqrt()
    mean = (values * weights).sum(dim=1) / count
    return ((values * values) * weights).sum(dim=1) / count - mean * mean


class BatchAccumulator:
    """Accumulates per-sample scores (batch, channels) and reduces them over every sample seen.

    `size` (channels) lets a rank that saw no sample still take part in an all-reduce (`sums`).
    """

    def __init__(self, size: int | None = None) -> None:
        self.size = size
        self.total: torch.Tensor | None = None
        self.total_squares: torch.Tensor | None = None
        self.count = 0

    def update(self, per_sample: torch.Tensor) -> None:
        per_sample = per_sample.detach().double()
        if self.total is None:
            self.total = torch.zeros(per_sample.shape[1:], dtype=torch.float64, device=per_sample.device)
            self.total_squares = torch.zeros_like(self.total)
        self.total += per_sample.sum(dim=0)
        self.total_squares += (per_sample * per_sample).sum(dim=0)
        self.count += per_sample.shape[0]

    def sums(self) -> torch.Tensor:
        """(2 * channels + 1,) float64 on the CPU: sum, sum of squares, count (zeros before any update)."""
        if self.total is None:
            if self.size is None:
                raise ValueError("an accumulator without a size has no sums before its first update")
            return torch.zeros(2 * self.size + 1, dtype=torch.float64)
        count = torch.tensor([float(self.count)], dtype=torch.float64)
        return torch.cat([self.total.cpu(), self.total_squares.cpu(), count])

    def load_sums(self, sums: torch.Tensor) -> None:
        """Replace the running sums by `sums` (the layout of `sums()`, e.g. summed over ranks)."""
        channels = (len(sums) - 1) // 2
        self.total, self.total_squares = sums[:channels].clone(), sums[channels:2 * channels].clone()
        self.count = int(round(float(sums[-1])))

    def result(self, how: str) -> torch.Tensor:
        if self.total is None:
            raise ValueError("no activations were recorded")
        if how == "mean":
            out = self.total / self.count
        elif how == "l2":
            out = self.total_squares.sqrt()
        else:
            mean = self.total / self.count
            out = (self.total_squares / self.count - mean * mean).clamp_min(0.0)
        return out.float().cpu()
