"""FSDP2 in-process on a one-process gloo group (torchrun runs are in test_distill_cli.py): bf16 is a
MixedPrecisionPolicy, the LM head is gathered with the root and runs the fused loss, the teacher shards."""
import copy
import dataclasses

import pytest
import torch
import torch.distributed as dist

from minitron.arch import logits_adapter
from minitron.config import DistillConfig
from minitron.distill.dist import DistEnv
from minitron.distill.losses import ForwardKL
from minitron.distill.sharding import autocast, wrap_student, wrap_teacher
from minitron.distill.steps import TrainModule, compute_step_losses, fused_head_params
from tests.tiny import VOCAB_SIZE, tiny_model

ENV = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture
def process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _step(student, teacher, config, **wrap):
    """One micro-batch's loss and backward; returns (losses, {the head weight's dtype in the loss, fused path?})."""
    train_module = TrainModule(student, None)
    wrapped = wrap_student(train_module, ENV, config) if wrap else train_module
    teacher_module = wrap_teacher(teacher, ENV, config) if wrap else None
    input_ids = torch.randint(0, VOCAB_SIZE, (2, 16), generator=torch.Generator().manual_seed(3))
    seen = {}

    def record_weight(module, args, output) -> None:
        seen.setdefault("weight", module.weight.dtype)

    hook = student.get_output_embeddings().register_forward_hook(record_weight)
    with autocast(ENV, config):
        losses = compute_step_losses(wrapped, student, teacher, input_ids, config, ForwardKL(), [], None,
                                     teacher_module=teacher_module)
        seen["fused"] = fused_head_params(student) is not None
    losses.total.backward()
    hook.remove()
    return losses, seen


def test_fsdp_bf16_is_a_mixed_precision_policy_with_the_fused_head(process_group):
    torch.manual_seed(0)
    teacher = tiny_model("llama").requires_grad_(False)  # untied LM head, as Llama-3
    torch.manual_seed(1)
    student = tiny_model("llama").train()
    reference, reference_teacher = copy.deepcopy(student), copy.deepcopy(teacher)
    config = DistillConfig(seq_len=16, steps=1, chunk_size=8, precision="bf16", fsdp=True, teacher_sharding="shard")
    losses, seen = _step(student, teacher, config, wrap=True)
    assert seen == {"weight": torch.bfloat16, "fused": True}  # bf16 head gathered with the root, fused loss
    head = logits_adapter(student).lm_head_parameters(student)[0]
    assert head.dtype == torch.float32 and type(head).__name__ == "DTensor"  # fp32 shards after backward
    assert head.grad.dtype == torch.float32
    # The same step on the unwrapped student under bf16 autocast (the DDP path): equal up to bf16 rounding.
    unsharded = dataclasses.replace(config, fsdp=False, teacher_sharding="replicate")
    expected, _ = _step(reference, reference_teacher, unsharded)
    assert abs(losses.logit - expected.logit) < 2e-2 * expected.logit
    reference_grad = logits_adapter(reference).lm_head_parameters(reference)[0].grad
    cosine = torch.nn.functional.cosine_similarity(head.grad.full_tensor().flatten().double(),
                                                   reference_grad.flatten().double(), dim=0)
    assert cosine > 0.99


def test_an_unknown_teacher_sharding_is_refused():
    from minitron.errors import SettingsError
    with pytest.raises(SettingsError, match="--teacher-sharding takes replicate, shard or auto"):
        DistillConfig(steps=1, teacher_sharding="sometimes")
