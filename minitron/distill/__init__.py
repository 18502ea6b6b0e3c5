"""Knowledge distillation: losses (logit, chunked logit, intermediate hidden-state)."""
from minitron.distill.losses import (ForwardKL, GeneralizedJSD, HiddenStateLoss, LogitLoss, LogitLossOutput,
                                     NextTokenCE, ReverseKL, TopKForwardKL, balance_weight, chunked_logit_loss,
                                     map_layers)

__all__ = ["LogitLoss", "ForwardKL", "ReverseKL", "GeneralizedJSD", "TopKForwardKL", "NextTokenCE",
           "LogitLossOutput", "chunked_logit_loss", "HiddenStateLoss", "map_layers", "balance_weight"]
