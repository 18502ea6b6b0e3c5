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
        sparse = adapter.moe is not None and adapter.moe.experts_module(layer) is not None
        mlp = (adapter.moe.router_path, adapter.moe.experts_path) if sparse else (adapter.mlp_down_proj,)
        for name in (*mlp, adapter.attn_out_proj, *adapter.hidden_norms):
            layer.get_submodule(name)


def test_captured_layer_states_are_pre_norm_layer_outputs(model, batches):
    # HF's output_hidden_states agrees on the embedding and every layer output but the last, which
    # it takes after the final norm; the captured last entry is the last layer's own output.
    adapter = get_adapter(model)
    with torch.no_grad(), adapter.capture_layer_states(model) as states:
        reference = adapter.base_model(model)(input_ids=batches[0], output_hidden_states=True)
    assert len(states) == model.config.num_hidden_layers + 1
    for captured, expected in zip(states[:-1], reference.hidden_states[:-1]):
        torch.testing.assert_close(captured, expected, atol=0, rtol=0)
    assert not torch.allclose(states[-1], reference.hidden_states[-1])
    with torch.no_grad():
        adapter.base_model(model)(input_ids=batches[1])
    assert states[0].shape == reference.hidden_states[0].shape and torch.equal(states[1], reference.hidden_states[1])
