"""The domain core: bank event schema, per-customer state, feature definitions, labels.

Imports none of the engine's other packages.
"""

from features.errors import (
    ChurnEngineError,
    ConfigError,
    DataError,
    InvalidEventError,
    ModelNotFoundError,
)

__all__ = [
    "ChurnEngineError",
    "ConfigError",
    "DataError",
    "InvalidEventError",
    "ModelNotFoundError",
]
