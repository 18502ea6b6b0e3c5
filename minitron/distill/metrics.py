"""Training metrics: a JSONL file (and TensorBoard or wandb on request), and a progress bar with tok/s and ETA."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..verbosity import check_report_to, progress_bar

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Appends one JSON line per step on the main rank; on resume, drops lines past the checkpoint.

    report_to: also send the scalars to TensorBoard (event files in OUT/tensorboard) or Weights & Biases.
    """

    def __init__(self, out: str | Path | None, is_main: bool, resume_step: int | None = None,
                 report_to: str = "none", settings: dict | None = None) -> None:
        check_report_to(report_to)
        self.path = Path(out) / METRICS_FILE if out is not None and is_main else None
        self.records: list[dict] = []
        self._tensorboard = self._wandb = None
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.is_file():
            kept = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
            self.records = [r for r in kept if r["step"] <= resume_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self.records))
        if report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter
            self._tensorboard = SummaryWriter(str(Path(out) / "tensorboard"), purge_step=resume_step)
        elif report_to == "wandb":
            import wandb
            # WANDB_PROJECT / WANDB_MODE and the rest of wandb's environment work as under Trainer.
            self._wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "minitron"), dir=str(out),
                                     config=settings or {}, resume="allow")

    def write(self, record: dict) -> None:
        self.records.append(record)
        if self.path is None:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        scalars = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        if self._tensorboard is not None:
            for key, value in scalars.items():
                self._tensorboard.add_scalar(key, value, record["step"])
        if self._wandb is not None:
            self._wandb.log(scalars, step=record["step"])

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()


class ProgressBar:
    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.bar = progress_bar(enabled=enabled, total=total, initial=initial, desc="distill", unit="step",
                                dynamic_ncols=True)

    def update(self, record: dict) -> None:
        shown = {"loss": f"{record['loss']:.4f}", "tok/s": f"{record['tokens_per_s']:.0f}"}
        if "val_student_loss" in record:
            shown["val"] = f"{record['val_student_loss']:.3f}"
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
