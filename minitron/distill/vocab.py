"""Teacher and student must share a tokenizer: logit distillation compares their predictions id by id.

Tokenizers are compared by content (every token's id, and the special tokens), not by the size of the
models' embedding tables: unrelated tokenizers can have the same size (Llama-2 and Mistral-7B: 32,000
each), and one tokenizer can sit in tables padded to different sizes (Qwen2.5-0.5B: 151,936 rows,
Qwen2.5-7B: 152,064). With the same tokenizer the losses use the rows both models have
(`shared_vocab_size`): every id the tokenizer produces is among them (checked), and a row past them is
padding that only one of the models has, with no counterpart to distil. Rows both models have are kept
even past the tokenizer's last id, so a pair padded alike distils exactly as it always did.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from ..arch import logits_adapter
from ..errors import MinitronError
from ..arch.base import text_config

# The pad token is left out: packed blocks hold no padding, and fine-tuned copies often add one.
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token")


def tokenizer_difference(student_tokenizer, teacher_tokenizer) -> str | None:
    """What differs between two tokenizers, in words; None when they are the same."""
    student_vocab, teacher_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if student_vocab != teacher_vocab:
        differing = [token for token in student_vocab.keys() | teacher_vocab.keys()
                     if student_vocab.get(token) != teacher_vocab.get(token)]
        example = min(differing, key=lambda token: (student_vocab.get(token, len(student_vocab)), token))
        return (f"{len(differing)} tokens differ, e.g. {example!r} is id {student_vocab.get(example)} in the "
                f"student's and {teacher_vocab.get(example)} in the teacher's")
    for name in SPECIAL_TOKENS:
        student_token, teacher_token = getattr(student_tokenizer, name, None), getattr(teacher_tokenizer, name, None)
        if student_token != teacher_token:
            return f"the {name.replace('_', ' ')} differs: {student_token!r} in the student's, {teacher_token!r} in the teacher's"
    return None


def check_same_tokenizer(student_tokenizer, teacher_tokenizer) -> None:
    difference = tokenizer_difference(student_tokenizer, teacher_tokenizer)
    if difference is not None:
        raise MinitronError(
            f"the teacher's tokenizer is not the student's ({difference}). Logit distillation compares the two "
            "models' predictions token id by token id, so both must use the same tokenizer: distil from a "
            "teacher of the student's own family, or fine-tune without a teacher (minitron finetune)")


def check_vocabularies(student: nn.Module, teacher: nn.Module, tokenizer=None, teacher_tokenizer=None) -> None:
    """Refuse a teacher whose vocabulary is not the student's, before any work.

    With both tokenizers, they are compared and their ids must fit both models' tables (padding may
    differ); without them, only equal table sizes can be trusted.
    """
    student_rows, teacher_rows = text_config(student.config).vocab_size, text_config(teacher.config).vocab_size
    if tokenizer is None or teacher_tokenizer is None:
        if student_rows != teacher_rows:
            raise MinitronError(
                f"teacher and student vocabularies differ in size ({teacher_rows} vs {student_rows} rows): pass "
                "both tokenizers (tokenizer=..., teacher_tokenizer=...) so that distill can check that they are "
                "the same tokenizer in tables padded differently")
        return
    check_same_tokenizer(tokenizer, teacher_tokenizer)
    ids = max(tokenizer.get_vocab().values()) + 1
    for role, rows in (("student", student_rows), ("teacher", teacher_rows)):
        if rows < ids:
            raise MinitronError(f"the tokenizer has {ids} token ids but the {role} model only {rows} embedding rows: "
                                "its config and weights do not belong to this tokenizer")


def shared_vocab_size(student: nn.Module, teacher: nn.Module) -> int:
    """Rows of the two LM heads that the losses compare: the ones both models have."""
    return min(text_config(student.config).vocab_size, text_config(teacher.config).vocab_size)


def logits_head(model: nn.Module, vocab_size: int) -> Callable[[Tensor], Tensor]:
    """(n, H) final hidden states -> (n, vocab_size) logits: the model's head, cut to the shared rows.

    The cut is a view of the head's output (no copy); the rows past it cost their share of the head's
    matmul, a fraction (padding / vocabulary) of it, and get zero gradient.
    """
    adapter = logits_adapter(model)
    if vocab_size == text_config(model.config).vocab_size:
        return lambda hidden: adapter.logits_from_hidden(model, hidden)
    return lambda hidden: adapter.logits_from_hidden(model, hidden)[..., :vocab_size]
