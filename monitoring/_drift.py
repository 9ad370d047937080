"""Score and feature drift against the training reference: PSI and KS on fixed bins.

The reference (``reference.json`` in every model bundle, :mod:`training._bundle`)
holds, for both scores and every model feature, the inner quantiles of the test
period as bin edges, the share of values in each bin, and the share missing.
Live values are counted into the same bins, plus a bin for missing values, so
the comparison needs only counts:

* **PSI** (population stability index), ``sum((a - e) * ln(a / e))`` over the
  bins, with each share floored at ``EPSILON`` so an empty bin is finite. Banks
  read < 0.1 as stable, 0.1-0.25 as a shift worth a look, > 0.25 as a shift that
  calls for retraining.
* **KS**, the largest gap between the two cumulative distributions, evaluated at
  the bin edges (missing values sort last). On values that are the bins
  themselves it equals ``scipy.stats.ks_2samp``'s statistic; on raw values it
  is that statistic restricted to the edges, so never larger.

:class:`DriftWindow` keeps the counts of a sliding window of recent scores in
event time: one array of counts per time bucket (a day by default), the buckets
older than the window dropped as newer ones arrive. Its memory is ``buckets x
columns x bins`` integers whatever the length of the stream.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "EPSILON",
    "PSI_RETRAIN",
    "PSI_WATCH",
    "ColumnDrift",
    "DriftWindow",
    "expected_shares",
    "ks_binned",
    "merge_snapshots",
    "psi",
]

EPSILON: Final = 1e-4
PSI_WATCH: Final = 0.1
PSI_RETRAIN: Final = 0.25
DAY_US: Final = 86_400 * 1_000_000

Array = npt.NDArray[np.float64]


def _shares(counts: npt.ArrayLike) -> Array:
    c = np.asarray(counts, np.float64)
    total = c.sum()
    return c / total if total > 0 else np.zeros_like(c)


def psi(expected: npt.ArrayLike, actual: npt.ArrayLike, epsilon: float = EPSILON) -> float:
    """Population stability index of two distributions over the same bins
    (counts or shares; each is normalised, and floored at ``epsilon``).

    >>> round(psi([0.5, 0.5], [0.5, 0.5]), 6)
    0.0
    >>> round(psi([0.5, 0.5], [0.25, 0.75]), 4)  # 0.25 ln 2 + 0.25 ln(2/3) ... summed
    0.2747
    """
    e = np.maximum(_shares(expected), epsilon)
    a = np.maximum(_shares(actual), epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_binned(expected: npt.ArrayLike, actual: npt.ArrayLike) -> float:
    """The largest gap between the cumulative shares of two binned distributions.

    >>> ks_binned([1, 1, 0], [0, 1, 1])
    0.5
    """
    e, a = _shares(expected), _shares(actual)
    if not e.sum() or not a.sum():
        return 0.0
    return float(np.max(np.abs(np.cumsum(e) - np.cumsum(a))))


def expected_shares(reference: Mapping[str, Any]) -> Array:
    """A reference entry's shares over its bins, then the missing share (sums to 1)."""
    missing = float(reference.get("missing", 0.0))
    shares = np.asarray(reference.get("shares", []), np.float64) * (1.0 - missing)
    return np.append(shares, missing)


@dataclass(frozen=True, slots=True)
class ColumnDrift:
    column: str
    psi: float
    ks: float
    n: int
    reference_mean: float | None
    live_mean: float | None

    @property
    def level(self) -> str:
        """``stable`` (< 0.1), ``watch`` (0.1-0.25) or ``shifted`` (> 0.25)."""
        if self.psi > PSI_RETRAIN:
            return "shifted"
        return "watch" if self.psi >= PSI_WATCH else "stable"


class DriftWindow:
    """Binned counts of recent values per column, in a sliding event-time window.

    ``columns`` name reference entries (features, ``churn_probability``,
    ``predicted_value_minor``); the bins are each entry's ``edges`` plus a bin
    for missing values. :meth:`add` takes a batch: event times (microseconds) and
    one array per column. Values older than the window are ignored and counted.
    """

    def __init__(
        self,
        reference: Mapping[str, Mapping[str, Any]],
        columns: Sequence[str] | None = None,
        window_days: float = 7.0,
        bucket_hours: float = 24.0,
    ) -> None:
        if window_days <= 0 or bucket_hours <= 0:
            raise ValueError("window_days and bucket_hours must be positive")
        names = [c for c in (columns if columns is not None else reference) if c in reference]
        self.columns: tuple[str, ...] = tuple(names)
        self.edges = [np.asarray(reference[c].get("edges", []), np.float64) for c in names]
        self.expected = [expected_shares(reference[c]) for c in names]
        self.reference_means = [
            float(reference[c]["mean"]) if "mean" in reference[c] else None for c in names
        ]
        self.width = max((len(e) for e in self.expected), default=1)
        # the edges side by side, padded with +inf (no value is above it): a batch's
        # bins for all columns in one comparison (``searchsorted`` per column cost a
        # millisecond a micro-batch, whatever its size)
        self._edges = np.full((len(names), max((e.size for e in self.edges), default=0)), np.inf)
        for j, e in enumerate(self.edges):
            self._edges[j, : e.size] = e
        self._missing_bin = np.array([e.size + 1 for e in self.edges], np.int64)[:, None]
        self.bucket_us = int(bucket_hours * 3_600_000_000)
        self.buckets_kept = max(1, math.ceil(window_days * DAY_US / self.bucket_us))
        # bucket index -> (counts [columns x width], sums of present values [columns])
        self._buckets: OrderedDict[int, tuple[npt.NDArray[np.int64], Array]] = OrderedDict()
        self.too_old = 0

    def add(self, t_us: npt.ArrayLike, values: Mapping[str, npt.ArrayLike]) -> None:
        t = np.asarray(t_us, np.int64)
        if t.size == 0:
            return
        bucket = t // self.bucket_us
        newest = max(int(bucket.max()), next(reversed(self._buckets), -(2**62)))
        keep = bucket > newest - self.buckets_kept
        self.too_old += int((~keep).sum())
        if not keep.any():
            return
        every = bool(keep.all())
        bucket = bucket[keep]
        ncol = len(self.columns)
        x = np.empty((ncol, bucket.size))
        for j, name in enumerate(self.columns):
            x[j] = values[name] if every else np.asarray(values[name], np.float64)[keep]
        missing = np.isnan(x)
        # a value's bin: how many of its column's edges are below it (searchsorted "left")
        below = np.count_nonzero(x[:, :, None] > self._edges[:, None, :], axis=2)
        bins = np.where(missing, self._missing_bin, below)
        present_vals = np.where(missing, 0.0, x)
        # one count for all columns: bin k of column j is cell j * width + k (a bin
        # beyond the width, which no reference has, goes to a last cell, dropped)
        cells = ncol * self.width
        flat = np.where(
            bins < self.width,
            bins + np.arange(0, cells, self.width, dtype=np.int64)[:, None],
            cells,
        )
        for b in np.unique(bucket):
            rows = bucket == b
            counts, sums = self._bucket(int(b))
            counts += np.bincount(flat[:, rows].ravel(), minlength=cells + 1)[:cells].reshape(
                ncol, self.width
            )
            sums += present_vals[:, rows].sum(axis=1)
        while len(self._buckets) > self.buckets_kept or (
            self._buckets and next(iter(self._buckets)) <= newest - self.buckets_kept
        ):
            self._buckets.popitem(last=False)

    def _bucket(self, b: int) -> tuple[npt.NDArray[np.int64], Array]:
        hit = self._buckets.get(b)
        if hit is None:
            hit = (np.zeros((len(self.columns), self.width), np.int64), np.zeros(len(self.columns)))
            self._buckets[b] = hit
            self._buckets = OrderedDict(sorted(self._buckets.items()))
        return hit

    def counts(self, last_buckets: int | None = None) -> npt.NDArray[np.int64]:
        """Counts per column and bin over the window (or its newest buckets)."""
        total = np.zeros((len(self.columns), self.width), np.int64)
        kept = list(self._buckets.values())
        for counts, _ in kept[-last_buckets:] if last_buckets else kept:
            total += counts
        return total

    @property
    def n(self) -> int:
        return int(self.counts()[0].sum()) if self.columns else 0

    def drift(self, last_buckets: int | None = None) -> list[ColumnDrift]:
        """PSI and KS of every column over the window (or its newest buckets), worst
        first (by PSI)."""
        counts = self.counts(last_buckets)
        kept = list(self._buckets.values())
        kept = kept[-last_buckets:] if last_buckets else kept
        sums = sum((s for _, s in kept), np.zeros(len(self.columns)))
        out = []
        for j, name in enumerate(self.columns):
            width = len(self.expected[j])
            live = counts[j, :width]
            n = int(live.sum())
            present = n - int(live[-1])
            out.append(
                ColumnDrift(
                    column=name,
                    psi=psi(self.expected[j], live) if n else 0.0,
                    ks=ks_binned(self.expected[j], live) if n else 0.0,
                    n=n,
                    reference_mean=self.reference_means[j],
                    live_mean=float(sums[j] / present) if present else None,
                )
            )
        return sorted(out, key=lambda d: -d.psi)

    def buckets_for(self, days: float) -> int:
        """How many of the newest buckets cover ``days``."""
        return max(1, math.ceil(days * DAY_US / self.bucket_us))

    def snapshot(self, last_buckets: int | None = None) -> dict[str, Any]:
        """What the window (or its newest buckets) holds, as JSON-ready data (for
        ``churn drift-report``)."""
        counts = self.counts(last_buckets)
        return {
            "columns": list(self.columns),
            "edges": [e.tolist() for e in self.edges],
            "expected": [e.tolist() for e in self.expected],
            "counts": [
                counts[j, : len(self.expected[j])].tolist() for j in range(len(self.columns))
            ],
            "buckets": [b * self.bucket_us for b in self._buckets],
            "bucket_us": self.bucket_us,
            "too_old": self.too_old,
            "drift": [_as_dict(d) for d in self.drift(last_buckets)],
        }


def _as_dict(d: ColumnDrift) -> dict[str, Any]:
    return {k: getattr(d, k) for k in ColumnDrift.__slots__}


def merge_snapshots(snapshots: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Sum the counts of several workers' windows (each sees its own customers)."""
    snaps = list(snapshots)
    if not snaps:
        raise ValueError("no drift snapshot to merge")
    first = snaps[0]
    merged = {k: first[k] for k in ("columns", "edges", "expected", "bucket_us")}
    counts = [np.asarray(c, np.int64) for c in first["counts"]]
    for other in snaps[1:]:
        if other["columns"] != first["columns"] or other["edges"] != first["edges"]:
            raise ValueError("drift snapshots from different models cannot be merged")
        counts = [c + np.asarray(o, np.int64) for c, o in zip(counts, other["counts"], strict=True)]
    merged["counts"] = [c.tolist() for c in counts]
    merged["too_old"] = sum(int(s.get("too_old", 0)) for s in snaps)
    merged["drift"] = sorted(
        (
            {
                "column": name,
                "psi": psi(exp, c) if c.sum() else 0.0,
                "ks": ks_binned(exp, c) if c.sum() else 0.0,
                "n": int(c.sum()),
            }
            for name, exp, c in zip(first["columns"], first["expected"], counts, strict=True)
        ),
        key=lambda d: -float(d["psi"]),
    )
    return merged
