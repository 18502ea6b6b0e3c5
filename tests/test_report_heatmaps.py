"""The report's neuron/head heatmaps on the score shapes of MoE and hybrid stacks: MoE layers have no dense
MLP neurons, and a hybrid scores neurons and heads only in its MLP and attention layers (ragged rows)."""
import numpy as np
import pytest
import torch

from minitron.importance import estimate_importance
from minitron.report import plots
from tests.tiny import HYBRID_FAMILIES, tiny_model


@pytest.mark.parametrize("family", ["qwen3_moe", "nemotron_h_moe", *HYBRID_FAMILIES])
def test_heatmaps_draw_the_scores_of_moe_and_hybrid_stacks(family):
    torch.manual_seed(0)
    model = tiny_model(family)
    batches = [torch.randint(0, model.config.vocab_size, (2, 8))]
    scores = estimate_importance(model, batches, layer_loss_batches=0)
    neurons, heads = [t.tolist() for t in scores.neurons], [t.tolist() for t in scores.heads]
    plot = plots.neuron_head_heatmaps(neurons, heads, None, None, [])
    assert plot.points == sum(map(len, neurons)) + sum(map(len, heads))  # blank cells are not counted


def test_layers_without_entries_are_blank_rows():
    matrix = plots._row_normalised([[], [2.0, 4.0], [1.0]], sort=True)
    assert np.isnan(matrix[0]).all() and matrix[1].tolist() == [1.0, 0.5]
    assert matrix[2, 0] == 1.0 and np.isnan(matrix[2, 1])
