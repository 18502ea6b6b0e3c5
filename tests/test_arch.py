"""Adapter tables against the real modules of every family."""
import torch

from minitron.arch import get_adapter


def test_every_parameter_has_axes(model):
    adapter = get_adapter(model)
    for name, tensor in model.state_dict().items():
        _, axes = adapter.axes_of(name)
        assert len(axes) == tensor.dim(), name


def test_logits_from_hidden_match_the_model(model, batches):
    adapter = get_adapter(model)
    with torch.no_grad():
        hidden = adapter.base_model(model)(input_ids=batches[0]).last_hidden_state
        expected = model(input_ids=batches[0]).logits
        torch.testing.assert_close(adapter.logits_from_hidden(model, hidden), expected, atol=1e-5, rtol=0)


def test_hooked_modules_exist(model):
    adapter = get_adapter(model)
    for layer in adapter.layers(model):
        for name in (adapter.mlp_down_proj, adapter.attn_out_proj, *adapter.hidden_norms):
            layer.get_submodule(name)
