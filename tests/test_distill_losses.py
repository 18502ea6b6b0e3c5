"""What the training losses compare and how they add up: like-with-like hidden-state pairs, and a
global batch whose split into micro-batches changes nothing."""
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from minitron import magnitude_scores, prune
from minitron.config import DistillConfig
from minitron.distill.loop import distill
from tests.helpers import make_identity_layer_
from tests.tiny import VOCAB_SIZE, tiny_model


def _blocks(seed: int, count: int, seq_len: int = 16) -> torch.Tensor:
    return torch.randint(0, VOCAB_SIZE, (count, seq_len), generator=torch.Generator().manual_seed(seed))


def _config(**overrides) -> DistillConfig:
    settings = dict(seq_len=16, micro_batch_size=2, steps=1, lr=3e-3, warmup_steps=0, eval_every=0,
                    eval_samples=2, save_every=0, chunk_size=10)
    return DistillConfig(**{**settings, **overrides})


def _depth_pruned(family: str, drop: int, identity_layer: int | None = None):
    """(student, teacher): the teacher with layer `drop` removed; `identity_layer` makes a teacher layer a no-op."""
    torch.manual_seed(0)
    teacher = tiny_model(family)
    if identity_layer is not None:
        make_identity_layer_(teacher, identity_layer)
    student = prune(teacher, magnitude_scores(teacher), {"drop_layers": [drop]})
    return student, teacher


@pytest.mark.parametrize("dropped", ["top layer", "middle no-op layer"])
def test_hidden_loss_is_zero_when_the_kept_layers_are_the_teachers(family, dropped):
    # Top: kept layers 0-2 of 4 compute exactly what the teacher's do. Middle: the dropped layer 2 returns
    # its input, so every kept layer still sees the teacher's inputs. Either way each student state equals
    # the teacher state it is paired with, and the loss at step 1 (before any update) must be 0. (Not layer
    # 1: it is the tiny hybrid's only attention layer, which a depth cut keeps.)
    drop, identity = (3, None) if dropped == "top layer" else (2, 2)
    for kind in ("cosine", "mse"):
        student, teacher = _depth_pruned(family, drop, identity)
        records = []
        distill(student, teacher, _blocks(2, 4), _blocks(3, 2), _config(hidden_loss=kind),
                kept_layers=list(student.minitron_kept_layers), on_step=lambda step, record: records.append(record))
        if kind == "mse":
            assert records[0]["hidden"] == 0.0
        else:  # 1 - cos(x, x) is 0 up to fp32 rounding
            assert records[0]["hidden"] < 1e-6, (kind, records[0]["hidden"])


SPLITS = [(8, 1), (2, 4), (1, 8)]  # micro_batch_size x grad_accum: one global batch of 8
LOSS_SETTINGS = {"forward KL": {}, "CE (no teacher)": {"loss": "ce"}, "KD + CE": {"ce_weight": 0.5},
                 "KD + hidden cosine": {"hidden_loss": "cosine"}, "KD + hidden mse": {"hidden_loss": "mse"}}


def _train_recording_gradients(family: str, settings: dict, micro: int, accum: int):
    """(gradients at every optimizer step, final student weights) of a 2-step run."""
    # float64: the comparison must not depend on the CPU's fp32 summation order (CI machines differ), while a
    # per-micro-batch balancing weight or a mis-scaled loss still moves gradients by ~1e-2.
    student, teacher = (model.double() for model in _depth_pruned(family, drop=2))
    gradients = []

    def record(optimizer, args, kwargs):
        gradients.append(torch.cat([p.grad.flatten() for group in optimizer.param_groups for p in group["params"]
                                    if p.grad is not None]))

    handle = register_optimizer_step_pre_hook(record)
    try:
        distill(student, None if settings.get("loss") == "ce" else teacher, _blocks(2, 16), _blocks(3, 2),
                _config(steps=2, micro_batch_size=micro, grad_accum=accum, lr=1e-3, **settings),
                kept_layers=list(student.minitron_kept_layers))
    finally:
        handle.remove()
    return gradients, student.state_dict()


@pytest.mark.parametrize("family", ["llama", "gemma2"])
@pytest.mark.parametrize("name", list(LOSS_SETTINGS))
def test_splitting_the_global_batch_changes_nothing(family, name):
    runs = [_train_recording_gradients(family, LOSS_SETTINGS[name], micro, accum) for micro, accum in SPLITS]
    reference_gradients, reference_weights = runs[0]
    for (micro, accum), (gradients, weights) in zip(SPLITS[1:], runs[1:]):
        assert len(gradients) == len(reference_gradients) == 2
        for step, (got, expected) in enumerate(zip(gradients, reference_gradients), start=1):
            relative = float((got - expected).norm() / expected.norm())
            # The losses still run in fp32: rounding reaches ~2e-5 here and ~1e-4 on other CPUs; a balancing
            # weight computed per micro-batch gives ~2e-2.
            assert relative < 1e-3, f"{micro} x {accum}: step {step} gradient off by {relative:.2e}"
        for key, value in reference_weights.items():
            # Adam's first steps magnify rounding in near-zero gradients (g / (|g| + eps)), so weights get a
            # looser bound than gradients; still far below the lr (1e-3) a wrong gradient would move them by.
            difference = float((weights[key] - value).abs().max())
            assert difference < 2e-5, f"{micro} x {accum}: {key} differs by {difference:.1e}"
