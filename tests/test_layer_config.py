"""After a depth cut every per-layer config field, list or scalar, describes the kept layers."""
import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from minitron.arch import get_adapter, text_config
from minitron.arch.layer_config import NOT_PER_LAYER, sliding_pattern_layer_types, subset_layer_fields_
from minitron.importance import random_scores
from minitron.importance.depth import layers_skipped
from minitron.errors import TargetError
from minitron.prune import describe_pruning, prune
from minitron.prune.target import hybrid_attention_layers
from tests.helpers import logits
from tests.tiny import tiny_config, tiny_model

# Scalar per-layer rules switched on where the family has one, consistent with its layer_types.
SCALAR_RULES = {
    "qwen2": dict(use_sliding_window=True, sliding_window=4, max_window_layers=2),
    "qwen3": dict(use_sliding_window=True, sliding_window=4, max_window_layers=2),
    "gemma3_text": dict(layer_types=None, sliding_window_pattern=2),
}


def _rebuilt_without_layer_types(config):
    """The config as a reader that only knows the scalar rules (older transformers, other tools) sees it."""
    settings = {k: v for k, v in config.to_dict().items() if k not in ("layer_types", "model_type")}
    return AutoConfig.for_model(config.model_type, **settings)


@pytest.mark.parametrize("family", ["qwen2", "qwen3"])
def test_max_window_layers_keeps_each_layers_attention_kind(family, tmp_path):
    torch.manual_seed(0)
    teacher = tiny_model(family, **SCALAR_RULES[family])
    assert teacher.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    pruned = prune(teacher, random_scores(teacher), {"drop_layers": [0]})
    assert pruned.config.max_window_layers == 1
    assert pruned.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    adapter = get_adapter(teacher)
    for new, old in enumerate([1, 2, 3]):
        kept_attention = adapter.layers(pruned)[new].self_attn
        assert kept_attention.sliding_window == adapter.layers(teacher)[old].self_attn.sliding_window
    tokens = torch.randint(0, 320, (2, 16), generator=torch.Generator().manual_seed(3))  # 16 > the window of 4
    with layers_skipped(teacher, adapter, [0]):
        reference = logits(teacher, tokens)
    torch.testing.assert_close(logits(pruned, tokens), reference, atol=1e-5, rtol=0)
    # A reader of max_window_layers alone (layer_types removed from config.json) builds the same model.
    pruned.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["layer_types"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert reloaded.config.layer_types == pruned.config.layer_types
    torch.testing.assert_close(logits(reloaded, tokens), reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("drop_layers", [[0], [1], [3], [0, 2]])
def test_every_per_layer_field_describes_the_pruned_stack(family, drop_layers):
    config = tiny_config(family, **SCALAR_RULES.get(family, {}))
    source = text_config(config)  # a multimodal checkpoint's per-layer fields are its language model's
    kept = [i for i in range(source.num_hidden_layers) if i not in drop_layers]
    attention = hybrid_attention_layers(config)
    if attention and set(attention) <= set(drop_layers):  # no attention left: refused (test_hybrid.py)
        with pytest.raises(TargetError, match="every attention layer"):
            describe_pruning(config, {"drop_layers": drop_layers})
        return
    pruned = text_config(describe_pruning(config, {"drop_layers": drop_layers})["config"])
    for key, value in source.to_dict().items():
        if isinstance(value, list) and len(value) == source.num_hidden_layers and key not in NOT_PER_LAYER:
            assert getattr(pruned, key) == [value[i] for i in kept], key
    # A saved scalar rule gives the same layer kinds as the list (a period that no longer fits is not saved).
    if family in SCALAR_RULES and {"max_window_layers", "sliding_window_pattern"} & set(pruned.to_dict()):
        assert _rebuilt_without_layer_types(pruned).layer_types == pruned.layer_types


def test_a_period_that_no_longer_fits_is_not_saved():
    source = tiny_config("gemma3_text", layer_types=None, sliding_window_pattern=2)  # s f s f
    pruned = describe_pruning(source, {"drop_layers": [0]})["config"]  # f s f: no period gives this
    assert pruned.layer_types == ["full_attention", "sliding_attention", "full_attention"]
    assert "sliding_window_pattern" not in pruned.to_dict() and "_sliding_window_pattern" not in pruned.to_dict()
    assert sliding_pattern_layer_types(3, 3) == ["sliding_attention", "sliding_attention", "full_attention"]


def test_layer_index_lists_and_sparse_steps_are_renumbered():
    # Config-only (MoE families have no pruning adapter): the rule is generic over config field names.
    source = AutoConfig.for_model("qwen2_moe", num_hidden_layers=6, decoder_sparse_step=2, mlp_only_layers=[3])
    config = AutoConfig.for_model("qwen2_moe", **{k: v for k, v in source.to_dict().items() if k != "model_type"})
    kept = [0, 1, 3, 5]  # source: sparse layers are 1 and 5 (3 is listed dense)
    subset_layer_fields_(config, source, kept)
    assert config.decoder_sparse_step == 1 and config.mlp_only_layers == [0, 2]
    deepseek = AutoConfig.for_model("deepseek_v3", num_hidden_layers=6, first_k_dense_replace=3)
    subset_layer_fields_(deepseek, deepseek, kept)
    assert deepseek.first_k_dense_replace == 2


def test_smollm3_kept_layers_keep_their_rope_or_no_rope():
    torch.manual_seed(0)
    teacher = tiny_model("smollm3")  # no_rope_layers [1, 0, 1, 1]: layer 1 has no RoPE
    pruned = prune(teacher, random_scores(teacher), {"drop_layers": [0]})
    assert pruned.config.no_rope_layers == [0, 1, 1]
    adapter = get_adapter(teacher)
    assert [layer.self_attn.use_rope for layer in adapter.layers(pruned)] == [0, 1, 1]
    tokens = torch.randint(0, 320, (2, 16), generator=torch.Generator().manual_seed(3))
    with layers_skipped(teacher, adapter, [0]):
        reference = logits(teacher, tokens)
    torch.testing.assert_close(logits(pruned, tokens), reference, atol=1e-5, rtol=0)
