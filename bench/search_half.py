"""Architecture search at about half the non-embedding parameters of the built-in teacher.

Usage:
    python bench/search_half.py                     # 8 candidates, top 3 distilled for 16,384 tokens each
    python bench/search_half.py --calib-samples 8 --candidates 3 --top-k 2 --candidate-tokens 512 \
        --heldout-blocks 4 --name search_half_smoke   # a smoke run (minutes), not a result
    python bench/search_half.py --report-only bench/results/search_half.json

Setup:
  - teacher: builtin:smollm2-135m (SmolLM2-135M-Instruct: hidden 576, MLP 1536, 9 heads / 3 KV, 30 layers),
    fp32 on this device.
  - one set of importance scores for every candidate: activation importance on --calib-samples x --seq-len
    token blocks of builtin:python-docs (train split), with the LM-loss layer metric on the first
    --layer-loss-samples blocks; saved under ~/.cache/minitron/bench/ and reused by later runs.
  - budget: --fraction of the teacher's non-embedding parameters. The default is 0.51, not 0.5: dropping
    15 of the 30 layers leaves 50.0003% (the final norm is not halved), just over an exact half, and the
    depth-only cut belongs in the comparison.
  - `minitron.search` with the default grid (steps of an eighth of each size, cuts up to 50%), candidates
    within 10% under the budget, spread over width-only, mixed and depth-only cuts; each is pruned from
    the same scores and scored on --heldout-blocks held-out blocks (held-out split of the same text); the
    best --top-k are distilled for --candidate-tokens tokens each (forward KL to the teacher, lr 5e-4,
    micro batch 4, same data and seed for every candidate) and scored again.

Prints the candidate table and whether short retraining changed the ranking; writes
bench/results/NAME.json (default NAME: search_half).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Timer, machine, machine_line, quiet_transformers, write_json

import minitron
from minitron.fingerprint import model_fingerprint
from minitron.loading import cache_dir
from minitron.search import SearchConfig, search
from minitron.search.tables import candidates_markdown


def load_or_compute_scores(model, tokenizer, args, log) -> tuple[minitron.ImportanceScores, str, bool]:
    """Saved scores of the same model, data and calibration size when present; else computed and saved."""
    name = f"scores-{args.model.replace(':', '-').replace('/', '-')}-{args.calib_samples}x{args.seq_len}"
    folder = cache_dir() / "bench" / name
    if (folder / "scores.json").is_file():
        scores = minitron.ImportanceScores.load(folder)
        if scores.fingerprint == model_fingerprint(model) and scores.meta.get("data") == args.data \
                and scores.meta.get("layer_loss_samples") == args.layer_loss_samples:
            log(f"reusing the scores in {folder}")
            return scores, str(folder), True
    calib = minitron.token_blocks(args.data, tokenizer, args.seq_len, args.calib_samples, split="train")
    batches = list(minitron.iter_batches(calib, args.calib_batch_size))
    layer_batches = -(-args.layer_loss_samples // args.calib_batch_size)
    scores = minitron.estimate_importance(model, batches, layer_loss_batches=layer_batches, progress=False,
                                          meta={"model": args.model, "data": args.data, "seq_len": args.seq_len})
    scores.meta["layer_loss_samples"] = args.layer_loss_samples
    scores.save(folder)
    return scores, str(folder), False


def report(payload: dict) -> None:
    result = payload["result"]
    print(candidates_markdown(result))
    if not any(r["loss_distilled"] is not None for r in result["candidates"]):
        return
    winner = result["winner"]
    best_pruned = min(result["candidates"], key=lambda r: r["loss_pruned"])
    print(f"Winner: {winner['target']} (loss {winner['loss_distilled']:.4f} after "
          f"{payload['settings']['candidate_tokens']:,} tokens); best right after pruning: {best_pruned['target']}"
          f"{'' if result['winner_changed'] else ' (the same)'}.")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:smollm2-135m")
    parser.add_argument("--data", default="builtin:python-docs")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--calib-batch-size", type=int, default=8)
    parser.add_argument("--layer-loss-samples", type=int, default=8)
    parser.add_argument("--fraction", type=float, default=0.51, help="budget: fraction of non-embedding params")
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--candidate-tokens", type=int, default=16384)
    parser.add_argument("--heldout-blocks", type=int, default=32)
    parser.add_argument("--name", default="search_half", help="results file: bench/results/NAME.json")
    parser.add_argument("--report-only", metavar="JSON", help="only print the tables of a saved results file")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.report_only:
        payload = json.loads(Path(args.report_only).read_text())
        print(machine_line(payload["machine"]) + "\n")
        report(payload)
        return
    quiet_transformers()
    info = machine()
    print(machine_line(info) + "\n")
    log = lambda text: print(text, file=sys.stderr, flush=True)
    settings = SearchConfig(target_params=args.fraction, budget_on="non_embedding", max_candidates=args.candidates,
                            top_k=args.top_k, candidate_tokens=args.candidate_tokens,
                            heldout_samples=args.heldout_blocks)
    with Timer() as total:
        model, tokenizer = minitron.load_model(args.model)
        with Timer() as t_scores:
            scores, scores_path, reused = load_or_compute_scores(model, tokenizer, args, log)
        log(f"scores {'reused' if reused else f'computed in {t_scores.seconds:.0f} s'}")
        heldout = minitron.token_blocks(args.data, tokenizer, args.seq_len, args.heldout_blocks, split="heldout")
        train_blocks = max(-(-args.candidate_tokens // args.seq_len), settings.candidate_batch_size)
        train = minitron.token_blocks(args.data, tokenizer, args.seq_len, train_blocks, split="train")
        result = search(model, tokenizer, scores, settings, heldout=heldout, train=train, progress=True)
    payload = {"machine": info, "settings": vars(args) | {"candidate_lr": settings.candidate_lr,
                                                         "candidate_batch_size": settings.candidate_batch_size},
               "scores": {"path": scores_path, "reused": reused, "seconds": None if reused else t_scores.seconds},
               "result": result.to_dict(), "total_seconds": total.seconds}
    path = write_json(args.name, payload)
    report(payload)
    print(f"\n(total {total.seconds:.0f} s; search {result.seconds:.0f} s; results in {path})")


if __name__ == "__main__":
    main()
