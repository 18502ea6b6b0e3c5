"""Iterative (100% -> 70% -> 50%) against one-shot (100% -> 50%) pruning, at the same distillation tokens.

Usage:
    python bench/iterative_vs_oneshot.py                            # runs (or resumes) both chains, ~20 min
    python bench/iterative_vs_oneshot.py --iterative runs/demo      # reuse a finished `minitron demo` run

Iterative: the shipped recipe recipes/smollm2-cpu.yaml (teacher correction, then 100% -> 70% by a fixed
width cut -> 50% chosen by search, each stage distilled from the corrected teacher).
One-shot: the corrected teacher of that same run pruned in one step straight to the iterative chain's
final architecture (so the two 50% models have the same shape; only the path differs), then distilled
for as many tokens as the iterative chain's final model saw in total (the sum of its stages' distillation
tokens; the search's throw-away candidate training is not counted). Same data, seeds, schedule, held-out
blocks and evaluation. Writes bench/results/iterative_vs_oneshot.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, machine_line, markdown_table, quiet_transformers, write_json

ARCH_LABELS = {"hidden_size": "hidden", "intermediate_size": "MLP", "num_attention_heads": "heads",
               "num_key_value_heads": "KV heads", "num_hidden_layers": "layers"}


def oneshot_recipe(iterative_raw: dict, iterative_run: Path, final: dict, teacher_arch: dict, steps: int) -> dict:
    """The iterative recipe turned into one stage from the corrected teacher to the final architecture."""
    raw = json.loads(json.dumps(iterative_raw))
    raw.pop("correction", None)
    raw["teacher"] = str((iterative_run / "00-correction" / "model").resolve())
    target = {k: v for k, v in final["architecture"].items() if teacher_arch.get(k) != v}
    raw["description"] = "one-shot control of the iterative SmolLM2 chain"
    raw["stages"] = [{"name": "50pct-oneshot", "target": target, "distill": {"steps": steps}}]
    return raw


def distill_tokens(run: dict, run_dir: Path) -> int:
    total = 0
    for stage in run["stages"]:
        if stage["kind"] != "prune_distill":
            continue
        record = json.loads((run_dir / stage["model"] / "minitron.json").read_text())
        config = record["config"]
        total += config["steps"] * config["micro_batch_size"] * config["grad_accum"] * config["seq_len"]
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterative", default="runs/bench-iterative", help="run folder of the iterative chain")
    parser.add_argument("--oneshot", default="runs/bench-oneshot", help="run folder of the one-shot control")
    args = parser.parse_args()
    quiet_transformers()
    from minitron.recipe import run_recipe
    from minitron.recipe.schema import parse_recipe

    info = machine()
    print(machine_line(info), flush=True)
    started = time.perf_counter()
    iterative_dir = Path(args.iterative)
    iterative = run_recipe("smollm2-cpu", iterative_dir)
    final = iterative["members"][-1]
    teacher_arch = iterative["members"][0]["architecture"]
    tokens = distill_tokens(iterative, iterative_dir)
    recipe_raw = iterative["recipe"]
    per_step = recipe_raw["distill"]["micro_batch_size"] * recipe_raw["data"]["seq_len"]
    raw = oneshot_recipe(recipe_raw, iterative_dir, final, teacher_arch, steps=tokens // per_step)
    oneshot = run_recipe(parse_recipe(raw, where="one-shot control"), Path(args.oneshot))
    rows, results = [], {}
    for label, run in (("iterative 100% -> 70% -> 50%", iterative), ("one-shot 100% -> 50%", oneshot)):
        member = run["members"][-1]
        results[label] = member
        rows.append([label, ", ".join(f"{name} {member['architecture'][key]}" for key, name in ARCH_LABELS.items()),
                     f"{member['params']['total']:,}", f"{member['params']['non_embedding']:,}", tokens,
                     round(member["heldout_loss"], 4), round(member["perplexity"], 2)])
    corrected = iterative["members"][1]
    rows.insert(0, ["corrected teacher (both start here)", "", f"{corrected['params']['total']:,}",
                    f"{corrected['params']['non_embedding']:,}", 0, round(corrected["heldout_loss"], 4),
                    round(corrected["perplexity"], 2)])
    table = markdown_table(["path", "architecture", "params", "non-embedding", "distillation tokens",
                            "held-out loss", "perplexity"], rows)
    gap = results["one-shot 100% -> 50%"]["heldout_loss"] - results["iterative 100% -> 70% -> 50%"]["heldout_loss"]
    payload = {"machine": info, "args": vars(args), "distill_tokens": tokens, "oneshot_recipe": raw,
               "results": results, "oneshot_minus_iterative": gap, "table": table,
               "seconds": time.perf_counter() - started}
    path = write_json("iterative_vs_oneshot", payload)
    print(table)
    print(f"one-shot minus iterative held-out loss: {gap:+.4f} "
          f"({'iterative' if gap > 0 else 'one-shot'} is better); results in {path}")


if __name__ == "__main__":
    main()
