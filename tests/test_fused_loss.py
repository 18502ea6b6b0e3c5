"""The fused chunked loss (gradients computed in forward): same values and gradients, no head recompute."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minitron.arch import get_adapter
from minitron.distill import (
    ForwardKL,
    GeneralizedJSD,
    NextTokenCE,
    ReverseKL,
    TopKForwardKL,
    chunked_cross_entropy,
    chunked_logit_loss,
)
from minitron.distill.steps import fused_head_params, labels_for
from tests.tiny import VOCAB_SIZE, tiny_model

N, V, HS, HT = 12, 40, 8, 12
LOSSES = {"fkl": lambda: ForwardKL(temperature=2.0), "rkl": lambda: ReverseKL(temperature=2.0),
          "jsd": lambda: GeneralizedJSD(0.3, temperature=2.0), "topk": lambda: TopKForwardKL(7, temperature=2.0)}


def softcap(x: torch.Tensor) -> torch.Tensor:
    return 10.0 * torch.tanh(x / 10.0)


class CountedHead:
    """A head callable that counts its calls (softcapped linear head)."""

    def __init__(self, linear: nn.Linear) -> None:
        self.linear, self.calls = linear, 0

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return softcap(self.linear(hidden))


def setup(seed: int = 0):
    torch.manual_seed(seed)
    student_head, teacher_head = nn.Linear(HS, V), nn.Linear(HT, V, bias=False)  # student bias: 2 params
    student_hidden = torch.randn(N, HS, requires_grad=True)
    teacher_hidden = torch.randn(N, HT)
    mask = torch.ones(N, dtype=torch.bool)
    mask[[2, 7]] = False
    labels = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(1))
    labels[[0, 7]] = -100  # token 2: CE only, token 0: KD only, token 7: neither (dropped: 11 rows left)
    return student_head, teacher_head, student_hidden, teacher_hidden, mask, labels


def grads(*tensors: torch.Tensor) -> list[torch.Tensor]:
    out = [t.grad.clone() for t in tensors]
    for t in tensors:
        t.grad = None
    return out


@pytest.mark.parametrize("name", ["fkl", "rkl", "jsd", "topk"])
@pytest.mark.parametrize("chunk_size", [5, 100])
def test_fused_equals_unchunked_values_and_gradients(name, chunk_size):
    student_head, teacher_head, sh, th, mask, labels = setup()
    loss = LOSSES[name]()
    params = list(student_head.parameters())
    ref_kd, _ = loss(softcap(student_head(sh)), teacher_head(th).detach(), mask)
    ref_ce, _ = NextTokenCE()(softcap(student_head(sh)), labels)
    (ref_kd / 10 + 0.3 * ref_ce / 10).backward()
    ref = grads(sh, *params)

    # Upstream gradients of kd_sum and ce_sum in any ratio (one gradient set per sum) ...
    counted = CountedHead(student_head)
    out = chunked_logit_loss(loss, sh, th, counted, teacher_head, mask=mask, chunk_size=chunk_size, labels=labels,
                             ce_weight=0.3, head_params=params)
    torch.testing.assert_close(out.kd_sum, ref_kd)
    torch.testing.assert_close(out.ce_sum, ref_ce)
    (out.kd_sum / 10 + 0.3 * out.ce_sum / 10).backward()
    for got, expected in zip(grads(sh, *params), ref):
        torch.testing.assert_close(got, expected)
    # ... or promised to flow as through out.mean(ce_weight): one combined gradient set.
    out = chunked_logit_loss(loss, sh, th, counted, teacher_head, mask=mask, chunk_size=chunk_size, labels=labels,
                             ce_weight=0.3, head_params=params, backward_through_mean=True)
    (out.mean(0.3) * 2.0).backward()
    for got, expected in zip(grads(sh, *params), ref):
        torch.testing.assert_close(got, 2.0 * expected)
    assert teacher_head.weight.grad is None
    assert counted.calls == 2 * -(-11 // chunk_size)  # one call per chunk of the 11 used rows, none in backward


def test_fused_does_not_recompute_the_heads_in_backward():
    student_head, teacher_head, sh, th, _, _ = setup()
    student, teacher = CountedHead(student_head), CountedHead(teacher_head)
    out = chunked_logit_loss(ForwardKL(), sh, th, student, teacher, chunk_size=4,
                             head_params=list(student_head.parameters()))
    assert (student.calls, teacher.calls) == (3, 3)  # 12 rows, chunks of 4
    out.kd_sum.backward()
    assert (student.calls, teacher.calls) == (3, 3)  # backward adds no head call
    fused = grads(sh, student_head.weight, student_head.bias)
    # the checkpoint path gives the same gradients, but calls each head again per chunk in backward
    out = chunked_logit_loss(ForwardKL(), sh, th, student, teacher, chunk_size=4)
    out.kd_sum.backward()
    assert (student.calls, teacher.calls) == (9, 9)
    for got, expected in zip(fused, grads(sh, student_head.weight, student_head.bias)):
        torch.testing.assert_close(got, expected)


def test_fused_cross_entropy_matches_full_logits():
    student_head, _, sh, _, _, labels = setup()
    params = list(student_head.parameters())
    F.cross_entropy(softcap(student_head(sh)), labels, reduction="sum").backward()
    ref = grads(sh, *params)
    counted = CountedHead(student_head)
    total, count = chunked_cross_entropy(sh, counted, labels, 5, head_params=params)
    torch.testing.assert_close(total, F.cross_entropy(softcap(student_head(sh)), labels, reduction="sum"))
    (total * 3.0).backward()
    assert count == 10 and counted.calls == 3
    for got, expected in zip(grads(sh, *params), ref):
        torch.testing.assert_close(got, 3.0 * expected)


@pytest.mark.parametrize("family", ["gemma2", "qwen2"])
def test_tied_embedding_gradient_matches_the_full_model(family):
    """Tied LM head = embedding: the head's gradient adds into the embedding's own (gemma2 also soft-caps)."""
    torch.manual_seed(0)
    student, teacher = tiny_model(family).train(), tiny_model(family)
    adapter = get_adapter(student)
    embedding = student.get_input_embeddings().weight
    assert [p is embedding for p in adapter.lm_head_parameters(student) + fused_head_params(student)] == [True] * 2
    input_ids = torch.randint(0, VOCAB_SIZE, (2, 9), generator=torch.Generator().manual_seed(3))
    labels = labels_for(input_ids).reshape(-1)
    with torch.no_grad():
        t_logits = teacher(input_ids).logits.reshape(-1, VOCAB_SIZE)
        t_hidden = adapter.base_model(teacher)(input_ids).last_hidden_state.reshape(len(labels), -1)
    s_logits = student(input_ids).logits.reshape(-1, VOCAB_SIZE)
    (ForwardKL()(s_logits, t_logits)[0] / len(labels) + 0.5 * NextTokenCE()(s_logits, labels)[0] / 16).backward()
    params = [p for p in student.parameters() if p.grad is not None]
    ref = grads(*params)
    s_hidden = adapter.base_model(student)(input_ids).last_hidden_state.reshape(len(labels), -1)
    out = chunked_logit_loss(ForwardKL(), s_hidden, t_hidden, lambda h: adapter.logits_from_hidden(student, h),
                             lambda h: adapter.logits_from_hidden(teacher, h), chunk_size=4, labels=labels,
                             ce_weight=0.5, head_params=adapter.lm_head_parameters(student),
                             backward_through_mean=True)
    assert out.ce_count == 16
    out.mean(0.5).backward()
    for got, expected in zip(grads(*params), ref):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_autocast_bf16_fused_is_as_accurate_as_the_checkpoint_path():
    student_head, teacher_head, sh, th, mask, labels = setup()
    params = list(student_head.parameters())
    results = []
    for head_params, precision in ((params, torch.bfloat16), (None, torch.bfloat16), (None, torch.float32)):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == torch.bfloat16):
            out = chunked_logit_loss(ForwardKL(), sh, th, student_head, teacher_head, mask=mask, chunk_size=5,
                                     labels=labels, ce_weight=1.0, head_params=head_params)
        (out.kd_sum + out.ce_sum).backward()
        results.append([out.kd_sum.detach(), out.ce_sum.detach(), *grads(sh, *params)])
    fused, checkpointed, exact = results
    assert fused[2].dtype == sh.dtype and fused[3].dtype == torch.float32
    torch.testing.assert_close(fused[:2], checkpointed[:2], rtol=0, atol=0)  # same forward computation
    # Gradients differ from the checkpoint path's by bf16 rounding only (the order of sums differs):
    # no further from the fp32 result than the checkpoint path's are.
    for f, c, e in zip(fused[2:], checkpointed[2:], exact[2:]):
        assert (f - e).abs().max() <= 2 * (c - e).abs().max() + 1e-3 * e.abs().max()


def test_fused_without_grad_and_refusals():
    student_head, teacher_head, sh, th, mask, labels = setup()
    params = list(student_head.parameters())
    with torch.no_grad():
        out = chunked_logit_loss(ForwardKL(), sh, th, student_head, teacher_head, mask=mask, head_params=params)
    assert not out.kd_sum.requires_grad
    torch.testing.assert_close(out.kd_sum, ForwardKL()(student_head(sh), teacher_head(th), mask)[0])
    with pytest.raises(ValueError, match="not in head_params"):  # the bias would silently get no gradient
        chunked_logit_loss(ForwardKL(), sh, th, student_head, teacher_head, head_params=[student_head.weight])
    out = chunked_logit_loss(ForwardKL(), sh, th, student_head, teacher_head, mask=mask, labels=labels,
                             ce_weight=1.0, head_params=params, backward_through_mean=True)
    with pytest.raises(RuntimeError, match="promised ratio"):  # only kd_sum used: not as through mean()
        out.kd_sum.backward()
    out = chunked_logit_loss(ForwardKL(), sh, th, student_head, teacher_head, mask=torch.zeros(N, dtype=torch.bool),
                             head_params=params)
    assert out.count == 0 and out.kd_sum.item() == 0.0
    out.mean().backward()  # still connected to the graph
