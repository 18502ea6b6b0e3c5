"""Validation during distillation: held-out LM loss of student and teacher, and the student's KL to it."""
from __future__ import annotations

import torch
from torch import nn

from ..config import DistillConfig
from .chunked import chunked_cross_entropy, chunked_logit_loss
from .dist import DistEnv, all_reduce_sum
from .losses import ForwardKL
from .sharding import TeacherModule, release_teacher
from .steps import labels_for
from .vocab import logits_head, shared_vocab_size
from ..arch.base import text_config


@torch.no_grad()
def validate(train_module: nn.Module, student: nn.Module, teacher: nn.Module | None, blocks: torch.Tensor,
             config: DistillConfig, env: DistEnv, *, teacher_module: nn.Module | None = None) -> dict:
    """Each rank scores its share of the held-out blocks; sums are reduced over ranks.

    The student runs through `train_module` (the DDP/FSDP-wrapped module), which FSDP needs to gather
    its shards, and the teacher through `teacher_module` (`sharding.TeacherModule`, sharded or not).
    Every rank runs the same number of forwards (FSDP2 gathers in each, and a rank that stopped early
    would leave the others waiting): a rank whose share runs out scores a block again and drops its sums.
    """
    was_training = student.training
    student.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # student CE, teacher CE, KL, tokens
    batch = config.micro_batch_size
    share = blocks[env.rank::env.world_size]
    forwards = -(-len(blocks[0::env.world_size]) // batch)  # rank 0 holds the largest share
    kl = ForwardKL(temperature=1.0)
    teacher_module = teacher_module or (TeacherModule(teacher) if teacher is not None else None)
    for index in range(forwards):
        input_ids = share[index * batch:(index + 1) * batch]
        padding = len(input_ids) == 0
        input_ids = (blocks[:1] if padding else input_ids).to(env.device)
        batch_sums = _batch_sums(train_module, student, teacher, teacher_module, input_ids, config, kl)
        sums += 0.0 if padding else batch_sums
    student.train(was_training)
    sums = all_reduce_sum(sums, env)
    tokens = max(float(sums[3]), 1.0)
    result = {"val_student_loss": float(sums[0]) / tokens}
    if teacher is not None:
        result |= {"val_teacher_loss": float(sums[1]) / tokens, "val_kl": float(sums[2]) / tokens}
    return result


def _batch_sums(train_module, student, teacher, teacher_module, input_ids, config: DistillConfig, kl) -> torch.Tensor:
    labels = labels_for(input_ids).reshape(-1)
    mask = labels != -100
    s_hidden = train_module(input_ids).last_hidden_state
    s_hidden = s_hidden.reshape(-1, s_hidden.shape[-1])
    if teacher is None:
        student_head = logits_head(student, text_config(student.config).vocab_size)
        ce_sum, count = chunked_cross_entropy(s_hidden, student_head, labels, config.chunk_size)
        return torch.tensor([float(ce_sum), 0.0, 0.0, count], dtype=torch.float64)
    t_hidden = teacher_module(input_ids).last_hidden_state
    t_hidden = t_hidden.reshape(-1, t_hidden.shape[-1])
    vocab_size = shared_vocab_size(student, teacher)  # as in training: the rows both models have
    student_head, teacher_head = logits_head(student, vocab_size), logits_head(teacher, vocab_size)
    out = chunked_logit_loss(kl, s_hidden, t_hidden, student_head, teacher_head, mask=mask,
                             chunk_size=config.chunk_size, labels=labels, ce_weight=1.0)
    teacher_ce, _ = chunked_cross_entropy(t_hidden, teacher_head, labels, config.chunk_size)
    release_teacher(teacher_module)
    return torch.tensor([float(out.ce_sum), float(teacher_ce), float(out.kd_sum), out.count], dtype=torch.float64)
