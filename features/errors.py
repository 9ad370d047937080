"""One exception root for the whole engine.

Every error we raise on purpose derives from :class:`ChurnEngineError`, so callers
(the CLI, the worker) can tell our errors, which carry a message meant for people,
from bugs.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ChurnEngineError",
    "ConfigError",
    "DataError",
    "InvalidEventError",
    "ModelNotFoundError",
]


class ChurnEngineError(Exception):
    """Root of every error the engine raises on purpose."""


class ConfigError(ChurnEngineError):
    """A setting or config file is wrong; the message names the field and what is allowed."""

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"invalid config {field}={value!r}: allowed {allowed}")


class DataError(ChurnEngineError):
    """Input data (an event log, a training set) cannot be used as given."""


class ModelNotFoundError(ChurnEngineError):
    """No model is registered under the requested name or alias."""


class InvalidEventError(ChurnEngineError):
    """An event does not follow the published schema.

    ``reason`` is a short stable code (used as the dead-letter reason and as a
    metric label); ``field``, ``value`` and ``allowed`` say what was wrong.

    >>> err = InvalidEventError("invalid_value", "amount_minor", -5, "integer > 0")
    >>> str(err)
    'invalid event (invalid_value): amount_minor=-5, allowed: integer > 0'
    """

    REASONS = (
        "malformed_json",
        "not_an_object",
        "missing_field",
        "invalid_value",
        "unknown_event_type",
        "unsupported_schema_version",
        "naive_timestamp",
    )

    def __init__(self, reason: str, field: str, value: Any, allowed: str) -> None:
        if reason not in self.REASONS:
            raise ValueError(f"unknown reason {reason!r}; allowed: {', '.join(self.REASONS)}")
        self.reason = reason
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"invalid event ({reason}): {field}={value!r}, allowed: {allowed}")
