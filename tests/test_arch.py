"""Adapter tables against the real modules of every family."""
import torch

from minitron.arch import get_adapter, text_config


def test_every_parameter_has_axes(model):
    adapter = get_adapter(model)
    for name, tensor in model.state_dict().items():
        _, axes = adapter.axes_of(name, tensor.dim())
        assert len(axes) == tensor.dim(), name


def test_logits_from_hidden_match_the_model(model, batches):
    adapter = get_adapter(model)
    with torch.no_grad():
        hidden = adapter.base_model(model)(input_ids=batches[0]).last_hidden_state
        expected = model(input_ids=batches[0]).logits
        torch.testing.assert_close(adapter.logits_from_hidden(model, hidden), expected, atol=1e-5, rtol=0)


def test_hooked_modules_exist(model):
    # Every layer of a plain stack has every hooked module; a hybrid stack's layer has some, and each
    # hooked module is in some layer (a misspelt name would otherwise score nothing, silently).
    adapter = get_adapter(model)
    names = (adapter.attn_out_proj, *adapter.hidden_norms, *adapter.hidden_inputs)
    names += (adapter.mamba.out_proj,) if adapter.mamba else ()
    found = {name: [adapter.layer_module(layer, name) is not None for layer in adapter.layers(model)]
             for name in names}
    found[adapter.mlp_down_proj] = []
    for layer in adapter.layers(model):  # a sparse (MoE) layer has a router and fused experts instead
        sparse = adapter.moe is not None and adapter.moe.experts_module(layer) is not None
        for name in (adapter.moe.router_path, adapter.moe.experts_path) if sparse else ():
            layer.get_submodule(name)
        found[adapter.mlp_down_proj].append(sparse or adapter.layer_module(layer, adapter.mlp_down_proj) is not None)
    for name, in_layers in found.items():
        assert all(in_layers) if not adapter.hybrid or name in adapter.hidden_norms else any(in_layers), name


def test_captured_layer_states_are_pre_norm_layer_outputs(model, batches):
    # HF's output_hidden_states agrees on the embedding and every layer output but the last, which
    # it takes after the final norm; the captured last entry is the last layer's own output.
    adapter = get_adapter(model)
    with torch.no_grad(), adapter.capture_layer_states(model) as states:
        reference = adapter.base_model(model)(input_ids=batches[0], output_hidden_states=True)
    assert len(states) == text_config(model.config).num_hidden_layers + 1
    for captured, expected in zip(states[:-1], reference.hidden_states[:-1]):
        torch.testing.assert_close(captured, expected, atol=0, rtol=0)
    assert not torch.allclose(states[-1], reference.hidden_states[-1])
    with torch.no_grad():
        adapter.base_model(model)(input_ids=batches[1])
    assert states[0].shape == reference.hidden_states[0].shape and torch.equal(states[1], reference.hidden_states[1])
