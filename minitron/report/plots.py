"""The report's figures. Each function takes plain numbers and returns a `Plot`: PNG bytes and how many
data points it drew (so a test can tell an empty axis from a real figure).

    plot = params_vs_loss([("teacher", 135e6, 2.1, "#333")])
    Path("fig.png").write_bytes(plot.png); assert plot.points == 1

Figures are built on `matplotlib.figure.Figure` with the Agg canvas, never pyplot: no global backend
switch, no figure registry to leak, safe to call from any thread.
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, MaxNLocator

WIDTH_IN = 7.0  # shown 700 px wide; rendered at DPI for sharp text on high-density screens
DPI = 150
TEACHER_GREY = "#3b3b3b"
DROPPED = "#c0392b"
STYLE = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "legend.frameon": False,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.25,
    "grid.linewidth": 0.6, "axes.edgecolor": "#777777", "xtick.color": "#444444", "ytick.color": "#444444",
    "font.family": "DejaVu Sans",
}


@dataclass(frozen=True)
class Plot:
    png: bytes
    points: int  # data values drawn (markers, bar heights, heatmap cells)


def _figure(height: float, ncols: int = 1, **grid) -> tuple[Figure, list]:
    figure = Figure(figsize=(WIDTH_IN, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, ncols, squeeze=False, **grid)[0]
    return figure, list(axes)


def _render(figure: Figure, points: int) -> Plot:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    return Plot(png=buffer.getvalue(), points=points)


def params_vs_loss(members: Sequence[tuple[str, float, float, str]]) -> Plot:
    """Held-out loss against total parameters, one labelled point per member (name, params, loss, colour);
    a grey line joins the members in the order given (the chain: teacher, correction, stage after stage)."""
    with rc_context(STYLE):
        figure, (axis,) = _figure(3.6)
        axis.plot([m[1] for m in members], [m[2] for m in members], color="#bbbbbb", lw=1, zorder=1)
        for name, params, loss, color in members:
            axis.scatter(params, loss, s=70 if name == "teacher" else 55, color=color, zorder=3,
                         marker="D" if name == "teacher" else "o", edgecolor="white", linewidth=0.8)
            axis.annotate(name, (params, loss), textcoords="offset points", xytext=(7, 5), fontsize=8.5,
                          color=color)
        axis.xaxis.set_major_formatter(EngFormatter())
        axis.set_xlabel("parameters (total)")
        axis.set_ylabel("held-out loss (nats / token)")
        axis.margins(x=0.18, y=0.15)
        return _render(figure, len(members))


def throughput_bars(names: Sequence[str], prefill: Sequence[float | None], decode: Sequence[float | None],
                    colors: Sequence[str]) -> Plot:
    """Prefill and decode tokens/s per member, side by side (their scales differ by orders of magnitude)."""
    points = 0
    with rc_context(STYLE):
        figure, axes = _figure(max(2.2, 0.45 * len(names) + 1.2), ncols=2)
        for axis, values, title in ((axes[0], prefill, "prefill"), (axes[1], decode, "decode")):
            shown = [(n, v, c) for n, v, c in zip(names, values, colors) if v is not None]
            positions = np.arange(len(shown))
            axis.barh(positions, [v for _, v, _ in shown], color=[c for _, _, c in shown], height=0.65)
            axis.set_yticks(positions, [n for n, _, _ in shown])
            axis.invert_yaxis()
            for y, (_, value, _) in zip(positions, shown):
                axis.annotate(f"{value:,.0f}", (value, y), textcoords="offset points", xytext=(3, 0),
                              va="center", fontsize=7.5, color="#333333")
            axis.set_title(f"{title} (tokens / s)")
            axis.xaxis.set_major_formatter(EngFormatter())
            axis.margins(x=0.2)
            axis.grid(axis="y", visible=False)
            points += len(shown)
        return _render(figure, points)


def layer_importance(metrics: dict[str, Sequence[float]], dropped: Sequence[int], color: str) -> Plot:
    """One panel per layer metric (Block Influence, LM-loss increase), dropped layers marked in red."""
    labels = {"block_influence": "Block Influence (1 − cos(in, out))",
              "lm_loss": "LM-loss increase when skipped"}
    dropped = set(dropped)
    with rc_context(STYLE):
        figure = Figure(figsize=(WIDTH_IN, 1.9 * len(metrics) + 0.6), dpi=DPI, layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.subplots(len(metrics), 1, sharex=True, squeeze=False)[:, 0]
        points = 0
        for axis, (name, values) in zip(axes, metrics.items()):
            values = np.asarray(values, dtype=float)
            layers = np.arange(len(values))
            axis.plot(layers, values, color=color, lw=1.6, marker="o", ms=4, label="layer score")
            gone = [i for i in layers if i in dropped]
            for i in gone:
                axis.axvspan(i - 0.5, i + 0.5, color=DROPPED, alpha=0.08, lw=0)
            if gone:
                axis.scatter(gone, values[gone], color=DROPPED, marker="X", s=50, zorder=4,
                             label="dropped by pruning")
                if axis is axes[0]:
                    axis.legend(loc="best")
            axis.set_ylabel(labels.get(name, name), fontsize=8)
            points += len(values)
        axes[-1].set_xlabel("layer")
        axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
        return _render(figure, points)


def _row_normalised(rows: Sequence[Sequence[float]], sort: bool) -> np.ndarray:
    """One row per layer, NaN (drawn blank) where a layer has fewer or no entries: hybrid stacks score
    MLP neurons and heads only in their MLP and attention layers, and MoE layers have no dense neurons."""
    width = max((len(r) for r in rows), default=0)
    matrix = np.full((len(rows), width), np.nan)
    for layer, row in enumerate(rows):
        values = np.asarray(row, dtype=float)
        matrix[layer, :len(values)] = -np.sort(-values) if sort else values
    filled = ~np.isnan(matrix).all(axis=1, keepdims=True)
    peak = np.nanmax(np.abs(np.where(filled, matrix, 0.0)), axis=1, keepdims=True) if width else np.ones((len(rows), 1))
    return matrix / np.where(peak > 0, peak, 1.0)


def neuron_head_heatmaps(neurons: Sequence[Sequence[float]], heads: Sequence[Sequence[float]],
                         kept_neurons: int | None, kept_heads: dict[int, Sequence[int]] | None,
                         dropped: Sequence[int]) -> Plot:
    """Left: each layer's MLP neuron scores, sorted, relative to the layer's best, with the pruning cut.
    Right: each layer's head scores, relative to its best head; × marks heads the pruning removed."""
    neuron_matrix = _row_normalised(neurons, sort=True)
    head_matrix = _row_normalised(heads, sort=False)
    layers = len(neuron_matrix)
    with rc_context({**STYLE, "axes.grid": False}):
        figure, (left, right) = _figure(max(2.4, 0.28 * layers + 1.3), ncols=2, width_ratios=[3, 1.3])
        if neuron_matrix.shape[1]:
            left.imshow(neuron_matrix, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        else:  # every MLP is a mixture of experts: no dense neurons to draw
            left.set_ylim(layers - 0.5, -0.5)
            left.text(0.5, 0.5, "no dense MLP layers", transform=left.transAxes, ha="center", va="center")
        if kept_neurons is not None and kept_neurons < neuron_matrix.shape[1]:
            left.axvline(kept_neurons - 0.5, color="white", lw=1.6, ls="--")
            left.annotate(f"keep {kept_neurons}", (kept_neurons, -0.6), color="#c0392b", fontsize=8,
                          annotation_clip=False)
        left.set_xlabel("neurons, sorted by importance within each layer")
        left.set_ylabel("layer")
        image = right.imshow(head_matrix, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        for layer, kept in (kept_heads or {}).items():
            for head in sorted(set(range(head_matrix.shape[1])) - set(kept)):
                right.text(head, layer, "×", ha="center", va="center", color="white", fontsize=9, weight="bold")
        right.set_xlabel("attention head")
        right.set_xticks(range(head_matrix.shape[1]))
        dropped = {layer for layer in dropped if layer < layers}
        names = [f"{i} (dropped)" if i in dropped else str(i) for i in range(layers)]
        for axis in (left, right):
            axis.set_yticks(range(layers), names, fontsize=7 if layers > 16 else 8)
            for layer, tick in enumerate(axis.get_yticklabels()):
                if layer in dropped:
                    tick.set_color(DROPPED)
                    axis.axhspan(layer - 0.5, layer + 0.5, color="white", alpha=0.55, lw=0)
        right.tick_params(labelleft=False)
        figure.colorbar(image, ax=right, label="score / layer's best", shrink=0.9)
        return _render(figure, int(np.count_nonzero(~np.isnan(neuron_matrix)) + np.count_nonzero(~np.isnan(head_matrix))))


def search_losses(candidates: Sequence[dict], chosen_color: str) -> Plot:
    """Left: loss after pruning vs loss after short distillation. Right: the two rankings joined by a line
    per candidate; crossing lines are ranking flips. Candidates never distilled appear on neither panel."""
    both = [c for c in candidates if c.get("loss_distilled") is not None and c.get("loss_pruned") is not None]
    with rc_context(STYLE):
        figure, (scatter, ranks) = _figure(3.4, ncols=2, width_ratios=[1.5, 1])
        for candidate in both:
            chosen = bool(candidate.get("chosen"))
            scatter.scatter(candidate["loss_pruned"], candidate["loss_distilled"], s=110 if chosen else 40,
                            marker="*" if chosen else "o", color=chosen_color if chosen else "#9a9a9a",
                            zorder=3, edgecolor="white", linewidth=0.6)
            scatter.annotate(candidate.get("label", ""), (candidate["loss_pruned"], candidate["loss_distilled"]),
                             textcoords="offset points", xytext=(5, 4), fontsize=7, color="#444444")
        scatter.set_xlabel("held-out loss right after pruning")
        scatter.set_ylabel("after short distillation")
        scatter.margins(0.2)
        order_pruned = _ranks([c["loss_pruned"] for c in both])
        order_distilled = _ranks([c["loss_distilled"] for c in both])
        for candidate, before, after in zip(both, order_pruned, order_distilled):
            chosen = bool(candidate.get("chosen"))
            ranks.plot([0, 1], [before, after], marker="o", color=chosen_color if chosen else "#9a9a9a",
                       lw=2.2 if chosen else 1.1, zorder=3 if chosen else 2)
        ranks.set_xticks([0, 1], ["after pruning", "after distillation"])
        ranks.set_ylabel("rank (1 = lowest loss)")
        # Whole ranks only, even for one or two candidates (where an automatic axis shows 0.95 ... 1.05).
        ranks.set_yticks(range(1, len(both) + 1))
        ranks.set_ylim(len(both) + 0.5, 0.5)  # rank 1 on top
        ranks.set_xlim(-0.25, 1.25)
        ranks.grid(axis="x", visible=False)
        return _render(figure, 2 * len(both))


def _ranks(values: Sequence[float]) -> list[int]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0] * len(values)
    for rank, index in enumerate(order, start=1):
        ranks[index] = rank
    return ranks


def _x(record: dict):
    return record.get("tokens", record["step"])


def distillation_curves(records: Sequence[dict], color: str) -> Plot:
    """Left: held-out loss of student and teacher against training tokens. Right: the training loss."""
    by_tokens = "tokens" in records[0]
    validated = [r for r in records if r.get("val_student_loss") is not None]
    with rc_context(STYLE):
        figure, (validation, train) = _figure(3.0, ncols=2)
        points = 0
        if validated:
            x = [_x(r) for r in validated]
            validation.plot(x, [r["val_student_loss"] for r in validated], color=color, marker="o", ms=3.5,
                            lw=1.6, label="student")
            points += len(validated)
            teacher = [r for r in validated if r.get("val_teacher_loss") is not None]
            if teacher:
                validation.plot([_x(r) for r in teacher], [r["val_teacher_loss"] for r in teacher],
                                color=TEACHER_GREY, ls="--", lw=1.3, label="teacher")
                points += len(teacher)
            validation.legend(loc="best")
        validation.set_title("held-out loss")
        train_records = [r for r in records if r.get("loss") is not None]
        train.plot([_x(r) for r in train_records], [r["loss"] for r in train_records], color=color, lw=1.1,
                   alpha=0.9)
        points += len(train_records)
        train.set_title("training loss")
        for axis in (validation, train):
            axis.set_xlabel("training tokens" if by_tokens else "step")
            axis.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # no half steps
            axis.xaxis.set_major_formatter(EngFormatter())
        return _render(figure, points)
