"""Lightweight architecture search: candidates that meet a budget, ranked by loss after pruning and after
a short distillation. See rank.py (in memory) and job.py (`minitron search`)."""
from .config import SearchConfig
from .job import list_candidates, run_search
from .rank import SearchResult, search

__all__ = ["SearchConfig", "SearchResult", "list_candidates", "run_search", "search"]
