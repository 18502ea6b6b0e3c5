"""One stage of bench/gpu_check.sh, timed: runs `minitron ARGS` in this process (under torchrun: in every
rank) and writes wall time, tokens/s and peak memory to OUT/stats/STAGE-RANK.json; `summary OUT` prints
the table (peak memory: the largest over the ranks).

    python bench/gpu_check.py stage OUT importance 131072 -- importance --model ... --out ...
    torchrun --nproc-per-node 8 bench/gpu_check.py stage OUT distill 4194304 -- distill --fsdp ...
    python bench/gpu_check.py summary OUT
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run_stage(out: Path, stage: str, tokens: int, argv: list[str]) -> int:
    import torch

    from minitron.cli import main
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - start
    stats = {"stage": stage, "rank": int(os.environ.get("RANK", "0")), "seconds": round(seconds, 2),
             "tokens": tokens, "tokens_per_s": round(tokens / seconds, 1) if tokens else None, "exit_code": code,
             "device": torch.cuda.get_device_name() if cuda else "cpu",
             "peak_gib": round((torch.cuda.max_memory_allocated() if cuda else
                                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2 ** 30, 2),
             "peak_kind": "torch.cuda.max_memory_allocated" if cuda else "max RSS (CPU)"}
    (out / "stats").mkdir(parents=True, exist_ok=True)
    (out / "stats" / f"{stage}-{stats['rank']}.json").write_text(json.dumps(stats))
    return code


def summary(out: Path) -> str:
    by_stage: dict[str, list[dict]] = {}
    for path in sorted((out / "stats").glob("*.json")):
        record = json.loads(path.read_text())
        by_stage.setdefault(record["stage"], []).append(record)
    lines = [f"{'stage':<12} {'procs':>5} {'seconds':>8} {'tokens':>10} {'tok/s':>10} {'peak GiB':>9}  device"]
    order = ["importance", "prune", "distill", "eval"]
    for stage in sorted(by_stage, key=lambda name: order.index(name) if name in order else 99):
        records = by_stage[stage]
        first = min(records, key=lambda r: r["rank"])
        speed = "" if first["tokens_per_s"] is None else f"{first['tokens_per_s']:,.0f}"
        lines.append(f"{stage:<12} {len(records):>5} {max(r['seconds'] for r in records):>8.1f} "
                     f"{first['tokens']:>10,} {speed:>10} {max(r['peak_gib'] for r in records):>9.2f}  "
                     f"{first['device']} ({first['peak_kind']})")
    table = "\n".join(lines)
    (out / "summary.txt").write_text(table + "\n")
    return table


if __name__ == "__main__":
    if sys.argv[1] == "summary":
        print(summary(Path(sys.argv[2])))
    elif sys.argv[1] == "stage" and "--" in sys.argv:
        split = sys.argv.index("--")
        folder, name, token_count = sys.argv[2:split]
        sys.exit(run_stage(Path(folder), name, int(token_count), sys.argv[split + 1:]))
    else:
        sys.exit(__doc__)
