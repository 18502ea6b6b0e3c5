"""Reading a run folder (written by `minitron run`) for the report and the model cards.

    run = load_run("runs/family")          # MinitronError when run.json is missing or malformed
    for stage in run.stages: run.path(stage.get("scores"))

run.json must be well formed (the report refuses a folder it cannot trust); everything it points to is
optional: a stage that has no search, no scores or no metrics yet just has nothing to show for them.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import MinitronError, ScoresError
from ..outputs import require_text

RUN_FILE = "run.json"
TEACHER = "teacher"
TEACHER_COLOR = "#3b3b3b"
# Colour-blind friendly (Okabe-Ito, then Tableau), never grey: grey is the teacher's.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442",
           "#4E79A7", "#F28E2B", "#59A14F", "#E15759", "#B07AA1")


@dataclass
class Run:
    root: Path
    data: dict

    @property
    def teacher(self) -> str:
        return self.data["teacher"]

    @property
    def stages(self) -> list[dict]:
        return self.data["stages"]

    @property
    def members(self) -> list[dict]:
        return self.data.get("members") or []

    @property
    def recipe(self) -> dict:
        recipe = self.data.get("recipe")
        return recipe if isinstance(recipe, dict) else {}

    def path(self, relative: str | None) -> Path | None:
        """The file a run.json entry names (relative to the run folder), or None when it names none."""
        if not relative or not isinstance(relative, str):
            return None
        path = Path(relative)
        return path if path.is_absolute() else self.root / path

    def member(self, name: str) -> dict | None:
        return next((m for m in self.members if m.get("name") == name), None)

    def stage_member(self, stage: dict) -> dict | None:
        return self.member(stage["name"])

    def colors(self) -> dict[str, str]:
        """One colour per member name, the same in every plot; stages without a member get one too."""
        names = [m.get("name") for m in self.members] + [s["name"] for s in self.stages]
        colors: dict[str, str] = {TEACHER: TEACHER_COLOR}
        for name in names:
            if name not in colors:
                colors[name] = PALETTE[(len(colors) - 1) % len(PALETTE)]
        return colors


def load_run(run_dir: str | Path) -> Run:
    """Read and check RUN/run.json; the error says what is wrong with it."""
    root = Path(require_text(run_dir, "the run folder"))
    if not root.is_dir():
        raise MinitronError(f"{root} is not a folder; pass the run folder written by `minitron run`")
    path = root / RUN_FILE
    if not path.is_file():
        raise MinitronError(f"{root} has no {RUN_FILE}: it is not a run folder from `minitron run`")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise MinitronError(f"{path} is not valid JSON ({error}); re-run `minitron run` to rewrite it") from error
    _check_run(data, path)
    return Run(root=root, data=data)


def _check_run(data, path: Path) -> None:
    if not isinstance(data, dict):
        raise MinitronError(f"{path} must hold a JSON object, not {type(data).__name__}")
    if not isinstance(data.get("teacher"), str):
        raise MinitronError(f"{path} has no \"teacher\" (the spec of the family's teacher model)")
    if not isinstance(data.get("stages"), list):
        raise MinitronError(f"{path} has no \"stages\" list")
    if not isinstance(data.get("members", []), list):
        raise MinitronError(f"{path}: \"members\" must be a list")
    for index, stage in enumerate(data["stages"]):
        if not isinstance(stage, dict) or not isinstance(stage.get("name"), str):
            raise MinitronError(f"{path}: stage {index} must be an object with a \"name\"")
    for index, member in enumerate(data.get("members", [])):
        if not isinstance(member, dict) or not isinstance(member.get("name"), str):
            raise MinitronError(f"{path}: member {index} must be an object with a \"name\"")


def read_json(path: Path | None) -> dict | None:
    """A JSON object from `path`, or None when the file is absent or unreadable (shown as missing)."""
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def read_metrics(model_dir: Path | None) -> list[dict]:
    """The distillation loop's metrics.jsonl records (one per step); a torn last line is skipped."""
    path = model_dir / "metrics.jsonl" if model_dir is not None else None
    if path is None or not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), (int, float)):
            records.append(record)
    return records


def load_scores(folder: Path | None):
    """ImportanceScores from a stage's scores/ folder, or None when it has none."""
    from ..importance import ImportanceScores
    if folder is None:
        return None
    try:
        return ImportanceScores.load(folder)
    except ScoresError:
        return None


def kept_layers(pruned_dir: Path | None) -> list[int] | None:
    """Source layers the pruned model kept (pruned/minitron.json), None when unknown."""
    record = read_json(pruned_dir / "minitron.json") if pruned_dir is not None else None
    layers = (record or {}).get("kept_layers")
    return [int(i) for i in layers] if isinstance(layers, list) else None


def model_config(model_dir: Path | None) -> dict | None:
    return read_json(model_dir / "config.json") if model_dir is not None else None


def number(value) -> float | None:
    """A finite float, or None for anything else (missing, null, NaN, a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def throughput(member: dict) -> tuple[float | None, float | None]:
    """(prefill, decode) tokens/s of a member; the search helper's key names are accepted too."""
    speeds = member.get("tokens_per_s") or {}
    if not isinstance(speeds, dict):
        return None, None
    prefill = speeds.get("prefill", speeds.get("prefill_tokens_per_s"))
    decode = speeds.get("decode", speeds.get("decode_tokens_per_s"))
    return number(prefill), number(decode)


def data_spec(data, heldout: bool = False) -> str | None:
    """The text a run trained on (or, with heldout, evaluated on) from run.json's "data" section."""
    if isinstance(data, str):
        return data
    if not isinstance(data, dict):
        return None
    keys = ("eval", "train", "data") if heldout else ("train", "data")
    return next((str(data[k]) for k in keys if data.get(k)), None)


def arch_label(arch: dict | None, short: bool = False) -> str:
    """'hidden 48 · MLP 32 · heads 6/2 · layers 3' (short: 'H48 F32 A6/2 L3') from an architecture dict."""
    if not isinstance(arch, dict) or not arch:
        return "?"
    parts = [("H", "hidden", arch.get("hidden_size")), ("F", "MLP", arch.get("intermediate_size")),
             ("A", "heads", _heads(arch)), ("L", "layers", arch.get("num_hidden_layers"))]
    if short:
        return " ".join(f"{tag}{value}" for tag, _, value in parts if value is not None)
    return " · ".join(f"{word} {value}" for _, word, value in parts if value is not None)


def _heads(arch: dict):
    heads, kv = arch.get("num_attention_heads"), arch.get("num_key_value_heads")
    if heads is None:
        return None
    return f"{heads}/{kv}" if kv is not None and kv != heads else heads
