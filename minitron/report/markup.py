"""Small HTML builders for the report. Every piece of text goes through `esc`; images become data URIs."""
from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence

from .plots import Plot

FIGURE_WIDTH_PX = 700


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def fmt(value, digits: int = 4) -> str:
    """A table cell: thousands separators for integers, `digits` decimals for floats, a dash for None."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def human(count: float | None) -> str:
    """135.2M, 4.5B: parameter and token counts people can read at a glance."""
    if count is None:
        return "—"
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(count) >= scale:
            return f"{count / scale:.1f}{suffix}"
    return f"{count:.0f}"


def figure(plot: Plot, alt: str, caption: str) -> str:
    data = base64.b64encode(plot.png).decode("ascii")
    # data-points: how many values the plot drew, so a reader (or a test) can tell a real figure from an empty one.
    return (f'<figure><img src="data:image/png;base64,{data}" width="{FIGURE_WIDTH_PX}" alt="{esc(alt)}" '
            f'data-points="{plot.points}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def table(headers: Sequence[str], rows: Iterable[Sequence], *, numeric_from: int = 1,
          row_classes: Sequence[str] | None = None, raw_columns: Sequence[int] = ()) -> str:
    """A table; columns from `numeric_from` on are right-aligned. Cells in `raw_columns` are trusted HTML
    (built here from escaped parts), every other cell is escaped."""
    def align(column: int) -> str:
        return ' class="num"' if column >= numeric_from else ""

    head = "".join(f"<th{align(i)}>{esc(h)}</th>" for i, h in enumerate(headers))
    body = []
    for index, row in enumerate(rows):
        css = f' class="{row_classes[index]}"' if row_classes and row_classes[index] else ""
        cells = "".join(f"<td{align(i)}>{cell if i in raw_columns else esc(fmt(cell))}</td>"
                        for i, cell in enumerate(row))
        body.append(f"<tr{css}>{cells}</tr>")
    return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def swatch(name: str, color: str) -> str:
    return f'<span class="swatch" style="background:{esc(color)}"></span>{esc(name)}'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def paragraph(text: str) -> str:
    return f"<p>{esc(text)}</p>"


def code_block(text: str) -> str:
    return f"<pre><code>{esc(text)}</code></pre>"


def section(anchor: str, title: str, body: str, lead: str = "") -> str:
    lead_html = f'<p class="lead">{esc(lead)}</p>' if lead else ""
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{lead_html}{body}</section>'


def subsection(title: str, body: str, detail: str = "") -> str:
    detail_html = f' <span class="detail">{esc(detail)}</span>' if detail else ""
    return f'<div class="stage"><h3>{esc(title)}{detail_html}</h3>{body}</div>'
