"""Reading text files: strict UTF-8 with the BOM dropped, and big `.txt` files cut into documents.

Files compressed with gzip (`.gz`) or zstandard (`.zst`) are read through a decompressing stream
(pyarrow's codecs, installed with `datasets`), so `corpus.jsonl.zst` reads like `corpus.jsonl`.

Text that is not valid UTF-8 is refused with the file, the byte offset and a way to convert it:
reading it with replacement characters would silently train on garbage, and guessing an encoding
would silently train on the wrong characters.

A `.txt` file up to `TXT_SPLIT_ABOVE_BYTES` is one document. A bigger one is cut into many, since
documents are the unit of the train / held-out split: at blank lines (paragraphs, grouped into
documents of at least `TXT_CHUNK_CHARS`), and a paragraph longer than `PARAGRAPH_MAX_CHARS` (a file
with one sentence per line and no blank line is one such paragraph) at line ends; a line longer
than that is cut into fixed-size pieces.
"""
from __future__ import annotations

import codecs
import io
import re
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

from minitron.errors import DataError

BOM = "\ufeff"
TXT_SPLIT_ABOVE_BYTES = 8_000
TXT_CHUNK_CHARS = 2_000
# Far above any ordinary paragraph (a few hundred words), so that files of ordinary paragraphs are cut
# exactly where they always were.
PARAGRAPH_MAX_CHARS = 8_000

# Line ends as Python's universal newlines reads them (what `open(..., "r")` did before).
_LINE_END = re.compile(r"\r\n|\r|\n")


def strip_bom(text: str) -> str:
    """`text` without a leading byte-order mark (which tokenizers would turn into tokens)."""
    return text.removeprefix(BOM)


# Compression suffixes and pyarrow's names for their codecs.
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd"}


def compression_of(path: Path) -> str | None:
    """pyarrow's codec name for a compressed file (by its last suffix), else None."""
    return COMPRESSIONS.get(path.suffix.lower())


def open_binary(path: Path) -> BinaryIO:
    """The file's bytes, decompressed when its name ends in .gz or .zst; buffered, so it iterates by line."""
    codec = compression_of(path)
    if codec is None:
        return path.open("rb")
    import pyarrow as pa  # installed with `datasets`; imported here because it is slow

    return io.BufferedReader(pa.input_stream(str(path), compression=codec))


def read_bytes(path: Path, limit: int = -1) -> bytes:
    """The file's (decompressed) bytes, at most `limit` of them (-1: all)."""
    try:
        with open_binary(path) as handle:
            return handle.read(limit)
    except OSError as error:  # pyarrow reports a corrupt .gz / .zst as OSError (ArrowIOError)
        raise DataError(f"cannot read {path}: {error}; check that the file is complete and what its name "
                        f"says it is") from None


def read_text(path: Path) -> str:
    """The whole file as text: strict UTF-8, BOM dropped, line ends turned into "\\n"."""
    data = read_bytes(path)
    bom = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    return _LINE_END.sub("\n", _decode(data[bom:], path, offset=bom, line=None))


def text_lines(path: Path) -> Iterator[str]:
    """The lines of the file without their line ends, read one at a time (strict UTF-8, BOM dropped)."""
    offset = 0
    with open_binary(path) as handle:
        for number, raw in enumerate(_checked_lines(handle, path), start=1):
            text = _decode(raw, path, offset, number)
            if number == 1:
                text = strip_bom(text)
            offset += len(raw)
            lines = _LINE_END.split(text)
            yield from lines[:-1] if lines[-1] == "" else lines


def _checked_lines(handle: BinaryIO, path: Path) -> Iterator[bytes]:
    lines = iter(handle)
    while True:
        try:
            line = next(lines)
        except StopIteration:
            return
        except OSError as error:  # a truncated or corrupt .gz / .zst fails part-way
            raise DataError(f"cannot read {path}: {error}; check that the file is complete") from None
        yield line


# UTF-32 before UTF-16: the UTF-32-LE mark starts with the UTF-16-LE one.
_WIDE_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
              (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def _decode(data: bytes, path: Path, offset: int, line: int | None) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        where = f"byte {offset + error.start}" + (f" (line {line})" if line is not None else "")
        wide = next((name for bom, name in _WIDE_BOMS if offset == 0 and data.startswith(bom)), None)
        advice = (f"it starts with a {wide.upper()} byte-order mark: convert it first, e.g. "
                  f"`iconv -f {wide} -t utf-8 {path} > converted{path.suffix}`" if wide else
                  f"convert the file to UTF-8 first, e.g. `iconv -f latin1 -t utf-8 {path} > converted"
                  f"{path.suffix}` if it is Latin-1 (or `-f cp1252` for Windows text)")
        raise DataError(f"{path} is not UTF-8 text: {where} is 0x{data[error.start]:02x}, which UTF-8 does not "
                        f"allow there; {advice}") from None
    if "\x00" in text:  # valid UTF-8, but no text holds NUL: UTF-16 without a byte-order mark, or binary
        where = f"byte {offset + data.index(0)}" + (f" (line {line})" if line is not None else "")
        raise DataError(f"{path} is not UTF-8 text: {where} is a NUL byte, as in UTF-16 text without a "
                        f"byte-order mark or a binary file; convert it first, e.g. `iconv -f utf-16le -t utf-8 "
                        f"{path} > converted{path.suffix}` if it is UTF-16 (Windows' 'Unicode')")
    return text


# --- .txt documents --------------------------------------------------------------------------------

def txt_documents(path: Path) -> Iterator[str]:
    """The documents of one `.txt` (or `.md`) file (see the module docstring)."""
    small = (path.stat().st_size <= TXT_SPLIT_ABOVE_BYTES if compression_of(path) is None
             else len(read_bytes(path, TXT_SPLIT_ABOVE_BYTES + 1)) <= TXT_SPLIT_ABOVE_BYTES)  # the text's size
    if small:
        yield read_text(path).strip()
        return
    yield from _group_paragraphs(_paragraphs(_cut_long_lines(text_lines(path))), TXT_CHUNK_CHARS)


def _cut_long_lines(lines: Iterable[str]) -> Iterator[str]:
    for line in lines:
        if len(line) <= PARAGRAPH_MAX_CHARS:
            yield line
        else:
            yield from (line[start:start + TXT_CHUNK_CHARS] for start in range(0, len(line), TXT_CHUNK_CHARS))


def _paragraphs(lines: Iterable[str]) -> Iterator[str]:
    """Paragraphs (split on blank lines); one longer than PARAGRAPH_MAX_CHARS comes in pieces of about
    TXT_CHUNK_CHARS, cut at line ends.

    Streams: at most PARAGRAPH_MAX_CHARS (plus one line) are held, however long the paragraph.
    """
    current: list[str] = []
    size = 0
    too_long = False
    for line in lines:
        if not line.strip():
            if current:
                yield "\n".join(current)
            current, size, too_long = [], 0, False
            continue
        current.append(line)
        size += len(line)
        if size >= PARAGRAPH_MAX_CHARS and not too_long:
            too_long = True
            *full, current = _line_groups(current)
            yield from ("\n".join(group) for group in full)
            size = sum(map(len, current))
        if too_long and size >= TXT_CHUNK_CHARS:
            yield "\n".join(current)
            current, size = [], 0
    if current:
        yield "\n".join(current)


def _line_groups(lines: list[str]) -> list[list[str]]:
    """Consecutive lines in groups of at least TXT_CHUNK_CHARS, but the last group, which may be shorter."""
    groups: list[list[str]] = [[]]
    size = 0
    for line in lines:
        if size >= TXT_CHUNK_CHARS:
            groups.append([])
            size = 0
        groups[-1].append(line)
        size += len(line)
    return groups


def _group_paragraphs(paragraphs: Iterable[str], min_chars: int) -> Iterator[str]:
    group: list[str] = []
    size = 0
    for paragraph in paragraphs:
        group.append(paragraph)
        size += len(paragraph)
        if size >= min_chars:
            yield "\n\n".join(group).strip()
            group, size = [], 0
    if group:
        yield "\n\n".join(group).strip()
