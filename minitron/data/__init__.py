"""Data: documents from files, Hugging Face datasets or text shipped with Python, packed into token blocks;
prepared once into memory-mapped token shards (shards.py, cache.py) that training reads block by block (loader.py)."""
from minitron.data.blocks import SPLITS, is_heldout, iter_batches, token_blocks
from minitron.data.cache import load_blocks, prepare_data
from minitron.data.shards import TokenShards, write_shards
from minitron.data.sources import (
    BUILTIN_SOURCES,
    FILE_EXTENSIONS,
    iter_documents,
    parse_hf_spec,
    python_docstrings,
    python_topics,
)

__all__ = [
    "BUILTIN_SOURCES",
    "TokenShards",
    "FILE_EXTENSIONS",
    "SPLITS",
    "is_heldout",
    "iter_batches",
    "iter_documents",
    "load_blocks",
    "parse_hf_spec",
    "prepare_data",
    "python_docstrings",
    "python_topics",
    "token_blocks",
    "write_shards",
]
