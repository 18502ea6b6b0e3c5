"""The run folder's state: `run.json`, written atomically, and the fingerprints that make runs resumable.

A stage's fingerprint hashes its resolved settings together with its parent's fingerprint, so a
change anywhere up the chain (teacher, data, an earlier stage's target) changes every later one.
Each step of a stage (importance scores, search, pruned model, trained model: one folder each) has its
own fingerprint too, of the settings that step reads, chained on the step before it: a changed stage
keeps the outputs of the steps before the change (a new search budget reuses the importance scores).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import shutil
from pathlib import Path

from ..errors import MinitronError
from ..io import atomic_write_text
from ..verbosity import is_main_process

RUN_FILE = "run.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")
_PLANNED_KEYS = ("name", "kind", "dir", "fingerprint", "parent", "steps")
# The steps of a prune + distill stage, in order: the folder each writes, and the stage settings it reads.
STEP_SETTINGS = {"scores": ("data", "importance"),
                 "search": ("search", "distill_teacher", "expert_metric", "depth_metric"),
                 "pruned": ("target", "depth_metric", "expert_metric"),
                 "model": ("distill", "distill_from", "distill_teacher")}
STEP_WORDS = {"scores": "importance scores", "search": "search results", "pruned": "pruned model",
              "model": "trained model"}


def say(*args, **kwargs) -> None:
    """print() on rank 0 only (N processes would print every progress line N times), flushed."""
    if is_main_process():
        print(*args, **{"flush": True, **kwargs})


def fingerprint(settings: dict, parent: str = "") -> str:
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(f"{parent}|{text}".encode()).hexdigest()[:16]


def step_fingerprints(settings: dict, parent: str) -> dict[str, str]:
    """{step folder: fingerprint} of a prune + distill stage whose settings are `settings`; each step's
    fingerprint covers what it reads and chains on the step before it (the first on the parent model)."""
    steps, previous = {}, parent
    for step, keys in STEP_SETTINGS.items():
        if step == "search" and settings["search"] is None:
            continue  # a fixed target: no search step
        # A setting left out (expert_metric unless given) is left out of the fingerprint as well.
        chosen = {key: settings[key] for key in keys if key in settings}
        if step == "search" and chosen.get("depth_metric") is None:
            chosen.pop("depth_metric", None)  # searches from before it reached them keep their fingerprints
        previous = steps[step] = fingerprint(chosen, previous)
    return steps


def model_stamp(spec: str) -> dict:
    """What identifies a teacher: its spec, and for local files their sizes and modification times.

    Cheap (no load): a teacher folder that was replaced by other weights gets a new fingerprint.
    """
    path = Path(spec).expanduser()
    if not path.exists():
        return {"spec": spec}
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.name == "config.json"
                                                 or p.suffix in _WEIGHT_SUFFIXES)
    return {"spec": spec, "files": {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files}}


def now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def new_stage_entry(planned: dict) -> dict:
    """A stage not started yet, with every field of the run.json schema."""
    return {"name": planned["name"], "kind": planned["kind"], "status": "pending",
            "fingerprint": planned["fingerprint"], "dir": planned["dir"], "parent": planned["parent"],
            "steps": planned.get("steps") or {}, "target": planned.get("target"), "search": None, "scores": None,
            "pruned": None, "model": f"{planned['dir']}/model", "seconds": 0.0, "started": None, "finished": None}


class RunState:
    """run.json in memory; `save()` after every change a resumed run must see."""

    def __init__(self, run_dir: Path, data: dict, *, writes: bool = True) -> None:
        self.run_dir = run_dir
        self.data = data
        self.writes = writes  # rank 0 under torchrun; every rank keeps the same run.json in memory

    @classmethod
    def open(cls, run_dir: Path) -> RunState:
        path = run_dir / RUN_FILE
        if path.is_file():
            try:
                return cls(run_dir, json.loads(path.read_text()))
            except json.JSONDecodeError as error:
                raise MinitronError(f"{path} is corrupt ({error}); start again with --overwrite") from error
        if run_dir.exists() and any(run_dir.iterdir()):
            raise MinitronError(f"{run_dir} is not empty and holds no {RUN_FILE}: it is not a recipe run. "
                                "Choose another --out or pass --overwrite")
        return cls(run_dir, {"stages": [], "members": []})

    @property
    def stages(self) -> list[dict]:
        return self.data.setdefault("stages", [])

    @property
    def members(self) -> list[dict]:
        return self.data.setdefault("members", [])

    def save(self) -> None:
        if not self.writes:
            return
        atomic_write_text(self.run_dir / RUN_FILE, json.dumps(self.data, indent=2, default=str) + "\n")

    def reconcile(self, planned: list[dict]) -> None:
        """Keep the recorded stages that still match the recipe, and in a changed stage the steps that did not.

        A recorded stage survives when its folder and fingerprint are those of a planned stage. A changed
        stage starts afresh but keeps each step output (scores/, search/, pruned/, model/) whose step
        fingerprint is unchanged; everything else in its folder, and every stage no longer planned, goes.
        """
        old = {stage["dir"]: stage for stage in self.stages}
        kept, announced = [], False
        for stage in planned:
            previous = old.pop(stage["dir"], None)
            if previous and previous["fingerprint"] == stage["fingerprint"]:
                kept.append({**previous, **{key: stage[key] for key in _PLANNED_KEYS}})
                continue
            reused = self._keep_unchanged_steps(stage, previous)  # also clears leftovers run.json never recorded
            if previous and not announced:
                words = [STEP_WORDS[step] for step in reused]
                say(f"the recipe changed at {previous['dir']}: " + (f"reusing its {', '.join(words)}, redoing the "
                      "rest of it" if words else "redoing it") + " and every later stage", flush=True)
                announced = True
            kept.append(new_stage_entry(stage))
        for previous in old.values():
            say(f"{previous['dir']} is no longer in the recipe: removing it", flush=True)
            self.remove_stage_folder(previous["dir"])
        self.data["stages"] = kept

    def _keep_unchanged_steps(self, stage: dict, previous: dict | None) -> list[str]:
        """Remove what a changed stage's folder holds except the outputs of unchanged steps; return those."""
        folder = self.run_dir / stage["dir"]
        recorded = (previous or {}).get("steps") or {}
        planned = stage.get("steps") or {}
        reused = [step for step, mark in planned.items() if recorded.get(step) == mark and (folder / step).exists()]
        if folder.exists():
            for item in folder.iterdir():
                if item.name not in reused:
                    shutil.rmtree(item) if item.is_dir() else item.unlink()
        return reused

    def remove_stage_folder(self, name: str) -> None:
        folder = self.run_dir / name
        if folder.exists():
            shutil.rmtree(folder)
