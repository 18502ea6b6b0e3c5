"""A content-addressed cache of prepared data: a data spec is tokenized once, then read by everyone.

    shards = prepare_data("corpus.jsonl", tokenizer)          # tokenizes on the first call only
    shards = prepare_data("tokens/", tokenizer)               # a folder from `minitron tokenize`: used as is

The key hashes the spec, its files' sizes and modification times (a Hugging Face hub dataset: its
revision), the text field, the chat-template mode and the tokenizer's chat template, the tokenizer
fingerprint, the split rule and the code that reads documents, so any change to one of them makes a new
entry. Entries live under `--cache-dir`, else $MINITRON_DATA_CACHE, else $MINITRON_CACHE/tokens (default
~/.cache/minitron/tokens). Distillation stages, resumes, search candidates, recipes and every rank share
them. Under torch.distributed, rank 0 builds while the others wait for it (bounded by the process group's
timeout: tokenize a very large corpus beforehand with `minitron tokenize`; the cache folder must be one
every rank sees). Entries are written atomically (see `shards.write_shards`).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from ..errors import DataError
from . import blocks, chat, formats, sources, textfiles
from .blocks import token_blocks
from .chat import chat_template_digest, check_chat_template_mode
from .shards import FORMAT_VERSION, TokenShards, is_prepared, tokenizer_fingerprint, write_shards

CACHE_ENV = "MINITRON_DATA_CACHE"


def data_cache_dir(cache_dir: str | Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    from ..loading import cache_dir as minitron_cache
    return minitron_cache() / "tokens"


def cache_key(spec: str, tokenizer, *, text_field: str = "text", heldout_fraction: float = 0.1,
              chat_template: str = "auto") -> str:
    """The cache entry's name: a digest of everything that decides its tokens."""
    check_chat_template_mode(chat_template)
    reader_code = hashlib.sha256(b"".join(Path(module.__file__).read_bytes()
                                          for module in (sources, formats, textfiles, chat, blocks)))
    if not spec.startswith(("hf:", "builtin:")):
        spec = str(Path(spec).expanduser().resolve())  # ./a.txt and /abs/a.txt are one entry
    identity = {"spec": spec, "source": source_stamp(spec, text_field), "text_field": text_field,
                "tokenizer": tokenizer_fingerprint(tokenizer), "heldout_fraction": heldout_fraction,
                "format": FORMAT_VERSION, "reader": reader_code.hexdigest()[:16], "chat_template": chat_template,
                "chat_template_digest": chat_template_digest(tokenizer, chat_template)}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def source_stamp(spec: str, text_field: str = "text") -> dict:
    """What identifies the content of `spec` cheaply: paths, sizes and times of its files, or a revision."""
    if spec.startswith("builtin:"):
        return {"python": sys.version, "stdlib": sources.sysconfig.get_paths()["stdlib"]}
    if spec.startswith("hf:"):
        name, config, split = sources.parse_hf_spec(spec)
        local = Path(name).expanduser()
        if local.exists():
            return {"files": _file_stamps(local), "config": config, "split": split}
        return {"revision": _hub_revision(name), "config": config, "split": split}
    sources.require_local_data(spec)
    return {"files": _file_stamps(Path(spec).expanduser())}


def _file_stamps(path: Path) -> list:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [[str(file.resolve()), file.stat().st_size, file.stat().st_mtime_ns] for file in files]


def _hub_revision(name: str) -> str:
    """The dataset's current commit on the hub; offline, "unknown" (the entry then follows the name only)."""
    try:
        from huggingface_hub import HfApi
        return HfApi().dataset_info(name).sha or "unknown"
    except Exception:  # offline, private or renamed: the load itself reports those clearly
        return "unknown"


def cached_shards(data: str, tokenizer, *, text_field: str = "text", heldout_fraction: float = 0.1,
                  cache_dir: str | Path | None = None, chat_template: str = "auto") -> TokenShards | None:
    """The prepared data for `data` when it exists (a prepared folder, or a finished cache entry), else None."""
    folder = _prepared_folder(data, tokenizer, text_field, heldout_fraction, cache_dir, chat_template)
    return _open(folder, tokenizer) if is_prepared(folder) else None


def prepare_data(data: str, tokenizer, *, text_field: str = "text", heldout_fraction: float = 0.1,
                 cache_dir: str | Path | None = None, num_proc: int = 1, chat_template: str = "auto") -> TokenShards:
    """Prepared data for `data` (a spec or a prepared folder), tokenizing it into the cache when needed.

    The returned shards' `built` attribute says whether this call tokenized anything.
    """
    folder = _prepared_folder(data, tokenizer, text_field, heldout_fraction, cache_dir, chat_template)
    if is_prepared(folder):
        return _open(folder, tokenizer)
    build = lambda: write_shards(data, tokenizer, folder, text_field=text_field,  # noqa: E731
                                 heldout_fraction=heldout_fraction, num_proc=num_proc, chat_template=chat_template)
    if dist.is_available() and dist.is_initialized():
        return _build_on_rank_zero(build, data, folder)
    return _build_logged(build, data, folder)


def _prepared_folder(data: str, tokenizer, text_field: str, heldout_fraction: float,
                     cache_dir: str | Path | None, chat_template: str) -> Path:
    """`data` itself when it is prepared, else its cache entry (which may not exist yet)."""
    if is_prepared(data):
        return Path(data).expanduser()
    key = cache_key(data, tokenizer, text_field=text_field, heldout_fraction=heldout_fraction,
                    chat_template=chat_template)
    return data_cache_dir(cache_dir) / key


def _open(folder: Path, tokenizer) -> TokenShards:
    shards = TokenShards(folder)
    shards.check_tokenizer(tokenizer)
    return shards


def _build_logged(build, data: str, folder: Path) -> TokenShards:
    print(f"tokenizing {data} into {folder} (once: later runs reuse it)", flush=True)
    shards = build()
    shards.built = True
    return shards


def _build_on_rank_zero(build, data: str, folder: Path) -> TokenShards:
    """Rank 0 builds; the others wait for its outcome (broadcast, so that a failure stops every rank)."""
    outcome: list = [None]
    if dist.get_rank() == 0:
        try:
            _build_logged(build, data, folder)
            outcome = ["ok"]
        except Exception as error:
            outcome = [str(error)]
            dist.broadcast_object_list(outcome, src=0)
            raise
    dist.broadcast_object_list(outcome, src=0)
    if outcome[0] != "ok":
        raise DataError(f"rank 0 could not prepare the data: {outcome[0]}")
    shards = TokenShards(folder)
    shards.built = dist.get_rank() == 0
    return shards


def load_blocks(data: str, tokenizer, seq_len: int, num_blocks: int, split: str = "train", *,
                text_field: str = "text", heldout_fraction: float = 0.1, allow_fewer: bool = False,
                cache_dir: str | Path | None = None, chat_template: str = "auto") -> torch.LongTensor:
    """`token_blocks` for callers that need a prefix of the data (importance, eval, search).

    Reads the prepared data when it exists (a prepared folder, or the cache entry a distillation built);
    otherwise tokenizes just the documents it needs. Both give the same blocks.
    """
    shards = cached_shards(data, tokenizer, text_field=text_field, heldout_fraction=heldout_fraction,
                           cache_dir=cache_dir, chat_template=chat_template)
    if shards is not None:
        return shards.blocks(split, seq_len, num_blocks, allow_fewer=allow_fewer)
    return token_blocks(data, tokenizer, seq_len, num_blocks, split=split, heldout_fraction=heldout_fraction,
                        text_field=text_field, allow_fewer=allow_fewer, chat_template=chat_template)
