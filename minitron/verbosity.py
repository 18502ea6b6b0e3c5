"""How much minitron and the libraries it drives print: one switch for every progress bar and log.

    minitron --quiet prune ...        # no progress bars, warnings and errors only
    minitron prune ... --verbose      # transformers' info logs too
    TQDM_DISABLE=1 minitron eval ...  # no bars; TRANSFORMERS_VERBOSITY=error works as in transformers

minitron's own bars take `disable=` from `progress_enabled()`, and `verbosity()` switches off the bars
of transformers ("Loading weights", "Writing model shards"), datasets and huggingface_hub. Under torchrun
only rank 0 shows bars and info logs, so N processes do not print N copies.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator

import datasets
import huggingface_hub.utils as hub_utils
from tqdm.auto import tqdm
from transformers.utils import logging as transformers_logging

from .errors import MinitronError

LEVELS = ("quiet", "normal", "verbose")
_TRUE = ("1", "true", "yes", "on")
_level = "normal"


def is_main_process() -> bool:
    """Rank 0 under torchrun (RANK is set for every process it starts); always true otherwise."""
    return os.environ.get("RANK", "0") == "0"


def progress_enabled() -> bool:
    """Whether progress bars may be drawn: not --quiet, rank 0, and TQDM_DISABLE not set."""
    disabled_by_env = os.environ.get("TQDM_DISABLE", "").strip().lower() in _TRUE
    return _level != "quiet" and is_main_process() and not disabled_by_env


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs) -> tqdm:
    """A tqdm bar that obeys `progress_enabled()`; `enabled=False` switches off this one bar."""
    return tqdm(iterable, disable=not (enabled and progress_enabled()), **kwargs)


@contextlib.contextmanager
def verbosity(level: str = "normal") -> Iterator[None]:
    """Apply `level` (quiet, normal or verbose) to minitron, transformers, datasets and the Hub client
    for the duration of the block, then restore what was there (a CLI call leaves no global trace).

    Environment variables still win where the libraries read them: TRANSFORMERS_VERBOSITY at the normal
    level, TQDM_DISABLE and HF_HUB_DISABLE_PROGRESS_BARS always.
    """
    global _level
    if level not in LEVELS:
        raise MinitronError(f"verbosity must be one of {', '.join(LEVELS)}, got {level!r}")
    saved = _library_state()
    previous, _level = _level, level
    try:
        if not progress_enabled():
            _disable_library_bars()
        if level == "quiet" or not is_main_process():
            transformers_logging.set_verbosity_error()
        elif level == "verbose":
            transformers_logging.set_verbosity_info()
        yield
    finally:
        _level = previous
        _restore_library_state(saved)


def _library_state() -> tuple:
    return (transformers_logging.get_verbosity(), transformers_logging.is_progress_bar_enabled(),
            hub_utils.are_progress_bars_disabled(), datasets.are_progress_bars_disabled())


def _disable_library_bars() -> None:
    transformers_logging.disable_progress_bar()
    hub_utils.disable_progress_bars()
    datasets.disable_progress_bars()


def _restore_library_state(saved: tuple) -> None:
    transformers_level, transformers_bars, hub_disabled, datasets_disabled = saved
    transformers_logging.set_verbosity(transformers_level)
    if transformers_bars:
        transformers_logging.enable_progress_bar()
    if not hub_disabled and hub_utils.are_progress_bars_disabled():
        hub_utils.enable_progress_bars()
    if not datasets_disabled and datasets.are_progress_bars_disabled():
        datasets.enable_progress_bars()


REPORTERS = ("none", "tensorboard", "wandb")
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def check_report_to(report_to: str) -> None:
    """Refuse an unknown reporter, or one whose package is missing, before any work (as Trainer's report_to)."""
    if report_to not in REPORTERS:
        raise MinitronError(f"--report-to must be one of {', '.join(REPORTERS)}, got {report_to!r}")
    package = _PACKAGES.get(report_to)
    if package is not None and importlib.util.find_spec(package) is None:
        raise MinitronError(f"--report-to {report_to} needs the {package} package: pip install {package} "
                            "(or use --report-to none; metrics.jsonl is always written)")
