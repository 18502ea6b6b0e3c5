"""The Hugging Face user's habits: dtypes as in transformers, paths that are paths, any causal LM where
nothing family-specific is needed, and one switch for progress bars and logs."""
import json
import time

import pytest
import torch
import yaml
from safetensors import safe_open

from minitron.cli import main
from minitron.config import DistillConfig, cpu_has_amx_bf16
from minitron.distill.resume import check_resume, run_settings
from minitron.loading import save_checkpoint
from minitron.recipe import load_recipe
from minitron.verbosity import progress_bar, verbosity
from tests.tiny import GENERIC_FAMILIES, tiny_generic_model, tiny_model, tiny_tokenizer

TEXT = "\n\n".join(f"Note {i}: a pruned student keeps what matters and learns the rest, item {i * 5 % 11}."
                   for i in range(200))
TRAIN = ["--seq-len", "16", "--steps", "1", "--micro-batch-size", "2", "--warmup-steps", "0", "--eval-every", "0",
         "--eval-samples", "2", "--device", "cpu", "--precision", "fp32"]
DATA = ["--samples", "4", "--seq-len", "16", "--batch-size", "4"]


def _no_progress_bar(text: str) -> bool:
    return "%|" not in text and "it/s" not in text and "s/it" not in text


def _dtypes(folder) -> set[torch.dtype]:
    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        return {weights.get_tensor(name).dtype for name in weights.keys()}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("habits")
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    save_checkpoint(tiny_model("llama").to(torch.bfloat16), tokenizer, root / "bf16", {"stage": "test"})
    save_checkpoint(tiny_model("llama"), tokenizer, root / "fp32", {"stage": "test"})
    for family in GENERIC_FAMILIES:
        save_checkpoint(tiny_generic_model(family), tokenizer, root / family, {"stage": "test"})
    (root / "corpus.txt").write_text(TEXT)
    return root


# --- 1. dtypes as in transformers -------------------------------------------------------------------

def test_a_bf16_model_is_pruned_and_saved_in_bf16(workspace, capfd):
    source, pruned = workspace / "bf16", workspace / "bf16-pruned"
    assert _dtypes(source) == {torch.bfloat16}
    assert main(["prune", "--model", str(source), "--criterion", "magnitude", "--intermediate-size", "32",
                 "--hidden-size", "36", "--out", str(pruned)]) == 0
    assert _dtypes(pruned) == {torch.bfloat16}
    assert json.loads((pruned / "config.json").read_text())["dtype"] == "bfloat16"
    assert (pruned / "model.safetensors").stat().st_size < (source / "model.safetensors").stat().st_size
    widened = workspace / "bf16-pruned-fp32"
    assert main(["prune", "--model", str(source), "--criterion", "magnitude", "--intermediate-size", "32",
                 "--save-dtype", "float32", "--out", str(widened)]) == 0
    assert _dtypes(widened) == {torch.float32}


def test_distilling_a_bf16_student_trains_in_fp32_and_saves_bf16(workspace):
    out = workspace / "bf16-distilled"
    assert main(["distill", "--student", str(workspace / "bf16"), "--teacher", str(workspace / "fp32"),
                 "--data", str(workspace / "corpus.txt"), "--out", str(out), *TRAIN]) == 0
    assert _dtypes(out) == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_precision_auto_is_bf16_only_where_bf16_is_native():
    assert DistillConfig(steps=1).student_bf16("cpu") is cpu_has_amx_bf16()
    assert not DistillConfig(steps=1, precision="fp32").student_bf16("cpu")
    assert DistillConfig(steps=1, precision="bf16").student_bf16("cpu")
    with open("/proc/cpuinfo") as cpuinfo:
        assert cpu_has_amx_bf16() == ("amx_bf16" in cpuinfo.read().split())


# --- 3. paths are paths -----------------------------------------------------------------------------

@pytest.mark.parametrize("argv, online", [
    (["inspect", "./nope"], True), (["eval", "--model", "models/nope"], True), (["inspect", "mine/nope"], True),
    (["prune", "--model", "/no/such/model", "--criterion", "random", "--hidden-size", "8", "--out", "x"], True),
    (["inspect", "nobody/nothing"], False)])
def test_a_missing_local_model_fails_at_once(argv, online, tmp_path, monkeypatch, capsys):
    """Paths fail before any Hub request (here, with no network, a request would retry for minutes);
    under HF_HUB_OFFLINE=1 so does an id the cache does not hold."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()  # mine/nope is a path here: ./mine is a folder
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", not online)
    started = time.perf_counter()
    assert main(argv) == 2
    assert time.perf_counter() - started < 2
    assert "no such folder" in capsys.readouterr().err


def test_relative_paths_in_a_recipe_mean_the_recipe_folder(workspace, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "project" / "recipes"
    folder.mkdir(parents=True)
    (folder / "texts").mkdir()
    (folder / "texts" / "a.txt").write_text(TEXT)
    recipe = {"teacher": "../../teacher", "data": {"train": "texts", "seq_len": 16}, "distill": {"steps": 1},
              "stages": [{"name": "half", "target": {"intermediate_size": 32}}]}
    (tmp_path / "teacher").symlink_to(workspace / "fp32")
    (folder / "tiny.yaml").write_text(yaml.safe_dump(recipe))
    monkeypatch.chdir(tmp_path / "project")  # somewhere else than the recipe's folder
    loaded = load_recipe("recipes/tiny.yaml")
    assert loaded.teacher == str(folder / "../../teacher") and loaded.data.train == str(folder / "texts")
    assert main(["run", "recipes/tiny.yaml", "--dry-run"]) == 0
    assert "half" in capsys.readouterr().out


# --- 4. any causal LM where nothing family-specific is needed ---------------------------------------

@pytest.mark.parametrize("family", GENERIC_FAMILIES)
def test_any_causal_lm_inspects_evaluates_and_distills(workspace, family, capsys):
    model = str(workspace / family)
    assert main(["inspect", model, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    reference = tiny_generic_model(family)
    assert info["model_type"] == family
    assert info["params"]["total"] == sum(p.numel() for p in reference.parameters())
    assert info["params"]["embedding"] == 320 * 48 * (1 if reference.config.tie_word_embeddings else 2)
    assert main(["eval", "--model", model, "--data", str(workspace / "corpus.txt"), *DATA]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] > 0
    out = workspace / f"{family}-distilled"
    assert main(["distill", "--student", model, "--teacher", model, "--data", str(workspace / "corpus.txt"),
                 "--out", str(out), *TRAIN]) == 0
    assert (out / "config.json").is_file()


@pytest.mark.parametrize("family", GENERIC_FAMILIES)
def test_family_specific_stages_say_not_supported_yet(workspace, family, tmp_path, capsys):
    model, corpus = str(workspace / family), str(workspace / "corpus.txt")
    for argv in (["importance", "--model", model, "--data", corpus, *DATA, "--out", str(tmp_path / "s")],
                 ["prune", "--model", model, "--criterion", "magnitude", "--intermediate-size", "32",
                  "--out", str(tmp_path / "p")],
                 ["distill", "--student", model, "--teacher", model, "--data", corpus, "--hidden-loss", "cosine",
                  "--out", str(tmp_path / "d"), *TRAIN]):
        assert main(argv) == 2, argv[0]
        assert "not supported yet" in capsys.readouterr().err, argv[0]
        assert not (tmp_path / "p").exists()


# --- 5. logging and progress ------------------------------------------------------------------------

def test_every_command_is_quiet_with_quiet(workspace, tmp_path, capfd):
    """--quiet before or after the command: no bar from minitron, transformers or datasets anywhere."""
    teacher, corpus = str(workspace / "fp32"), str(workspace / "corpus.txt")
    scores, pruned = str(tmp_path / "scores"), str(tmp_path / "pruned")
    recipe = tmp_path / "family.yaml"
    recipe.write_text(yaml.safe_dump({
        "teacher": teacher, "data": {"train": corpus, "seq_len": 16},
        "importance": {"samples": 4, "batch_size": 4, "layer_loss_samples": 0},
        "distill": {"steps": 1, "micro_batch_size": 2, "warmup_steps": 0, "eval_every": 0, "eval_samples": 2,
                    "precision": "fp32"},
        "stages": [{"name": "half", "target": {"intermediate_size": 32}}],
        "eval": {"samples": 2, "batch_size": 2, "throughput": None}}))
    commands = [
        ["--quiet", "importance", "--model", teacher, "--data", corpus, *DATA, "--layer-loss-samples", "4",
         "--out", scores],
        ["prune", "--model", teacher, "--scores", scores, "--intermediate-size", "32", "--out", pruned, "-q"],
        ["inspect", pruned, "--quiet"],
        ["eval", "--model", pruned, "--data", corpus, *DATA, "--quiet"],
        ["distill", "--student", pruned, "--teacher", teacher, "--data", corpus, "--out", str(tmp_path / "d"),
         *TRAIN, "--quiet"],
        ["finetune", "--model", teacher, "--data", corpus, "--out", str(tmp_path / "f"), *TRAIN, "--quiet"],
        ["search", "--model", teacher, "--scores", scores, "--target-params", "0.7", "--data", corpus, *DATA,
         "--heldout-samples", "2", "--candidate-tokens", "0", "--hidden-step", "12", "--mlp-step", "16",
         "--max-candidates", "2", "--out", str(tmp_path / "nas"), "--quiet"],
        ["run", str(recipe), "--out", str(tmp_path / "run"), "--quiet"],
        ["report", str(tmp_path / "run"), "--quiet"],
        ["tokenize", "--data", corpus, "--tokenizer", teacher, "--out", str(tmp_path / "tokens"), "--quiet"],
    ]
    capfd.readouterr()
    for argv in commands:
        assert main(argv) == 0, argv
        printed = capfd.readouterr()
        assert _no_progress_bar(printed.err + printed.out), (argv, printed.err[-500:])


def test_bars_show_by_default_and_obey_tqdm_disable(workspace, capfd, monkeypatch):
    """The other side of --quiet: without it a bar is drawn (so the test above can fail), TQDM_DISABLE stops it,
    and under torchrun only rank 0 draws."""
    capfd.readouterr()
    assert main(["eval", "--model", str(workspace / "fp32"), "--data", str(workspace / "corpus.txt"), *DATA]) == 0
    assert not _no_progress_bar(capfd.readouterr().err)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert main(["eval", "--model", str(workspace / "fp32"), "--data", str(workspace / "corpus.txt"), *DATA]) == 0
    assert _no_progress_bar(capfd.readouterr().err)
    monkeypatch.delenv("TQDM_DISABLE")
    monkeypatch.setenv("RANK", "1")
    with verbosity("normal"):
        list(progress_bar(range(3), mininterval=0))
    assert _no_progress_bar(capfd.readouterr().err)


def test_a_resume_may_change_where_metrics_are_reported():
    """--report-to moves no trajectory: a resume honours a change of it and records it."""
    saved = {**run_settings(DistillConfig(steps=4), 1, "cpu"), "step": 2}
    current = {**run_settings(DistillConfig(steps=4), 1, "cpu"), "report_to": "wandb"}
    assert check_resume(saved, current, "out") == [{"step": 2, "changed": {"report_to": {"from": "none",
                                                                                          "to": "wandb"}}}]


def test_report_to_tensorboard(workspace, tmp_path, capsys):
    argv = ["finetune", "--model", str(workspace / "fp32"), "--data", str(workspace / "corpus.txt"),
            "--out", str(tmp_path / "f"), *TRAIN, "--quiet"]
    assert main([*argv, "--report-to", "nowhere"]) == 2
    assert "--report-to must be one of" in capsys.readouterr().err
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert main([*argv, "--report-to", "tensorboard"]) == 2
        assert "pip install tensorboard" in capsys.readouterr().err
        assert not (tmp_path / "f").exists()
        pytest.skip("tensorboard is not installed here: only its clear error is checked")
    assert main([*argv, "--report-to", "tensorboard"]) == 0
    assert list((tmp_path / "f" / "tensorboard").glob("events.out.tfevents.*"))
