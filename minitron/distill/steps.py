"""One training step's losses: KD on logits (chunked), optional CE, optional hidden-state losses."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from ..arch import get_adapter, logits_adapter
from ..config import DistillConfig
from .chunked import chunked_cross_entropy, chunked_logit_loss
from .sharding import TeacherModule, release_teacher
from .losses import (
    IGNORE_INDEX,
    ForwardKL,
    GeneralizedJSD,
    HiddenStateLoss,
    ReverseKL,
    TopKForwardKL,
    map_layers,
)
from .vocab import logits_head, shared_vocab_size
from ..arch.base import text_config


def make_logit_loss(config: DistillConfig) -> nn.Module | None:
    if config.loss == "ce":
        return None
    if config.loss == "forward_kl":
        return ForwardKL(temperature=config.temperature)
    if config.loss == "reverse_kl":
        return ReverseKL(temperature=config.temperature)
    if config.loss == "jsd":
        return GeneralizedJSD(beta=config.jsd_beta, temperature=config.temperature)
    return TopKForwardKL(k=config.top_k, temperature=config.temperature)


class TrainModule(nn.Module):
    """Everything that is trained (student + projections), so DDP/FSDP and the optimizer see one module.

    Its forward returns the student's base-model output, whose last_hidden_state is final-normed (the LM
    head runs later, chunk by chunk, inside the loss); with `capture_layer_states` it returns
    (output, states) with the adapter's per-layer states (`ArchAdapter.capture_layer_states`).
    """

    def __init__(self, student: nn.Module, hidden_loss: HiddenStateLoss | None) -> None:
        super().__init__()
        self.student = student
        self.hidden_loss = hidden_loss if hidden_loss is not None else nn.Identity()

    def forward(self, input_ids: torch.Tensor, capture_layer_states: bool = False):
        if not capture_layer_states:  # logits only: any causal LM will do
            return logits_adapter(self.student).base_model(self.student)(input_ids=input_ids, use_cache=False)
        adapter = get_adapter(self.student)
        # Captured inside this forward, so that DDP / FSDP see the states as outputs of the wrapped module.
        with adapter.capture_layer_states(self.student) as states:
            output = adapter.base_model(self.student)(input_ids=input_ids, use_cache=False)
        return output, states


def build_hidden_loss(config: DistillConfig, student: nn.Module, teacher: nn.Module,
                      kept_layers: list[int] | None) -> tuple[HiddenStateLoss | None, list[tuple[int, int]]]:
    if config.hidden_loss == "none":
        return None, []
    student_sizes, teacher_sizes = text_config(student.config), text_config(teacher.config)
    pairs = map_layers(student_sizes.num_hidden_layers, teacher_sizes.num_hidden_layers, kept_layers,
                       include_embedding=True)
    loss = HiddenStateLoss(config.hidden_loss, [student_sizes.hidden_size] * len(pairs), teacher_sizes.hidden_size)
    return loss, pairs


@dataclass
class StepLosses:
    total: torch.Tensor
    logit: float
    ce: float
    hidden: float


def labels_for(input_ids: torch.Tensor) -> torch.Tensor:
    """Next-token labels aligned with positions: position t predicts token t+1; the last predicts nothing."""
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[:, :-1] = input_ids[:, 1:]
    return labels


def compute_step_losses(train_module: nn.Module, student: nn.Module, teacher: nn.Module | None,
                        input_ids: torch.Tensor, config: DistillConfig, logit_loss: nn.Module | None,
                        layer_pairs: list[tuple[int, int]], hidden_loss: HiddenStateLoss | None,
                        hidden_balance: float | None = None, *,
                        teacher_module: nn.Module | None = None) -> StepLosses:
    """One micro-batch's losses; `total` is what to backpropagate (before dividing by the accumulation).

    hidden_balance: the detached weight of the hidden-state loss, the same for every micro-batch of an
    optimizer step (see `HiddenStateLoss.balance`); needed when `hidden_loss` is given.
    teacher_module: what runs the teacher's base model (`sharding.TeacherModule`, FSDP2-sharded or not);
    None: the teacher's base model itself.
    """
    want_states = hidden_loss is not None
    if want_states and hidden_balance is None:
        raise ValueError("a hidden-state loss needs its balancing weight (hidden_balance)")
    student_out = train_module(input_ids, capture_layer_states=want_states)
    if want_states:
        student_out, student_states = student_out
    labels = labels_for(input_ids).reshape(-1)
    head_params = fused_head_params(student)
    s_hidden = student_out.last_hidden_state.reshape(-1, student_out.last_hidden_state.shape[-1])
    if logit_loss is None:  # plain next-token training (teacher correction / CE baseline)
        student_head = logits_head(student, text_config(student.config).vocab_size)
        ce_sum, count = chunked_cross_entropy(s_hidden, student_head, labels, config.chunk_size,
                                              head_params=head_params)
        ce = ce_sum / max(count, 1)
        return StepLosses(total=ce, logit=0.0, ce=float(ce.detach()), hidden=0.0)
    t_adapter = get_adapter(teacher) if want_states else logits_adapter(teacher)
    teacher_module = teacher_module or TeacherModule(teacher)
    with torch.no_grad(), (t_adapter.capture_layer_states(teacher) if want_states
                           else contextlib.nullcontext([])) as teacher_states:
        teacher_out = teacher_module(input_ids)
    t_hidden = teacher_out.last_hidden_state.reshape(-1, teacher_out.last_hidden_state.shape[-1])
    vocab_size = shared_vocab_size(student, teacher)  # tables padded differently: compare the shared rows
    out = chunked_logit_loss(logit_loss, s_hidden, t_hidden, logits_head(student, vocab_size),
                             logits_head(teacher, vocab_size), chunk_size=config.chunk_size,
                             labels=labels if config.ce_weight > 0 else None, ce_weight=config.ce_weight,
                             head_params=head_params, backward_through_mean=True)  # total weighs the sums as mean()
    if head_params is not None:  # fused: backward runs no teacher head, so a sharded teacher may let go now
        release_teacher(teacher_module)
    kd = out.kd_sum / max(out.count, 1)
    total, ce_value, hidden_value = kd, 0.0, 0.0
    if config.ce_weight > 0:
        ce = out.ce_sum / max(out.ce_count, 1)
        total = total + config.ce_weight * ce
        ce_value = float(ce.detach())
    if hidden_loss is not None:
        hidden = hidden_loss([student_states[s] for s, _ in layer_pairs], [teacher_states[t] for _, t in layer_pairs])
        total = total + config.hidden_weight * hidden_balance * hidden
        hidden_value = float(hidden.detach())
    return StepLosses(total=total, logit=float(kd.detach()), ce=ce_value, hidden=hidden_value)


def fused_head_params(student: nn.Module) -> list[nn.Parameter] | None:
    """The student's LM-head parameters, which switch the chunked losses to their fused path (no head
    recompute in backward), or None for the checkpoint path while the head's parameters are FSDP2 shards.

    Call it after the student's forward. Under `sharding.wrap_student` the head belongs to the FSDP2 root,
    which stays gathered from the forward to the backward: its parameters are then plain tensors, the
    fused loss accumulates their gradient into `.grad` (as under DDP), and the root's post-backward
    reduce-scatters it. A head that is its own FSDP2 unit is sharded between chunk calls: its hooks
    gather and reduce around each call, and only the checkpoint path goes through them.
    """
    params = logits_adapter(student).lm_head_parameters(student)
    if torch.distributed.is_available():
        from torch.distributed.tensor import DTensor
        if any(isinstance(param, DTensor) for param in params):
            return None
    return params
