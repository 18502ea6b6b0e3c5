"""Pruning exactness and round trips, on a tiny random model of every family."""
import pytest
import torch
from minitron.arch import auto_model_class, get_adapter, text_config
from minitron.importance import estimate_importance, magnitude_scores, random_scores
from minitron.params import count_parameters, count_parameters_from_config
from minitron.prune import prune
from tests.helpers import logits, make_identity_layer_, neuron_score_rows, neuron_width_target, silence_neurons_
from tests.tiny import tiny_model

SMALLER = dict(hidden_size=32, intermediate_size=40, num_attention_heads=4, num_key_value_heads=2,
               num_hidden_layers=3)


def smaller(model) -> dict:
    """SMALLER, less hidden_size where the family keeps it (a multimodal projector maps into it)."""
    return {k: v for k, v in SMALLER.items() if not (k == "hidden_size" and get_adapter(model).keeps_hidden_size)}


def test_pruning_to_own_sizes_changes_nothing(model, batches):
    scores = estimate_importance(model, batches, progress=False)
    config = text_config(model.config)
    same = prune(model, scores, {key: getattr(config, key) for key in SMALLER})
    torch.testing.assert_close(logits(same, batches[0]), logits(model, batches[0]), atol=1e-5, rtol=0)


def test_silent_neurons_go_first_and_change_nothing(model, batches):
    silent = [3, 10, 17, 22, 31, 40, 51, 63]  # 8: MoE expert widths stay multiples of 8 (grouped_mm)
    for layer in range(text_config(model.config).num_hidden_layers):
        silence_neurons_(model, layer, silent)
    scores = estimate_importance(model, batches, progress=False)
    # Dense MLP, every routed expert, shared expert; a hybrid stack's MLP layers only.
    rows = [row for layer in range(text_config(model.config).num_hidden_layers) for row in neuron_score_rows(scores, layer)]
    assert rows
    for layer_scores in rows:
        assert torch.all(layer_scores[silent] == 0)
        assert torch.all(torch.topk(layer_scores, len(silent), largest=False).values == 0)
    pruned = prune(model, scores, neuron_width_target(model, len(silent)))
    torch.testing.assert_close(logits(pruned, batches[0]), logits(model, batches[0]), atol=1e-5, rtol=0)


def test_identity_layer_is_dropped_first_by_block_influence(model, batches):
    make_identity_layer_(model, 2)
    scores = estimate_importance(model, batches, progress=False)
    influence = scores.layers["block_influence"]
    assert influence[2].abs() < 1e-6 and int(torch.argmin(influence)) == 2
    pruned = prune(model, scores, {"num_hidden_layers": text_config(model.config).num_hidden_layers - 1})
    assert pruned.minitron_kept_layers == [0, 1, 3]
    torch.testing.assert_close(logits(pruned, batches[0]), logits(model, batches[0]), atol=1e-5, rtol=0)


def test_identity_layer_costs_no_loss_when_skipped(model, batches):
    make_identity_layer_(model, 1)
    scores = estimate_importance(model, batches, layer_loss_batches=2, progress=False)
    assert abs(float(scores.layers["lm_loss"][1])) < 1e-5


def test_pruned_model_round_trips_through_plain_transformers(model, batches, tmp_path):
    scores = estimate_importance(model, batches, progress=False)
    pruned = prune(model, scores, smaller(model))
    assert text_config(pruned.config).head_dim == text_config(model.config).head_dim
    pruned.save_pretrained(tmp_path)
    reloaded, info = auto_model_class(pruned.config).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    reloaded.eval()
    torch.testing.assert_close(logits(reloaded, batches[0]), logits(pruned, batches[0]), atol=1e-5, rtol=0)
    assert count_parameters(reloaded) == count_parameters_from_config(reloaded.config)
    assert count_parameters(pruned).total < count_parameters(model).total
    if model.config.tie_word_embeddings:
        assert reloaded.get_input_embeddings().weight is reloaded.get_output_embeddings().weight
    for name, value in vars(text_config(reloaded.config)).items():
        if isinstance(value, list) and name == "layer_types":
            assert len(value) == text_config(reloaded.config).num_hidden_layers


def test_generate_with_cache_equals_without(model, batches):
    scores = estimate_importance(model, batches, progress=False)
    pruned = prune(model, scores, smaller(model))
    prompt = batches[0][:1, :6]
    settings = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    with_cache = pruned.generate(prompt, use_cache=True, **settings)
    without_cache = pruned.generate(prompt, use_cache=False, **settings)
    assert torch.equal(with_cache, without_cache)


def test_whole_kv_groups_are_pruned(model, batches):
    scores = estimate_importance(model, batches, progress=False)
    target = {"num_key_value_heads": 1, "num_attention_heads": 2}
    moe = get_adapter(model).moe
    if moe is not None and moe.attention_width_is_hidden:  # OLMoE: the attention width is the hidden size
        target["hidden_size"] = 2 * model.config.head_dim
    pruned = prune(model, scores, target)
    assert text_config(pruned.config).num_key_value_heads == 1 and text_config(pruned.config).num_attention_heads == 2
    assert logits(pruned, batches[0]).isfinite().all()


def test_explicit_drop_layers(model, batches):
    scores = random_scores(model)
    pruned = prune(model, scores, {"drop_layers": [0, 2]})
    assert text_config(pruned.config).num_hidden_layers == 2 and pruned.minitron_kept_layers == [1, 3]
    adapter = get_adapter(pruned)
    for new_index, layer in enumerate(adapter.layers(pruned)):
        attention = [m for m in layer.modules() if hasattr(m, "layer_idx")]
        assert all(m.layer_idx == new_index for m in attention)


@pytest.mark.parametrize("criterion", [magnitude_scores, random_scores])
def test_baseline_criteria_prune(model, batches, criterion):
    pruned = prune(model, criterion(model), smaller(model))
    assert logits(pruned, batches[0]).isfinite().all()


def test_importance_takes_dict_batches_and_ignores_padding():
    model = tiny_model("llama")
    ids = torch.randint(0, 320, (2, 12), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[:, 8:] = 0
    padded = estimate_importance(model, [{"input_ids": ids, "attention_mask": mask}], progress=False)
    trimmed = estimate_importance(model, [ids[:, :8]], progress=False)
    torch.testing.assert_close(padded.neurons[0], trimmed.neurons[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(padded.hidden, trimmed.hidden, rtol=1e-4, atol=1e-5)


def test_head_scores_are_the_heads_contribution_through_the_output_projection(model, batches):
    """Reference: apply each head's block of W_o to its activations and take the norm per token."""
    adapter = get_adapter(model)
    layer = adapter.layers(model)[1]
    out_proj = layer.get_submodule(adapter.attn_out_proj)
    head_dim = text_config(model.config).head_dim
    captured = []
    handle = out_proj.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach()))
    scores = estimate_importance(model, batches, progress=False)
    handle.remove()
    weight = out_proj.weight.detach().view(text_config(model.config).hidden_size, -1, head_dim)
    per_sample = []
    for activations in captured:
        heads = activations.view(*activations.shape[:2], -1, head_dim)
        contribution = torch.einsum("xnd,bsnd->bsnx", weight, heads).norm(dim=-1)  # (B, S, heads)
        per_sample.append(contribution.mean(dim=1))
    expected = torch.cat(per_sample).pow(2).sum(dim=0).sqrt()
    torch.testing.assert_close(scores.heads[1], expected, rtol=1e-4, atol=1e-5)


def test_pruned_model_shares_no_storage_with_its_source(model, batches):
    # A depth cut leaves the kept layers' tensors uncut; training the student must not touch the teacher.
    scores = estimate_importance(model, batches, progress=False)
    pruned = prune(model, scores, {"drop_layers": [2]})  # not 1: the tiny hybrid's only attention layer
    source = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert not any(p.untyped_storage().data_ptr() in source for p in pruned.parameters())
    before = logits(model, batches[0])
    with torch.no_grad():
        for param in pruned.parameters():
            param.add_(1.0)
    torch.testing.assert_close(logits(model, batches[0]), before, atol=0, rtol=0)
