"""Will it fit? What each process holds per stage, from configs alone (meta device, no weights).

    minitron run recipes/llama-3.1-8b-width.yaml --dry-run --nproc 8 --sharding fsdp --gpu-memory 80
    minitron prune --model config.json --hidden-size 3072 --intermediate-size 9216 --dry-run --nproc 8

Estimates, not measurements: parameter counts are exact (the model is built on the meta device);
activations follow what the code keeps for backward (per decoder layer, per token) and what it holds
at once in a forward-only pass. What the estimate assumes, as the code runs on GPUs:
- training: fp32 master weights and gradients, AdamW's two fp32 moments, bf16 compute. Without FSDP
  the weights' bf16 copies that autocast makes and keeps for backward count too (2 bytes a
  parameter), and DDP keeps a second fp32 copy of the gradients in its reducer buckets (world size
  > 1); FSDP2 (bf16 MixedPrecisionPolicy, no autocast) shards weights,
  gradients and moments over the processes and gathers two decoder layers (one prefetched) and the
  LM head in bf16 at a time;
- the teacher frozen in bf16, replicated on every process or sharded like the student;
- logit losses in chunks of `chunk_size` tokens (never tokens x vocabulary logits at once);
- importance and eval in bf16, data-parallel (each process the whole model), or `--device-map auto`
  (one process, the model spread over the GPUs).
CUDA context, allocator fragmentation and NCCL buffers are not counted: keep a few GiB of margin.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field

from .arch import get_adapter
from .errors import SettingsError
from .params import count_parameters_from_config

GIB = 1024 ** 3
SHARDINGS = ("ddp", "fsdp")
TEACHER_SHARDINGS = ("auto", "replicate", "shard")  # as `distill --teacher-sharding`, plus auto
MARGIN_GIB = 4.0  # CUDA context, allocator fragmentation, NCCL buffers


@dataclass(frozen=True)
class Layout:
    """How a run is spread: processes (GPUs), student sharding, teacher placement, memory per GPU."""

    processes: int = 1
    sharding: str | None = "ddp"  # None: the recipe's own `fsdp` setting
    teacher_sharding: str = "auto"
    gpu_memory_gib: float = 80.0

    def __post_init__(self) -> None:
        if self.processes < 1:
            raise SettingsError(f"--nproc must be at least 1, got {self.processes}")
        if self.sharding is not None and self.sharding not in SHARDINGS:
            raise SettingsError(f"--sharding must be one of {', '.join(SHARDINGS)}, got {self.sharding!r}")
        if self.teacher_sharding not in TEACHER_SHARDINGS:
            raise SettingsError(f"--teacher-sharding must be one of {', '.join(TEACHER_SHARDINGS)}, "
                                f"got {self.teacher_sharding!r}")
        if self.gpu_memory_gib <= 0:
            raise SettingsError(f"--gpu-memory must be positive (GiB), got {self.gpu_memory_gib}")


@dataclass(frozen=True)
class Sizes:
    """The sizes of a config that memory depends on."""

    params: int
    embedding: int
    layers: int
    hidden: int
    intermediate: int
    q_width: int
    kv_width: int
    vocab: int
    gated: bool

    @property
    def layer_params(self) -> int:
        return (self.params - self.embedding) // max(self.layers, 1)

    def activation_bytes_per_token_layer(self) -> int:
        """Bytes one decoder layer keeps for backward per token under bf16 autocast: fp32 norm inputs and
        outputs (HF norms upcast), bf16 projection inputs and outputs, rotary q/k, the attention output
        (SDPA keeps no seq x seq matrix), and the MLP's up / gate / activation / product. Checked
        against the bytes autograd saves for a Llama layer (tests/test_dry_run.py)."""
        mlp = (4 if self.gated else 3) * self.intermediate
        return 24 * self.hidden + 2 * (2 * self.hidden + 3 * self.q_width + 3 * self.kv_width + mlp)

    def forward_bytes_per_token(self) -> int:
        """Bytes a no-grad forward holds at once per token: one layer's widest intermediates in bf16, and
        the fp32 copies importance hooks reduce (MLP activations, attention output, norm outputs)."""
        return 2 * (4 * self.hidden + 2 * self.q_width + 3 * self.intermediate) + 4 * (self.intermediate + 2 * self.hidden)


def sizes_of(config) -> Sizes:
    """Sizes of `config` (parameter counts from a meta-device build, cached per config text)."""
    return _sizes_of_text(config.to_json_string(use_diff=False), type(config))


def _special_float(obj: dict):
    """transformers writes inf and nan into config JSON as {"__float__": "Infinity"} (Granite 4.0-H's
    time_step_limit); from_dict wants the float back."""
    return float(obj["__float__"]) if obj.keys() == {"__float__"} else obj


@functools.lru_cache(maxsize=64)
def _sizes_of_text(text: str, config_class) -> Sizes:
    config = config_class.from_dict(json.loads(text, object_hook=_special_float))
    counts = count_parameters_from_config(config)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return Sizes(params=counts.total, embedding=counts.embedding, layers=config.num_hidden_layers,
                 hidden=config.hidden_size, intermediate=config.intermediate_size, q_width=heads * head_dim,
                 kv_width=kv_heads * head_dim, vocab=config.vocab_size, gated=get_adapter(config).gated_mlp)


@dataclass
class StageMemory:
    """Bytes per process of one stage; `note` says how it was placed."""

    stage: str
    weights: float = 0.0
    gradients: float = 0.0
    optimizer: float = 0.0
    teacher: float = 0.0
    activations: float = 0.0
    loss: float = 0.0
    note: str = ""
    gpu_memory_gib: float = 80.0
    extra: dict = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.teacher + self.activations + self.loss

    @property
    def fits(self) -> bool:
        return self.total / GIB + MARGIN_GIB <= self.gpu_memory_gib


def _chunk_loss_bytes(sizes: Sizes, chunk_size: int, tokens: int, with_teacher: bool, hidden_teacher: int) -> float:
    """Chunked logit loss: a chunk's student and teacher logits, log-probabilities and gradient in fp32,
    plus the final hidden states of every token (student's with their gradient, teacher's)."""
    chunk = min(chunk_size, tokens)
    logits = 4 * chunk * sizes.vocab * (5 if with_teacher else 3)
    hidden = 4 * tokens * (2 * sizes.hidden + (hidden_teacher if with_teacher else 0))
    return logits + hidden


def training_memory(stage: str, student, teacher, *, micro_batch_size: int, seq_len: int, chunk_size: int,
                    gradient_checkpointing: bool, layout: Layout) -> StageMemory:
    """What each process holds while training `student` (config) from `teacher` (config, or None)."""
    s = sizes_of(student)
    n = layout.processes
    fsdp = layout.sharding == "fsdp" and n > 1
    tokens = micro_batch_size * seq_len
    memory = StageMemory(stage, gpu_memory_gib=layout.gpu_memory_gib)
    if fsdp:  # shards, plus two layers and the LM head gathered in bf16 at a time
        memory.weights = 4 * s.params / n + 2 * (2 * s.layer_params + s.vocab * s.hidden)
        memory.gradients = 4 * s.params / n + 4 * s.layer_params  # a layer's gradients before reduce-scatter
        memory.optimizer = 8 * s.params / n
    else:
        memory.weights = 4 * s.params + 2 * s.params  # fp32 weights, autocast's bf16 copies
        memory.gradients = 4 * s.params * (2 if n > 1 else 1)  # DDP's reducer buckets hold a second copy
        memory.optimizer = 8 * s.params
    per_layer = tokens * s.activation_bytes_per_token_layer()
    memory.activations = (4 * tokens * s.hidden * s.layers + per_layer if gradient_checkpointing
                          else per_layer * s.layers)
    memory.note = f"{'FSDP2' if fsdp else 'DDP' if n > 1 else 'one process'}"
    t = sizes_of(teacher) if teacher is not None else None
    memory.loss = _chunk_loss_bytes(s, chunk_size, tokens, t is not None, t.hidden if t else 0)
    if t is not None:
        memory.activations += tokens * t.forward_bytes_per_token()  # the teacher's no-grad forward
        _place_teacher(memory, t, layout, fsdp)
    memory.note += f", micro-batch {micro_batch_size} x {seq_len}" + (", checkpointing" if gradient_checkpointing else "")
    return memory


def replicated_teacher_fits(student, teacher, *, processes: int, fsdp: bool, gpu_memory_gib: float,
                            micro_batch_size: int, seq_len: int, chunk_size: int, gradient_checkpointing: bool) -> bool:
    """Whether distilling `student` from a replicated `teacher` (configs) fits each process's GPU memory, by
    the dry run's estimate (`training_memory`, 4 GiB margin): `distill --teacher-sharding auto` shards the
    teacher where it does not."""
    layout = Layout(processes, "fsdp" if fsdp else "ddp", "replicate", gpu_memory_gib)
    return training_memory("distill", student, teacher, micro_batch_size=micro_batch_size, seq_len=seq_len,
                           chunk_size=chunk_size, gradient_checkpointing=gradient_checkpointing, layout=layout).fits


def _place_teacher(memory: StageMemory, teacher: Sizes, layout: Layout, fsdp: bool) -> None:
    replicated = 2.0 * teacher.params
    sharded = 2.0 * teacher.params / layout.processes + 2 * (2 * teacher.layer_params + teacher.vocab * teacher.hidden)
    choice = {"replicate": "replicated", "shard": "sharded"}.get(layout.teacher_sharding, layout.teacher_sharding)
    if choice == "auto":
        memory.teacher = replicated
        choice = "replicated" if memory.fits or not fsdp else "sharded"
    if choice == "sharded" and not fsdp:
        choice = "replicated"  # DDP has no sharded teacher
    memory.teacher = replicated if choice == "replicated" else sharded
    memory.note += f", teacher {choice}"


def forward_memory(stage: str, config, *, batch_size: int, seq_len: int, layout: Layout,
                   chunk_size: int = 1024, device_map: bool = False) -> StageMemory:
    """Importance or eval: bf16 weights, one layer's intermediates at a time, chunked LM-head loss.

    Data-parallel, every process holds the whole model; with device_map the model is spread over
    the processes' GPUs (one process)."""
    s = sizes_of(config)
    tokens = batch_size * seq_len
    share = layout.processes if device_map else 1
    memory = StageMemory(stage, gpu_memory_gib=layout.gpu_memory_gib)
    memory.weights = 2 * s.params / share
    memory.activations = tokens * s.forward_bytes_per_token()
    memory.loss = 4 * min(chunk_size, tokens) * s.vocab * 2 + 2 * tokens * s.hidden
    memory.note = (f"--device-map auto over {share} GPUs" if device_map else "data-parallel") \
        + f", batch {batch_size} x {seq_len}, bf16"
    return memory


def forward_memory_placed(stage: str, config, **settings) -> StageMemory:
    """`forward_memory` data-parallel, or with --device-map auto when the model does not fit one GPU."""
    memory = forward_memory(stage, config, **settings)
    if not memory.fits and settings["layout"].processes > 1:
        return forward_memory(stage, config, **settings, device_map=True)
    return memory


def prune_memory(stage: str, source, pruned, layout: Layout) -> StageMemory:
    """Rank 0 holds the source (checkpoint dtype, bf16 assumed) and the pruned copy; the others wait."""
    memory = StageMemory(stage, gpu_memory_gib=layout.gpu_memory_gib)
    memory.weights = 2.0 * (sizes_of(source).params + sizes_of(pruned).params)
    memory.note = "rank 0 only, bf16 weights"
    return memory


def format_memory_table(rows: list[StageMemory], layout: Layout) -> str:
    """A fixed-width table in GiB; the last columns say whether it fits and how it was placed."""
    header = (f"memory per process (GiB; estimate from configs): {layout.processes} process(es), "
              f"{layout.sharding}, teacher {layout.teacher_sharding}, {layout.gpu_memory_gib:g} GiB per GPU, "
              f"fits = total + {MARGIN_GIB:g} GiB margin <= GPU memory")
    columns = ("weights", "grads", "optim", "teacher", "activ", "loss", "total")
    width = max(len(row.stage) for row in rows) if rows else 5
    lines = [header, f"{'stage':<{width}} " + " ".join(f"{c:>8}" for c in columns) + "  fits  placement"]
    for row in rows:
        values = (row.weights, row.gradients, row.optimizer, row.teacher, row.activations, row.loss, row.total)
        lines.append(f"{row.stage:<{width}} " + " ".join(f"{v / GIB:>8.1f}" for v in values)
                     + f"  {'yes' if row.fits else 'NO ':<4}  {row.note}")
    return "\n".join(lines)
