"""Settings of every stage as dataclasses: each field carries its help text and validates itself.

The CLI is generated from these (`cliparse.add_dataclass_arguments`), so the Python API and the command
line never drift apart.
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import torch

from .data.chat import check_chat_template_mode
from .errors import SettingsError
from .importance.aggregate import REDUCTIONS
from .verbosity import check_report_to

# A count as people write budgets: 94000000000, 94e9, 94B, 500M, 2.5k, 1_000_000.
_COUNT = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d{1,2})?)\s*([kmbgt]?)", re.IGNORECASE)
_MAX_COUNT = 10**18  # far beyond any training run; bounds what "1e99" would cost to compute with
_SUFFIXES = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}


def parse_token_count(value: int | float | str) -> int:
    """A token budget as a whole number: an int, a whole float (94e9), or text such as "94e9", "94B",
    "500M", "2.5k" (k, M, B or G, T: thousand, million, billion, trillion; case does not matter).

    The sign is kept (the caller checks the range). Raises SettingsError for anything else.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number = _decimal_count(value)
    if number is None or number != number.to_integral_value():
        raise SettingsError(f"{value!r} is not a whole number of tokens: write it like 5000000, 5e6, 5M, 2.5k "
                            f"or 94B (k, M, B, T: thousand, million, billion, trillion)")
    if abs(number) > _MAX_COUNT:
        raise SettingsError(f"{value!r} tokens is more than 1e18, far beyond any training run; check the exponent")
    return int(number)


def _decimal_count(value) -> Decimal | None:
    # Decimal, not float: "2.5k" must be exactly 2500, and 94B exactly 94 * 10**9.
    if isinstance(value, float) and math.isfinite(value):
        return Decimal(value)
    if isinstance(value, str):
        match = _COUNT.fullmatch(value.strip().replace("_", ""))
        if match:
            return Decimal(match.group(1)) * _SUFFIXES[match.group(2).lower()]
    return None


def _help(text: str, **kwargs):
    return field(metadata={"help": text}, **kwargs)


def token_budget_field(text: str, default: int | None):
    """A dataclass field holding a token count: the CLI and recipes take it as text ("94B", "2.5k")."""
    return field(metadata={"help": text, "parse": parse_token_count}, default=default)


def normalize_token_budget(obj, name: str) -> None:
    """Turn field `name` of dataclass `obj` (as given from Python, the CLI or a recipe) into an int."""
    value = getattr(obj, name)
    if value is not None:
        try:
            setattr(obj, name, parse_token_count(value))
        except SettingsError as error:
            raise SettingsError(f"--{name.replace('_', '-')}: {error}") from None


def _require_positive(obj, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and value <= 0:
            raise SettingsError(f"--{name.replace('_', '-')} must be positive, got {value}")


TEXT_FIELD_HELP = "Field (JSON, HF datasets) or column (CSV/TSV, Parquet) holding the text."
CHAT_TEMPLATE_HELP = ("auto: rows with a 'messages' list of {role, content} are rendered with the tokenizer's chat "
                      "template; off: such rows are refused.")


@dataclass
class DataConfig:
    data: str = _help("Text to read: a .txt/.md, .jsonl/.json, .csv/.tsv or .parquet file (.gz/.zst compressed "
                      "too), a folder of such shards (one format), hf:NAME[:CONFIG][:SPLIT], builtin:python-docs "
                      "(CPython's own documentation), or a folder from `minitron tokenize`.",
                      default="builtin:python-docs")
    text_field: str = _help(TEXT_FIELD_HELP, default="text")
    chat_template: str = _help(CHAT_TEMPLATE_HELP, default="auto")
    samples: int = _help("Number of blocks (sequences) to use.", default=1024)
    seq_len: int = _help("Tokens per block.", default=512)
    batch_size: int = _help("Blocks per forward pass.", default=8)

    def __post_init__(self) -> None:
        _require_positive(self, "samples", "seq_len", "batch_size")
        check_chat_template_mode(self.chat_template)


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
    depth_metric: str | None = _help("task:NAME also ranks every contiguous block of --task-block layers by an "
                                     "lm-eval task's accuracy with the block skipped (the seeds' rule: "
                                     "Winogrande); prune with the same --depth-metric. Needs lm-eval.",
                                     default=None)
    task_block: int | None = _help("Layers in the block that --depth-metric task:NAME drops: the depth cut, "
                                   "e.g. 16 for 32 -> 16 layers.", default=None)
    task_path: str | None = _help("Folder of local lm-eval task YAMLs (lm-eval's --include_path).", default=None)
    task_limit: int | None = _help("Items of the task scored per block (default: all).", default=None)

    def __post_init__(self) -> None:
        if self.criterion not in ("activation", "magnitude", "random"):
            raise SettingsError(f"--criterion must be activation, magnitude or random, got {self.criterion!r}")
        self._check_task_depth()
        for name in ("seq_reduction", "batch_reduction"):
            if getattr(self, name) not in REDUCTIONS:
                raise SettingsError(f"--{name.replace('_', '-')} must be one of {REDUCTIONS}")
        if self.layer_loss_samples < 0:
            raise SettingsError("--layer-loss-samples must be >= 0")

    def _check_task_depth(self) -> None:
        from .importance.task_depth import task_of
        if self.depth_metric is not None and task_of(self.depth_metric) is None:
            raise SettingsError(f"importance --depth-metric takes task:NAME (an lm-eval task), got "
                                f"{self.depth_metric!r}; Block Influence and lm_loss are always computed")
        if self.depth_metric is not None and self.task_block is None:
            raise SettingsError(f"--depth-metric {self.depth_metric} needs --task-block: how many contiguous "
                                "layers the target drops")
        _require_positive(self, "task_block", "task_limit")


@dataclass
class TargetConfig:
    hidden_size: int | None = _help("Embedding (hidden) channels to keep.", default=None)
    intermediate_size: int | None = _help("MLP neurons to keep in every layer.", default=None)
    num_attention_heads: int | None = _help("Query heads to keep in every layer (evenly per KV group).",
                                            default=None)
    num_key_value_heads: int | None = _help("KV groups to keep (whole groups are pruned).", default=None)
    num_hidden_layers: int | None = _help("Layers to keep, chosen by --depth-metric.", default=None)
    drop_layers: str | None = _help("Explicit source layers to drop, e.g. '16-30' or '3,5,7'.", default=None)
    mamba_num_heads: int | None = _help("Hybrid stacks: Mamba-2 heads to keep in every Mamba layer (evenly per "
                                        "group).", default=None)
    mamba_head_dim: int | None = _help("Hybrid stacks: Mamba-2 head dim to keep (one order for every head).",
                                       default=None)
    num_experts: int | None = _help("Routed experts to keep in every MoE layer (num_experts / num_local_experts).",
                                    default=None)
    moe_intermediate_size: int | None = _help("FFN neurons to keep in every routed expert (the name in Qwen-MoE "
                                              "and NemotronH; for Mixtral, OLMoE, GraniteMoE, Granite "
                                              "4.0-H it is --intermediate-size).",
                                              default=None)
    shared_expert_intermediate_size: int | None = _help("FFN neurons to keep in the shared expert (qwen2_moe; "
                                                        "NemotronH's moe_shared_expert_intermediate_size, "
                                                        "granitemoehybrid's shared_intermediate_size).",
                                                        default=None)
    num_experts_per_tok: int | None = _help("Experts each token is routed to (kept unless given).", default=None)

    def __post_init__(self) -> None:
        if self.drop_layers is not None:
            self.as_target()  # a malformed layer list ('2-1', '1,1', '') is refused here, not ignored

    def as_target(self) -> dict:
        from .prune.target import parse_layer_list
        target = {k: v for k, v in vars(self).items() if v is not None and k != "drop_layers"}
        if self.drop_layers is not None:
            target["drop_layers"] = parse_layer_list(self.drop_layers)
        return target


@functools.cache
def cpu_has_amx_bf16() -> bool:
    """AMX bf16 tiles (Sapphire Rapids and later), where bf16 distillation measured 1.55x faster than fp32;
    without them (AVX2, AVX-512) bf16 matmuls are emulated and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: ask torch
        return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    return "amx_bf16" in flags.split()


LOSSES = ("forward_kl", "reverse_kl", "jsd", "topk_kl", "ce")
# DistillConfig fields that only matter with a teacher: `minitron finetune` (next-token loss) has no option for them.
TEACHER_ONLY = ("temperature", "top_k", "jsd_beta", "ce_weight", "hidden_loss", "hidden_weight", "teacher_dtype",
                "teacher_sharding")


@dataclass
class DistillConfig:
    seq_len: int = _help("Tokens per training block.", default=512)
    micro_batch_size: int = _help("Blocks per forward pass on each process.", default=4)
    grad_accum: int = _help("Micro-batches per optimizer step; global batch = micro x accum x processes.",
                            default=1)
    steps: int | None = _help("Optimizer steps (or give --tokens).", default=None)
    tokens: int | None = token_budget_field("Training tokens (94e9, 94B, 500M, 2.5k ...); converted to steps of "
                                            "the global batch.", default=None)
    lr: float = _help("Peak learning rate (the seeds: 1e-4).", default=1e-4)
    min_lr: float = _help("Final learning rate of the cosine decay (the seeds: 4.5e-7).", default=4.5e-7)
    warmup_steps: int = _help("Linear warm-up steps (the seeds: 60; capped at a tenth of the run).", default=60)
    weight_decay: float = _help("AdamW weight decay.", default=0.0)
    clip_grad: float = _help("Gradient-norm clipping (0 disables).", default=1.0)
    loss: str = _help("Logit loss: forward_kl (default), reverse_kl, jsd, topk_kl, or ce (no teacher).",
                      default="forward_kl")
    temperature: float = _help("Distillation temperature.", default=1.0)
    top_k: int = _help("Teacher tokens kept by topk_kl.", default=64)
    jsd_beta: float = _help("Mixing weight of the generalized JSD.", default=0.5)
    ce_weight: float = _help("Weight of next-token cross entropy mixed into a KD loss (0: logit-only, as the "
                             "seeds recommend).", default=0.0)
    hidden_loss: str = _help("Intermediate hidden-state loss: none, cosine or mse (for large depth cuts).",
                             default="none")
    hidden_weight: float = _help("Weight of the hidden-state loss after balancing it to the logit loss.",
                                 default=1.0)
    chunk_size: int = _help("Tokens per logit-loss chunk (bounds memory at large vocabularies).", default=1024)
    eval_every: int = _help("Validate student (and teacher) every N steps (0: only at the end).", default=50)
    eval_samples: int = _help("Held-out blocks used for validation.", default=32)
    save_every: int = _help("Write a resumable checkpoint every N steps (0: only on Ctrl-C and at the end).",
                            default=100)
    seed: int = _help("Seed for initialisation of projections and any sampling.", default=0)
    precision: str = _help("auto (bf16 on CUDA and on CPUs with AMX bf16 units, else fp32), bf16 or fp32; bf16 is "
                           "autocast, or FSDP2's mixed precision under --fsdp.",
                           default="auto")
    teacher_dtype: str = _help("Teacher weights: auto (bf16 where training autocasts to bf16, else fp32), bf16 "
                               "or fp32.", default="auto")
    gradient_checkpointing: bool = _help("Recompute activations in backward to save memory.", default=False)
    fsdp: bool = _help("Shard the student with FSDP2 (under torchrun; bf16 parameters and fp32 gradient "
                       "reductions where the student trains in bf16).", default=False)
    teacher_sharding: str = _help("Under torchrun: replicate (a full teacher on every process, bf16 where the "
                                  "student trains in bf16: no communication), shard (FSDP2: for a teacher "
                                  "too big for one device), or auto (with --fsdp on GPUs: shard where the dry "
                                  "run's estimate of a replicated teacher does not fit the GPU's memory).",
                                  default="replicate")
    async_checkpoint: bool = _help("Write checkpoints in the background (copied to CPU memory first) while "
                                   "training goes on.", default=False)
    data_workers: int = _help("DataLoader processes reading training blocks ahead of the step (0: the training "
                              "process reads them).", default=1)
    report_to: str = _help("Also send metrics to none, tensorboard (OUT/tensorboard) or wandb, as transformers' "
                           "Trainer; metrics.jsonl is always written.", default="none")

    def __post_init__(self) -> None:
        normalize_token_budget(self, "tokens")
        _require_positive(self, "seq_len", "micro_batch_size", "grad_accum", "lr", "temperature", "top_k",
                          "chunk_size", "eval_samples")
        if self.steps is None and self.tokens is None:
            raise SettingsError("give a training budget: --steps N or --tokens N")
        if self.steps is not None and self.tokens is not None:
            raise SettingsError(f"give --steps or --tokens, not both (got steps={self.steps}, tokens={self.tokens}): "
                                "--tokens is converted to steps of the global batch")
        for name in ("steps", "tokens"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise SettingsError(f"--{name} must be positive, got {value}: a budget of zero trains nothing")
        if self.data_workers < 0:
            raise SettingsError(f"--data-workers must be >= 0, got {self.data_workers}")
        if self.loss not in LOSSES:
            raise SettingsError(f"--loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.hidden_loss not in ("none", "cosine", "mse"):
            raise SettingsError("--hidden-loss must be none, cosine or mse")
        if self.precision not in ("auto", "bf16", "fp32") or self.teacher_dtype not in ("auto", "bf16", "fp32"):
            raise SettingsError("--precision and --teacher-dtype take auto, bf16 or fp32")
        if self.teacher_sharding not in ("replicate", "shard", "auto"):
            raise SettingsError(f"--teacher-sharding takes replicate, shard or auto, got {self.teacher_sharding!r}")
        check_report_to(self.report_to)
        if not 0 < self.jsd_beta < 1:
            raise SettingsError("--jsd-beta must be strictly between 0 and 1")
        if self.min_lr > self.lr or self.min_lr < 0:
            raise SettingsError("--min-lr must be between 0 and --lr")

    def global_batch(self, world_size: int) -> int:
        return self.micro_batch_size * self.grad_accum * world_size

    def student_bf16(self, device_type: str) -> bool:
        """Whether the student trains under bf16 autocast on this kind of device (precision auto: where
        bf16 matmuls are native, CUDA with bf16 support and CPUs with AMX bf16 units)."""
        if self.precision != "auto":
            return self.precision == "bf16"
        if device_type == "cuda":
            return torch.cuda.is_bf16_supported()
        return device_type == "cpu" and cpu_has_amx_bf16()

    def teacher_bf16(self, device_type: str) -> bool:
        """Whether the teacher's weights are loaded in bf16 (else in fp32, as the student trains)."""
        return self.teacher_dtype == "bf16" or (self.teacher_dtype == "auto" and self.student_bf16(device_type))

    def total_steps(self, world_size: int) -> int:
        if self.steps is not None:
            return self.steps
        return max(1, -(-self.tokens // (self.global_batch(world_size) * self.seq_len)))
