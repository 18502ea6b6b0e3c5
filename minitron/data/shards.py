"""Prepared data: documents tokenized once into memory-mapped token shards, with a manifest.

    minitron tokenize --data builtin:python-docs --tokenizer builtin:smollm2-135m --out tokens/ --num-proc 4

    shards = write_shards("corpus.jsonl", tokenizer, "tokens/", num_proc=4)
    blocks = TokenShards("tokens/").blocks("heldout", seq_len=512, num_blocks=32)

A prepared folder holds, per split ("train" and "heldout", by `blocks.is_heldout`, the rule `token_blocks`
uses), the nanoGPT / Megatron layout: one flat array of token ids read through `np.memmap`:

    train.bin, heldout.bin    every token of the split, documents end to end, each followed by EOS
                              (uint16 when the vocabulary fits, else uint32)
    train.idx, heldout.idx    uint64 end offset of each document in its .bin
    manifest.json             source spec, tokenizer fingerprint, documents and tokens per split, EOS handling

The folder is written in a staging folder renamed into place (`minitron.io.atomic_directory`), manifest
last, so an interrupted tokenization leaves nothing a later run would read. The tokens are exactly those
of `token_blocks` for the same spec and split: both go through `iter_documents` and `encode_each`.

Why memmaps rather than Arrow (`datasets.map(batched=True, num_proc=N)`): training reads fixed-length
blocks at arbitrary offsets, which a flat array serves with no copy and no per-row overhead; and a
`multiprocessing` pool over windows of document batches streams any source, where `datasets.map` would
first need the whole corpus as an Arrow table on disk.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import multiprocessing
import signal
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..errors import DataError
from ..io import atomic_directory
from .blocks import SPLITS, DocumentTally, batches_of_documents, encode_each, is_heldout, too_few_message
from .sources import iter_documents

FORMAT = "minitron-token-shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARD_SPLITS = ("train", "heldout")

# Bigger batches than token_blocks': here every document is read anyway, and a batch is the unit of work
# sent to a tokenizer process. Batching does not change any token.
_DOCS_PER_BATCH = 256
_CHARS_PER_BATCH = 1_000_000
# Batches in flight per tokenizer process: bounds memory whatever the corpus size.
_BATCHES_PER_PROCESS = 4


def tokenizer_fingerprint(tokenizer) -> str:
    """A digest of everything that decides the token ids: vocabulary, merges, normalizer, added tokens, EOS."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    rules = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    digest = hashlib.sha256(rules.encode())
    digest.update(json.dumps([type(tokenizer).__name__, len(tokenizer), tokenizer.eos_token_id]).encode())
    return digest.hexdigest()[:16]


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def is_prepared(path: str | Path) -> bool:
    """Whether `path` is a folder written by `write_shards` (or `minitron tokenize`)."""
    return (Path(path).expanduser() / MANIFEST).is_file()


def write_shards(spec: str, tokenizer, out: str | Path, *, text_field: str = "text",
                 heldout_fraction: float = 0.1, num_proc: int = 1, chat_template: str = "auto") -> "TokenShards":
    """Tokenize every document of `spec` into the prepared folder `out` (replaced atomically when it exists)."""
    if not 0 <= heldout_fraction < 1:
        raise DataError(f"held-out fraction must be in [0, 1), got {heldout_fraction}")
    if num_proc < 1:
        raise DataError(f"--num-proc must be at least 1, got {num_proc}")
    dtype = token_dtype(len(tokenizer))
    started = time.perf_counter()
    with atomic_directory(Path(out).expanduser()) as staging:
        writers = {split: _SplitWriter(staging, split, dtype) for split in SHARD_SPLITS}
        try:
            documents = iter_documents(spec, text_field, chat_template=chat_template, tokenizer=tokenizer)
            for encoded in _encoded_batches(documents, tokenizer, heldout_fraction, num_proc):
                for split in SHARD_SPLITS:
                    writers[split].add(encoded[split])
        finally:
            for writer in writers.values():
                writer.close()
        manifest = {
            "format": FORMAT, "version": FORMAT_VERSION, "source": spec, "text_field": text_field,
            "chat_template": chat_template,
            "tokenizer": {"fingerprint": tokenizer_fingerprint(tokenizer), "name": tokenizer.name_or_path,
                          "vocab_size": len(tokenizer)},
            "dtype": dtype.name, "eos_token_id": tokenizer.eos_token_id,
            "eos": "appended after every document" if tokenizer.eos_token_id is not None else "none (no EOS token)",
            "split_rule": {"heldout_fraction": heldout_fraction, "rule": "minitron.data.blocks.is_heldout"},
            "splits": {split: writer.summary() for split, writer in writers.items()},
            "seconds": round(time.perf_counter() - started, 2), "num_proc": num_proc,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))  # last: its presence marks a whole folder
    return TokenShards(out)


class _SplitWriter:
    """Appends one split's documents to its .bin (tokens) and .idx (document end offsets)."""

    def __init__(self, folder: Path, split: str, dtype: np.dtype) -> None:
        self.dtype = dtype
        self.tokens = (folder / f"{split}.bin").open("wb")
        self.ends = (folder / f"{split}.idx").open("wb")
        self.num_tokens = 0
        self.num_documents = 0

    def add(self, documents: list[np.ndarray]) -> None:
        if not documents:
            return
        lengths = np.fromiter((len(d) for d in documents), dtype=np.uint64, count=len(documents))
        tokens = np.concatenate(documents)
        if tokens.size and int(tokens.max()) > np.iinfo(self.dtype).max:
            raise DataError(f"token id {int(tokens.max())} does not fit {self.dtype.name}: the tokenizer's "
                            f"vocabulary is larger than it reports")
        self.tokens.write(tokens.astype(self.dtype).tobytes())
        self.ends.write((np.cumsum(lengths) + np.uint64(self.num_tokens)).tobytes())
        self.num_tokens += int(tokens.size)
        self.num_documents += len(documents)

    def close(self) -> None:
        self.tokens.close()
        self.ends.close()

    def summary(self) -> dict:
        return {"documents": self.num_documents, "tokens": self.num_tokens}


def _flagged_batches(documents: Iterator[str], heldout_fraction: float) -> Iterator[list[tuple[bool, str]]]:
    """(is held out, document) pairs in document order, grouped into tokenizer batches."""
    flagged = ((is_heldout(index, heldout_fraction), document) for index, document in enumerate(documents))
    return batches_of_documents(flagged, lambda pair: pair[1], _DOCS_PER_BATCH, _CHARS_PER_BATCH)


_worker_tokenizer = None


@contextlib.contextmanager
def _worker_signals():
    """Handlers the forked workers start with: Ctrl-C ignored (the parent stops the pool) and SIGTERM fatal
    (Pool.terminate sends it). A worker forked with the CLI's handlers, which raise KeyboardInterrupt, would
    unwind the parent's copied stack if signalled before its worker loop starts: it would clean up the
    parent's partial output folder and carry on as a second copy of the parent."""
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except ValueError:  # not the main thread: handlers cannot be changed, and the CLI installed none here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


def _init_worker(tokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_batch(batch: list[tuple[bool, str]], tokenizer=None) -> dict[str, list[np.ndarray]]:
    """One batch's token arrays, per split, in document order."""
    encoded = encode_each(tokenizer or _worker_tokenizer, [document for _, document in batch])
    result: dict[str, list[np.ndarray]] = {split: [] for split in SHARD_SPLITS}
    for (heldout, _), ids in zip(batch, encoded):
        result["heldout" if heldout else "train"].append(np.asarray(ids, dtype=np.int64))
    return result


def _encoded_batches(documents: Iterator[str], tokenizer, heldout_fraction: float,
                     num_proc: int) -> Iterator[dict[str, list[np.ndarray]]]:
    batches = _flagged_batches(documents, heldout_fraction)
    if num_proc == 1:
        for batch in batches:
            yield _encode_batch(batch, tokenizer)
        return
    # fork: the workers inherit the loaded tokenizer and modules instead of importing them again (seconds).
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with _worker_signals():
        pool = multiprocessing.get_context(method).Pool(num_proc, _init_worker, (tokenizer,))
    with pool:
        # A window of batches at a time, in order (Pool.imap would read the whole corpus ahead).
        while window := list(itertools.islice(batches, num_proc * _BATCHES_PER_PROCESS)):
            yield from pool.map(_encode_batch, window, chunksize=1)


class TokenShards:
    """A prepared folder, read through memory maps: nothing is loaded until asked for."""

    built = False  # set by `cache.prepare_data` when this process tokenized the folder

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).expanduser()
        self.manifest = _read_manifest(self.folder)
        self.dtype = np.dtype(self.manifest["dtype"])

    @property
    def source(self) -> str:
        return self.manifest["source"]

    def num_tokens(self, split: str) -> int:
        return int(self.manifest["splits"][_shard_split(split)]["tokens"])

    def tokens(self, split: str) -> np.ndarray:
        """Every token of `split` ("train" or "heldout"), memory-mapped (read-only)."""
        split = _shard_split(split)
        if self.num_tokens(split) == 0:
            return np.zeros(0, dtype=self.dtype)
        return np.memmap(self.folder / f"{split}.bin", dtype=self.dtype, mode="r", shape=(self.num_tokens(split),))

    def document_ends(self, split: str) -> np.ndarray:
        split = _shard_split(split)
        if self.manifest["splits"][split]["documents"] == 0:
            return np.zeros(0, dtype=np.uint64)
        return np.memmap(self.folder / f"{split}.idx", dtype=np.uint64, mode="r")

    def check_tokenizer(self, tokenizer) -> None:
        """Refuse shards made with another tokenizer: their ids would mean other tokens."""
        expected = self.manifest["tokenizer"]["fingerprint"]
        if tokenizer_fingerprint(tokenizer) != expected:
            raise DataError(
                f"the prepared data in {self.folder} was tokenized with another tokenizer "
                f"({self.manifest['tokenizer']['name']!r}, fingerprint {expected}) than this model's; "
                f"tokenize it again with `minitron tokenize --tokenizer MODEL`, or pass the data spec")

    def blocks(self, split: str, seq_len: int, num_blocks: int, allow_fewer: bool = False) -> torch.LongTensor:
        """The first `num_blocks` blocks of `split`: the same tensor `token_blocks` gives for the source spec."""
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
        needed = seq_len * num_blocks
        tokens = self._all_prefix(needed) if split == "all" else self.tokens(split)[:needed]
        if len(tokens) < needed:
            if not allow_fewer or len(tokens) < seq_len:
                documents = {s: self.manifest["splits"][s]["documents"] for s in SHARD_SPLITS}
                tally = DocumentTally(read=sum(documents.values()),
                                      in_split=sum(n for s, n in documents.items() if split in ("all", s)))
                raise DataError(too_few_message(str(self.folder), split, len(tokens), tally, seq_len, num_blocks,
                                                allow_fewer, self.manifest["split_rule"]["heldout_fraction"]))
            num_blocks = len(tokens) // seq_len
            tokens = tokens[:num_blocks * seq_len]
        return torch.from_numpy(np.asarray(tokens, dtype=np.int64)).view(num_blocks, seq_len)

    def _all_prefix(self, needed: int) -> np.ndarray:
        """The first `needed` tokens of every document in source order (train and held-out interleaved back)."""
        fraction = self.manifest["split_rule"]["heldout_fraction"]
        tokens = {split: self.tokens(split) for split in SHARD_SPLITS}
        ends = {split: self.document_ends(split) for split in SHARD_SPLITS}
        next_document = dict.fromkeys(SHARD_SPLITS, 0)
        pieces, total = [], 0
        index = 0
        while total < needed and any(next_document[s] < len(ends[s]) for s in SHARD_SPLITS):
            split = "heldout" if is_heldout(index, fraction) else "train"
            number = next_document[split]
            start = int(ends[split][number - 1]) if number else 0
            pieces.append(tokens[split][start:int(ends[split][number])])
            total += len(pieces[-1])
            next_document[split] += 1
            index += 1
        return np.concatenate(pieces)[:needed] if pieces else np.zeros(0, dtype=self.dtype)

    def dataset(self, split: str, seq_len: int):
        """A map-style dataset of every whole block of `seq_len` tokens of `split` (see minitron.data.loader)."""
        from .loader import ShardBlocks
        return ShardBlocks(self.folder / f"{_shard_split(split)}.bin", self.dtype, self.num_tokens(split), seq_len)


def _shard_split(split: str) -> str:
    if split not in SHARD_SPLITS:
        raise DataError(f"prepared data holds the splits {', '.join(SHARD_SPLITS)}, not {split!r}")
    return split


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise DataError(f"{folder} is not prepared data (no {MANIFEST}): make it with `minitron tokenize`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is corrupt ({error.msg}); prepare the data again with `minitron tokenize`") from error
    if manifest.get("format") != FORMAT or manifest.get("version") != FORMAT_VERSION:
        raise DataError(f"{path} is not a minitron token-shards manifest (version {FORMAT_VERSION}); "
                        f"prepare the data again with `minitron tokenize`")
    return manifest
