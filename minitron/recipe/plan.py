"""A recipe on paper: every stage's architecture and size from the teacher's config alone, and tables.

    minitron run recipes/llama-3.1-8b-width.yaml --dry-run
"""
from __future__ import annotations

from pathlib import Path

from ..arch import get_adapter, text_config
from ..errors import MinitronError
from ..prune import describe_pruning
from .schema import Recipe, load_recipe
from .stages import ARCHITECTURE_KEYS, check_layer_mapping


def plan_recipe(recipe: Recipe, teacher_config) -> list[dict]:
    """From the teacher's config alone (no weights): every stage's architecture and parameter count.

    Fixed targets are resolved along the chain, so a target the parent cannot reach is refused here;
    a parameter budget is checked against the parent's candidates (one that nothing meets is refused).
    After a search stage the parent's architecture is unknown until the search runs: later stages
    are listed without sizes.
    """
    get_adapter(teacher_config)  # every recipe prunes its teacher: an unsupported family stops here
    config, rows = teacher_config, []
    for stage in recipe.stages:
        row = {"name": stage.name, "search": stage.search, "target": stage.target, "config": None, "params": None}
        if config is not None and stage.distill_config(recipe).hidden_loss != "none" \
                and stage.teacher_source(recipe) == "teacher":
            check_layer_mapping(stage.name, text_config(config).num_hidden_layers,
                                text_config(teacher_config).num_hidden_layers)
        try:
            if stage.search is not None:
                row["candidates"] = _search_candidates(config, stage)
                config = None
            elif config is not None:
                summary = describe_pruning(config, stage.target)
                config = summary["config"]
                sizes = text_config(config)
                row |= {"config": config, "architecture": {key: getattr(sizes, key) for key in ARCHITECTURE_KEYS},
                        "params": summary["params_after"], "params_before": summary["params_before"]}
        except MinitronError as error:
            raise MinitronError(f"stage {stage.name!r}: {error}") from error
        rows.append(row)
    return rows


def _search_candidates(config, stage) -> int | None:
    """How many candidates a parameter budget leaves (latency budgets need a device: not checked here)."""
    search_config = stage.search_config()
    if config is None or search_config.target_latency is not None:
        return None
    from ..search.rank import plan
    return len(plan(config, search_config)[1])


def describe_plan(recipe: Recipe | str | Path, teacher_config=None) -> str:
    """A printable table of the chain: each stage's target, architecture and parameters."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    if teacher_config is None:
        from ..jobs import load_config
        teacher_config = load_config(recipe.teacher)
    rows = plan_recipe(recipe, teacher_config)
    teacher_params = _params_of(teacher_config)
    lines = [f"teacher {recipe.teacher}: {_arch_text(teacher_config)}, {teacher_params:,} parameters"]
    if recipe.correction is not None:
        lines.append("00-correction: next-token fine-tuning of the teacher (same architecture)")
    for index, row in enumerate(rows, start=1):
        name = f"{index:02d}-{row['name']}"
        if row["params"] is None:
            if row["search"] is None:
                lines.append(f"{name}: target {row['target']} (sizes known once the search before it has run)")
            else:
                found = "" if row.get("candidates") is None else f", {row['candidates']} candidates within budget"
                lines.append(f"{name}: search {row['search']}{found} (architecture chosen when it runs)")
            continue
        total = row["params"].total
        lines.append(f"{name}: {_arch_text(row['config'])}, {total:,} parameters "
                     f"({total / teacher_params:.1%} of the teacher; non-embedding {row['params'].non_embedding:,})")
    return "\n".join(lines)


def format_members(run: dict) -> str:
    """The family at the end of a run: one line per member."""
    lines = [f"{'member':<16} {'params':>14} {'held-out loss':>14} {'perplexity':>11} {'decode tok/s':>13}"]
    for member in run.get("members", []):
        speed = (member.get("tokens_per_s") or {}).get("decode")
        lines.append(f"{member['name']:<16} {member['params']['total']:>14,} {member['heldout_loss']:>14.4f} "
                     f"{member['perplexity']:>11.2f} {'' if speed is None else f'{speed:.1f}':>13}")
    return "\n".join(lines)


def _params_of(config) -> int:
    from ..params import count_parameters_from_config
    return count_parameters_from_config(config).total


def _arch_text(config) -> str:
    """The dense sizes, then the routed experts and the Mamba mixers where the family has them."""
    from ..arch.families import ADAPTERS
    from ..arch.moe import moe_spec
    sizes = text_config(config)
    text = ", ".join(f"{key.replace('num_', '').replace('_', ' ')} {getattr(sizes, key)}" for key in ARCHITECTURE_KEYS)
    spec = moe_spec(config)
    if spec is not None:
        text += (f", experts {getattr(sizes, spec.num_experts_key)} ({sizes.num_experts_per_tok} per token) of "
                 f"width {getattr(sizes, spec.expert_width_key)}")
    layout = getattr(ADAPTERS.get(getattr(config, "model_type", None)), "mamba", None)
    if layout is not None:
        heads, head_dim, groups, _ = layout.sizes(sizes)
        text += f", Mamba heads {heads} x {head_dim} ({groups} groups)"
    return text
