"""Evaluation: held-out loss and perplexity (downstream tasks through lm-eval come later)."""
from .loss import evaluate_loss, mean_lm_loss

__all__ = ["evaluate_loss", "mean_lm_loss"]
