"""The domain core: bank event schema, per-customer state, feature definitions, labels.

Imports none of the engine's other packages.
"""

from features._availability import Availability, feature_availability
from features._definitions import (
    AGG_KEYS,
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
from features._import import REJECT_REASONS, ImportReport, import_events, row_ids
from features._labels import (
    CHURN_DEFINITIONS,
    LabelConfig,
    churn_times,
    label_snapshots,
    trailing_value,
)
from features._mapping import ImportMapping, load_mapping
from features._offline import clean_log, offline_aggregates, offline_features, scan_log
from features._parallel import ordered_map
from features._parity import ParityReport, check_parity
from features._state import (
    FOLD_COMPILED,
    STATE_VERSION,
    CustomerState,
    event_hash,
    fold_event,
    to_bytes_many,
    to_us,
)
from features._trainset import TrainingSet, build_training_set, snapshot_dates
from features.errors import (
    ChurnEngineError,
    ConfigError,
    DataError,
    InvalidEventError,
    ModelNotFoundError,
)

__all__ = [
    "AGGREGATES",
    "AGG_KEYS",
    "CHURN_DEFINITIONS",
    "FEATURES",
    "FEATURES_BY_NAME",
    "FOLD_COMPILED",
    "REJECT_REASONS",
    "SIGNALS",
    "STATE_VERSION",
    "WINDOWS",
    "Agg",
    "Availability",
    "ChurnEngineError",
    "ConfigError",
    "CustomerState",
    "DataError",
    "Feature",
    "ImportMapping",
    "ImportReport",
    "InvalidEventError",
    "LabelConfig",
    "ModelNotFoundError",
    "ParityReport",
    "Signal",
    "TrainingSet",
    "build_training_set",
    "check_parity",
    "churn_times",
    "clean_log",
    "event_hash",
    "feature_availability",
    "feature_fingerprint",
    "finalize",
    "fold_event",
    "import_events",
    "label_snapshots",
    "load_mapping",
    "offline_aggregates",
    "offline_features",
    "ordered_map",
    "row_ids",
    "scan_log",
    "snapshot_dates",
    "to_bytes_many",
    "to_us",
    "trailing_value",
]
