"""Recipes: validation of every key, the shipped recipes, and real family runs on a tiny model.

The must-hold: a recipe interrupted (SIGINT, as Ctrl-C) in the middle of a stage's distillation and
run again finishes with the same models and metrics as an uninterrupted run, redoing no finished stage.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from minitron.cli import main
from minitron.errors import MinitronError
from minitron.loading import save_checkpoint
from minitron.recipe import (
    load_recipe,
    parse_recipe,
    plan_recipe,
    recipe_path,
    run_recipe,
)
from minitron.recipe.state import step_fingerprints
from tests.tiny import tiny_config, tiny_model, tiny_tokenizer

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
WORDS = ["teacher", "student", "prune", "distill", "layer", "head", "neuron", "channel", "loss", "token", "block", "recipe", "stage", "family"]
STAGE_STEPS = 12  # the second stage's distillation: long enough to be interrupted in the middle


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The interrupted run is a subprocess with one thread; in-process runs match it (and a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("family")
    torch.manual_seed(0)
    save_checkpoint(tiny_model("llama"), tiny_tokenizer(), root / "teacher", {"stage": "test"})
    data = root / "data"
    data.mkdir()
    for i in range(40):
        text = " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(60))
        (data / f"doc{i:02d}.txt").write_text(f"Document {i}. {text}.\n")
    return root


def tiny_recipe(root: Path, **changes) -> dict:
    recipe = {
        "teacher": str(root / "teacher"),
        "data": {"train": str(root / "data"), "seq_len": 16},
        "importance": {"samples": 8, "batch_size": 4, "layer_loss_samples": 0},
        "correction": {"steps": 2, "lr": "1e-3", "warmup_steps": 0, "eval_every": 0, "eval_samples": 4,
                       "save_every": 0, "precision": "fp32"},
        "distill": {"steps": 3, "micro_batch_size": 2, "lr": "1e-3", "warmup_steps": 1, "eval_every": 0,
                    "eval_samples": 4, "save_every": 0, "clip_grad": 0, "precision": "fp32"},
        "stages": [{"name": "75pct", "target": {"hidden_size": 36, "intermediate_size": 48}},
                   {"name": "50pct", "target": {"intermediate_size": 32, "drop_layers": [1]},
                    "distill": {"steps": STAGE_STEPS}}],
        "eval": {"samples": 4, "batch_size": 4,
                 "throughput": {"batch_size": 1, "seq_len": 8, "new_tokens": 4, "repeats": 1}},
    }
    return {**recipe, **changes}


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def uninterrupted(inputs, tmp_path_factory):
    """The reference: the tiny family run in one go (with its report and model cards)."""
    recipe_path = write_recipe(inputs / "family.yaml", tiny_recipe(inputs))
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    state = run_recipe(recipe_path, run_dir, device="cpu")
    return recipe_path, run_dir, state


# --- the recipe format ----------------------------------------------------------------------------

@pytest.mark.parametrize("where, bad", [
    ((), "teachr"),
    (("data",), "sequence_length"),
    (("distill",), "learning_rate"),
    (("stages", 0), "targett"),
    (("stages", 0, "target"), "hidden"),
    (("stages", 1, "distill"), "stepz"),
    (("eval", "throughput"), "batch"),
    (("importance",), "calibration"),
])
def test_an_unknown_key_is_named_with_the_allowed_keys(tmp_path, where, bad):
    recipe = tiny_recipe(tmp_path)
    section = recipe
    for step in where:
        section = section[step]
    section[bad] = 1
    with pytest.raises(MinitronError, match=rf"unknown key '{bad}'.*allowed keys: ") as error:
        parse_recipe(recipe)
    allowed = str(error.value).split("allowed keys: ")[1]
    assert bad not in allowed.split(", ") and len(allowed.split(", ")) > 1


@pytest.mark.parametrize("change, message", [
    ({"distill": {"steps": 3, "lr": "fast"}}, "distill.lr must be a number"),
    ({"distill": {"steps": 0}}, "budget of zero"),
    ({"distill": {}}, "give a training budget"),
    ({"distill": {"steps": 3, "tokens": "1k"}}, "not both"),
    ({"stages": []}, "non-empty list"),
    ({"stages": [{"name": "a", "target": {"hidden_size": 36}}, {"name": "a", "target": {"hidden_size": 24}}]},
     "two stages are named 'a'"),
    ({"stages": [{"name": "a"}]}, "exactly one of 'target'"),
    ({"stages": [{"name": "a", "target": {"hidden_size": 36.5}}]}, "must be a whole number"),
    ({"stages": [{"name": "teacher", "target": {"hidden_size": 36}}]}, "'name' must be"),
    ({"correction": {"steps": 2, "loss": "forward_kl"}}, "loss must be ce"),
    ({"distill_from": "grandparent"}, "must be teacher or parent"),
    ({"eval": {"samples": 0}}, "eval.samples must be positive"),
    ({"importance": {"criterion": "vibes"}}, "criterion must be"),
    ({"stages": [{"name": "a", "target": {"num_experts": 4}, "expert_metric": "loudest"}]},
     "expert_metric must be one of reap, weighted_output"),
    ({"stages": [{"name": "a", "search": {"target_active_params": 0.5, "fixed_axes": "experts"}}]},
     "--fixed-axes: unknown axis experts"),
])
def test_bad_values_are_refused_before_any_work(tmp_path, change, message):
    with pytest.raises(MinitronError, match=message):
        parse_recipe(tiny_recipe(tmp_path, **change))


def test_numbers_written_the_yaml_way_are_numbers(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(f"teacher: {tmp_path}\nstages: [{{name: a, target: {{hidden_size: 36}}}}]\n"
                    "distill: {tokens: 94e9, lr: 5e-5, min_lr: 4.5e-7}\n")
    config = load_recipe(path).stages[0].distill_config(load_recipe(path))
    assert (config.tokens, config.lr, config.min_lr) == (94_000_000_000, 5e-5, 4.5e-7)


def test_a_stage_budget_replaces_the_recipe_budget(tmp_path):
    recipe = parse_recipe(tiny_recipe(tmp_path, distill={"tokens": "94B"},
                                      stages=[{"name": "a", "target": {"hidden_size": 36}, "distill": {"steps": 5}},
                                              {"name": "b", "target": {"hidden_size": 24}}]))
    first, second = (stage.distill_config(recipe) for stage in recipe.stages)
    assert (first.steps, first.tokens) == (5, None) and (second.steps, second.tokens) == (None, 94_000_000_000)


def test_a_stage_depth_metric_reaches_its_search(tmp_path):
    """depth_metric picks the layers of the search's candidates too (as expert_metric picks their experts);
    a search section's own wins, and a new one redoes the search step."""
    search = {"target_params": 0.5}
    stages = [{"name": "a", "search": search, "depth_metric": "block_influence"},
              {"name": "b", "search": {**search, "depth_metric": "magnitude"}, "depth_metric": "block_influence"}]
    first, second = parse_recipe(tiny_recipe(tmp_path, stages=stages)).stages
    assert first.search_config().depth_metric == first.prune_depth_metric() == "block_influence"
    assert second.search_config().depth_metric == second.prune_depth_metric() == "magnitude"
    settings = {"data": {}, "importance": {}, "search": search, "distill_teacher": "t", "target": None,
                "distill": {}, "distill_from": "teacher"}
    unset, block, loss = (step_fingerprints({**settings, "depth_metric": metric}, "parent")
                          for metric in (None, "block_influence", "lm_loss"))
    assert unset["search"] != block["search"] != loss["search"] and unset["scores"] == block["scores"]


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_shipped_recipe_parses(path):
    recipe = load_recipe(path)
    assert recipe.stages and recipe.description
    for stage in recipe.stages:
        assert stage.distill_config(recipe).total_steps(1) > 0
        stage.importance_configs(recipe)


def test_the_cpu_recipe_fits_the_builtin_teacher():
    """Its targets resolve against SmolLM2-135M's config (the cached one when present) and the search
    budget leaves candidates."""
    from transformers import AutoConfig, LlamaConfig

    from minitron.loading import cache_dir
    cached = cache_dir() / "builtin" / "smollm2-135m"
    config = AutoConfig.from_pretrained(cached) if (cached / "config.json").is_file() else LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, head_dim=64, tie_word_embeddings=True)
    rows = plan_recipe(load_recipe(ROOT / "recipes" / "smollm2-cpu.yaml"), config)
    assert [r["name"] for r in rows] == ["70pct", "50pct"]
    assert rows[0]["architecture"]["hidden_size"] == 504 and rows[0]["params"].total == 100_282_392
    assert rows[1]["candidates"] > 0


def test_shipped_recipes_are_found_by_name(tmp_path):
    assert recipe_path("smollm2-cpu") == ROOT / "recipes" / "smollm2-cpu.yaml"
    with pytest.raises(MinitronError, match="shipped recipes: .*smollm2-cpu"):
        recipe_path("no-such-recipe")


def test_hidden_losses_need_a_teacher_of_the_parents_depth(tmp_path):
    """Layer pairs come from the parent's layer numbers: after a depth cut, the original teacher's differ."""
    stages = [{"name": "shallow", "target": {"drop_layers": [1]}},
              {"name": "narrow", "target": {"intermediate_size": 32}, "distill": {"steps": 1, "hidden_loss": "cosine"}}]
    recipe = parse_recipe(tiny_recipe(tmp_path, stages=stages))
    with pytest.raises(MinitronError, match="stage 'narrow'.*distill_from: parent"):
        plan_recipe(recipe, tiny_config("llama"))
    stages[1]["distill_from"] = "parent"
    assert len(plan_recipe(parse_recipe(tiny_recipe(tmp_path, stages=stages)), tiny_config("llama"))) == 2


def test_a_dry_run_prints_the_chain(inputs, capsys):
    path = write_recipe(inputs / "dry.yaml", tiny_recipe(inputs))
    assert main(["run", str(path), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "01-75pct: hidden size 36, intermediate size 48" in printed
    assert "02-50pct: hidden size 36, intermediate size 32" in printed and "hidden layers 3" in printed
    impossible = tiny_recipe(inputs, stages=[{"name": "big", "target": {"hidden_size": 96}}])
    assert main(["run", str(write_recipe(inputs / "big.yaml", impossible)), "--dry-run"]) == 2
    assert "stage 'big'" in capsys.readouterr().err


# --- real runs ------------------------------------------------------------------------------------

def test_a_run_writes_the_family(uninterrupted):
    _, run_dir, state = uninterrupted
    assert [s["dir"] for s in state["stages"]] == ["00-correction", "01-75pct", "02-50pct"]
    assert all(s["status"] == "done" for s in state["stages"])
    for name in ("scores", "pruned", "model"):
        assert (run_dir / "02-50pct" / name).is_dir()
    assert [m["name"] for m in state["members"]] == ["teacher", "correction", "75pct", "50pct"]
    sizes = [m["params"]["total"] for m in state["members"]]
    assert sizes[0] == sizes[1] > sizes[2] > sizes[3]
    assert state["members"][3]["architecture"]["num_hidden_layers"] == 3
    assert (run_dir / "report.html").is_file() and (run_dir / "02-50pct/model/README.md").is_file()
    assert json.loads((run_dir / "run.json").read_text()) == json.loads(json.dumps(state))


def test_an_interrupted_run_finishes_like_an_uninterrupted_one(uninterrupted, tmp_path, capsys):
    recipe_path, reference, _ = uninterrupted
    run_dir = tmp_path / "run"
    error = _interrupt_in_second_stage(recipe_path, run_dir)
    assert "interrupted in 02-50pct" in error and "Run the same command again to resume" in error
    state = json.loads((run_dir / "run.json").read_text())
    assert [s["status"] for s in state["stages"]] == ["done", "done", "running"]
    finished = [(s["started"], s["finished"], s["seconds"]) for s in state["stages"][:2]]
    first_weights = (run_dir / "01-75pct/model/model.safetensors").stat().st_mtime_ns
    steps_before = len(_losses(run_dir))
    assert 1 <= steps_before < STAGE_STEPS

    capsys.readouterr()
    resumed = run_recipe(recipe_path, run_dir, device="cpu", report=False)
    printed = capsys.readouterr().out
    assert "skipping 00-correction (done)" in printed and "skipping 01-75pct (done)" in printed
    assert "reusing the importance scores" in printed and "reusing the pruned model" in printed
    assert "resuming the interrupted training" in printed
    assert [(s["started"], s["finished"], s["seconds"]) for s in resumed["stages"][:2]] == finished
    assert (run_dir / "01-75pct/model/model.safetensors").stat().st_mtime_ns == first_weights

    for stage in ("01-75pct", "02-50pct"):
        expected = load_file(str(reference / stage / "model/model.safetensors"))
        for name, tensor in load_file(str(run_dir / stage / "model/model.safetensors")).items():
            torch.testing.assert_close(tensor, expected[name], rtol=0, atol=1e-6, msg=f"{stage}: {name}")
    torch.testing.assert_close(torch.tensor(_losses(run_dir)), torch.tensor(_losses(reference)), rtol=0, atol=1e-6)
    reference_losses = [m["heldout_loss"] for m in json.loads((reference / "run.json").read_text())["members"]]
    assert [m["heldout_loss"] for m in resumed["members"]] == pytest.approx(reference_losses, abs=1e-6)

    again = run_recipe(recipe_path, run_dir, device="cpu", report=False)
    printed = capsys.readouterr().out
    assert printed.count("(done)") == 3 and "[evaluation]" not in printed
    assert again["members"] == resumed["members"]


def test_a_changed_stage_is_redone_with_every_later_one(uninterrupted, inputs, tmp_path, capsys):
    _, reference, _ = uninterrupted
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    changed = tiny_recipe(inputs)
    changed["stages"][1]["distill"] = {"steps": 2}
    path = write_recipe(tmp_path / "changed.yaml", changed)
    capsys.readouterr()
    state = run_recipe(path, run_dir, device="cpu", report=False)
    printed = capsys.readouterr().out
    assert "skipping 01-75pct (done)" in printed and "the recipe changed at 02-50pct" in printed
    assert "[evaluation] 50pct" in printed and "[evaluation] 75pct" not in printed
    assert len(_losses(run_dir)) == 2 and state["stages"][2]["status"] == "done"


def test_a_search_stage_prunes_to_the_winner(inputs, tmp_path):
    search = {"target_params": 0.7, "max_candidates": 3, "top_k": 2, "candidate_tokens": 64,
              "candidate_batch_size": 2, "heldout_samples": 2}
    recipe = tiny_recipe(inputs, correction=None, stages=[{"name": "searched", "search": search,
                                                           "distill": {"steps": 1}}],
                         eval={"samples": 2, "throughput": False})
    state = run_recipe(write_recipe(tmp_path / "search.yaml", recipe), tmp_path / "run", device="cpu", report=False)
    stage = state["stages"][0]
    result = json.loads((tmp_path / "run" / stage["search"]).read_text())
    assert stage["search"] == "01-searched/search/search.json" and stage["target"] == result["winner"]["target"]
    pruned = json.loads((tmp_path / "run/01-searched/pruned/config.json").read_text())
    assert all(pruned[key] == value for key, value in stage["target"].items() if key != "drop_layers")
    member = state["members"][1]
    assert member["params"]["total"] <= 0.7 * state["members"][0]["params"]["total"]
    assert member["tokens_per_s"] is None


def test_a_moe_search_stage_cuts_experts_under_an_active_budget(inputs, tmp_path):
    """A tiny MoE family: the search varies experts and expert width under --target-active-params, and the
    stage's expert_metric picks the experts in the candidates and in the pruned model."""
    teacher = tmp_path / "moe-teacher"
    torch.manual_seed(0)
    save_checkpoint(tiny_model("qwen3_moe"), tiny_tokenizer(), teacher, {"stage": "test"})
    search = {"target_active_params": 0.6, "hidden_step": 16, "mlp_step": 16, "fixed_axes": "num_hidden_layers",
              "max_candidates": 2, "candidate_tokens": 0, "heldout_samples": 2}
    recipe = tiny_recipe(inputs, teacher=str(teacher), correction=None, eval={"samples": 2, "throughput": False},
                         stages=[{"name": "experts", "search": search, "expert_metric": "frequency",
                                  "distill": {"steps": 1}}])
    state = run_recipe(write_recipe(tmp_path / "moe.yaml", recipe), tmp_path / "run", device="cpu", report=False)
    result = json.loads((tmp_path / "run/01-experts/search/search.json").read_text())
    assert result["budget"]["metric"] == "active" and result["expert_metric"] == "frequency"
    assert {r["architecture"]["num_experts"] for r in result["candidates"]} <= {8, 6, 4}
    pruned = json.loads((tmp_path / "run/01-experts/pruned/minitron.json").read_text())
    assert pruned["expert_metric"] == "frequency" and pruned["target"] == result["winner"]["target"]
    assert state["members"][1]["params"]["active"] <= result["budget"]["limit"]


def test_a_changed_search_budget_reuses_the_stage_importance(inputs, tmp_path, capsys):
    """Fingerprints per step: a new candidate_tokens redoes the search (and what follows), not importance;
    new importance settings redo importance."""
    search = {"target_params": 0.7, "max_candidates": 2, "top_k": 1, "candidate_batch_size": 2, "heldout_samples": 2}

    def run(name: str, candidate_tokens: int, samples: int) -> str:
        recipe = tiny_recipe(inputs, correction=None, eval={"samples": 2, "throughput": False},
                             importance={"samples": samples, "batch_size": 4, "layer_loss_samples": 0},
                             stages=[{"name": "searched", "search": {**search, "candidate_tokens": candidate_tokens},
                                      "distill": {"steps": 1}}])
        capsys.readouterr()
        run_recipe(write_recipe(tmp_path / name, recipe), tmp_path / "run", device="cpu", report=False)
        return capsys.readouterr().out

    scores, result = tmp_path / "run/01-searched/scores/scores.json", tmp_path / "run/01-searched/search/search.json"
    run("first.yaml", candidate_tokens=0, samples=8)  # 0: the winner by its loss after pruning
    scored, searched = scores.stat().st_mtime_ns, result.stat().st_mtime_ns
    printed = run("budget.yaml", candidate_tokens=32, samples=8)
    assert "the recipe changed at 01-searched: reusing its importance scores, redoing the rest" in printed
    assert "reusing the importance scores" in printed and "importance on" not in printed
    assert scores.stat().st_mtime_ns == scored and result.stat().st_mtime_ns != searched
    assert "searching architectures" in printed and "distilling from" in printed
    printed = run("importance.yaml", candidate_tokens=32, samples=4)
    assert "redoing it and every later stage" in printed and "[01-searched] importance on" in printed
    assert scores.stat().st_mtime_ns != scored and json.loads(scores.read_text())["num_samples"] == 4


def test_a_folder_that_is_not_a_run_is_refused(inputs, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(MinitronError, match="not written by minitron"):
        run_recipe(write_recipe(tmp_path / "r.yaml", tiny_recipe(inputs)), tmp_path, device="cpu")
    assert (tmp_path / "notes.txt").is_file()


def _losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "02-50pct/model/metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if line.strip()]


def _interrupt_in_second_stage(recipe_path: Path, run_dir: Path) -> str:
    """Run the recipe with the CLI in a subprocess and press Ctrl-C (SIGINT) once the second stage has
    trained a step; returns what the command printed on stderr."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "minitron.cli", "run", str(recipe_path), "--out", str(run_dir), "--device", "cpu"]
    log = run_dir.with_name("stderr.txt")
    metrics = run_dir / "02-50pct/model/metrics.jsonl"
    deadline = time.monotonic() + 240
    with open(log, "w") as stderr:  # a file, not a pipe: progress bars would fill a pipe nobody reads yet
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            while not (metrics.is_file() and metrics.read_text().strip()):
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the run ended or stalled before its second stage trained:\n{log.read_text()[-3000:]}")
                time.sleep(0.005)
            process.send_signal(signal.SIGINT)
            process.wait(timeout=240)
        finally:
            if process.poll() is None:
                process.kill()
    error = log.read_text()
    assert process.returncode == 130, error[-3000:]
    return error


def test_the_plan_names_the_experts_and_mamba_sizes_of_each_model():
    from minitron.recipe.plan import _arch_text
    from tests.tiny import tiny_config

    assert "experts 8 (2 per token) of width" in _arch_text(tiny_config("qwen3_moe"))
    assert "Mamba heads 8 x" in _arch_text(tiny_config("nemotron_h")) and "experts" not in _arch_text(tiny_config("nemotron_h"))
    assert "experts" not in _arch_text(tiny_config("llama")) and "Mamba" not in _arch_text(tiny_config("llama"))
