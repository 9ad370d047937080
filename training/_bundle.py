"""The model bundle: what one registered version carries, in plain files (no pickle).

A bundle directory holds:

``churn_model.txt`` / ``value_model.txt``
    the two LightGBM boosters in LightGBM's own text format;
``calibration.json``
    the isotonic calibrator of churn probabilities (breakpoints, linear in between);
``meta.json``
    feature names and the feature-definition fingerprint, label definition, value
    objective, training-data fingerprint and code version;
``reference.json``
    reference distributions of every feature and of both scores on the test period
    (for drift monitoring).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import lightgbm as lgb
import numpy as np
import numpy.typing as npt

from features.errors import DataError, ModelNotFoundError

__all__ = [
    "BUNDLE_FILES",
    "Calibrator",
    "ModelBundle",
    "reference_distribution",
    "reference_distributions",
]

BUNDLE_FILES: Final = (
    "churn_model.txt",
    "value_model.txt",
    "calibration.json",
    "meta.json",
    "reference.json",
)
Array = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Calibrator:
    """Monotone map from raw churn probability to calibrated probability.

    >>> c = Calibrator((0.0, 0.5, 1.0), (0.0, 0.2, 0.9))
    >>> [round(float(v), 2) for v in c(np.array([0.25, 0.75, 2.0]))]
    [0.1, 0.55, 0.9]
    """

    x: tuple[float, ...]
    y: tuple[float, ...]

    def __call__(self, raw: Array) -> Array:
        if not self.x:
            return np.asarray(raw, dtype=np.float64)
        return np.interp(raw, self.x, self.y)

    @classmethod
    def fit(cls, raw: Array, labels: npt.NDArray[np.generic]) -> Calibrator:
        """Isotonic regression of the labels on the raw probabilities."""
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
        iso.fit(np.asarray(raw, dtype=np.float64), np.asarray(labels, dtype=np.float64))
        return cls(
            tuple(float(v) for v in iso.X_thresholds_),
            tuple(float(v) for v in iso.y_thresholds_),
        )


@dataclass(frozen=True, slots=True)
class ModelBundle:
    """Both models, the calibrator and what they were trained on."""

    churn: lgb.Booster
    value: lgb.Booster
    calibrator: Calibrator
    features: tuple[str, ...]
    fingerprint: str
    meta: Mapping[str, Any] = field(default_factory=dict)
    reference: Mapping[str, Any] = field(default_factory=dict)

    def matrix(self, columns: Mapping[str, npt.ArrayLike]) -> Array:
        """Feature matrix in the model's column order from named columns."""
        missing = [f for f in self.features if f not in columns]
        if missing:
            raise DataError(f"input lacks model features: {', '.join(missing[:5])}")
        return np.column_stack([np.asarray(columns[f], dtype=np.float64) for f in self.features])

    def predict(self, x: Array, threads: int = 1) -> tuple[Array, Array]:
        """(calibrated churn probability, predicted value in minor units) per row."""
        if x.shape[0] == 0:
            return np.empty(0), np.empty(0)
        raw = np.asarray(self.churn.predict(x, num_threads=threads), dtype=np.float64)
        value = np.asarray(self.value.predict(x, num_threads=threads), dtype=np.float64)
        return self.calibrator(raw), value

    def raw_churn(self, x: Array, threads: int = 1) -> Array:
        return np.asarray(self.churn.predict(x, num_threads=threads), dtype=np.float64)

    def contributions(self, x: Array, threads: int = 1) -> Array:
        """Per-feature contributions to the churn log-odds (last column: the bias)."""
        return np.asarray(
            self.churn.predict(x, pred_contrib=True, num_threads=threads), dtype=np.float64
        )

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        self.churn.save_model(str(directory / "churn_model.txt"))
        self.value.save_model(str(directory / "value_model.txt"))
        _write_json(
            directory / "calibration.json", {"x": self.calibrator.x, "y": self.calibrator.y}
        )
        meta = dict(self.meta)
        meta.update(features=list(self.features), feature_fingerprint=self.fingerprint)
        _write_json(directory / "meta.json", meta)
        _write_json(directory / "reference.json", dict(self.reference))
        return directory

    @classmethod
    def load(cls, directory: Path) -> ModelBundle:
        missing = [f for f in BUNDLE_FILES if not (directory / f).is_file()]
        if missing:
            raise ModelNotFoundError(
                f"{directory} is not a model bundle: lacks {', '.join(missing)}"
            )
        meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
        cal = json.loads((directory / "calibration.json").read_text(encoding="utf-8"))
        churn = lgb.Booster(model_file=str(directory / "churn_model.txt"))
        value = lgb.Booster(model_file=str(directory / "value_model.txt"))
        features = tuple(meta["features"])
        if list(churn.feature_name()) != list(features):
            raise DataError(f"{directory}: the churn model's features differ from meta.json")
        return cls(
            churn=churn,
            value=value,
            calibrator=Calibrator(tuple(cal["x"]), tuple(cal["y"])),
            features=features,
            fingerprint=str(meta["feature_fingerprint"]),
            meta=meta,
            reference=json.loads((directory / "reference.json").read_text(encoding="utf-8")),
        )


def reference_distribution(values: Array, bins: int = 10) -> dict[str, Any]:
    """Fixed bins from reference quantiles and the reference share in each.

    Edges are the inner quantiles (deduplicated); bin ``i`` holds values in
    ``(edges[i-1], edges[i]]``; missing values have their own share.

    >>> d = reference_distribution(np.array([1.0, 2.0, 3.0, 4.0, np.nan]), bins=2)
    >>> d["edges"], d["shares"], d["missing"]
    ([2.5], [0.5, 0.5], 0.2)
    """
    values = np.asarray(values, dtype=np.float64)
    present = values[~np.isnan(values)]
    n = len(values)
    if len(present) == 0:
        return {"edges": [], "shares": [], "missing": 1.0 if n else 0.0, "n": n}
    qs = np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1])
    edges = sorted({float(q) for q in qs})
    counts = np.bincount(np.searchsorted(edges, present, side="left"), minlength=len(edges) + 1)
    return {
        "edges": edges,
        "shares": [float(c) / len(present) for c in counts],
        "missing": float(n - len(present)) / n,
        "n": n,
        "mean": float(np.mean(present)),
    }


def reference_distributions(columns: Mapping[str, Array], names: Sequence[str]) -> dict[str, Any]:
    return {name: reference_distribution(columns[name]) for name in names}


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n", encoding="utf-8")
