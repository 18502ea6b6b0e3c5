"""The commands a report and a model card print reproduce the run: every setting of every stage.

The must-hold: a tiny recipe with non-default settings everywhere (importance, a search budget, a depth
metric, distillation losses) is run; the commands its report prints are run one by one, as printed,
into a copy of the run folder; they give the same scores, the same search winner, the same pruned
weights and the same trained weights as the recipe did.
"""
import dataclasses
import html
import re
import shlex
import shutil
import typing
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from minitron.cli import _build_parser, _command_parser, command_argv, command_line, from_args, main
from minitron.config import DataConfig, DistillConfig, ImportanceConfig, TargetConfig
from minitron.errors import MinitronError
from minitron.importance import ImportanceScores
from minitron.loading import save_checkpoint
from minitron.recipe import load_recipe, run_recipe
from minitron.recipe.runner import plan_stages
from minitron.report import build_report, write_model_cards
from minitron.report.commands import reproduce_commands
from minitron.report.runfolder import Run
from minitron.search import SearchConfig
from tests.tiny import tiny_model, tiny_tokenizer

# Each command and the settings dataclasses its options are generated from.
COMMAND_SETTINGS = {"importance": (DataConfig, ImportanceConfig), "prune": (TargetConfig,),
                    "distill": (DistillConfig,), "finetune": (DistillConfig,), "eval": (DataConfig,),
                    "search": (SearchConfig, DataConfig)}
REQUIRED = {"importance": {"model": "m", "out": "o"}, "prune": {"model": "m"}, "eval": {"model": "m"},
            "distill": {"student": "s", "teacher": "t", "out": "o"}, "finetune": {"model": "m", "out": "o"},
            "search": {"model": "m"}}
WORDS = ["teacher", "student", "prune", "distill", "layer", "head", "neuron", "loss", "token", "block", "stage"]


def _other_value(kind, default):
    """A value of type `kind` that is not `default`, awkward to quote and to print."""
    if typing.get_origin(kind) is typing.Union or isinstance(kind, type(int | None)):
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if kind is bool:
        return not default
    if kind is int:
        return (default or 0) + 7
    if kind is float:
        return (default or 0.0) + 1 / 3 + 1e-9  # no short decimal: only an exact rendering parses back
    return "-it's a 'path' with spaces/$HOME"


@pytest.mark.parametrize("command, settings", [(c, s) for c, classes in COMMAND_SETTINGS.items() for s in classes])
def test_every_setting_round_trips_through_the_command_line(command, settings):
    parser, hints = _build_parser(), typing.get_type_hints(settings)
    fixed = _command_parser(command)._defaults  # fields the command has no option for (finetune's KD settings)
    for field in dataclasses.fields(settings):
        value = _other_value(hints[field.name], field.default)
        if field.name in fixed:
            with pytest.raises(MinitronError, match="always uses"):
                command_line(command, {field.name: value}, **REQUIRED[command])
            continue
        line = command_line(command, {field.name: value}, **REQUIRED[command])
        argv = shlex.split(line)
        flag = f"--{field.name.replace('_', '-')}"
        assert argv[0] == "minitron" and sum(word.split("=")[0] == flag for word in argv) == 1, line
        parsed = getattr(parser.parse_args(argv[1:]), field.name)
        parse = field.metadata.get("parse")  # token budgets: the CLI's text, parsed by the dataclass
        assert (parse(parsed) if parse else parsed) == value, line


def test_defaults_are_left_out_and_what_cannot_be_said_is_refused():
    assert command_argv("importance", DataConfig(), ImportanceConfig(), model="m", out="o") == \
        ["importance", "--model", "m", "--out", "o"]
    assert command_argv("search", {"samples": 1024}, model="m")[-2:] == ["--samples", "1024"]  # not search's default
    with pytest.raises(MinitronError, match="no option for learning_rate"):
        command_argv("distill", {"learning_rate": 1.0})
    with pytest.raises(MinitronError, match="back to None"):
        command_argv("eval", {"samples": None})
    with pytest.raises(MinitronError, match="cannot take criterion"):
        command_argv("prune", criterion="activation")
    with pytest.raises(MinitronError, match="cannot take hidden_size"):
        command_argv("prune", {"hidden_size": 36.5})


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parent.parent.glob("recipes/*.yaml")),
                         ids=lambda p: p.stem)
def test_every_shipped_recipe_prints_commands_with_its_settings(path, tmp_path):
    recipe = load_recipe(path)
    planned, _ = plan_stages(recipe, tmp_path)
    lines = reproduce_commands(Run(tmp_path, {"teacher": recipe.teacher, "recipe": recipe.raw, "stages": planned}))
    parsed = [_build_parser().parse_args(shlex.split(line)[1:]) for line in lines if line.startswith("minitron ")]
    distills = [from_args(DistillConfig, a) for a in parsed if a.command in ("distill", "finetune")]
    expected = [recipe.correction_config()] if recipe.correction is not None else []
    assert distills == expected + [stage.distill_config(recipe) for stage in recipe.stages]
    importance = [(from_args(DataConfig, a), from_args(ImportanceConfig, a)) for a in parsed
                  if a.command == "importance"]
    assert importance == [stage.importance_configs(recipe) for stage in recipe.stages]
    searches = [from_args(SearchConfig, a) for a in parsed if a.command == "search"]
    assert searches == [stage.search_config() for stage in recipe.stages if stage.search is not None]


# --- the must-hold: a tiny recipe, then its printed commands -------------------------------------

def _recipe(root) -> dict:
    quiet = {"warmup_steps": 1, "eval_every": 0, "eval_samples": 2, "save_every": 0}
    return {
        "teacher": str(root / "teacher"),
        "data": {"train": str(root / "data"), "seq_len": 16},
        "importance": {"samples": 8, "batch_size": 4, "layer_loss_samples": 4, "seq_reduction": "l2"},
        "correction": {"steps": 1, "lr": "1e-3", "micro_batch_size": 2, **quiet},
        "distill": {"steps": 2, "micro_batch_size": 2, "lr": "1e-3", "clip_grad": 0, "temperature": 2.0,
                    "seed": 3, **quiet},
        "stages": [
            {"name": "searched", "importance": {"batch_reduction": "mean"},
             "search": {"target_params": 0.8, "max_candidates": 2, "top_k": 1, "candidate_tokens": 32,
                        "candidate_batch_size": 2, "heldout_samples": 2, "candidate_lr": 2e-3}},
            {"name": "shallow", "target": {"intermediate_size": 32, "num_hidden_layers": 3},
             "depth_metric": "block_influence", "distill_from": "parent",
             "distill": {"loss": "reverse_kl", "lr": 7.5e-4, "min_lr": 1e-5}},
        ],
        "eval": {"samples": 2, "batch_size": 2, "throughput": False},
    }


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory):
    """The tiny recipe, run in a folder whose path needs quoting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("reproduce")
    torch.manual_seed(0)
    save_checkpoint(tiny_model("llama"), tiny_tokenizer(), root / "teacher", {"stage": "test"})
    (root / "data").mkdir()
    for i in range(30):
        text = " ".join(WORDS[(i * 5 + j * 3) % len(WORDS)] for j in range(50))
        (root / "data" / f"doc{i:02d}.txt").write_text(f"Document {i}. {text}.\n")
    recipe_file = root / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(_recipe(root), sort_keys=False))
    run_dir = root / "the run's folder"
    state = run_recipe(recipe_file, run_dir, device="cpu")
    yield run_dir, state
    torch.set_num_threads(threads)


def _printed_commands(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("minitron ")]


def test_printed_commands_reproduce_the_run(recipe_run, tmp_path, capsys):
    run_dir, state = recipe_run
    copy = tmp_path / "a copy's folder"
    shutil.copytree(run_dir, copy)
    page = build_report(copy).read_text()
    block = re.search(r"<h3>Commands to reproduce</h3><pre><code>(.*?)</code></pre>", page, re.S)
    commands = _printed_commands(html.unescape(block.group(1)))
    card = write_model_cards(copy)[-1].read_text()
    assert _printed_commands(card) == commands  # the last model's card prints the whole chain
    assert "does not record" not in page
    for stage in state["stages"]:
        shutil.rmtree(copy / stage["dir"])  # the printed commands must make every stage again

    steps = [shlex.split(line) for line in commands]
    steps.sort(key=lambda argv: argv[1] in ("run", "report"))  # stages first; then `run` finds them done
    for argv in steps:
        assert argv[0] == "minitron"
        assert main(argv[1:]) == 0, f"{shlex.join(argv)}\n{capsys.readouterr().err[-2000:]}"
    assert [argv[1] for argv in steps].count("importance") == 2 and "skipping 02-shallow (done)" in \
        capsys.readouterr().out

    for stage in state["stages"]:
        made, again = run_dir / stage["dir"], copy / stage["dir"]
        if stage["kind"] == "prune_distill":
            _same_scores(made / "scores", again / "scores")
            _same_weights(made / "pruned", again / "pruned", tolerance=0)
        _same_weights(made / "model", again / "model", tolerance=1e-6)
    searched = yaml.safe_load((run_dir / "01-searched/search/search.json").read_text())
    redone = yaml.safe_load((copy / "01-searched/search/search.json").read_text())
    assert redone["winner"]["target"] == searched["winner"]["target"] == state["stages"][1]["target"]
    assert [c["loss_pruned"] for c in redone["candidates"]] == [c["loss_pruned"] for c in searched["candidates"]]


def _same_scores(made, again) -> None:
    first, second = ImportanceScores.load(made), ImportanceScores.load(again)
    assert set(first.layers) == set(second.layers) == {"block_influence", "lm_loss"}
    for name in first.layers:
        assert torch.equal(first.layers[name], second.layers[name])
    for ours, theirs in zip([*first.neurons, *first.heads], [*second.neurons, *second.heads], strict=True):
        assert torch.equal(ours, theirs)
    assert torch.equal(first.hidden, second.hidden)


def _same_weights(made, again, tolerance: float) -> None:
    first, second = load_file(made / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(second[name], first[name], rtol=0, atol=tolerance, msg=name)
