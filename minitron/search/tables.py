"""The search's outputs: search.json (everything), candidates.csv and candidates.md (one row per candidate)."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..io import atomic_write_text

SEARCH_JSON, CANDIDATES_CSV, CANDIDATES_MD = "search.json", "candidates.csv", "candidates.md"
ARCH_COLUMNS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                "num_hidden_layers")
COLUMNS = ("rank_distilled", "rank_pruned", *ARCH_COLUMNS, "cut", "params_total", "params_non_embedding",
           "latency_ms", "loss_pruned", "loss_distilled", "chosen")


def ordered_rows(candidates: list[dict]) -> list[dict]:
    """Distilled candidates first (by their rank after retraining), then the rest by their rank after pruning."""
    return sorted(candidates, key=lambda r: (r["rank_distilled"] is None, r["rank_distilled"] or 0, r["rank_pruned"]))


def flat_row(row: dict) -> dict:
    return {"rank_distilled": row["rank_distilled"], "rank_pruned": row["rank_pruned"],
            **{key: row["architecture"][key] for key in ARCH_COLUMNS}, "cut": row["cut"],
            "params_total": row["params"]["total"], "params_non_embedding": row["params"]["non_embedding"],
            "latency_ms": row["latency_ms"], "loss_pruned": row["loss_pruned"],
            "loss_distilled": row["loss_distilled"], "chosen": row["chosen"]}


def candidates_csv(result: dict) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in ordered_rows(result["candidates"]):
        writer.writerow({k: "" if v is None else v for k, v in flat_row(row).items()})
    return buffer.getvalue()


def _cell(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "**yes**" if value else ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def candidates_markdown(result: dict) -> str:
    """A Markdown table of every candidate, with the budget and the source model above it."""
    budget, source = result["budget"], result["source"]
    unit = "ms" if budget["metric"] == "latency_ms" else f"{budget['metric'].replace('_', '-')} parameters"
    limit = f"{budget['limit']:,.1f}" if budget["metric"] == "latency_ms" else f"{int(budget['limit']):,}"
    lines = [f"Budget: {limit} {unit} ({budget['fraction_of_source']:.1%} of the source), slack {budget['slack']:.0%}.",
             (f"Source: {_arch_text(source['architecture'])}; {source['params']['total']:,} parameters; "
              f"held-out loss {source['loss']:.4f}."), ""]
    headers = ["rank (distilled)", "rank (pruned)", "hidden", "MLP", "heads", "KV heads", "layers", "cut",
               "params", "non-embedding", "latency ms", "loss pruned", "loss distilled", "chosen"]
    lines += ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" for _ in headers) + "|"]
    for row in ordered_rows(result["candidates"]):
        cells = [_cell(v, 1 if k == "latency_ms" else 4) for k, v in flat_row(row).items()]
        lines.append("| " + " | ".join(cells) + " |")
    if any(r["loss_distilled"] is not None for r in result["candidates"]):
        lines += ["", ranking_sentence(result)]
    return "\n".join(lines) + "\n"


def ranking_sentence(result: dict) -> str:
    if not result["ranking_changed"]:
        return "Short retraining did not change the ranking of the distilled candidates."
    if result.get("winner_changed"):
        return "Short retraining changed the ranking of the distilled candidates, and the winner."
    return "Short retraining changed the ranking of the distilled candidates, but not the winner."


def _arch_text(arch: dict) -> str:
    return (f"hidden {arch['hidden_size']}, MLP {arch['intermediate_size']}, heads {arch['num_attention_heads']}/"
            f"{arch['num_key_value_heads']} KV, layers {arch['num_hidden_layers']}")


def write_outputs(out: str | Path, result: dict) -> Path:
    """Write the three files atomically; search.json last, so its presence means the search finished."""
    out = Path(out)
    atomic_write_text(out / CANDIDATES_CSV, candidates_csv(result))
    atomic_write_text(out / CANDIDATES_MD, candidates_markdown(result))
    atomic_write_text(out / SEARCH_JSON, json.dumps(result, indent=2, default=str) + "\n")
    return out


def listing_markdown(listing: dict) -> str:
    """The dry run: the candidates that meet the budget and would be scored, with their sizes."""
    budget, counts = listing["budget"], listing["counts"]
    unit = "ms" if budget["metric"] == "latency_ms" else f"{budget['metric'].replace('_', '-')} parameters"
    limit = f"{budget['limit']:,.1f}" if budget["metric"] == "latency_ms" else f"{int(budget['limit']):,}"
    lines = [f"Budget: {limit} {unit} ({budget['fraction_of_source']:.1%} of the source), slack {budget['slack']:.0%}.",
             f"Grid: {counts['grid']} architectures, {counts['valid']} valid, {counts['under_budget']} within the "
             f"budget, {counts['near_budget']} close to it"
             + (" (none within the slack: the largest that fit are compared)" if counts["slack_widened"] else "")
             + f"; {counts['scored']} would be scored:", ""]
    headers = ["hidden", "MLP", "heads", "KV heads", "layers", "cut", "params", "non-embedding", "of budget",
               "latency ms"]
    lines += ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" for _ in headers) + "|"]
    for row in listing["candidates"]:
        value = row["latency_ms"] if budget["metric"] == "latency_ms" else row["params"][budget["metric"]]
        cells = [*(row["architecture"][key] for key in ARCH_COLUMNS), row["cut"], row["params"]["total"],
                 row["params"]["non_embedding"], f"{value / budget['limit']:.1%}", row["latency_ms"]]
        lines.append("| " + " | ".join(_cell(c, 1) for c in cells) + " |")
    return "\n".join(lines) + "\n"
