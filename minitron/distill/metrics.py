"""Training metrics: a JSONL file (and TensorBoard when installed), and a progress bar with tok/s and ETA."""
from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Appends one JSON line per step on the main rank; on resume, drops lines past the checkpoint."""

    def __init__(self, out: str | Path | None, is_main: bool, resume_step: int | None = None) -> None:
        self.path = Path(out) / METRICS_FILE if out is not None and is_main else None
        self.records: list[dict] = []
        self._tensorboard = None
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.is_file():
            kept = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
            self.records = [r for r in kept if r["step"] <= resume_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self.records))
        try:
            from torch.utils.tensorboard import SummaryWriter
            self._tensorboard = SummaryWriter(str(Path(out) / "tensorboard"))
        except ImportError:  # tensorboard is optional
            pass

    def write(self, record: dict) -> None:
        self.records.append(record)
        if self.path is None:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._tensorboard is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tensorboard.add_scalar(key, value, record["step"])


class ProgressBar:
    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.bar = tqdm(total=total, initial=initial, desc="distill", unit="step", disable=not enabled,
                        dynamic_ncols=True)

    def update(self, record: dict) -> None:
        shown = {"loss": f"{record['loss']:.4f}", "tok/s": f"{record['tokens_per_s']:.0f}"}
        if "val_student_loss" in record:
            shown["val"] = f"{record['val_student_loss']:.3f}"
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
