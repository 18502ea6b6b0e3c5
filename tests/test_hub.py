"""`--push-to-hub REPO`: every command that writes a model uploads it, with its model card, once complete.

No network: huggingface_hub's real client talks to a small Hub served on localhost (tests/fake_hub.py).
huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE once, at import (and conftest sets offline mode), so
the `hub` fixture sets the two constants those variables fill; nothing in the client is replaced.
"""
import json

import huggingface_hub.constants
import pytest
import torch

from minitron.cli import main
from minitron.loading import save_checkpoint
from tests.fake_hub import FakeHub
from tests.tiny import tiny_model, tiny_tokenizer

TEXT = "\n\n".join(f"Note {i}: a pruned student keeps what matters and learns the rest, item {i * 5 % 11}."
                   for i in range(200))
TRAIN = ["--seq-len", "16", "--steps", "1", "--micro-batch-size", "2", "--warmup-steps", "0", "--eval-every", "0",
         "--eval-samples", "2", "--device", "cpu", "--precision", "fp32", "--quiet"]
PRUNE = ["--criterion", "magnitude", "--hidden-size", "36", "--intermediate-size", "32", "--quiet"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    torch.manual_seed(0)
    save_checkpoint(tiny_model("llama"), tiny_tokenizer(), root / "teacher", {"stage": "test"})
    (root / "corpus.txt").write_text(TEXT)
    return root


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with FakeHub() as fake:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", fake.url)  # = HF_ENDPOINT at import
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # = HF_HUB_OFFLINE=0
        monkeypatch.setenv("HF_TOKEN", "hf_test_token")
        yield fake


def _same_files(folder, pushed: dict) -> None:
    local = {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    assert pushed == local


def test_prune_pushes_the_model_and_its_card(workspace, hub, capsys):
    out = workspace / "pruned"
    assert main(["prune", "--model", str(workspace / "teacher"), *PRUNE, "--out", str(out),
                 "--push-to-hub", "me/tiny-pruned", "--hub-private"]) == 0
    repo = hub.repos["me/tiny-pruned"]
    assert repo["private"] and len(repo["commits"]) == 1
    assert {"config.json", "model.safetensors", "tokenizer.json", "minitron.json", "README.md"} <= set(repo["files"])
    _same_files(out, repo["files"])  # the card is written into the folder too: what is on disk is what is on the Hub
    card = repo["files"]["README.md"].decode()
    assert card.startswith("---\nlicense: ") and "a pruned version of" in card
    assert "minitron prune --model" in card and "push-to-hub" not in card  # how to reproduce, minus the upload
    assert "from_pretrained('me/tiny-pruned')" in card
    assert "pushed" in capsys.readouterr().out


def test_distill_and_finetune_push_the_final_model_only(workspace, hub):
    student, data = workspace / "teacher", ["--data", str(workspace / "corpus.txt")]
    assert main(["finetune", "--model", str(student), *data, *TRAIN, "--save-every", "1",
                 "--out", str(workspace / "tuned"), "--push-to-hub", "tiny-tuned"]) == 0
    assert main(["distill", "--student", str(student), "--teacher", str(workspace / "tuned"), *data, *TRAIN,
                 "--out", str(workspace / "distilled"), "--push-to-hub", "me/tiny-distilled"]) == 0
    tuned, distilled = hub.repos["tester/tiny-tuned"], hub.repos["me/tiny-distilled"]
    assert not tuned["private"] and "fine-tuned version" in tuned["files"]["README.md"].decode()
    assert "from_pretrained('tester/tiny-tuned')" in tuned["files"]["README.md"].decode()  # NAME: the user's repo
    assert "pruned and distilled" in distilled["files"]["README.md"].decode()
    for repo in (tuned, distilled):
        assert "model.safetensors" in repo["files"] and "metrics.jsonl" in repo["files"]
        assert not any(path.startswith(("checkpoint/", ".")) for path in repo["files"])


def test_a_failed_push_says_the_model_is_safe_on_disk(workspace, hub, capsys):
    hub.fail_with = 401
    out = workspace / "pruned-unpushed"
    assert main(["prune", "--model", str(workspace / "teacher"), *PRUNE, "--out", str(out),
                 "--push-to-hub", "me/tiny"]) == 2
    error = capsys.readouterr().err
    assert f"The model is safe on disk at {out}" in error and "hf upload me/tiny" in error
    assert "Traceback" not in error and (out / "model.safetensors").is_file()


@pytest.mark.parametrize("repo, offline, token, message", [
    ("me/not/a-repo", False, "hf_x", "not a Hub repo id"),
    ("me/tiny", True, "hf_x", "HF_HUB_OFFLINE"),
    ("me/tiny", False, None, "hf auth login"),
])
def test_a_push_that_cannot_work_is_refused_before_any_work(workspace, monkeypatch, tmp_path, capsys,
                                                            repo, offline, token, message):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    if token:
        monkeypatch.setenv("HF_TOKEN", token)
    out = tmp_path / "never"
    assert main(["prune", "--model", str(workspace / "teacher"), *PRUNE, "--out", str(out),
                 "--push-to-hub", repo]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_a_recipe_run_pushes_every_stage(workspace, hub, tmp_path):
    recipe = {"teacher": str(workspace / "teacher"), "data": {"train": str(workspace / "corpus.txt"), "seq_len": 16},
              "importance": {"samples": 4, "batch_size": 4, "layer_loss_samples": 0},
              "distill": {"steps": 1, "micro_batch_size": 2, "warmup_steps": 0, "eval_every": 0, "eval_samples": 2,
                          "save_every": 0, "precision": "fp32"},
              "stages": [{"name": "small", "target": {"intermediate_size": 32}}],
              "eval": {"samples": 2, "batch_size": 2, "throughput": False}}
    path = tmp_path / "family.yaml"
    path.write_text(json.dumps(recipe))  # JSON is YAML
    run_dir = tmp_path / "run"
    assert main(["run", str(path), "--out", str(run_dir), "--device", "cpu", "--quiet",
                 "--push-to-hub", "me/family"]) == 0
    assert list(hub.repos) == ["me/family-small"]
    files = hub.repos["me/family-small"]["files"]
    _same_files(run_dir / "01-small/model", files)
    assert "from_pretrained('me/family-small')" in files["README.md"].decode()


def test_demo_checks_every_stage_repo_before_any_work(monkeypatch, tmp_path, capsys):
    """A recipe pushes to REPO-<stage>: each of those ids is checked up front (here one grows past 96 characters)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--push-to-hub", "me/" + "x" * 88]) == 2
    assert "me/" + "x" * 88 + "-correction" in capsys.readouterr().err and not out.exists()
