"""The live model: the champion from the MLflow registry, and batch scoring of states.

The version is loaded through MLflow's pyfunc loader (which reads LightGBM text
files and JSON; nothing is unpickled) and unwrapped to the bundle. Serving relies
on the bundle's small interface (:class:`Bundle`), not on the training package.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from features import AGG_KEYS, CustomerState, feature_fingerprint, finalize
from features._state import aggregates_many
from features.errors import ModelNotFoundError
from serving._scores import Score, lifecycle_stages, loyalty_scores, value_tiers

__all__ = [
    "Bundle",
    "FeatureRow",
    "LiveModel",
    "ScoredBatch",
    "champion_version",
    "load_live_model",
    "score_batch",
    "score_states",
]

logger = logging.getLogger(__name__)
Array = npt.NDArray[np.float64]


class Bundle(Protocol):
    features: tuple[str, ...]
    fingerprint: str
    meta: Mapping[str, Any]
    reference: Mapping[str, Any]

    def predict(self, x: Array, threads: int = 1) -> tuple[Array, Array]: ...

    def contributions(self, x: Array, threads: int = 1) -> Array: ...


@dataclass(frozen=True, slots=True)
class LiveModel:
    bundle: Bundle
    version: str

    @property
    def tier_edges(self) -> list[float]:
        edges = self.bundle.meta.get("value_tier_edges")
        return [float(e) for e in edges] if edges else [math.inf, math.inf, math.inf]


def _client(tracking_uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri, tracking_uri)


def champion_version(tracking_uri: str, model_name: str, alias: str = "champion") -> str | None:
    """The version the alias points to now (None when there is none)."""
    from mlflow.exceptions import MlflowException

    try:
        mv = _client(tracking_uri).get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None
    return str(mv.version)


def load_live_model(tracking_uri: str, model_name: str, version: str) -> LiveModel:
    """Load one version; refuse it if its feature definitions differ from ours."""
    import mlflow

    mlflow.set_registry_uri(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(f"models:/{model_name}/{version}")
    except Exception as exc:  # MLflow raises many kinds; all mean "cannot load"
        raise ModelNotFoundError(f"cannot load {model_name} version {version}: {exc}") from exc
    bundle: Bundle = model.get_raw_model()
    if bundle.fingerprint != feature_fingerprint():
        raise ModelNotFoundError(
            f"{model_name} version {version} was trained on feature definitions "
            f"{bundle.fingerprint}; this worker computes {feature_fingerprint()}: not loaded"
        )
    return LiveModel(bundle, version)


def feature_matrix(states: Sequence[CustomerState]) -> dict[str, Array]:
    """Features of each state at its newest event time (one row per state)."""
    aggs = aggregates_many(list(states), [s.max_t or 0 for s in states])
    return finalize(dict(zip(AGG_KEYS, aggs.T, strict=True)))


def _iso_many(t_us: npt.NDArray[np.int64]) -> list[str]:
    """``datetime.isoformat()`` of each time (µs, UTC), as the scores carry it: no
    fraction on a whole second."""
    text = np.datetime_as_string(t_us.astype("datetime64[us]"), unit="us").tolist()
    return [(t[:-7] if t.endswith(".000000") else t) + "+00:00" for t in text]


class FeatureRow(Mapping[str, float]):
    """One scored customer's features: a read-only mapping over its row of the batch.

    Building a dict of the 81 features for every score cost about 5 µs a customer,
    for the few names the alert rules read (and, for the customers who get an alert,
    the reason codes)."""

    __slots__ = ("_index", "_row")

    def __init__(self, index: Mapping[str, int], row: Sequence[float]) -> None:
        self._index = index
        self._row = row

    def __getitem__(self, name: str) -> float:
        return self._row[self._index[name]]

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        return f"FeatureRow({dict(self)!r})"


@dataclass(frozen=True, slots=True)
class ScoredBatch:
    """Scores of a micro-batch with the arrays behind them (for metrics and drift)."""

    pairs: list[tuple[Score, FeatureRow]]
    features: dict[str, Array]
    churn: Array
    value: Array
    t_us: npt.NDArray[np.int64]


def score_batch(model: LiveModel, states: Sequence[CustomerState]) -> ScoredBatch:
    """Score each state at its newest event time, with the features used."""
    t_us = np.array([s.max_t or 0 for s in states], np.int64)
    if not states:
        empty = np.zeros(0)
        return ScoredBatch([], {}, empty, empty, t_us)
    feats = feature_matrix(states)
    x = np.column_stack([feats[name] for name in model.bundle.features])
    churn, value = model.bundle.predict(x)
    out = []
    index = {name: j for j, name in enumerate(feats)}
    rows = np.column_stack(list(feats.values())).tolist()  # float64 (finalize)
    loyalty = loyalty_scores(feats, len(states))
    stages = lifecycle_stages(feats, len(states))
    as_of = _iso_many(t_us)
    tiers = value_tiers(value, model.tier_edges)
    for i, state in enumerate(states):
        out.append(
            (
                Score(
                    customer_id=state.customer_id,
                    as_of=as_of[i],
                    churn_probability=float(churn[i]),
                    predicted_value_minor=float(value[i]),
                    value_tier=tiers[i],
                    loyalty_score=loyalty[i],
                    lifecycle_stage=stages[i],
                    model_version=model.version,
                    manager_id=state.manager_id,
                    branch_id=state.branch_id,
                ),
                FeatureRow(index, rows[i]),
            )
        )
    return ScoredBatch(out, feats, np.asarray(churn), np.asarray(value), t_us)


def score_states(
    model: LiveModel, states: Sequence[CustomerState]
) -> list[tuple[Score, FeatureRow]]:
    """Score each state at its newest event time, with the features used."""
    return score_batch(model, states).pairs
