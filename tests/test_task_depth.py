"""The seeds' depth rule: drop the contiguous block of layers whose absence costs a task the least accuracy.

The task is a tiny multiple-choice task in a local lm-eval task folder (YAML + JSONL), no network.
"""
import json
import sys

import pytest
import torch

from minitron.cli import main
from minitron.errors import MinitronError
from minitron.importance import ImportanceScores
from tests.helpers import make_identity_layer_
from tests.tiny import tiny_model, tiny_tokenizer

lm_eval = pytest.importorskip("lm_eval")
TASK = "minitron_tiny_choice"
WORDS = ["fox", "dog", "tensor", "neuron", "layer", "hello", "print", "zeros", "quick", "lazy", "sum", "name"]


def write_task(folder, labels: list[int] | None = None):
    """A 4-way task: a context of a few corpus words, four one-word choices; labels as given (else 0)."""
    generator = torch.Generator().manual_seed(7)
    items = []
    for index in range(24):
        words = [WORDS[int(i)] for i in torch.randint(0, len(WORDS), (7,), generator=generator)]
        items.append({"context": " ".join(words[:3]), "choices": words[3:], "label": labels[index] if labels else 0})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{TASK}.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    (folder / f"{TASK}.yaml").write_text(
        f"task: {TASK}\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    test: {folder / (TASK + '.jsonl')}\n"
        "output_type: multiple_choice\ntest_split: test\ndoc_to_text: context\ndoc_to_choice: choices\n"
        "doc_to_target: label\ntarget_delimiter: \" \"\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\nmetadata:\n  version: 1.0\n")
    return folder


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny llama whose layers 1 and 2 are identities, and a task its intact self answers perfectly
    (each label is the choice the intact model prefers, read back from lm-eval's own samples)."""
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    root = tmp_path_factory.mktemp("task_depth")
    torch.manual_seed(0)
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    make_identity_layer_(model, 1)
    make_identity_layer_(model, 2)
    tasks = write_task(root / "tasks")
    harness_model = HFLM(pretrained=model, tokenizer=tokenizer, device="cpu", batch_size=8)
    results = lm_eval.simple_evaluate(model=harness_model, tasks=[TASK],
                                      task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
                                      bootstrap_iters=0, log_samples=True)
    samples = sorted(results["samples"][TASK], key=lambda sample: sample["doc_id"])
    labels = [max(range(4), key=lambda c: sample["filtered_resps"][c][0]) for sample in samples]
    write_task(tasks, labels)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root


def _importance(root, out, *extra) -> int:
    return main(["importance", "--model", str(root / "model"), "--out", str(out), "--criterion", "magnitude",
                 "--depth-metric", f"task:{TASK}", "--task-path", str(root / "tasks"), "--seq-len", "64", *extra])


def test_the_block_whose_absence_costs_no_accuracy_is_dropped(workspace, tmp_path):
    assert _importance(workspace, tmp_path / "scores", "--task-block", "2") == 0
    accuracy = ImportanceScores.load(tmp_path / "scores").layers[f"task:{TASK}:drop2"]
    # Blocks [0, 2), [1, 3), [2, 4): only the identity block [1, 3) leaves every answer as it was.
    assert accuracy[1] == 1.0 and accuracy[0] < 1.0 and accuracy[2] < 1.0 and accuracy[3].isnan()
    out = tmp_path / "pruned"
    assert main(["prune", "--model", str(workspace / "model"), "--scores", str(tmp_path / "scores"),
                 "--depth-metric", f"task:{TASK}", "--num-hidden-layers", "2", "--out", str(out)]) == 0
    assert json.loads((out / "minitron.json").read_text())["kept_layers"] == [0, 3]


def test_a_target_of_another_depth_asks_for_matching_task_scores(workspace, tmp_path, capsys):
    assert _importance(workspace, tmp_path / "scores", "--task-block", "1", "--task-limit", "4") == 0
    code = main(["prune", "--model", str(workspace / "model"), "--scores", str(tmp_path / "scores"),
                 "--depth-metric", f"task:{TASK}", "--num-hidden-layers", "2", "--out", str(tmp_path / "pruned")])
    assert code == 2 and "--task-block 2" in capsys.readouterr().err
    assert not (tmp_path / "pruned").exists()


@pytest.mark.parametrize("extra,message", [
    # An unknown name is looked up among lm-eval's built-in tasks too, which takes about a minute to index.
    pytest.param(["--task-block", "2", "--depth-metric", "task:no_such_task"], "no task 'no_such_task'",
                 marks=pytest.mark.slow),
    ([], "needs --task-block"),
    (["--task-block", "4"], "1 to 3")])
def test_bad_task_settings_are_refused_before_any_work(workspace, tmp_path, capsys, extra, message):
    assert _importance(workspace, tmp_path / "scores", *extra) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "scores").exists()


def test_a_missing_lm_eval_is_said_plainly(workspace, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # what `import lm_eval` meets without the package
    assert _importance(workspace, tmp_path / "scores", "--task-block", "2") == 2
    assert "pip install 'minitron[eval]'" in capsys.readouterr().err


def _recipe(target: dict) -> dict:
    return {"teacher": "unused", "distill": {"steps": 1},
            "stages": [{"name": "shallow", "target": target, "depth_metric": f"task:{TASK}"}]}


def test_a_recipe_stage_ranks_the_blocks_its_target_drops():
    from minitron.recipe import parse_recipe
    recipe = parse_recipe(_recipe({"num_hidden_layers": 2}))
    _, settings = recipe.stages[0].importance_configs(recipe, task_block=2)
    assert settings.depth_metric == f"task:{TASK}" and settings.task_block == 2
    with pytest.raises(MinitronError, match="a fixed target drops"):
        parse_recipe(_recipe({"drop_layers": [1, 2]}))
