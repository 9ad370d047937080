"""Point-in-time training sets: one row per customer and snapshot, features and labels."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import polars as pl

from features._availability import Availability, feature_availability
from features._definitions import FEATURES, feature_fingerprint
from features._labels import LabelConfig, label_snapshots
from features._offline import clean_log, needed_columns, offline_features
from features._parallel import ordered_map
from features.errors import DataError

__all__ = ["TrainingSet", "build_training_set", "snapshot_dates"]


@dataclass(slots=True)
class TrainingSet:
    """The rows, and an account of how they were built."""

    frame: pl.DataFrame
    counts: dict[str, int] = field(default_factory=dict)
    label_config: LabelConfig = field(default_factory=LabelConfig)
    fingerprint: str = ""
    seconds: float = 0.0
    availability: Availability | None = None

    def format(self) -> str:
        f = self.frame
        churn = float(f["churn"].mean() or 0.0) if f.height else 0.0  # type: ignore[arg-type]
        lines = [
            f"training set: {f.height:,} rows, {f['customer_id'].n_unique():,} customers, "
            f"{f['as_of'].n_unique()} snapshots, {len(FEATURES)} features "
            f"(definitions {self.fingerprint}) in {self.seconds:.1f} s",
            f"  churn definition: {self.label_config.churn_definition}, horizon "
            f"{self.label_config.horizon_days} days; churn rate {churn:.2%}",
            f"  excluded: {self.counts.get('already_churned', 0):,} already churned at as-of, "
            f"{self.counts.get('censored', 0):,} censored (horizon past the end of the data)",
            f"  value label (next {self.label_config.value_days} days) known for "
            f"{f['value_minor'].is_not_null().sum():,} rows",
        ]
        if self.availability is not None and self.availability.unavailable:
            lines.append(
                f"  unavailable (null, no signal in the log): "
                f"{len(self.availability.unavailable)} features"
            )
            lines += [
                f"    {name:<30} {why}"
                for name, why in sorted(self.availability.unavailable.items())
            ]
        return "\n".join(lines)


def snapshot_dates(start: date, end: date, every_days: int) -> list[datetime]:
    """As-of times: midnight UTC of ``start``, every ``every_days``, up to ``end``."""
    if every_days < 1:
        raise DataError(f"--every must be at least 1 day, got {every_days}")
    if end < start:
        raise DataError(f"the period is empty: end {end} is before start {start}")
    out = []
    day = start
    while day <= end:
        out.append(datetime(day.year, day.month, day.day, tzinfo=UTC))
        day += timedelta(days=every_days)
    return out


def _chunk(
    job: tuple[pl.LazyFrame, pl.Series, LabelConfig, int, pl.DataFrame],
) -> tuple[pl.DataFrame | None, dict[str, int]]:
    """Labels and features of one chunk of customers (runs in a worker process)."""
    log, ids, cfg, end_us, grid = job
    # chunks are ranges of sorted customer ids: a range filter lets Parquet
    # statistics skip the row groups of other customers
    in_range = pl.col("customer_id").is_between(pl.lit(ids.min()), pl.lit(ids.max()), closed="both")
    chunk_log = log.filter(in_range).select(needed_columns())
    events = clean_log(chunk_log).collect().lazy()  # read and deduplicated once
    labelled, counts = label_snapshots(events, grid, cfg, end_us)
    if labelled.height == 0:
        return None, counts
    feats = offline_features(events, labelled.select("customer_id", "as_of"), cleaned=True)
    frame = pl.concat(
        [
            labelled.select("customer_id", "as_of", "churn", "value_minor"),
            feats.drop("customer_id", "as_of"),
        ],
        how="horizontal",
    )
    return frame, counts


def build_training_set(
    log: pl.LazyFrame,
    start: date,
    end: date,
    every_days: int = 30,
    labels: LabelConfig | None = None,
    chunk_customers: int = 8_000,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> TrainingSet:
    """Features and labels at every snapshot of every customer known at that time.

    Customers are processed in chunks (their events read with a filter that Parquet
    statistics prune), so memory depends on the chunk, not on the bank; chunks run
    on ``workers`` processes (default: one per core).
    """
    began = time.perf_counter()
    cfg = labels or LabelConfig()
    dates = snapshot_dates(start, end, every_days)
    # first and last event time per customer: duplicates do not change them, so no
    # deduplication here (the chunks deduplicate their own events)
    summary = (
        log.filter(pl.col("raw").is_null() & pl.col("event_id").is_not_null())
        .select(
            "customer_id", pl.col("occurred_at").dt.cast_time_unit("us").cast(pl.Int64).alias("t")
        )
        .group_by("customer_id")
        .agg(pl.col("t").min().alias("first_t"), pl.col("t").max().alias("last_t"))
        .collect(engine="streaming")
    )
    if summary.height == 0:
        raise DataError("the event log holds no valid events")
    end_us = int(summary["last_t"].max())  # type: ignore[arg-type]
    grid = (
        summary.select("customer_id", "first_t")
        .join(
            pl.DataFrame({"as_of": dates}, schema={"as_of": pl.Datetime("us", "UTC")}), how="cross"
        )
        .filter(pl.col("first_t") <= pl.col("as_of").cast(pl.Int64))
        .select("customer_id", "as_of")
        .sort("customer_id", "as_of")
    )
    if grid.height == 0:
        raise DataError(f"no customer is known between {start} and {end}: the period is empty")
    customers = grid["customer_id"].unique().sort()
    jobs = []
    for i in range(0, customers.len(), chunk_customers):
        ids = customers[i : i + chunk_customers]
        jobs.append(
            (log, ids, cfg, end_us, grid.filter(pl.col("customer_id").is_in(ids.implode())))
        )
    frames: list[pl.DataFrame] = []
    counts: dict[str, int] = {}
    n_workers = min(workers or os.cpu_count() or 1, len(jobs))
    for n, (frame, chunk_counts) in enumerate(ordered_map(_chunk, jobs, n_workers), 1):
        for key, value in chunk_counts.items():
            counts[key] = counts.get(key, 0) + value
        if frame is not None:
            frames.append(frame)
        if progress:
            progress(n, len(jobs))
    if not frames:
        last = datetime.fromtimestamp(end_us / 1e6, tz=UTC).date()
        raise DataError(
            f"no snapshot has a full {cfg.horizon_days}-day horizon: the data end on {last}; "
            f"end the period by {last - timedelta(days=cfg.horizon_days)}"
        )
    frame = pl.concat(frames).sort("as_of", "customer_id")
    # features the log cannot support at all are null, not zero: see features._availability
    availability = feature_availability(log)
    if availability.unavailable:
        frame = frame.with_columns(
            pl.lit(None, pl.Float64).alias(name) for name in availability.unavailable
        )
    return TrainingSet(
        frame, counts, cfg, feature_fingerprint(), time.perf_counter() - began, availability
    )
