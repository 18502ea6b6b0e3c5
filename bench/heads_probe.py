"""Why does activation importance lose to random on the heads target? A few alternative head scores.

Usage:
    python bench/heads_probe.py                       # 64 x 256 calibration, 32 x 256 held-out, as criteria.py
    python bench/heads_probe.py --calib-samples 16 --heldout-blocks 8   # quick run

Target {"num_attention_heads": 6} keeps the 3 KV groups and 2 of the 3 query heads of each group, in
every layer, so only the head scores matter. One hooked forward pass (logits_to_keep=1) over the
calibration blocks computes, per query head, from the input of o_proj (per-token head outputs a_h):
  - act (minitron's default, reproduced): ||a_h|| per token, mean over the sequence, L2 over samples
  - act, skip first 4: the same without the first 4 positions of each block (attention-sink tokens)
  - contribution: norm of W_o[:, h] a_h per token (what the head adds to the residual stream), same reductions
and, as sanity checks, the inverted default score (keep the lowest) and seeded random scores. Each is
pruned and scored on held-out blocks. Writes bench/results/heads_probe.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Timer, machine, machine_line, markdown_table, quiet_transformers, write_json  # noqa: E402

import minitron  # noqa: E402

TARGET = {"num_attention_heads": 6}


@torch.inference_mode()
def head_scores(model, batches, skip: int) -> dict[str, list[torch.Tensor]]:
    config = model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    layers = model.model.layers
    sums = {k: [torch.zeros(heads, dtype=torch.float64) for _ in layers] for k in ("act", "skip", "contrib")}
    handles = []

    def hook_for(index, o_proj):
        weight = o_proj.weight.view(o_proj.weight.shape[0], heads, head_dim)  # (hidden, heads, head_dim)

        def hook(module, args):
            x = args[0].float()
            b, s, _ = x.shape
            per_head = x.view(b, s, heads, head_dim)
            norms = torch.linalg.vector_norm(per_head, dim=-1)  # (b, s, heads)
            contrib = torch.linalg.vector_norm(torch.einsum("bshd,ohd->bsho", per_head, weight.float()), dim=-1)
            for key, value in (("act", norms.mean(1)), ("skip", norms[:, skip:].mean(1)), ("contrib", contrib.mean(1))):
                sums[key][index] += (value.double() ** 2).sum(0)  # L2 over samples: sum of squares
        return hook

    for index, layer in enumerate(layers):
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(hook_for(index, layer.self_attn.o_proj)))
    try:
        for batch in batches:
            model(batch, use_cache=False, logits_to_keep=1)
    finally:
        for handle in handles:
            handle.remove()
    return {k: [v.sqrt().float() for v in values] for k, values in sums.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:smollm2-135m")
    parser.add_argument("--data", default="builtin:python-docs")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--heldout-blocks", type=int, default=32)
    parser.add_argument("--skip", type=int, default=4)
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    args = parser.parse_args()
    quiet_transformers()
    info = machine()
    print(machine_line(info) + "\n")
    with Timer() as total:
        model, tokenizer = minitron.load_model(args.model)
        calib = minitron.token_blocks(args.data, tokenizer, args.seq_len, args.calib_samples, split="train")
        heldout = minitron.token_blocks(args.data, tokenizer, args.seq_len, args.heldout_blocks, split="heldout")
        scores = head_scores(model, list(minitron.iter_batches(calib, 4)), args.skip)
        base = minitron.magnitude_scores(model)  # a container with this model's fingerprint; only heads matter
        variants = {"act (default, reproduced)": scores["act"], f"act, skip first {args.skip}": scores["skip"],
                    "contribution (norm of W_o a_h)": scores["contrib"], "act inverted (keep lowest)": [-h for h in scores["act"]]}
        variants |= {f"random seed {s}": minitron.random_scores(model, s).heads for s in args.seeds}
        rows = []
        for label, heads in variants.items():
            pruned = minitron.prune(model, dataclasses.replace(base, heads=heads), TARGET)
            result = minitron.evaluate_loss(pruned, heldout, batch_size=8)
            rows.append({"scores": label, **result, "params": minitron.count_parameters(pruned).total})
            print(f"{label:<28} loss {result['loss']:.4f}", file=sys.stderr, flush=True)
            del pruned
        agree = {k: sum(int(torch.equal(torch.sort(torch.topk(a.view(3, -1), 2, dim=1).indices).values,
                                        torch.sort(torch.topk(b.view(3, -1), 2, dim=1).indices).values))
                        for a, b in zip(scores["act"], scores[k])) for k in ("skip", "contrib")}
    print(f"### Heads target {TARGET}: alternative head scores ({args.calib_samples} x {args.seq_len} calibration, "
          f"{args.heldout_blocks} x {args.seq_len} held-out)\n")
    print(markdown_table(["head scores", "params (total)", "held-out loss", "perplexity"],
                         [[r["scores"], r["params"], r["loss"], r["perplexity"]] for r in rows]))
    print(f"\nLayers (of {len(scores['act'])}) where the kept heads equal the default's: "
          f"skip-first-{args.skip} {agree['skip']}, contribution {agree['contrib']}")
    path = write_json("heads_probe", {"machine": info, "args": vars(args), "target": TARGET, "rows": rows,
                                      "layers_same_as_default": agree, "total_seconds": total.seconds,
                                      "head_scores": {k: [v.tolist() for v in vs] for k, vs in scores.items()}})
    print(f"\n(total {total.seconds:.0f} s; results in {path})")


if __name__ == "__main__":
    main()
