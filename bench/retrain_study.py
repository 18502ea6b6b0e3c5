"""Pruning studies after equal retraining: width vs depth, retraining losses, importance criteria, calibration size.

Usage:
    python bench/retrain_study.py width-vs-depth     # width (hidden 432, MLP 864) vs depth (15 layers), 2 seeds
    python bench/retrain_study.py losses             # KD vs CE vs KD+CE (width); logit vs logit+hidden (30 -> 10 layers)
    python bench/retrain_study.py criteria           # 9 aggregation pairs, magnitude, random, Torch-Pruning; depth metrics
    python bench/retrain_study.py criteria --no-torch-pruning      # without the Torch-Pruning rows
    python bench/retrain_study.py calibration        # 64 / 256 / 1024 calibration samples, loss right after pruning
    python bench/retrain_study.py calibration --steps 15           # ... and after 15 retraining steps
    python bench/retrain_study.py losses --steps 30 --seeds 0,1,2  # any budget / seeds; results keyed by settings
    # micro smoke test (minutes):
    python bench/retrain_study.py width-vs-depth --steps 1 --micro-batch 2 --seq-len 64 --eval-blocks 2 \
        --calib-samples 4 --calib-seq-len 64 --layer-loss-batches 1 --seeds 0 --name smoke

Shared by every study: teacher builtin:smollm2-135m (fp32, CPU); importance computed once on
builtin:python-docs (train split; 64 x 256 tokens, mean over the sequence, L2 over the batch, batch 4,
LM-loss layer scores on the first 2 batches) and cached in bench/results/cache/ keyed by its settings
and the importance code; retraining on builtin:python-docstrings (train split); evaluation on held-out
builtin:python-topics (language reference: a different kind of text) and held-out python-docstrings.
Within a study every retraining run has the same budget: --steps x --micro-batch x --seq-len tokens,
`minitron.distill.loop.distill`, AdamW, peak lr --lr with a tenth warm-up and cosine decay, fp32.
A seed draws that run's training blocks from a pool twice the size (every row of one seed sees the
same blocks) and seeds the run; tables give mean ± standard deviation over seeds, and a gap to the
best row is flagged "closer than the spread between seeds" when it is smaller than the larger of the
two standard deviations. Results go to bench/results/retrain_<study>.json after every run; a re-run
with the same settings skips the finished runs and re-prints the tables (each run is keyed by its
settings and by hashes of minitron/importance, prune, eval and distill: a code change reruns what it affects).

Default budgets (arithmetic at ~100 training tokens/s with a teacher forward, ~400 tokens/s forward
only, on 2 idle cores; 16 held-out blocks x 256 per eval set, ~10-20 s per evaluation):
  width-vs-depth  30 steps x 4 x 256 = 30,720 tokens/run (~5 min); 2 rows x 2 seeds = 4 runs ~21 min,
                  + importance with LM-loss layer scores ~3.5 min once (cached), evals ~2 min -> ~27 min
  losses          15 steps (15,360 tokens, ~2.6 min/run, CE ~1.7); 5 rows x 2 seeds = 10 runs ~24 min,
                  + evals ~2.5 min (+3.5 min importance if not cached yet)                -> ~27 min
  criteria        6 steps (6,144 tokens, ~1 min/run); 13 width + 3 depth rows x 1 seed = 16 runs ~16.5 min,
                  + 8 more calibrations ~5.5 min, Torch-Pruning ~2 min, 32 evals ~6.5 min -> ~31 min
                  (--seeds 0,1 adds ~23 min: random scores and training blocks then vary by seed)
  calibration     importance on 2 x (64 + 256) + 1,024 samples of 256 tokens ~18 min, no retraining
                  (-> ~20 min); --steps 15 adds 3 sizes x 2 seeds x ~2.8 min                 -> ~37 min
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, machine_line, markdown_table, quiet_transformers
from retrain_common import (
    DEPTH,
    TEACHER,
    WIDTH,
    RunStore,
    calib_blocks,
    calib_settings,
    code_hash,
    compare_to_best,
    digest,
    eval_sets,
    evaluate,
    fmt_mean_sd,
    log,
    retrain,
    scores_for,
    seed_blocks,
    train_pool,
)

STUDIES = ("width-vs-depth", "losses", "criteria", "calibration")
DEFAULT_STEPS = {"width-vs-depth": 30, "losses": 15, "criteria": 6, "calibration": 0}
DEFAULT_SEEDS = {"width-vs-depth": "0,1", "losses": "0,1", "criteria": "0", "calibration": "0,1"}
REDUCTIONS = ("mean", "l2", "var")
KD = {"loss": "forward_kl"}


@dataclass
class Row:
    label: str
    group: str
    ident: Callable[[int], dict]  # seed -> JSON identity of the pruned model
    build: Callable[[int], object]  # seed -> pruned model
    train: dict = field(default_factory=lambda: dict(KD))


class Context:
    def __init__(self, args) -> None:
        from minitron import load_model
        self.args = args
        self.teacher, self.tok = load_model(TEACHER)
        self.sets = eval_sets(self.tok, args.seq_len, args.eval_blocks)
        # The code hashes make a re-run recompute what a change to pruning / evaluation / training affects.
        self.eval_ident = {"seq_len": args.seq_len, "blocks": {k: len(v) for k, v in self.sets.items()},
                           "batch": args.eval_batch, "code": code_hash("prune", "eval")}
        self.needed = args.steps * args.micro_batch
        self.pool = train_pool(self.tok, args.seq_len, self.needed, 2) if args.steps else None
        self.train_ident = {"steps": args.steps, "micro_batch": args.micro_batch, "seq_len": args.seq_len,
                            "lr": args.lr, "pool": None if self.pool is None else len(self.pool),
                            "code": code_hash("distill")}
        self._scores: dict = {}
        self._last: tuple = (None, None)

    def calib(self, samples=None, **kwargs) -> dict:
        a = self.args
        return calib_settings(samples or a.calib_samples, seq_len=a.calib_seq_len, batch_size=a.calib_batch,
                              **kwargs)

    def default_calib(self) -> dict:
        return self.calib(layer_loss_batches=self.args.layer_loss_batches)

    def scores(self, settings: dict):
        key = digest(settings)
        if key not in self._scores:
            self._scores[key] = scores_for(self.teacher, self.tok, settings)
        return self._scores[key]

    def pruned(self, ident: dict, row: Row, seed: int):
        """One pruned model kept in memory: rows and seeds that share an identity reuse it."""
        if self._last[0] != json.dumps(ident, sort_keys=True):
            self._last = (None, None)  # free the previous model before building the next
            self._last = (json.dumps(ident, sort_keys=True), row.build(seed))
        return self._last[1]


# ------------------------------------------------------------------------------------------- studies

def activation_row(ctx, label, group, settings, target, depth_metric=None, train=None) -> Row:
    from minitron import prune
    ident = {"criterion": "activation", "scores": digest(settings), "target": target, "depth_metric": depth_metric}
    return Row(label, group, lambda s: ident,
               lambda s: prune(ctx.teacher, ctx.scores(settings), target, depth_metric=depth_metric),
               dict(train or KD))


def width_vs_depth(ctx) -> list[Row]:
    default = ctx.default_calib()
    return [activation_row(ctx, "width (hidden 432, MLP 864)", "same params", default, WIDTH),
            activation_row(ctx, "depth (15 layers, LM-loss)", "same params", default, DEPTH, "lm_loss")]


def losses(ctx) -> list[Row]:
    default, deep = ctx.default_calib(), {"num_hidden_layers": ctx.args.deep_layers}
    w = ctx.args.ce_weight
    return [activation_row(ctx, "width: logit-only KD", "width", default, WIDTH),
            activation_row(ctx, "width: CE (no teacher)", "width", default, WIDTH, train={"loss": "ce"}),
            activation_row(ctx, f"width: KD + {w:g} CE", "width", default, WIDTH,
                           train={"loss": "forward_kl", "ce_weight": w}),
            activation_row(ctx, f"depth {ctx.args.deep_layers}: logit-only KD", "depth", default, deep, "lm_loss"),
            activation_row(ctx, f"depth {ctx.args.deep_layers}: logit + hidden cosine", "depth", default, deep,
                           "lm_loss", train={"loss": "forward_kl", "hidden_loss": "cosine"})]


def criteria(ctx) -> list[Row]:
    from minitron import magnitude_scores, prune, random_scores
    rows = []
    for seq_r, batch_r in itertools.product(REDUCTIONS, REDUCTIONS):
        default = (seq_r, batch_r) == ("mean", "l2")
        settings = ctx.default_calib() if default else ctx.calib(seq_reduction=seq_r, batch_reduction=batch_r)
        rows.append(activation_row(ctx, f"activation seq={seq_r} batch={batch_r}" + (" (default)" if default else ""),
                                   "width", settings, WIDTH))
    rows.append(Row("magnitude (weight norms)", "width", lambda s: {"criterion": "magnitude", "target": WIDTH},
                    lambda s: prune(ctx.teacher, magnitude_scores(ctx.teacher), WIDTH)))
    rows.append(Row("random (seeded by the run's seed)", "width",
                    lambda s: {"criterion": "random", "seed": s, "target": WIDTH},
                    lambda s: prune(ctx.teacher, random_scores(ctx.teacher, s), WIDTH)))
    if ctx.args.torch_pruning:
        rows += torch_pruning_rows(ctx)
    default = ctx.default_calib()
    rows.append(activation_row(ctx, "depth: Block Influence", "depth", default, DEPTH, "block_influence"))
    rows.append(activation_row(ctx, "depth: LM-loss", "depth", default, DEPTH, "lm_loss"))
    layers = ctx.teacher.config.num_hidden_layers
    drop = list(range(layers - 1 - (layers - DEPTH["num_hidden_layers"]), layers - 1))
    rows.append(Row(f"depth: contiguous block {drop[0]}-{drop[-1]} (last before the final layer)", "depth",
                    lambda s: {"criterion": "contiguous", "drop_layers": drop},
                    lambda s: prune(ctx.teacher, magnitude_scores(ctx.teacher), {"drop_layers": drop})))
    return rows


def torch_pruning_rows(ctx) -> list[Row]:
    import tp_baseline
    problem = tp_baseline.available()
    if problem:
        print(f"Torch-Pruning rows skipped: {problem}", flush=True)
        return []
    import torch_pruning

    def build(criterion):
        from minitron import iter_batches, load_model
        settings = ctx.default_calib()
        batches = list(iter_batches(calib_blocks(ctx.tok, settings), settings["batch_size"]))
        eager, _ = load_model(TEACHER, attn_implementation="eager")
        started = time.perf_counter()
        model, kept = tp_baseline.prune_with_torch_pruning(eager, batches, criterion, WIDTH)
        seconds = time.perf_counter() - started
        diff = tp_baseline.verify(model, ctx.teacher, kept, WIDTH, ctx.sets["python-topics"][:1])
        log(f"Torch-Pruning {criterion}: {seconds:.0f} s; max |logit diff| vs minitron.prune on the same channels {diff:.2e}")
        model.bench_info = {"seconds": seconds, "max_logit_diff_vs_minitron_prune": diff}
        return model

    return [Row(f"Torch-Pruning {c} importance", "width",
                lambda s, c=c: {"criterion": f"torch-pruning {c}", "version": torch_pruning.__version__,
                                "calib": digest(ctx.default_calib()), "target": WIDTH},
                lambda s, c=c: build(c)) for c in ("activation", "magnitude")]


def calibration(ctx) -> list[Row]:
    from minitron import prune
    rows = []
    for n in ctx.args.calib_sizes:
        def settings(s, n=n):
            return ctx.calib(n, pool=ctx.args.calib_pool, subset_seed=s)
        rows.append(Row(f"{n} samples" + (" (whole pool: same for every seed)" if n >= ctx.args.calib_pool else ""),
                        "calibration", lambda s, f=settings: {"criterion": "activation", "scores": digest(f(s)),
                                                              "target": WIDTH},
                        lambda s, f=settings: prune(ctx.teacher, ctx.scores(f(s)), WIDTH)))
    return rows


# -------------------------------------------------------------------------------------------- runner

def run_rows(ctx, store: RunStore, rows: list[Row]) -> list[dict]:
    from minitron import count_parameters
    a = ctx.args
    summary = []
    for row in rows:
        out = {"label": row.label, "group": row.group, "pruned": {}, "retrained": {}, "notes": set(), "seconds": []}
        seen = set()
        for seed in a.seeds:
            ident = row.ident(seed)
            pkey = digest({"pruned": ident, "eval": ctx.eval_ident})
            record = store.get(pkey)
            if record is None:
                model = ctx.pruned(ident, row, seed)
                record = {"label": row.label, "ident": ident, "params": count_parameters(model).as_dict(),
                          "eval": evaluate(model, ctx.sets, a.eval_batch),
                          "kept_layers": list(getattr(model, "minitron_kept_layers", []) or []),
                          "info": getattr(model, "bench_info", None)}
                store.put(pkey, record)
                log(f"{row.label}: pruned " + ", ".join(f"{k} {v['loss']:.3f}" for k, v in record["eval"].items()))
            out["params"] = record["params"]
            out.setdefault("pruned_keys", [])
            if pkey not in seen:
                seen.add(pkey)
                out["pruned_keys"].append(pkey)
                for name, result in record["eval"].items():
                    out["pruned"].setdefault(name, []).append(result["loss"])
            out["notes"] |= notes_of(ctx, record)
            if not a.steps or not row.train:
                continue
            tkey = digest({"pruned": ident, "eval": ctx.eval_ident, "train": {**ctx.train_ident, **row.train},
                           "seed": seed})
            run = store.get(tkey)
            if run is None:
                model = ctx.pruned(ident, row, seed)
                blocks = seed_blocks(ctx.pool, ctx.needed, seed)
                student, curve, seconds = retrain(model, ctx.teacher, blocks, ctx.sets["python-docstrings"][:1],
                                                  steps=a.steps, micro_batch=a.micro_batch, seq_len=a.seq_len,
                                                  lr=a.lr, seed=seed, kept_layers=record["kept_layers"], **row.train)
                run = {"label": row.label, "ident": ident, "seed": seed, "train": {**ctx.train_ident, **row.train},
                       "tokens": ctx.needed * a.seq_len, "seconds": seconds,
                       "eval": evaluate(student, ctx.sets, a.eval_batch), "curve": curve}
                store.put(tkey, run)
                del student
                log(f"{row.label} seed {seed}: retrained " + ", ".join(f"{k} {v['loss']:.3f}" for k, v in run["eval"].items())
                    + f" ({seconds:.0f} s, train loss {curve[0]['loss']:.3f} -> {curve[-1]['loss']:.3f})")
            for name, result in run["eval"].items():
                out["retrained"].setdefault(name, []).append(result["loss"])
            out["seconds"].append(run["seconds"])
        out["notes"] = sorted(out["notes"])
        if len({json.dumps(row.ident(s), sort_keys=True) for s in (0, 1)}) == 1:  # the seed only drives training
            out["single_note"] = {"pruned": "pruning alone does not depend on the seed"}
        summary.append(out)
    return summary


def notes_of(ctx, record: dict) -> set:
    notes = set()
    layers = ctx.teacher.config.num_hidden_layers
    kept = record.get("kept_layers") or []
    if kept and len(kept) < layers:
        notes.add("dropped " + ",".join(str(i) for i in range(layers) if i not in kept))
    info = record.get("info") or {}
    if "max_logit_diff_vs_minitron_prune" in info:
        notes.add(f"same logits as minitron.prune on its channels (max diff {info['max_logit_diff_vs_minitron_prune']:.1e})")
    return notes


def report(ctx, store: RunStore, summary: list[dict], teacher_eval: dict) -> None:
    a, names = ctx.args, list(ctx.sets)
    seeds = ",".join(map(str, a.seeds))
    budget = (f"and after {a.steps} x {a.micro_batch} x {a.seq_len} = {a.steps * a.micro_batch * a.seq_len:,} "
              f"retraining tokens (seeds {seeds}; mean ± sd over seeds)" if a.steps else
              f"(no retraining; seeds {seeds}; mean ± sd over seeds where the seed changes the pruned model)")
    print(f"\n### {a.study}: held-out loss right after pruning {budget}\n")
    headers = ["row", "params (total)", "non-embedding"] + [f"pruned: {n}" for n in names] + \
              ([f"retrained: {n}" for n in names] if a.steps else []) + ["notes"]
    rows = [["teacher (unpruned)", ctx.teacher_params["total"], ctx.teacher_params["non_embedding"]]
            + [f"{teacher_eval[n]['loss']:.3f}" for n in names] + (["-"] * len(names) if a.steps else []) + [""]]
    for r in summary:
        rows.append([r["label"], r["params"]["total"], r["params"]["non_embedding"]]
                    + [fmt_mean_sd(r["pruned"].get(n, [])) for n in names]
                    + ([fmt_mean_sd(r["retrained"].get(n, [])) for n in names] if a.steps else [])
                    + ["; ".join(r["notes"])])
    table = markdown_table(headers, rows)
    print(table)
    lines = []
    for group in dict.fromkeys(r["group"] for r in summary):
        members = [r for r in summary if r["group"] == group]
        # Rows that share one pruned model (they differ only in how they retrain) are compared once when pruned.
        distinct = list({tuple(r["pruned_keys"]): r for r in reversed(members)}.values())[::-1]
        for field_name in ("pruned", "retrained") if a.steps else ("pruned",):
            for name in names:
                lines += [f"[{group}, {field_name}] " + line
                          for line in compare_to_best(distinct if field_name == "pruned" else members, field_name, name)]
    if lines:
        print("\nGaps to the best row of each group (held-out loss):\n")
        print("\n".join(f"- {line}" for line in lines))
    if a.study == "width-vs-depth" and a.steps and len(summary) == 2:
        print("\n" + ranking_flip(summary, names))
    store.payload.update({"summary": summary, "table": table, "comparisons": lines, "teacher": teacher_eval})
    print(f"\nwrote {store.save()}")


def ranking_flip(summary: list[dict], names: list[str]) -> str:
    width, depth = summary[0], summary[1]
    out = []
    for n in names:
        before = "width" if sum(width["pruned"][n]) / len(width["pruned"][n]) < sum(depth["pruned"][n]) / len(depth["pruned"][n]) else "depth"
        after = ("width" if sum(width["retrained"][n]) / len(width["retrained"][n])
                 < sum(depth["retrained"][n]) / len(depth["retrained"][n]) else "depth")
        out.append(f"{n}: lower loss right after pruning: {before}; after retraining: {after}")
    return "Seeds' claim (depth lower right after pruning, width lower after retraining): " + "; ".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=STUDIES)
    parser.add_argument("--steps", type=int, help="retraining steps per run (default: per study, see above)")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per training and evaluation block")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seeds", help="comma-separated (default: 0,1; criteria: 0)")
    parser.add_argument("--eval-blocks", type=int, default=16, help="held-out blocks per eval set")
    parser.add_argument("--eval-batch", type=int, default=4)
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--calib-seq-len", type=int, default=256)
    parser.add_argument("--calib-batch", type=int, default=4)
    parser.add_argument("--layer-loss-batches", type=int, default=2)
    parser.add_argument("--ce-weight", type=float, default=0.5, help="losses: CE weight of the KD + CE row")
    parser.add_argument("--deep-layers", type=int, default=10, help="losses: layers kept by the strong depth cut")
    parser.add_argument("--no-torch-pruning", dest="torch_pruning", action="store_false",
                        help="criteria: leave out the Torch-Pruning rows")
    parser.add_argument("--calib-sizes", default="64,256,1024", help="calibration: sample counts")
    parser.add_argument("--calib-pool", type=int, default=1024, help="calibration: blocks the samples are drawn from")
    parser.add_argument("--rows", help="only the rows whose label contains one of these comma-separated strings "
                        "(e.g. --rows Torch-Pruning,magnitude); the results file keeps every row run so far")
    parser.add_argument("--name", help="results file bench/results/NAME.json (default retrain_<study>)")
    args = parser.parse_args()
    args.steps = DEFAULT_STEPS[args.study] if args.steps is None else args.steps
    args.seeds = [int(s) for s in (args.seeds or DEFAULT_SEEDS[args.study]).split(",")]
    args.calib_sizes = [int(s) for s in args.calib_sizes.split(",")]
    args.name = args.name or "retrain_" + args.study.replace("-", "_")
    quiet_transformers()
    warnings.filterwarnings("ignore")
    info = machine()
    print(machine_line(info), flush=True)
    from minitron import count_parameters
    ctx = Context(args)
    ctx.teacher_params = count_parameters(ctx.teacher).as_dict()
    store = RunStore(args.name, args.study, info, {k: v for k, v in vars(args).items()})
    tkey = digest({"teacher": TEACHER, "eval": ctx.eval_ident})
    if store.get(tkey) is None:
        store.put(tkey, {"label": "teacher", "eval": evaluate(ctx.teacher, ctx.sets, args.eval_batch)})
    rows = {"width-vs-depth": width_vs_depth, "losses": losses, "criteria": criteria,
            "calibration": calibration}[args.study](ctx)
    if args.rows:
        wanted = [w.strip().lower() for w in args.rows.split(",") if w.strip()]
        rows = [r for r in rows if any(w in r.label.lower() for w in wanted)]
    runs = len(rows) * len(args.seeds) if args.steps else 0
    print(f"{len(rows)} rows x seeds {args.seeds}: {runs} retraining runs of {args.steps * args.micro_batch * args.seq_len:,} "
          f"tokens; eval " + ", ".join(f"{n} {len(b)} x {args.seq_len}" for n, b in ctx.sets.items()), flush=True)
    started = time.perf_counter()
    summary = run_rows(ctx, store, rows)
    store.payload["seconds_this_invocation"] = time.perf_counter() - started
    report(ctx, store, summary, {k: v for k, v in store.get(tkey)["eval"].items()})


if __name__ == "__main__":
    main()
