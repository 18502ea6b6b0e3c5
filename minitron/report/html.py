"""`build_report(run_dir)`: one self-contained HTML page about a family run (inline CSS, PNGs as data URIs).

    from minitron.report import build_report
    build_report("runs/family")        # -> runs/family/report.html
    minitron report runs/family        # the same from the command line

Every section reads what the run folder holds; a part the run did not do (no search, no correction, no
throughput) says so instead of failing. A missing or malformed run.json is a MinitronError.
"""
from __future__ import annotations

import datetime as dt
from pathlib import Path

from ..cli import command_line
from ..io import atomic_write_text
from . import family, stages
from .markup import esc, section
from .runfolder import RUN_FILE, load_run

REPORT_FILE = "report.html"

CSS = """
:root { --ink:#1f2328; --muted:#5f6b7a; --line:#e3e6ea; --soft:#f6f8fa; --accent:#0b5cad; --chosen:#fff4cc; }
* { box-sizing: border-box; }
body { margin:0; color:var(--ink); background:#fff; line-height:1.55;
  font:15px/1.55 -apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 0 28px 64px; }
p, .lead { max-width: 980px; }
header { padding: 36px 0 18px; border-bottom: 1px solid var(--line); margin-bottom: 8px; }
.kicker { margin:0; color:var(--accent); font-weight:600; letter-spacing:.06em; text-transform:uppercase; font-size:12px; }
h1 { margin: 4px 0 14px; font-size: 30px; line-height:1.2; }
header dl { display:flex; flex-wrap:wrap; gap: 8px 28px; margin:0; }
header dt { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
header dd { margin:0; font-weight:600; word-break: break-all; }
nav { background:var(--soft); border:1px solid var(--line); border-radius:8px; padding:12px 18px; margin:22px 0; }
nav strong { font-size:13px; color:var(--muted); text-transform:uppercase; letter-spacing:.04em; }
nav ol { margin:6px 0 0; padding-left: 20px; columns: 2; }
nav a { color:var(--accent); text-decoration:none; } nav a:hover { text-decoration:underline; }
section { padding-top: 14px; }
h2 { font-size: 22px; margin: 26px 0 6px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 16px; margin: 22px 0 6px; }
h3 .detail { font-weight: 400; color: var(--muted); font-size: 13px; margin-left: 6px; }
.lead { color: var(--muted); margin-top: 2px; }
figure { margin: 10px 0 22px; }
figure img { display:block; width:700px; max-width:100%; height:auto; border:1px solid var(--line); border-radius:6px; }
figcaption { max-width: 700px; color: var(--muted); font-size: 13.5px; margin-top: 6px; }
.table-wrap { overflow-x: auto; margin: 10px 0 14px; }
table { border-collapse: collapse; font-size: 13.5px; min-width: 60%; }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--line); text-align: left; white-space: nowrap; }
th { background: var(--soft); font-weight: 600; white-space: normal; vertical-align: bottom; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fbfcfd; }
tr.chosen, tr.chosen:nth-child(even) { background: var(--chosen); font-weight: 600; }
.swatch { display:inline-block; width:10px; height:10px; border-radius:50%; margin-right:7px; vertical-align: 0; }
.note { color: var(--muted); font-style: italic; background: var(--soft); border-left: 3px solid var(--line);
  padding: 8px 12px; border-radius: 0 6px 6px 0; }
.facts { color: var(--muted); font-size: 13.5px; margin: 2px 0; }
pre { background: var(--soft); border: 1px solid var(--line); border-radius: 6px; padding: 12px 14px;
  overflow-x: auto; font-size: 12.5px; line-height: 1.45; }
footer { color: var(--muted); font-size: 12.5px; border-top: 1px solid var(--line); margin-top: 40px; padding-top: 12px; }
"""

# (anchor, title, lead, builder): the order of the page and of its table of contents.
SECTIONS = [
    ("summary", "The family at a glance", "Every member: size, held-out quality and speed.", "summary"),
    ("size-vs-loss", "Size against quality", "Parameters against held-out loss, teacher included.", "size_vs_loss"),
    ("throughput", "Throughput", "Measured prefill and decode speed of each member.", "speed"),
    ("stages", "Stages", "What each stage of the recipe did, and its state.", "stages"),
    ("layer-importance", "Layer importance", "How much each layer of the pruned parent matters.",
     "layer_importance"),
    ("width-importance", "Neuron and head importance", "Where the width cuts fell, layer by layer.",
     "width_importance"),
    ("search", "Architecture search", "The candidates that met the budget and the one chosen.", "search"),
    ("distillation", "Distillation", "How retraining recovered the loss that pruning cost.", "distillation"),
    ("how-made", "How this was made", "The recipe as run, and the commands that reproduce it.", "how_made"),
]


def build_report(run_dir: str | Path) -> Path:
    """Write RUN/report.html from RUN/run.json and the files it names; returns the report's path."""
    run = load_run(run_dir)
    data = stages.StageData(run)
    builders = {"summary": lambda: family.summary(run), "size_vs_loss": lambda: family.size_vs_loss(run),
                "speed": lambda: family.speed(run), "stages": lambda: family.stages(run),
                "layer_importance": lambda: stages.layer_importance(data),
                "width_importance": lambda: stages.width_importance(data),
                "search": lambda: stages.search(data), "distillation": lambda: stages.distillation(data),
                "how_made": lambda: family.how_made(run)}
    body = "".join(section(anchor, title, builders[key](), lead) for anchor, title, lead, key in SECTIONS)
    updated = dt.datetime.fromtimestamp((run.root / RUN_FILE).stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    built = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    title = f"minitron report: {run.recipe.get('name') or run.root.name}"
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"
            f"{family.header(run, updated, built)}{_contents()}{body}"
            f"<footer>Written by minitron from {esc(RUN_FILE)} in {esc(run.root)}. Regenerate with "
            f"<code>{esc(command_line('report', run_dir=str(run.root)))}</code>.</footer></main></body></html>\n")
    out = run.root / REPORT_FILE
    atomic_write_text(out, page)
    return out


def _contents() -> str:
    items = "".join(f'<li><a href="#{anchor}">{esc(title)}</a></li>' for anchor, title, _, _ in SECTIONS)
    return f"<nav><strong>Contents</strong><ol>{items}</ol></nav>"
