"""Online/offline parity: replay a log through the online state, compare with polars."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import polars as pl

from features._definitions import AGGREGATES, DAY_US, FEATURES, finalize
from features._offline import offline_features
from features._state import CustomerState
from features.events import events_from_frame

__all__ = ["ParityReport", "check_parity", "replay_snapshots"]

REL_TOL = 1e-9


@dataclass(slots=True)
class ParityReport:
    """Mismatches per feature between online and offline values."""

    customers: int = 0
    snapshots: int = 0
    events: int = 0
    mismatches: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    @property
    def total_mismatches(self) -> int:
        return sum(self.mismatches.values())

    def format(self) -> str:
        lines = [
            f"parity: {self.customers:,} customers, {self.events:,} events replayed, "
            f"{self.snapshots:,} as-of snapshots, {len(FEATURES)} features",
            f"  {'feature':<32}{'mismatches':>12}{'rate':>10}",
        ]
        for f in FEATURES:
            n = self.mismatches.get(f.name, 0)
            lines.append(f"  {f.name:<32}{n:>12,}{n / max(self.snapshots, 1):>10.2%}")
        lines.append(f"  total mismatches: {self.total_mismatches:,}")
        lines += [f"  e.g. {e}" for e in self.examples[:5]]
        return "\n".join(lines)


def replay_snapshots(
    log: pl.DataFrame, per_customer: int, seed: int
) -> tuple[pl.DataFrame, dict[tuple[str, int], np.ndarray], int]:
    """Replay each customer's events in delivery order; snapshot the online aggregates.

    A snapshot is taken after an event only where every event with a time up to the
    snapshot's as-of has already been delivered (late arrivals make some points
    unfit), at an as-of between the newest event and the next one's time.
    """
    rng = np.random.default_rng(seed)
    typed = log.filter(pl.col("raw").is_null()).with_columns(
        pl.coalesce("published_at", "occurred_at").alias("_delivered"),
        pl.col("occurred_at").dt.cast_time_unit("us").cast(pl.Int64).alias("_t"),
    )
    typed = typed.with_row_index("_row").sort("customer_id", "_delivered", "_row")
    rows: list[tuple[str, datetime]] = []
    online: dict[tuple[str, int], np.ndarray] = {}
    applied = 0
    for (cid,), group in typed.group_by("customer_id", maintain_order=True):
        times = group["_t"].to_numpy()
        prefix_max = np.maximum.accumulate(times)
        suffix_min = np.minimum.accumulate(times[::-1])[::-1]
        next_min = np.r_[suffix_min[1:], np.iinfo(np.int64).max]
        fit = np.flatnonzero(prefix_max < next_min)
        chosen = set(rng.choice(fit, size=min(per_customer, fit.size), replace=False).tolist())
        chosen.add(int(fit[-1]))
        state = CustomerState(str(cid))
        for k, ev in enumerate(events_from_frame(group)):
            state.apply(ev)
            applied += 1
            if k in chosen:
                gap = min(int(next_min[k]) - 1 - int(prefix_max[k]), 60 * DAY_US)
                as_of_us = int(prefix_max[k]) + int(rng.integers(0, max(gap, 0) + 1))
                online[(str(cid), len(rows))] = state.aggregates(as_of_us)
                rows.append((str(cid), _from_us(as_of_us)))
    snapshots = pl.DataFrame(
        rows, schema={"customer_id": pl.String, "as_of": pl.Datetime("us", "UTC")}, orient="row"
    )
    return snapshots, online, applied


def _from_us(us: int) -> datetime:
    return datetime.fromtimestamp(us // 1_000_000, tz=UTC).replace(microsecond=us % 1_000_000)


def check_parity(log: pl.DataFrame, per_customer: int = 5, seed: int = 0) -> ParityReport:
    """Compare online and offline features at many as-of times of the customers in ``log``."""
    snapshots, online, applied = replay_snapshots(log, per_customer, seed)
    report = ParityReport(
        customers=snapshots["customer_id"].n_unique(), snapshots=snapshots.height, events=applied
    )
    if snapshots.height == 0:
        return report
    offline = offline_features(log.lazy(), snapshots)
    matrix = np.vstack([online[(cid, i)] for i, cid in enumerate(snapshots["customer_id"])])
    online_features = finalize({a.key: matrix[:, j] for j, a in enumerate(AGGREGATES)})
    for f in FEATURES:
        a = online_features[f.name]
        b = offline[f.name].to_numpy()
        both_nan = np.isnan(a) & np.isnan(b)
        close = np.abs(a - b) <= REL_TOL * np.maximum(np.abs(a), np.abs(b))
        bad = ~(both_nan | close)
        if bad.any():
            report.mismatches[f.name] = int(bad.sum())
            i = int(np.flatnonzero(bad)[0])
            report.examples.append(
                f"{f.name} {snapshots['customer_id'][i]} @ {snapshots['as_of'][i]}: "
                f"online {a[i]!r} offline {b[i]!r}"
            )
    return report
