"""The one guard every command passes its output folder through, before any work.

A command never deletes or replaces a folder that is one of its inputs, holds one, is the current folder
(or a parent of it), or was not written by minitron; and it replaces an output only once the new one is
complete (written in a staging folder, then renamed into place: see `minitron.io`).

A minitron output is recognised by the record each command writes into it (`OUTPUT_RECORDS`).
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .errors import OutputError, SettingsError

# prune/distill/finetune: minitron.json; importance: scores.json; search: search.json; run/demo: run.json;
# an unfinished distill/finetune run: metrics.jsonl (written at its start) and checkpoint/settings.json;
# tokenize: manifest.json (written last, see minitron.data.shards).
OUTPUT_RECORDS = ("minitron.json", "scores.json", "search.json", "run.json", "metrics.jsonl",
                  "checkpoint/settings.json", "manifest.json")


def require_text(value, flag: str) -> str:
    """A path or spec given as a non-empty string (or os.PathLike); `flag` names it in the error."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if value is None:
        raise SettingsError(f"{flag} is required (got None)")
    if not isinstance(value, str) or not value.strip():
        shown = "empty" if isinstance(value, str) else f"a {type(value).__name__}, not a path or spec"
        raise SettingsError(f"{flag} is {shown}: give a folder, file or model spec")
    return value


def is_minitron_output(folder: Path) -> bool:
    return any((folder / record).is_file() for record in OUTPUT_RECORDS)


def is_empty_folder(folder: Path) -> bool:
    return not folder.exists() or (folder.is_dir() and not any(folder.iterdir()))


def local_paths(specs: Iterable) -> list[Path]:
    """The inputs among `specs` that are files or folders on this machine (hub ids and built-ins are not)."""
    paths = []
    for spec in specs:
        if spec is None or isinstance(spec, bool):
            continue
        text = os.fspath(spec) if isinstance(spec, os.PathLike) else str(spec)
        if text.startswith("hf:"):  # hf:LOCAL_FOLDER loads a folder of dataset shards
            text = text[len("hf:"):].split(":")[0]
        if not text.strip() or text.startswith("builtin:"):
            continue
        path = Path(text).expanduser()
        if path.exists():
            paths.append(path.resolve())
    return paths


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output(out, *, inputs: Iterable = (), replace: bool = False, flag: str = "--out") -> Path:
    """Refuse an output folder that would lose anything; return it as a Path.

    inputs: the command's model, scores, data and recipe specs (hub ids and built-ins are skipped).
    replace: the caller is about to replace what `out` holds (--overwrite).
    """
    out = Path(require_text(out, flag)).expanduser()
    if out.exists() and not out.is_dir():
        raise OutputError(f"{flag} {out} is a file; give a folder (a new one, or one minitron wrote)")
    resolved, cwd = out.resolve(), Path.cwd().resolve()
    if _inside(cwd, resolved):
        where = "the current folder" if resolved == cwd else "a parent of the current folder"
        raise OutputError(f"{flag} {out} is {where}; give a new folder for the output, such as ./out")
    for source in local_paths(inputs):
        if _inside(resolved, source):
            what = "is" if resolved == source else "is inside"
            raise OutputError(f"{flag} {out} {what} the input {source}; write the output to another folder")
        if replace and _inside(source, resolved):
            raise OutputError(f"{flag} {out} holds the input {source}, which replacing it would delete; "
                              "move the input out of it or write the output to another folder")
    if not is_empty_folder(out) and not is_minitron_output(out):
        raise OutputError(f"{flag} {out} is not empty and was not written by minitron (it holds none of "
                          f"{', '.join(OUTPUT_RECORDS)}); choose a new or empty folder")
    return out


def check_replaceable(folder) -> Path:
    """For the Python API's writers (save_checkpoint, ImportanceScores.save): the same refusals, no inputs."""
    return check_output(folder, replace=True, flag="the output folder")


def pending_folder(out: Path) -> Path:
    """Where a run that will replace `out` is built (a fixed name, so that it can be resumed)."""
    out = Path(out)
    return out.with_name(f".{out.name}.pending")
