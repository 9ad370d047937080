"""Loyalty, lifecycle stage, value tier and as-of of a micro-batch at once equal the
per-score functions."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest

from serving._model import _iso_many
from serving._scores import (
    lifecycle_stage,
    lifecycle_stages,
    loyalty_score,
    loyalty_scores,
    value_tier,
    value_tiers,
)

COLUMNS = (
    "tenure_days",
    "open_product_types",
    "salary_months_6m",
    "active_days_30d",
    "open_complaints",
    "last_survey_score",
    "days_since_activity",
    "days_since_salary",
    "products_closed_90d",
    "activity_trend",
    "balance_change_90d",
    "products_opened_180d",
    "inflow_trend",
)
# each rule's edges, and what finalize can hand out (NaN, infinities, signed zeros)
EDGES = (0.0, -0.0, 1.0, 3.0, 4.0, 6.0, 20.0, 45.0, 90.0, 180.0, 1825.0, 0.6, 1.2, -0.5)
ODD = (math.nan, math.inf, -math.inf, -1.0, 1e9)


def _batch(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    out = {}
    for name in COLUMNS:
        pick = rng.random(n)
        col = rng.uniform(-5, 400, n).round(rng.integers(0, 3))
        col = np.where(pick < 0.35, rng.choice(EDGES, n), col)
        out[name] = np.where(pick > 0.9, rng.choice(ODD, n), col)
    return out


@pytest.mark.parametrize("missing", [None, "last_survey_score", "tenure_days", "inflow_trend"])
def test_batch_equals_each_row(missing: str | None) -> None:
    rng = np.random.default_rng(17)
    n = 20_000
    columns = _batch(rng, n)
    if missing is not None:
        del columns[missing]  # an older model's features: the row functions' default
    rows = [{name: float(col[i]) for name, col in columns.items()} for i in range(n)]
    loyalty = loyalty_scores(columns, n)
    stages = lifecycle_stages(columns, n)
    for i, row in enumerate(rows):
        assert (loyalty[i], math.copysign(1, loyalty[i])) == (
            loyalty_score(row),
            math.copysign(1, loyalty_score(row)),
        ), row
        assert stages[i] == lifecycle_stage(row), row
    # every stage, and loyalty from 0 to well above the middle: the comparison covers them
    reachable = {"new", "growing", "mature", "declining", "dormant"}
    if missing == "tenure_days":
        reachable.remove("new")  # no tenure: never new
    assert set(stages) == reachable
    assert min(loyalty) == 0.0
    assert max(loyalty) > 60.0


@pytest.mark.parametrize(
    "edges",
    [
        [1000.0, 400.0, 100.0],
        [100.0, 400.0, 1000.0],  # out of order: the first one reached still wins
        [math.inf, math.inf, math.inf],  # a model without edges
        [500.0],  # fewer edges than tiers
        [900.0, 600.0, 300.0, 100.0],  # more
    ],
)
def test_tiers_of_a_batch_equal_each_value_s(edges: list[float]) -> None:
    rng = np.random.default_rng(len(edges))
    values = rng.uniform(-50, 1200, 400).round(rng.integers(0, 2))
    values[:40] = rng.choice([*edges, math.nan, math.inf, -math.inf, 0.0], 40)
    assert value_tiers(values, edges) == [value_tier(float(v), edges) for v in values]


def test_as_of_of_a_batch_is_each_time_s_isoformat() -> None:
    rng = np.random.default_rng(7)
    t = rng.integers(-(10**15), 4 * 10**15, 500)
    t[:100] -= t[:100] % 1_000_000  # whole seconds: isoformat writes no fraction
    t[100:110] = [0, -1, 1, 999_999, -1_000_000, 10**15, 1, 2, 3, 4]
    # as each score's was written: datetime.fromtimestamp(t_us / 1e6, tz=UTC).isoformat()
    assert _iso_many(t) == [datetime.fromtimestamp(x / 1e6, tz=UTC).isoformat() for x in t.tolist()]
