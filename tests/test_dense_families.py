"""Quirks of the newer dense families beyond the family grid: OLMo's post-norms, multimodal checkpoints."""
import pytest
import torch

from minitron.arch import Axis, get_adapter
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
