"""Mamba-2 heads halved on a small hybrid trained here: activation importance vs random.

No pretrained hybrid is small enough for this machine, so a tiny NemotronH (Mamba-2 / MLP / attention
layers) is trained from scratch on Python docstrings with plain next-token loss; that is the teacher.
Its Mamba heads are then halved (within their groups) by each criterion, and the held-out loss is
measured right after pruning and after the same short logit distillation from the teacher.

    OMP_NUM_THREADS=2 python bench/mamba_heads.py [--train-steps 400] [--kd-steps 60] [--seeds 3]

Writes bench/results/mamba_heads.json and prints a table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Timer, fmt, machine, machine_line, markdown_table, quiet_transformers, write_json
from retrain_common import CALIB, eval_sets, evaluate, retrain, seed_blocks, train_pool

SEQ_LEN = 128
HYBRID = dict(hidden_size=128, intermediate_size=384, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
              layers_block_type=["linear_attention", "mlp", "linear_attention", "full_attention",
                                 "linear_attention", "mlp"],
              mamba_num_heads=16, mamba_head_dim=16, n_groups=2, ssm_state_size=32, conv_kernel=4, chunk_size=64,
              max_position_embeddings=512)  # NemotronH never ties its head


def build_teacher(tokenizer, steps: int, micro_batch: int, seed: int):
    """A NemotronH trained from scratch with next-token loss (the trainer used for distillation, loss=ce)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    torch.manual_seed(seed)
    config = AutoConfig.for_model("nemotron_h", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **HYBRID)
    model = AutoModelForCausalLM.from_config(config)
    pool = train_pool(tokenizer, SEQ_LEN, steps * micro_batch, 1)
    val = pool[:16]
    trained, curve, seconds = retrain(model, None, pool, val, steps=steps, micro_batch=micro_batch,
                                      seq_len=SEQ_LEN, lr=3e-3, seed=seed, loss="ce")
    return trained.eval(), curve, seconds


def undo_norm_rescale_(pruned, source_heads: int, kept_heads: int) -> None:
    """The pruned model without minitron's gated-norm rescale (the variant that only slices)."""
    with torch.no_grad():
        for name, param in pruned.named_parameters():
            if name.endswith("mixer.norm.weight"):
                param.mul_((kept_heads / source_heads) ** 0.5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-steps", type=int, default=400)
    parser.add_argument("--kd-steps", type=int, default=60)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--calib-blocks", type=int, default=64)
    args = parser.parse_args()
    quiet_transformers()
    from minitron import estimate_importance, prune, random_scores, token_blocks
    from minitron.loading import load_tokenizer

    tokenizer = load_tokenizer()
    teacher, teacher_curve, teacher_seconds = build_teacher(tokenizer, args.train_steps, args.micro_batch, 0)
    sets = eval_sets(tokenizer, SEQ_LEN, 64)
    calib = token_blocks(CALIB, tokenizer, SEQ_LEN, args.calib_blocks, split="train", allow_fewer=True)
    kd_pool = train_pool(tokenizer, SEQ_LEN, args.kd_steps * args.micro_batch, 2)
    heads = HYBRID["mamba_num_heads"]
    target = {"mamba_num_heads": heads // 2}
    with Timer() as timer:
        activation = estimate_importance(teacher, [calib[i:i + 8] for i in range(0, len(calib), 8)], progress=False)
    criteria = {"activation": lambda seed: activation, "random": lambda seed: random_scores(teacher, seed=seed)}
    rows, records = [], []
    teacher_loss = evaluate(teacher, sets, 8)
    for name, scores_of in criteria.items():
        for rescale in (True, False):
            if name == "random" and not rescale:
                continue
            for seed in range(args.seeds):  # activation scores are fixed; seeds vary random scores and KD data
                pruned = prune(teacher, scores_of(seed), target)
                if not rescale:
                    undo_norm_rescale_(pruned, heads, heads // 2)
                after_prune = evaluate(pruned, sets, 8)
                blocks = seed_blocks(kd_pool, args.kd_steps * args.micro_batch, seed)
                student, _, seconds = retrain(pruned, teacher, blocks, sets["python-topics"][:16],
                                              steps=args.kd_steps, micro_batch=args.micro_batch, seq_len=SEQ_LEN,
                                              lr=1e-3, seed=seed)
                after_kd = evaluate(student, sets, 8)
                label = name + ("" if rescale else " (no norm rescale)")
                records.append({"criterion": label, "seed": seed, "after_prune": after_prune, "after_kd": after_kd,
                                "kd_seconds": seconds})
                print(label, seed, {k: round(v["loss"], 4) for k, v in after_prune.items()},
                      {k: round(v["loss"], 4) for k, v in after_kd.items()}, flush=True)
    for label in dict.fromkeys(r["criterion"] for r in records):
        mine = [r for r in records if r["criterion"] == label]
        mean = lambda key, split: sum(r[key][split]["loss"] for r in mine) / len(mine)  # noqa: E731
        rows.append([label, len(mine)] + [fmt(mean(key, split)) for key in ("after_prune", "after_kd")
                                          for split in sets])
    headers = ["criterion", "runs"] + [f"{key} {split}" for key in ("pruned", "KD") for split in sets]
    info = machine()
    print(markdown_table(headers, rows))
    print(f"teacher: {fmt(teacher_loss['python-topics']['loss'])} / {fmt(teacher_loss['python-docstrings']['loss'])} "
          f"after {args.train_steps} steps ({teacher_seconds:.0f} s); importance {timer.seconds:.1f} s")
    print(machine_line(info))
    write_json("mamba_heads", {"settings": {**vars(args), "hybrid": HYBRID, "target": target},
                               "teacher": {"loss": teacher_loss, "seconds": teacher_seconds,
                                           "curve": teacher_curve[-5:]},
                               "runs": records, "table": {"headers": headers, "rows": rows}, "machine": info})


if __name__ == "__main__":
    main()
