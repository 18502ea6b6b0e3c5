"""Settings of every stage as dataclasses: each field carries its help text and validates itself.

The CLI is generated from these (`cli.add_dataclass_arguments`), so the Python API and the command
line never drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import MinitronError
from .importance.aggregate import REDUCTIONS


def _help(text: str, **kwargs):
    return field(metadata={"help": text}, **kwargs)


def _require_positive(obj, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and value <= 0:
            raise MinitronError(f"--{name.replace('_', '-')} must be positive, got {value}")


@dataclass
class DataConfig:
    data: str = _help("Text to read: a .txt file or folder, .jsonl/.json, .parquet, hf:NAME[:CONFIG][:SPLIT], "
                      "or builtin:python-docs (CPython's own documentation).", default="builtin:python-docs")
    text_field: str = _help("Field holding the text in JSON/Parquet/HF records.", default="text")
    samples: int = _help("Number of blocks (sequences) to use.", default=1024)
    seq_len: int = _help("Tokens per block.", default=512)
    batch_size: int = _help("Blocks per forward pass.", default=8)

    def __post_init__(self) -> None:
        _require_positive(self, "samples", "seq_len", "batch_size")


@dataclass
class ImportanceConfig:
    criterion: str = _help("activation (the Minitron method), or the baselines magnitude / random.",
                           default="activation")
    seq_reduction: str = _help("How activations are reduced over the sequence: mean (of |a|), l2, var.",
                               default="mean")
    batch_reduction: str = _help("How per-sample scores are reduced over samples: mean, l2, var.", default="l2")
    layer_loss_samples: int = _help("Also score layers by the LM-loss increase when each is skipped, on this "
                                    "many samples (costs one forward per layer; 0 = Block Influence only).",
                                    default=16)
    seed: int = _help("Seed of the random criterion.", default=0)

    def __post_init__(self) -> None:
        if self.criterion not in ("activation", "magnitude", "random"):
            raise MinitronError(f"--criterion must be activation, magnitude or random, got {self.criterion!r}")
        for name in ("seq_reduction", "batch_reduction"):
            if getattr(self, name) not in REDUCTIONS:
                raise MinitronError(f"--{name.replace('_', '-')} must be one of {REDUCTIONS}")
        if self.layer_loss_samples < 0:
            raise MinitronError("--layer-loss-samples must be >= 0")


@dataclass
class TargetConfig:
    hidden_size: int | None = _help("Embedding (hidden) channels to keep.", default=None)
    intermediate_size: int | None = _help("MLP neurons to keep in every layer.", default=None)
    num_attention_heads: int | None = _help("Query heads to keep in every layer (evenly per KV group).",
                                            default=None)
    num_key_value_heads: int | None = _help("KV groups to keep (whole groups are pruned).", default=None)
    num_hidden_layers: int | None = _help("Layers to keep, chosen by --depth-metric.", default=None)
    drop_layers: str | None = _help("Explicit source layers to drop, e.g. '16-30' or '3,5,7'.", default=None)

    def as_target(self) -> dict:
        from .prune.target import parse_layer_list
        target = {k: v for k, v in vars(self).items() if v is not None and k != "drop_layers"}
        if self.drop_layers:
            target["drop_layers"] = parse_layer_list(self.drop_layers)
        return target
