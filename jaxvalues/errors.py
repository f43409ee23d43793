"""Errors for user mistakes.

A `JaxValuesError` is raised for bad input (a wrong path, a malformed file, an unknown name).
The CLI prints its message without a traceback and exits with status 2. Its message must name
the file, line or field and say what was expected.
"""

from __future__ import annotations


class JaxValuesError(Exception):
    """A user-facing error: the message alone tells the user what to fix."""


class ConfigError(JaxValuesError):
    """An unsupported or inconsistent model / experiment configuration."""


class CheckpointError(JaxValuesError):
    """A checkpoint (safetensors, GGUF, orbax) is missing, truncated or does not match the model."""


class DataError(JaxValuesError):
    """A dataset file or record is invalid."""
