"""Quirks of the newer dense families beyond the family grid: OLMo's post-norms, multimodal checkpoints."""
import pytest
import torch

from minitron.arch import Axis, get_adapter, text_config
from minitron.importance import estimate_importance
from tests.tiny import tiny_model


@pytest.mark.parametrize("family", ["olmo2", "olmo3"])
def test_olmo_hidden_channels_are_scored_on_the_residual_stream(family, batches):
    # OLMo has no norm before attention or the MLP, so the residual stream itself is what they read: a
    # channel nothing writes into (embedding column and every output row zeroed) carries nothing.
    torch.manual_seed(0)
    model = tiny_model(family)
    adapter, silent = get_adapter(model), 5
    with torch.no_grad():
        for name, param in model.named_parameters():
            _, axes = adapter.axes_of(name)
            if name == "model.embed_tokens.weight":
                param[:, silent] = 0.0
            elif axes and axes[0] is Axis.HIDDEN and len(axes) == 2:
                param[silent] = 0.0
    scores = estimate_importance(model, batches, progress=False)
    assert scores.hidden[silent] == 0 and (scores.hidden > 0).sum() == model.config.hidden_size - 1


@pytest.mark.parametrize("family,auto_class", [("gemma3", "AutoModelForCausalLM"),
                                               ("qwen3_vl", "AutoModelForImageTextToText")])
def test_a_multimodal_checkpoint_keeps_its_class_and_vision_tower(family, auto_class, tmp_path, capsys):
    import transformers

    from minitron.cli import main
    from tests.tiny import tiny_tokenizer
    torch.manual_seed(0)
    source = tiny_model(family)
    source.save_pretrained(tmp_path / "source")
    tiny_tokenizer().save_pretrained(tmp_path / "source")
    out = tmp_path / "pruned"
    args = ["prune", "--model", str(tmp_path / "source"), "--criterion", "magnitude", "--out", str(out)]
    assert main([*args, "--hidden-size", "32"]) == 2
    assert "hidden_size (48), which therefore stays" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--intermediate-size", "32", "--num-hidden-layers", "3"]) == 0
    reloaded, info = getattr(transformers, auto_class).from_pretrained(out, output_loading_info=True)
    assert type(reloaded) is type(source) and not info["missing_keys"] and not info["unexpected_keys"]
    assert text_config(reloaded.config).num_hidden_layers == 3
    pruned_state, source_state = reloaded.state_dict(), source.state_dict()
    untouched = [name for name in source_state if name.startswith(get_adapter(source).untouched_prefixes)]
    assert untouched and all(torch.equal(pruned_state[name], source_state[name]) for name in untouched)
