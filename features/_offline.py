"""Offline features: the same aggregates as the online state, from an event log, in polars.

Point in time: for a snapshot ``(customer_id, as_of)`` only events with
``occurred_at <= as_of`` count. The aggregates are exact (integer sums and counts,
values taken as they are) and the features are computed from them by the shared
:func:`features._definitions.finalize`: identical to online by construction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import numpy as np
import polars as pl

from features._definitions import (
    AGGREGATES,
    AS_OF,
    DAY_US,
    MONTH_DAYS,
    SIGNALS,
    Agg,
    Signal,
    finalize,
)
from features.errors import DataError
from features.events import LOG_SCHEMA, PRODUCT_TYPES, SEGMENTS

__all__ = ["clean_log", "offline_aggregates", "offline_features", "scan_log"]

_VALUE: Final = {"amount_minor", "balance_minor", "score", "days_late"}
_SIG: Final = {s.name: i for i, s in enumerate(SIGNALS)}
REQUIRED_COLUMNS: Final = ("event_id", "customer_id", "event_type", "occurred_at")
_NEEDED: Final = [
    *REQUIRED_COLUMNS,
    "raw",
    "amount_minor",
    "balance_minor",
    "score",
    "days_late",
    "channel",
    "counterparty",
    "merchant_category",
    "satisfied",
    "product_id",
    "product_type",
    "complaint_id",
    "segment",
]


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


def needed_columns() -> list[str]:
    """The log columns the offline features and labels read."""
    return list(_NEEDED)


def clean_log(log: pl.LazyFrame) -> pl.LazyFrame:
    """Typed events only (no raw records), each event id once, with ``t`` (µs) and ``day``."""
    return (
        log.filter(pl.col("raw").is_null() & pl.col("event_id").is_not_null())
        # the first copy of each event id, in the log's order (10x faster than unique)
        .filter(pl.col("event_id").is_first_distinct())
        .with_columns(pl.col("occurred_at").dt.cast_time_unit("us").cast(pl.Int64).alias("t"))
        .with_columns((pl.col("t") // DAY_US).alias("day"))
    )


def signal_predicate(sig: Signal) -> pl.Expr:
    """The field conditions of a signal (not its event types) as a polars expression."""
    cond = pl.lit(True)
    for name, allowed in sig.where:
        cond &= pl.col(name).is_in(list(allowed))
    for name, banned in sig.where_not:
        cond &= ~pl.col(name).is_in(list(banned)).fill_null(False)
    if sig.positive and sig.value:
        cond &= pl.col(sig.value) > 0
    return cond


def signal_condition(sig: Signal) -> pl.Expr:
    """Events that feed a signal: its event types and field conditions."""
    return pl.col("event_type").is_in(sorted(sig.event_types)) & signal_predicate(sig)


def _signal_rows(events: pl.DataFrame) -> pl.DataFrame:
    """One row per (event, signal it feeds): customer code, signal, time, day, value."""
    by_type = events.partition_by("event_type", as_dict=True)
    parts = []
    for i, sig in enumerate(SIGNALS):
        frames = [by_type[(t,)] for t in sorted(sig.event_types) if (t,) in by_type]
        if not frames:
            continue
        # one filter over all events keeps the (customer, time) order of several types
        frame = (
            events.filter(pl.col("event_type").is_in(sorted(sig.event_types)))
            if len(frames) > 1
            else frames[0]
        )
        cond = signal_predicate(sig)
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
            frame.filter(cond).select(
                "cust",
                "t",
                "day",
                pl.lit(i, pl.Int16).alias("sig"),
                value.alias("value"),
                category.alias("cat"),
            )
        )
    return pl.concat(parts)


def offline_aggregates(
    log: pl.LazyFrame, snapshots: pl.DataFrame, *, cleaned: bool = False
) -> pl.DataFrame:
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
    events_all = (log if cleaned else clean_log(log.select(_NEEDED))).collect()
    customers = pl.concat([events_all["customer_id"], snaps["customer_id"]]).unique().sort()
    codes = pl.Enum(customers)
    events_df = events_all.with_columns(
        pl.col("customer_id").cast(codes).to_physical().cast(pl.Int64).alias("cust")
    ).sort("cust", "t")
    snaps = snaps.with_columns(
        pl.col("customer_id").cast(codes).to_physical().cast(pl.Int64).alias("cust")
    )
    rows = _signal_rows(events_df)
    events = events_df.lazy()
    out = (
        snaps.lazy()
        .select("snap", "customer_id", "as_of", "as_of_us")
        .join(_additive(rows, snaps), on="snap", how="left")
        .join(_windowed_other(rows, snaps), on="snap", how="left")
    )
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


_ADDITIVE: Final = ("count", "sum", "days")
_LIFETIME: Final = ("count", "sum", "first_us", "last_us", "last")
_KEY_SPAN: Final = 1 << 32  # key = signal * 2^32 + customer code


def _grouped_cumsum(values: np.ndarray, start: np.ndarray, group: np.ndarray) -> np.ndarray:
    c = np.cumsum(values)
    return np.asarray(c - (c - values)[start][group], dtype=np.int64)


def _additive(rows: pl.DataFrame, snaps: pl.DataFrame) -> pl.LazyFrame:
    """Counts, sums, active days (windowed and lifetime), last values, values at window start.

    Cumulative sums per customer and signal over time, read at the as-of time and
    just before each window starts (as-of joins): exact for any as-of.
    """
    window_aggs = [
        a for a in AGGREGATES if a.window is not None and a.stat in (*_ADDITIVE, "at_start")
    ]
    life_aggs = [
        a for a in AGGREGATES if a.window is None and a.signal != "as_of" and a.stat in _LIFETIME
    ]
    sigs = sorted({_SIG[a.signal] for a in window_aggs + life_aggs})
    windows: dict[int, set[int]] = {}
    for a in window_aggs:
        windows.setdefault(_SIG[a.signal], set()).add(int(a.window or 0))
    # rows come per signal, each sorted by (customer, time): with the key
    # signal * 2^32 + customer they are sorted by (key, time) already
    sorted_rows = rows.filter(pl.col("sig").is_in(sigs)).select(
        (pl.col("sig").cast(pl.Int64) * _KEY_SPAN + pl.col("cust")).alias("k"), "t", "value", "day"
    )
    k = sorted_rows["k"].to_numpy()
    t = sorted_rows["t"].to_numpy()
    if k.size and not (np.all(np.diff(k) >= 0) and np.all((np.diff(t) >= 0) | (np.diff(k) > 0))):
        sorted_rows = sorted_rows.sort("k", "t")
        k, t = sorted_rows["k"].to_numpy(), sorted_rows["t"].to_numpy()
    day = sorted_rows["day"].to_numpy()
    value = sorted_rows["value"].to_numpy()
    start = np.r_[0, np.flatnonzero(np.diff(k)) + 1] if k.size else np.zeros(0, np.int64)
    group = np.repeat(np.arange(start.size), np.diff(np.r_[start, k.size]))
    newday = np.ones(k.size, np.int64)
    if k.size:
        newday[1:] = ((day[1:] != day[:-1]) | (k[1:] != k[:-1])).astype(np.int64)
    # several events at the same time: keep the last row of the tie (cumulative sums
    # include them all) with the largest value of the tie (the tie rule of "last")
    last_of_time = np.ones(k.size, bool)
    tie_start = np.ones(k.size, bool)
    if k.size:
        last_of_time[:-1] = (k[1:] != k[:-1]) | (t[1:] != t[:-1])
        tie_start[1:] = last_of_time[:-1]
        value_last = np.maximum.reduceat(value, np.flatnonzero(tie_start))
    else:
        value_last = value
    tiles = pl.DataFrame(
        {
            "k": k[last_of_time],
            "t": t[last_of_time],
            "v": value_last,
            "cn": _grouped_cumsum(np.ones(k.size, np.int64), start, group)[last_of_time],
            "cs": _grouped_cumsum(value, start, group)[last_of_time],
            "cd": _grouped_cumsum(newday, start, group)[last_of_time],
            "first": (t[start][group] if k.size else t)[last_of_time],
        }
    )
    n_snaps = snaps.height
    probes = (
        snaps.select("snap", "cust", "as_of_us", "as_of_day")
        .join(pl.DataFrame({"sig": sigs}, schema={"sig": pl.Int64}), how="cross")
        .with_columns((pl.col("sig") * _KEY_SPAN + pl.col("cust")).alias("k"))
        .sort("k", "as_of_us")
    )
    snap_ix = probes["snap"].to_numpy()
    sig_of = probes["sig"].to_numpy()
    as_of_day = probes["as_of_day"].to_numpy()

    def read(probe: np.ndarray) -> dict[str, np.ndarray]:
        left = pl.DataFrame({"k": probes["k"], "probe": probe})
        m = left.join_asof(
            tiles,
            left_on="probe",
            right_on="t",
            by="k",
            strategy="backward",
            check_sortedness=False,
        )
        return {
            "cn": m["cn"].fill_null(0).to_numpy(),
            "cs": m["cs"].fill_null(0).to_numpy(),
            "cd": m["cd"].fill_null(0).to_numpy(),
            "t": m["t"].cast(pl.Float64).to_numpy(),
            "v": m["v"].cast(pl.Float64).to_numpy(),
            "first": m["first"].cast(pl.Float64).to_numpy(),
        }

    at_end = read(probes["as_of_us"].to_numpy())
    at_start = {
        w: read((as_of_day - w + 1) * DAY_US - 1)
        for w in sorted({w for ws in windows.values() for w in ws})
    }
    out: dict[str, np.ndarray] = {"snap": np.arange(n_snaps)}
    stat_col = {"count": "cn", "sum": "cs", "days": "cd"}
    life_col = {"count": "cn", "sum": "cs", "first_us": "first", "last_us": "t", "last": "v"}
    for a in window_aggs + life_aggs:
        rows_of = sig_of == _SIG[a.signal]
        if a.window is None:
            values = at_end[life_col[a.stat]][rows_of].astype(np.float64)
        elif a.stat == "at_start":
            values = at_start[int(a.window)]["v"][rows_of]
        else:
            c = stat_col[a.stat]
            values = (at_end[c][rows_of] - at_start[int(a.window)][c][rows_of]).astype(np.float64)
        column = np.full(n_snaps, np.nan)
        column[snap_ix[rows_of]] = values
        out[a.key] = column
    return pl.DataFrame(out).with_columns(pl.col("snap").cast(pl.UInt32)).lazy()


def _windowed_other(rows: pl.DataFrame, snaps: pl.DataFrame) -> pl.LazyFrame:
    """Min, max, months with an event and distinct values: a join over each window."""
    aggs = [
        a for a in AGGREGATES if a.window is not None and a.stat not in (*_ADDITIVE, "at_start")
    ]
    reach: dict[int, int] = {}
    for a in aggs:
        reach[_SIG[a.signal]] = max(reach.get(_SIG[a.signal], 0), int(a.window or 0))
    parts = [
        rows.lazy().filter(pl.col("sig") == sig).with_columns(pl.lit(w).alias("reach"))
        for sig, w in reach.items()
    ]
    joined = (
        pl.concat(parts)
        .join(snaps.lazy().select("snap", "cust", "as_of_us", "as_of_day"), on="cust")
        .filter(
            (pl.col("t") <= pl.col("as_of_us"))
            & (pl.col("day") > pl.col("as_of_day") - pl.col("reach"))
        )
        .with_columns((pl.col("as_of_day") - pl.col("day")).alias("age"))
    )
    return joined.group_by("snap").agg(_window_expr(a).alias(a.key) for a in aggs)


def _window_expr(a: Agg) -> pl.Expr:
    sel = (pl.col("sig") == _SIG[a.signal]) & (pl.col("age") < a.window)
    if a.stat == "sumsq":
        return (pl.col("value").cast(pl.Int128) ** 2).filter(sel).sum().cast(pl.Float64)
    if a.stat == "min":
        return pl.col("value").filter(sel).min()
    if a.stat == "max":
        return pl.col("value").filter(sel).max()
    if a.stat == "months":
        return (pl.col("age") // MONTH_DAYS).filter(sel).n_unique()
    if a.stat == "distinct":
        return pl.col("cat").filter(sel).drop_nulls().n_unique()
    raise DataError(f"no offline window computation for {a.key}")


def held_products(events: pl.LazyFrame, snaps: pl.DataFrame) -> pl.LazyFrame:
    """(snap, product_id, ptype) of the products held at each snapshot's as-of.

    A product is held when its latest open/close record at as-of is an opening
    (a close at the same time wins, as in the online state).
    """
    return (
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
        .join(snaps.lazy().select("snap", "customer_id", "as_of_us"), on="customer_id")
        .filter(pl.col("t") <= pl.col("as_of_us"))
        .sort("snap", "product_id", "t", "closed", "ptype")
        .group_by("snap", "product_id")
        .agg(pl.col("closed").last(), pl.col("ptype").last())
        .filter(pl.col("closed") == 0)
        .select("snap", "product_id", "ptype")
    )


def _entities(events: pl.LazyFrame, snaps: pl.DataFrame) -> pl.LazyFrame:
    s = snaps.lazy().select("snap", "customer_id", "as_of_us")
    products = (
        held_products(events, snaps)
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


def offline_features(
    log: pl.LazyFrame, snapshots: pl.DataFrame, *, cleaned: bool = False
) -> pl.DataFrame:
    """Features for each snapshot (``customer_id``, ``as_of``) of ``snapshots``.

    ``cleaned=True`` says ``log`` already went through :func:`clean_log`.
    """
    aggs = offline_aggregates(log, snapshots, cleaned=cleaned)
    values = finalize({a.key: aggs[a.key].to_numpy() for a in AGGREGATES})
    return aggs.select("customer_id", "as_of").with_columns(
        pl.Series(name, v) for name, v in values.items()
    )
