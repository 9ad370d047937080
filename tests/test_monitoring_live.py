"""A real Prometheus scrapes a real worker: metrics appear, score drift fires the rule.

The bank streamed here is simulated on the champion's calendar; with ``--shift``
(``SimConfig.shift_share``) most customers disengage in the last 30 days. Its
history is backfilled (folded, not scored) and its last 10 days replayed live, so
the worker's 7-day drift window holds the scores of the shifted period.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from churn._cli import main
from simulator import SimConfig, write_parquet
from stream import Broker, load_replay, replay
from tests.conftest import free_port, stop
from tests.test_stream import start_worker, wait_caught_up

pytestmark = pytest.mark.integration

RULES = Path(__file__).parent.parent / "monitoring" / "prometheus" / "rules.yml"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(free_port(), log=tmp_path / "broker.log") as b:
        yield b


class Prometheus:
    def __init__(self, url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.url, self.proc, self.log = url, proc, log

    def get(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def value(self, promql: str) -> float | None:
        result = self.get("/api/v1/query", query=promql)["result"]
        return float(result[0]["value"][1]) if result else None

    def alert_state(self, name: str) -> str | None:
        for alert in self.get("/api/v1/alerts")["alerts"]:
            if alert["labels"]["alertname"] == name:
                return str(alert["state"])
        return None


def start_prometheus(tmp_path: Path, targets: list[str]) -> Prometheus:
    """Prometheus on loopback, scraping ``targets`` every second with our rules."""
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(  # YAML is a superset of JSON
            {
                # a failed scrape marks the series stale and resets a pending alert: give a
                # busy worker time to answer
                "global": {
                    "scrape_interval": "3s",
                    "scrape_timeout": "3s",
                    "evaluation_interval": "1s",
                },
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {"job_name": "churn-worker", "static_configs": [{"targets": targets}]}
                ],
            }
        )
    )
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    prom = Prometheus(f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(log.read_text()[-3000:])
        try:
            with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=2) as resp:
                if resp.status == 200:
                    return prom
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"prometheus did not start:\n{log.read_text()[-3000:]}")


# the live days arrive as a backlog: catch-up scoring would emit one score per customer
# per flush, and how many flushes the drain spans (so how many scores reach the drift
# window, whose rule needs 200) would depend on the worker's speed: 197 in one run
EVERY_BATCH = {"CHURN_CATCHUP_SECONDS": "0"}


def stream_bank(broker: Broker, tmp_path: Path, shift: float) -> None:
    """Simulate May-December 2025 for 300 customers (the champion's calendar); backfill
    it, then replay its last 10 days live. (With 200, the 7-day drift window held 191
    scores in one run: below the rule's floor of 200, so the alert could not fire.)"""
    log = tmp_path / "bank.parquet"
    cfg = SimConfig(customers=300, months=8, seed=41, start=date(2025, 5, 1))
    write_parquet(cfg.replace(shift_share=shift, shift_days=30), log, workers=1)
    end = load_replay(log)["occurred_at"].max()
    cut = end - timedelta(days=10)  # type: ignore[operator]
    bootstrap = broker.url.removeprefix("kafka://")
    replay(bootstrap, "bank.events", load_replay(log, None, cut), backfill=True)
    replay(bootstrap, "bank.events", load_replay(log, cut, None))


def _exposed(port: int, name: str) -> float:
    """A sample without labels from a worker's ``/metrics``, as Prometheus reads it."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not in the worker's /metrics")


def wait_for(check: Any, what: str, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def test_prometheus_scrapes_the_worker_and_the_score_drift_rule_fires_on_a_shift(
    broker: Broker, champion_dir: Path, tmp_path: Path
) -> None:
    worker = start_worker(broker, champion_dir, "drift-shift", settings=EVERY_BATCH)
    try:  # a Prometheus that cannot start leaves no worker behind
        prom = start_prometheus(tmp_path, [f"127.0.0.1:{worker.web_port}"])
    except BaseException:
        stop(worker.proc)
        raise
    try:
        stream_bank(broker, tmp_path, shift=0.8)
        wait_caught_up(broker, worker)
        stats = worker.stats()
        counts = stats["counts"]
        assert isinstance(counts, dict)
        # the metrics are there, and they say what the worker's own counters say. A scrape
        # can fall between a batch's consumption and its scores: wait for one after both.
        agreed = wait_for(
            lambda: (
                prom.value("sum(churn_events_consumed_total)") == counts["consumed"]
                and prom.value("sum(churn_scores_emitted_total)") == counts["scored"]
            ),
            "the consumed and scored counts in Prometheus",
        )
        assert agreed
        names = set(prom.get("/api/v1/label/__name__/values"))
        for name in (
            "churn_events_processed_total",
            "churn_consumer_lag",
            "churn_event_latency_seconds_bucket",
            "churn_score_churn_probability_bucket",
            "churn_model_info",
            "churn_state_customers",
            "churn_drift_psi",
        ):
            assert name in names
        assert prom.value("sum(churn_consumer_lag)") == 0
        psi = prom.value('max(churn_drift_psi{column="churn_probability"})')
        assert psi is not None
        assert psi > 0.25
        state = wait_for(
            lambda: prom.alert_state("ChurnScoreDrift") == "firing",
            "ChurnScoreDrift firing",
            timeout=300,
        )
        assert state
    finally:
        stop(prom.proc)
        stop(worker.proc)


def test_without_a_shift_the_score_psi_stays_below_watch_level(
    broker: Broker, champion_dir: Path, tmp_path: Path
) -> None:
    worker = start_worker(broker, champion_dir, "drift-none", settings=EVERY_BATCH)
    try:  # a Prometheus that cannot start leaves no worker behind
        prom = start_prometheus(tmp_path, [f"127.0.0.1:{worker.web_port}"])
    except BaseException:
        stop(worker.proc)
        raise
    try:
        stream_bank(broker, tmp_path, shift=0.0)
        wait_caught_up(broker, worker)
        window = wait_for(
            lambda: prom.value("sum(churn_drift_window_values)"), "a drift window in Prometheus"
        )
        assert window >= 200
        with urllib.request.urlopen(
            f"http://127.0.0.1:{worker.web_port}/drift/", timeout=10
        ) as resp:
            drift = json.loads(resp.read())
        by_column = {d["column"]: d for d in drift["drift"]}
        assert by_column["churn_probability"]["psi"] < 0.1
        psi = prom.value('max(churn_drift_psi{column="churn_probability"})')
        assert psi is not None
        assert psi < 0.1
        # the rule as evaluated on the final window: a scrape taken while the live days
        # still streamed (every 3 s) can hold a window just past the rule's floor of 200
        # scores, where the predicted value's PSI passed 0.25 in one run ("pending": the
        # rule's `for: 1m` is what keeps such a moment from firing)
        final = _exposed(worker.web_port, "churn_drift_window_values")
        wait_for(
            lambda: prom.value("sum(churn_drift_window_values)") == final,
            "Prometheus to scrape the final window",
        )
        time.sleep(2)  # a rule evaluation (every second) on that scrape
        assert prom.alert_state("ChurnScoreDrift") is None
        frame = pl.DataFrame(drift["drift"])
        assert frame.height == len(drift["columns"])
        # the same window as a page, and its newest day alone
        url = f"http://127.0.0.1:{worker.web_port}"
        page, day = tmp_path / "drift.html", tmp_path / "day.html"
        assert main(["drift-report", "--worker", url, "--out", str(page)]) == 0
        assert main(["drift-report", "--worker", url, "--window", "1d", "--out", str(day)]) == 0
        text = page.read_text()
        assert "<table>" in text
        assert text.count("data:image/png;base64,") == 12  # both scores, 10 features
        assert f"{by_column['churn_probability']['psi']:.4f}" in text
        assert "within the usual range" in text
        n_all = int(
            re.search(r"window of event time, (\d+) scores", text.replace("\n", " ")).group(1)
        )  # type: ignore[union-attr]
        n_day = int(re.search(r"(\d+) scores", day.read_text()).group(1))  # type: ignore[union-attr]
        assert 0 < n_day < n_all == by_column["churn_probability"]["n"]
    finally:
        stop(prom.proc)
        stop(worker.proc)
