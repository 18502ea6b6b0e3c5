"""Layer lists (`--drop-layers`, recipe `drop_layers`): anything but distinct in-range layers is refused."""
import pytest
import torch

from minitron.cli import main
from minitron.errors import MinitronError
from minitron.recipe import parse_recipe, plan_recipe
from tests.tiny import tiny_config, tiny_model, tiny_tokenizer

# (spec, what the message says); the tiny models have layers 0..3.
BAD_LAYER_LISTS = [
    ("2-1", "runs backwards"),
    ("1,1", "more than once"),
    ("0-2,2", "more than once"),
    ("-1", "negative"),
    ("99", "out of range"),
    ("a", "cannot read 'a'"),
    ("1-", "cannot read '1-'"),
    (",", "empty entry"),
    ("1,,2", "empty entry"),
    ("", "empty"),
    ("0-3", "remove all 4 layers"),
]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("layer_lists") / "model"
    torch.manual_seed(0)
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("spec,message", BAD_LAYER_LISTS)
def test_malformed_drop_layers_are_refused_on_the_cli(saved_model, tmp_path, capsys, spec, message):
    out = tmp_path / "pruned"
    code = main(["prune", "--model", str(saved_model), "--out", str(out), "--criterion", "magnitude",
                 f"--drop-layers={spec}"])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_well_formed_layer_list_prunes_those_layers(saved_model, tmp_path):
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(saved_model), "--out", str(out), "--criterion", "magnitude",
                 "--drop-layers", " 1 - 2 "]) == 0
    assert '"num_hidden_layers": 2' in (out / "config.json").read_text()


def _recipe(drop_layers) -> dict:
    return {"teacher": "unused", "distill": {"steps": 1},
            "stages": [{"name": "shallow", "target": {"drop_layers": drop_layers}}]}


@pytest.mark.parametrize("spec,message", [*BAD_LAYER_LISTS, ([1, 1], "more than once"), ([], "no layers"),
                                          ([-1], "negative"), ([0, "1"], "not a layer index"),
                                          ([4], "out of range"), ([0, 1, 2, 3], "remove all 4 layers")])
def test_malformed_drop_layers_are_refused_in_recipes(spec, message):
    # Syntax is checked when the recipe is read; the range once the teacher's config is known (dry run, run).
    with pytest.raises(MinitronError, match=message):
        plan_recipe(parse_recipe(_recipe(spec)), tiny_config("llama"))


def test_recipe_layer_lists_as_string_or_list_agree():
    as_string, as_list = parse_recipe(_recipe("0,2-3")), parse_recipe(_recipe([0, 2, 3]))
    assert as_string.stages[0].target == as_list.stages[0].target == {"drop_layers": [0, 2, 3]}
    assert plan_recipe(as_string, tiny_config("llama"))[0]["architecture"]["num_hidden_layers"] == 1
