"""No command destroys its inputs or files it did not write, and no user input reaches a traceback.

Every destructive case checks that the input folders are still there, byte for byte. Every test runs in
a temporary current folder: before the guard, `--out ""` meant the current folder and was deleted.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import minitron
import minitron.jobs
from minitron.cli import main
from minitron.distill.job import prepare_run_folder, resumable_folder
from minitron.errors import MinitronError
from minitron.importance import random_scores
from minitron.loading import save_checkpoint
from tests.tiny import tiny_model, tiny_tokenizer

TEXT = "\n\n".join(f"Line {i}: nothing given as an input may be lost, {i * 7 % 13}." for i in range(200))
TRAIN = ["--seq-len", "16", "--steps", "2", "--warmup-steps", "0", "--eval-every", "0", "--eval-samples", "2",
         "--micro-batch-size", "2", "--device", "cpu"]
WRITERS = ["importance", "prune", "distill", "finetune", "search", "run"]


@pytest.fixture(autouse=True)
def sandbox(tmp_path, monkeypatch) -> Path:
    """A current folder of its own for every test, so that a regression can only delete that."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("safety")
    torch.manual_seed(0)
    model = tiny_model("llama")
    save_checkpoint(model, tiny_tokenizer(), root / "model", {"stage": "test"})
    random_scores(model).save(root / "scores")
    (root / "corpus.txt").write_text(TEXT)
    recipe = {"teacher": str(root / "model"), "data": {"train": str(root / "corpus.txt"), "seq_len": 16},
              "importance": {"samples": 4, "batch_size": 4, "layer_loss_samples": 0},
              "distill": {"steps": 2, "warmup_steps": 0, "eval_every": 0, "eval_samples": 2, "save_every": 0},
              "stages": [{"name": "half", "target": {"intermediate_size": 32}}],
              "eval": {"samples": 2, "throughput": None}}
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return root


def snapshot(*paths: Path) -> dict:
    """Every file under `paths` with its content hash: equal snapshots mean nothing was lost."""
    files = {}
    for path in paths:
        found = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        files |= {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in found}
    return files


def command(name: str, root: Path, out, *extra: str) -> list[str]:
    """A minimal, valid command line of each command that writes an output."""
    model, scores, data = str(root / "model"), str(root / "scores"), str(root / "corpus.txt")
    argv = {
        "importance": ["importance", "--model", model, "--data", data, "--samples", "4", "--seq-len", "16"],
        "prune": ["prune", "--model", model, "--scores", scores, "--intermediate-size", "32"],
        "distill": ["distill", "--student", model, "--teacher", model, "--data", data, *TRAIN],
        "finetune": ["finetune", "--model", model, "--data", data, *TRAIN],
        "search": ["search", "--model", model, "--scores", scores, "--target-params", "0.8", "--data", data,
                   "--samples", "4", "--seq-len", "16", "--candidate-tokens", "0"],
        "run": ["run", str(root / "recipe.yaml"), "--device", "cpu"],
        "demo": ["demo", "--quick"],
    }[name]
    return [*argv, "--out", str(out), *extra]


def overwrite(name: str) -> list[str]:
    return [] if name == "demo" else ["--overwrite"]  # demo has no --overwrite


# --- item 0: outputs never replace inputs, the current folder or foreign files ----------------------

@pytest.mark.parametrize("name", WRITERS)
def test_the_output_cannot_be_an_input(root, name, capsys):
    """`--out MODEL --overwrite` used to replace the model by the output (or delete it, then fail)."""
    before = snapshot(root)
    assert main(command(name, root, root / "model", "--overwrite")) == 2
    assert "is the input" in capsys.readouterr().err
    assert snapshot(root) == before


@pytest.mark.parametrize("name", ["prune", "search"])
def test_the_output_cannot_be_the_scores(root, name, capsys):
    before = snapshot(root)
    assert main(command(name, root, root / "scores", "--overwrite")) == 2
    assert "is the input" in capsys.readouterr().err
    assert snapshot(root) == before


@pytest.mark.parametrize("name", WRITERS)
def test_an_output_that_holds_an_input_is_not_replaced(root, tmp_path, name, capsys):
    """A teacher (or the recipe) inside --out would go with it."""
    box = tmp_path / "box"
    shutil.copytree(root / "model", box / "model")
    (box / "minitron.json").write_text("{}")  # a minitron output, so only the input inside protects it
    argv = [str(box / "model") if a == str(root / "model") else a for a in command(name, root, box, "--overwrite")]
    if name == "run":
        recipe = yaml.safe_load((root / "recipe.yaml").read_text())
        (box / "recipe.yaml").write_text(yaml.safe_dump({**recipe, "teacher": str(box / "model")}))
        argv[1] = str(box / "recipe.yaml")
    before = snapshot(root, box)
    assert main(argv) == 2
    assert "holds the input" in capsys.readouterr().err
    assert snapshot(root, box) == before


@pytest.mark.parametrize("name", [*WRITERS, "demo"])
@pytest.mark.parametrize("where", [".", ".."])
def test_the_current_folder_and_its_parents_are_never_outputs(root, tmp_path, monkeypatch, name, where, capsys):
    """`distill --out . --overwrite` used to delete everything in the current folder, then crash."""
    work = tmp_path / "here" / "work"
    work.mkdir(parents=True)
    (work / "notes.txt").write_text("mine")
    (work / "minitron.json").write_text("{}")  # even a folder minitron wrote is not replaced from inside
    monkeypatch.chdir(work)
    before = snapshot(tmp_path / "here", root)
    assert main(command(name, root, where, *overwrite(name))) == 2
    assert "current folder" in capsys.readouterr().err
    assert snapshot(tmp_path / "here", root) == before


@pytest.mark.parametrize("name", [*WRITERS, "demo"])
def test_a_folder_minitron_did_not_write_is_never_replaced(root, tmp_path, name, capsys):
    """`--overwrite` is refused, and not offered, for a folder of the user's own files."""
    mine = tmp_path / "my-data"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    for extra in ([], overwrite(name)):
        assert main(command(name, root, mine, *extra)) == 2
        error = capsys.readouterr().err
        assert "not written by minitron" in error and "pass --overwrite" not in error
    assert snapshot(mine) == {str(mine / "thesis.txt"): hashlib.sha256(b"years of work").hexdigest()}


@pytest.mark.parametrize("name", ["distill", "finetune"])
def test_a_failed_overwrite_keeps_the_previous_output(root, tmp_path, name, capsys):
    """The old run folder used to be deleted before the new run had even read its data."""
    out = tmp_path / "out"
    assert main(command(name, root, out)) == 0
    before = snapshot(out)
    argv = [str(tmp_path / "missing.txt") if a == str(root / "corpus.txt") else a
            for a in command(name, root, out, "--overwrite")]
    assert main(argv) == 2 and "does not exist" in capsys.readouterr().err
    assert snapshot(out) == before
    assert main(command(name, root, out, "--overwrite", "--lr", "1e-3")) == 0  # and a good one replaces it
    assert json.loads((out / "minitron.json").read_text())["config"]["lr"] == 1e-3
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging folder left behind


def test_a_failed_recipe_overwrite_keeps_the_previous_run(root, tmp_path, capsys):
    out = tmp_path / "family"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"stages": [], "members": []}))
    (out / "report.html").write_text("the previous family")
    recipe = yaml.safe_load((root / "recipe.yaml").read_text())
    recipe["data"]["train"] = str(tmp_path / "missing.txt")
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(recipe))
    before = snapshot(out)
    assert main(["run", str(tmp_path / "broken.yaml"), "--out", str(out), "--overwrite", "--device", "cpu"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert snapshot(out) == before


def test_a_recipe_overwrite_replaces_the_run_once_complete(root, tmp_path):
    out = tmp_path / "family"
    minitron.run_recipe(root / "recipe.yaml", out, device="cpu", report=False)
    (out / "stale.txt").write_text("from the previous run")
    assert main(["run", str(root / "recipe.yaml"), "--out", str(out), "--overwrite", "--device", "cpu"]) == 0
    assert not (out / "stale.txt").exists() and (out / "01-half/model/config.json").is_file()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # the pending folder became the run
    records = [p.read_text() for p in out.rglob("minitron.json")]
    assert len(records) == 2 and not any(".pending" in text for text in records)  # paths point at the final place


def test_an_overwrite_run_trains_beside_the_old_output_and_resumes_there(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "minitron.json").write_text("{}")
    folder = prepare_run_folder(out, resume=False, overwrite=True, is_main=True)
    assert folder != out and folder.parent == out.parent and (out / "minitron.json").is_file()
    assert resumable_folder(out) is None
    (folder / "checkpoint").mkdir()
    (folder / "checkpoint" / "position.json").write_text("{}")
    assert resumable_folder(out) == folder
    assert prepare_run_folder(out, resume=True, overwrite=False, is_main=True) == folder


def test_a_prune_output_is_replaced_by_a_new_prune(root, tmp_path):
    out = tmp_path / "pruned"
    assert main(command("prune", root, out)) == 0
    assert main(command("prune", root, out)) == 2
    assert main([*command("prune", root, out, "--overwrite"), "--hidden-size", "36"]) == 0
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 36


# --- item 11: bad values get a message, never a traceback -------------------------------------------

@pytest.mark.parametrize("name", [*WRITERS, "demo"])
@pytest.mark.parametrize("bad", ["file", "", " "])
def test_a_file_or_empty_out_is_refused(root, sandbox, name, bad, capsys):
    (sandbox / "keep.txt").write_text("mine")
    out = str(root / "corpus.txt") if bad == "file" else bad
    before = snapshot(root, sandbox)
    assert main(command(name, root, out, *overwrite(name))) == 2
    assert ("is a file" if bad == "file" else "is empty") in capsys.readouterr().err
    assert snapshot(root, sandbox) == before


INPUT_FLAGS = [("importance", "--model"), ("importance", "--data"), ("prune", "--model"), ("prune", "--scores"),
               ("distill", "--student"), ("distill", "--teacher"), ("distill", "--data"), ("finetune", "--model"),
               ("search", "--model"), ("search", "--scores"), ("search", "--teacher"), ("search", "--data"),
               ("importance", "--device"), ("prune", "--dtype")]


@pytest.mark.parametrize("name, flag", INPUT_FLAGS)
@pytest.mark.parametrize("bad", ["", ".", "file", "folder"])
def test_bad_inputs_get_a_message(root, tmp_path, name, flag, bad, capsys):
    """Empty values, `.` (an empty current folder), a file where a folder is expected and the reverse."""
    if (flag, bad) == ("--data", "file"):
        pytest.skip("a text file is valid data")
    empty = tmp_path / "empty"
    empty.mkdir()
    value = {"": "", ".": ".", "file": str(root / "corpus.txt"), "folder": str(empty)}[bad]
    argv = command(name, root, tmp_path / "out")
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    assert main(argv) == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("argv", [["inspect", ""], ["inspect", "."], ["inspect", "{corpus}"], ["report", ""],
                                  ["report", "."], ["report", "{corpus}"], ["run", ""], ["run", "."],
                                  ["run", "{corpus}"], ["eval", "--model", "", "--samples", "2"],
                                  ["eval", "--model", "{model}", "--data", "", "--samples", "2"],
                                  ["eval", "--model", "{model}", "--device", "gpu7"]])
def test_read_only_commands_get_a_message(root, argv, capsys):
    argv = [a.format(corpus=root / "corpus.txt", model=root / "model") for a in argv]
    assert main(argv) == 2
    assert "error:" in capsys.readouterr().err


def _api_calls(root: Path) -> dict:
    model, tokenizer = minitron.load_model(str(root / "model"))
    scores = minitron.ImportanceScores.load(root / "scores")
    blocks = torch.randint(0, 100, (2, 8))
    target = {"intermediate_size": 32}
    return {
        "prune(model, None, target)": lambda: minitron.prune(model, None, target),
        "prune(None, scores, target)": lambda: minitron.prune(None, scores, target),
        "prune(model, scores, None)": lambda: minitron.prune(model, scores, None),
        "estimate_importance(None, batches)": lambda: minitron.estimate_importance(None, [blocks]),
        "load_model(None)": lambda: minitron.load_model(None),
        "load_model('')": lambda: minitron.load_model(""),
        "token_blocks(None, tokenizer)": lambda: minitron.token_blocks(None, tokenizer, 8, 2),
        "token_blocks(spec, None)": lambda: minitron.token_blocks(str(root / "corpus.txt"), None, 8, 2),
        "ImportanceScores.load(None)": lambda: minitron.ImportanceScores.load(None),
        "save_checkpoint(None, ...)": lambda: minitron.save_checkpoint(None, tokenizer, root / "x", {}),
        "save_checkpoint(model, ..., '.')": lambda: minitron.save_checkpoint(model, tokenizer, ".", {}),
        "scores.save(a file)": lambda: scores.save(root / "corpus.txt"),
        "describe_pruning(None, target)": lambda: minitron.describe_pruning(None, target),
        "run_search(None, ...)": lambda: minitron.run_search(None, root / "x", minitron.SearchConfig(0.5),
                                                             scores=None, teacher=None, data=None),
        "run_search(model, None, None)": lambda: minitron.run_search(str(root / "model"), None, None,
                                                                     scores=None, teacher=None, data=None),
        "run_recipe(None)": lambda: minitron.run_recipe(None),
        "build_report(None)": lambda: minitron.build_report(None),
        "jobs.run_prune(model, None, target)": lambda: minitron.jobs.run_prune(str(root / "model"), None, target),
        "jobs.run_importance(None, out)": lambda: minitron.jobs.run_importance(None, str(root / "x")),
    }


def test_python_api_none_and_empty_values_raise_minitron_errors(root, sandbox):
    """`minitron.prune(model, None, target)` used to end in an AttributeError deep inside."""
    before = snapshot(root)
    failures = {}
    for call, run in _api_calls(root).items():
        try:
            run()
            failures[call] = "no error"
        except MinitronError as error:
            if not isinstance(error, (ValueError, FileNotFoundError)):
                failures[call] = f"{type(error).__name__} is neither a ValueError nor a FileNotFoundError"
        except Exception as error:  # noqa: BLE001 - the point is to list every raw one
            failures[call] = repr(error)
    assert failures == {}
    assert snapshot(root) == before and not any(sandbox.iterdir())


def test_error_classes_are_the_builtins_callers_expect(root):
    with pytest.raises(ValueError):
        minitron.prune(minitron.load_model(str(root / "model"))[0], None, {"hidden_size": 8})
    with pytest.raises(FileNotFoundError):
        minitron.load_model(str(root / "no-such-folder/"))
    with pytest.raises(FileNotFoundError):
        minitron.ImportanceScores.load(root / "no-such-scores")
    with pytest.raises(ValueError):
        minitron.DistillConfig(steps=-1)


def test_python_dash_m_minitron_runs_the_cli(root):
    result = subprocess.run([sys.executable, "-m", "minitron", "inspect", str(root / "model"), "--json"],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["hidden_size"] == 48
