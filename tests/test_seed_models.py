"""The seeds' models as dry runs: published teacher configs (no download), the seeds' targets, and the
architectures and parameter counts NVIDIA published for the results.

Teachers (their published config.json values): Llama-3.1-8B, Mistral-NeMo-12B (Base-2407), Nemotron-4-15B.
Results: Llama-3.1-Minitron-4B-Width-Base 4.51B and -Depth-Base 4.54B parameters, Mistral-NeMo-Minitron-8B-Base
8.41B, Minitron-8B-Base 8.27B and Minitron-4B-Base 4.19B (the sizes the Hugging Face Hub shows for their
weights; the depth model's 9.08 GB of bf16 weights are 4.54B parameters).

Tolerance: 1%. The published figures are rounded to three significant digits (at most 0.12% off for these
sizes), while a wrong size on any axis moves the count by several percent (e.g. an MLP of 8192 instead
of 9216 in the 4B width model: -6.7%), so 1% accepts the rounding and still catches a wrong architecture.
"""
import time
from pathlib import Path

import pytest
from transformers import LlamaConfig, MistralConfig, NemotronConfig

from minitron.cli import main
from minitron.jobs import run_prune
from minitron.recipe import load_recipe, plan_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
TOLERANCE = 0.01


def llama_3_1_8b():
    return LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, hidden_act="silu", max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_theta=500000.0, tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192})


def mistral_nemo_12b():
    return MistralConfig(
        vocab_size=131072, hidden_size=5120, intermediate_size=14336, num_hidden_layers=40, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, hidden_act="silu", max_position_embeddings=1024000, rms_norm_eps=1e-5,
        rope_theta=1000000.0, sliding_window=None, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)


def nemotron_4_15b():
    # Non-gated squared-ReLU MLP, LayerNorm1P, half the head dimension rotated, untied 256K vocabulary.
    return NemotronConfig(
        vocab_size=256000, hidden_size=6144, intermediate_size=24576, num_hidden_layers=32, num_attention_heads=48,
        num_key_value_heads=8, head_dim=128, hidden_act="relu2", partial_rotary_factor=0.5,
        max_position_embeddings=4096, norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        bos_token_id=2, eos_token_id=3)


TEACHERS = {"Llama-3.1-8B": (llama_3_1_8b, 8.03e9), "Mistral-NeMo-12B": (mistral_nemo_12b, 12.2e9),
            "Nemotron-4-15B": (nemotron_4_15b, 15.6e9)}

# name: (teacher, target, published architecture, published parameters)
SEED_MODELS = {
    "Llama-3.1-Minitron-4B-Width": ("Llama-3.1-8B", {"hidden_size": 3072, "intermediate_size": 9216},
                                    (3072, 9216, 32, 8, 128, 32), 4.51e9),
    "Llama-3.1-Minitron-4B-Depth": ("Llama-3.1-8B", {"drop_layers": list(range(15, 31))},
                                    (4096, 14336, 32, 8, 128, 16), 4.54e9),
    "MN-Minitron-8B": ("Mistral-NeMo-12B", {"hidden_size": 4096, "intermediate_size": 11520},
                       (4096, 11520, 32, 8, 128, 40), 8.41e9),
    "Minitron-8B": ("Nemotron-4-15B", {"hidden_size": 4096, "intermediate_size": 16384},
                    (4096, 16384, 48, 8, 128, 32), 8.27e9),
    "Minitron-4B": ("Nemotron-4-15B", {"hidden_size": 3072, "intermediate_size": 9216, "num_attention_heads": 24},
                    (3072, 9216, 24, 8, 128, 32), 4.19e9),
}
ARCH = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
        "num_hidden_layers")
RECIPE_RESULTS = {"llama-3.1-8b-width": ["Llama-3.1-Minitron-4B-Width"],
                  "llama-3.1-8b-depth": ["Llama-3.1-Minitron-4B-Depth"],
                  "mistral-nemo-12b": ["MN-Minitron-8B"], "nemotron-4-15b": ["Minitron-8B", "Minitron-4B"]}


@pytest.fixture(scope="module")
def teacher_folders(tmp_path_factory) -> dict:
    """Each teacher as a folder holding only its config.json, as `minitron prune --model` reads it."""
    root = tmp_path_factory.mktemp("seed-teachers")
    folders = {}
    for name, (build, _) in TEACHERS.items():
        build().save_pretrained(root / name)
        folders[name] = root / name
    return folders


def _close(count: int, published: float) -> bool:
    return abs(count - published) <= TOLERANCE * published


@pytest.mark.parametrize("name", list(TEACHERS))
def test_the_teacher_configs_have_the_published_sizes(teacher_folders, name):
    summary = run_prune(str(teacher_folders[name]), None, {}, dry_run=True)
    total, published = summary["params_before"].total, TEACHERS[name][1]
    print(f"{name}: {total:,} parameters (published {published / 1e9:.2f}B)")
    assert _close(total, published)


@pytest.mark.parametrize("name", list(SEED_MODELS))
def test_a_dry_run_gives_the_published_model(teacher_folders, name):
    teacher, target, architecture, published = SEED_MODELS[name]
    started = time.perf_counter()
    summary = run_prune(str(teacher_folders[teacher]), None, target, dry_run=True)
    seconds = time.perf_counter() - started
    config, total = summary["config"], summary["params_after"].total
    print(f"{name}: {dict(zip(ARCH, (getattr(config, a) for a in ARCH)))}, {total:,} parameters "
          f"(published {published / 1e9:.2f}B, {total / published - 1:+.2%}), {seconds:.1f} s")
    assert tuple(getattr(config, a) for a in ARCH) == architecture
    assert _close(total, published)
    assert seconds < 30  # meta device: no weights are allocated


def test_the_cli_dry_run_prints_architecture_and_count(teacher_folders, capsys):
    assert main(["prune", "--model", str(teacher_folders["Llama-3.1-8B"] / "config.json"), "--hidden-size", "3072",
                 "--intermediate-size", "9216", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "hidden_size" in printed and "3,072" in printed and "9,216" in printed
    assert "params total          4,512,746,496 (56.2% of 8,030,261,248)" in printed
    assert main(["prune", "--model", str(teacher_folders["Llama-3.1-8B"]), "--drop-layers", "15-30",
                 "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "num_hidden_layers" in printed and "4,540,469,248" in printed


@pytest.mark.parametrize("recipe", list(RECIPE_RESULTS))
def test_the_shipped_recipes_reach_the_published_models(recipe):
    """Each seed recipe's chain, resolved stage by stage from the teacher's config, ends at the seeds' models."""
    loaded = load_recipe(RECIPES / f"{recipe}.yaml")
    teacher = next(name for name in TEACHERS if SEED_MODELS[RECIPE_RESULTS[recipe][0]][0] == name)
    rows = plan_recipe(loaded, TEACHERS[teacher][0]())
    assert len(rows) == len(RECIPE_RESULTS[recipe])
    for row, name in zip(rows, RECIPE_RESULTS[recipe]):
        _, _, architecture, published = SEED_MODELS[name]
        assert tuple(getattr(row["config"], a) for a in ARCH) == architecture, name
        assert _close(row["params"].total, published), (name, row["params"].total)
