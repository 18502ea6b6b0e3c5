"""The command line end to end on a tiny model saved to a local folder (no network)."""
import importlib.metadata
import json
import shlex

import pytest
import torch
from transformers import AutoModelForCausalLM

from minitron.cli import _build_parser, from_args, main
from minitron.config import DistillConfig
from minitron.errors import MinitronError
from minitron.loading import load_model
from tests.tiny import tiny_config, tiny_model, tiny_tokenizer

TEXT = "\n\n".join(f"Paragraph {i}: pruning keeps the neurons that matter and distillation recovers "
                   f"the rest, said document number {i}." for i in range(400))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model, tokenizer = tiny_model("qwen3"), tiny_tokenizer()
    model.save_pretrained(root / "teacher")
    tokenizer.save_pretrained(root / "teacher")
    (root / "corpus.txt").write_text(TEXT)
    return root


def test_importance_prune_inspect_eval(workspace, capsys):
    teacher, data = str(workspace / "teacher"), str(workspace / "corpus.txt")
    common = ["--data", data, "--samples", "8", "--seq-len", "32", "--batch-size", "4"]
    assert main(["importance", "--model", teacher, "--out", str(workspace / "scores"),
                 "--layer-loss-samples", "4", *common]) == 0
    meta = json.loads((workspace / "scores" / "scores.json").read_text())
    assert meta["num_samples"] == 8 and meta["data"] == data
    assert main(["prune", "--model", teacher, "--scores", str(workspace / "scores"), "--hidden-size", "36",
                 "--intermediate-size", "40", "--num-hidden-layers", "3", "--depth-metric", "lm_loss",
                 "--out", str(workspace / "pruned")]) == 0
    record = json.loads((workspace / "pruned" / "minitron.json").read_text())
    assert record["params_after"]["total"] < record["params_before"]["total"]
    reloaded = AutoModelForCausalLM.from_pretrained(workspace / "pruned")
    assert reloaded.config.hidden_size == 36 and reloaded.config.num_hidden_layers == 3
    model, tokenizer = load_model(str(workspace / "pruned"))
    assert tokenizer is not None and model.config.intermediate_size == 40
    capsys.readouterr()
    assert main(["inspect", str(workspace / "pruned"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"]["total"] == record["params_after"]["total"]
    assert main(["eval", "--model", str(workspace / "pruned"), *common]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["tokens"] == 8 * 31 and result["loss"] > 0


NEMOTRON_H_MOE_SIZES = ("n_routed_experts", "moe_intermediate_size", "moe_shared_expert_intermediate_size", "n_group",
                        "topk_group", "num_experts_per_tok")


def test_inspect_shows_nemotron_h_moe_sizes_only_with_moe_layers(tmp_path, capsys):
    """A dense Nemotron-H's config carries default MoE sizes (8 experts of 7688) that describe nothing in it."""
    for family in ("nemotron_h_moe", "nemotron_h"):
        tiny_config(family).save_pretrained(tmp_path / family)
        capsys.readouterr()
        assert main(["inspect", str(tmp_path / family), "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        if family == "nemotron_h_moe":
            assert {key: info.get(key) for key in NEMOTRON_H_MOE_SIZES} == dict(
                n_routed_experts=8, moe_intermediate_size=64, moe_shared_expert_intermediate_size=64, n_group=2,
                topk_group=1, num_experts_per_tok=2)
        else:
            assert not set(NEMOTRON_H_MOE_SIZES) & set(info) and info["mamba_num_heads"] == 8, info


def test_dry_run_prints_architecture(workspace, capsys):
    assert main(["prune", "--model", str(workspace / "teacher"), "--num-attention-heads", "3",
                 "--num-key-value-heads", "1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "num_attention_heads" in out and "params total" in out


@pytest.mark.parametrize("argv,message", [
    (["prune", "--model", "{teacher}", "--hidden-size", "96", "--criterion", "random", "--out", "{tmp}/x"],
     "larger than the source"),
    (["prune", "--model", "{tmp}/nowhere/", "--criterion", "random", "--hidden-size", "8", "--out", "{tmp}/x"],
     "does not exist"),
    (["prune", "--model", "{teacher}", "--out", "{tmp}/x"], "give at least one target"),
    (["prune", "--model", "{teacher}", "--scores", "{tmp}/none", "--hidden-size", "36", "--out", "{tmp}/x"],
     "holds no importance scores"),
    (["importance", "--model", "{teacher}", "--data", "{tmp}/missing.txt", "--out", "{tmp}/s"], "does not exist"),
    (["importance", "--model", "{teacher}", "--samples", "0", "--out", "{tmp}/s"], "must be positive"),
    (["finetune", "--model", "{teacher}", "--data", "{tmp}/missing.txt", "--steps", "1", "--tokens", "1k",
      "--out", "{tmp}/x"], "--steps or --tokens, not both"),
    (["prune", "--model", "{teacher}", "--num-attention-heads", "5", "--num-key-value-heads", "2", "--dry-run"],
     "as a multiple of 2"),
])
def test_bad_input_gets_a_clear_error(workspace, tmp_path, capsys, argv, message):
    argv = [a.format(teacher=workspace / "teacher", tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_existing_output_is_not_overwritten(workspace, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    (out / "minitron.json").write_text("{}")  # a folder minitron wrote: --overwrite may replace it
    argv = ["prune", "--model", str(workspace / "teacher"), "--criterion", "random", "--hidden-size", "36",
            "--out", str(out)]
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "precious"
    assert main([*argv, "--overwrite"]) == 0 and (out / "config.json").is_file()
    assert not (out / "keep.txt").exists()


def test_lm_eval_tasks_need_the_optional_extra(workspace, capsys):
    pytest.importorskip("minitron")
    try:
        import lm_eval  # noqa: F401
        pytest.skip("lm-eval is installed here")
    except ImportError:
        pass
    argv = ["eval", "--model", str(workspace / "teacher"), "--data", str(workspace / "corpus.txt"), "--samples", "2",
            "--seq-len", "16", "--tasks", "hellaswag"]
    assert main(argv) == 2 and "lm-eval" in capsys.readouterr().err


# --- a command line that forgives and guides ------------------------------------------------------

def _refused(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


def test_abbreviations_are_refused_and_unknown_flags_get_a_suggestion(capsys):
    err = _refused(["prune", "--model", "m", "--hidden", "36", "--dry-run"], capsys)
    assert "unrecognized arguments: --hidden (did you mean --hidden-size?)" in err
    assert "did you mean --num-attention-heads" in _refused(["prune", "--model", "m", "--num-attn-heads", "2"], capsys)
    err = _refused(["distill", "--student", "s", "--teacher", "t", "--out", "o", "--step", "1"], capsys)
    assert "--step (did you mean --steps" in err and err.startswith("usage: minitron distill")


def test_an_option_of_another_command_says_which_commands_take_it(capsys):
    err = _refused(["importance", "--model", "m", "--out", "o", "--expert-metric", "reap"], capsys)
    assert "--expert-metric (an option of `minitron prune` and `minitron search`, not of this command)" in err
    err = _refused(["prune", "--model", "m", "--target_active_params", "0.5"], capsys)
    assert "(an option of `minitron search`, not of this command)" in err


def test_hugging_face_spellings_of_options_are_accepted():
    args = _build_parser().parse_args(["prune", "--model", "m", "--hidden_size", "36", "--num_key_value_heads=1",
                                       "--dry_run"])
    assert (args.hidden_size, args.num_key_value_heads, args.dry_run) == (36, 1, True)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"minitron {importlib.metadata.version('minitron')}"


def test_steps_and_tokens_together_are_refused():
    with pytest.raises(MinitronError, match="not both"):
        DistillConfig(steps=10, tokens="2k")


def test_key_value_heads_alone_take_their_query_heads_along(workspace, capsys):
    # The tiny teacher has 6 query heads in 2 KV groups: keeping 1 group keeps its 3 query heads.
    assert main(["prune", "--model", str(workspace / "teacher"), "--num-key-value-heads", "1", "--dry-run"]) == 0
    rows = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines() if line.startswith("num_"))
    assert rows["num_key_value_heads"].strip() == "1" and rows["num_attention_heads"].strip() == "3"


def test_training_without_data_says_which_default_it_used(workspace, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("not minitron's")  # refused after the choice of data is announced
    argv = ["finetune", "--model", str(workspace / "teacher"), "--steps", "1", "--out", str(taken)]
    assert main(argv) == 2
    assert "no --data given, training on builtin:python-docs" in capsys.readouterr().err


def test_finetune_help_lists_only_what_fine_tuning_uses(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = capsys.readouterr().out
    assert "--lr" in text and "--steps" in text and "--chunk-size" in text
    for teacher_only in ("--loss", "--temperature", "--top-k", "--jsd-beta", "--ce-weight", "--hidden-loss",
                         "--teacher-dtype"):
        assert f"{teacher_only} " not in text, teacher_only
    args = _build_parser().parse_args(["finetune", "--model", "m", "--out", "o", "--steps", "1"])
    assert from_args(DistillConfig, args).loss == "ce"
    with pytest.raises(SystemExit):
        _build_parser().parse_args(["finetune", "--model", "m", "--out", "o", "--steps", "1", "--temperature", "2"])


def test_search_prints_a_runnable_prune_command_and_prune_takes_its_winner(workspace, tmp_path, capsys):
    teacher, scores = str(workspace / "teacher"), str(workspace / "search-scores")
    data = ["--data", str(workspace / "corpus.txt"), "--samples", "4", "--seq-len", "16", "--batch-size", "4"]
    assert main(["importance", "--model", teacher, "--out", scores, "--layer-loss-samples", "0", *data]) == 0
    assert main(["search", "--model", teacher, "--scores", scores, "--target-params", "0.8", "--max-candidates", "2",
                 "--candidate-tokens", "0", "--heldout-samples", "2", *data, "--out", str(tmp_path / "nas"), "-q"]) == 0
    winner = json.loads((tmp_path / "nas" / "search.json").read_text())["winner"]
    printed = [line.strip() for line in capsys.readouterr().out.splitlines()
               if line.strip().startswith("minitron prune --model")]
    assert len(printed) == 1
    argv = shlex.split(printed[0])[1:]
    assert argv[argv.index("--out") + 1] == str(tmp_path / "nas" / "pruned")
    assert main(argv) == 0  # the printed command runs as printed
    by_command = json.loads(config_of(tmp_path / "nas" / "pruned"))
    assert main(["prune", "--from-search", str(tmp_path / "nas"), "--out", str(tmp_path / "from-search")]) == 0
    assert json.loads(config_of(tmp_path / "from-search")) == by_command
    assert all(by_command[key] == size for key, size in winner["target"].items())
    assert main(["prune", "--from-search", str(tmp_path / "nas"), "--hidden-size", "8", "--dry-run"]) == 2
    assert main(["prune", "--from-search", str(tmp_path), "--dry-run"]) == 2
    assert "--out folder of `minitron search`" in capsys.readouterr().err


def config_of(model_dir) -> str:
    config = json.loads((model_dir / "config.json").read_text())
    keys = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers")
    return json.dumps({key: config[key] for key in keys})


def test_every_option_of_every_command_says_what_it_does_and_its_default_once():
    import argparse

    from minitron.cli import _build_parser

    commands = next(a for a in _build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sub in commands.items():
        for action in sub._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS or "--help" in action.option_strings:
                continue
            assert action.help, (name, action.option_strings)
            assert action.help.count("(default") <= 1, (name, action.option_strings, action.help)
