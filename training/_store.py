"""Where runs and models are tracked: MLflow, embedded or a real server.

``MLFLOW_TRACKING_URI`` wins when set (a tracking server, e.g. ``http://mlflow:5000``);
otherwise an embedded store: SQLite at ``<data_dir>/mlflow/mlflow.db`` and artifacts
under ``<data_dir>/mlflow/artifacts``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

__all__ = ["EXPERIMENT", "MODEL_NAME", "Store"]

logger = logging.getLogger(__name__)

MODEL_NAME: Final = "churn-engine"
EXPERIMENT: Final = "churn-engine"


@dataclass(frozen=True, slots=True)
class Store:
    """Tracking and registry location, resolved once at the edge."""

    tracking_uri: str
    artifact_root: str | None  # None: the server decides
    model_name: str = MODEL_NAME
    experiment: str = EXPERIMENT

    @classmethod
    def resolve(cls, data_dir: Path, environ: Mapping[str, str] | None = None) -> Store:
        env = os.environ if environ is None else environ
        uri = env.get("MLFLOW_TRACKING_URI", "").strip()
        if uri:
            return cls(uri, None)
        root = (data_dir / "mlflow").resolve()
        return cls(f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri())

    @property
    def embedded(self) -> bool:
        return self.artifact_root is not None

    def client(self) -> Any:
        """An ``MlflowClient`` bound to this store (the store is created if new)."""
        import mlflow
        from mlflow import MlflowClient

        if self.embedded:
            path = Path(self.tracking_uri.removeprefix("sqlite:///"))
            path.parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        return MlflowClient(self.tracking_uri, self.tracking_uri)

    def experiment_id(self, client: Any) -> str:
        exp = client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return str(exp.experiment_id)
        return str(client.create_experiment(self.experiment, artifact_location=self.artifact_root))

    def describe(self) -> str:
        if self.embedded:
            db = self.tracking_uri.removeprefix("sqlite:///")
            return f"{self.tracking_uri} (UI: mlflow ui --backend-store-uri sqlite:///{db})"
        return self.tracking_uri
