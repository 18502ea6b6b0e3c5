"""Fused linear loss: each chunk's logits, loss and gradients in one forward pass; backward recomputes nothing.

    sums = fused_chunk_sums(chunk_sums, student_hidden, head_params, num_sums=2, chunk_size=1024)

An LM-head loss is where a (tokens x vocab) tensor would dominate memory, so it is computed chunk by
chunk. Wrapping each chunk in `torch.utils.checkpoint` (the fallback in `chunked.py`) keeps one chunk's
logits at a time but makes backward recompute the student's *and* the teacher's chunk logits: two more
(chunk x H x V) matmuls per chunk, about 14% of a half-size SmolLM2 student's step. Here, instead,
the forward pass does for each chunk: the head on a detached chunk of hidden states (the teacher's
head, if any, under no_grad inside `chunk_sums`), the chunk's loss sums, and at once
`torch.autograd.grad` of them w.r.t. the hidden chunk and the head's parameters; then the chunk's
logits are freed. What survives until backward is one (N, H) hidden-state gradient and one gradient
per head parameter (V x H for an LM head), which backward only multiplies by the upstream gradient.
Memory: O(chunk x V) for logits as before, plus those O(N x H + parameter) buffers.

Sums with independent upstream gradients (a KD sum and a CE sum) need a gradient set each, that is
one head backward per sum and chunk, unless the caller declares the ratio of their upstream
gradients (`weights`): then one combined backward serves all, and backward checks the declaration.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

ChunkSums = Callable[[Tensor, slice], list[Tensor]]
"""(student hidden chunk (n, H), its rows in the full (N, H) tensor) -> fp32 scalar loss sums of the chunk."""


@dataclass(frozen=True)
class _Spec:
    chunk_sums: ChunkSums
    num_sums: int
    chunk_size: int
    weights: tuple[float, ...] | None


def fused_chunk_sums(chunk_sums: ChunkSums, student_hidden: Tensor, head_params: Sequence[Tensor], *,
                     num_sums: int, chunk_size: int, weights: Sequence[float] | None = None) -> list[Tensor]:
    """Sum `chunk_sums` over chunks of `student_hidden` (N, H); gradients reach it and `head_params`.

    head_params: every tensor that requires grad and that the student head uses (the LM-head weight,
    which is the embedding weight in tied models: its gradient then adds to the embedding's own).
    A head that uses any other such tensor is refused (its gradient would be lost).
    weights: optional promise that the upstream gradients of the sums are proportional to them
    (e.g. a mean kd_sum / count + w * ce_sum / ce_count): one head backward per chunk instead of one
    per sum; backward raises if the gradients that arrive break the promise.
    """
    if weights is not None and (len(weights) != num_sums or weights[0] == 0):
        raise ValueError(f"weights must give {num_sums} values, the first non-zero; got {weights}")
    spec = _Spec(chunk_sums, num_sums, chunk_size, None if weights is None else tuple(map(float, weights)))
    return list(_FusedLinearLoss.apply(spec, student_hidden, *head_params))


class _FusedLinearLoss(torch.autograd.Function):
    """Outputs the loss sums; backward returns gradients computed in forward, times grad_output."""

    @staticmethod
    def forward(ctx, spec: _Spec, hidden: Tensor, *params: Tensor) -> tuple[Tensor, ...]:
        inputs = (hidden, *params)
        wrt = [i for i, need in enumerate(ctx.needs_input_grad[1:]) if need]
        groups = spec.num_sums if spec.weights is None else 1
        grads: list[list[Tensor | None]] = [[None] * len(wrt) for _ in range(groups)]
        sums = [torch.zeros((), dtype=torch.float32, device=hidden.device) for _ in range(spec.num_sums)]
        for start in range(0, len(hidden), spec.chunk_size):
            rows = slice(start, start + spec.chunk_size)
            chunk = hidden[rows].detach().requires_grad_(0 in wrt)
            # Function.forward runs under no_grad: switch autograd on for the chunk's own graph.
            with torch.enable_grad() if wrt else contextlib.nullcontext():
                values = spec.chunk_sums(chunk, rows)
                outputs = values if spec.weights is None else [sum(w * v for w, v in zip(spec.weights, values))]
            for total, value in zip(sums, values):
                total += value.detach().float()
            if not wrt:
                continue
            targets = [chunk if i == 0 else inputs[i] for i in wrt]
            if start == 0:
                _check_head_inputs(values, targets)
            for group, output in enumerate(outputs):
                got = torch.autograd.grad(output, targets, retain_graph=group < len(outputs) - 1, allow_unused=True)
                _accumulate(grads[group], wrt, got, rows, hidden)
            del values, outputs, got  # this chunk's logits and graph go now
        ctx.spec, ctx.wrt, ctx.num_inputs = spec, wrt, len(inputs)
        ctx.save_for_backward(*(g for group in grads for g in group))
        return tuple(sums)

    @staticmethod
    def backward(ctx, *grad_sums: Tensor) -> tuple[Tensor | None, ...]:
        spec, wrt = ctx.spec, ctx.wrt
        saved = ctx.saved_tensors
        if spec.weights is None:
            scales = list(grad_sums)
        else:  # one combined gradient, valid only if grad_sums = c * weights
            c = grad_sums[0] / spec.weights[0]
            for weight, grad in zip(spec.weights[1:], grad_sums[1:]):
                if not torch.allclose(grad, c * weight, rtol=1e-4, atol=1e-12):
                    raise RuntimeError("fused chunked loss: the upstream gradients of its sums are not in the "
                                       f"promised ratio {spec.weights}; call it without weights")
            scales = [c]
        result: list[Tensor | None] = [None] * ctx.num_inputs
        for k, i in enumerate(wrt):
            for group, scale in enumerate(scales):
                grad = saved[group * len(wrt) + k]
                if grad is not None:
                    grad = grad * scale
                    result[i] = grad if result[i] is None else result[i].add_(grad)
        return (None, *result)


def _accumulate(totals: list[Tensor | None], wrt: Sequence[int], got: Sequence[Tensor | None], rows: slice,
                hidden: Tensor) -> None:
    """Add one chunk's gradients into `totals` (index 0 in `wrt` is the hidden states, the rest parameters)."""
    for k, (i, grad) in enumerate(zip(wrt, got)):
        if grad is None:
            continue
        if i == 0:  # chunks are disjoint rows: each writes its own slice
            if totals[k] is None:
                totals[k] = torch.zeros_like(hidden)
            totals[k][rows] = grad
        elif totals[k] is None:
            # Private (later chunks add into it in place) and fp32: with bf16 parameters (FSDP2's mixed
            # precision) a bf16 sum over chunks would round at every add; autograd casts the result back.
            totals[k] = grad.to(torch.float32, copy=True)
        else:
            totals[k].add_(grad)


def _check_head_inputs(values: Sequence[Tensor], targets: Sequence[Tensor]) -> None:
    """Refuse a head that reads a grad-requiring tensor missing from `targets` (its gradient would be lost)."""
    known = {id(t) for t in targets}
    stack, seen = [v.grad_fn for v in values], {}
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen[id(node)] = node  # holding the node keeps its id unique
        variable = getattr(node, "variable", None)  # AccumulateGrad: a leaf that requires grad
        if variable is not None and id(variable) not in known:
            raise ValueError(f"the student head uses a tensor of shape {tuple(variable.shape)} that requires "
                             "grad but is not in head_params")
        stack.extend(next_node for next_node, _ in node.next_functions)
