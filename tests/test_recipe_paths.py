"""Recipes with relative paths: the run folder's recipe.yaml resumes the run it records, and an edited
recipe whose inputs are missing is refused before any finished stage is removed."""
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from minitron.errors import DataNotFoundError
from minitron.loading import save_checkpoint
from minitron.recipe import run_recipe
from tests.tiny import tiny_model, tiny_tokenizer

WORDS = ["teacher", "student", "prune", "distill", "layer", "head", "neuron", "channel", "loss", "token"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    """A one-stage run of a recipe that names its teacher and data relative to its own folder."""
    root = tmp_path_factory.mktemp("relative")
    torch.manual_seed(0)
    save_checkpoint(tiny_model("llama"), tiny_tokenizer(), root / "project/teacher", {"stage": "test"})
    (root / "project/data").mkdir()
    for i in range(24):
        text = " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(40))
        (root / "project/data" / f"doc{i:02d}.txt").write_text(f"Document {i}. {text}.\n")
    recipe = {
        "teacher": "./teacher",
        "data": {"train": "data", "seq_len": 16},
        "importance": {"samples": 4, "batch_size": 4, "layer_loss_samples": 0},
        "distill": {"steps": 1, "micro_batch_size": 2, "warmup_steps": 0, "eval_every": 0, "eval_samples": 2,
                    "save_every": 0, "precision": "fp32"},
        "stages": [{"name": "small", "target": {"intermediate_size": 48}}],
        "eval": {"samples": 2, "batch_size": 2, "throughput": False},
    }
    path = root / "project/family.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    run_dir = root / "runs/family"
    run_recipe(path, run_dir, device="cpu", report=False)
    return path, run_dir


def test_the_run_folders_recipe_resumes_the_run(finished_run, tmp_path, capsys):
    # The report prints `minitron run RUN/recipe.yaml --out RUN`: read from the run folder, the
    # recipe's relative paths must still name the teacher and data it ran on, so nothing is redone.
    _, reference = finished_run
    run_dir = tmp_path / "family"
    shutil.copytree(reference, run_dir)
    weights = (run_dir / "01-small/model/model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    run_recipe(run_dir / "recipe.yaml", run_dir, device="cpu", report=False)
    assert "skipping 01-small (done)" in capsys.readouterr().out
    assert (run_dir / "01-small/model/model.safetensors").stat().st_mtime_ns == weights


def test_missing_data_is_refused_before_a_finished_stage_is_removed(finished_run, tmp_path):
    source, reference = finished_run
    run_dir = tmp_path / "family"
    shutil.copytree(reference, run_dir)
    edited = yaml.safe_load(source.read_text())
    edited["data"]["train"] = "dta"  # a typo: the stage's settings changed, and its data is not there
    path = source.parent / "edited.yaml"
    path.write_text(yaml.safe_dump(edited, sort_keys=False))
    with pytest.raises(DataNotFoundError, match="dta"):
        run_recipe(path, run_dir, device="cpu", report=False)
    assert (run_dir / "01-small/model/model.safetensors").is_file()
