"""Losses on LM-head logits, computed chunk by chunk so that (tokens x vocab) logits never exist at once.

    out = chunked_logit_loss(ForwardKL(), student_hidden, teacher_hidden, student_head, teacher_head,
                             head_params=adapter.lm_head_parameters(student))
    out.mean().backward()

Two ways to get gradients without keeping every chunk's logits:
- fused (pass `head_params`; see `fused.py`): each chunk's gradient w.r.t. the hidden states and the
  head's parameters is computed during the forward pass, so backward recomputes no head matmul.
- checkpoint (head_params=None; for a head whose parameters are FSDP2 shards between calls, which
  `distill` avoids by gathering the head with the FSDP2 root): each chunk runs under
  `torch.utils.checkpoint`, and backward recomputes the chunk's student and teacher logits.
Both return the same values and gradients. Memory is O(chunk_size x V) for logits either way; the
fused path adds O(N x H + head parameters) for the gradients it holds until backward, and skips the
two (chunk x H x V) head matmuls per chunk (student's and teacher's) that checkpointing repeats.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .fused import ChunkSums, fused_chunk_sums
from .losses import IGNORE_INDEX, LogitLoss, NextTokenCE

Head = Callable[[Tensor], Tensor]


@dataclass
class LogitLossOutput:
    """Sums and counts from `chunked_logit_loss`; divide by (globally reduced) counts yourself.

    kd_sum: fp32 scalar, distillation loss summed over the `count` masked-in tokens.
    ce_sum: fp32 scalar, cross entropy summed over the `ce_count` labelled tokens, or None.
    """

    kd_sum: Tensor
    ce_sum: Tensor | None
    count: int
    ce_count: int = 0

    def mean(self, ce_weight: float = 0.0) -> Tensor:
        """Local mean: kd_sum / count + ce_weight * ce_sum / ce_count (empty parts count as 0)."""
        loss = self.kd_sum / max(self.count, 1)
        if ce_weight and self.ce_sum is not None:
            loss = loss + ce_weight * self.ce_sum / max(self.ce_count, 1)
        return loss


def chunked_logit_loss(loss: LogitLoss | nn.Module, student_hidden: Tensor, teacher_hidden: Tensor,
                       student_head: Head, teacher_head: Head, mask: Tensor | None = None, chunk_size: int = 1024,
                       labels: Tensor | None = None, ce_weight: float = 0.0, *,
                       head_params: Sequence[Tensor] | None = None,
                       backward_through_mean: bool = False) -> LogitLossOutput:
    """Apply a logit loss to (N, Hs) student / (N, Ht) teacher final hidden states, chunk by chunk.

    `loss` is a LogitLoss (or any module with its forward signature). The heads map (n, H)
    hidden states to fresh (n, V) logits (lm_head plus any soft-capping).
    mask: (N,) bool (True = distil this token); labels: (N,) int64 with -100 = ignore, needed
    when ce_weight > 0 (then ce_sum is filled; ce_weight only switches CE on, weighting is left to
    `LogitLossOutput.mean` or the caller, so the sums stay exact).
    head_params: the tensors `student_head` differentiates into (`ArchAdapter.lm_head_parameters`):
    given, the fused path runs (no recompute in backward); None, the checkpoint path.
    backward_through_mean: promise that gradients reach the sums only as through `out.mean(ce_weight)`
    (times any scalar); with CE on, the fused path then runs one head backward per chunk, not two.

    Rows that neither loss uses are dropped up front, so padding costs no head matmuls. Gradients
    reach `student_hidden` and the student head's parameters; the teacher head runs under no_grad.
    """
    if student_hidden.dim() != 2 or teacher_hidden.dim() != 2 or len(student_hidden) != len(teacher_hidden):
        raise ValueError(f"expected (N, Hs) and (N, Ht) hidden states, got {tuple(student_hidden.shape)} "
                         f"and {tuple(teacher_hidden.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    use_ce = ce_weight > 0
    if use_ce and labels is None:
        raise ValueError("ce_weight > 0 needs labels")
    n = len(student_hidden)
    kd_mask = torch.ones(n, dtype=torch.bool, device=student_hidden.device) if mask is None else mask.to(torch.bool)
    keep = kd_mask | (labels != IGNORE_INDEX) if use_ce else kd_mask
    if not bool(keep.all()):
        student_hidden, teacher_hidden, kd_mask = student_hidden[keep], teacher_hidden[keep], kd_mask[keep]
        labels = labels[keep] if use_ce else labels
    count = int(kd_mask.sum())
    ce_count = int((labels != IGNORE_INDEX).sum()) if use_ce else 0
    chunk_mask = None if count == len(kd_mask) else kd_mask  # all kept: skip per-chunk masking
    ce_loss = NextTokenCE()

    def chunk_sums(s_h: Tensor, rows: slice) -> list[Tensor]:
        t_h = teacher_hidden[rows]
        with torch.no_grad():
            t_logits = teacher_head(t_h)
        s_logits = student_head(s_h)
        # The teacher chunk is ours (unless the head returned its input): let the loss overwrite it.
        own = t_logits.untyped_storage().data_ptr() != t_h.untyped_storage().data_ptr()
        m = None if chunk_mask is None else chunk_mask[rows]
        kd = (loss(s_logits, t_logits, m, consume_teacher=own) if isinstance(loss, LogitLoss)
              else loss(s_logits, t_logits, m))[0]
        return [kd, ce_loss(s_logits, labels[rows])[0]] if use_ce else [kd]

    weights = [1.0 / max(count, 1), ce_weight / max(ce_count, 1)] if use_ce and backward_through_mean else None
    sums = _chunked_sums(chunk_sums, student_hidden, head_params, 2 if use_ce else 1, chunk_size, weights)
    return LogitLossOutput(kd_sum=sums[0], ce_sum=sums[1] if use_ce else None, count=count, ce_count=ce_count)


def chunked_cross_entropy(hidden: Tensor, head: Head, labels: Tensor, chunk_size: int, *,
                          head_params: Sequence[Tensor] | None = None) -> tuple[Tensor, int]:
    """(sum of next-token CE, labelled tokens) for (N, H) hidden states and (N,) labels, chunk by chunk.

    head_params as in `chunked_logit_loss`: given, the fused path; None, the checkpoint path.
    """
    loss = NextTokenCE()
    (total,) = _chunked_sums(lambda h, rows: [loss(head(h), labels[rows])[0]], hidden, head_params, 1, chunk_size)
    return total, int((labels != IGNORE_INDEX).sum())


def _chunked_sums(chunk_sums: ChunkSums, hidden: Tensor, head_params: Sequence[Tensor] | None, num_sums: int,
                  chunk_size: int, weights: Sequence[float] | None = None) -> list[Tensor]:
    if head_params is not None:
        return fused_chunk_sums(chunk_sums, hidden, head_params, num_sums=num_sums, chunk_size=chunk_size,
                                weights=weights)
    # Checkpoint: each chunk saves only its hidden states; backward recomputes its logits (teacher's
    # included: passing teacher logits in as a checkpoint input would keep all N x V of them alive).
    # Start from a zero tied to `hidden` so backward works even when every token is masked.
    sums = [(hidden.sum() * 0.0).float()] * num_sums
    for start in range(0, len(hidden), chunk_size):
        rows = slice(start, start + chunk_size)
        values = checkpoint(chunk_sums, hidden[rows], rows, use_reentrant=False)
        sums = [total + value for total, value in zip(sums, values)]
    return sums
