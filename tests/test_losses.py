"""Distillation losses against references written from the formulas, and chunked == unchunked."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Categorical, kl_divergence

from minitron.distill import (ForwardKL, GeneralizedJSD, HiddenStateLoss, NextTokenCE, ReverseKL, TopKForwardKL,
                              balance_weight, chunked_logit_loss, map_layers)

N, V = 12, 40


def logits(seed: int, n: int = N, v: int = V, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(n, v, generator=torch.Generator().manual_seed(seed)) * scale


def make_losses(T: float) -> dict:
    return {"fkl": ForwardKL(temperature=T), "rkl": ReverseKL(temperature=T),
            "jsd": GeneralizedJSD(0.5, temperature=T), "jsd_0.2": GeneralizedJSD(0.2, temperature=T),
            "topk": TopKForwardKL(7, temperature=T)}


def reference(name: str, s: torch.Tensor, t: torch.Tensor, T: float) -> torch.Tensor:
    """Per-token loss in float64, straight from the definitions (times T^2)."""
    s, t = s.double() / T, t.double() / T
    if name == "fkl":
        out = kl_divergence(Categorical(logits=t), Categorical(logits=s))
    elif name == "rkl":
        out = kl_divergence(Categorical(logits=s), Categorical(logits=t))
    elif name.startswith("jsd"):
        beta = 0.2 if name == "jsd_0.2" else 0.5
        pt, ps = t.softmax(-1), s.softmax(-1)
        m = beta * pt + (1 - beta) * ps
        out = beta * (pt * (pt / m).log()).sum(-1) + (1 - beta) * (ps * (ps / m).log()).sum(-1)
    else:  # top-7 of the teacher, both renormalised over those indices
        idx = t.topk(7, -1).indices
        pt, ps = t.gather(-1, idx).softmax(-1), s.gather(-1, idx).softmax(-1)
        out = (pt * (pt / ps).log()).sum(-1)
    return out * T * T


@pytest.mark.parametrize("T", [1.0, 2.0])
@pytest.mark.parametrize("name", ["fkl", "rkl", "jsd", "jsd_0.2", "topk"])
def test_logit_loss_matches_reference_and_mask(name, T):
    loss = make_losses(T)[name]
    s, t = logits(0), logits(1)
    mask = torch.ones(N, dtype=torch.bool)
    mask[[0, 3, 4, 11]] = False
    ref = reference(name, s, t, T)
    total, count = loss(s, t)
    assert count == N and total.dtype == torch.float32
    torch.testing.assert_close(total.double(), ref.sum(), rtol=1e-5, atol=1e-5)
    total, count = loss(s, t, mask)
    assert count == 8
    torch.testing.assert_close(total.double(), ref[mask].sum(), rtol=1e-5, atol=1e-5)
    # masked-out tokens do not influence the value at all
    s2 = s.clone()
    s2[~mask] = 1e4
    torch.testing.assert_close(loss(s2, t, mask)[0], total)


@pytest.mark.parametrize("T", [1.0, 2.0])
@pytest.mark.parametrize("name", ["fkl", "rkl", "jsd", "jsd_0.2", "topk"])
def test_fused_gradient_matches_autograd_of_reference(name, T):
    s, t = logits(8), logits(9)
    mask = torch.ones(N, dtype=torch.bool)
    mask[[1, 5]] = False
    s_ref = s.double().requires_grad_()
    reference(name, s_ref, t, T)[mask].sum().backward()
    s_fused = s.clone().requires_grad_()
    make_losses(T)[name](s_fused, t, mask)[0].backward()
    torch.testing.assert_close(s_fused.grad.double(), s_ref.grad, rtol=1e-4, atol=1e-5)
    assert torch.all(s_fused.grad[~mask] == 0)
    s_half = s.clone().requires_grad_()
    (make_losses(T)[name](s_half, t, mask)[0] * 0.5).backward()  # grad_output scales the saved gradient
    torch.testing.assert_close(s_half.grad, 0.5 * s_fused.grad)


@pytest.mark.parametrize("name", ["fkl", "rkl", "jsd", "topk"])
def test_inputs_are_left_intact_unless_consumed(name):
    s, t = logits(10), logits(11)
    s0, t0 = s.clone(), t.clone()
    for T in (1.0, 2.0):
        total, _ = make_losses(T)[name](s, t)
        assert torch.equal(s, s0) and torch.equal(t, t0)
        consumed, _ = make_losses(T)[name](s, t.clone(), consume_teacher=True)
        torch.testing.assert_close(consumed, total)


@pytest.mark.parametrize("name", ["fkl", "rkl", "jsd", "jsd_0.2", "topk"])
def test_divergence_of_identical_distributions_is_zero(name):
    s = logits(2)
    for T in (1.0, 2.0):
        total, _ = make_losses(T)[name](s, s.clone())
        assert abs(float(total)) < 1e-5


def test_topk_with_full_vocab_equals_forward_kl_and_handles_minus_inf():
    s, t = logits(3), logits(4)
    torch.testing.assert_close(TopKForwardKL(V + 5)(s, t)[0], ForwardKL()(s, t)[0])
    t[:, :5] = float("-inf")  # e.g. a vocab-padding mask on the teacher: 0 log 0 must be 0
    s = s.requires_grad_()
    for loss in (ForwardKL(), GeneralizedJSD(), TopKForwardKL(4)):
        total, _ = loss(s, t)
        total.backward()
        assert torch.isfinite(total) and torch.isfinite(s.grad).all()
        s.grad = None


def test_invalid_arguments():
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError):
            GeneralizedJSD(beta=bad)
    with pytest.raises(ValueError):
        ForwardKL(temperature=0)
    with pytest.raises(ValueError):
        TopKForwardKL(0)
    with pytest.raises(ValueError):
        ForwardKL()(logits(0), logits(1, v=V + 1))


def test_next_token_ce_equals_cross_entropy():
    s = logits(5)
    labels = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(0))
    labels[[1, 2]] = -100
    total, count = NextTokenCE()(s, labels)
    assert count == N - 2
    torch.testing.assert_close(total, F.cross_entropy(s, labels, reduction="sum"))
    torch.testing.assert_close(total / count, F.cross_entropy(s, labels))
    s1, s2 = s.clone().requires_grad_(), s.clone().requires_grad_()
    NextTokenCE()(s1, labels)[0].backward()
    F.cross_entropy(s2, labels, reduction="sum").backward()
    torch.testing.assert_close(s1.grad, s2.grad)


@pytest.mark.parametrize("name", ["fkl", "rkl", "jsd", "topk"])
def test_bf16_inputs_are_computed_in_fp32(name):
    loss = make_losses(2.0)[name]
    s, t = logits(6), logits(7)
    total_bf16, _ = loss(s.bfloat16(), t.bfloat16())
    assert total_bf16.dtype == torch.float32
    # identical to feeding the bf16 values as fp32, and close to the unrounded fp32 logits
    torch.testing.assert_close(total_bf16, loss(s.bfloat16().float(), t.bfloat16().float())[0])
    torch.testing.assert_close(total_bf16, loss(s, t)[0], rtol=3e-2, atol=3e-2)
    # the gradient comes back in bf16: the fp32 gradient (same rounded inputs) rounded once
    s_bf16, s_32 = s.bfloat16().requires_grad_(), s.bfloat16().float().requires_grad_()
    loss(s_bf16, t.bfloat16())[0].backward()
    loss(s_32, t.bfloat16().float())[0].backward()
    assert s_bf16.grad.dtype == torch.bfloat16
    torch.testing.assert_close(s_bf16.grad, s_32.grad.bfloat16())


@pytest.mark.parametrize("name", ["fkl", "rkl", "jsd", "topk", "ce"])
def test_losses_under_bf16_autocast_stay_fp32_and_exact(name):
    """Under a caller's bf16 autocast (the training loop's), the loss arithmetic must not drop to bf16."""
    s, t = logits(8, v=512), logits(9, v=512)
    labels = torch.randint(0, 512, (N,), generator=torch.Generator().manual_seed(1))
    loss = NextTokenCE() if name == "ce" else make_losses(1.0)[name]

    def value_and_grad():
        x = s.clone().requires_grad_()
        total, _ = loss(x, labels) if name == "ce" else loss(x, t)
        total.backward()
        return total.detach(), x.grad

    plain_value, plain_grad = value_and_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast_value, cast_grad = value_and_grad()
    assert cast_value.dtype == torch.float32
    torch.testing.assert_close(cast_value, plain_value, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(cast_grad, plain_grad, rtol=0, atol=0)


# ---- chunked computation -------------------------------------------------------------------

HS, HT = 8, 12


def chunk_setup(seed: int = 0):
    torch.manual_seed(seed)
    student_head, teacher_head = nn.Linear(HS, V, bias=False), nn.Linear(HT, V, bias=False)
    student_hidden = torch.randn(N, HS, requires_grad=True)
    teacher_hidden = torch.randn(N, HT)
    return student_head, teacher_head, student_hidden, teacher_hidden


@pytest.mark.parametrize("name", ["fkl", "jsd", "topk"])
@pytest.mark.parametrize("chunk_size", [1, 4, 5, N, 100])
def test_chunked_equals_unchunked_value_and_gradients(name, chunk_size):
    loss = make_losses(2.0)[name]
    student_head, teacher_head, sh, th = chunk_setup()
    softcap = lambda x: 10.0 * torch.tanh(x / 10.0)  # noqa: E731 - heads may include soft-capping
    mask = torch.ones(N, dtype=torch.bool)
    mask[[2, 7]] = False
    labels = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(1))
    labels[[0, 7]] = -100  # token 2: CE only, token 0: KD only, token 7: neither

    ref_kd, ref_count = loss(softcap(student_head(sh)), teacher_head(th).detach(), mask)
    ref_ce, ref_ce_count = NextTokenCE()(softcap(student_head(sh)), labels)
    (ref_kd + 0.3 * ref_ce).backward()
    ref_grads = sh.grad.clone(), student_head.weight.grad.clone()
    sh.grad = student_head.weight.grad = None

    out = chunked_logit_loss(loss, sh, th, lambda h: softcap(student_head(h)), teacher_head, mask=mask,
                             chunk_size=chunk_size, labels=labels, ce_weight=0.3)
    assert (out.count, out.ce_count) == (ref_count, ref_ce_count) == (10, 10)
    torch.testing.assert_close(out.kd_sum, ref_kd)
    torch.testing.assert_close(out.ce_sum, ref_ce)
    (out.kd_sum + 0.3 * out.ce_sum).backward()
    torch.testing.assert_close(sh.grad, ref_grads[0])
    torch.testing.assert_close(student_head.weight.grad, ref_grads[1])
    assert teacher_head.weight.grad is None
    torch.testing.assert_close(out.mean(0.3), ref_kd / 10 + 0.3 * ref_ce / 10)


def test_chunked_recomputes_heads_in_backward_and_skips_unused_rows():
    student_head, teacher_head, sh, th = chunk_setup()
    calls = {"student": 0, "teacher": 0}

    def counted(name, head):
        def run(h):
            calls[name] += 1
            return head(h)
        return run

    mask = torch.ones(N, dtype=torch.bool)
    mask[:4] = False  # 8 kept rows -> 2 chunks of 4
    out = chunked_logit_loss(ForwardKL(), sh, th, counted("student", student_head), counted("teacher", teacher_head),
                             mask=mask, chunk_size=4)
    assert out.ce_sum is None and out.count == 8
    assert calls == {"student": 2, "teacher": 2}
    out.kd_sum.backward()  # backward recomputes each chunk: teacher logits are never saved
    assert calls == {"student": 4, "teacher": 4}
    assert torch.all(sh.grad[:4] == 0) and sh.grad[4:].abs().sum() > 0


def test_chunked_all_masked_and_argument_errors():
    student_head, teacher_head, sh, th = chunk_setup()
    out = chunked_logit_loss(ForwardKL(), sh, th, student_head, teacher_head, mask=torch.zeros(N, dtype=torch.bool))
    assert out.count == 0 and out.kd_sum.item() == 0.0
    out.mean().backward()  # still connected to the graph
    with pytest.raises(ValueError):
        chunked_logit_loss(ForwardKL(), sh, th, student_head, teacher_head, ce_weight=1.0)
    with pytest.raises(ValueError):
        chunked_logit_loss(ForwardKL(), sh, th[:-1], student_head, teacher_head)


# ---- intermediate losses -------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["cosine", "mse"])
def test_hidden_loss_identical_states_is_zero(kind):
    states = [torch.randn(2, 5, 6) for _ in range(3)]
    loss = HiddenStateLoss(kind, [6, 6, 6], 6)
    assert all(isinstance(p, nn.Identity) for p in loss.projections)
    assert abs(loss(states, [s.clone() for s in states]).item()) < 1e-6


def test_hidden_loss_values_mask_and_projection_gradients():
    torch.manual_seed(0)
    s_states = [torch.randn(2, 5, 4, requires_grad=True), torch.randn(2, 5, 6)]
    t_states = [torch.randn(2, 5, 6), torch.randn(2, 5, 6)]
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    for kind in ("cosine", "mse"):
        loss = HiddenStateLoss(kind, [4, 6], 6)
        value = loss(s_states, t_states, mask)
        ref = []
        for proj, s, t in zip(loss.projections, s_states, t_states):
            s = proj(s)
            per_token = 1 - F.cosine_similarity(s, t, dim=-1) if kind == "cosine" else ((s - t) ** 2).mean(-1)
            ref.append(per_token[mask].mean())
        torch.testing.assert_close(value, torch.stack(ref).mean())
        value.backward()
        assert loss.projections[0].weight.grad is not None and loss.projections[0].weight.grad.abs().sum() > 0
        assert s_states[0].grad is not None
    assert HiddenStateLoss("mse", [4, 6], 6)(s_states, t_states, torch.zeros(2, 5, dtype=torch.bool)).item() == 0
    with pytest.raises(ValueError):
        HiddenStateLoss("l1", [4], 6)


def test_hidden_loss_kept_channels_init_and_bf16():
    teacher = torch.randn(2, 3, 6)
    kept = [0, 2, 5]
    teacher[..., [1, 3, 4]] = 0.0  # teacher energy only in the kept channels
    loss = HiddenStateLoss("mse", [3], 6, kept_channels=kept)
    assert loss([teacher[..., kept]], [teacher]).item() < 1e-12
    loss_cos = HiddenStateLoss("cosine", [3], 6, kept_channels=kept)
    value = loss_cos([teacher[..., kept].bfloat16()], [teacher.bfloat16()])
    assert value.dtype == torch.float32 and value.item() < 1e-2


def test_map_layers():
    assert map_layers(4, 8, kept_layers=[0, 2, 5, 7]) == [(1, 1), (2, 3), (3, 6), (4, 8)]
    assert map_layers(4, 8) == [(1, 2), (2, 4), (3, 6), (4, 8)]
    assert map_layers(3, 3) == [(1, 1), (2, 2), (3, 3)]
    assert map_layers(3, 8)[-1] == (3, 8)
    assert map_layers(2, 4, include_embedding=True) == [(0, 0), (1, 2), (2, 4)]
    for kept in ([0, 2, 5], [0, 2, 2, 7], [0, 2, 5, 8]):
        with pytest.raises(ValueError):
            map_layers(4, 8, kept_layers=kept)


def test_balance_weight():
    kd = torch.tensor(2.5, requires_grad=True)
    other = torch.tensor(0.5, requires_grad=True)
    w = balance_weight(kd, other)
    assert not w.requires_grad
    total = w * other
    torch.testing.assert_close(total, kd.detach())
    total.backward()
    torch.testing.assert_close(other.grad, torch.tensor(5.0))  # gradient scaled by the weight only
