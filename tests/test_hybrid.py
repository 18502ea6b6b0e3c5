"""Hybrid Mamba-2 stacks (nemotron_h): the Mamba axes, on a tiny random model built in-process.

The family grid (tests/test_prune.py etc.) covers hidden size, attention, MLP and depth; these tests
cover what only Mamba layers have: heads pruned within their groups, one head-dim order, the cache.
"""
import pytest
import torch
from transformers import AutoModelForCausalLM

from minitron.errors import TargetError
from minitron.importance import estimate_importance, magnitude_scores, random_scores
from minitron.params import count_parameters, count_parameters_from_config
from minitron.prune import prune
from tests.helpers import logits, silence_mamba_channels_
from tests.tiny import tiny_model

HEADS, HEAD_DIM, GROUPS = 8, 4, 2  # tests/tiny.py's nemotron_h
MAMBA_LAYERS = (0, 3)


@pytest.fixture
def hybrid():
    torch.manual_seed(0)
    return tiny_model("nemotron_h")


@pytest.fixture
def exact_hybrid():
    """The tiny hybrid in float64 with the norms' epsilon taken out.

    Dropping a silent Mamba head shrinks its group in the gated RMSNorm; the pruned model rescales the
    norm weight to match, which is exact up to epsilon. This random model's gated activations have a mean
    square of ~3e-8, below the default epsilon (1e-5), so there epsilon, not the slicing, would set the
    difference (0.07 in the logits); without epsilon the slicing and the rescale are checked exactly.
    """
    torch.manual_seed(0)
    return tiny_model("nemotron_h", layer_norm_epsilon=1e-20).double()


def test_zeroed_mamba_heads_go_first_and_change_nothing(exact_hybrid, batches):
    hybrid = exact_hybrid
    silent = [1, 6]  # one head in each of the two groups (heads 0-3 and 4-7)
    silence_mamba_channels_(hybrid, silent, list(range(HEAD_DIM)))
    scores = estimate_importance(hybrid, batches, progress=False)
    assert sorted(scores.mamba_heads) == list(MAMBA_LAYERS)
    for layer in MAMBA_LAYERS:
        head_scores = scores.mamba_heads[layer]
        assert torch.all(head_scores[silent] == 0) and torch.all(head_scores[[0, 2, 3, 4, 5, 7]] > 0)
    pruned = prune(hybrid, scores, {"mamba_num_heads": HEADS - len(silent)})
    assert pruned.config.mamba_num_heads == HEADS - len(silent)
    torch.testing.assert_close(logits(pruned, batches[0]), logits(hybrid, batches[0]), atol=1e-5, rtol=0)


def test_heads_are_pruned_within_their_groups(hybrid, batches):
    # The four silent heads are all in group 0: pruning four heads must still keep two in each group, so
    # two of group 1's live heads go and the output changes; had group 0 lost all four, it would not.
    silence_mamba_channels_(hybrid, [0, 1, 2, 3], list(range(HEAD_DIM)))
    scores = estimate_importance(hybrid, batches, progress=False)
    pruned = prune(hybrid, scores, {"mamba_num_heads": 4})
    mixer_a_log = {name: p for name, p in pruned.named_parameters() if name.endswith("layers.0.mixer.A_log")}
    source_a_log = dict(hybrid.named_parameters())["model.layers.0.mixer.A_log"]
    kept = [int(torch.nonzero(source_a_log == value)[0]) for value in next(iter(mixer_a_log.values()))]
    assert sum(head < 4 for head in kept) == 2 and sum(head >= 4 for head in kept) == 2
    assert not torch.allclose(logits(pruned, batches[0]), logits(hybrid, batches[0]), atol=1e-3)


def test_zeroed_head_dim_positions_go_first_and_change_nothing(exact_hybrid, batches):
    hybrid = exact_hybrid
    silence_mamba_channels_(hybrid, list(range(HEADS)), [2])
    scores = estimate_importance(hybrid, batches, progress=False)
    for layer in MAMBA_LAYERS:
        assert scores.mamba_head_dim[layer][2] == 0 and torch.all(scores.mamba_head_dim[layer][[0, 1, 3]] > 0)
    pruned = prune(hybrid, scores, {"mamba_head_dim": HEAD_DIM - 1})
    assert pruned.config.mamba_head_dim == HEAD_DIM - 1
    torch.testing.assert_close(logits(pruned, batches[0]), logits(hybrid, batches[0]), atol=1e-5, rtol=0)


MAMBA_AND_MORE = dict(mamba_num_heads=4, mamba_head_dim=3, hidden_size=32, intermediate_size=40,
                      num_attention_heads=4, num_key_value_heads=2, drop_layers=[2])


def test_mamba_pruned_model_round_trips_and_generates_with_its_cache(hybrid, batches, tmp_path):
    pruned = prune(hybrid, estimate_importance(hybrid, batches, progress=False), MAMBA_AND_MORE)
    assert pruned.config.layers_block_type == ["linear_attention", "full_attention", "linear_attention"]
    assert pruned.config.hybrid_override_pattern == "M*M"
    pruned.save_pretrained(tmp_path)
    reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    reloaded.eval()
    torch.testing.assert_close(logits(reloaded, batches[0]), logits(pruned, batches[0]), atol=1e-5, rtol=0)
    assert count_parameters(reloaded) == count_parameters_from_config(reloaded.config)
    prompt = batches[0][:1, :6]
    settings = dict(max_new_tokens=12, do_sample=False, pad_token_id=0)  # 18 tokens: past a chunk of 8
    assert torch.equal(reloaded.generate(prompt, use_cache=True, **settings),
                       reloaded.generate(prompt, use_cache=False, **settings))


@pytest.mark.parametrize("criterion", [magnitude_scores, random_scores])
def test_baseline_criteria_score_mamba_heads(hybrid, batches, criterion):
    pruned = prune(hybrid, criterion(hybrid), {"mamba_num_heads": 4, "mamba_head_dim": 2})
    assert logits(pruned, batches[0]).isfinite().all()


def test_scores_with_mamba_heads_survive_a_save(hybrid, batches, tmp_path):
    from minitron.importance import ImportanceScores

    scores = estimate_importance(hybrid, batches, progress=False)
    loaded = ImportanceScores.load(scores.save(tmp_path / "scores"))
    assert loaded.mamba_heads.keys() == scores.mamba_heads.keys()
    for layer in MAMBA_LAYERS:
        assert torch.equal(loaded.mamba_heads[layer], scores.mamba_heads[layer])
        assert torch.equal(loaded.mamba_head_dim[layer], scores.mamba_head_dim[layer])
    assert loaded.neurons[0].numel() == 0 and loaded.neurons[2].numel() == 64  # layer 0 is Mamba, 2 an MLP


@pytest.mark.parametrize("target, message", [
    ({"mamba_num_heads": 5}, "multiple of the 2 Mamba groups"),
    ({"mamba_num_heads": 10}, "larger than the source"),
    ({"mamba_head_dim": 0}, "must be positive"),
    ({"mamba_head_dim": 2.5}, "whole number"),
])
def test_impossible_mamba_targets_are_refused_before_any_work(hybrid, target, message):
    with pytest.raises(TargetError, match=message):
        prune(hybrid, random_scores(hybrid), target)  # random scores: the refusal comes before any scoring


def test_mamba_targets_on_a_model_without_mamba_are_refused():
    llama = tiny_model("llama")
    with pytest.raises(TargetError, match="no Mamba layers"):
        prune(llama, random_scores(llama), {"mamba_num_heads": 4})


def test_an_untied_head_under_a_tie_flag_is_kept(batches):
    # NemotronH accepts tie_word_embeddings=True but never ties: the pruned model must still get its head.
    torch.manual_seed(0)
    flagged = tiny_model("nemotron_h", tie_word_embeddings=True)
    assert flagged.lm_head.weight is not flagged.model.embeddings.weight
    same = prune(flagged, random_scores(flagged), {"mamba_num_heads": HEADS})
    torch.testing.assert_close(logits(same, batches[0]), logits(flagged, batches[0]), atol=1e-5, rtol=0)


ATTENTION_LAYER = 1  # tests/tiny.py's nemotron_h: Mamba, attention, MLP, Mamba


def test_a_depth_cut_by_scores_keeps_the_best_attention_layer(hybrid, batches):
    """The layer scores rank the only attention layer last: a cut to two layers keeps it anyway, in place of
    the weakest layer the scores chose, so that the pruned hybrid can still generate with its cache."""
    scores = random_scores(hybrid)
    scores.layers["random"] = torch.tensor([0.9, 0.1, 0.5, 0.7])  # top two: layers 0 and 3, both Mamba
    pruned = prune(hybrid, scores, {"num_hidden_layers": 2})
    assert pruned.minitron_kept_layers == [0, ATTENTION_LAYER]  # layer 3 (0.7) was the weaker choice
    assert pruned.config.layers_block_type == ["linear_attention", "full_attention"]
    prompt = batches[0][:1, :6]
    assert pruned.generate(prompt, use_cache=True, max_new_tokens=4, do_sample=False, pad_token_id=0).shape == (1, 10)


def test_drop_layers_removing_every_attention_layer_are_refused(hybrid, tmp_path, capsys):
    from minitron.cli import main

    with pytest.raises(TargetError, match=r"every attention layer \(\[1\]\).*leave at least one"):
        prune(hybrid, random_scores(hybrid), {"drop_layers": [ATTENTION_LAYER, 2]})
    hybrid.save_pretrained(tmp_path / "hybrid")
    argv = ["prune", "--model", str(tmp_path / "hybrid"), "--criterion", "random", "--drop-layers", "1",
            "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert "every attention layer" in capsys.readouterr().err and not (tmp_path / "out").exists()
