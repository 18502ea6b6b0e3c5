"""Expert pruning on a real MoE teacher made here: router-weighted expert output (REAP) vs routing frequency vs random.

Usage:
    python bench/moe_experts.py                      # defaults below: a few minutes on 2 CPU cores
    python bench/moe_experts.py --kd-steps 0         # pruning only

The teacher (no MoE checkpoint can be downloaded here) is built from the built-in SmolLM2-135M by
"MoEfication": each layer's 1536 MLP neurons are split into 8 experts of 192 by balanced k-means on the
neurons' gate-projection rows (neurons that read the same directions go together), stored as a Mixtral
(same attention, norms and embeddings; 4 experts per token). Each expert's down projection is scaled by
4 so that four equally weighted experts add up as in the dense MLP (with all 8 experts per token and a
zero router the Mixtral reproduces the dense model exactly; checked on every run). Only the routers are trained, layer by
layer, on the dense model's MLP inputs: the loss is the relative error of the 2-expert output against the
dense MLP output plus a cross-entropy pulling the router towards the experts with the largest outputs.

Then the teacher's experts are halved (8 -> 4 per layer; every token then uses the 4 kept) by each expert metric of one
calibration pass, and the held-out loss is measured right after pruning and after the same short
logit distillation from the teacher. Writes bench/results/moe_experts.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Timer, machine, machine_line, markdown_table, quiet_transformers, spread, write_json  # noqa: E402

import minitron  # noqa: E402
from minitron.config import DistillConfig  # noqa: E402
from transformers import AutoModelForCausalLM, MixtralConfig  # noqa: E402


def balanced_kmeans(rows: torch.Tensor, groups: int, iterations: int = 8, seed: int = 0) -> torch.Tensor:
    """Group index of every row, `rows / groups` rows per group, by cosine similarity to the centroids."""
    rows = F.normalize(rows.float(), dim=1)
    size = rows.shape[0] // groups
    generator = torch.Generator().manual_seed(seed)
    centroids = rows[torch.randperm(rows.shape[0], generator=generator)[:groups]]
    for _ in range(iterations):
        similarity = rows @ centroids.T  # (rows, groups)
        assignment = torch.full((rows.shape[0],), -1)
        filled = torch.zeros(groups, dtype=torch.long)
        for flat in torch.argsort(similarity.flatten(), descending=True).tolist():  # best pairs first, capped
            row, group = divmod(flat, groups)
            if assignment[row] < 0 and filled[group] < size:
                assignment[row], filled[group] = group, filled[group] + 1
        centroids = F.normalize(torch.stack([rows[assignment == g].mean(0) for g in range(groups)]), dim=1)
    return assignment


@torch.no_grad()
def moefy(dense, num_experts: int, per_token: int):
    """A Mixtral with the dense model's weights, each MLP split into `num_experts` experts (router zero)."""
    config = dense.config
    width = config.intermediate_size // num_experts
    moe_config = MixtralConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=width,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, head_dim=config.head_dim, hidden_act=config.hidden_act,
        max_position_embeddings=config.max_position_embeddings, rms_norm_eps=config.rms_norm_eps,
        rope_parameters=config.rope_parameters, tie_word_embeddings=config.tie_word_embeddings,
        num_local_experts=num_experts, num_experts_per_tok=per_token, sliding_window=None,
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id)
    moe = AutoModelForCausalLM.from_config(moe_config)
    state = {k: v for k, v in dense.state_dict().items() if ".mlp." not in k}
    groups = {}
    for index, layer in enumerate(dense.model.layers):
        mlp = layer.mlp
        groups[index] = order = torch.argsort(balanced_kmeans(mlp.gate_proj.weight, num_experts), stable=True)
        gate, up = mlp.gate_proj.weight[order], mlp.up_proj.weight[order]
        down = mlp.down_proj.weight[:, order] * per_token
        prefix = f"model.layers.{index}.mlp."
        state[prefix + "experts.gate_up_proj"] = torch.stack(
            [torch.cat([gate[e * width:(e + 1) * width], up[e * width:(e + 1) * width]]) for e in range(num_experts)])
        state[prefix + "experts.down_proj"] = torch.stack(
            [down[:, e * width:(e + 1) * width] for e in range(num_experts)])
        state[prefix + "gate.weight"] = torch.zeros(num_experts, config.hidden_size)
    missing, unexpected = moe.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    moe.tie_weights()
    return moe.eval()


@torch.no_grad()
def mlp_inputs(dense, blocks: torch.Tensor, batch_size: int = 8) -> list[torch.Tensor]:
    """Per layer, the dense model's MLP inputs (tokens, hidden) on `blocks`."""
    captured = [[] for _ in dense.model.layers]
    handles = [layer.mlp.register_forward_pre_hook(lambda m, args, i=i: captured[i].append(args[0].flatten(0, 1)))
               for i, layer in enumerate(dense.model.layers)]
    for start in range(0, len(blocks), batch_size):
        dense(input_ids=blocks[start:start + batch_size], use_cache=False, logits_to_keep=1)
    for handle in handles:
        handle.remove()
    return [torch.cat(chunks) for chunks in captured]


def train_router_(moe_layer, dense_mlp, inputs: torch.Tensor, steps: int, lr: float) -> float:
    """Fit one router to its dense MLP's outputs; returns the final relative error of the layer output."""
    experts, router = moe_layer.mlp.experts, moe_layer.mlp.gate
    num_experts, per_token = router.weight.shape[0], moe_layer.mlp.top_k
    with torch.no_grad():
        target = dense_mlp(inputs)
        outputs = torch.stack([F.linear(experts.act_fn(g) * u, experts.down_proj[e])
                               for e in range(num_experts)
                               for g, u in [F.linear(inputs, experts.gate_up_proj[e]).chunk(2, dim=-1)]], dim=1)
        norms = outputs.norm(dim=-1)  # (tokens, experts); the best experts are the oracle routing
        oracle = torch.zeros_like(norms).scatter_(1, norms.topk(per_token, dim=1).indices, 1.0 / per_token)
    weight = router.weight.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([weight], lr=lr)
    for _ in range(steps):
        logits = inputs @ weight.T
        top, index = torch.softmax(logits, dim=-1).topk(per_token, dim=-1)
        mixed = ((top / top.sum(-1, keepdim=True)).unsqueeze(-1) * outputs.gather(
            1, index.unsqueeze(-1).expand(-1, -1, outputs.shape[-1]))).sum(1) * 1.0
        error = (mixed - target).pow(2).sum() / target.pow(2).sum()
        loss = error + F.cross_entropy(logits, oracle)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        router.weight.copy_(weight)
    return float(error.detach())


def short_kd(student, teacher, train_blocks, heldout, steps: int, lr: float, micro_batch: int) -> float:
    config = DistillConfig(seq_len=train_blocks.shape[1], micro_batch_size=micro_batch, steps=steps, lr=lr,
                           warmup_steps=max(1, steps // 10), eval_every=0, eval_samples=len(heldout), save_every=0,
                           loss="forward_kl", precision="fp32", seed=0)
    student = minitron.distill(student.requires_grad_(True), teacher, train_blocks, heldout, config)
    return minitron.evaluate_loss(student.eval(), heldout, batch_size=8)["loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--router-blocks", type=int, default=32)
    parser.add_argument("--router-steps", type=int, default=150)
    parser.add_argument("--calib-blocks", type=int, default=16)
    parser.add_argument("--heldout-blocks", type=int, default=16)
    parser.add_argument("--kd-steps", type=int, default=12)
    parser.add_argument("--kd-lr", type=float, default=1e-4)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--keep-experts", type=int, default=4)
    parser.add_argument("--per-token", type=int, default=4)
    parser.add_argument("--teacher-dir", default=None, help="save the built teacher here, or reuse it if present")
    parser.add_argument("--random-seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0, 1, 2])
    args = parser.parse_args()
    quiet_transformers()
    info = machine()
    print(machine_line(info) + "\n")
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    with Timer() as total:
        dense, tokenizer = minitron.load_model("builtin:smollm2-135m", dtype="float32")
        data = "builtin:python-docs"
        train = minitron.token_blocks(data, tokenizer, args.seq_len, args.router_blocks + args.calib_blocks,
                                      split="train")
        router_blocks, calib = train[: args.router_blocks], train[args.router_blocks:]
        heldout = minitron.token_blocks(data, tokenizer, args.seq_len, args.heldout_blocks, split="heldout")
        dense_loss = minitron.evaluate_loss(dense, heldout, batch_size=8)["loss"]
        with Timer() as t_build:
            exact = minitron.evaluate_loss(moefy(dense, 8, per_token=8), heldout[:2], batch_size=2)["loss"]
            reference = minitron.evaluate_loss(dense, heldout[:2], batch_size=2)["loss"]
            assert abs(exact - reference) < 1e-3, (exact, reference)  # the split itself loses nothing
            teacher = moefy(dense, num_experts=8, per_token=args.per_token)
            untrained_loss = minitron.evaluate_loss(teacher, heldout, batch_size=8)["loss"]
            if args.teacher_dir and Path(args.teacher_dir, "config.json").is_file():
                teacher, errors = AutoModelForCausalLM.from_pretrained(args.teacher_dir).eval(), []
            else:
                inputs = mlp_inputs(dense, router_blocks)
                errors = [train_router_(teacher.model.layers[i], dense.model.layers[i].mlp, inputs[i],
                                        args.router_steps, lr=1e-2) for i in range(len(inputs))]
                del inputs
                if args.teacher_dir:
                    teacher.save_pretrained(args.teacher_dir)
        teacher_loss = minitron.evaluate_loss(teacher, heldout, batch_size=8)["loss"]
        log(f"dense {dense_loss:.4f}; MoE teacher {untrained_loss:.4f} with zero routers, {teacher_loss:.4f} after "
            f"router training ({t_build.seconds:.0f} s; layer output errors {errors})")
        del dense
        scores = minitron.estimate_importance(teacher, list(minitron.iter_batches(calib, 4)), progress=False)
        runs = [(metric, scores, metric) for metric in ("reap", "weighted_output", "frequency")]
        runs += [(f"random (seed {s})", minitron.random_scores(teacher, seed=s), "random") for s in args.random_seeds]
        rows = []
        for label, run_scores, metric in runs:
            with Timer() as t_run:
                pruned = minitron.prune(teacher, run_scores, {"num_experts": args.keep_experts}, expert_metric=metric)
                pruned_loss = minitron.evaluate_loss(pruned, heldout, batch_size=8)["loss"]
                kd_loss = (short_kd(pruned, teacher, calib, heldout, args.kd_steps, args.kd_lr, args.micro_batch)
                           if args.kd_steps else None)
            rows.append({"criterion": label, "loss_pruned": pruned_loss, "loss_kd": kd_loss,
                         "params": minitron.count_parameters(pruned).as_dict(), "seconds": t_run.seconds})
            log(f"{label:<18} pruned {pruned_loss:.4f}  after KD {kd_loss}")
    random_rows = [r for r in rows if r["criterion"].startswith("random")]
    summary = {"random_mean_pruned": sum(r["loss_pruned"] for r in random_rows) / len(random_rows),
               "random_sd_pruned": spread([r["loss_pruned"] for r in random_rows])}
    if args.kd_steps:
        summary["random_mean_kd"] = sum(r["loss_kd"] for r in random_rows) / len(random_rows)
    payload = {"machine": info, "args": vars(args), "dense_loss": dense_loss, "teacher_untrained_router_loss":
               untrained_loss, "teacher_loss": teacher_loss, "router_layer_errors": errors,
               "teacher_params": minitron.count_parameters(teacher).as_dict(), "rows": rows, "summary": summary,
               "frequency_share": {i: t.tolist() for i, t in scores.experts["frequency"].items()},
               "total_seconds": total.seconds}
    print(markdown_table(["criterion", "held-out loss after pruning", f"after {args.kd_steps}-step KD"],
                         [[r["criterion"], f"{r['loss_pruned']:.4f}",
                           "-" if r["loss_kd"] is None else f"{r['loss_kd']:.4f}"] for r in rows]))
    print(f"\ndense {dense_loss:.4f}, MoE teacher {teacher_loss:.4f}; written to {write_json('moe_experts', payload)}")


if __name__ == "__main__":
    main()
