"""Mamba-2 heads halved on a hybrid trained here: activation importance vs random.

No pretrained hybrid is small enough for this machine (and none can be downloaded), so a NemotronH
(Mamba-2 / MLP / attention layers, the layer kinds of Nemotron-H) is trained from scratch on the
training split of Python's documentation (`builtin:python-docs`, about 390k tokens; several passes) with
plain next-token loss; that is the teacher. Its Mamba heads are then halved (the best
half of every group, as minitron always prunes them) by each criterion, and the held-out loss is
measured right after pruning and after the same short logit distillation from the teacher:

- activation: minitron's head scores (the norm of each head's gated output, mean over the sequence,
  L2 over the batch) from one calibration pass;
- activation (no norm rescale): the same heads, with the gated RMSNorm's weight only sliced, to show
  what minitron's sqrt(old / new) rescale of that weight is worth;
- random: seeded uniform scores (the floor).

Sizes are chosen for one GPU (--preset gpu, the default where CUDA is present) or a smoke run on the
CPU (--preset cpu). Step counts follow a wall-clock budget: a short probe times a step, and the teacher
and the KD runs get as many steps as their budgets allow (all recorded in the JSON).

    python bench/mamba_heads.py                                   # GPU: about 7 minutes on one H200
    OMP_NUM_THREADS=2 python bench/mamba_heads.py --preset cpu    # smoke run, a few minutes
    python bench/mamba_heads.py --tokenizer DIR --json OUT.json   # a saved tokenizer, results elsewhere

Writes bench/results/mamba_heads.json (or --json) after every run, and prints a table.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS_DIR, Timer, fmt, machine, machine_line, markdown_table, quiet_transformers,  # noqa: E402
                    write_json)
from retrain_common import CALIB, eval_sets, evaluate, mean_sd, retrain, seed_blocks  # noqa: E402

_PATTERN = ["linear_attention", "mlp", "linear_attention", "full_attention", "linear_attention", "mlp"]
PRESETS = {
    # One H200: 8 layers (4 Mamba-2, 1 attention, 3 MLP), 32 heads of 32 channels in 4 groups.
    "gpu": dict(seq_len=256, micro_batch=16, train_seconds=150, kd_seconds=15, calib_blocks=128, eval_blocks=128,
                hybrid=dict(hidden_size=384, intermediate_size=1024, num_attention_heads=6, num_key_value_heads=2,
                            head_dim=64, layers_block_type=_PATTERN + ["linear_attention", "mlp"],
                            mamba_num_heads=32, mamba_head_dim=32, n_groups=4, ssm_state_size=64,
                            conv_kernel=4, chunk_size=128, max_position_embeddings=1024)),
    # 2 CPU cores: a smoke run of the same comparison.
    "cpu": dict(seq_len=128, micro_batch=8, train_seconds=120, kd_seconds=10, calib_blocks=32, eval_blocks=32,
                hybrid=dict(hidden_size=128, intermediate_size=384, num_attention_heads=4, num_key_value_heads=2,
                            head_dim=32, layers_block_type=_PATTERN, mamba_num_heads=16, mamba_head_dim=16,
                            n_groups=2, ssm_state_size=32, conv_kernel=4, chunk_size=64,
                            max_position_embeddings=512)),
}
PROBE_STEPS = 6


def build_model(tokenizer, hybrid: dict, seed: int):
    """A randomly initialised NemotronH of the preset's sizes (NemotronH never ties its head)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    torch.manual_seed(seed)
    config = AutoConfig.for_model("nemotron_h", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **hybrid)
    return AutoModelForCausalLM.from_config(config)


def steps_for(seconds: float, probe_seconds: float, cap: int) -> int:
    """How many steps fit in `seconds`, from a probe of PROBE_STEPS steps (its first step included, so
    the estimate errs short)."""
    return max(PROBE_STEPS, min(cap, int(seconds / (probe_seconds / PROBE_STEPS))))


def epochs_of(pool: torch.Tensor, needed: int, seed: int = 0) -> torch.Tensor:
    """`needed` blocks drawn as successive shuffled passes over `pool` (the text is small: the teacher
    sees it several times)."""
    generator = torch.Generator().manual_seed(seed)
    passes = [pool[torch.randperm(len(pool), generator=generator)] for _ in range(-(-needed // len(pool)))]
    return torch.cat(passes)[:needed]


def undo_norm_rescale_(pruned, source_heads: int, kept_heads: int) -> None:
    """The pruned model without minitron's gated-norm rescale (the variant that only slices)."""
    with torch.no_grad():
        for name, param in pruned.named_parameters():
            if name.endswith("mixer.norm.weight"):
                param.mul_((kept_heads / source_heads) ** 0.5)


def losses(result: dict) -> dict:
    return {split: round(value["loss"], 4) for split, value in result.items()}


def summary_rows(records: list[dict], sets: dict) -> tuple[list[str], list[list]]:
    rows = []
    for label in dict.fromkeys(r["criterion"] for r in records):
        mine = [r for r in records if r["criterion"] == label]
        row = [label, len(mine)]
        for key in ("after_prune", "after_kd"):
            for split in sets:
                mean, sd = mean_sd([r[key][split]["loss"] for r in mine])
                row.append(fmt(mean) + (f" ± {fmt(sd)}" if len(mine) > 1 else ""))
        rows.append(row)
    headers = ["criterion", "runs"] + [f"{key} {split}" for key in ("pruned", "KD") for split in sets]
    return headers, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="gpu" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--train-seconds", type=float, help="teacher training budget (default: the preset's)")
    parser.add_argument("--kd-seconds", type=float, help="budget of each KD run (default: the preset's)")
    parser.add_argument("--epochs", type=int, default=8, help="most passes over the training text for the teacher")
    parser.add_argument("--seeds", type=int, default=3, help="random-score seeds (and KD data draws)")
    parser.add_argument("--tokenizer", default="builtin:smollm2-135m", help="a model spec or a tokenizer folder")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "mamba_heads.json")
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    train_seconds = args.train_seconds or preset["train_seconds"]
    kd_seconds = args.kd_seconds or preset["kd_seconds"]
    seq_len, micro_batch, hybrid = preset["seq_len"], preset["micro_batch"], preset["hybrid"]
    quiet_transformers()
    from minitron import estimate_importance, prune, random_scores, token_blocks
    from minitron.loading import load_tokenizer
    from minitron.params import count_parameters

    started = time.perf_counter()
    tokenizer = load_tokenizer(args.tokenizer)
    sets = eval_sets(tokenizer, seq_len, preset["eval_blocks"])
    pool = token_blocks(CALIB, tokenizer, seq_len, 10**6, split="train", allow_fewer=True)
    val = sets["python-topics"][:16]
    print(f"data: {len(pool)} training blocks of {seq_len}, held-out "
          f"{ {k: len(v) for k, v in sets.items()} } ({time.perf_counter() - started:.0f} s)", flush=True)

    _, _, probe = retrain(build_model(tokenizer, hybrid, 0), None, pool, val, steps=PROBE_STEPS,
                          micro_batch=micro_batch, seq_len=seq_len, lr=3e-3, seed=0, loss="ce")
    train_steps = steps_for(train_seconds, probe, args.epochs * len(pool) // micro_batch)
    teacher, curve, teacher_seconds = retrain(build_model(tokenizer, hybrid, 0), None,
                                              epochs_of(pool, train_steps * micro_batch),
                                              val, steps=train_steps, micro_batch=micro_batch, seq_len=seq_len,
                                              lr=3e-3, seed=0, loss="ce")
    teacher = teacher.eval()
    teacher_loss = evaluate(teacher, sets, 16)
    params = count_parameters(teacher).total
    print(f"teacher: {params:,} parameters, {train_steps} steps ({train_steps * micro_batch * seq_len:,} tokens) "
          f"in {teacher_seconds:.0f} s; held-out {losses(teacher_loss)}", flush=True)

    calib = token_blocks(CALIB, tokenizer, seq_len, preset["calib_blocks"], split="train", allow_fewer=True)
    with Timer() as timer:
        activation = estimate_importance(teacher, [calib[i:i + 16] for i in range(0, len(calib), 16)],
                                         progress=False)
    heads = hybrid["mamba_num_heads"]
    target = {"mamba_num_heads": heads // 2}
    kd_pool = epochs_of(pool, 4 * len(pool), seed=1)
    _, _, kd_probe = retrain(prune(teacher, activation, target), teacher, kd_pool, val, steps=PROBE_STEPS,
                             micro_batch=micro_batch, seq_len=seq_len, lr=1e-3, seed=0)
    kd_steps = steps_for(kd_seconds, kd_probe, len(kd_pool) // micro_batch)
    settings = {**vars(args), "json": str(args.json), "preset": preset, "train_steps": train_steps,
                "kd_steps": kd_steps, "target": target, "teacher_params": params}
    variants = [("activation", True, lambda seed: activation), ("activation (no norm rescale)", False,
                lambda seed: activation), ("random", True, lambda seed: random_scores(teacher, seed=seed))]
    records: list[dict] = []
    for label, rescale, scores_of in variants:
        for seed in range(args.seeds):  # activation scores are fixed: seeds vary random scores and the KD draw
            pruned = prune(teacher, scores_of(seed), target)
            if not rescale:
                undo_norm_rescale_(pruned, heads, heads // 2)
            after_prune = evaluate(pruned, sets, 16)
            blocks = seed_blocks(kd_pool, kd_steps * micro_batch, seed)
            student, _, seconds = retrain(pruned, teacher, blocks, val, steps=kd_steps, micro_batch=micro_batch,
                                          seq_len=seq_len, lr=1e-3, seed=seed)
            after_kd = evaluate(student, sets, 16)
            records.append({"criterion": label, "seed": seed, "after_prune": after_prune, "after_kd": after_kd,
                            "kd_seconds": seconds})
            print(f"{label} seed {seed}: pruned {losses(after_prune)} -> KD {losses(after_kd)} ({seconds:.0f} s)",
                  flush=True)
            write_results(args.json, settings, teacher_loss, teacher_seconds, curve, timer.seconds, records, sets)
    headers, rows = summary_rows(records, sets)
    print(markdown_table(headers, rows))
    print(f"teacher: {fmt(teacher_loss['python-topics']['loss'])} / "
          f"{fmt(teacher_loss['python-docstrings']['loss'])} after {train_steps} steps ({teacher_seconds:.0f} s); "
          f"importance {timer.seconds:.1f} s; {kd_steps} KD steps per run; total {time.perf_counter() - started:.0f} s")
    print(machine_line(machine()))


def write_results(path: Path, settings: dict, teacher_loss: dict, teacher_seconds: float, curve: list,
                  importance_seconds: float, records: list[dict], sets: dict) -> None:
    """The whole result so far, rewritten after every run (through a temporary file, then a rename)."""
    headers, rows = summary_rows(records, sets)
    payload = {"settings": settings, "teacher": {"loss": teacher_loss, "seconds": teacher_seconds,
                                                 "curve": curve[-5:]},
               "importance_seconds": importance_seconds, "runs": records,
               "table": {"headers": headers, "rows": rows}, "machine": machine()}
    write_json("mamba_heads", payload, path)


if __name__ == "__main__":
    main()
