"""``churn demo``: the whole product on embedded defaults, in a few minutes.

simulate → training set → train → register → promote → broker + worker → backfill
the history of a sample of customers → replay their last weeks live at a steady
rate with a progress line → summary. Ctrl-C stops everything; no orphan process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

__all__ = ["DemoConfig", "run_live"]


@dataclass(frozen=True, slots=True)
class DemoConfig:
    events: Path
    data_dir: Path
    live_customers: int = 500
    live_days: int = 14
    rate: float = 100.0
    broker_port: int = 9092
    web_port: int = 6066
    seed: int = 7


def _stats(port: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/stats/"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return dict(json.loads(resp.read()))


def _wait_stats(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited:\n{log.read_text()[-2000:]}")
        try:
            _stats(port)
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the worker did not start:\n{log.read_text()[-2000:]}")


def _free(port: int) -> int:
    from stream import port_open

    while port_open("127.0.0.1", port):
        port += 1
    return port


def _line(text: str) -> None:
    if sys.stdout.isatty():
        print("\r" + text.ljust(110), end="", flush=True)
    else:
        print(text, flush=True)


def run_live(cfg: DemoConfig) -> int:
    """The streaming part of the demo; returns an exit code."""
    import threading

    from features import scan_log
    from stream import Broker, consumer_lag, load_replay, read_topic, replay, stop_group
    from training import Store

    port = _free(cfg.broker_port)
    web_port = _free(cfg.web_port)
    logs = cfg.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    bounds = scan_log(cfg.events).select(pl.col("occurred_at").max()).collect()
    end: datetime = bounds.item()
    cut = datetime.combine((end - timedelta(days=cfg.live_days)).date(), datetime.min.time(), UTC)
    ids = (
        scan_log(cfg.events)
        .select("customer_id")
        .unique()
        .sort("customer_id")
        .collect()["customer_id"]
        .sample(cfg.live_customers, seed=cfg.seed)
        .sort()
        .to_list()
    )
    history = load_replay(cfg.events, None, cut, ids)
    live = load_replay(cfg.events, cut, None, ids)
    with Broker(port, log=logs / "broker.log") as broker:
        bootstrap = f"127.0.0.1:{port}"
        print(f"\nBroker on {broker.url}; starting a worker (log: {logs / 'worker.log'}) ...")
        env = {
            **os.environ,
            "CHURN_KAFKA_URL": broker.url,
            "CHURN_WEB_PORT": str(web_port),
            "CHURN_DATA_DIR": str(cfg.data_dir),
            "CHURN_MODEL_POLL_SECONDS": "10",
        }
        with (logs / "worker.log").open("wb") as out:
            worker = subprocess.Popen(  # noqa: S603 - our own entry point
                [sys.executable, "-m", "churn", "worker", "--data-dir", str(cfg.data_dir)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            _wait_stats(web_port, worker, logs / "worker.log")
            print(
                f"Backfilling the history of {len(ids):,} customers ({history.height:,} "
                f"records up to {cut.date()}; folded, not scored) ..."
            )
            replay(bootstrap, "bank.events", history, backfill=True)
            _follow(web_port, bootstrap, history.height, "backfill")
            print(
                f"\nLive: the last {cfg.live_days} days ({live.height:,} records) at "
                f"{cfg.rate:,.0f} events/s ..."
            )
            began = time.monotonic()
            base = int(_stats(web_port)["counts"].get("consumed", 0))
            feeder = threading.Thread(
                target=replay, args=(bootstrap, "bank.events", live), kwargs={"rate": cfg.rate}
            )
            feeder.start()
            while feeder.is_alive():
                _progress(web_port, bootstrap, began, base)
                time.sleep(1)
            _follow(web_port, bootstrap, history.height + live.height, "live")
            seconds = time.monotonic() - began
            stats = _stats(web_port)
            drift = _drift_report(web_port, cfg.data_dir / "drift-report.html")
        finally:
            stop_group(worker)
        scores = [json.loads(v) for _, v in read_topic(bootstrap, "customer.scores", idle=5)]
        alerts = [json.loads(v) for _, v in read_topic(bootstrap, "manager.alerts", idle=5)]
        lag = sum(consumer_lag(bootstrap, "churn-engine", "bank.events").values())
    _summary(stats, scores, alerts, live.height, seconds, lag, Store.resolve(cfg.data_dir))
    if drift is not None:
        score = next(d for d in drift["drift"] if d["column"] == "churn_probability")
        worst = next(
            d
            for d in drift["drift"]
            if d["column"] not in ("churn_probability", "predicted_value_minor")
        )
        print(
            f"  drift of the live window vs the training reference: churn probability PSI "
            f"{score['psi']:.3f}; most drifted feature {worst['column']} PSI {worst['psi']:.3f}"
            f" (report: {cfg.data_dir / 'drift-report.html'})"
        )
    return 0


def _drift_report(web_port: int, out: Path) -> dict[str, Any] | None:
    """The worker's drift window as a page (None if it has none yet)."""
    from monitoring._report import write_drift_report

    try:
        return write_drift_report([f"http://127.0.0.1:{web_port}"], out, now=datetime.now(UTC))
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"  (no drift report: {exc})")
        return None


def _progress(web_port: int, bootstrap: str, began: float, base: int) -> None:
    from stream import consumer_lag

    s = _stats(web_port)
    c = s["counts"]
    elapsed = max(time.monotonic() - began, 1e-9)
    lag = sum(consumer_lag(bootstrap, "churn-engine", "bank.events").values())
    _line(
        f"  consumed {c.get('consumed', 0) - base:>9,}  "
        f"({(c.get('consumed', 0) - base) / elapsed:>6,.0f}/s)"
        f"  scored {c.get('scored', 0):>7,}  alerts {c.get('alerts', 0):>5,}  lag {lag:>7,}"
        f"  model v{s.get('model_version')}"
    )


def _follow(web_port: int, bootstrap: str, total: int, phase: str) -> None:
    """Wait until the worker has consumed everything sent so far, showing progress."""
    from stream import consumer_lag

    while True:
        lag = sum(consumer_lag(bootstrap, "churn-engine", "bank.events").values())
        c = _stats(web_port)["counts"]
        _line(f"  {phase}: consumed {c.get('consumed', 0):>9,} of {total:,}  lag {lag:>8,}")
        if lag == 0:
            break
        time.sleep(1)
    print()


def _summary(
    stats: dict[str, Any],
    scores: list[dict[str, Any]],
    alerts: list[dict[str, Any]],
    live_records: int,
    seconds: float,
    lag: int,
    store: Any,
) -> None:
    c = stats["counts"]
    print("\n== Summary ==")
    print(
        f"records consumed {c.get('consumed', 0):,}: applied {c.get('applied', 0):,}, "
        f"duplicates {c.get('duplicate', 0):,}, "
        f"dead-lettered {sum(stats['dead_lettered'].values()):,}; final lag {lag}"
    )
    print(
        f"live phase: {live_records:,} records in {seconds:.0f} s "
        f"({live_records / max(seconds, 1e-9):,.0f}/s); scores emitted {len(scores):,} "
        f"by model version {stats.get('model_version')}"
    )
    if scores:
        frame = pl.DataFrame(scores).unique("customer_id", keep="last")
        probs = frame["churn_probability"].to_numpy()
        import numpy as np

        p50, p90, p99 = np.quantile(probs, [0.5, 0.9, 0.99])
        print(
            f"latest churn probability per customer ({frame.height:,}): "
            f"p50 {p50:.3f}, p90 {p90:.3f}, p99 {p99:.3f}, max {probs.max():.3f}"
        )
        for col in ("value_tier", "lifecycle_stage"):
            counts = Counter(frame[col].to_list())
            print(f"  {col}: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    per_manager = Counter(a.get("manager_id") or "(branch queue)" for a in alerts)
    print(f"alerts raised: {len(alerts):,} for {len(per_manager)} managers")
    for manager, n in per_manager.most_common(5):
        print(f"  {manager}: {n}")
    print("\nwhere to look:")
    print(f"  models and runs: {store.describe()}")
    print(
        "  a worker's counters and metrics: http://127.0.0.1:6066/stats/ and /metrics "
        "while `churn worker` runs (Prometheus rules and a Grafana dashboard: monitoring/)"
    )
