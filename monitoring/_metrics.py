"""Prometheus metrics of the worker, the notifier and the inbox (prometheus-client).

Every process has its own registry, served on its own ``/metrics``: a worker on
its faust web port, ``churn serve`` beside its pages, ``churn notify`` on
``CHURN_NOTIFY_METRICS_PORT``. Several workers are several scrape targets;
dashboards and rules aggregate them with ``sum`` / ``max`` over ``instance``, so
nothing is shared between processes (no multiprocess mode needed).

The worker's hot path does not call prometheus-client per event: it keeps the
plain counters it already had (:class:`stream._worker.Runtime`) and numpy
histograms filled once per micro-batch (:class:`BatchHistogram`); a collector
turns them into metric families when Prometheus scrapes. The names are in
:data:`WORKER_METRICS` (the dashboard test checks every query against them).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

__all__ = [
    "CONTENT_TYPE",
    "LATENCY_BUCKETS",
    "NOTIFY_METRICS",
    "PROBABILITY_BUCKETS",
    "SERVE_METRICS",
    "STATE_BUCKETS",
    "VALUE_BUCKETS",
    "WORKER_METRICS",
    "BatchHistogram",
    "WorkerCollector",
    "WorkerView",
    "counter_family",
    "exposition",
    "gauge_family",
    "metric_names",
    "registry_of",
]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PROBABILITY_BUCKETS: Final = tuple(round(i / 20, 2) for i in range(1, 21))
# predicted 12-month value, minor units (CNY fen): 0, 10, 100, 500, 1k, 5k, 10k, 50k, 100k yuan
VALUE_BUCKETS: Final = (0.0, 1e3, 1e4, 5e4, 1e5, 5e5, 1e6, 5e6, 1e7)
STATE_BUCKETS: Final = (256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 65536.0)

# name -> type, as exposed (counters with their ``_total``)
WORKER_METRICS: Final = {
    "churn_events_consumed_total": "counter",
    "churn_events_refetched_total": "counter",
    "churn_events_processed_total": "counter",
    "churn_events_dead_lettered_total": "counter",
    "churn_consumer_lag": "gauge",
    "churn_batch_processing_seconds": "histogram",
    "churn_event_latency_seconds": "histogram",
    "churn_scoring_seconds": "histogram",
    "churn_score_churn_probability": "histogram",
    "churn_score_predicted_value_minor": "histogram",
    "churn_scores_emitted_total": "counter",
    "churn_score_failures_total": "counter",
    "churn_scores_coalesced_total": "counter",
    "churn_produce_failures_total": "counter",
    "churn_unscored_total": "counter",
    "churn_alerts_raised_total": "counter",
    "churn_alerts_suppressed_total": "counter",
    "churn_model": "info",
    "churn_model_loaded": "gauge",
    "churn_model_reloads_total": "counter",
    "churn_model_reload_failures_total": "counter",
    "churn_state_customers": "gauge",
    "churn_state_bytes": "histogram",
    "churn_last_event_timestamp_seconds": "gauge",
    "churn_last_processed_timestamp_seconds": "gauge",
    "churn_drift_psi": "gauge",
    "churn_drift_ks": "gauge",
    "churn_drift_window_values": "gauge",
    "churn_drift_too_old_total": "counter",
}
NOTIFY_METRICS: Final = {
    "churn_alerts_delivered_total": "counter",
    "churn_alerts_held_total": "counter",
    "churn_notify_alerts_open": "gauge",
    "churn_digests_delivered_total": "counter",
    "churn_digests_failed_total": "counter",
}
SERVE_METRICS: Final = {
    "churn_inbox_requests_total": "counter",
    "churn_inbox_request_seconds": "histogram",
    "churn_inbox_actions_total": "counter",
    "churn_inbox_alerts_open": "gauge",
}


class BatchHistogram:
    """A histogram filled with numpy, a batch at a time (cumulative on export).

    >>> h = BatchHistogram((0.5, 1.0))
    >>> h.observe_many([0.2, 0.7, 3.0])
    >>> h.buckets(), h.count, round(h.total, 1)
    ([('0.5', 1.0), ('1.0', 2.0), ('+Inf', 3.0)], 3, 3.9)
    """

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = np.asarray(bounds, np.float64)
        self._counts = np.zeros(len(bounds) + 1, np.int64)
        self.total = 0.0
        self._lock = threading.Lock()  # scrapes may come from another thread

    def observe_many(self, values: npt.ArrayLike) -> None:
        x = np.asarray(values, np.float64)
        x = x[~np.isnan(x)]
        if not x.size:
            return
        idx = np.searchsorted(self.bounds, x, side="left")  # le bounds, as Prometheus
        add = np.bincount(idx, minlength=len(self._counts))
        with self._lock:
            self._counts += add
            self.total += float(x.sum())

    def observe(self, value: float) -> None:
        self.observe_many([value])

    @property
    def count(self) -> int:
        return int(self._counts.sum())

    def buckets(self) -> list[tuple[str, float]]:
        with self._lock:
            cum = np.cumsum(self._counts)
        labels = [_le(b) for b in self.bounds] + ["+Inf"]
        return [(le, float(c)) for le, c in zip(labels, cum, strict=True)]


def _le(bound: float) -> str:
    return repr(float(bound))


@dataclass
class WorkerView:
    """What the collector reads from a worker at scrape time (callables: live)."""

    counts: Mapping[str, int]
    dead: Mapping[str, int]
    suppressed: Mapping[str, int]
    alerts_by_rule: Mapping[tuple[str, str], int]
    model: Callable[[], tuple[str, str] | None]  # (name, version) in use
    reloads: Callable[[], int]
    reload_failures: Callable[[], int]
    lag: Callable[[], Mapping[tuple[str, int], int]]
    state_customers: Callable[[], int | None]
    drift: Callable[[], tuple[list[tuple[str, str, float, float]], int, int]]
    last_event_s: Callable[[], float | None]
    last_processed_s: Callable[[], float | None]
    histograms: Mapping[str, tuple[str, BatchHistogram]] = field(default_factory=dict)


class WorkerCollector(Collector):
    """Metric families of one worker, built from its live counters when scraped."""

    def __init__(self, view: WorkerView) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        v = self.view
        yield counter_family(
            "churn_events_consumed",
            "Records read from the events topic",
            {(): v.counts.get("consumed", 0)},
        )
        yield counter_family(
            "churn_events_refetched",
            "Records the consumer left out around a rebalance, read directly by the worker",
            {(): v.counts.get("refetched", 0)},
        )
        yield counter_family(
            "churn_events_processed",
            "Events folded into customer state, by outcome (applied or duplicate)",
            {(k,): v.counts.get(k, 0) for k in ("applied", "duplicate")},
            ("outcome",),
        )
        yield counter_family(
            "churn_events_dead_lettered",
            "Records sent to the dead-letter topic, by reason",
            {(k,): n for k, n in v.dead.items()},
            ("reason",),
        )
        yield counter_family(
            "churn_scores_emitted",
            "Scores sent to customer.scores",
            {(): v.counts.get("scored", 0)},
        )
        yield counter_family(
            "churn_scores_coalesced",
            "Scores not emitted while the worker was behind: the customer was touched "
            "again before the flush, and is scored once, at the newest event",
            {(): v.counts.get("coalesced", 0)},
        )
        yield counter_family(
            "churn_produce_failures",
            "Scores and changelog records the broker did not take (after retries)",
            {(): v.counts.get("produce_failures", 0)},
        )
        yield counter_family(
            "churn_score_failures",
            "Customers whose scoring failed (state kept; rescored on their next event)",
            {(): v.counts.get("score_failures", 0)},
        )
        yield counter_family(
            "churn_unscored",
            "Customers not scored because no champion model is loaded yet",
            {(): v.counts.get("unscored", 0)},
        )
        yield counter_family(
            "churn_alerts_raised",
            "Alerts sent to manager.alerts, by rule and severity",
            {k: float(n) for k, n in v.alerts_by_rule.items()},
            ("rule", "severity"),
        )
        yield counter_family(
            "churn_alerts_suppressed",
            "Rule hits held back, by why (cooldown, no_value, ...)",
            {(k,): n for k, n in v.suppressed.items()},
            ("reason",),
        )
        model = v.model()
        info = InfoMetricFamily("churn_model", "The champion model in use", labels=("name",))
        if model is not None:
            info.add_metric((model[0],), {"version": model[1]})
        yield info
        yield gauge_family(
            "churn_model_loaded",
            "1 when a champion model is loaded, else 0",
            {(): 1.0 if model else 0.0},
        )
        yield counter_family(
            "churn_model_reloads", "Hot swaps to a newly promoted champion", {(): v.reloads()}
        )
        yield counter_family(
            "churn_model_reload_failures",
            "Failed checks or loads of the champion (registry unreachable, bad bundle)",
            {(): v.reload_failures()},
        )
        lag = GaugeMetricFamily(
            "churn_consumer_lag",
            "Records not yet read, per source partition",
            labels=("topic", "partition"),
        )
        for (topic, partition), n in sorted(v.lag().items()):
            lag.add_metric((topic, str(partition)), float(n))
        yield lag
        customers = v.state_customers()
        if customers is not None:
            yield gauge_family(
                "churn_state_customers",
                "Customer states held by this worker",
                {(): float(customers)},
            )
        for t, name, help_ in (
            (
                v.last_event_s(),
                "churn_last_event_timestamp_seconds",
                "Event time of the newest event folded",
            ),
            (
                v.last_processed_s(),
                "churn_last_processed_timestamp_seconds",
                "When an event was last folded",
            ),
        ):
            if t is not None:
                yield gauge_family(name, help_, {(): t})
        for name, (help_, hist) in v.histograms.items():
            fam = HistogramMetricFamily(name, help_)
            fam.add_metric([], hist.buckets(), sum_value=hist.total)
            yield fam
        rows, window_n, too_old = v.drift()
        psi_f = GaugeMetricFamily(
            "churn_drift_psi",
            "Population stability index of the recent window against the training reference",
            labels=("column", "kind"),
        )
        ks_f = GaugeMetricFamily(
            "churn_drift_ks",
            "Kolmogorov-Smirnov distance (at the reference bin edges) of the recent window",
            labels=("column", "kind"),
        )
        for column, kind, p, k in rows:
            psi_f.add_metric((column, kind), p)
            ks_f.add_metric((column, kind), k)
        yield psi_f
        yield ks_f
        yield gauge_family(
            "churn_drift_window_values", "Scores in the drift window", {(): float(window_n)}
        )
        yield counter_family(
            "churn_drift_too_old", "Scores older than the drift window (not counted)", {(): too_old}
        )


def counter_family(
    name: str, help_: str, values: Mapping[tuple[str, ...], float], labels: Iterable[str] = ()
) -> CounterMetricFamily:
    fam = CounterMetricFamily(name, help_, labels=tuple(labels))
    for key, n in values.items():
        fam.add_metric(list(key), float(n))
    return fam


def gauge_family(
    name: str, help_: str, values: Mapping[tuple[str, ...], float], labels: Iterable[str] = ()
) -> GaugeMetricFamily:
    fam = GaugeMetricFamily(name, help_, labels=tuple(labels))
    for key, n in values.items():
        fam.add_metric(list(key), float(n))
    return fam


def exposition(registry: CollectorRegistry) -> bytes:
    """The text format Prometheus scrapes."""
    return bytes(generate_latest(registry))


def metric_names(registry: CollectorRegistry) -> dict[str, str]:
    """Exposed sample-family names and types (counters with ``_total``)."""
    out: dict[str, str] = {}
    for fam in registry.collect():
        name = fam.name + "_total" if fam.type == "counter" else fam.name
        out[name] = fam.type
    return out


def registry_of(*collectors: Collector) -> CollectorRegistry:
    """A registry of its own (not the process-global one) holding ``collectors``."""
    reg = CollectorRegistry(auto_describe=False)
    for c in collectors:
        reg.register(c)
    return reg
