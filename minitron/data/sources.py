"""Where text comes from: a data spec string turned into a stream of documents.

Specs understood by `iter_documents`:

* a path to a `.txt` file, or a folder searched recursively for `.txt` files;
* a path to a `.jsonl` / `.json` file (objects holding the text in `text_field`) or a `.parquet` file;
* `hf:NAME[:CONFIG][:SPLIT]`: a Hugging Face dataset, streamed with `datasets.load_dataset`;
* `builtin:python-docs` (`builtin:python-topics` + `builtin:python-docstrings`): text that ships
  with CPython itself, so that examples and tests work offline with no download.

Everything is yielded in a deterministic order so that train / held-out splits are reproducible.
Files are read as strict UTF-8 with any BOM dropped, and big `.txt` files are cut into many documents
(see `minitron.data.textfiles`).
"""
from __future__ import annotations

import ast
import functools
import json
import os
import sysconfig
from pathlib import Path
from typing import Any, Iterator

from minitron.data.textfiles import read_text, strip_bom, text_lines, txt_documents
from minitron.errors import DataError, DataNotFoundError

BUILTIN_SOURCES = ("python-docs", "python-topics", "python-docstrings")
FILE_EXTENSIONS = (".txt", ".jsonl", ".json", ".parquet")

_MIN_DOCSTRING_CHARS = 200
_SKIPPED_STDLIB_DIRS = frozenset({"test", "tests", "idlelib", "site-packages", "dist-packages",
                                  "lib2to3", "__pycache__"})


def iter_documents(spec: str, text_field: str = "text") -> Iterator[str]:
    """Yield the documents of `spec` (see the module docstring) in a deterministic order.

    Raises DataError when the spec cannot be read or holds no document at all.
    """
    count = 0
    for document in _dispatch(spec, text_field):
        if document.strip():  # blank documents would only add separators
            count += 1
            yield document
    if count == 0:
        raise DataError(f"data spec {spec!r} holds no text: give a file or dataset with documents in it")


def _dispatch(spec: str, text_field: str) -> Iterator[str]:
    if not isinstance(spec, (str, os.PathLike)) or not str(spec).strip():
        # An empty path would read the current folder: refuse it instead.
        raise DataError(f"the data spec is {'empty' if isinstance(spec, str) else type(spec).__name__}: give a "
                        f"file or folder, 'hf:NAME[:CONFIG][:SPLIT]' or 'builtin:{BUILTIN_SOURCES[0]}'")
    spec = os.fspath(spec)
    if spec.startswith("hf:"):
        yield from _hf_documents(*parse_hf_spec(spec), text_field=text_field)
    elif spec.startswith("builtin:"):
        yield from _builtin_documents(spec[len("builtin:"):])
    else:
        yield from _path_documents(Path(spec).expanduser(), text_field)


# --- local files ----------------------------------------------------------------------------------

def require_local_data(spec: str) -> None:
    """Raise DataNotFoundError when `spec` is a local path (not hf: / builtin:) that does not exist."""
    if spec.startswith(("hf:", "builtin:")):
        return
    if not Path(spec).expanduser().exists():
        raise DataNotFoundError(
            f"data path {spec!r} does not exist: give an existing file or folder, "
            f"'hf:NAME[:CONFIG][:SPLIT]' or 'builtin:{BUILTIN_SOURCES[0]}'"
        )


def _path_documents(path: Path, text_field: str) -> Iterator[str]:
    require_local_data(str(path))
    if path.is_dir():
        yield from _folder_documents(path)
        return
    suffix = path.suffix.lower()
    if suffix == ".txt":
        yield from txt_documents(path)
    elif suffix == ".jsonl":
        yield from _jsonl_documents(path, text_field)
    elif suffix == ".json":
        yield from _json_documents(path, text_field)
    elif suffix == ".parquet":
        yield from _parquet_documents(path, text_field)
    else:
        raise DataError(
            f"cannot read {str(path)!r}: unknown extension {suffix or '(none)'!r}; "
            f"use one of {', '.join(FILE_EXTENSIONS)}, a folder of .txt files, or 'hf:NAME'"
        )


def _folder_documents(folder: Path) -> Iterator[str]:
    files = sorted(p for p in folder.rglob("*.txt") if p.is_file())
    if not files:
        raise DataError(
            f"folder {str(folder)!r} holds no .txt files: put .txt files in it, or load a folder of "
            f"json/parquet shards with 'hf:{folder}'"
        )
    for file in files:
        yield from txt_documents(file)


def _record_text(record: Any, text_field: str, where: str) -> str:
    """The text of one JSON / dataset record; plain strings are accepted as documents too."""
    if isinstance(record, str):
        return strip_bom(record)
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object with a {text_field!r} field, got {type(record).__name__}")
    if text_field not in record:
        keys = ", ".join(repr(k) for k in record) or "none"
        raise DataError(
            f"{where}: record has no {text_field!r} field (keys found: {keys}); "
            f"pass the right field with --text-field"
        )
    text = record[text_field]
    if text is None:
        return ""
    if not isinstance(text, str):
        raise DataError(f"{where}: field {text_field!r} holds {type(text).__name__}, not text; "
                        f"pass a text field with --text-field")
    return strip_bom(text)


def _jsonl_documents(path: Path, text_field: str) -> Iterator[str]:
    for number, line in enumerate(text_lines(path), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: invalid JSON ({exc.msg}); each line must be one JSON object") from exc
        yield _record_text(record, text_field, where)


def _json_documents(path: Path, text_field: str) -> Iterator[str]:
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError:
        # Not a single JSON value: many `.json` files are JSON lines in disguise.
        yield from _jsonl_documents(path, text_field)
        return
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of JSON objects, got {type(data).__name__}")
    for index, record in enumerate(data):
        yield _record_text(record, text_field, f"{path}[{index}]")


def _parquet_documents(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq  # installed with `datasets`; imported here because it is slow

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise DataError(f"cannot read parquet file {str(path)!r}: {exc}") from exc
    columns = parquet.schema_arrow.names
    if text_field not in columns:
        raise DataError(
            f"{path}: no {text_field!r} column (columns found: {', '.join(map(repr, columns))}); "
            f"pass the right column with --text-field"
        )
    # Read in batches so that a big file is never loaded whole when only a few blocks are needed.
    for batch in parquet.iter_batches(columns=[text_field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            yield _record_text({text_field: text}, text_field, str(path))


# --- Hugging Face datasets ------------------------------------------------------------------------

def parse_hf_spec(spec: str) -> tuple[str, str | None, str]:
    """Split `hf:NAME[:CONFIG][:SPLIT]` into (name, config or None, split, "train" by default)."""
    if not spec.startswith("hf:"):
        raise DataError(f"{spec!r} is not a Hugging Face spec: write 'hf:NAME[:CONFIG][:SPLIT]'")
    parts = spec[len("hf:"):].split(":")
    if len(parts) > 3 or not parts[0]:
        raise DataError(
            f"bad Hugging Face spec {spec!r}: write 'hf:NAME[:CONFIG][:SPLIT]', "
            f"e.g. 'hf:wikitext:wikitext-2-raw-v1:validation' or 'hf:NAME::test'"
        )
    name = parts[0]
    config = parts[1] if len(parts) > 1 and parts[1] else None
    split = parts[2] if len(parts) > 2 and parts[2] else "train"
    return name, config, split


def _hf_documents(name: str, config: str | None, split: str, text_field: str) -> Iterator[str]:
    label = f"Hugging Face dataset {name!r} (config {config!r}, split {split!r})"
    hint = ("check the name, config and split on huggingface.co, your network connection, and that "
            "HF_DATASETS_OFFLINE / HF_HUB_OFFLINE are unset (or use a local file)")
    try:
        import datasets

        dataset = datasets.load_dataset(name, config, split=split, streaming=True)
        records = iter(dataset)
    except Exception as exc:
        raise DataError(f"could not load {label}: {exc}; {hint}") from exc
    index = 0
    while True:
        # Streaming datasets download lazily, so reading a record can fail too.
        try:
            record = next(records)
        except StopIteration:
            return
        except Exception as exc:
            raise DataError(f"could not read {label} at record {index}: {exc}; {hint}") from exc
        yield _record_text(record, text_field, f"{label}, record {index}")
        index += 1


# --- text shipped with CPython --------------------------------------------------------------------

def _builtin_documents(name: str) -> Iterator[str]:
    if name not in BUILTIN_SOURCES:
        allowed = ", ".join(f"builtin:{n}" for n in BUILTIN_SOURCES)
        raise DataError(f"unknown builtin data {name!r}: use one of {allowed}")
    if name in ("python-docs", "python-topics"):
        yield from python_topics()
    if name in ("python-docs", "python-docstrings"):
        yield from python_docstrings()


def python_topics() -> tuple[str, ...]:
    """The pydoc help topics (language reference excerpts), sorted by topic name."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data
        return ()
    return tuple(topics[key] for key in sorted(topics))


@functools.lru_cache(maxsize=1)
def python_docstrings() -> tuple[str, ...]:
    """Long docstrings of the stdlib's modules, classes and functions, in a fixed order.

    Parsed with `ast` (never imported: importing would run code); deduplicated, since overriding
    methods often repeat a docstring. Cached because parsing the stdlib takes a few seconds.
    """
    stdlib = sysconfig.get_paths()["stdlib"]
    seen: set[str] = set()
    docstrings: list[str] = []
    for file in _stdlib_sources(stdlib):
        for docstring in _file_docstrings(file):
            if len(docstring) > _MIN_DOCSTRING_CHARS and docstring not in seen:
                seen.add(docstring)
                docstrings.append(docstring)
    return tuple(docstrings)


def _stdlib_sources(root: str) -> Iterator[str]:
    for folder, dirnames, filenames in os.walk(root):
        # Sorting in place makes os.walk itself deterministic; removing names prunes the walk.
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_STDLIB_DIRS)
        for filename in sorted(filenames):
            if filename.endswith(".py"):
                yield os.path.join(folder, filename)


def _file_docstrings(file: str) -> Iterator[str]:
    try:
        with open(file, "rb") as handle:
            tree = ast.parse(handle.read(), filename=file)
    except (SyntaxError, ValueError, OSError):
        return  # a few stdlib files are templates or target other Python versions
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    for node in ast.walk(tree):
        if isinstance(node, kinds):
            docstring = ast.get_docstring(node, clean=True)
            if docstring:
                yield docstring
