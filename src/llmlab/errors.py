"""Errors a user can fix. The CLI prints them as one line and exits 2 (no traceback)."""


class LLMLabError(Exception):
    """Base class: a problem with the user's input or environment, with a message saying the fix."""


class ConfigError(LLMLabError, ValueError):
    """An invalid configuration value, key or file."""


class DataError(LLMLabError):
    """A missing, corrupt or mismatched data set, token file or tokenizer."""


class CheckpointError(LLMLabError):
    """A checkpoint that cannot be loaded or does not match the run."""
