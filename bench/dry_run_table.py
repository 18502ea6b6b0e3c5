"""The dry-run memory tables of every shipped recipe on 8 x 80 GB (docs/BENCHMARKS.md), offline.

    python bench/dry_run_table.py            # prints markdown; writes bench/results/dry_run.json

The seed recipes name hub ids (meta-llama/Llama-3.1-8B ...) or a local folder (Nemotron-4-15B); no weights
and no download are needed: each teacher's config is built from its published config.json values (the
same ones tests/test_seed_models.py checks the published parameter counts against), saved to a temporary
folder and passed with `--teacher-config`, exactly as a user without the checkpoint would.
"""
from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_json  # noqa: E402
from minitron.cli import main  # noqa: E402
from tests.test_seed_models import llama_3_1_8b, mistral_nemo_12b, nemotron_4_15b  # noqa: E402

RECIPES = {"llama-3.1-8b-width": llama_3_1_8b, "llama-3.1-8b-depth": llama_3_1_8b,
           "mistral-nemo-12b": mistral_nemo_12b, "nemotron-4-15b": nemotron_4_15b, "smollm2-cpu": None}
LAYOUTS = {"fsdp": ["--nproc", "8", "--sharding", "fsdp", "--gpu-memory", "80"],
           "ddp": ["--nproc", "8", "--sharding", "ddp", "--gpu-memory", "80"]}


def dry_run(recipe: str, folder: Path, make_config, layout: list[str]) -> tuple[str, str]:
    argv = ["run", f"recipes/{recipe}.yaml", "--dry-run", *layout]
    shown = list(argv)
    if make_config is not None:
        make_config().save_pretrained(folder / recipe)
        argv += ["--teacher-config", str(folder / recipe / "config.json")]
        shown += ["--teacher-config", f"{recipe}-config/config.json"]
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(argv)
    if code != 0:
        raise SystemExit(f"{' '.join(argv)} failed with exit code {code}")
    return "minitron " + " ".join(shown), buffer.getvalue()


def main_table() -> None:
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for recipe, make_config in RECIPES.items():
            for name, layout in LAYOUTS.items():
                if name == "ddp" and recipe != "llama-3.1-8b-width":
                    continue  # one DDP table for contrast
                command, text = dry_run(recipe, Path(folder), make_config, layout)
                results[f"{recipe}/{name}"] = {"command": command, "output": text}
                print(f"`{command}`\n```\n{text.rstrip()}\n```\n")
    write_json("dry_run", results)


if __name__ == "__main__":
    main_table()
