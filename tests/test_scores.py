"""Loyalty and lifecycle stage of a micro-batch at once equal the per-score functions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from serving._scores import lifecycle_stage, lifecycle_stages, loyalty_score, loyalty_scores

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
