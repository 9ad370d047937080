"""What a score says about a customer: value tier, loyalty, lifecycle stage.

All three are functions of the feature vector and the predicted value, so a
score can be recomputed from the event log alone.

Value tiers compare the predicted 12-month value with thresholds the model carries
(``value_tier_edges`` in its metadata: the 95th, 80th and 50th percentiles of
predicted value on its test period): ``platinum`` is the top 5%, ``gold`` the next
15%, ``silver`` the next 30%, ``bronze`` the rest.

Loyalty (0-100) adds up, with weights, what banks read as loyalty: tenure (up to 5
years), breadth of products (up to 4 kinds), salary paid in (months of the last 6),
digital engagement (active days in 30), and it loses points for open complaints
and poor survey answers.

Lifecycle stage, first match wins:
``dormant``  no customer-initiated activity for 90 days or more;
``new``      with the bank for less than 180 days;
``declining`` products closed in 90 days, or activity down 40%+ vs the previous
             period, or balance down 50%+ in 90 days, or the salary stopped
             (none for 45 days after at least 3 months with one);
``growing``  products opened in 180 days, or inflows up 20%+;
``mature``   otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "LIFECYCLE_STAGES",
    "VALUE_TIERS",
    "Score",
    "lifecycle_stage",
    "lifecycle_stages",
    "loyalty_score",
    "loyalty_scores",
    "value_tier",
    "value_tiers",
]

VALUE_TIERS: Final = ("platinum", "gold", "silver", "bronze")
LIFECYCLE_STAGES: Final = ("new", "growing", "mature", "declining", "dormant")
Stage = Literal["new", "growing", "mature", "declining", "dormant"]


@dataclass(frozen=True, slots=True)
class Score:
    """One emitted score (topic ``customer.scores``)."""

    customer_id: str
    as_of: str  # RFC 3339, UTC: the time of the newest event folded in
    churn_probability: float
    predicted_value_minor: float
    value_tier: str
    loyalty_score: float
    lifecycle_stage: str
    model_version: str
    manager_id: str | None
    branch_id: str | None


def _v(features: Mapping[str, float], name: str, default: float = 0.0) -> float:
    x = features.get(name, math.nan)
    return default if x is None or math.isnan(x) else float(x)


def value_tier(value: float, edges: Sequence[float]) -> str:
    """The tier of a predicted value, given the tier edges (highest first).

    >>> value_tier(500.0, [1000.0, 400.0, 100.0])
    'gold'
    """
    for name, edge in zip(VALUE_TIERS, edges, strict=False):
        if value >= edge:
            return name
    return VALUE_TIERS[-1]


def value_tiers(values: npt.ArrayLike, edges: Sequence[float]) -> list[str]:
    """:func:`value_tier` of each value (a micro-batch's at once).

    >>> value_tiers([500.0, 50.0, float("nan")], [1000.0, 400.0, 100.0])
    ['gold', 'bronze', 'bronze']
    """
    reached = np.asarray(values, np.float64)[:, None] >= np.asarray(
        edges[: len(VALUE_TIERS)], np.float64
    )
    first = np.where(reached.any(axis=1), reached.argmax(axis=1), len(VALUE_TIERS) - 1)
    return [VALUE_TIERS[i] for i in first.tolist()]


def loyalty_score(f: Mapping[str, float]) -> float:
    """Loyalty, 0-100 (see the module's notes).

    >>> loyalty_score({"tenure_days": 1825, "open_product_types": 4, "salary_months_6m": 6,
    ...                "active_days_30d": 20, "open_complaints": 0})
    100.0
    """
    tenure = min(_v(f, "tenure_days") / 1825.0, 1.0)
    breadth = min(_v(f, "open_product_types") / 4.0, 1.0)
    salary = min(_v(f, "salary_months_6m") / 6.0, 1.0)
    digital = min(_v(f, "active_days_30d") / 20.0, 1.0)
    score = 100.0 * (0.25 * tenure + 0.25 * breadth + 0.3 * salary + 0.2 * digital)
    score -= 10.0 * min(_v(f, "open_complaints"), 3.0)
    survey = _v(f, "last_survey_score", 10.0)
    if survey <= 6:
        score -= 10.0
    return round(max(0.0, min(100.0, score)), 1)


def lifecycle_stage(f: Mapping[str, float]) -> Stage:
    """The lifecycle stage (see the module's notes).

    >>> lifecycle_stage({"days_since_activity": 120, "tenure_days": 900})
    'dormant'
    """
    if _v(f, "days_since_activity", math.inf) >= 90:
        return "dormant"
    if _v(f, "tenure_days", math.inf) < 180:
        return "new"
    salary_stopped = _v(f, "days_since_salary") >= 45 and _v(f, "salary_months_6m") >= 3
    if (
        _v(f, "products_closed_90d") > 0
        or _v(f, "activity_trend", 1.0) <= 0.6
        or _v(f, "balance_change_90d") <= -0.5
        or salary_stopped
    ):
        return "declining"
    if _v(f, "products_opened_180d") > 0 or _v(f, "inflow_trend", 1.0) >= 1.2:
        return "growing"
    return "mature"


# ---------------------------------------------------------------- a batch at once
# The live scorer computes loyalty and stage for a whole micro-batch from the feature
# columns: the same arithmetic as the functions above, in the same order, on float64
# (equal to them row by row, by test); the final clamp and rounding stay Python's.

Columns = Mapping[str, npt.NDArray[np.float64]]


def _col(features: Columns, name: str, n: int, default: float = 0.0) -> npt.NDArray[np.float64]:
    """:func:`_v` of a column: ``default`` where the feature is missing or NaN."""
    x = features.get(name)
    if x is None:
        return np.full(n, default)
    x = np.asarray(x, np.float64)
    return np.where(np.isnan(x), default, x)


def loyalty_scores(features: Columns, n: int) -> list[float]:
    """:func:`loyalty_score` of each of ``n`` rows of feature columns."""
    with np.errstate(invalid="ignore"):  # infinite features: NaN, as Python's floats give
        tenure = np.minimum(_col(features, "tenure_days", n) / 1825.0, 1.0)
        breadth = np.minimum(_col(features, "open_product_types", n) / 4.0, 1.0)
        salary = np.minimum(_col(features, "salary_months_6m", n) / 6.0, 1.0)
        digital = np.minimum(_col(features, "active_days_30d", n) / 20.0, 1.0)
        score = 100.0 * (0.25 * tenure + 0.25 * breadth + 0.3 * salary + 0.2 * digital)
        score -= 10.0 * np.minimum(_col(features, "open_complaints", n), 3.0)
    score = np.where(_col(features, "last_survey_score", n, 10.0) <= 6, score - 10.0, score)
    return [round(max(0.0, min(100.0, x)), 1) for x in score.tolist()]


_STAGES: Final = np.array(["dormant", "new", "declining", "growing", "mature"], dtype=object)


def lifecycle_stages(features: Columns, n: int) -> list[Stage]:
    """:func:`lifecycle_stage` of each of ``n`` rows of feature columns."""
    salary_stopped = (_col(features, "days_since_salary", n) >= 45) & (
        _col(features, "salary_months_6m", n) >= 3
    )
    declining = (
        (_col(features, "products_closed_90d", n) > 0)
        | (_col(features, "activity_trend", n, 1.0) <= 0.6)
        | (_col(features, "balance_change_90d", n) <= -0.5)
        | salary_stopped
    )
    growing = (_col(features, "products_opened_180d", n) > 0) | (
        _col(features, "inflow_trend", n, 1.0) >= 1.2
    )
    first = np.select(
        [
            _col(features, "days_since_activity", n, math.inf) >= 90,
            _col(features, "tenure_days", n, math.inf) < 180,
            declining,
            growing,
        ],
        [0, 1, 2, 3],
        4,
    )
    return list(_STAGES[first])
