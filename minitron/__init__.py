"""minitron: Minitron structured pruning and knowledge distillation for Hugging Face causal LMs.

    import minitron
    model, tokenizer = minitron.load_model("builtin:smollm2-135m")
    blocks = minitron.token_blocks("builtin:python-docs", tokenizer, seq_len=256, num_blocks=64)
    scores = minitron.estimate_importance(model, minitron.iter_batches(blocks, 8))
    small = minitron.prune(model, scores, {"hidden_size": 432, "intermediate_size": 864})
    small = minitron.distill(small, model, "builtin:python-docs", config=minitron.DistillConfig(steps=100),
                             tokenizer=tokenizer)
    minitron.run_recipe("smollm2-cpu", "runs/family")    # a whole family: correction, chain, search, report
"""
from .config import DataConfig, DistillConfig, ImportanceConfig
from .data import iter_batches, token_blocks
from .distill.loop import distill
from .eval import evaluate_loss
from .importance import (
           ImportanceScores,
           estimate_importance,
           magnitude_scores,
           random_scores,
)
from .loading import load_model, save_checkpoint
from .params import count_parameters, count_parameters_from_config
from .prune import describe_pruning, prune
from .recipe import run_recipe
from .report import build_report
from .search import SearchConfig, run_search

__all__ = [
           "DataConfig",
           "DistillConfig",
           "ImportanceConfig",
           "ImportanceScores",
           "SearchConfig",
           "build_report",
           "count_parameters",
           "count_parameters_from_config",
           "describe_pruning",
           "distill",
           "estimate_importance",
           "evaluate_loss",
           "iter_batches",
           "load_model",
           "magnitude_scores",
           "prune",
           "random_scores",
           "run_recipe",
           "run_search",
           "save_checkpoint",
           "token_blocks",
]
