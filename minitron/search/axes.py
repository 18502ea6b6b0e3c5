"""The search grid's axes beyond the five dense sizes, read from the family's adapter, and their default steps.

- Mixture of experts (`moe_spec`, when the config has sparse layers): routed experts (`num_experts`, the
  family's own name for it is mapped by `minitron prune`), the expert width when the family keeps it
  apart from the dense MLP (`moe_intermediate_size`; Mixtral, OLMoE and GraniteMoE call it
  `intermediate_size`, which the dense MLP axis already varies), and the shared-expert width
  (`shared_expert_intermediate_size`, also standing for NemotronH's and Granite 4.0-H's names of it; only
  searched when `--shared-expert-step` is given).
- Hybrid Mamba stacks (`adapter.mamba`): Mamba-2 heads per layer (`mamba_num_heads`), in steps of the
  group count (heads are pruned evenly within groups); the head dim is kept. Granite 4.0-H sizes its
  mixers as mamba_expand x hidden_size, so heads x head dim must stay a multiple of hidden_size: the grid
  pairs that break it are refused by `minitron prune`'s own check, and the candidate filter drops them.
- A MoE config without routed experts (Granite-4.0-H-Micro: the shared MLP alone) has no expert axis.

Default steps give three values each from the source down to the largest width cut (100%, 75%, 50% with
--max-width-cut 0.5), so a MoE model's grid is about 9 times a dense one's and a hybrid's 3 times. Any
axis can be held at the source's size with --fixed-axes; an axis whose cut changes no parameter count
(the dense MLP of a model with no dense layers) is held there too.
"""
from __future__ import annotations

from ..arch import get_adapter
from ..arch.base import text_config
from ..arch.moe import moe_spec
from ..errors import SettingsError
from ..prune.moe import GROUPED_MM_MULTIPLE

EXPERT_AXES = ("num_experts", "moe_intermediate_size", "shared_expert_intermediate_size")
OPTIONAL_AXES = (*EXPERT_AXES, "mamba_num_heads")


def optional_sizes(config) -> dict[str, int]:
    """The source's sizes on the optional axes its family has ({} for a dense transformer)."""
    adapter, text = get_adapter(config), text_config(config)
    sizes = {}
    spec = moe_spec(config)  # None for a family's configs without sparse layers (a dense NemotronH)
    if spec is not None:
        routed = _routed_experts(config)
        if routed:  # none in Granite-4.0-H-Micro: its shared MLP alone
            sizes["num_experts"] = routed
        if spec.expert_width_key == "moe_intermediate_size" and getattr(text, spec.expert_width_key, None):
            sizes["moe_intermediate_size"] = int(getattr(text, spec.expert_width_key))
        # The shared expert under any family's name (NemotronH's, Granite's): prune accepts Qwen's for it.
        if spec.shared_width_key is not None and getattr(text, spec.shared_width_key, None):
            sizes["shared_expert_intermediate_size"] = int(getattr(text, spec.shared_width_key))
    if adapter.mamba is not None:
        sizes["mamba_num_heads"] = adapter.mamba.sizes(text)[0]
    return sizes


def aligned_step(source: int, parts: int, multiple: int) -> int:
    """About source / parts, rounded to a multiple of `multiple` (at least one multiple)."""
    return max(1, round(source / parts / multiple)) * multiple


def _routed_experts(config) -> int:
    """Routed experts per sparse layer (0 for dense families and for MoE configs with a shared MLP alone)."""
    spec = moe_spec(config)
    return 0 if spec is None else int(getattr(text_config(config), spec.num_experts_key) or 0)


def grouped_mm_multiple(config) -> int:
    """Widths routed experts compute with must stay multiples of 8 (grouped_mm); 1 without routed experts."""
    return GROUPED_MM_MULTIPLE if _routed_experts(config) else 1


def dense_steps(config, search) -> dict[str, int]:
    """Steps of the dense width axes: an eighth of the source (a multiple of 8 where experts compute with it)."""
    text, multiple = text_config(config), grouped_mm_multiple(config)
    spec = moe_spec(config)
    mlp_multiple = multiple if spec is not None and spec.expert_width_key == "intermediate_size" else 1
    return {"hidden_size": search.hidden_step or aligned_step(text.hidden_size, 8, multiple),
            "intermediate_size": search.mlp_step or aligned_step(text.intermediate_size, 8, mlp_multiple)}


# The step flag of each optional axis (SearchConfig field -> axis).
_STEP_AXES = {"expert_step": "num_experts", "expert_width_step": "moe_intermediate_size",
              "shared_expert_step": "shared_expert_intermediate_size", "mamba_head_step": "mamba_num_heads"}


def optional_steps(config, search, sizes: dict[str, int]) -> dict[str, int | None]:
    """Step of each optional axis the source has (None: held at the source's size); a step given for an axis
    the source lacks is refused, as --fixed-axes is, rather than silently unused."""
    for flag, axis in _STEP_AXES.items():
        if getattr(search, flag) is not None and axis not in sizes:
            hint = " (its expert width is intermediate_size: use --mlp-step)" \
                if axis == "moe_intermediate_size" and "num_experts" in sizes else ""
            raise SettingsError(f"--{flag.replace('_', '-')}: this model has no axis {axis}{hint}; its optional "
                                f"axes are {', '.join(sizes) or 'none'}")
    steps: dict[str, int | None] = {}
    if "num_experts" in sizes:
        steps["num_experts"] = search.expert_step or max(1, sizes["num_experts"] // 4)
    if "moe_intermediate_size" in sizes:
        steps["moe_intermediate_size"] = search.expert_width_step or aligned_step(
            sizes["moe_intermediate_size"], 4, GROUPED_MM_MULTIPLE)
    if "shared_expert_intermediate_size" in sizes:
        steps["shared_expert_intermediate_size"] = search.shared_expert_step
    if "mamba_num_heads" in sizes:
        groups = get_adapter(config).mamba.sizes(text_config(config))[2]
        if search.mamba_head_step and search.mamba_head_step % groups:
            raise SettingsError(f"--mamba-head-step {search.mamba_head_step} is not a multiple of the model's "
                                f"{groups} Mamba groups: heads are pruned evenly within groups")
        steps["mamba_num_heads"] = search.mamba_head_step or aligned_step(sizes["mamba_num_heads"], 4, groups)
    return steps
