"""Which features an event log can support at all.

Imported logs often carry only some event types (a retailer's purchases, a card
system's transactions) or lack a field (no balances). A feature whose signals have
no events in the log would read as zero or "never" everywhere: not a fact about
the customers, an artefact of the extract. Such features are *unavailable*: the
training set sets them to null (not NaN, which means "no value for this customer"),
and training reports them.

A signal is available when the log holds at least one valid event of one of its
event types, and, for a signal that carries a value (an amount, a balance, a
score), at least one such event with that value. A feature is available when all
the signals it reads are.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from features._definitions import FEATURES, SIGNALS

__all__ = ["Availability", "feature_availability"]


@dataclass(frozen=True, slots=True)
class Availability:
    """The event types present in a log and the features it cannot support, with why."""

    present: frozenset[str]
    unavailable: dict[str, str]

    def format(self) -> str:
        if not self.unavailable:
            return "all features available"
        names = ", ".join(sorted(self.unavailable))
        return f"{len(self.unavailable)} features unavailable in this log (no signal): {names}"


def feature_availability(log: pl.LazyFrame) -> Availability:
    """Availability of every feature in ``log`` (one pass over the log's valid rows)."""
    values = sorted({s.value for s in SIGNALS if s.value is not None})
    counts = (
        log.filter(pl.col("raw").is_null() & pl.col("event_id").is_not_null())
        .group_by("event_type")
        .agg(pl.len().alias("_n"), *(pl.col(v).is_not_null().sum().alias(v) for v in values))
        .collect(engine="streaming")
    )
    present = frozenset(counts["event_type"].drop_nulls().to_list())
    with_value = {
        v: frozenset(counts.filter(pl.col(v) > 0)["event_type"].drop_nulls().to_list())
        for v in values
    }
    missing_signal: dict[str, str] = {}
    for s in SIGNALS:
        types = s.event_types & present
        if not types:
            missing_signal[s.name] = "no " + "/".join(sorted(s.event_types)) + " events"
        elif s.value is not None and not (types & with_value[s.value]):
            missing_signal[s.name] = f"no {s.value} on {'/'.join(sorted(types))} events"
    unavailable: dict[str, str] = {}
    for f in FEATURES:
        reasons = sorted(
            {missing_signal[a.signal] for a in f.expr.aggs() if a.signal in missing_signal}
        )
        if reasons:
            unavailable[f.name] = "; ".join(reasons)
    return Availability(present, unavailable)
