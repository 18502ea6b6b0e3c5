"""Knowledge distillation: losses (logit, chunked logit, intermediate hidden-state)."""
from minitron.distill.chunked import (
    LogitLossOutput,
    chunked_cross_entropy,
    chunked_logit_loss,
)
from minitron.distill.losses import (
    ForwardKL,
    GeneralizedJSD,
    HiddenStateLoss,
    LogitLoss,
    NextTokenCE,
    ReverseKL,
    TopKForwardKL,
    balance_weight,
    map_layers,
)

__all__ = ["ForwardKL", "GeneralizedJSD", "HiddenStateLoss", "LogitLoss", "LogitLossOutput", "NextTokenCE",
           "ReverseKL", "TopKForwardKL", "balance_weight", "chunked_cross_entropy", "chunked_logit_loss",
           "map_layers"]
