"""Streaming benchmarks on the real (dev) broker: pipeline vs a no-op faust agent,
and produce-to-score latency at a steady rate.

``python -m bench.stream [--customers N] [--runs R]`` prints a Markdown section.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.run import _machine
from features import FEATURES, build_training_set, scan_log
from features.events import decode
from simulator import SimConfig, write_parquet
from stream import (
    Broker,
    WorkerConfig,
    consumer_lag,
    load_replay,
    read_records,
    replay,
    stop_group,
)
from training import Store, TrainConfig, promote, register, train_models

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Span = Callable[[], tuple[int, float, float]]


def _drained(bootstrap: str, group: str, timeout: float = 900) -> None:
    """Until ``group`` has committed every record of ``bank.events``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lag = consumer_lag(bootstrap, group, "bank.events")
        if lag and sum(lag.values()) == 0:
            return
        time.sleep(0.5)
    raise RuntimeError("timed out")


def _consume_rate(bootstrap: str, group: str, total: int, span: Span) -> float:
    """Records/s of a drain of ``total`` records: once the group has committed them
    all, the records over the span of work the agent reports (``span``: records, the
    wall-clock start of its first batch, the end of its last batch or flush).

    Not the commits' own pace: the worker commits on faust's timer (2.8 s), after its
    write-behind flush, so on a drain of 6-15 s the first and last commits fell up to
    a third of the drain away from the work (a drain 13.2-14.6k records/s by its work
    read 8.7-11.6k by its commits), where the no-op commits every 10,000 records."""
    _drained(bootstrap, group)
    records, first, last = span()
    if records < total:
        raise RuntimeError(f"the agent reports {records:,} records of {total:,}")
    return records / max(last - first, 1e-9)


def _worker_span(*webs: int) -> Span:
    """The work of one or more ``churn worker`` (their ``/stats/``), together: from
    the first batch to the last, plus what of the last write-behind flush's work came
    after it (not the wait for the flush's time to come: that is no work)."""

    def span() -> tuple[int, float, float]:
        stats = [_stats(web) for web in webs]
        ends = []
        for w in (s["work"] for s in stats):
            end = w["last_batch"]
            if w["last_flush"] is not None and w["last_flush"] > end:
                end += w["last_flush"] - max(w["flush_began"], end)
            ends.append(end)
        return (
            sum(int(s["counts"].get("consumed", 0)) for s in stats),
            min(s["work"]["first_batch"] for s in stats),
            max(ends),
        )

    return span


def _noop_span(datadir: Path) -> Span:
    """The work of a ``bench.noop_worker`` (the ``work.json`` it writes)."""

    def span() -> tuple[int, float, float]:
        work = json.loads((datadir / "work.json").read_text())
        return int(work["records"]), float(work["first_batch"]), float(work["last_batch"])

    return span


def _noop_drain(broker: Broker, own: Path, total: int, stock: bool = False) -> float:
    """Records/s at which a ``bench.noop_worker`` (data directory ``own``, its log
    beside it) drains the ``total`` records ``broker`` holds; ``stock``: reading as
    faust 0.15.3 does."""
    proc = _worker(
        [sys.executable, "-m", "bench.noop_worker", broker.url, str(own)]
        + (["--stock-faust"] if stock else []),
        {**os.environ, "PYTHONPATH": str(ROOT)},
        own.with_name(f"{own.name}.log"),
    )
    try:
        bootstrap = broker.url.removeprefix("kafka://")
        return _consume_rate(bootstrap, "noop-bench", total, _noop_span(own))
    finally:
        stop_group(proc)


def _worker(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _pipeline_worker(
    broker: Broker, work: Path, name: str, **env_extra: str
) -> tuple[subprocess.Popen[bytes], int]:
    """A `churn worker` whose model store is the embedded one under ``work``; its own
    faust data directory (``work/<name>``) so that several can run side by side."""
    web = _free_port()
    own = work / name
    own.mkdir(exist_ok=True)
    if not (own / "mlflow").exists():
        (own / "mlflow").symlink_to(work / "mlflow")
    env = {
        **os.environ,
        "CHURN_KAFKA_URL": broker.url,
        "CHURN_WEB_PORT": str(web),
        "CHURN_DATA_DIR": str(own),
        **env_extra,
    }
    cmd = [sys.executable, "-m", "churn", "worker", "--data-dir", str(own)]
    return _worker(cmd, env, work / f"{name}.log"), web


def _stats(web: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{web}/stats/", timeout=5) as r:
        return dict(json.loads(r.read()))


def _wait_model(web: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{web}/stats/", timeout=2) as r:
                if json.loads(r.read())["model_version"]:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError("the worker did not load the champion")


def _memory_per_100k(work: Path, customers: int) -> tuple[float, float, float]:
    """Worker RSS growth per 100k customers: fold the history of ``customers``
    customers (6 months: the longest window; backfill: state only) and compare RSS before and after."""
    log = work / "memory.parquet"
    write_parquet(SimConfig(customers=customers, months=6, seed=9), log, workers=1)
    frame = load_replay(log)
    with Broker(_free_port(), log=work / "broker-mem.log") as broker:
        bootstrap = broker.url.removeprefix("kafka://")
        # no decoded-state cache: what each customer costs in the table itself (the
        # cache adds at most CHURN_STATE_CACHE decoded states on top)
        pipe, web = _pipeline_worker(broker, work, "worker-mem", CHURN_STATE_CACHE="0")
        try:
            _wait_model(web)
            before = _rss_mb(pipe.pid)
            replay(bootstrap, "bank.events", frame, backfill=True)
            _drained(bootstrap, "churn-engine")
            after = _rss_mb(pipe.pid)
        finally:
            stop_group(pipe)
    return before, after, (after - before) / customers * 100_000


def _latency_run(work: Path, frame: Any, rate: float, i: int) -> tuple[list[float], list[float]]:
    """Produce-to-score and event-to-alert latencies (ms) of one worker fed ``rate``
    records/s for a minute, on a fresh broker, once it has the champion."""
    with Broker(_free_port(), log=work / f"broker-lat{i}.log") as broker:
        bootstrap = broker.url.removeprefix("kafka://")
        pipe, web = _pipeline_worker(broker, work, f"worker-lat{i}")
        try:
            _wait_model(web)
            part = frame.head(min(frame.height, int(rate * 60)))
            replay(bootstrap, "bank.events", part, rate=rate)
            while sum(consumer_lag(bootstrap, "churn-engine", "bank.events").values()):
                time.sleep(1)
        finally:
            stop_group(pipe)
        return _latencies(bootstrap), _latencies(bootstrap, "manager.alerts")


def _drain(work: Path, frame: Any, name: str, **env_extra: str) -> tuple[float, int]:
    """Records/s at which one worker (settings ``env_extra``) drains the whole log from
    a fresh broker holding it, and how many scores it emitted."""
    with Broker(_free_port(), log=work / f"broker-{name}.log") as broker:
        bootstrap = broker.url.removeprefix("kafka://")
        replay(bootstrap, "bank.events", frame)
        pipe, web = _pipeline_worker(broker, work, name, **env_extra)
        try:
            rate = _consume_rate(bootstrap, "churn-engine", frame.height, _worker_span(web))
            return rate, int(_stats(web)["counts"].get("scored", 0))
        finally:
            stop_group(pipe)


def _steady_capacity(work: Path, frame: Any, i: int) -> float:
    """The rate of a drain scoring every micro-batch (``CHURN_CATCHUP_SECONDS=0``): the
    steady stream a worker keeps up with, measured just before the latency run it sets
    the rate of."""
    return _drain(work, frame, f"worker-cap{i}", CHURN_CATCHUP_SECONDS="0")[0]


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def train_champion(work: Path) -> Any:
    """A champion model in the embedded store under ``work``, trained quickly; returns
    its training set."""
    bank = work / "train.parquet"
    write_parquet(SimConfig(customers=2500, months=24, seed=23), bank, workers=1)
    ts = build_training_set(scan_log(bank), date(2024, 7, 1), date(2025, 10, 1), 30).frame
    store = Store.resolve(work, environ={})
    now = datetime.now(UTC)
    register(
        store,
        train_models(
            ts,
            __import__("features").LabelConfig(),
            TrainConfig(max_rounds=300),
            events=scan_log(bank),  # the drift reference at events, as the worker scores
            now=now,
        ),
    )
    promote(store, who="bench", now=now)
    return ts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=600)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--memory-customers", type=int, default=5_000, help="0: skip")
    parser.add_argument(
        "--capacity",
        type=float,
        default=None,
        help="skip the throughput runs; measure latency at half this rate (records/s)",
    )
    parser.add_argument("--latency-runs", type=int, default=3, help="latency runs (median)")
    parser.add_argument(
        "--paired",
        action="store_true",
        help="measure the steady capacity (every micro-batch scored) just before each "
        "latency run, and run it at half of that (this machine's speed drifts)",
    )
    parser.add_argument(
        "--overhead",
        action="store_true",
        help="only the cost of monitoring: the pipeline with CHURN_MONITORING on vs off",
    )
    args = parser.parse_args()
    if args.paired and args.capacity:
        parser.error("--paired measures the capacity; --capacity gives it: one or the other")
    if not (args.runs or args.capacity or args.paired or args.overhead):
        parser.error("no capacity to take half of: --runs 0 needs --capacity or --paired")
    if args.latency_runs < 1 and (args.capacity or args.paired):
        parser.error("--capacity and --paired are for latency runs: --latency-runs 0 has none")
    work = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    ts = train_champion(work)
    log = work / "events.parquet"
    write_parquet(SimConfig(customers=args.customers, months=12, seed=5), log, workers=1)
    frame = load_replay(log)
    total = frame.height
    if args.overhead:
        return _monitoring_overhead(work, frame, args.runs, args.customers, ts)
    ratios, pipes, noops, rss, twos = [], [], [], [], []  # type: ignore[var-annotated]
    for run in range(0 if args.capacity else args.runs):
        with Broker(_free_port(), log=work / f"broker{run}.log") as broker:
            bootstrap = broker.url.removeprefix("kafka://")
            replay(bootstrap, "bank.events", frame)  # live: every customer is scored
            noops.append(_noop_drain(broker, work / f"noop{run}", total))
            pipe, web = _pipeline_worker(broker, work, f"worker{run}")
            try:
                pipes.append(_consume_rate(bootstrap, "churn-engine", total, _worker_span(web)))
                rss.append(_rss_mb(pipe.pid))
            finally:
                stop_group(pipe)
        with Broker(_free_port(), log=work / f"broker-two{run}.log") as broker:
            # two workers on the same 8 partitions: started (and balanced) before the
            # records arrive, so that the rate is of two workers, not of a rebalance
            bootstrap = broker.url.removeprefix("kafka://")
            both = [_pipeline_worker(broker, work, f"two{run}-{i}") for i in (1, 2)]
            try:
                for _, web in both:
                    _wait_model(web)
                time.sleep(35)  # the broker waits for late joiners before it assigns
                replay(bootstrap, "bank.events", frame)
                spans = _worker_span(*(web for _, web in both))
                twos.append(_consume_rate(bootstrap, "churn-engine", total, spans))
            finally:
                for proc, _ in both:
                    stop_group(proc)
        ratios.append(pipes[-1] / noops[-1])
        print(
            f"run {run + 1}: pipeline {pipes[-1]:,.0f}/s, no-op {noops[-1]:,.0f}/s, "
            f"ratio {ratios[-1]:.3f}; two workers {twos[-1]:,.0f}/s",
            file=sys.stderr,
        )
    memory = _memory_per_100k(work, args.memory_customers) if args.memory_customers else None
    # latency at a steady rate of half the pipeline's capacity (each run on a fresh broker)
    fixed = (args.capacity or (statistics.median(pipes) if pipes else 0.0)) / 2
    # the load generator's own full collections (it holds the training set and the
    # frames) would hold up its sends and count as the worker's latency
    gc.freeze()
    lat_runs, capacities, rates = [], [], []
    for i in range(args.latency_runs):
        if args.paired:
            capacities.append(_steady_capacity(work, frame, i))
        rates.append(capacities[-1] / 2 if args.paired else fixed)
        lat_runs.append(_latency_run(work, frame, rates[-1], i))
        lat, alert_lat = lat_runs[-1]
        print(
            f"latency run {i + 1}: {rates[-1]:,.0f} records/s, p50 {np.percentile(lat, 50):.0f} ms, "
            f"p99 {np.percentile(lat, 99):.0f} ms ({len(lat):,} scores); alerts p99 "
            f"{np.percentile(alert_lat, 99) if alert_lat else float('nan'):.0f} ms",
            file=sys.stderr,
        )
    explain_s = _reason_codes_seconds(work, ts)
    print(f"\n## Streaming pipeline (`python -m bench.stream {' '.join(sys.argv[1:])}`)\n")
    print(
        f"{_machine()}; {datetime.now(UTC).date()}; broker: Tansu 0.6 (memory), 8 partitions, one worker.\n"
    )
    print(
        f"Log: {total:,} records ({args.customers} customers x 12 months), all scored (live, not backfill).\n"
    )
    if pipes:
        print("| run | pipeline (records/s) | no-op faust agent (records/s) | ratio |")
        print("|---|---|---|---|")
        for i, (p, n, r) in enumerate(zip(pipes, noops, ratios, strict=True), 1):
            print(f"| {i} | {p:,.0f} | {n:,.0f} | {r:.3f} |")
        print(
            f"| **median** | **{statistics.median(pipes):,.0f}** | **{statistics.median(noops):,.0f}** | **{statistics.median(ratios):.3f}** |\n"
        )
    if lat_runs:  # --latency-runs 0: throughput only
        by_p99 = sorted((float(np.percentile(lat, 99)), i) for i, (lat, _) in enumerate(lat_runs))
        p99s = [p for p, _ in by_p99]
        latencies, alert_latencies = lat_runs[by_p99[len(by_p99) // 2][1]]  # the median run by p99
        p50, p99 = np.percentile(latencies, [50, 99])
        a50, a99 = np.percentile(alert_latencies, [50, 99]) if alert_latencies else (np.nan, np.nan)
        if args.paired:
            print(
                "| run | steady capacity (records/s) | rate (half) | p50 (ms) | p99 (ms) "
                "| p99 of the last third (ms) |"
            )
            print("|---|---|---|---|---|---|")
            for i, (c, r, (lat, _)) in enumerate(zip(capacities, rates, lat_runs, strict=True), 1):
                q50, q99 = np.percentile(lat, [50, 99])
                late = np.percentile(lat[-len(lat) // 3 :], 99)  # by produce time: fuller states
                print(f"| {i} | {c:,.0f} | {r:,.0f} | {q50:.0f} | {q99:.0f} | {late:.0f} |")
            print(
                "\nThe log's states fill their windows as it plays, so scoring costs more per "
                "customer towards its end: the last third is the steadier state of a bank.\n"
            )
            what = "half the steady capacity measured just before each run"
        else:
            what = f"{rates[0]:,.0f} records/s, half the " + (
                "given capacity" if args.capacity else "median capacity"
            )
        print(
            f"Produce-to-score latency at a steady rate ({what}), "
            f"the median of {len(p99s)} runs by p99 ({len(latencies):,} scores): p50 {p50:.0f} ms, "
            f"p99 {p99:.0f} ms (p99 of each run: {', '.join(f'{x:.0f}' for x in p99s)} ms).\n"
        )
        print(
            f"Event-to-alert latency on `manager.alerts` at the same rate (default policy, no "
            f"group wait: alerts leave the worker at once), {len(alert_latencies):,} alerts: "
            f"p50 {a50:.0f} ms, p99 {a99:.0f} ms.\n"
        )
    print(
        f"Reason codes for 1,000 alerts (contributions + top-3 reasons in English and Chinese): "
        f"median **{statistics.median(explain_s):.2f} s** (runs: {', '.join(f'{x:.2f}' for x in explain_s)}).\n"
    )
    if twos:
        two = statistics.median(twos)
        print(
            f"Two workers on the same 8 partitions (one consumer group, each its own state): "
            f"median **{two:,.0f}** records/s (runs: {', '.join(f'{x:,.0f}' for x in twos)}), "
            f"**{two / statistics.median(pipes):.2f}x** one worker.\n"
        )
        print(
            f"Worker RSS after the run: median {statistics.median(rss):,.0f} MB for {args.customers} customers.\n"
        )
    if memory is not None:
        before, after, per_100k = memory
        print(
            f"Folding the 6-month history of {args.memory_customers:,} customers grew a worker from "
            f"{before:,.0f} MB to {after:,.0f} MB: **{per_100k:,.0f} MB per 100k customers** "
            f"(memory store, decoded-state cache off: the serialised states in the table; a worker "
            f"adds at most CHURN_STATE_CACHE={WorkerConfig().cache_size:,} decoded states on top)."
        )
    return 0


def _monitoring_ms(work: Path, ts: Any, n: int = 500, runs: int = 20) -> float:
    """Median milliseconds of the worker's monitoring work for one micro-batch of ``n``
    scored customers: both score histograms, the latency and state-size histograms,
    the drift window, and (as if every batch were scraped) the /metrics exposition."""
    from monitoring import (
        LATENCY_BUCKETS,
        PROBABILITY_BUCKETS,
        VALUE_BUCKETS,
        BatchHistogram,
        DriftWindow,
        WorkerCollector,
        WorkerView,
        exposition,
        registry_of,
    )
    from training import load_bundle

    bundle, _ = load_bundle(Store.resolve(work, environ={}))
    rows = ts.head(n)
    feats = {f: rows[f].to_numpy().astype(np.float64) for f in bundle.features}
    churn, value = bundle.predict(np.column_stack([feats[f] for f in bundle.features]))
    t_us = np.full(n, 1_700_000_000_000_000, np.int64)
    window = DriftWindow(
        bundle.reference, ["churn_probability", "predicted_value_minor", *bundle.features]
    )
    hists = {
        "a": ("", BatchHistogram(PROBABILITY_BUCKETS)),
        "b": ("", BatchHistogram(VALUE_BUCKETS)),
        "c": ("", BatchHistogram(LATENCY_BUCKETS)),
    }
    view = WorkerView(
        counts={},
        dead={},
        suppressed={},
        alerts_by_rule={},
        model=lambda: ("m", "1"),
        reloads=lambda: 0,
        reload_failures=lambda: 0,
        lag=lambda: {("bank.events", p): 0 for p in range(8)},
        state_customers=lambda: n,
        drift=lambda: (
            [(d.column, "feature", d.psi, d.ks) for d in window.drift()],
            window.n,
            0,
        ),
        last_event_s=lambda: 0.0,
        last_processed_s=lambda: 0.0,
        histograms=hists,
    )
    registry = registry_of(WorkerCollector(view))
    took = []
    for _ in range(runs):
        began = time.perf_counter()
        hists["a"][1].observe_many(churn)
        hists["b"][1].observe_many(value)
        hists["c"][1].observe_many(np.random.default_rng(0).random(n))
        window.add(t_us, {**feats, "churn_probability": churn, "predicted_value_minor": value})
        exposition(registry)
        took.append((time.perf_counter() - began) * 1000)
    return statistics.median(took)


def _monitoring_overhead(work: Path, frame: Any, runs: int, customers: int, ts: Any) -> int:
    """Pipeline throughput with monitoring (histograms, drift window) on and off, each
    on a fresh broker holding the same records; the order alternates between runs."""
    total = frame.height
    rates: dict[str, list[float]] = {"on": [], "off": []}
    work_of: dict[str, list[tuple[int, float]]] = {"on": [], "off": []}
    for run in range(runs):
        for mode in ("on", "off") if run % 2 == 0 else ("off", "on"):
            with Broker(_free_port(), log=work / f"broker-{mode}{run}.log") as broker:
                bootstrap = broker.url.removeprefix("kafka://")
                replay(bootstrap, "bank.events", frame)
                flag = "true" if mode == "on" else "false"
                pipe, web = _pipeline_worker(
                    broker, work, f"mon-{mode}{run}", CHURN_MONITORING=flag
                )
                try:
                    rates[mode].append(
                        _consume_rate(bootstrap, "churn-engine", total, _worker_span(web))
                    )
                    stats = _stats(web)
                    work_of[mode].append(
                        (int(stats["counts"].get("scored", 0)), stats["batches"]["process_ms_p50"])
                    )
                finally:
                    stop_group(pipe)
        print(
            f"run {run + 1}: monitoring on {rates['on'][-1]:,.0f}/s, off {rates['off'][-1]:,.0f}/s",
            file=sys.stderr,
        )
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    print(f"\n## Monitoring overhead (`python -m bench.stream {' '.join(sys.argv[1:])}`)\n")
    print(f"{_machine()}; {datetime.now(UTC).date()}; broker: Tansu 0.6 (memory), one worker.\n")
    print(f"Log: {total:,} records ({customers} customers x 12 months), all scored.\n")
    print(
        "| run | on (records/s) | off (records/s) | on / off | scores emitted on / off "
        "| batch process ms p50 on / off |"
    )
    print("|---|---|---|---|---|---|")
    for i, (a, b, wa, wb) in enumerate(
        zip(rates["on"], rates["off"], work_of["on"], work_of["off"], strict=True), 1
    ):
        print(
            f"| {i} | {a:,.0f} | {b:,.0f} | {a / b:.3f} | {wa[0]:,} / {wb[0]:,} "
            f"| {wa[1]:.0f} / {wb[1]:.0f} |"
        )
    print(f"| **median** | **{on:,.0f}** | **{off:,.0f}** | **{on / off:.3f}** | | |\n")
    print(f"Overhead: **{(1 - on / off) * 100:.1f}%** of throughput (target <= 10%).\n")
    direct = _monitoring_ms(work, ts)
    batch_ms = statistics.median(w[1] for w in work_of["off"])
    print(
        f"Measured directly: the monitoring work of one micro-batch of 500 scored customers "
        f"(score histograms, latency histogram, drift window over {2 + len(FEATURES)} columns, "
        f"and a full /metrics exposition as if every batch were scraped) takes "
        f"**{direct:.2f} ms**, against a median {batch_ms:.0f} ms to process a batch without "
        f"monitoring: **{direct / batch_ms * 100:.1f}%**."
    )
    return 0


def _reason_codes_seconds(work: Path, frame: Any, n: int = 1000, runs: int = 3) -> list[float]:
    """Seconds to explain ``n`` alerts: LightGBM contributions for their rows, then the
    top-3 reasons in English and Chinese."""
    from serving import explain
    from training import load_bundle

    bundle, _ = load_bundle(Store.resolve(work, environ={}))
    rows = frame.head(n)
    x = rows.select(list(bundle.features)).to_numpy().astype(np.float64)
    out = []
    for _ in range(runs):
        began = time.perf_counter()
        contrib = bundle.contributions(x)
        for i in range(n):
            feats = dict(zip(bundle.features, x[i].tolist(), strict=True))
            c = dict(zip(bundle.features, contrib[i].tolist(), strict=False))
            explain(feats, c, "en")
            explain(feats, c, "zh")
        out.append(time.perf_counter() - began)
    return out


def _latencies(bootstrap: str, topic: str = "customer.scores") -> list[float]:
    """ms from an event's produce time to the emission of the score (or alert) at its
    time, in the order the events were produced."""
    sent: dict[tuple[str, int], float] = {}
    for _, value, ts in read_records(bootstrap, "bank.events"):
        try:
            ev = decode(value)
        except Exception:  # noqa: S112 - malformed records have no score
            continue
        key = (ev.customer_id, int(ev.occurred_at.timestamp() * 1e6))
        sent.setdefault(key, ts)
    out = []
    for _, value, ts in read_records(bootstrap, topic):
        s = json.loads(value)
        key = (s["customer_id"], int(datetime.fromisoformat(s["as_of"]).timestamp() * 1e6))
        if key in sent:
            out.append((sent[key], ts - sent[key]))
    return [latency for _, latency in sorted(out)]


if __name__ == "__main__":
    sys.exit(main())
