"""Settings of the architecture search: the budget, the grid of candidates, and how they are ranked."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..config import normalize_token_budget, token_budget_field
from ..errors import MinitronError, SettingsError
from ..prune.moe import EXPERT_METRICS
from ..prune.target import SIZE_KEYS
from .axes import OPTIONAL_AXES

BUDGET_ON = ("total", "non_embedding", "active")

GUIDE = """Lightweight architecture search (the Minitron papers' NAS), from one set of importance scores:

  1. enumerate homogeneous architectures (hidden size, attention and KV heads, MLP size, layers; for
     mixture-of-experts models also routed experts and the expert width, for hybrid Mamba stacks Mamba
     heads) on a grid (--hidden-step, --mlp-step, --kv-head-step, --heads-per-group-step, --layer-step,
     --expert-step, --expert-width-step, --shared-expert-step, --mamba-head-step; --fixed-axes holds axes
     at the source's size) down to the largest cuts allowed (--max-width-cut, --max-depth-cut); keep those
     that meet the budget, preferring those within --slack of it, spread over width-only, depth-only and
     mixed cuts (--max-candidates);
  2. prune each one and score it by held-out loss (--heldout-samples blocks of --data);
  3. distill the best --top-k for --candidate-tokens tokens each from the teacher and choose the winner by
     the loss after that retraining (rankings change after retraining; 0 tokens: choose by pruned loss).

Budget: --target-params N (a count like 4.5e9, or a fraction like 0.5 of the source; --budget-on total,
non_embedding or active), --target-active-params N (mixture-of-experts: the parameters one token uses),
--target-memory GB (weights + KV cache of the attention layers + Mamba state at --memory-batch sequences
of --memory-context tokens), or
--target-latency MS measured on this device (--latency-batch, --latency-seq-len, --latency-new-tokens).
No candidate over budget is ever returned.

Writes OUT/search.json, OUT/candidates.csv and OUT/candidates.md. Then prune to the winner with
`minitron prune --from-search OUT --out DIR` (the full command is printed) and distill it fully.

examples:
  minitron search --model builtin:smollm2-135m --scores scores/ --target-params 0.5 --budget-on non_embedding \\
      --data builtin:python-docs --seq-len 256 --out nas/
  minitron search --model meta-llama/Llama-3.1-8B --target-params 4.5e9 --dry-run     # config only
  minitron search --model M --scores scores/ --target-latency 40 --latency-seq-len 512 --out nas/
"""


def _help(text: str, **kwargs):
    return field(metadata={"help": text}, **kwargs)


@dataclass
class SearchConfig:
    """A budget (parameters or latency), the candidate grid, and the ranking (prune, then short distillation).

    Give exactly one of target_params / target_latency.
    """

    target_params: float | None = _help(
        "Parameter budget: a count such as 4e9, or a fraction of the source model such as 0.5 (any value "
        "up to 1 is a fraction).", default=None)
    budget_on: str = _help("What --target-params counts: total, non_embedding or active parameters (active: "
                           "what one token uses in a mixture-of-experts model).", default="total")
    target_active_params: float | None = _help(
        "Active-parameter budget (mixture of experts: embeddings, attention, routers, shared experts and the "
        "experts one token is routed to), a count or a fraction of the source; same as --target-params with "
        "--budget-on active.", default=None)
    target_memory: float | None = _help(
        "Memory budget in GB (1e9 bytes): weights plus KV cache (plus recurrent state) for --memory-batch "
        "sequences of --memory-context tokens at --memory-bytes per value; a value up to 1 is a fraction of the "
        "source's.", default=None)
    memory_batch: int = _help("Sequences held at once in the memory budget.", default=1)
    memory_context: int = _help("Tokens per sequence (prompt + generated) in the memory budget.", default=4096)
    memory_bytes: int = _help("Bytes per weight and cache value in the memory budget (2: bf16).", default=2)
    target_latency: float | None = _help(
        "Latency budget in milliseconds for one request (prefill of --latency-seq-len tokens, then "
        "--latency-new-tokens decoded tokens), measured on this device with random-weight models.", default=None)
    latency_batch: int = _help("Batch size of the latency measurement.", default=1)
    latency_seq_len: int = _help("Prompt tokens of the latency measurement.", default=128)
    latency_new_tokens: int = _help("Tokens generated (with the KV cache) in the latency measurement.", default=16)
    slack: float = _help("Keep candidates within this fraction under the budget (0.1: from 0.9 to 1 times it), so "
                         "that architectures of similar size are compared rather than tiny ones.", default=0.1)
    max_width_cut: float = _help("Largest cut of hidden size, MLP size and attention heads, as a fraction.",
                                 default=0.5)
    max_depth_cut: float = _help("Largest cut of the layer count, as a fraction.", default=0.5)
    hidden_step: int | None = _help("Step of hidden sizes tried (default: an eighth of the source's).",
                                    default=None)
    mlp_step: int | None = _help("Step of MLP (intermediate) sizes tried (default: an eighth of the source's).",
                                 default=None)
    kv_head_step: int | None = _help("Step of KV head counts tried (default: a quarter of the source's, at "
                                     "least 1).", default=None)
    heads_per_group_step: int = _help("Step of query heads per KV group tried (query heads are always a "
                                      "multiple of KV heads).", default=1)
    layer_step: int | None = _help("Step of layer counts tried (default: an eighth of the source's, at least 1).",
                                   default=None)
    expert_step: int | None = _help("Mixture of experts: step of routed-expert counts tried (default: a quarter "
                                    "of the source's).", default=None)
    expert_width_step: int | None = _help("Mixture of experts: step of expert widths (moe_intermediate_size) "
                                          "tried (default: a quarter of the source's, a multiple of 8).",
                                          default=None)
    shared_expert_step: int | None = _help("Mixture of experts: step of shared-expert widths tried (default: the "
                                           "shared expert keeps its width).", default=None)
    mamba_head_step: int | None = _help("Hybrid Mamba stacks: step of Mamba heads tried, a multiple of n_groups "
                                        "(default: about a quarter of the source's).", default=None)
    fixed_axes: str | None = _help("Axes held at the source's size, by config name, comma-separated (e.g. "
                                   "'num_experts,num_hidden_layers').", default=None)
    max_candidates: int = _help("Candidates pruned and scored, spread over width-only, depth-only and mixed cuts.",
                                default=12)
    top_k: int = _help("Best candidates after pruning that are briefly distilled.", default=3)
    candidate_tokens: int = token_budget_field("Distillation tokens per top candidate (16384, 16k, 1M ...; 0: "
                                               "choose by the loss after pruning).", default=16384)
    candidate_lr: float = _help("Peak learning rate of the short candidate distillation.", default=5e-4)
    candidate_batch_size: int = _help("Blocks per step of the short candidate distillation.", default=4)
    heldout_samples: int = _help("Held-out blocks every candidate is scored on.", default=32)
    depth_metric: str | None = _help("Layer score that picks the layers kept when depth shrinks (default: lm_loss "
                                     "when the scores have it, else block_influence).", default=None)
    expert_metric: str | None = _help("Expert score that picks the routed experts kept when num_experts shrinks "
                                      f"({', '.join(EXPERT_METRICS)}; default: weighted_output).", default=None)
    seed: int = _help("Seed of the candidate distillations (the same for every candidate).", default=0)

    def _merge_active_budget(self) -> None:
        """--target-active-params N is --target-params N --budget-on active (and survives a round trip)."""
        if self.target_active_params is None:
            return
        if self.target_params not in (None, self.target_active_params) or \
                (self.target_params is not None and self.budget_on != "active"):
            raise SettingsError("give one budget: --target-active-params or --target-params, not both")
        self.target_params, self.budget_on = self.target_active_params, "active"

    def __post_init__(self) -> None:
        normalize_token_budget(self, "candidate_tokens")
        self._merge_active_budget()
        if sum(v is not None for v in (self.target_params, self.target_latency, self.target_memory)) != 1:
            raise SettingsError("give one budget: --target-params N (a count, or a fraction of the source like "
                                "0.5), --target-active-params N, --target-memory GB or --target-latency MS")
        if self.budget_on not in BUDGET_ON:
            raise SettingsError(f"--budget-on must be one of {', '.join(BUDGET_ON)}, got {self.budget_on!r}")
        for name in ("target_params", "target_latency", "target_memory", "memory_batch", "memory_context",
                     "memory_bytes"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise SettingsError(f"--{name.replace('_', '-')} must be positive, got {value}")
        for name in ("max_width_cut", "max_depth_cut"):
            if not 0 <= getattr(self, name) < 1:
                raise SettingsError(f"--{name.replace('_', '-')} is a fraction in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.slack < 1:
            raise SettingsError(f"--slack is a fraction in [0, 1), got {self.slack}")
        self._check_axes()
        for name in ("hidden_step", "mlp_step", "kv_head_step", "heads_per_group_step", "layer_step", "expert_step",
                     "expert_width_step", "shared_expert_step", "mamba_head_step",
                     "max_candidates", "top_k", "candidate_batch_size", "heldout_samples", "latency_batch",
                     "latency_seq_len", "candidate_lr"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise SettingsError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.latency_new_tokens < 2:
            raise SettingsError("--latency-new-tokens must be at least 2 (one decoding step)")
        if self.candidate_tokens < 0:
            raise SettingsError("--candidate-tokens must be >= 0 (0: rank by the loss right after pruning)")

    def fixed_axis_names(self) -> tuple[str, ...]:
        return tuple(name.strip() for name in (self.fixed_axes or "").split(",") if name.strip())

    def _check_axes(self) -> None:
        unknown = [name for name in self.fixed_axis_names() if name not in (*SIZE_KEYS, *OPTIONAL_AXES)]
        if unknown:
            raise SettingsError(f"--fixed-axes: unknown axis {', '.join(unknown)}; axes are "
                                f"{', '.join((*SIZE_KEYS, *OPTIONAL_AXES))}")
        if self.expert_metric is not None and self.expert_metric not in EXPERT_METRICS:
            raise SettingsError(f"--expert-metric must be one of {', '.join(EXPERT_METRICS)}, "
                                f"got {self.expert_metric!r}")

    @property
    def distills(self) -> bool:
        """Whether the best candidates are retrained before the winner is chosen."""
        return self.candidate_tokens > 0
