"""Offline features: the same aggregates as the online state, from an event log, in polars.

Point in time: for a snapshot ``(customer_id, as_of)`` only events with
``occurred_at <= as_of`` count. The aggregates are exact (integer sums and counts,
values taken as they are) and the features are computed from them by the shared
:func:`features._definitions.finalize`: identical to online by construction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import polars as pl

from features._definitions import (
    AGGREGATES,
    AS_OF,
    DAY_US,
    LONGEST_WINDOW,
    MONTH_DAYS,
    SIGNALS,
    Agg,
    finalize,
)
from features.errors import DataError
from features.events import LOG_SCHEMA, PRODUCT_TYPES, SEGMENTS

__all__ = ["clean_log", "offline_aggregates", "offline_features", "scan_log"]

_VALUE: Final = {"amount_minor", "balance_minor", "score", "days_late"}
_SIG: Final = {s.name: i for i, s in enumerate(SIGNALS)}
REQUIRED_COLUMNS: Final = ("event_id", "customer_id", "event_type", "occurred_at")


def scan_log(path: Path | str) -> pl.LazyFrame:
    """Lazily read an event log: a Parquet file or a dataset directory of parts."""
    p = Path(path)
    if p.is_dir():
        parts = sorted(p.glob("*.parquet"))
        if not parts:
            raise DataError(f"no Parquet parts in {p}")
        lf = pl.scan_parquet(parts)
    elif p.exists():
        lf = pl.scan_parquet(p)
    else:
        raise DataError(f"no event log at {p}")
    names = lf.collect_schema().names()
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise DataError(
            f"event log {p} lacks columns {missing}; required: {list(REQUIRED_COLUMNS)}"
        )
    absent = {c: dt for c, dt in LOG_SCHEMA.items() if c not in names}
    return lf.with_columns(pl.lit(None, dt).alias(c) for c, dt in absent.items())


def clean_log(log: pl.LazyFrame) -> pl.LazyFrame:
    """Typed events only (no raw records), each event id once, with ``t`` (µs) and ``day``."""
    return (
        log.filter(pl.col("raw").is_null() & pl.col("event_id").is_not_null())
        .unique(subset="event_id", keep="first", maintain_order=False)
        .with_columns(pl.col("occurred_at").dt.cast_time_unit("us").cast(pl.Int64).alias("t"))
        .with_columns((pl.col("t") // DAY_US).alias("day"))
    )


def _signal_rows(events: pl.LazyFrame) -> pl.LazyFrame:
    parts = []
    for i, sig in enumerate(SIGNALS):
        cond = pl.col("event_type").is_in(sorted(sig.event_types))
        for name, allowed in sig.where:
            cond &= pl.col(name).is_in(list(allowed))
        for name, banned in sig.where_not:
            cond &= ~pl.col(name).is_in(list(banned)).fill_null(False)
        if sig.positive and sig.value:
            cond &= pl.col(sig.value) > 0
        value = (
            pl.col(sig.value).cast(pl.Int64)
            if sig.value in _VALUE
            else pl.lit(1 if sig.value is None else 0, pl.Int64)
        )
        category = (
            pl.col(sig.value).cast(pl.String)
            if sig.value == "merchant_category"
            else pl.lit(None, pl.String)
        )
        parts.append(
            events.filter(cond).select(
                "customer_id",
                "t",
                "day",
                pl.lit(i, pl.Int16).alias("sig"),
                value.alias("value"),
                category.alias("cat"),
            )
        )
    return pl.concat(parts)


def offline_aggregates(log: pl.LazyFrame, snapshots: pl.DataFrame) -> pl.DataFrame:
    """Aggregates (one column per :data:`AGGREGATES` key) for each snapshot row.

    ``snapshots`` has ``customer_id`` and ``as_of`` (aware datetimes); the result has
    them too, in the same order, plus the aggregate columns (float64, NaN = none).
    """
    snaps = (
        snapshots.select("customer_id", pl.col("as_of").dt.convert_time_zone("UTC"))
        .with_row_index("snap")
        .with_columns(pl.col("as_of").dt.cast_time_unit("us").cast(pl.Int64).alias("as_of_us"))
        .with_columns((pl.col("as_of_us") // DAY_US).alias("as_of_day"))
    )
    events = clean_log(log)
    rows = _signal_rows(events).collect()
    lazy_snaps = snaps.lazy()
    joined = (
        rows.lazy()
        .join(lazy_snaps.select("snap", "customer_id", "as_of_us", "as_of_day"), on="customer_id")
        .filter(
            (pl.col("t") <= pl.col("as_of_us"))
            & (pl.col("day") > pl.col("as_of_day") - LONGEST_WINDOW)
        )
        .with_columns((pl.col("as_of_day") - pl.col("day")).alias("age"))
    )
    windowed = [a for a in AGGREGATES if a.window is not None and a.stat != "at_start"]
    exprs = [_window_expr(a).alias(a.key) for a in windowed]
    out = (
        snaps.lazy()
        .select("snap", "customer_id", "as_of", "as_of_us")
        .join(joined.group_by("snap").agg(exprs), on="snap", how="left")
    )
    out = out.join(_lifetime(rows, snaps), on="snap", how="left")
    out = out.join(_at_start(rows, snaps), on="snap", how="left")
    out = out.join(_entities(events, snaps), on="snap", how="left")
    frame = out.sort("snap").collect()
    columns = []
    for a in AGGREGATES:
        if a.key == AS_OF.key:
            columns.append(pl.col("as_of_us").cast(pl.Float64).alias(a.key))
        elif a.key in frame.columns:
            filled = pl.col(a.key).cast(pl.Float64)
            if a.stat in (
                "count",
                "sum",
                "sumsq",
                "days",
                "months",
                "distinct",
                "open",
            ) or a.stat.startswith("open_"):
                filled = filled.fill_null(0.0)
            columns.append(filled.alias(a.key))
        else:  # pragma: no cover - every aggregate has a computation
            raise DataError(f"no offline computation for {a.key}")
    return frame.select("customer_id", "as_of", *columns)


def _window_expr(a: Agg) -> pl.Expr:
    sel = (pl.col("sig") == _SIG[a.signal]) & (pl.col("age") < a.window)
    if a.stat == "count":
        return sel.sum()
    if a.stat == "sum":
        return pl.col("value").filter(sel).sum()
    if a.stat == "sumsq":
        return (pl.col("value").cast(pl.Int128) ** 2).filter(sel).sum().cast(pl.Float64)
    if a.stat == "min":
        return pl.col("value").filter(sel).min()
    if a.stat == "max":
        return pl.col("value").filter(sel).max()
    if a.stat == "days":
        return pl.col("day").filter(sel).n_unique()
    if a.stat == "months":
        return (pl.col("age") // MONTH_DAYS).filter(sel).n_unique()
    if a.stat == "distinct":
        return pl.col("cat").filter(sel).drop_nulls().n_unique()
    raise DataError(f"no offline window computation for {a.key}")


def _lifetime(rows: pl.DataFrame, snaps: pl.DataFrame) -> pl.LazyFrame:
    needed = [
        a
        for a in AGGREGATES
        if a.window is None
        and a.signal != "as_of"
        and a.stat in ("count", "sum", "first_us", "last_us", "last")
    ]
    sigs = sorted({_SIG[a.signal] for a in needed})
    cum = (
        rows.lazy()
        .filter(pl.col("sig").is_in(sigs))
        .group_by("customer_id", "sig", "t")
        .agg(
            pl.len().alias("n"), pl.col("value").sum().alias("s"), pl.col("value").max().alias("v")
        )
        .sort("customer_id", "sig", "t")
        .with_columns(
            pl.col("n").cum_sum().over("customer_id", "sig").alias("cn"),
            pl.col("s").cum_sum().over("customer_id", "sig").alias("cs"),
            pl.col("t").min().over("customer_id", "sig").alias("first"),
        )
    )
    probes = (
        snaps.lazy()
        .select("snap", "customer_id", "as_of_us")
        .join(pl.LazyFrame({"sig": sigs}, schema={"sig": pl.Int16}), how="cross")
        .sort("customer_id", "sig", "as_of_us")
    )
    matched = probes.join_asof(
        cum, left_on="as_of_us", right_on="t", by=["customer_id", "sig"], strategy="backward"
    )
    exprs = []
    for a in needed:
        pick = pl.col("sig") == _SIG[a.signal]
        col = {"count": "cn", "sum": "cs", "first_us": "first", "last_us": "t", "last": "v"}[a.stat]
        exprs.append(pl.col(col).filter(pick).first().alias(a.key))
    return matched.group_by("snap").agg(exprs)


def _at_start(rows: pl.DataFrame, snaps: pl.DataFrame) -> pl.LazyFrame:
    needed = [a for a in AGGREGATES if a.stat == "at_start"]
    frames = []
    for a in needed:
        sig = _SIG[a.signal]
        series = (
            rows.lazy()
            .filter(pl.col("sig") == sig)
            .group_by("customer_id", "t")
            .agg(pl.col("value").max().alias(a.key))
            .sort("customer_id", "t")
        )
        probe = (
            snaps.lazy()
            .select(
                "snap",
                "customer_id",
                ((pl.col("as_of_day") - a.window + 1) * DAY_US - 1).alias("probe"),
            )
            .sort("customer_id", "probe")
        )
        frames.append(
            probe.join_asof(
                series, left_on="probe", right_on="t", by="customer_id", strategy="backward"
            ).select("snap", a.key)
        )
    out = frames[0]
    for f in frames[1:]:
        out = out.join(f, on="snap")
    return out


def _entities(events: pl.LazyFrame, snaps: pl.DataFrame) -> pl.LazyFrame:
    s = snaps.lazy().select("snap", "customer_id", "as_of_us")
    # products: the latest open/close record of each product at as_of (close wins a tie)
    products = (
        events.filter(pl.col("event_type").is_in(["product_opened", "product_closed"]))
        .select(
            "customer_id",
            "product_id",
            "t",
            (pl.col("event_type") == "product_closed").cast(pl.Int8).alias("closed"),
            pl.col("product_type")
            .replace_strict(
                list(PRODUCT_TYPES), list(range(len(PRODUCT_TYPES))), return_dtype=pl.Int8
            )
            .alias("ptype"),
        )
        .join(s, on="customer_id")
        .filter(pl.col("t") <= pl.col("as_of_us"))
        .sort("snap", "product_id", "t", "closed", "ptype")
        .group_by("snap", "product_id")
        .agg(pl.col("closed").last(), pl.col("ptype").last())
        .filter(pl.col("closed") == 0)
        .group_by("snap")
        .agg(
            pl.len().alias("product_opened.open.life"),
            pl.col("ptype").n_unique().alias("product_opened.open_types.life"),
            *(
                (pl.col("ptype") == i).sum().alias(f"product_opened.open_{p}.life")
                for i, p in enumerate(PRODUCT_TYPES)
                if p != "current"
            ),
        )
    )
    complaints = (
        events.filter(pl.col("event_type").is_in(["complaint_filed", "complaint_resolved"]))
        .select("customer_id", "complaint_id", "t", "event_type")
        .join(s, on="customer_id")
        .filter(pl.col("t") <= pl.col("as_of_us"))
        .group_by("snap", "complaint_id")
        .agg(
            pl.col("t").filter(pl.col("event_type") == "complaint_filed").min().alias("filed"),
            pl.col("t")
            .filter(pl.col("event_type") == "complaint_resolved")
            .min()
            .alias("resolved"),
        )
        .filter(pl.col("filed").is_not_null() & pl.col("resolved").is_null())
        .group_by("snap")
        .agg(
            pl.len().alias("complaint.open.life"),
            pl.col("filed").min().alias("complaint.oldest_open_us.life"),
        )
    )
    segment = (
        events.filter(pl.col("event_type") == "customer_onboarded")
        .select(
            "customer_id",
            "t",
            pl.col("segment")
            .replace_strict(list(SEGMENTS), list(range(len(SEGMENTS))), return_dtype=pl.Int8)
            .alias("code"),
        )
        .join(s, on="customer_id")
        .filter(pl.col("t") <= pl.col("as_of_us"))
        .sort("snap", "t", "code")
        .group_by("snap")
        .agg(pl.col("code").last().alias("onboarded.segment.life"))
    )
    return (
        s.select("snap")
        .join(products, on="snap", how="left")
        .join(complaints, on="snap", how="left")
        .join(segment, on="snap", how="left")
    )


def offline_features(log: pl.LazyFrame, snapshots: pl.DataFrame) -> pl.DataFrame:
    """Features for each snapshot (``customer_id``, ``as_of``) of ``snapshots``."""
    aggs = offline_aggregates(log, snapshots)
    values = finalize({a.key: aggs[a.key].to_numpy() for a in AGGREGATES})
    return aggs.select("customer_id", "as_of").with_columns(
        pl.Series(name, v) for name, v in values.items()
    )
