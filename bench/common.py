"""Small helpers shared by the benchmark scripts: timing, machine description, tables, JSON output."""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


class Timer:
    """`with Timer() as t: ...` then `t.seconds` is the elapsed wall time."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        self.seconds = float("nan")
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


def machine() -> dict:
    """CPU count, torch / transformers versions, threads and the date of the run."""
    import torch
    import transformers
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.cuda.is_available(),
        **code_version(),
    }


def code_version() -> dict:
    """The commit checked out and the minitron/ files that differ from it (read-only git queries)."""
    import subprocess
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "minitron"], cwd=root, capture_output=True,
                               text=True, timeout=10).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "minitron_uncommitted": None}
    return {"git_commit": commit or None, "minitron_uncommitted": [line[3:] for line in dirty if line.strip()]}


def machine_line(info: dict) -> str:
    return (f"Machine: {info['cpu_count']} CPU cores ({info['torch_threads']} torch threads), "
            f"torch {info['torch']}, transformers {info['transformers']}, Python {info['python']}, "
            f"CUDA {'yes' if info['cuda'] else 'no'}; run {info['date']}"
            + (f"; code at commit {info['git_commit']}" if info.get("git_commit") else "")
            + (f" with uncommitted minitron/ changes in {', '.join(info['minitron_uncommitted'])}"
               if info.get("minitron_uncommitted") else ""))


def median(values) -> float:
    return float(statistics.median(values))


def spread(values) -> float:
    """Sample standard deviation (0 for a single value)."""
    values = list(values)
    return float(statistics.stdev(values)) if len(values) > 1 else 0.0


def fmt(value, digits: int = 3) -> str:
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(name: str, payload: dict, path: Path | None = None) -> Path:
    """Write `payload` to bench/results/NAME.json, or to `path` (through a temporary file, then a rename)."""
    path = path or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def tensor_bytes(scores) -> int:
    """Bytes held by the tensors of an ImportanceScores object."""
    tensors = [scores.hidden, *scores.neurons, *scores.heads, *scores.layers.values()]
    return int(sum(t.numel() * t.element_size() for t in tensors))


def quiet_transformers() -> None:
    """Silence progress bars and info logs so the printed tables stay readable."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging
        logging.set_verbosity_error()
        logging.disable_progress_bar()
    except Exception:  # pragma: no cover - older transformers
        pass
