"""One training step's losses: KD on logits (chunked), optional CE, optional hidden-state losses."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..arch import logits_adapter
from ..config import DistillConfig
from .chunked import chunked_cross_entropy, chunked_logit_loss
from .losses import (
    IGNORE_INDEX,
    ForwardKL,
    GeneralizedJSD,
    HiddenStateLoss,
    ReverseKL,
    TopKForwardKL,
    balance_weight,
    map_layers,
)
from .vocab import logits_head, shared_vocab_size


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

    Its forward returns the student's final hidden states (and all hidden states when asked): the LM
    head runs later, chunk by chunk, inside the loss.
    """

    def __init__(self, student: nn.Module, hidden_loss: HiddenStateLoss | None) -> None:
        super().__init__()
        self.student = student
        self.hidden_loss = hidden_loss if hidden_loss is not None else nn.Identity()

    def forward(self, input_ids: torch.Tensor, output_hidden_states: bool = False):
        base = logits_adapter(self.student).base_model(self.student)
        return base(input_ids=input_ids, use_cache=False, output_hidden_states=output_hidden_states)


def build_hidden_loss(config: DistillConfig, student: nn.Module, teacher: nn.Module,
                      kept_layers: list[int] | None) -> tuple[HiddenStateLoss | None, list[tuple[int, int]]]:
    if config.hidden_loss == "none":
        return None, []
    pairs = map_layers(student.config.num_hidden_layers, teacher.config.num_hidden_layers, kept_layers,
                       include_embedding=True)
    loss = HiddenStateLoss(config.hidden_loss, [student.config.hidden_size] * len(pairs), teacher.config.hidden_size)
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
                        layer_pairs: list[tuple[int, int]], hidden_loss: HiddenStateLoss | None) -> StepLosses:
    want_states = hidden_loss is not None
    student_out = train_module(input_ids, output_hidden_states=want_states)
    labels = labels_for(input_ids).reshape(-1)
    head_params = fused_head_params(student)
    s_hidden = student_out.last_hidden_state.reshape(-1, student_out.last_hidden_state.shape[-1])
    if logit_loss is None:  # plain next-token training (teacher correction / CE baseline)
        student_head = logits_head(student, student.config.vocab_size)
        ce_sum, count = chunked_cross_entropy(s_hidden, student_head, labels, config.chunk_size,
                                              head_params=head_params)
        ce = ce_sum / max(count, 1)
        return StepLosses(total=ce, logit=0.0, ce=float(ce.detach()), hidden=0.0)
    with torch.no_grad():
        teacher_out = logits_adapter(teacher).base_model(teacher)(input_ids=input_ids, use_cache=False,
                                                                  output_hidden_states=want_states)
    t_hidden = teacher_out.last_hidden_state.reshape(-1, teacher_out.last_hidden_state.shape[-1])
    vocab_size = shared_vocab_size(student, teacher)  # tables padded differently: compare the shared rows
    out = chunked_logit_loss(logit_loss, s_hidden, t_hidden, logits_head(student, vocab_size),
                             logits_head(teacher, vocab_size), chunk_size=config.chunk_size,
                             labels=labels if config.ce_weight > 0 else None, ce_weight=config.ce_weight,
                             head_params=head_params, backward_through_mean=True)  # total weighs the sums as mean()
    kd = out.kd_sum / max(out.count, 1)
    total, ce_value, hidden_value = kd, 0.0, 0.0
    if config.ce_weight > 0:
        ce = out.ce_sum / max(out.ce_count, 1)
        total = total + config.ce_weight * ce
        ce_value = float(ce.detach())
    if hidden_loss is not None:
        s_states = [student_out.hidden_states[s] for s, _ in layer_pairs]
        t_states = [teacher_out.hidden_states[t] for _, t in layer_pairs]
        hidden = hidden_loss(s_states, t_states)
        total = total + config.hidden_weight * balance_weight(kd, hidden) * hidden
        hidden_value = float(hidden.detach())
    return StepLosses(total=total, logit=float(kd.detach()), ce=ce_value, hidden=hidden_value)


def fused_head_params(student: nn.Module) -> list[nn.Parameter] | None:
    """The student's LM-head parameters, which switch the chunked losses to their fused path (no head
    recompute in backward), or None for the checkpoint path when any part of the student is FSDP2-sharded.

    Why not under FSDP2: it gathers the head's weight in a forward pre-hook and reduce-scatters the
    gradient from hooks on the head's autograd graph into a sharded DTensor `.grad`. The fused loss
    differentiates the head inside the forward pass with `torch.autograd.grad`, which fills no `.grad`
    for those hooks to reduce, and it would hand backward a gradient of the gathered weight rather than
    of the shard. DDP is fine: its hooks fire when backward accumulates the returned gradient into `.grad`.
    """
    if torch.distributed.is_available():
        from torch.distributed.fsdp import FSDPModule
        if any(isinstance(module, FSDPModule) for module in student.modules()):
            return None
    return logits_adapter(student).lm_head_parameters(student)
