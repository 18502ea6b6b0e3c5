"""An exported minitron model scored by the lm-eval harness (`lm_eval --model hf`) on a local task written for this.

Usage:
    python bench/lm_eval_export.py                  # 200 items; teacher, pruned, pruned + 30 distillation steps
    python bench/lm_eval_export.py --steps 0        # teacher and the just-pruned student only
    python bench/lm_eval_export.py --items 8 --steps 1 --micro-batch 2 --seq-len 64 --calib-samples 4 \
        --calib-seq-len 64 --layer-loss-batches 1 --workdir runs/lm_eval_smoke --name smoke_lm_eval   # smoke

What it does:
  1. Student: the built-in teacher (builtin:smollm2-135m) pruned to hidden 432 / MLP 864 from
     activation importance (the cached scores of bench/retrain_study.py: 64 x 256 tokens of
     builtin:python-docs, train split), then (--steps > 0) distilled with logit-only KD on
     builtin:python-docstrings (train split), --steps x --micro-batch x --seq-len tokens.
  2. Export: teacher, pruned student and distilled student are written with `minitron.save_checkpoint`
     (standard HF folders: safetensors, config, tokenizer) under --workdir (default runs/lm_eval_export).
  3. Task: `minitron_pydoc_next_sentence`, a 4-way multiple-choice task written to
     WORKDIR/tasks/ (YAML + JSONL): the context is the opening sentences of a paragraph of Python's
     documentation, the choices are the paragraph's real next sentence and three sentences of similar
     length from other documents (seeded). Paragraphs come only from the held-out splits of
     builtin:python-topics and builtin:python-docstrings, which neither calibration nor training used.
     Chance is 0.25; metrics acc and acc_norm (log-likelihood per byte of the choice).
  4. Scoring: for each folder, in a subprocess, offline (HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1):
        lm_eval --model hf --model_args pretrained=FOLDER,dtype=float32 --tasks minitron_pydoc_next_sentence
                --include_path WORKDIR/tasks --device cpu --batch_size 8 --output_path WORKDIR/lm_eval/NAME
     and the accuracy is read from the results JSON the harness writes.

Needs lm-eval in the venv (`.venv/bin/pip install lm-eval`). Writes bench/results/lm_eval_export.json
and prints a Markdown table. Exported folders are reused when present (--fresh rebuilds them).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, machine_line, markdown_table, quiet_transformers, write_json
from retrain_common import (
    ROOT,
    TEACHER,
    TRAIN,
    WIDTH,
    calib_settings,
    log,
    retrain,
    scores_for,
)

TASK = "minitron_pydoc_next_sentence"
SOURCES = ("builtin:python-topics", "builtin:python-docstrings")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


# ------------------------------------------------------------------------------------------------ task

def sentences_of(paragraph: str) -> list[str]:
    text = " ".join(line.strip() for line in paragraph.splitlines())
    return [s.strip() for s in SENTENCE_END.split(text) if s.strip()]


def plain(sentence: str) -> bool:
    """Prose, not code or tables: a reasonable length, mostly letters, ends like a sentence."""
    letters = sum(c.isalpha() or c == " " for c in sentence)
    return 30 <= len(sentence) <= 250 and letters >= 0.8 * len(sentence) and sentence[-1] in ".!?" \
        and ">>>" not in sentence


def heldout_paragraphs() -> list[tuple[int, list[str]]]:
    """(document id, sentences) of every held-out paragraph with at least two plain sentences."""
    from minitron.data import is_heldout, iter_documents
    out = []
    for s, spec in enumerate(SOURCES):
        for index, document in enumerate(iter_documents(spec)):
            if not is_heldout(index, 0.1):
                continue
            for paragraph in re.split(r"\n\s*\n", document):
                sentences = sentences_of(paragraph)
                if len(sentences) >= 2 and all(plain(x) for x in sentences[:3]):
                    out.append((s * 1_000_000 + index, sentences))
    return out


def build_items(count: int, seed: int) -> list[dict]:
    paragraphs = heldout_paragraphs()
    rng = random.Random(seed)
    rng.shuffle(paragraphs)
    pool = [(doc, s) for doc, sents in paragraphs for s in sents if plain(s)]
    items = []
    for doc, sents in paragraphs:
        cut = 1 if len(sents[0]) >= 60 or len(sents) == 2 else 2  # context: one or two sentences
        context, answer = " ".join(sents[:cut]), sents[cut]
        near = [s for d, s in pool if d != doc and 0.67 * len(answer) <= len(s) <= 1.5 * len(answer) and s != answer]
        if len(near) < 3:
            continue
        choices = rng.sample(near, 3) + [answer]
        rng.shuffle(choices)
        items.append({"context": context, "choices": choices, "label": choices.index(answer), "doc": doc})
        if len(items) == count:
            break
    if len(items) < count:
        raise SystemExit(f"only {len(items)} items could be built from the held-out paragraphs (asked {count})")
    return items


def write_task(folder: Path, items: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{TASK}.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in items))
    (folder / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        "dataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data.resolve()}\n"
        "output_type: multiple_choice\n"
        "test_split: test\n"
        "doc_to_text: context\n"
        "doc_to_choice: choices\n"
        "doc_to_target: label\n"
        "target_delimiter: \" \"\n"
        "metric_list:\n"
        "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n")
    return folder


# ---------------------------------------------------------------------------------------------- models

def export_models(args, workdir: Path) -> dict:
    """{name: folder} of the teacher, the pruned student and (steps > 0) the distilled student."""
    from minitron import (
        count_parameters,
        load_model,
        prune,
        save_checkpoint,
        token_blocks,
    )
    folders = {"teacher": workdir / "teacher", "pruned": workdir / "student-pruned"}
    if args.steps:
        folders["distilled"] = workdir / f"student-distilled-{args.steps}x{args.micro_batch}x{args.seq_len}"
    if not args.fresh and all((f / "config.json").is_file() for f in folders.values()):
        log("reusing the exported folders (--fresh rebuilds them)")
        return folders
    teacher, tok = load_model(TEACHER)
    settings = calib_settings(args.calib_samples, seq_len=args.calib_seq_len, layer_loss_batches=args.layer_loss_batches)
    pruned = prune(teacher, scores_for(teacher, tok, settings), WIDTH)
    record = {"source": TEACHER, "target": WIDTH, "calibration": settings,
              "params": count_parameters(pruned).as_dict()}
    save_checkpoint(teacher, tok, folders["teacher"], {"source": TEACHER})
    save_checkpoint(pruned, tok, folders["pruned"], record)
    if args.steps:
        blocks = token_blocks(TRAIN, tok, args.seq_len, args.steps * args.micro_batch, split="train")
        heldout = token_blocks(TRAIN, tok, args.seq_len, 1, split="heldout")
        student, curve, seconds = retrain(pruned, teacher, blocks, heldout, steps=args.steps,
                                          micro_batch=args.micro_batch, seq_len=args.seq_len, lr=args.lr, seed=0)
        log(f"distilled {args.steps} steps in {seconds:.0f} s (train loss {curve[0]['loss']:.3f} -> {curve[-1]['loss']:.3f})")
        save_checkpoint(student, tok, folders["distilled"],
                        record | {"distill": {"data": TRAIN, "steps": args.steps, "micro_batch": args.micro_batch,
                                              "seq_len": args.seq_len, "lr": args.lr, "loss": "forward_kl"}})
    return folders


def lm_eval(name: str, folder: Path, tasks: Path, out: Path, batch_size: int) -> dict:
    """Run the lm-eval CLI on one exported folder; return the task's metrics and the command."""
    executable = Path(sys.executable).with_name("lm_eval")
    command = [str(executable if executable.exists() else "lm_eval"), "--model", "hf",
               "--model_args", f"pretrained={folder.resolve()},dtype=float32", "--tasks", TASK,
               "--include_path", str(tasks.resolve()), "--device", "cpu", "--batch_size", str(batch_size),
               "--output_path", str(out.resolve())]
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                        "TOKENIZERS_PARALLELISM": "false"}
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    found = sorted(out.rglob("results_*.json"), key=lambda p: p.stat().st_mtime)
    if proc.returncode != 0 or not found:
        raise SystemExit(f"lm_eval failed on {name} (exit {proc.returncode}):\n{(proc.stderr or proc.stdout)[-3000:]}")
    metrics = json.loads(found[-1].read_text())["results"][TASK]
    log(f"{name}: acc {metrics['acc,none']:.3f}, acc_norm {metrics['acc_norm,none']:.3f} ({seconds:.0f} s)")
    return {"metrics": metrics, "command": " ".join(command), "seconds": seconds, "results_file": str(found[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=200, help="multiple-choice items in the task")
    parser.add_argument("--task-seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=30, help="distillation steps (0: pruned student only)")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--calib-samples", type=int, default=64)
    parser.add_argument("--calib-seq-len", type=int, default=256)
    parser.add_argument("--layer-loss-batches", type=int, default=2,
                        help="as bench/retrain_study.py, so its cached scores are reused")
    parser.add_argument("--batch-size", type=int, default=8, help="lm_eval --batch_size")
    parser.add_argument("--workdir", default=str(ROOT / "runs" / "lm_eval_export"))
    parser.add_argument("--fresh", action="store_true", help="rebuild the exported model folders")
    parser.add_argument("--name", default="lm_eval_export", help="results file bench/results/NAME.json")
    args = parser.parse_args()
    quiet_transformers()
    import warnings
    warnings.filterwarnings("ignore")
    info = machine()
    print(machine_line(info), flush=True)
    workdir = Path(args.workdir)
    started = time.perf_counter()
    items = build_items(args.items, args.task_seed)
    tasks = write_task(workdir / "tasks", items)
    folders = export_models(args, workdir)
    from transformers import AutoConfig

    from minitron import count_parameters_from_config
    payload = {"machine": info, "settings": vars(args), "task": {"name": TASK, "items": len(items),
               "folder": str(tasks), "chance": 0.25, "example": items[0]}, "models": {}}
    for name, folder in folders.items():
        result = lm_eval(name, folder, tasks, workdir / "lm_eval" / name, args.batch_size)
        result["params"] = count_parameters_from_config(AutoConfig.from_pretrained(folder)).as_dict()
        result["folder"] = str(folder)
        payload["models"][name] = result
        write_json(args.name, payload)
    rows = [[name, r["params"]["total"], f"{r['metrics']['acc,none']:.3f} ± {r['metrics']['acc_stderr,none']:.3f}",
             f"{r['metrics']['acc_norm,none']:.3f} ± {r['metrics']['acc_norm_stderr,none']:.3f}"]
            for name, r in payload["models"].items()]
    rows.append(["chance (4 choices)", "-", "0.250", "0.250"])
    payload["table"] = markdown_table(["model (exported HF folder)", "params (total)", "acc ± stderr",
                                       "acc_norm ± stderr"], rows)
    payload["total_seconds"] = time.perf_counter() - started
    print(f"\n### lm-eval harness, task {TASK} ({len(items)} items, 4 choices, held-out Python docs)\n")
    print(payload["table"])
    print("\nCommands run (one per exported folder):\n" + "\n".join(r["command"] for r in payload["models"].values()))
    print(f"\n(total {payload['total_seconds']:.0f} s; results in {write_json(args.name, payload)})")


if __name__ == "__main__":
    main()
