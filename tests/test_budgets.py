"""Token budgets are written as people write them (94e9, 94B, 500M, 2.5k) wherever one is taken:
the Python API, every CLI flag and every recipe field."""
import pytest

from minitron.cli import _build_parser, from_args, main
from minitron.config import DistillConfig, parse_token_count
from minitron.errors import MinitronError
from minitron.recipe import parse_recipe
from minitron.search import SearchConfig


@pytest.mark.parametrize("text, tokens", [
    (94_000_000_000, 94_000_000_000), ("94000000000", 94_000_000_000), ("94e9", 94_000_000_000),
    (94e9, 94_000_000_000), ("94B", 94_000_000_000), ("94b", 94_000_000_000), ("94G", 94_000_000_000),
    ("500M", 500_000_000), ("2.5k", 2_500), (" 2.5 K ", 2_500), ("1.5T", 1_500_000_000_000),
    ("1_000_000", 1_000_000), ("1.25e3", 1_250), ("0", 0),
])
def test_token_counts(text, tokens):
    assert parse_token_count(text) == tokens and isinstance(parse_token_count(text), int)


@pytest.mark.parametrize("text, message", [
    ("lots", "not a whole number of tokens"), ("94x", "not a whole number"), ("1.5", "not a whole number"),
    ("2.5e-4k", "not a whole number"), ("", "not a whole number"), ("B", "not a whole number"),
    ("1,000", "not a whole number"), (True, "not a whole number"), (float("nan"), "not a whole number"),
    ("1e30", "more than 1e18"), ("1e999999", "not a whole number"),
])
def test_garbage_is_refused(text, message):
    with pytest.raises(MinitronError, match=message):
        parse_token_count(text)


def test_api_configs_take_budgets_as_text():
    assert DistillConfig(tokens="94B").tokens == 94_000_000_000
    assert SearchConfig(target_params=0.5, candidate_tokens="16k").candidate_tokens == 16_000
    with pytest.raises(MinitronError, match=r"--tokens: 'plenty' is not a whole number.*94B"):
        DistillConfig(tokens="plenty")
    with pytest.raises(MinitronError, match="--tokens must be positive"):
        DistillConfig(tokens="-1k")


@pytest.mark.parametrize("command", ["distill", "finetune"])
def test_cli_tokens_flag(command):
    model = ["--student", "s", "--teacher", "t"] if command == "distill" else ["--model", "m"]
    args = _build_parser().parse_args([command, *model, "--out", "o", "--tokens", "94B"])
    assert from_args(DistillConfig, args).tokens == 94_000_000_000


def test_cli_candidate_tokens_flag():
    args = _build_parser().parse_args(["search", "--model", "m", "--target-params", "0.5",
                                       "--candidate-tokens", "2.5k"])
    assert from_args(SearchConfig, args).candidate_tokens == 2_500


def test_cli_refuses_a_garbage_budget(tmp_path, capsys):
    argv = ["finetune", "--model", "m", "--data", "d.txt", "--out", str(tmp_path / "o"), "--tokens", "94x"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "--tokens: '94x' is not a whole number of tokens" in error and "Traceback" not in error
    assert not (tmp_path / "o").exists()


def _recipe(tmp_path, **sections):
    return {"teacher": str(tmp_path), "stages": [{"name": "a", "target": {"hidden_size": 36}}], **sections}


def test_recipe_budgets(tmp_path):
    recipe = parse_recipe(_recipe(tmp_path, distill={"tokens": "94B"}, correction={"tokens": "500M"}))
    assert recipe.stages[0].distill_config(recipe).tokens == 94_000_000_000
    assert recipe.correction_config().tokens == 500_000_000
    searched = parse_recipe({**_recipe(tmp_path, distill={"steps": 1}), "stages": [
        {"name": "a", "search": {"target_params": 0.5, "candidate_tokens": "2.5k"}}]})
    assert searched.stages[0].search_config().candidate_tokens == 2_500


def test_recipe_refuses_a_garbage_budget(tmp_path):
    with pytest.raises(MinitronError, match=r"recipe: distill\.tokens: 'many' is not a whole number of tokens"):
        parse_recipe(_recipe(tmp_path, distill={"tokens": "many"}))
