"""The domain core: bank event schema, per-customer state, feature definitions, labels.

Imports none of the engine's other packages.
"""

from features._definitions import (
    AGGREGATES,
    FEATURES,
    FEATURES_BY_NAME,
    SIGNALS,
    WINDOWS,
    Agg,
    Feature,
    Signal,
    feature_fingerprint,
    finalize,
)
from features._offline import clean_log, offline_aggregates, offline_features, scan_log
from features._parity import ParityReport, check_parity
from features._state import STATE_VERSION, CustomerState, event_hash, to_us
from features.errors import (
    ChurnEngineError,
    ConfigError,
    DataError,
    InvalidEventError,
    ModelNotFoundError,
)

__all__ = [
    "AGGREGATES",
    "FEATURES",
    "FEATURES_BY_NAME",
    "SIGNALS",
    "STATE_VERSION",
    "WINDOWS",
    "Agg",
    "ChurnEngineError",
    "ConfigError",
    "CustomerState",
    "DataError",
    "Feature",
    "InvalidEventError",
    "ModelNotFoundError",
    "ParityReport",
    "Signal",
    "check_parity",
    "clean_log",
    "event_hash",
    "feature_fingerprint",
    "finalize",
    "offline_aggregates",
    "offline_features",
    "scan_log",
    "to_us",
]
