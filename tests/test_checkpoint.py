"""Training checkpoints through torch.distributed.checkpoint: an asynchronous save holds the state of its own
step, and SIGTERM stops training as the first Ctrl-C does. (Sharding over ranks, and resuming on another
number of processes: tests/test_distributed_data.py and tests/test_distributed_recipe.py.)"""
import json
import signal

import pytest
import torch
from torch import nn
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from minitron.distill.checkpoint import Checkpointer, load_training_state
from minitron.distill.dist import DistEnv
from minitron.distill.loop import TrainingInterrupted, distill
from tests.test_distill import _blocks, _config, _student_teacher

ONE_PROCESS = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _trainable(seed: int):
    torch.manual_seed(seed)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(optimizer, 1, 10, min_lr=0.01)
    return model, optimizer, scheduler


def test_an_asynchronous_checkpoint_holds_the_state_of_its_step(tmp_path):
    model, optimizer, scheduler = _trainable(0)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    weights = {name: value.clone() for name, value in model.state_dict().items()}
    moment = optimizer.state[model.weight]["exp_avg"].clone()
    checkpoints = Checkpointer(tmp_path, ONE_PROCESS, trainable=model, optimizer=optimizer, scheduler=scheduler,
                               global_batch=4, settings={"lr": 0.1}, asynchronous=True)
    checkpoints.save(1)
    with torch.no_grad():  # training goes on while the files are written
        model.weight.add_(1.0)
        optimizer.state[model.weight]["exp_avg"].add_(1.0)
    checkpoints.wait()
    folder = tmp_path / "checkpoint"
    assert json.loads((folder / "position.json").read_text())["step"] == 1
    assert not list(folder.glob("*.pt")) and not (tmp_path / ".checkpoint.partial").exists()

    fresh, fresh_optimizer, fresh_scheduler = _trainable(1)
    position = load_training_state(tmp_path, trainable=fresh, optimizer=fresh_optimizer, scheduler=fresh_scheduler)
    assert (position.step, position.samples_consumed, position.global_batch) == (1, 4, 4)
    for name, value in fresh.state_dict().items():
        torch.testing.assert_close(value, weights[name], rtol=0, atol=0, msg=name)
    torch.testing.assert_close(fresh_optimizer.state[fresh.weight]["exp_avg"], moment, rtol=0, atol=0)
    assert fresh_scheduler.get_last_lr() == scheduler.get_last_lr()


def test_sigterm_finishes_the_step_and_checkpoints_even_when_sent_twice(tmp_path):
    """A cluster signals every process and torchrun forwards the signal again: neither stops at once."""
    student, teacher = _student_teacher()

    def preempt(step, record):
        if step == 3:
            signal.raise_signal(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)

    with pytest.raises(TrainingInterrupted, match=r"SIGTERM\) after step 3"):
        distill(student, teacher, _blocks(2, 64), _blocks(3, 4), _config(steps=6), out=tmp_path, on_step=preempt)
    assert json.loads((tmp_path / "checkpoint" / "position.json").read_text())["step"] == 3
