"""Data: documents from files, Hugging Face datasets or text shipped with Python, packed into token blocks."""
from minitron.data.blocks import SPLITS, is_heldout, iter_batches, token_blocks
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
    "FILE_EXTENSIONS",
    "SPLITS",
    "is_heldout",
    "iter_batches",
    "iter_documents",
    "parse_hf_spec",
    "python_docstrings",
    "python_topics",
    "token_blocks",
]
