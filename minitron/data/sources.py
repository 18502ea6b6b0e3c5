"""Where text comes from: a data spec string turned into a stream of documents.

Specs understood by `iter_documents`:

* a path to a local file: `.txt` / `.md`, `.jsonl` / `.json` (objects holding the text in `text_field`,
  or chat turns), `.csv` / `.tsv` (the `text_field` column), `.parquet`; all but Parquet may be compressed
  (`.gz`, `.zst`); see `minitron.data.formats`;
* a folder of such files, all of one format (shards), read recursively in sorted order;
* `hf:NAME[:CONFIG][:SPLIT]`: a Hugging Face dataset, streamed with `datasets.load_dataset`;
* `builtin:python-docs` (`builtin:python-topics` + `builtin:python-docstrings`): text that ships
  with CPython itself, so that examples and tests work offline with no download.

Everything is yielded in a deterministic order so that train / held-out splits are reproducible.
Chat rows (`{"messages": [...]}`) are rendered with the tokenizer's chat template (see
`minitron.data.chat`). Files are read as strict UTF-8 with any BOM dropped, and big `.txt` files are cut
into many documents (see `minitron.data.textfiles`).
"""
from __future__ import annotations

import ast
import functools
import os
import sysconfig
from pathlib import Path
from typing import Any, Iterator

from minitron.data.chat import RecordText
from minitron.data.formats import FILE_EXTENSIONS, file_documents, folder_files  # noqa: F401 (re-exported)
from minitron.errors import DataError, DataNotFoundError

BUILTIN_SOURCES = ("python-docs", "python-topics", "python-docstrings")

_MIN_DOCSTRING_CHARS = 200
_SKIPPED_STDLIB_DIRS = frozenset({"test", "tests", "idlelib", "site-packages", "dist-packages",
                                  "lib2to3", "__pycache__"})


def iter_documents(spec: str, text_field: str = "text", *, chat_template: str = "auto",
                   tokenizer: Any = None) -> Iterator[str]:
    """Yield the documents of `spec` (see the module docstring) in a deterministic order.

    `tokenizer` renders chat rows (with `chat_template` "auto"); "off" refuses them. Raises DataError when
    the spec cannot be read or holds no document at all.
    """
    count = 0
    for document in _dispatch(spec, RecordText(text_field, chat_template, tokenizer)):
        if document.strip():  # blank documents would only add separators
            count += 1
            yield document
    if count == 0:
        raise DataError(f"data spec {spec!r} holds no text: give a file or dataset with documents in it")


def _dispatch(spec: str, text: RecordText) -> Iterator[str]:
    if not isinstance(spec, (str, os.PathLike)) or not str(spec).strip():
        # An empty path would read the current folder: refuse it instead.
        raise DataError(f"the data spec is {'empty' if isinstance(spec, str) else type(spec).__name__}: give a "
                        f"file or folder, 'hf:NAME[:CONFIG][:SPLIT]' or 'builtin:{BUILTIN_SOURCES[0]}'")
    spec = os.fspath(spec)
    if spec.startswith("hf:"):
        yield from _hf_documents(*parse_hf_spec(spec), text=text)
    elif spec.startswith("builtin:"):
        yield from _builtin_documents(spec[len("builtin:"):])
    else:
        yield from _path_documents(Path(spec).expanduser(), text)


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


def _path_documents(path: Path, text: RecordText) -> Iterator[str]:
    require_local_data(str(path))
    if path.is_dir():
        from minitron.data.shards import is_prepared  # shards reads documents from here
        if is_prepared(path):
            raise DataError(f"{str(path)!r} holds prepared tokens (from `minitron tokenize`), not text: pass it as "
                            "--data to a command, which reads it as it is")
        for file in folder_files(path):
            yield from file_documents(file, text)
        return
    yield from file_documents(path, text)


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


def _hf_documents(name: str, config: str | None, split: str, text: RecordText) -> Iterator[str]:
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
        yield text(record, f"{label}, record {index}")
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
