"""Training: LightGBM churn and value models, evaluated, tracked and registered in MLflow."""

from training._bundle import Calibrator, ModelBundle, reference_distribution
from training._metrics import classification_metrics, expected_calibration_error, regression_metrics
from training._pipeline import TrainJob, default_period, run_training
from training._registry import (
    CHALLENGER,
    CHAMPION,
    Promotion,
    list_models,
    load_bundle,
    promote,
    register,
)
from training._split import churn_split, value_split
from training._store import MODEL_NAME, Store
from training._train import Evaluation, TrainConfig, TrainResult, data_fingerprint, train_models

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "MODEL_NAME",
    "Calibrator",
    "Evaluation",
    "ModelBundle",
    "Promotion",
    "Store",
    "TrainConfig",
    "TrainJob",
    "TrainResult",
    "churn_split",
    "classification_metrics",
    "data_fingerprint",
    "default_period",
    "expected_calibration_error",
    "list_models",
    "load_bundle",
    "promote",
    "reference_distribution",
    "register",
    "regression_metrics",
    "run_training",
    "train_models",
    "value_split",
]
