"""Exact aggregates of signal event series at snapshot times, by binary search.

Each signal's events form one series sorted by (customer, time). A snapshot reads a
series at a few times: its as-of, and the end of the day before each window (or
each 30-day period of a window) starts. Where the series stands at such a time is a
binary search (the index of the last event at or before it), and every aggregate is
then a difference of prefix sums (counts, sums, active days), one element (the last
value, the first and last times) or a reduction over the events between two such
indexes (min, max, distinct values, sum of squares). Exact integers throughout, no
joins: the same numbers as the online state, for any as-of.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt

from features._definitions import DAY_US, MONTH_DAYS, Agg

__all__ = ["SERIES_STATS", "Series", "last_at_or_before", "series_aggregates"]

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

SERIES_STATS: Final = frozenset(
    {"count", "sum", "sumsq", "min", "max", "days", "months", "distinct", "first_us"}
    | {"last_us", "last", "at_start"}
)
"""The stats computed from event series (the others come from entities)."""


@dataclass(slots=True)
class Series:
    """One signal's events, sorted by (customer code, time).

    ``value`` is the quantity each event carries (1 for counted signals, a bit
    ``1 << code`` for a categorical value).
    """

    cust: I64
    t: I64
    value: I64
    _cache: dict[str, I64] = field(default_factory=dict)

    def prefix(self, name: str) -> I64:
        """Prefix sums with a leading 0: ``sums``, ``days`` (first event of a day)."""
        if name not in self._cache:
            if name == "sums":
                steps = self.value
            else:
                day = self.t // DAY_US
                steps = np.ones(self.t.size, np.int64)
                if self.t.size:
                    steps[1:] = (day[1:] != day[:-1]) | (self.cust[1:] != self.cust[:-1])
            self._cache[name] = np.concatenate([np.zeros(1, np.int64), np.cumsum(steps)])
        return self._cache[name]

    def tie_last(self) -> I64:
        """Per event, the largest value among the events of its customer at its time
        (the tie rule of ``last``)."""
        if "tie" not in self._cache:
            n = self.t.size
            start = np.ones(n, bool)
            if n:
                start[1:] = (self.t[1:] != self.t[:-1]) | (self.cust[1:] != self.cust[:-1])
            first = np.flatnonzero(start)
            sizes = np.diff(np.r_[first, n])
            best = np.maximum.reduceat(self.value, first) if n else self.value
            self._cache["tie"] = np.repeat(best, sizes)
        return self._cache["tie"]


def last_at_or_before(cust: I64, t: I64, probe_cust: I64, probe_t: I64) -> I64:
    """For each probe, the index of its customer's last event at or before its time.

    Events are sorted by (customer, time); where the customer has none, the index is
    that of the customer's first event minus one (``searchsorted(cust, probe_cust)
    - 1``). Probes sorted by (customer, time) are the fastest.
    """
    grid = np.unique(probe_t)
    span = grid.size + 1
    # an event is at or before the probe grid[j] iff its place in the grid is <= j
    keys = cust * span + np.searchsorted(grid, t, "left")
    probes = probe_cust * span + np.searchsorted(grid, probe_t, "left")
    return np.searchsorted(keys, probes, "right") - 1


def _end_of_day(as_of_day: I64, days_back: int) -> I64:
    """The last microsecond of the day ``days_back`` days before the as-of day."""
    return (as_of_day - days_back + 1) * DAY_US - 1


def _month_limits(window: int) -> list[tuple[int | None, int]]:
    """(upper, lower) days back of each 30-day period of a window; upper None = as-of."""
    return [
        (None if m == 0 else m * MONTH_DAYS, min((m + 1) * MONTH_DAYS, window))
        for m in range(-(-window // MONTH_DAYS))
    ]


def _taken(values: I64, index: I64, ok: npt.NDArray[np.bool_]) -> F64:
    out = np.full(index.size, np.nan)
    out[ok] = values[index[ok]]
    return out


def _reduce_slices(
    ufunc: np.ufunc, values: npt.NDArray[np.generic], lo: I64, hi: I64
) -> tuple[npt.NDArray[np.generic], npt.NDArray[np.bool_]]:
    """``ufunc`` over ``values[lo:hi]`` of each pair, and which pairs are not empty.

    Pairs come sorted by ``lo`` within a customer: the work is the total length of
    the slices plus that of the series.
    """
    full = hi > lo
    out = np.zeros(lo.size, values.dtype)
    if full.any():
        padded = np.concatenate([values, values[:1]])  # reduceat wants indexes < size
        bounds = np.empty(2 * int(full.sum()), np.int64)
        bounds[0::2], bounds[1::2] = lo[full], hi[full]
        out[full] = ufunc.reduceat(padded, bounds)[0::2]
    return out, full


class _Reader:
    """Where one series stands, for every snapshot, at probe times of a shared grid."""

    def __init__(self, s: Series, grid: I64, cust: I64, places: Mapping[int | None, I64]) -> None:
        self.s = s
        self.places = places
        self.span = grid.size + 1
        # events and probes of a customer compare by their place in the grid of probe
        # times: an event is at or before the probe grid[j] iff its place is <= j
        self.keys = s.cust * self.span + np.searchsorted(grid, s.t, "left")
        self.cust = cust
        self.first = np.searchsorted(s.cust, cust, "left")
        self._at: dict[int | None, I64] = {}

    def at(self, back: int | None) -> I64:
        """Index of the customer's last event at or before the as-of (``back`` None) or
        the end of the day ``back`` days before it; ``first - 1`` where there is none."""
        if back not in self._at:
            probe = self.cust * self.span + self.places[back]
            self._at[back] = np.searchsorted(self.keys, probe, "right") - 1
        return self._at[back]


def series_aggregates(
    series: Mapping[int, Series],
    signal_index: Mapping[str, int],
    cust: I64,
    as_of_us: I64,
    aggs: Sequence[Agg],
) -> dict[str, F64]:
    """Each aggregate of ``aggs`` (stats of :func:`series_stats`) for each snapshot
    ``(cust[i], as_of_us[i])``, float64 with NaN where there is no value."""
    n = cust.size
    order = np.lexsort((as_of_us, cust))  # sorted probes: searches and slices go forward
    cust_s, as_of_s = cust[order], as_of_us[order]
    as_of_day = as_of_s // DAY_US
    backs: set[int] = set()
    for a in aggs:
        if a.window is not None:
            backs.add(int(a.window))
            if a.stat == "months":
                backs |= {b for pair in _month_limits(int(a.window)) for b in pair if b is not None}
    probes: dict[int | None, I64] = {None: as_of_s}
    probes |= {b: _end_of_day(as_of_day, b) for b in sorted(backs)}
    grid = np.unique(np.concatenate(list(probes.values()))) if n else np.zeros(0, np.int64)
    places = {b: np.searchsorted(grid, p) for b, p in probes.items()}
    readers: dict[int, _Reader] = {}
    none = np.zeros(0, np.int64)
    empty = Series(none, none, none)
    out: dict[str, F64] = {}
    for a in aggs:
        i = signal_index[a.signal]
        if i not in readers:
            readers[i] = _Reader(series.get(i, empty), grid, cust_s, places)
        values = _one(a, readers[i])
        column = np.empty(n)
        column[order] = values
        out[a.key] = column
    return out


def _one(a: Agg, r: _Reader) -> F64:
    s, first = r.s, r.first
    end = r.at(None)
    if a.window is None:
        some = end >= first
        if a.stat == "count":
            return (end - first + 1).astype(np.float64)
        if a.stat == "sum":
            sums = s.prefix("sums")
            return (sums[end + 1] - sums[first]).astype(np.float64)
        if a.stat == "first_us":
            return _taken(s.t, first, some)
        if a.stat == "last_us":
            return _taken(s.t, end, some)
        if a.stat == "last":
            return _taken(s.tie_last(), end, some)
        raise ValueError(f"no series computation for {a.key}")  # pragma: no cover
    w = int(a.window)
    start = r.at(w)  # the last event before the window
    if a.stat == "count":
        return (end - start).astype(np.float64)
    if a.stat in ("sum", "days"):
        prefix = s.prefix("sums" if a.stat == "sum" else "days")
        return (prefix[end + 1] - prefix[start + 1]).astype(np.float64)
    if a.stat == "at_start":
        return _taken(s.tie_last(), start, start >= first)
    if a.stat == "months":
        months = np.zeros(end.size)
        for upper, lower in _month_limits(w):
            months += r.at(upper) > r.at(lower)
        return months
    lo, hi = start + 1, end + 1
    if a.stat in ("min", "max"):
        ufunc: np.ufunc = np.minimum if a.stat == "min" else np.maximum
        reduced, full = _reduce_slices(ufunc, s.value, lo, hi)
        return np.where(full, reduced.astype(np.float64), np.nan)
    if a.stat == "distinct":
        bits, _ = _reduce_slices(np.bitwise_or, s.value, lo, hi)
        return np.bitwise_count(bits.astype(np.int64)).astype(np.float64)
    if a.stat == "sumsq":
        return _sum_of_squares(s.value, lo, hi)
    raise ValueError(f"no series computation for {a.key}")  # pragma: no cover


def _sum_of_squares(values: I64, lo: I64, hi: I64) -> F64:
    """Exact sums of squares over slices (int64 when it cannot overflow, else Python ints)."""
    if values.size == 0:
        return np.zeros(lo.size)
    biggest = int(np.abs(values).max()) ** 2
    longest = int((hi - lo).max()) if lo.size else 0
    exact: Callable[[np.ndarray], np.ndarray]
    if biggest * max(longest, 1) < 2**63:
        squares: npt.NDArray[np.generic] = values * values
        exact = lambda x: x.astype(np.float64)  # noqa: E731
    else:
        squares = np.array([int(v) * int(v) for v in values.tolist()], dtype=object)
        exact = lambda x: np.array([float(int(v)) for v in x.tolist()])  # noqa: E731
    reduced, _ = _reduce_slices(np.add, squares, lo, hi)
    return exact(reduced)
