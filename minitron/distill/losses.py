"""Distillation losses (torchtune style: one small module per loss, shapes in the docstrings).

Logit losses work on flattened tokens and return ``(sum over kept tokens, number of kept tokens)``
rather than a mean, so that chunked accumulation and averaging across ranks / micro-batches stay
exact: the caller divides once by the global count. All of them compute in fp32 (inputs may be
bf16), divide logits by ``temperature`` and multiply the loss by ``temperature**2`` (Hinton et al.)
so gradient magnitudes do not shrink as T grows. Teacher logits are constants (no gradient).

Memory: each loss computes its gradient w.r.t. the student logits analytically in the forward pass
and saves only that one (N, V) tensor for backward (in the logits' dtype), instead of the several
(N, V) log-softmaxes / probabilities / masks that autograd would keep; working buffers are reused
in place. Double backward is not supported. ``chunked.chunked_logit_loss`` applies a logit loss to
hidden states and LM heads chunk by chunk, so (tokens x vocab) logits only exist for one chunk at a time.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IGNORE_INDEX = -100
Kernel = Callable[[Tensor, bool], tuple[Tensor, Tensor | None]]


class _Fused(torch.autograd.Function):
    """total = kernel(student_logits)[0]; backward = saved analytic gradient * grad_output."""

    @staticmethod
    def forward(ctx, student_logits: Tensor, kernel: Kernel) -> Tensor:
        # The kernels do explicit fp32 arithmetic. A caller's bf16 autocast would otherwise turn their
        # row dot products (batched matmuls) into bf16 ones: a KL value off by ~1e-2 and, on CPU, a
        # slow bf16 bmm over (N, V).
        with torch.autocast(student_logits.device.type, enabled=False):
            total, grad = kernel(student_logits, ctx.needs_input_grad[0])
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, None]:
        (grad,) = ctx.saved_tensors
        return (None if grad is None else grad * grad_output), None


_FMIN = torch.finfo(torch.float32).min


def _log_softmax_into(x: Tensor, out: Tensor) -> Tensor:
    """log_softmax(x) over the last dim written into `out` (must not alias x): no other (N, V) buffer.

    Clamping -inf (masked vocab entries) to the most negative float makes p = 0 exactly and
    0 * log p = 0 in the row dot products instead of 0 * -inf = nan.
    """
    m = x.amax(-1, keepdim=True)
    lse = torch.sub(x, m, out=out).exp_().sum(-1, keepdim=True).log_().add_(m)
    return torch.sub(x, lse, out=out).clamp_min_(_FMIN)


def _teacher_probs(t: Tensor, owned: bool) -> tuple[Tensor, Tensor]:
    """(p_t, log p_t); log p_t overwrites t when the caller owns it (saves one (N, V) buffer)."""
    m = t.amax(-1, keepdim=True)
    p = torch.sub(t, m).exp_()
    z = p.sum(-1, keepdim=True)
    lse = m.add_(z.log())
    return p.div_(z), (t.sub_(lse) if owned else t - lse).clamp_min_(_FMIN)


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """sum(a * b, -1) for (N, V) tensors as a batched matmul: no (N, V) temporary."""
    return (a.unsqueeze(-2) @ b.unsqueeze(-1)).reshape(a.shape[:-1])


def _forward_kl(s: Tensor, t: Tensor, need_grad: bool, owned: bool) -> tuple[Tensor, Tensor | None]:
    """KL(p_t || p_s) per row and its gradient p_s - p_t w.r.t. s (both (N, V) fp32).

    Written as sum p_t log p_t - sum p_t log p_s so that log p_s can reuse log p_t's buffer: at
    most s, t, p_t and one more (N, V) buffer are alive at once (the value differs from the
    one-pass form by fp32 rounding, ~1e-6 per token; the gradient is exact).
    """
    p_t, log_t = _teacher_probs(t, owned)
    neg_entropy = _rowdot(p_t, log_t)
    log_s = _log_softmax_into(s, out=log_t)
    loss = neg_entropy - _rowdot(p_t, log_s)
    return loss, (log_s.exp_().sub_(p_t) if need_grad else None)


class LogitLoss(nn.Module):
    """Base of the logit losses: temperature, fp32, masking, T^2 scaling, fused gradient.

    Subclasses implement `per_token`; `forward` is shared.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def per_token(self, s: Tensor, t: Tensor, need_grad: bool, owned: bool) -> tuple[Tensor, Tensor | None]:
        """(N, V) fp32 tempered logits -> ((N,) loss, (N, V) d loss / d s or None).

        s is read-only; t may be overwritten when `owned` (it is a private copy or consumed).
        """
        raise NotImplementedError

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None,
                consume_teacher: bool = False) -> tuple[Tensor, int]:
        """student_logits, teacher_logits: (N, V), any float dtype; mask: (N,) bool, True = keep.

        Returns (sum of the per-token loss over kept tokens: fp32 scalar, number of kept tokens).
        consume_teacher=True lets the loss overwrite `teacher_logits` in place (one (N, V) buffer
        less; `chunked_logit_loss` does this with the teacher chunks it creates).
        """
        if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
            raise ValueError(f"expected two (N, V) tensors, got {tuple(student_logits.shape)} "
                             f"and {tuple(teacher_logits.shape)}")
        temp = self.temperature
        keep = None if mask is None else mask.to(device=student_logits.device, dtype=torch.bool)

        def kernel(student: Tensor, need_grad: bool) -> tuple[Tensor, Tensor | None]:
            s, t = student.float(), teacher_logits.detach().float()
            if temp != 1.0:  # the common T = 1 fp32 case makes no (N, V) copies here
                s, t = s / temp, t / temp
            # a private copy (dtype cast or temperature) may be overwritten in place
            owned = consume_teacher or teacher_logits.dtype != torch.float32 or temp != 1.0
            loss, grad = self.per_token(s, t, need_grad, owned)
            if keep is not None:  # zero masked rows rather than index them: no (N, V) row copies
                loss = loss.masked_fill(~keep, 0.0)
                grad = None if grad is None else grad.masked_fill_(~keep[:, None], 0.0)
            # d/ds [T^2 L(s / T)] = T * L'(s / T)
            grad = None if grad is None else grad.mul_(temp).to(student.dtype)
            return loss.sum() * (temp * temp), grad

        count = len(student_logits) if keep is None else int(keep.sum())
        return _Fused.apply(student_logits, kernel), count


class ForwardKL(LogitLoss):
    """KL(teacher || student) = sum_v p_t (log p_t - log p_s): mass-covering, the default."""

    def per_token(self, s: Tensor, t: Tensor, need_grad: bool, owned: bool) -> tuple[Tensor, Tensor | None]:
        return _forward_kl(s, t, need_grad, owned)


class ReverseKL(LogitLoss):
    """KL(student || teacher) = sum_v p_s (log p_s - log p_t): mode-seeking."""

    def per_token(self, s: Tensor, t: Tensor, need_grad: bool, owned: bool) -> tuple[Tensor, Tensor | None]:
        log_s = _log_softmax_into(s, out=torch.empty_like(s))
        lse = torch.logsumexp(t, -1, keepdim=True)
        d = (t.sub_(lse) if owned else t - lse).clamp_min_(_FMIN).neg_().add_(log_s)  # log p_s - log p_t
        p_s = log_s.exp_()
        loss = _rowdot(p_s, d)
        # d KL / d s_j = p_s_j (d_j - KL)
        return loss, (d.sub_(loss[:, None]).mul_(p_s) if need_grad else None)


class GeneralizedJSD(LogitLoss):
    """beta * KL(p_t || m) + (1 - beta) * KL(p_s || m), m = beta * p_t + (1 - beta) * p_s.

    beta in (0, 1); beta = 0.5 is the ordinary Jensen-Shannon divergence. log m is computed as
    logaddexp(log p_t + log beta, log p_s + log(1 - beta)), which never underflows to log 0.
    """

    def __init__(self, beta: float = 0.5, temperature: float = 1.0) -> None:
        super().__init__(temperature)
        if not 0.0 < beta < 1.0:
            raise ValueError(f"beta must be in (0, 1), got {beta}")
        self.beta = float(beta)

    def per_token(self, s: Tensor, t: Tensor, need_grad: bool, owned: bool) -> tuple[Tensor, Tensor | None]:
        b = self.beta
        p_t, log_t = _teacher_probs(t, owned)
        log_s = _log_softmax_into(s, out=torch.empty_like(s))
        log_m = torch.add(log_s, math.log1p(-b))  # shift log_t in place and back: no temporary
        log_m = torch.logaddexp(log_m, log_t.add_(math.log(b)), out=log_m)
        kl_t = _rowdot(p_t, log_t.sub_(math.log(b)).sub_(log_m))
        del p_t, log_t
        u = log_m.neg_().add_(log_s)  # log p_s - log m
        p_s = log_s.exp_()
        kl_s = _rowdot(p_s, u)
        # dL/dp_s = (1 - beta)(log p_s - log m) (the m-terms cancel); through the softmax:
        # dL/ds_j = (1 - beta) p_s_j (u_j - sum_v p_s u) = (1 - beta) p_s_j (u_j - KL(p_s || m)).
        grad = u.sub_(kl_s[:, None]).mul_(p_s).mul_(1.0 - b) if need_grad else None
        return b * kl_t + (1.0 - b) * kl_s, grad


class TopKForwardKL(LogitLoss):
    """Forward KL on the teacher's top-k tokens only (k is clamped to the vocabulary size).

    Both distributions are renormalised over the same k indices (teacher's top-k of its tempered
    logits): the loss is then a proper KL between two distributions on that support, it is 0 when
    the student's *relative* preferences among those tokens match the teacher's, and it does not
    also push the student's total mass onto the top-k set (which using the student's full-vocab
    log-probs would do, with a loss that never reaches 0). With k = V it equals ForwardKL.
    """

    def __init__(self, k: int, temperature: float = 1.0) -> None:
        super().__init__(temperature)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = int(k)

    def per_token(self, s: Tensor, t: Tensor, need_grad: bool, owned: bool) -> tuple[Tensor, Tensor | None]:
        top, idx = t.topk(min(self.k, t.shape[-1]), dim=-1)
        loss, grad_k = _forward_kl(s.gather(-1, idx), top, need_grad, owned=True)  # top is a fresh (N, k)
        return loss, (torch.zeros_like(s).scatter_(-1, idx, grad_k) if need_grad else None)


class NextTokenCE(nn.Module):
    """Cross entropy of the student against labels; labels == -100 are ignored (fused like the KD losses).

    forward(student_logits: (N, V), labels: (N,) int64, already shifted) -> (fp32 sum, count).
    """

    def forward(self, student_logits: Tensor, labels: Tensor) -> tuple[Tensor, int]:
        valid = labels != IGNORE_INDEX
        target = labels.masked_fill(~valid, 0)[:, None]

        def kernel(student: Tensor, need_grad: bool) -> tuple[Tensor, Tensor | None]:
            s = student.float()
            log_s = _log_softmax_into(s, out=torch.empty_like(s))
            total = -(log_s.gather(-1, target).squeeze(-1) * valid).sum()
            if not need_grad:
                return total, None
            grad = log_s.exp_().scatter_add_(-1, target, torch.full_like(target, -1.0, dtype=log_s.dtype))
            return total, grad.mul_(valid[:, None]).to(student.dtype)  # softmax - one_hot, 0 if ignored

        return _Fused.apply(student_logits, kernel), int(valid.sum())


class HiddenStateLoss(nn.Module):
    """Intermediate-state loss between mapped student / teacher hidden states.

    kind "cosine": 1 - cos(proj(s), t) over the hidden dim, mean over (masked-in) tokens.
    kind "mse":    (proj(s) - t)^2, mean over (masked-in) tokens and the hidden dim.
    One projection per mapped pair, `nn.Linear(student_dims[i], teacher_dim, bias=False)`. Where
    a student dim equals teacher_dim there is no projection (nn.Identity): a depth-pruned student
    keeps the teacher's residual basis, so a fresh learned map would only add noise. When the
    student's hidden channels are a subset of the teacher's (width pruning), pass
    `kept_channels` (teacher channel index of each student channel) to initialise every
    projection as that embedding instead of the default random init.

    Balancing: the training loop adds ``hidden_weight * balance * loss`` to the logit loss, where the
    buffer `balance` (detached, saved with the training state so a resumed run continues exactly) is
    `balance_weight` of the *global* sums of the previous optimizer step: the logit and hidden losses
    summed over every micro-batch and process, so that the weighted hidden term tracks the logit
    loss's size. The first step measures its own global batch with a no-grad forward pass. Why not
    a ratio per micro-batch: it would weigh each micro-batch differently, so the gradient would
    depend on how a global batch is split (8 x 1, 2 x 4 and 1 x 8 must give the same step).
    """

    def __init__(self, kind: str, student_dims: Sequence[int], teacher_dim: int,
                 kept_channels: Sequence[int] | None = None) -> None:
        super().__init__()
        if kind not in ("cosine", "mse"):
            raise ValueError(f"kind must be 'cosine' or 'mse', got {kind!r}")
        self.kind = kind
        self.projections = nn.ModuleList(
            nn.Identity() if d == teacher_dim else nn.Linear(d, teacher_dim, bias=False) for d in student_dims)
        for proj in self.projections if kept_channels is not None else []:
            if isinstance(proj, nn.Linear):
                if len(kept_channels) != proj.in_features:
                    raise ValueError(f"kept_channels has {len(kept_channels)} entries, expected {proj.in_features}")
                with torch.no_grad():  # W[kept[i], i] = 1: proj(s) places s in the teacher's channels
                    proj.weight.zero_()[list(kept_channels), range(proj.in_features)] = 1.0
        self.register_buffer("balance", torch.tensor(float("nan")))  # nan: not measured yet

    def forward(self, student_states: Sequence[Tensor], teacher_states: Sequence[Tensor],
                mask: Tensor | None = None) -> Tensor:
        """student_states[i]: (B, S, Hs_i); teacher_states[i]: (B, S, Ht); mask: (B, S) bool.

        Returns the fp32 scalar mean over pairs of the per-pair loss.
        """
        if not len(student_states) == len(teacher_states) == len(self.projections):
            raise ValueError(f"got {len(student_states)} student / {len(teacher_states)} teacher states "
                             f"for {len(self.projections)} projections")
        losses = []
        for proj, s, t in zip(self.projections, student_states, teacher_states):
            if isinstance(proj, nn.Linear):  # matmul in the projection's dtype, loss in fp32
                s = proj(s.to(proj.weight.dtype))
            s, t = s.float(), t.float()
            if self.kind == "cosine":
                per_token = 1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)
            else:
                per_token = (s - t).pow(2).mean(-1)
            if mask is None:
                losses.append(per_token.mean())
            else:  # masked mean; an all-masked batch gives 0 rather than nan
                keep = mask.to(per_token.dtype)
                losses.append((per_token * keep).sum() / keep.sum().clamp_min(1.0))
        return torch.stack(losses).mean()


def map_layers(num_student_layers: int, num_teacher_layers: int, kept_layers: Sequence[int] | None = None,
               include_embedding: bool = False) -> list[tuple[int, int]]:
    """(student, teacher) index pairs into `ArchAdapter.capture_layer_states` lists, one per student layer.

    Index 0 is the embedding output and index i the output of layer i - 1, before the final norm on
    both sides (HF's `output_hidden_states` differs: its last entry is after the final norm, which
    would pair a normed student state with an un-normed teacher one). With `kept_layers` (the 0-based
    teacher layers the pruned student kept, in order) student layer j maps to teacher layer
    kept_layers[j]; otherwise layers are spread evenly, student layer j -> teacher output
    round((j + 1) * Lt / Ls), so the last maps to the last. `include_embedding` prepends (0, 0).
    """
    if num_student_layers < 1 or num_teacher_layers < 1:
        raise ValueError("layer counts must be >= 1")
    if kept_layers is not None:
        kept = list(kept_layers)
        if len(kept) != num_student_layers or any(not 0 <= k < num_teacher_layers for k in kept) \
                or any(a >= b for a, b in itertools.pairwise(kept)):
            raise ValueError(f"kept_layers must be {num_student_layers} increasing teacher layer indices "
                             f"in [0, {num_teacher_layers}), got {kept}")
        pairs = [(j + 1, k + 1) for j, k in enumerate(kept)]
    else:  # integer round-half-up of (j + 1) * Lt / Ls
        s, t = num_student_layers, num_teacher_layers
        pairs = [(j, (2 * j * t + s) // (2 * s)) for j in range(1, s + 1)]
    return [(0, 0)] + pairs if include_embedding else pairs


def balance_weight(logit_loss: Tensor, other_loss: Tensor, eps: float = 1e-8) -> Tensor:
    """Dynamic balance: detached weight w = |logit_loss| / |other_loss| so w * other matches it.

    Usage: ``total = kd + w * inter`` with w computed once per optimizer step from global means (see
    `HiddenStateLoss`), never per micro-batch. The weight carries no gradient, so `inter` still steers
    its own gradient direction but its magnitude tracks the logit loss.
    """
    return (logit_loss.detach().abs() / other_loss.detach().abs().clamp_min(eps)).float()
