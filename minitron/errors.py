"""Errors a user can act on. Each message says what was wrong and what to do instead."""


class MinitronError(Exception):
    """Base class: the CLI prints these as a one-line error, without a traceback."""


class UnsupportedArchitectureError(MinitronError):
    """The model's `config.model_type` has no adapter."""


class TargetError(MinitronError):
    """A pruning target that cannot be reached from the source model."""


class ScoresError(MinitronError):
    """Importance scores that are missing, corrupt, or from another model."""


class DataError(MinitronError):
    """A data spec that cannot be read or holds too little text."""


class ModelLoadError(MinitronError):
    """A model spec that cannot be loaded."""
