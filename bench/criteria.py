"""Held-out loss right after pruning (no retraining): activation importance vs magnitude vs random.

Usage:
    python bench/criteria.py                        # 64 x 256 calibration, 32 x 256 held-out, 3 random seeds
    python bench/criteria.py --calib-samples 16 --heldout-blocks 8 --seeds 0 --sweep never   # quick run
    python bench/criteria.py --sweep always         # also sweep the seq/batch aggregations on every width target
    python bench/criteria.py --targets heads --sweep never --name criteria_heads   # one target, own results file

The built-in teacher is pruned one-shot to each target with each criterion and scored on held-out
blocks of builtin:python-docs (split "heldout"; calibration uses split "train"). Activation scores
are computed once (mean over the sequence, L2 over the batch, batch 4) with layer_loss_batches=2, so
the depth target can use either Block Influence or the LM-loss increase. Magnitude uses weight norms
(and its own layer norms for depth); random uses seeded uniform scores (mean and spread over seeds).
If activation importance does not beat both baselines on a width/head target, the nine seq/batch
aggregation pairs in {mean, l2, var} are tried on that target (--sweep auto). Writes
bench/results/criteria.json.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (Timer, machine, machine_line, markdown_table, quiet_transformers, spread,  # noqa: E402
                    write_json)

import minitron  # noqa: E402

TARGETS = [
    ("width MLP", {"intermediate_size": 768}),
    # 448 was the planned hidden size, but transformers' LlamaConfig demands hidden_size % num_attention_heads
    # == 0 (9 heads here) even with an explicit head_dim, and minitron refuses such targets: 450 = 9 x 50.
    ("width hidden+MLP", {"hidden_size": 450, "intermediate_size": 1024}),
    ("heads", {"num_attention_heads": 6}),
    ("depth", {"num_hidden_layers": 20}),
]
TARGET_KEYS = {"mlp": "width MLP", "hidden": "width hidden+MLP", "heads": "heads", "depth": "depth"}
REDUCTIONS = ("mean", "l2", "var")


def evaluate(model, scores, target, heldout, depth_metric=None, batch_size=8) -> dict:
    pruned = minitron.prune(model, scores, target, depth_metric=depth_metric)
    result = minitron.evaluate_loss(pruned, heldout, batch_size=batch_size)
    result["params"] = minitron.count_parameters(pruned).total
    kept = list(pruned.minitron_kept_layers)
    result["dropped_layers"] = [i for i in range(model.config.num_hidden_layers) if i not in kept]
    del pruned
    return result


def calibrate(model, calib, batch_size, seq_reduction="mean", batch_reduction="l2", layer_loss_batches=0):
    batches = list(minitron.iter_batches(calib, batch_size))
    return minitron.estimate_importance(model, batches, seq_reduction=seq_reduction,
                                        batch_reduction=batch_reduction,
                                        layer_loss_batches=layer_loss_batches, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:smollm2-135m")
    parser.add_argument("--data", default="builtin:python-docs")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--calib-batch-size", type=int, default=4)
    parser.add_argument("--layer-loss-batches", type=int, default=2)
    parser.add_argument("--heldout-blocks", type=int, default=32)
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    parser.add_argument("--sweep", choices=("auto", "always", "never"), default="auto")
    parser.add_argument("--targets", type=lambda s: s.split(","), default=list(TARGET_KEYS),
                        help="comma-separated subset of: " + ",".join(TARGET_KEYS))
    parser.add_argument("--name", default="criteria", help="results file: bench/results/NAME.json")
    parser.add_argument("--report-only", metavar="JSON", help="only print the tables of a saved results file")
    args = parser.parse_args()
    if args.report_only:
        payload = json.loads(Path(args.report_only).read_text())
        print(machine_line(payload["machine"]) + "\n")
        report(payload)
        print(f"\n(total of that run {payload['total_seconds']:.0f} s; tables re-printed from {args.report_only})")
        return
    quiet_transformers()
    info = machine()
    print(machine_line(info) + "\n")
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    with Timer() as total:
        model, tokenizer = minitron.load_model(args.model)
        calib = minitron.token_blocks(args.data, tokenizer, args.seq_len, args.calib_samples, split="train")
        heldout = minitron.token_blocks(args.data, tokenizer, args.seq_len, args.heldout_blocks, split="heldout")
        teacher = minitron.evaluate_loss(model, heldout, batch_size=8)
        teacher["params"] = minitron.count_parameters(model).total
        log(f"teacher loss {teacher['loss']:.4f}")
        with Timer() as t_cal:
            layer_loss = args.layer_loss_batches if "depth" in args.targets else 0
            activation = calibrate(model, calib, args.calib_batch_size, layer_loss_batches=layer_loss)
        log(f"calibration {t_cal.seconds:.0f} s")
        magnitude = minitron.magnitude_scores(model)
        randoms = {seed: minitron.random_scores(model, seed) for seed in args.seeds}
        results = []  # one dict per (target, criterion)
        targets = [(n, t) for n, t in TARGETS if any(TARGET_KEYS.get(k) == n for k in args.targets)]
        for name, target in targets:
            depth = "num_hidden_layers" in target
            runs = ([("activation (block_influence)", activation, "block_influence"),
                     ("activation (lm_loss)", activation, "lm_loss")] if depth
                    else [("activation", activation, None)])
            runs.append(("magnitude", magnitude, "magnitude" if depth else None))
            for label, scores, metric in runs:
                row = evaluate(model, scores, target, heldout, metric)
                results.append({"target": name, "target_dict": target, "criterion": label, **row})
                log(f"{name:<18} {label:<30} loss {row['loss']:.4f}")
            per_seed = [evaluate(model, randoms[s], target, heldout, "random" if depth else None) for s in args.seeds]
            losses = [r["loss"] for r in per_seed]
            results.append({"target": name, "target_dict": target, "criterion": f"random ({len(losses)} seeds)",
                            "params": per_seed[0]["params"], "loss": sum(losses) / len(losses),
                            "loss_sd": spread(losses), "perplexity": sum(r["perplexity"] for r in per_seed) / len(per_seed),
                            "perplexity_sd": spread([r["perplexity"] for r in per_seed]), "seeds": args.seeds,
                            "per_seed": per_seed})
            log(f"{name:<18} random                         loss {results[-1]['loss']:.4f}")

        verdicts = []
        for name, target in targets:
            rows = {r["criterion"]: r for r in results if r["target"] == name}
            rand = next(r for k, r in rows.items() if k.startswith("random"))
            for label, row in rows.items():
                if not label.startswith("activation"):
                    continue
                verdicts.append({"target": name, "criterion": label, "loss": row["loss"],
                                 "magnitude": rows["magnitude"]["loss"], "random_mean": rand["loss"],
                                 "random_best": min(r["loss"] for r in rand["per_seed"]),
                                 "beats_magnitude": row["loss"] < rows["magnitude"]["loss"],
                                 "beats_random": row["loss"] < rand["loss"],
                                 "beats_every_seed": row["loss"] < min(r["loss"] for r in rand["per_seed"])})

        failing = {v["target"] for v in verdicts if not (v["beats_magnitude"] and v["beats_random"])}
        sweep_targets = [(n, t) for n, t in targets if "num_hidden_layers" not in t
                         and (args.sweep == "always" or (args.sweep == "auto" and n in failing))]
        sweep = []
        if sweep_targets:
            for seq_r, batch_r in itertools.product(REDUCTIONS, REDUCTIONS):
                scores = (activation if (seq_r, batch_r) == ("mean", "l2")
                          else calibrate(model, calib, args.calib_batch_size, seq_r, batch_r))
                for name, target in sweep_targets:
                    row = evaluate(model, scores, target, heldout)
                    sweep.append({"target": name, "seq_reduction": seq_r, "batch_reduction": batch_r, **row})
                    log(f"sweep {name:<18} seq={seq_r:<4} batch={batch_r:<4} loss {row['loss']:.4f}")

    payload = {"machine": info, "args": vars(args), "teacher": teacher, "calibration_seconds": t_cal.seconds,
               "activation_meta": activation.meta, "results": results, "verdicts": verdicts, "sweep": sweep,
               "total_seconds": total.seconds}
    path = write_json(args.name, payload)
    report(payload)
    print(f"\n(total {total.seconds:.0f} s; results in {path})")


def report(payload: dict) -> None:
    """Print the tables of one run (also from a saved results file: --report-only)."""
    args, teacher, results = argparse.Namespace(**payload["args"]), payload["teacher"], payload["results"]
    verdicts, sweep = payload["verdicts"], payload["sweep"]
    print(f"### Held-out loss right after pruning ({args.heldout_blocks} x {args.seq_len} held-out tokens; "
          f"calibration {args.calib_samples} x {args.seq_len}, no retraining)\n")
    table = [["(none: teacher)", "unpruned", teacher["params"], teacher["loss"], teacher["perplexity"], ""]]
    for r in results:
        if "per_seed" in r:
            loss = f"{r['loss']:.3f} ± {r['loss_sd']:.3f}"
            ppl = f"{r['perplexity']:,.1f} ± {r['perplexity_sd']:,.1f}"
            note = "per seed: " + " / ".join(f"{s['loss']:.3f}" for s in r["per_seed"])
        else:
            loss, ppl = f"{r['loss']:.3f}", f"{r['perplexity']:,.1f}"
            note = ""
        if r["target"] == "depth":
            drops = [s["dropped_layers"] for s in r.get("per_seed", [r])]
            note = (note + "; " if note else "") + "dropped " + " / ".join("[" + ",".join(map(str, d)) + "]" for d in drops)
        table.append([f"{r['target']} {r['target_dict']}", r["criterion"], r["params"], loss, ppl, note])
    print(markdown_table(["target", "criterion", "params (total)", "held-out loss", "perplexity", "notes"], table))
    print("\n### Does activation importance beat the baselines?\n")
    print(markdown_table(
        ["target", "activation criterion", "loss", "magnitude", "random mean", "beats magnitude", "beats random mean",
         "beats every random seed"],
        [[v["target"], v["criterion"], v["loss"], v["magnitude"], v["random_mean"], "yes" if v["beats_magnitude"] else "NO",
          "yes" if v["beats_random"] else "NO", "yes" if v["beats_every_seed"] else "NO"] for v in verdicts]))
    for v in verdicts:
        if not (v["beats_magnitude"] and v["beats_random"]):
            lost = [b for b, ok in (("magnitude", v["beats_magnitude"]), ("random", v["beats_random"])) if not ok]
            print(f"\nNOTE: on target '{v['target']}', {v['criterion']} does NOT beat {' and '.join(lost)}.")
    if any(v["target"] == "depth" and not (v["beats_magnitude"] and v["beats_random"]) for v in verdicts):
        print("(Depth: Block Influence is a token mean of 1 - cos(h_in, h_out); the seq/batch aggregations do not "
              "change it, so no aggregation sweep applies there.)")
    if sweep:
        print("\n### Aggregation sweep (seq / batch reduction of activation importance)\n")
        print(markdown_table(["target", "seq reduction", "batch reduction", "held-out loss", "perplexity"],
                             [[s["target"], s["seq_reduction"], s["batch_reduction"], s["loss"], s["perplexity"]]
                              for s in sweep]))
        for name in dict.fromkeys(s["target"] for s in sweep):
            best = min((s for s in sweep if s["target"] == name), key=lambda s: s["loss"])
            rand = next(v for v in verdicts if v["target"] == name)
            print(f"\n{name}: best pair seq={best['seq_reduction']} batch={best['batch_reduction']} loss {best['loss']:.3f} "
                  f"vs magnitude {rand['magnitude']:.3f}, random mean {rand['random_mean']:.3f} (best seed "
                  f"{rand['random_best']:.3f}): {'beats' if best['loss'] < rand['random_mean'] else 'does NOT beat'} "
                  "the random mean")


if __name__ == "__main__":
    main()
