"""MLflow pyfunc loader: ``mlflow.pyfunc.load_model`` calls :func:`_load_pyfunc`.

The model is logged with ``loader_module="training._pyfunc"`` and the bundle
directory as its data, so loading reads LightGBM text files and JSON: nothing is
unpickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training._bundle import ModelBundle

__all__ = ["EnginePyfunc"]


class EnginePyfunc:
    """pyfunc face of a bundle: a frame of features in, two scores out."""

    def __init__(self, bundle: ModelBundle) -> None:
        self.bundle = bundle

    def predict(
        self, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        frame = pd.DataFrame(model_input)
        x = self.bundle.matrix({c: frame[c].to_numpy() for c in frame.columns})
        churn, value = self.bundle.predict(x)
        return pd.DataFrame(
            {"churn_probability": churn, "value_minor": value.astype(np.float64)},
            index=frame.index,
        )

    def get_raw_model(self) -> ModelBundle:
        return self.bundle


def _load_pyfunc(data_path: str) -> EnginePyfunc:
    return EnginePyfunc(ModelBundle.load(Path(data_path)))
