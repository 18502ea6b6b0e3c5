"""Run by tests/test_distributed_data.py, under torchrun or alone: distill a saved tiny student on prepared
data, optionally stopping after a step (as Ctrl-C would) or resuming; rank 0 saves the final weights.

    torchrun --nproc-per-node 2 tests/distributed_driver.py RUN_DIR OUT '{"micro_batch_size": 1}' --stop-after 3
"""
import argparse
import json
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minitron.config import DistillConfig  # noqa: E402
from minitron.data.shards import TokenShards  # noqa: E402
from minitron.distill.dist import close_distributed, init_distributed  # noqa: E402
from minitron.distill.loop import TrainingInterrupted, distill  # noqa: E402
from minitron.loading import load_model  # noqa: E402

SETTINGS = dict(seq_len=16, steps=4, lr=3e-3, warmup_steps=2, clip_grad=0.0, eval_every=0, eval_samples=4,
                save_every=0, chunk_size=10, data_workers=1)


def run(run_dir: Path, out: Path, overrides: dict, stop_after: int | None, resume: bool) -> list[float]:
    """Distill; returns this run's losses (all steps when it ends, or the steps before the stop)."""
    env = init_distributed("cpu")
    losses: list[float] = []

    def on_step(step, record):
        losses.append(record["loss"])
        if step == stop_after:
            signal.raise_signal(signal.SIGINT)  # every rank: they agree to stop after this step

    try:
        student, _ = load_model(str(run_dir / "student"))
        teacher, _ = load_model(str(run_dir / "teacher"))
        shards = TokenShards(run_dir / "prepared")
        heldout = shards.blocks("heldout", SETTINGS["seq_len"], SETTINGS["eval_samples"], allow_fewer=True)
        try:
            trained = distill(student, teacher, shards, heldout, DistillConfig(**{**SETTINGS, **overrides}),
                              out=out, resume=resume, env=env, on_step=on_step)
            if env.is_main:
                torch.save(trained.state_dict(), out / "final.pt")
        except TrainingInterrupted:
            pass
    finally:
        close_distributed(env)
    return losses


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("overrides", type=json.loads)
    parser.add_argument("--stop-after", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    run(args.run_dir, args.out, args.overrides, args.stop_after, args.resume)
