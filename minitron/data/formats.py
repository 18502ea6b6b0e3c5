"""Local data files: which format a file is, how each format yields documents, and folders of shards.

    .txt .md            plain text (see `textfiles`: a big file is cut into many documents)
    .jsonl .json        JSON records; the text is the --text-field field, or chat turns (see `chat`)
    .csv .tsv           a table with a header; the text is the --text-field column
    .parquet            a table; the text is the --text-field column, or a `messages` column of chat turns

Any of them but Parquet (which compresses inside) may be compressed: `.jsonl.gz`, `.csv.zst`, `.txt.gz`.
A folder is read as shards: every file in it (recursively, in sorted path order; hidden files and folders
are skipped), all of one format, so that a stray file never changes what is trained on silently.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

from minitron.data.chat import RecordText
from minitron.data.textfiles import COMPRESSIONS, compression_of, open_binary, read_text, text_lines, txt_documents
from minitron.errors import DataError

# Extension -> format; one format per folder (.txt and .md are both plain text, .jsonl and .json both records).
FORMATS = {".txt": "text", ".md": "text", ".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "tsv",
           ".parquet": "parquet"}
FILE_EXTENSIONS = tuple(FORMATS)
_LISTED = 3  # file names quoted in an error about a folder


def file_format(path: Path) -> str | None:
    """The format of a file by its name ("text", "json", "csv", "tsv", "parquet"), or None if unsupported."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes = suffixes[:-1]
        if suffixes and suffixes[-1] == ".parquet":
            return None  # Parquet compresses its pages itself; a compressed Parquet file is a mistake
    return FORMATS.get(suffixes[-1]) if suffixes else None


def unsupported_file_message(path: Path) -> str:
    extensions = ", ".join(FILE_EXTENSIONS)
    return (f"cannot read {str(path)!r}: unknown extension {''.join(path.suffixes[-2:]) or '(none)'!r}; use one of "
            f"{extensions} (any but .parquet may end in {' or '.join(COMPRESSIONS)}), a folder of such files, "
            f"or 'hf:NAME'")


def file_documents(path: Path, text: RecordText) -> Iterator[str]:
    """The documents of one local file, by its format."""
    kind = file_format(path)
    if kind is None:
        raise DataError(unsupported_file_message(path))
    readers: dict[str, Callable[[Path, RecordText], Iterator[str]]] = {
        "text": lambda p, _: txt_documents(p), "json": _json_file_documents, "csv": _table_documents,
        "tsv": _table_documents, "parquet": _parquet_documents}
    yield from readers[kind](path, text)


def folder_files(folder: Path) -> list[Path]:
    """The data files of a folder of shards, in sorted order; refuses a folder of mixed or unknown files."""
    files = sorted(p for p in folder.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    unsupported = [p for p in files if file_format(p) is None]
    if unsupported:
        raise DataError(f"folder {str(folder)!r} holds files minitron cannot read ({_names(unsupported, folder)}): "
                        f"a data folder holds only {', '.join(FILE_EXTENSIONS)} files (optionally .gz / .zst); "
                        f"move the others out, or point --data at one file")
    kinds = Counter(file_format(p) for p in files)
    if len(kinds) > 1:
        found = "; ".join(f"{count} {kind} ({_names([p for p in files if file_format(p) == kind], folder)})"
                          for kind, count in kinds.most_common())
        raise DataError(f"folder {str(folder)!r} mixes formats: {found}; a data folder holds shards of one "
                        f"format, so put each format in its own folder and train on one")
    if not files:
        raise DataError(f"folder {str(folder)!r} holds no data files: put {', '.join(FILE_EXTENSIONS)} files in it")
    return files


def _names(files: list[Path], folder: Path) -> str:
    names = [str(p.relative_to(folder)) for p in files[:_LISTED]]
    return ", ".join(names) + (f" and {len(files) - _LISTED} more" if len(files) > _LISTED else "")


# --- JSON records ---------------------------------------------------------------------------------

def _json_file_documents(path: Path, text: RecordText) -> Iterator[str]:
    if _inner_suffix(path) == ".jsonl":
        yield from _jsonl_documents(path, text)
    else:
        yield from _json_documents(path, text)


def _inner_suffix(path: Path) -> str:
    """The suffix that names the format: `.jsonl` for both `a.jsonl` and `a.jsonl.gz`."""
    name = path.name[:-len(path.suffix)] if compression_of(path) else path.name
    return Path(name).suffix.lower()


def _jsonl_documents(path: Path, text: RecordText) -> Iterator[str]:
    for number, line in enumerate(text_lines(path), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: invalid JSON ({exc.msg}); each line must be one JSON object") from exc
        yield text(record, where)


def _json_documents(path: Path, text: RecordText) -> Iterator[str]:
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError:
        # Not a single JSON value: many `.json` files are JSON lines in disguise.
        yield from _jsonl_documents(path, text)
        return
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of JSON objects, got {type(data).__name__}")
    for index, record in enumerate(data):
        yield text(record, f"{path}[{index}]")


# --- tables ---------------------------------------------------------------------------------------

def _missing_column(path: Path, text: RecordText, columns: list[str]) -> DataError:
    return DataError(f"{path}: no {text.text_field!r} column (columns found: {', '.join(map(repr, columns))}); "
                     f"pass the column holding the text with --text-field")


def _parquet_documents(path: Path, text: RecordText) -> Iterator[str]:
    import pyarrow.parquet as pq  # installed with `datasets`; imported here because it is slow

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise DataError(f"cannot read parquet file {str(path)!r}: {exc}") from exc
    columns = parquet.schema_arrow.names
    column = text.column(columns)
    if column not in columns:
        raise _missing_column(path, text, columns)
    # Read in batches so that a big file is never loaded whole when only a few blocks are needed.
    for batch in parquet.iter_batches(columns=[column], batch_size=1024):
        for value in batch.column(0).to_pylist():
            yield text({column: value}, str(path))


def _table_documents(path: Path, text: RecordText) -> Iterator[str]:
    """The text column of a .csv / .tsv file (header row first; quoted values may span lines), streamed."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    parse = pcsv.ParseOptions(delimiter="\t" if file_format(path) == "tsv" else ",", newlines_in_values=True)
    try:
        with open_binary(path) as handle:
            columns = pcsv.open_csv(handle, parse_options=parse).schema.names
        if text.text_field not in columns:
            raise _missing_column(path, text, columns)
        convert = pcsv.ConvertOptions(include_columns=[text.text_field], column_types={text.text_field: pa.string()})
        with open_binary(path) as handle:
            for batch in pcsv.open_csv(handle, parse_options=parse, convert_options=convert):
                for value in batch.column(0).to_pylist():
                    yield text({text.text_field: value}, str(path))
    except (pa.ArrowException, OSError) as error:
        if "UTF8" in str(error):
            read_text(path)  # raises the error that says where and how to convert
        raise DataError(f"cannot read {str(path)!r} as {file_format(path)}: {error}") from None
