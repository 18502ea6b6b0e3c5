"""Padding is invisible to every importance score: left, right or none, the same sequences score the same."""
import pytest
import torch

from minitron.eval.loss import mean_lm_loss, next_token_labels
from minitron.importance import estimate_importance
from tests.tiny import tiny_model

LENGTHS = (12, 7, 9)  # short: within reach of every family's sliding window and soft-capping


def _sequences() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    return [torch.randint(3, 320, (length,), generator=generator) for length in LENGTHS]


def _padded_batch(sequences: list[torch.Tensor], side: str) -> dict:
    width = max(len(s) for s in sequences)
    input_ids = torch.zeros(len(sequences), width, dtype=torch.long)  # 0 is the tiny models' pad token
    attention_mask = torch.zeros_like(input_ids)
    for row, sequence in enumerate(sequences):
        span = slice(width - len(sequence), width) if side == "left" else slice(0, len(sequence))
        input_ids[row, span], attention_mask[row, span] = sequence, 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def test_padding_changes_no_score(model):
    sequences = _sequences()
    unpadded = estimate_importance(model, [s[None] for s in sequences], layer_loss_batches=len(sequences),
                                   progress=False)
    close = dict(rtol=1e-4, atol=1e-6)
    for side in ("left", "right"):
        padded = estimate_importance(model, [_padded_batch(sequences, side)], layer_loss_batches=1,
                                     progress=False)
        torch.testing.assert_close(padded.layers["lm_loss"], unpadded.layers["lm_loss"], rtol=0, atol=2e-6)
        torch.testing.assert_close(padded.layers["block_influence"], unpadded.layers["block_influence"], **close)
        torch.testing.assert_close(padded.hidden, unpadded.hidden, **close)
        for padded_scores, unpadded_scores in zip(padded.neurons + padded.heads,
                                                  unpadded.neurons + unpadded.heads):
            torch.testing.assert_close(padded_scores, unpadded_scores, **close)
        assert padded.meta["num_tokens"] == unpadded.meta["num_tokens"] == sum(LENGTHS)


def test_left_padding_is_never_a_prediction_source():
    batch = _padded_batch(_sequences(), "left")
    labels = next_token_labels(batch["input_ids"], batch["attention_mask"])
    predicted = int((labels[:, 1:] != -100).sum())
    assert predicted == sum(length - 1 for length in LENGTHS)


def test_padded_loss_equals_the_loss_of_each_sequence():
    torch.manual_seed(0)
    model, sequences = tiny_model("llama"), _sequences()
    alone = [mean_lm_loss(model, [{"input_ids": s[None]}]) for s in sequences]
    expected = sum(loss * count for loss, count in alone) / sum(count for _, count in alone)
    for side in ("left", "right"):
        loss, count = mean_lm_loss(model, [_padded_batch(sequences, side)])
        assert count == sum(c for _, c in alone)
        assert loss == pytest.approx(expected, abs=1e-5)
