"""Data at scale: peak memory flat in the size of the prepared data, tokenization throughput, and
distillation throughput reading token shards vs an in-memory tensor.

Usage:
    python bench/data_scale.py                       # all three studies (a few minutes on 2 cores)
    python bench/data_scale.py --studies rss         # one study: rss, tokenize, distill
    python bench/data_scale.py --sizes 10e6,200e6 --steps 12

Studies:
  - rss: the same student (a random Llama, 4 layers, hidden 256, vocabulary 32,000) distilled from the same
    teacher for the same number of steps over prepared data of each size, each run in a fresh child process
    (this script with --child); reports the child's peak RSS (ru_maxrss). The prepared folders are written
    directly with random token ids (uint16) in the layout `minitron tokenize` writes, because tokenizing
    200M tokens takes too long on a small machine; the reading path (memmap, sampler, DataLoader) is the
    one every prepared folder goes through.
  - tokenize: `write_shards` of builtin:python-docs with the builtin SmolLM2 tokenizer (49,152 tokens) with
    1 and 2 tokenizer processes (`--num-proc`); the documents are read once beforehand, so that the parse
    of the standard library's docstrings (cached) is not counted. Tokens/s = tokens written / wall seconds.
  - distill: in one process, rounds alternating three ways of feeding the same blocks to `distill`: the
    tensor in memory (as before this change), the shards with the DataLoader reading in the training
    process (--data-workers 0), and with one reader process (--data-workers 1, the default). Median of the
    per-step tokens/s (which includes fetching the step's blocks), first step of each call left out.

Writes bench/results/data_scale.json and prints Markdown tables.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (RESULTS_DIR, machine, machine_line, markdown_table, median,  # noqa: E402
                          quiet_transformers, write_json)

VOCAB = 32_000
SEQ_LEN = 256
MICRO_BATCH = 4


def synthetic_shards(folder: Path, tokens: int, seed: int = 0) -> Path:
    """A prepared folder of `tokens` random ids (train) plus a small held-out split, written in chunks."""
    import numpy as np
    from minitron.data.shards import FORMAT, FORMAT_VERSION, MANIFEST
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sizes = {"train": tokens, "heldout": 64 * SEQ_LEN}
    for split, count in sizes.items():
        with (folder / f"{split}.bin").open("wb") as handle:
            for start in range(0, count, 1 << 24):
                handle.write(rng.integers(3, VOCAB, min(1 << 24, count - start), dtype=np.uint16).tobytes())
        (folder / f"{split}.idx").write_bytes(np.array([count], dtype=np.uint64).tobytes())
    manifest = {"format": FORMAT, "version": FORMAT_VERSION, "source": "synthetic random ids", "text_field": "text",
                "tokenizer": {"fingerprint": "synthetic", "name": "synthetic", "vocab_size": VOCAB},
                "dtype": "uint16", "eos_token_id": None, "eos": "none (synthetic)",
                "split_rule": {"heldout_fraction": 0.1, "rule": "synthetic"},
                "splits": {split: {"documents": 1, "tokens": count} for split, count in sizes.items()}}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return folder


def models():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    common = dict(vocab_size=VOCAB, hidden_size=256, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=SEQ_LEN, tie_word_embeddings=False)
    torch.manual_seed(0)
    teacher = LlamaForCausalLM(LlamaConfig(intermediate_size=1024, num_hidden_layers=6, **common)).eval()
    student = LlamaForCausalLM(LlamaConfig(intermediate_size=512, num_hidden_layers=4, **common))
    return student, teacher


def distill_config(steps: int, workers: int):
    from minitron.config import DistillConfig
    return DistillConfig(seq_len=SEQ_LEN, micro_batch_size=MICRO_BATCH, steps=steps, eval_every=0, eval_samples=4,
                         save_every=0, warmup_steps=1, precision="fp32", data_workers=workers)


def child(folder: str, steps: int) -> None:
    """One distillation over the prepared folder; prints the peak RSS as JSON."""
    import torch
    from minitron.data.shards import TokenShards
    from minitron.distill.loop import distill
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    shards = TokenShards(folder)
    student, teacher = models()
    started = time.perf_counter()
    distill(student, teacher, shards, shards.blocks("heldout", SEQ_LEN, 4), distill_config(steps, workers=1))
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_rss_mb": round(peak_kb / 1024, 1), "seconds": round(time.perf_counter() - started, 1),
                      "train_tokens": shards.num_tokens("train")}))


def rss_study(sizes: list[int], steps: int, scratch: Path) -> dict:
    rows = []
    for tokens in sizes:
        folder = synthetic_shards(scratch / f"shards-{tokens}", tokens)
        result = subprocess.run([sys.executable, __file__, "--child", str(folder), "--steps", str(steps)],
                                capture_output=True, text=True, check=True)
        rows.append({"prepared_tokens": tokens, "disk_mb": round((folder / "train.bin").stat().st_size / 2**20, 1),
                     **json.loads(result.stdout.strip().splitlines()[-1])})
        print(f"  rss: {tokens:,} tokens -> {rows[-1]['peak_rss_mb']} MB", flush=True)
    return {"steps": steps, "rows": rows, "ratio": rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]}


def tokenize_study(scratch: Path, spec: str = "builtin:python-docs") -> dict:
    from minitron.data import iter_documents
    from minitron.data.shards import write_shards
    from minitron.loading import load_tokenizer
    tokenizer = load_tokenizer("builtin:smollm2-135m")
    sum(1 for _ in iter_documents(spec))  # fills the docstring cache: reading is then the same for both
    rows = []
    for num_proc in (1, 2):
        started = time.perf_counter()
        shards = write_shards(spec, tokenizer, scratch / f"tokenized-{num_proc}", num_proc=num_proc)
        seconds = time.perf_counter() - started
        tokens = shards.num_tokens("train") + shards.num_tokens("heldout")
        rows.append({"num_proc": num_proc, "tokens": tokens, "seconds": round(seconds, 2),
                     "tokens_per_s": round(tokens / seconds)})
        print(f"  tokenize: {num_proc} process(es) {tokens / seconds:,.0f} tokens/s", flush=True)
    return {"spec": spec, "tokenizer": "builtin:smollm2-135m", "rows": rows}


def distill_study(scratch: Path, rounds: int, steps: int) -> dict:
    import torch
    from minitron.distill.loop import distill
    folder = synthetic_shards(scratch / "shards-distill", 2_000_000, seed=1)
    from minitron.data.shards import TokenShards
    shards = TokenShards(folder)
    in_memory = shards.blocks("train", SEQ_LEN, len(shards.dataset("train", SEQ_LEN)))
    heldout = shards.blocks("heldout", SEQ_LEN, 4)
    student, teacher = models()
    ways = {"tensor in memory": (in_memory, 0), "shards, reading in process": (shards, 0),
            "shards, 1 reader process": (shards, 1)}
    speeds: dict[str, list[float]] = {name: [] for name in ways}
    names = list(ways)
    for round_index in range(rounds):
        for name in names[round_index % 3:] + names[:round_index % 3]:  # rotate the order every round
            data, workers = ways[name]
            records = []
            distill(copy.deepcopy(student), teacher, data, heldout, distill_config(steps, workers),
                    on_step=lambda step, record: records.append(record["tokens_per_s"]))
            speeds[name] += records[1:]
    rows = [{"data": name, "median_tokens_per_s": round(median(values), 1), "steps_timed": len(values),
             "tokens_per_s": [round(v, 1) for v in values]} for name, values in speeds.items()]
    base = rows[0]["median_tokens_per_s"]
    for row in rows:
        row["vs_tensor"] = round(row["median_tokens_per_s"] / base, 3)
    return {"rounds": rounds, "steps_per_call": steps, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", default="rss,tokenize,distill")
    parser.add_argument("--sizes", default="10e6,200e6", help="Prepared train tokens of the rss study.")
    parser.add_argument("--steps", type=int, default=12, help="Distillation steps per run (rss study).")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds of the distill study.")
    parser.add_argument("--distill-steps", type=int, default=6, help="Steps per distill call (distill study).")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    quiet_transformers()
    if args.child:
        child(args.child, args.steps)
        return
    studies = args.studies.split(",")
    previous = RESULTS_DIR / "data_scale.json"  # studies not run now keep their last results
    payload = json.loads(previous.read_text()) if previous.is_file() else {}
    payload |= {"seq_len": SEQ_LEN, "micro_batch_size": MICRO_BATCH}
    payload.setdefault("machines", {})
    for study in studies:
        payload["machines"][study] = machine()
    payload["machine"] = machine()
    with tempfile.TemporaryDirectory(prefix="minitron-data-scale-") as scratch:
        scratch = Path(scratch)
        if "rss" in studies:
            payload["rss"] = rss_study([int(float(s)) for s in args.sizes.split(",")], args.steps, scratch)
        if "tokenize" in studies:
            payload["tokenize"] = tokenize_study(scratch)
        if "distill" in studies:
            payload["distill"] = distill_study(scratch, args.rounds, steps=args.distill_steps)
    path = write_json("data_scale", payload)
    print(machine_line(payload["machine"]))
    if "rss" in payload:
        rows = [[r["prepared_tokens"], r["disk_mb"], r["peak_rss_mb"], r["seconds"]] for r in payload["rss"]["rows"]]
        print(markdown_table(["prepared train tokens", "train.bin MB", "peak RSS MB", "run s"], rows))
        print(f"peak RSS ratio, largest / smallest: {payload['rss']['ratio']:.3f}")
    if "tokenize" in payload:
        rows = [[r["num_proc"], r["tokens"], r["seconds"], r["tokens_per_s"]] for r in payload["tokenize"]["rows"]]
        print(markdown_table(["--num-proc", "tokens", "seconds", "tokens/s"], rows))
    if "distill" in payload:
        rows = [[r["data"], r["median_tokens_per_s"], r["vs_tensor"], r["steps_timed"]]
                for r in payload["distill"]["rows"]]
        print(markdown_table(["training data", "median tokens/s", "vs tensor", "steps timed"], rows))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
