"""``churn evaluate-live``: how good were the scores we emitted, now that we know.

Churn labels mature a horizon after a score. This joins the scores that were
emitted (``customer.scores``, or a file of them) with what the event log says
happened since, per score month:

* one score per customer and month, the last (a busy customer is not counted
  more than a quiet one, as in the monthly snapshots the model was trained on);
* the label is the training label (:func:`features.label_snapshots`, same churn
  definition): churned within the horizon after the score's as-of. Customers who
  had already churned at that time are left out;
* months whose horizon has passed (**matured**) get AUC, calibration (mean
  predicted vs observed rate, ECE, Brier) and the top-decile lift and capture;
* months not yet matured get the **early estimate**: the churn rate the
  calibrated probabilities expect, and the share of those scores followed by a
  churn before the end of the data (a lower bound that rises as the horizon
  passes; customers already churned at the score count as not churning).

The result is a table, JSON, and a Prometheus text file (for node exporter's
textfile collector) with ``churn_live_*{month=...}`` gauges.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import orjson
import polars as pl

from features import LabelConfig, churn_times, clean_log, label_snapshots
from training._metrics import expected_calibration_error, lift_at, roc_auc

__all__ = [
    "MonthEvaluation",
    "evaluate_live",
    "format_table",
    "prometheus_text",
    "scores_frame",
    "write_outputs",
]

DAY_US = 86_400_000_000


@dataclass(frozen=True, slots=True)
class MonthEvaluation:
    month: str  # YYYY-MM of the scores' as-of
    scores: int  # customers scored in the month (last score each)
    matured: bool
    labelled: int  # of those, with a label (not censored, not already churned)
    expected_churn_rate: float  # mean calibrated probability
    observed_churn_rate: float | None  # matured: the rate; else churned so far
    roc_auc: float | None
    ece: float | None
    brier: float | None
    lift_top10: float | None
    capture_top10: float | None
    model_versions: str


def scores_frame(records: Sequence[bytes]) -> pl.DataFrame:
    """Score records (JSON, as on ``customer.scores``) as a frame."""
    rows = [orjson.loads(r) for r in records]
    if not rows:
        raise ValueError("no scores to evaluate")
    return pl.DataFrame(
        {
            "customer_id": [r["customer_id"] for r in rows],
            "as_of": [r["as_of"] for r in rows],
            "churn_probability": [float(r["churn_probability"]) for r in rows],
            "model_version": [str(r.get("model_version", "")) for r in rows],
        }
    ).with_columns(pl.col("as_of").str.to_datetime(time_zone="UTC").dt.cast_time_unit("us"))


def evaluate_live(
    scores: pl.DataFrame, events: pl.LazyFrame, labels: LabelConfig
) -> list[MonthEvaluation]:
    """Per score month, the emitted scores against what happened (see module doc)."""
    monthly = (
        scores.with_columns(pl.col("as_of").dt.strftime("%Y-%m").alias("month"))
        .sort("as_of")
        .group_by("month", "customer_id")
        .agg(pl.all().last())
        .sort("month", "customer_id")
    )
    clean = clean_log(events)
    data_end_us = int(clean.select(pl.col("t").max()).collect().item())
    snaps = monthly.select("customer_id", "as_of")
    labelled, _ = label_snapshots(clean, snaps, labels, data_end_us)
    judged = monthly.join(
        labelled.select("customer_id", "as_of", "churn"), on=["customer_id", "as_of"], how="left"
    )
    horizon = labels.horizon_days * DAY_US
    so_far = _churned_so_far(clean, monthly, labels, data_end_us)
    out = []
    for month in judged["month"].unique().sort().to_list():
        part = judged.filter(pl.col("month") == month)
        p = part["churn_probability"].to_numpy()
        versions = ",".join(sorted(set(part["model_version"].to_list())))
        latest_us = int(part["as_of"].dt.epoch("us").max())  # type: ignore[arg-type]
        matured = latest_us + horizon <= data_end_us
        have = part.filter(pl.col("churn").is_not_null())
        if matured and have.height:
            y = have["churn"].to_numpy().astype(np.float64)
            ph = have["churn_probability"].to_numpy()
            lift, capture = lift_at(y, ph)
            out.append(
                MonthEvaluation(
                    month=month,
                    scores=part.height,
                    matured=True,
                    labelled=have.height,
                    expected_churn_rate=float(np.mean(ph)),
                    observed_churn_rate=float(np.mean(y)),
                    roc_auc=roc_auc(y, ph) if len(np.unique(y)) == 2 else None,
                    ece=expected_calibration_error(y, ph),
                    brier=float(np.mean((ph - y) ** 2)),
                    lift_top10=lift,
                    capture_top10=capture,
                    model_versions=versions,
                )
            )
        else:
            seen = so_far.filter(pl.col("month") == month)
            out.append(
                MonthEvaluation(
                    month=month,
                    scores=part.height,
                    matured=False,
                    labelled=0,
                    expected_churn_rate=float(np.mean(p)),
                    observed_churn_rate=float(seen["churned"].mean()) if seen.height else None,  # type: ignore[arg-type]
                    roc_auc=None,
                    ece=None,
                    brier=None,
                    lift_top10=None,
                    capture_top10=None,
                    model_versions=versions,
                )
            )
    return out


def _churned_so_far(
    clean: pl.LazyFrame, monthly: pl.DataFrame, labels: LabelConfig, data_end_us: int
) -> pl.DataFrame:
    """For scores whose horizon has not passed: did the customer churn between the
    as-of and the end of the data (the part of the horizon seen so far)? One pass:
    the churn times of the log, joined to those scores."""
    horizon = labels.horizon_days * DAY_US
    early = (
        monthly.select("month", "customer_id", pl.col("as_of").dt.epoch("us").alias("t"))
        .with_row_index("row")
        .filter(pl.col("t") + horizon > data_end_us)
    )
    if early.height == 0:
        return pl.DataFrame(schema={"month": pl.String, "churned": pl.Float64})
    churns = churn_times(clean, labels, data_end_us)
    hit = (
        early.join(churns, on="customer_id", how="left")
        .group_by("row", "month")
        .agg(
            ((pl.col("churn_t") > pl.col("t")) & (pl.col("churn_t") <= data_end_us))
            .fill_null(False)
            .any()
            .alias("churned")
        )
    )
    return hit.select("month", pl.col("churned").cast(pl.Float64))


def format_table(rows: Sequence[MonthEvaluation]) -> str:
    def f(x: float | None, spec: str = ".3f") -> str:
        return "-" if x is None else format(x, spec)

    head = (
        f"{'month':8} {'scores':>7} {'status':>9} {'AUC':>6} {'expected':>9} "
        f"{'observed':>9} {'ECE':>6} {'lift@10%':>8}  model"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.month:8} {r.scores:>7} {'matured' if r.matured else 'early':>9} "
            f"{f(r.roc_auc):>6} {f(r.expected_churn_rate, '.2%'):>9} "
            f"{f(r.observed_churn_rate, '.2%'):>9} {f(r.ece):>6} {f(r.lift_top10, '.2f'):>8}  "
            f"{r.model_versions}"
        )
    lines.append(
        "early: the horizon has not passed yet; 'observed' is churn seen so far (a lower bound)"
    )
    return "\n".join(lines)


_GAUGES = {
    "roc_auc": "AUC of the month's scores against matured labels",
    "expected_churn_rate": "Churn rate expected from the month's calibrated probabilities",
    "observed_churn_rate": "Observed churn rate (so far, for months not matured)",
    "ece": "Expected calibration error of the month's scores",
    "lift_top10": "Churn rate of the top decile of scores over the month's base rate",
}


def prometheus_text(rows: Sequence[MonthEvaluation]) -> str:
    """Gauges per month in the Prometheus text format (for a textfile collector)."""
    lines: list[str] = []
    for field, help_ in _GAUGES.items():
        name = f"churn_live_{field}"
        lines += [f"# HELP {name} {help_}", f"# TYPE {name} gauge"]
        for r in rows:
            value = getattr(r, field)
            if value is not None:
                lines.append(
                    f'{name}{{month="{r.month}",matured="{str(r.matured).lower()}"}} {value}'
                )
    return "\n".join(lines) + "\n"


def write_outputs(rows: Sequence[MonthEvaluation], out: Path | None, prom: Path | None) -> None:
    if out is not None:
        out.write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n", encoding="utf-8")
    if prom is not None:
        tmp = prom.with_suffix(prom.suffix + ".tmp")
        tmp.write_text(prometheus_text(rows), encoding="utf-8")
        tmp.replace(prom)  # atomic, as the textfile collector asks
