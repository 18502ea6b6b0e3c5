"""Importance estimation: activation hooks, aggregation, depth scores, score files, baselines."""
from .api import estimate_importance
from .baselines import magnitude_scores, random_scores
from .scores import ImportanceScores

__all__ = ["ImportanceScores", "estimate_importance", "magnitude_scores", "random_scores"]
