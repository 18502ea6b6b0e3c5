"""Token blocks: documents tokenized, packed end to end and cut into fixed-length rows.

Documents are split into "train" and "heldout" by their index with a deterministic hash, so that
calibration / distillation data and evaluation data never share a document, and held-out
documents are spread over the whole corpus rather than taken from its end.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, TypeVar

import torch

from minitron.data.sources import iter_documents
from minitron.data.textfiles import TXT_SPLIT_ABOVE_BYTES
from minitron.errors import DataError

SPLITS = ("train", "heldout", "all")

# Fibonacci hashing: frac(i * 2654435761 / 2**32) (2654435761 ~ 2**32 / golden ratio) is an evenly
# spread sequence, so any fraction of documents is held out, even in a small corpus.
_HASH_MULTIPLIER = 2654435761
_HASH_BITS = 32

# Documents are tokenized in small batches (fast Rust tokenizers parallelize within a batch) and
# reading stops once enough tokens are in: at most one batch is read beyond what is needed.
T = TypeVar("T")
_DOCS_PER_BATCH = 32
_CHARS_PER_BATCH = 200_000


def is_heldout(index: int, heldout_fraction: float) -> bool:
    """Whether document number `index` belongs to the held-out split."""
    # index + 1: document 0 hashes to 0 and would always be held out, leaving a one-document
    # corpus with no training text.
    position = ((index + 1) * _HASH_MULTIPLIER) % (1 << _HASH_BITS)
    return position < heldout_fraction * (1 << _HASH_BITS)


def token_blocks(
    spec: str,
    tokenizer,
    seq_len: int,
    num_blocks: int,
    split: str = "train",
    heldout_fraction: float = 0.1,
    text_field: str = "text",
    allow_fewer: bool = False,
    chat_template: str = "auto",
) -> torch.LongTensor:
    """A (num_blocks, seq_len) LongTensor of consecutive tokens from the documents of `spec`.

    Each document is tokenized without special tokens and followed by the tokenizer's EOS token
    (when it has one); the stream is cut into consecutive blocks and the incomplete tail is dropped.
    `split` is "train", "heldout" (see `is_heldout`) or "all". Chat rows are rendered with the tokenizer's
    chat template unless `chat_template` is "off" (see `minitron.data.chat`). With `allow_fewer`, a corpus too small
    for `num_blocks` gives every whole block it has (training cycles over them) instead of an error.
    """
    _validate(seq_len, num_blocks, split, heldout_fraction, tokenizer)
    needed = seq_len * num_blocks
    ids: list[int] = []
    tally = DocumentTally()
    documents = iter_documents(spec, text_field, chat_template=chat_template, tokenizer=tokenizer)
    for batch in _document_batches(documents, split, heldout_fraction, tally):
        ids.extend(encode_documents(tokenizer, batch))
        if len(ids) >= needed:
            break
    if len(ids) < needed:
        if not allow_fewer or len(ids) < seq_len:
            raise DataError(too_few_message(spec, split, len(ids), tally, seq_len, num_blocks, allow_fewer,
                                            heldout_fraction))
        num_blocks, needed = len(ids) // seq_len, len(ids) // seq_len * seq_len
    return torch.tensor(ids[:needed], dtype=torch.long).view(num_blocks, seq_len)


def iter_batches(blocks: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Yield consecutive (batch, seq) slices of `blocks`, in order; the last may be smaller."""
    if batch_size < 1:
        raise DataError(f"batch size must be at least 1, got {batch_size}")
    for start in range(0, blocks.shape[0], batch_size):
        yield blocks[start:start + batch_size]


def _validate(seq_len: int, num_blocks: int, split: str, heldout_fraction: float, tokenizer) -> None:
    if not callable(tokenizer) or not hasattr(tokenizer, "eos_token_id"):
        raise DataError(f"token blocks need the model's tokenizer (from minitron.load_model), got "
                        f"{type(tokenizer).__name__}")
    if seq_len < 2:
        raise DataError(f"sequence length must be at least 2 (one input and one target), got {seq_len}")
    if num_blocks < 1:
        raise DataError(f"number of samples must be at least 1, got {num_blocks}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if not 0 <= heldout_fraction < 1:
        raise DataError(f"held-out fraction must be in [0, 1), got {heldout_fraction}")
    if split == "heldout" and heldout_fraction == 0:
        raise DataError("the held-out split is empty because the held-out fraction is 0: raise it, or use split 'all'")


@dataclass
class DocumentTally:
    """Documents read so far: all of them, and those of the split asked for (for error messages)."""

    read: int = 0
    in_split: int = 0


def batches_of_documents(items: Iterable[T], text_of: Callable[[T], str], max_documents: int,
                         max_chars: int) -> Iterator[list[T]]:
    """`items` grouped for one tokenizer call: at most `max_documents` each, or about `max_chars` of text."""
    batch: list[T] = []
    chars = 0
    for item in items:
        batch.append(item)
        chars += len(text_of(item))
        if len(batch) >= max_documents or chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _document_batches(documents: Iterable[str], split: str, heldout_fraction: float,
                      tally: DocumentTally) -> Iterator[list[str]]:
    def in_split() -> Iterator[str]:
        for index, document in enumerate(documents):
            tally.read = index + 1
            if split != "all" and is_heldout(index, heldout_fraction) != (split == "heldout"):
                continue
            tally.in_split += 1
            yield document

    return batches_of_documents(in_split(), lambda document: document, _DOCS_PER_BATCH, _CHARS_PER_BATCH)


def encode_documents(tokenizer, documents: list[str]) -> list[int]:
    """Token ids of `documents`, end to end (see `encode_each`)."""
    return [token for tokens in encode_each(tokenizer, documents) for token in tokens]


def encode_each(tokenizer, documents: list[str]) -> list[list[int]]:
    """Each document's token ids, without special tokens and followed by EOS (when the tokenizer has one).

    The one definition of how text becomes tokens: `token_blocks` and the token shards both use it.
    """
    # verbose=False: documents longer than the model's context are expected here (they are cut
    # into blocks), so the "sequence length is longer than" warning would only be noise.
    encoded = tokenizer(documents, add_special_tokens=False, verbose=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return [[*tokens, eos] if eos is not None else list(tokens) for tokens in encoded]


def too_few_message(spec: str, split: str, tokens: int, tally: DocumentTally, seq_len: int, num_blocks: int,
                     allow_fewer: bool, heldout_fraction: float) -> str:
    blocks = tokens // seq_len
    # With allow_fewer any whole block will do, so the only shortfall is having none.
    asked = "at least 1 is needed" if allow_fewer else f"{num_blocks} were asked"
    message = (f"data {spec!r} ({split} split) holds {tokens} tokens in {tally.in_split} of its "
               f"{tally.read} documents: {blocks} blocks of {seq_len} tokens, but {asked}")
    remedies = []
    if blocks and not allow_fewer:
        remedies.append(f"--samples {blocks} or fewer")
    longest = tokens if allow_fewer else tokens // num_blocks
    if longest >= 2:
        remedies.append(f"--seq-len {longest} or less")
    if split == "heldout":
        message += (f"; the held-out split is whole documents, about {heldout_fraction:.0%} of them "
                    f"(a .txt file up to {TXT_SPLIT_ABOVE_BYTES // 1000} KB is one document)")
        remedies.append("more documents (more files, or bigger ones)" + ("" if allow_fewer else " or --split all"))
    else:
        remedies.append("more data")
    if len(remedies) == 1:
        return f"{message}; use {remedies[0]}"
    return f"{message}; use {', '.join(remedies[:-1])}, or {remedies[-1]}"
