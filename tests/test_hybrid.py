"""Hybrid Mamba-2 stacks (nemotron_h, granitemoehybrid, falcon_h1): the Mamba axes, on tiny random models built
in-process.

The family grid (tests/test_prune.py etc.) covers hidden size, attention, MLP and depth; these tests
cover what only Mamba layers have: heads pruned within their groups, one head-dim order, the cache.
"""
from dataclasses import dataclass

import re

import pytest
import torch
from transformers import AutoModelForCausalLM

from minitron.arch import get_adapter
from minitron.errors import TargetError
from minitron.importance import estimate_importance, magnitude_scores, random_scores
from minitron.params import count_parameters, count_parameters_from_config
from minitron.prune import prune
from minitron.prune.target import hybrid_attention_layers
from tests.helpers import logits, silence_mamba_channels_
from tests.tiny import HYBRID_FAMILIES, tiny_model

HEADS, GROUPS = 8, 2  # every tiny hybrid: two groups of four heads


@dataclass(frozen=True)
class Case:
    """What the shared tests need to know of one family's tiny hybrid (tests/tiny.py)."""

    head_dim: int
    eps_key: str  # the config's norm epsilon, gated norm included
    silent_heads: list  # pruned by the zeroed-heads test: the same number in each group
    silent_positions: list  # head-dim positions pruned by the zeroed-positions test
    mamba_and_more: dict  # a cut of every axis at once, keeping layers [0, 1, 3]
    kept_kinds: list  # layers_block_type after that cut
    baseline_target: dict
    mlp_layer: int | None  # a layer with a dense MLP (its neuron scores are not empty); not 0 unless all have one


# Granite sizes its Mamba mixers as mamba_expand x hidden_size with a whole-number mamba_expand: every target
# below keeps heads x head_dim a multiple of hidden_size (96 at 48; 48 at 48; 32 at 32; 24 at 24).
CASES = {
    "nemotron_h": Case(head_dim=4, eps_key="layer_norm_epsilon", silent_heads=[1, 6], silent_positions=[2],
                       mamba_and_more=dict(mamba_num_heads=4, mamba_head_dim=3, hidden_size=32, intermediate_size=40,
                                           num_attention_heads=4, num_key_value_heads=2, drop_layers=[2]),
                       kept_kinds=["linear_attention", "full_attention", "linear_attention"],
                       baseline_target={"mamba_num_heads": 4, "mamba_head_dim": 2}, mlp_layer=2),
    "granitemoehybrid": Case(head_dim=12, eps_key="rms_norm_eps", silent_heads=[1, 2, 5, 6],
                             silent_positions=[1, 3, 5, 7, 9, 11],
                             mamba_and_more=dict(mamba_num_heads=4, mamba_head_dim=8, hidden_size=32,
                                                 intermediate_size=32, num_attention_heads=4, num_key_value_heads=2,
                                                 drop_layers=[2]),
                             kept_kinds=["linear_attention", "full_attention", "full_attention"],
                             baseline_target={"mamba_num_heads": 4, "mamba_head_dim": 6, "hidden_size": 24},
                             mlp_layer=None),
    # Falcon-H1: attention, Mamba and the MLP in every layer; mamba_d_ssm (None in the source) written out.
    "falcon_h1": Case(head_dim=12, eps_key="rms_norm_eps", silent_heads=[0, 3, 5, 6], silent_positions=[0, 4, 11],
                      mamba_and_more=dict(mamba_num_heads=4, mamba_head_dim=8, hidden_size=32, intermediate_size=40,
                                          num_attention_heads=4, num_key_value_heads=2, drop_layers=[2]),
                      kept_kinds=["hybrid"] * 3, baseline_target={"mamba_num_heads": 4, "mamba_head_dim": 6},
                      mlp_layer=0),
}


@pytest.fixture(params=HYBRID_FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def case(family) -> Case:
    return CASES[family]


@pytest.fixture
def hybrid(family):
    torch.manual_seed(0)
    return tiny_model(family)


@pytest.fixture
def exact_hybrid(family, case):
    """The tiny hybrid in float64 with the norms' epsilon taken out.

    Dropping a silent Mamba head shrinks its group in the gated RMSNorm; the pruned model rescales the
    norm weight to match, which is exact up to epsilon. This random model's gated activations have a mean
    square of ~3e-8, below the default epsilon (1e-5), so there epsilon, not the slicing, would set the
    difference (0.07 in the logits); without epsilon the slicing and the rescale are checked exactly.
    """
    torch.manual_seed(0)
    model = tiny_model(family, **{case.eps_key: 1e-20})
    if get_adapter(model).moe is not None:  # torch's grouped_mm has no float64: run the experts one by one
        model.set_experts_implementation("eager")
    return model.double()


def mamba_layers(model) -> list[int]:
    adapter = get_adapter(model)
    return [i for i, layer in enumerate(adapter.layers(model))
            if adapter.layer_module(layer, adapter.mamba.out_proj) is not None]


def mamba_size(model, key: str) -> int:
    """A Mamba size under minitron's name (mamba_num_heads, mamba_head_dim), read from the family's config key."""
    return getattr(model.config, get_adapter(model).mamba.config_key(key))


def test_zeroed_mamba_heads_go_first_and_change_nothing(exact_hybrid, case, batches):
    hybrid = exact_hybrid
    silent = case.silent_heads  # as many in each of the two groups (heads 0-3 and 4-7)
    silence_mamba_channels_(hybrid, silent, list(range(case.head_dim)))
    scores = estimate_importance(hybrid, batches, progress=False)
    assert sorted(scores.mamba_heads) == mamba_layers(hybrid)
    live = [head for head in range(HEADS) if head not in silent]
    for layer in mamba_layers(hybrid):
        head_scores = scores.mamba_heads[layer]
        assert torch.all(head_scores[silent] == 0) and torch.all(head_scores[live] > 0)
    pruned = prune(hybrid, scores, {"mamba_num_heads": HEADS - len(silent)})
    assert mamba_size(pruned, "mamba_num_heads") == HEADS - len(silent)
    torch.testing.assert_close(logits(pruned, batches[0]), logits(hybrid, batches[0]), atol=1e-5, rtol=0)


def test_heads_are_pruned_within_their_groups(hybrid, case, batches):
    # The four silent heads are all in group 0: pruning four heads must still keep two in each group, so
    # two of group 1's live heads go and the output changes; had group 0 lost all four, it would not.
    silence_mamba_channels_(hybrid, [0, 1, 2, 3], list(range(case.head_dim)))
    scores = estimate_importance(hybrid, batches, progress=False)
    pruned = prune(hybrid, scores, {"mamba_num_heads": 4})
    a_log = get_adapter(hybrid).mamba.out_proj.replace("out_proj", "A_log")  # one entry per head, all distinct
    source_a_log, pruned_a_log = (get_adapter(m).layers(m)[0].get_parameter(a_log) for m in (hybrid, pruned))
    kept = [int(torch.nonzero(source_a_log == value)[0]) for value in pruned_a_log]
    assert sum(head < 4 for head in kept) == 2 and sum(head >= 4 for head in kept) == 2
    assert not torch.allclose(logits(pruned, batches[0]), logits(hybrid, batches[0]), atol=1e-3)


def test_zeroed_head_dim_positions_go_first_and_change_nothing(exact_hybrid, case, batches):
    hybrid = exact_hybrid
    silent = case.silent_positions
    silence_mamba_channels_(hybrid, list(range(HEADS)), silent)
    scores = estimate_importance(hybrid, batches, progress=False)
    live = [position for position in range(case.head_dim) if position not in silent]
    for layer in mamba_layers(hybrid):
        assert torch.all(scores.mamba_head_dim[layer][silent] == 0)
        assert torch.all(scores.mamba_head_dim[layer][live] > 0)
    pruned = prune(hybrid, scores, {"mamba_head_dim": case.head_dim - len(silent)})
    assert mamba_size(pruned, "mamba_head_dim") == case.head_dim - len(silent)
    torch.testing.assert_close(logits(pruned, batches[0]), logits(hybrid, batches[0]), atol=1e-5, rtol=0)


def test_mamba_pruned_model_round_trips_and_generates_with_its_cache(hybrid, case, batches, tmp_path):
    pruned = prune(hybrid, estimate_importance(hybrid, batches, progress=False), case.mamba_and_more)
    assert pruned.config.layers_block_type == case.kept_kinds
    if hasattr(pruned.config, "hybrid_override_pattern"):  # NemotronH's other spelling of the same list
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
def test_baseline_criteria_score_mamba_heads(hybrid, case, batches, criterion):
    pruned = prune(hybrid, criterion(hybrid), case.baseline_target)
    assert logits(pruned, batches[0]).isfinite().all()


def test_scores_with_mamba_heads_survive_a_save(hybrid, case, batches, tmp_path):
    from minitron.importance import ImportanceScores

    scores = estimate_importance(hybrid, batches, progress=False)
    loaded = ImportanceScores.load(scores.save(tmp_path / "scores"))
    assert loaded.mamba_heads.keys() == scores.mamba_heads.keys()
    for layer in mamba_layers(hybrid):
        assert torch.equal(loaded.mamba_heads[layer], scores.mamba_heads[layer])
        assert torch.equal(loaded.mamba_head_dim[layer], scores.mamba_head_dim[layer])
    if case.mlp_layer != 0:
        assert loaded.neurons[0].numel() == 0  # layer 0 is Mamba alone
    if case.mlp_layer is not None:
        assert loaded.neurons[case.mlp_layer].numel() == 64


@pytest.mark.parametrize("target, message", [
    ({"mamba_num_heads": 5}, "multiple of the 2 Mamba groups"),
    ({"mamba_num_heads": 10}, "larger than the source"),
    ({"mamba_head_dim": 0}, "must be positive"),
    ({"mamba_head_dim": 2.5}, "whole number"),
])
def test_impossible_mamba_targets_are_refused_before_any_work(hybrid, target, message):
    with pytest.raises(TargetError, match=message):
        prune(hybrid, random_scores(hybrid), target)  # random scores: the refusal comes before any scoring


@pytest.mark.parametrize("target", [{"hidden_size": 40}, {"mamba_head_dim": 11}, {"mamba_num_heads": 6},
                                    {"hidden_size": 32, "mamba_num_heads": 4, "mamba_head_dim": 6}])
def test_granite_mamba_width_must_stay_a_multiple_of_hidden_size(target):
    # Granite's Mamba width is mamba_expand x hidden_size, mamba_expand a whole number in its config.
    granite = tiny_model("granitemoehybrid")
    with pytest.raises(TargetError, match="must be a multiple of hidden_size"):
        prune(granite, random_scores(granite), target)


def test_falcon_h1_as_published_prunes_silent_heads_exactly_and_round_trips(batches, tmp_path):
    # The published Falcon-H1 checkpoints have no gated norm (mamba_rms_norm false: y x silu(z) goes straight
    # to out_proj) and the small ones tie the LM head to the embedding (scaled by lm_head_multiplier).
    torch.manual_seed(0)
    falcon = tiny_model("falcon_h1", mamba_rms_norm=False, mamba_norm_before_gate=False, tie_word_embeddings=True)
    assert not any(name.endswith("mamba.norm.weight") for name, _ in falcon.named_parameters())
    silence_mamba_channels_(falcon, [1, 2, 4, 7], list(range(12)))
    scores = estimate_importance(falcon, batches, progress=False)
    pruned = prune(falcon, scores, {"mamba_num_heads": 4})
    torch.testing.assert_close(logits(pruned, batches[0]), logits(falcon, batches[0]), atol=1e-5, rtol=0)
    smaller = prune(falcon, scores, {"mamba_num_heads": 4, "hidden_size": 40})
    smaller.save_pretrained(tmp_path)
    reloaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert reloaded.config.mamba_d_ssm == 4 * 12 and reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    torch.testing.assert_close(logits(reloaded.eval(), batches[0]), logits(smaller, batches[0]), atol=1e-5, rtol=0)


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


# Layer scores whose top two are Mamba-only layers, and the layers a two-layer cut must keep: the best two by
# score, with the weaker one replaced by the best-scored attention layer (tests/tiny.py's layer patterns).
DEPTH_CUTS = {
    "nemotron_h": ([0.9, 0.1, 0.5, 0.7], [0, 1]),  # Mamba, attention, MLP, Mamba
    "granitemoehybrid": ([0.9, 0.1, 0.7, 0.05], [0, 1]),  # Mamba, attention, Mamba, attention
    "falcon_h1": ([0.9, 0.1, 0.5, 0.7], [0, 3]),  # attention in every layer: the scores alone decide
}


def test_a_depth_cut_by_scores_keeps_the_best_attention_layer(hybrid, batches):
    """A cut to two layers whose best-scored layers hold no attention keeps the best attention layer anyway,
    in place of the weakest layer the scores chose, so that the pruned hybrid can still generate with its cache."""
    layer_scores, kept = DEPTH_CUTS[hybrid.config.model_type]
    scores = random_scores(hybrid)
    scores.layers["random"] = torch.tensor(layer_scores)
    pruned = prune(hybrid, scores, {"num_hidden_layers": 2})
    assert pruned.minitron_kept_layers == kept
    if hybrid_attention_layers(hybrid.config):  # [] means attention in every layer (falcon_h1)
        assert hybrid_attention_layers(pruned.config)
    prompt = batches[0][:1, :6]
    assert pruned.generate(prompt, use_cache=True, max_new_tokens=4, do_sample=False, pad_token_id=0).shape == (1, 10)


def test_drop_layers_removing_every_attention_layer_are_refused(hybrid, tmp_path, capsys):
    from minitron.cli import main

    attention = hybrid_attention_layers(hybrid.config)
    if not attention or len(attention) == hybrid.config.num_hidden_layers:
        pytest.skip("attention in every layer: dropping it all would drop every layer")
    with pytest.raises(TargetError, match=rf"every attention layer \({re.escape(str(attention))}\).*leave at least one"):
        prune(hybrid, random_scores(hybrid), {"drop_layers": attention})
    hybrid.save_pretrained(tmp_path / "hybrid")
    argv = ["prune", "--model", str(tmp_path / "hybrid"), "--criterion", "random",
            "--drop-layers", ",".join(map(str, attention)), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert "every attention layer" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_prune_dry_run_shows_the_mamba_sizes_after_the_cut(hybrid, tmp_path, capsys):
    from minitron.cli import main

    hybrid.save_pretrained(tmp_path / "hybrid")
    heads, head_dim, groups, state = get_adapter(hybrid).mamba.sizes(hybrid.config)
    assert main(["prune", "--model", str(tmp_path / "hybrid"), "--mamba-num-heads", str(heads // 2),
                 "--dry-run"]) == 0
    assert f"Mamba heads x head dim  {heads // 2} x {head_dim} ({groups} groups, state {state})" in capsys.readouterr().out
