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
# Columns of the MoE / Mamba axes, shown only when the candidates have them (a dense search's tables are
# the five sizes), with their Markdown headers.
OPTIONAL_COLUMNS = {"num_experts": "experts", "moe_intermediate_size": "expert MLP",
                    "shared_expert_intermediate_size": "shared MLP", "mamba_num_heads": "Mamba heads"}
ARCH_HEADERS = ("hidden", "MLP", "heads", "KV heads", "layers")


def arch_columns(rows: list[dict]) -> tuple[str, ...]:
    extra = [key for key in OPTIONAL_COLUMNS if any(key in row["architecture"] for row in rows)]
    return (*ARCH_COLUMNS, *extra)


def arch_headers(columns: tuple[str, ...]) -> list[str]:
    return [*ARCH_HEADERS, *(OPTIONAL_COLUMNS[key] for key in columns[len(ARCH_COLUMNS):])]


def ordered_rows(candidates: list[dict]) -> list[dict]:
    """Distilled candidates first (by their rank after retraining), then the rest by their rank after pruning."""
    return sorted(candidates, key=lambda r: (r["rank_distilled"] is None, r["rank_distilled"] or 0, r["rank_pruned"]))


def has_experts(rows: list[dict]) -> bool:
    """Whether the candidates are mixture-of-experts models (their active parameters get a column)."""
    return any(row["params"]["active"] != row["params"]["total"] for row in rows)


def has_memory(result: dict) -> bool:
    """Whether the search's budget is serving memory (its candidates then get a memory column)."""
    return result["budget"]["metric"] == "memory_gb"


def flat_row(row: dict, columns: tuple[str, ...] = ARCH_COLUMNS, active: bool = False, memory: bool = False) -> dict:
    return {"rank_distilled": row["rank_distilled"], "rank_pruned": row["rank_pruned"],
            **{key: row["architecture"][key] for key in columns}, "cut": row["cut"],
            "params_total": row["params"]["total"], "params_non_embedding": row["params"]["non_embedding"],
            **({"params_active": row["params"]["active"]} if active else {}),
            **({"memory_gb": row.get("memory_gb")} if memory else {}),
            "latency_ms": row["latency_ms"], "loss_pruned": row["loss_pruned"],
            "loss_distilled": row["loss_distilled"], "chosen": row["chosen"]}


def candidates_csv(result: dict) -> str:
    buffer = io.StringIO()
    columns, active, memory = arch_columns(result["candidates"]), has_experts(result["candidates"]), has_memory(result)
    fieldnames = list(flat_row(result["candidates"][0], columns, active, memory))
    writer = csv.DictWriter(buffer, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    for row in ordered_rows(result["candidates"]):
        writer.writerow({k: "" if v is None else v for k, v in flat_row(row, columns, active, memory).items()})
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
    lines = [f"Budget: {_limit_text(budget)} ({budget['fraction_of_source']:.1%} of the source), "
             f"slack {budget['slack']:.0%}.",
             (f"Source: {_arch_text(source['architecture'])}; {source['params']['total']:,} parameters; "
              f"held-out loss {source['loss']:.4f}."), ""]
    columns, active, memory = arch_columns(result["candidates"]), has_experts(result["candidates"]), has_memory(result)
    headers = ["rank (distilled)", "rank (pruned)", *arch_headers(columns), "cut", "params", "non-embedding",
               *(["active"] if active else []), *(["memory GB"] if memory else []), "latency ms", "loss pruned", "loss distilled", "chosen"]
    lines += ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" for _ in headers) + "|"]
    for row in ordered_rows(result["candidates"]):
        cells = [_cell(v, 1 if k == "latency_ms" else 3 if k == "memory_gb" else 4)
                 for k, v in flat_row(row, columns, active, memory).items()]
        lines.append("| " + " | ".join(cells) + " |")
    dropped = result.get("counts", {}).get("over_budget_when_pruned", 0)
    if dropped:
        lines += ["", f"{dropped} shortlisted candidate(s) left out: pruned by the importance scores, they "
                      "exceeded the budget."]
    if any(r["loss_distilled"] is not None for r in result["candidates"]):
        lines += ["", ranking_sentence(result)]
    return "\n".join(lines) + "\n"


def ranking_sentence(result: dict) -> str:
    if not result["ranking_changed"]:
        return "Short retraining did not change the ranking of the distilled candidates."
    if result.get("winner_changed"):
        return "Short retraining changed the ranking of the distilled candidates, and the winner."
    return "Short retraining changed the ranking of the distilled candidates, but not the winner."


def _limit_text(budget: dict) -> str:
    metric, limit = budget["metric"], budget["limit"]
    if metric == "latency_ms":
        return f"{limit:,.1f} ms"
    if metric == "memory_gb":
        setting = budget["memory_setting"]
        return f"{limit:,.3f} GB (batch {setting['batch']} x {setting['context']} tokens)"
    return f"{int(limit):,} {metric.replace('_', '-')} parameters"


def _budget_value(row: dict, metric: str) -> float:
    return row[metric] if metric in ("latency_ms", "memory_gb") else row["params"][metric]


def _arch_text(arch: dict) -> str:
    extra = "".join(f", {header} {arch[key]}" for key, header in OPTIONAL_COLUMNS.items() if key in arch)
    return (f"hidden {arch['hidden_size']}, MLP {arch['intermediate_size']}, heads {arch['num_attention_heads']}/"
            f"{arch['num_key_value_heads']} KV, layers {arch['num_hidden_layers']}{extra}")


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
    lines = [f"Budget: {_limit_text(budget)} ({budget['fraction_of_source']:.1%} of the source), "
             f"slack {budget['slack']:.0%}.",
             f"Grid: {counts['grid']} architectures, {counts['valid']} valid, {counts['under_budget']} within the "
             f"budget, {counts['near_budget']} close to it"
             + (" (none within the slack: the largest that fit are compared)" if counts["slack_widened"] else "")
             + f"; {counts['scored']} would be scored:", ""]
    columns, active = arch_columns(listing["candidates"]), has_experts(listing["candidates"])
    headers = [*arch_headers(columns), "cut", "params", "non-embedding", *(["active"] if active else []),
               "of budget", "latency ms"]
    lines += ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" for _ in headers) + "|"]
    for row in listing["candidates"]:
        value = _budget_value(row, budget["metric"])
        cells = [*(row["architecture"][key] for key in columns), row["cut"], row["params"]["total"],
                 row["params"]["non_embedding"], *([row["params"]["active"]] if active else []),
                 f"{value / budget['limit']:.1%}", row["latency_ms"]]
        lines.append("| " + " | ".join(_cell(c, 1) for c in cells) + " |")
    return "\n".join(lines) + "\n"
