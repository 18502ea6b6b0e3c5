"""Errors a user can act on. Each message says what was wrong and what to do instead.

Every class derives from `MinitronError` (the CLI prints those as one line, exit code 2) and also from
the built-in a Python caller expects: a bad setting, target or output folder is a `ValueError`, a
missing input is a `FileNotFoundError`. So `except ValueError` works as it does around any library.
"""


class MinitronError(Exception):
    """Base class: the CLI prints these as a one-line error, without a traceback."""


class SettingsError(MinitronError, ValueError):
    """A setting that is missing, empty, out of range, or of the wrong type."""


class UnsupportedArchitectureError(MinitronError, ValueError):
    """The model's `config.model_type` has no adapter."""


class TargetError(MinitronError, ValueError):
    """A pruning target that cannot be reached from the source model."""


class ScoresError(MinitronError, ValueError):
    """Importance scores that are missing, corrupt, or from another model."""


class DataError(MinitronError, ValueError):
    """A data spec that cannot be read or holds too little text."""


class ModelLoadError(MinitronError):
    """A model spec that cannot be loaded."""


class OutputError(MinitronError, ValueError):
    """An output folder that would destroy an input or files minitron did not write."""


class InputNotFoundError(MinitronError, FileNotFoundError):
    """A local file or folder named as an input does not exist."""


class ModelNotFoundError(ModelLoadError, InputNotFoundError):
    """A local model folder or .gguf file that does not exist."""


class ScoresNotFoundError(ScoresError, InputNotFoundError):
    """A scores folder that does not exist or holds no scores."""


class DataNotFoundError(DataError, InputNotFoundError):
    """A local data file or folder that does not exist."""


class HubPushError(MinitronError, OSError):
    """An upload to the Hugging Face Hub that failed; the model it was uploading is intact on disk."""
