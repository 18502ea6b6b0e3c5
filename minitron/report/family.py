"""Report sections about the whole family: the summary table, size against loss, speed, the stages, and
how the run was made."""
from __future__ import annotations

import yaml

from . import plots
from .commands import NotReproducible, reproduce_commands
from .markup import code_block, esc, figure, fmt, human, note, paragraph, swatch, table
from .runfolder import (
    TEACHER,
    Run,
    arch_label,
    number,
    throughput,
)

NOT_PART = "not part of this run"


def teacher_member(run: Run) -> dict | None:
    return run.member(TEACHER) or (run.members[0] if run.members else None)


def _params(member: dict | None) -> dict:
    params = (member or {}).get("params")
    return params if isinstance(params, dict) else {}


def _share(value, whole) -> str:
    value, whole = number(value), number(whole)
    return f"{value / whole:.1%}" if value is not None and whole else "—"


def summary(run: Run) -> str:
    if not run.members:
        return note(f"No member has been evaluated yet: the summary is {NOT_PART} so far.")
    colors, teacher = run.colors(), _params(teacher_member(run))
    rows = []
    for member in run.members:
        params = _params(member)
        prefill, decode = throughput(member)
        rows.append([swatch(member["name"], colors[member["name"]]), arch_label(member.get("architecture"), True),
                     human(number(params.get("total"))), _share(params.get("total"), teacher.get("total")),
                     human(number(params.get("non_embedding"))),
                     _share(params.get("non_embedding"), teacher.get("non_embedding")),
                     number(member.get("heldout_loss")), _perplexity(member),
                     _rate(prefill), _rate(decode)])
    headers = ["member", "architecture", "params", "% teacher", "non-embedding", "% teacher",
               "held-out loss", "perplexity", "prefill tok/s", "decode tok/s"]
    legend = paragraph("Architecture: H hidden size, F MLP (intermediate) size, A query/KV heads, L layers. "
                       "Held-out loss is the mean next-token loss (nats per token) on text held out from "
                       "calibration and distillation; perplexity is its exponential.")
    return table(headers, rows, numeric_from=2, raw_columns=(0,)) + legend


def _perplexity(member: dict) -> str:
    value = number(member.get("perplexity"))
    return fmt(value, 2) if value is not None else "—"


def _rate(value: float | None) -> str:
    return f"{value:,.0f}" if value is not None else "—"


def size_vs_loss(run: Run) -> str:
    colors = run.colors()
    points = [(m["name"], number(_params(m).get("total")), number(m.get("heldout_loss")), colors[m["name"]])
              for m in run.members]
    points = [p for p in points if p[1] is not None and p[2] is not None]
    if not points:
        return note(f"No member has both a parameter count and a held-out loss: this plot is {NOT_PART}.")
    caption = ("Each point is one member; lower is better at any size. The grey line follows the chain from the "
               "teacher through each stage: its slope is what each step of compression cost in held-out loss.")
    return figure(plots.params_vs_loss(points), "held-out loss against parameters", caption)


def speed(run: Run) -> str:
    colors = run.colors()
    measured = [(m["name"], *throughput(m)) for m in run.members]
    measured = [m for m in measured if m[1] is not None or m[2] is not None]
    if not measured:
        return note(f"Throughput was {NOT_PART}: no member has prefill or decode tokens/s in run.json.")
    plot = plots.throughput_bars([m[0] for m in measured], [m[1] for m in measured], [m[2] for m in measured],
                                 [colors[m[0]] for m in measured])
    caption = ("Tokens per second on the device the run used. Prefill (reading the prompt) is bound by compute "
               "and grows as width and depth shrink; decode (one token at a time with the KV cache) is bound "
               "by memory traffic and per-layer overhead, so dropping layers helps it most.")
    return figure(plot, "prefill and decode throughput per member", caption)


def stages(run: Run) -> str:
    if not run.stages:
        return note("The recipe has no stages.")
    colors = run.colors()
    rows = []
    for stage in run.stages:
        target = _target_text(stage["target"]) if stage.get("target") else "—"
        if stage.get("search"):
            target = f"search → {target}" if stage.get("target") else "search"
        rows.append([swatch(stage["name"], colors[stage["name"]]), stage.get("kind", "—"),
                     stage.get("status", "—"), stage.get("parent", "—"), target, _seconds(stage.get("seconds"))])
    return table(["stage", "kind", "status", "started from", "pruning target", "time"], rows, numeric_from=5,
                 raw_columns=(0,))


def _target_text(target) -> str:
    if not isinstance(target, dict):
        return str(target)
    return ", ".join(f"{key}={value}" for key, value in target.items())


def _seconds(value) -> str:
    value = number(value)
    if value is None:
        return "—"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def how_made(run: Run) -> str:
    recipe_file = run.root / "recipe.yaml"
    recipe_text = recipe_file.read_text() if recipe_file.is_file() else (
        yaml.safe_dump(run.recipe, sort_keys=False) if run.recipe else "")
    parts = [paragraph(f"Teacher: {run.teacher}. Data: {_data_text(run.data.get('data'))}.")]
    parts.append("<h3>Recipe</h3>" + (code_block(recipe_text) if recipe_text else note("recipe.yaml is missing.")))
    try:
        commands = code_block("\n".join(reproduce_commands(run)))
    except NotReproducible as error:
        commands = note(f"No command can reproduce this run: {error}.")
    parts.append("<h3>Commands to reproduce</h3>" + commands)
    return "".join(parts)


def _data_text(data) -> str:
    if isinstance(data, dict) and data:
        return ", ".join(f"{key}={value}" for key, value in data.items())
    return str(data) if data else "not recorded"


def header(run: Run, updated: str, built: str) -> str:
    name = run.recipe.get("name") or run.root.name
    done = sum(1 for s in run.stages if s.get("status") == "done")
    facts = [("teacher", run.teacher), ("members", str(len(run.members))),
             ("stages done", f"{done} of {len(run.stages)}"), ("run updated", updated), ("report built", built)]
    items = "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in facts)
    return (f'<header><p class="kicker">minitron family report</p><h1>{esc(name)}</h1>'
            f"<dl>{items}</dl></header>")
