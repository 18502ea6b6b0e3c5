"""Checks made before any model loads, so that a data or length mistake costs seconds, not a model load.

    check_data("corpus.csv", text_field="body")             # exists, readable, the column is there
    check_seq_len("HuggingFaceTB/SmolLM2-135M", 4096)       # within the model's max_position_embeddings

`check_data` reads the first document of every file of a local spec (a folder: each shard), which finds
a missing file or column, an unknown format, a mixed folder, bad JSON or non-UTF-8 text, and chat rows a
tokenizer without a chat template cannot render. `hf:` specs are parsed only: loading one is the
download that the run makes anyway.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError, SettingsError
from ..outputs import require_text
from .chat import ChatNeedsTokenizerError, RecordText, check_chat_template_mode
from .formats import file_documents, folder_files
from .shards import TokenShards, is_prepared
from .sources import BUILTIN_SOURCES, parse_hf_spec, require_local_data


def check_data(spec: str, text_field: str = "text", *, chat_template: str = "auto",
               tokenizer_of: str | None = None) -> None:
    """Raise a DataError now for a data spec the run would fail on later.

    tokenizer_of: the model spec whose tokenizer renders chat rows; it is loaded (tokenizer only) when the
    data holds chat rows, to check that it has a chat template.
    """
    spec = require_text(spec, "--data")
    check_chat_template_mode(chat_template)
    if spec.startswith("hf:"):
        parse_hf_spec(spec)
    elif spec.startswith("builtin:"):
        if spec[len("builtin:"):] not in BUILTIN_SOURCES:
            raise DataError(f"unknown builtin data {spec!r}: use one of "
                            + ", ".join(f"builtin:{name}" for name in BUILTIN_SOURCES))
    elif is_prepared(spec):
        TokenShards(spec)  # reads and checks the manifest
    else:
        _check_files(Path(spec).expanduser(), RecordText(text_field, chat_template), tokenizer_of, spec)


def _check_files(path: Path, text: RecordText, tokenizer_of: str | None, spec: str) -> None:
    require_local_data(str(path))
    found = False
    for file in folder_files(path) if path.is_dir() else [path]:
        try:
            found |= _has_document(file, text)
        except ChatNeedsTokenizerError:
            if tokenizer_of is None:
                found = True  # chat rows, well formed: the tokenizer is checked when it renders them
                continue
            from ..loading import load_tokenizer
            text = RecordText(text.text_field, text.chat_template, load_tokenizer(tokenizer_of))
            found |= _has_document(file, text)
    if not found:
        raise DataError(f"data spec {spec!r} holds no text: give a file or dataset with documents in it")


def _has_document(file: Path, text: RecordText) -> bool:
    return any(document.strip() for document in file_documents(file, text))


def model_positions(model) -> int | None:
    """The longest sequence `model` (a spec, config or model) was built for, or None when unknown without
    loading its weights (a GGUF file: its config comes with the weights)."""
    config = getattr(model, "config", model)
    if isinstance(model, str):
        config = _config_without_weights(model)
    return getattr(config, "max_position_embeddings", None)


def check_seq_len(model, seq_len: int, flag: str = "--seq-len") -> None:
    """Refuse `seq_len` beyond the model's max_position_embeddings: positions it never saw in training
    (models with learned position embeddings fail outright there, and RoPE models degrade silently)."""
    limit = model_positions(model)
    if limit is not None and seq_len > limit:
        name = model if isinstance(model, str) else getattr(getattr(model, "config", model), "_name_or_path", "")
        raise SettingsError(f"{flag} {seq_len} is beyond the max_position_embeddings of {name or 'the model'} "
                            f"({limit}), the longest sequence it was built for; use {flag} {limit} or less")


def _config_without_weights(spec: str):
    from transformers import AutoConfig

    from ..loading import locate_model
    location, gguf_file = locate_model(spec)
    if gguf_file is not None:
        return None  # reading a GGUF file's config costs about as much as loading it: checked after the load
    try:
        return AutoConfig.from_pretrained(location)
    except (OSError, ValueError):
        return None  # the model load reports it, with its own message
