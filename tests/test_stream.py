"""The streaming worker on the real broker: parity, dirty input, crashes, scale-out, reload."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from features import CustomerState, clean_log, offline_features, scan_log
from serving._notify import Notifier, RoutingConfig
from simulator import SimConfig, truth_dir_for, write_parquet
from stream import (
    Broker,
    consumer_lag,
    load_replay,
    read_placed,
    read_records,
    read_topic,
    replay,
)
from tests.conftest import BIN, NOW, fast_config, free_port, stop
from training import Store, load_bundle

pytestmark = pytest.mark.integration

CUT = datetime(2024, 11, 15, tzinfo=UTC)  # history before: backfill; after: live


@pytest.fixture(scope="module")
def stream_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stream") / "events.parquet"
    write_parquet(SimConfig(customers=150, months=12, seed=5, dirty_rate=0.05), out, workers=1)
    return out


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(free_port(), log=tmp_path / "broker.log") as b:
        yield b


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    web_port: int
    log: Path

    def stats(self) -> dict[str, object]:
        return self._get("/stats/")

    def consumer(self) -> dict[str, object]:
        """The worker's view of its source partitions (``/debug/consumer/``)."""
        return self._get("/debug/consumer/")

    def partitions(self) -> set[int]:
        return {int(p) for p in self.consumer()["partitions"]}  # type: ignore[attr-defined]

    def _get(self, path: str) -> dict[str, object]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}{path}", timeout=5) as resp:
            return dict(json.loads(resp.read()))


TEST_POLICY = """\
version: 1
cooldown: 7d
rules:
  - {name: high_risk, kind: churn_probability, threshold: 0.05, severity: high}
  - {name: turning_away, kind: lifecycle, to: [declining, dormant], severity: medium}
  - {name: big_loss, kind: value_at_risk, min_minor: 100000, severity: critical}
"""


def start_worker(
    broker: Broker,
    data_dir: Path,
    name: str,
    poll: float = 30.0,
    policy: str = "",
    settings: dict[str, str] | None = None,
) -> Worker:
    web_port = free_port()
    log = data_dir / f"{name}.log"
    policy_file = ""
    if policy:
        (data_dir / f"{name}-policy.yaml").write_text(policy)
        policy_file = str(data_dir / f"{name}-policy.yaml")
    env = {
        **os.environ,
        "CHURN_ALERT_POLICY": policy_file,
        "CHURN_KAFKA_URL": broker.url,
        "CHURN_DATA_DIR": str(data_dir),
        "CHURN_WEB_PORT": str(web_port),
        "CHURN_MODEL_POLL_SECONDS": str(poll),
        "CHURN_PARTITIONS": "8",
        # faust's own settings, from the environment: a killed worker's partitions move
        # after 10 s without its heartbeat, not faust's default 60 s
        "BROKER_SESSION_TIMEOUT": "10",
        "BROKER_HEARTBEAT_INTERVAL": "1",
        **(settings or {}),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    # each worker keeps its own faust data dir
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "churn"), "worker", "--data-dir", str(data_dir)],
            env={**env, "CHURN_DATA_DIR": str(data_dir)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=data_dir,
        )
    w = Worker(proc, web_port, log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(log.read_text()[-3000:])
        try:
            w.stats()
            return w
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"worker did not start:\n{log.read_text()[-3000:]}")


def wait_caught_up(broker: Broker, *workers: Worker, stalled_after: float = 240) -> None:
    """Until the group's committed offsets reach the end of every partition.

    Fails when the lag has not gone down for ``stalled_after`` seconds (a stuck
    worker, not a slow one), with each worker's view of its partitions."""
    bootstrap = broker.url.removeprefix("kafka://")
    best, since = None, time.monotonic()
    while True:
        lag = consumer_lag(bootstrap, "churn-engine", "bank.events")
        total = sum(lag.values()) if lag else None
        if total == 0:
            return
        if total is not None and (best is None or total < best):
            best, since = total, time.monotonic()
        if time.monotonic() - since > stalled_after:
            break
        time.sleep(2)
    raise AssertionError(f"the lag stopped going down at {lag}\n" + views_of(*workers))


def views_of(*workers: Worker) -> str:
    """Each live worker's view of its partitions, and the tail of every worker's log."""
    views = []
    for w in workers:
        if w.proc.poll() is None:
            views.append(json.dumps(w.consumer()))
        views.append(w.log.read_text()[-4000:])
    return "\n".join(views)


def wait_partitions_split(*workers: Worker, partitions: int = 8, within: float = 180) -> None:
    """Until every worker holds some of the source partitions and together all of
    them, once each: the group has settled, so a log sent now reaches every worker."""
    deadline = time.monotonic() + within
    while True:
        held = [w.partitions() for w in workers]
        if all(held) and sorted(p for h in held for p in h) == list(range(partitions)):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the partitions were not shared: {held}\n" + views_of(*workers))
        time.sleep(0.5)


def send(
    broker: Broker, log: Path, since: datetime | None, until: datetime | None, **kw: object
) -> int:
    frame = load_replay(log, since, until)
    return replay(broker.url.removeprefix("kafka://"), "bank.events", frame, **kw).sent  # type: ignore[arg-type]


def final_states(broker: Broker) -> dict[str, CustomerState]:
    """Each customer's latest state, read back from the table's changelog topic."""
    out: dict[str, CustomerState] = {}
    for key, value in read_topic(
        broker.url.removeprefix("kafka://"), "churn-engine-customer-state-changelog"
    ):
        assert key is not None
        out[key.decode()] = CustomerState.from_bytes(value)
    return out


def assert_states_match_offline(states: dict[str, CustomerState], log: Path) -> None:
    snaps = pl.DataFrame(
        {
            "customer_id": list(states),
            "as_of": [datetime.fromtimestamp(s.max_t / 1e6, tz=UTC) for s in states.values()],  # type: ignore[operator]
        },
        schema={"customer_id": pl.String, "as_of": pl.Datetime("us", "UTC")},
    )
    offline = offline_features(scan_log(log), snaps)
    expected_customers = set(
        clean_log(scan_log(log)).select("customer_id").unique().collect()["customer_id"]
    )
    assert set(states) == expected_customers
    rows = {r["customer_id"]: r for r in offline.iter_rows(named=True)}
    mismatches = []
    for cid, state in states.items():
        online = state.features(state.max_t)  # type: ignore[arg-type]
        for name, value in online.items():
            other = rows[cid][name]
            same = (math.isnan(value) and (other is None or math.isnan(other))) or value == other
            if not same:
                mismatches.append((cid, name, value, other))
    assert mismatches == [], f"{len(mismatches)} features differ: {mismatches[:60]}"


def test_replay_sends_every_record_once_on_its_key_s_partition_in_order(
    broker: Broker, stream_log: Path
) -> None:
    """Paced and unpaced, with and without the backfill header: each record of the
    log (malformed ones with their bytes) once, a key's records on the partition the
    Java client picks for it, in the log's order."""
    from aiokafka.partitioner import murmur2

    from features.events import log_records

    frame = load_replay(stream_log).head(5_000)
    # malformed records without a customer id, so without a key (anywhere will do)
    keyless = pl.col("raw").is_not_null() & (pl.int_range(pl.len()) % 3 == 0)
    frame = frame.with_columns(
        pl.when(keyless).then(None).otherwise(pl.col("customer_id")).alias("customer_id")
    )
    bootstrap = broker.url.removeprefix("kafka://")
    assert replay(bootstrap, "bank.events", frame.head(3_000), backfill=True).sent == 3_000
    assert replay(bootstrap, "bank.events", frame.slice(3_000), rate=20_000).sent == 2_000
    placed = [
        (p, k, v, ("churn-backfill", b"1") in headers)
        for p, k, v, headers in read_placed(bootstrap, "bank.events")
    ]
    sent = [
        (key.encode() if key else None, value, i < 3_000)
        for i, (key, value) in enumerate(log_records(frame))
    ]
    assert Counter((k, v, b) for _, k, v, b in placed) == Counter(sent)
    assert any(k is None for k, _, _ in sent)  # the dirty log has records without a key
    for p, key, _, _ in placed:
        if key is not None:
            assert p == (murmur2(key) & 0x7FFFFFFF) % 8, key
    in_log: dict[bytes, list[bytes]] = {}
    for key, value, _ in sent:
        if key is not None:
            in_log.setdefault(key, []).append(value)
    on_topic: dict[bytes, list[bytes]] = {}
    for _, key, value, _ in placed:
        if key is not None:
            on_topic.setdefault(key, []).append(value)
    assert on_topic == in_log


def test_live_scores_equal_batch_scores_and_dirty_input_is_accounted(
    broker: Broker, stream_log: Path, champion_dir: Path, tmp_path: Path
) -> None:
    # the whole log is on the broker before the worker starts: the worker reads its live
    # part seconds after it was produced (behind), and scores in catch-up mode
    sent = send(broker, stream_log, None, CUT, backfill=True)
    sent += send(broker, stream_log, CUT, None)
    worker = start_worker(broker, champion_dir, "parity", policy=TEST_POLICY)
    try:
        wait_caught_up(broker, worker)
        stats = worker.stats()
    finally:
        stop(worker.proc)
    counts = Counter(stats["counts"])  # type: ignore[arg-type]
    dead = Counter(stats["dead_lettered"])  # type: ignore[arg-type]
    # everything is accounted for, nothing dropped silently
    assert counts["consumed"] == sent
    assert counts["score_failures"] == 0
    # behind, a customer touched by several micro-batches before a flush is scored once
    assert counts["coalesced"] > 0
    assert counts["scored"] + counts["coalesced"] <= counts["applied"]
    assert counts["consumed"] == counts["applied"] + counts["duplicate"] + counts["too_late"] + sum(
        dead.values()
    )

    bootstrap = broker.url.removeprefix("kafka://")
    # every malformed record is in the dead-letter topic with the right reason and its bytes
    truth = pl.read_parquet(truth_dir_for(stream_log) / "dirty.parquet").filter(
        pl.col("reason").is_not_null()
    )
    letters = [json.loads(v) for _, v in read_topic(bootstrap, "bank.events.dlq")]
    assert Counter(d["reason"] for d in letters) == Counter(truth["reason"].to_list())
    import base64

    assert {base64.b64decode(d["original_base64"]) for d in letters} == set(truth["raw"].to_list())
    assert all({"topic", "partition", "offset"} <= set(d) for d in letters)

    # duplicates applied once and late events in the right windows: state == offline
    assert_states_match_offline(final_states(broker), stream_log)

    # each customer's last live score equals batch scoring at the same as-of
    last: dict[str, dict[str, object]] = {}
    for key, value in read_topic(bootstrap, "customer.scores"):
        last[key.decode()] = json.loads(value)  # type: ignore[union-attr]
    assert len(last) > 50
    bundle, version = load_bundle(Store.resolve(champion_dir, environ={}), "champion")
    snaps = pl.DataFrame(
        {
            "customer_id": list(last),
            "as_of": [datetime.fromisoformat(str(s["as_of"])) for s in last.values()],
        },
        schema={"customer_id": pl.String, "as_of": pl.Datetime("us", "UTC")},
    )
    offline = offline_features(scan_log(stream_log), snaps)
    p, v = bundle.predict(offline.select(bundle.features).to_numpy().astype(np.float64))
    live_p = np.array(
        [last[c]["churn_probability"] for c in offline["customer_id"]], dtype=np.float64
    )
    live_v = np.array(
        [last[c]["predicted_value_minor"] for c in offline["customer_id"]], dtype=np.float64
    )
    np.testing.assert_allclose(live_p, p, rtol=0, atol=1e-6)
    np.testing.assert_allclose(live_v, v, rtol=1e-6, atol=1e-6)
    assert {s["model_version"] for s in last.values()} == {version}
    assert {s["lifecycle_stage"] for s in last.values()} <= {
        "new",
        "growing",
        "mature",
        "declining",
        "dormant",
    }
    assert_alerts_are_routed_explained_and_cooled(bootstrap, stream_log)


def assert_alerts_are_routed_explained_and_cooled(bootstrap: str, log: Path) -> None:
    alerts = [json.loads(v) for _, v in read_topic(bootstrap, "manager.alerts")]
    assert len(alerts) > 20
    scores = {
        (s["customer_id"], s["as_of"]): s
        for s in (json.loads(v) for _, v in read_topic(bootstrap, "customer.scores"))
    }
    # each alert goes to the customer's manager at the time (from the event log)
    managers = (
        clean_log(scan_log(log))
        .filter(pl.col("manager_id").is_not_null())
        .select("customer_id", "occurred_at", "manager_id")
        .sort("customer_id", "occurred_at", "manager_id")
        .collect()
    )
    history: dict[str, list[tuple[datetime, str]]] = {}
    for cid, t, m in managers.iter_rows():
        history.setdefault(cid, []).append((t, m))
    fired: dict[tuple[str, str], list[datetime]] = {}
    for a in alerts:
        at = datetime.fromisoformat(a["as_of"])
        expected = [m for t, m in history[a["customer_id"]] if t <= at][-1]
        assert a["manager_id"] == expected, a
        score = scores[(a["customer_id"], a["as_of"])]  # raised from an emitted score
        assert a["churn_probability"] == score["churn_probability"]
        assert a["predicted_value_minor"] > 0  # no retention alert without value
        assert a["value_at_risk_minor"] == pytest.approx(
            a["churn_probability"] * a["predicted_value_minor"]
        )
        assert 1 <= len(a["reasons"]) <= 3
        assert all(r["en"] and r["zh"] and r["weight"] > 0 for r in a["reasons"])
        assert a["action"]
        for rule in a["rules"]:
            fired.setdefault((a["customer_id"], rule), []).append(at)
    # the notifier, folding alerts and the worker's reassignments in record order,
    # holds each open alert for the customer's final manager (a reassignment moves it)
    records = sorted(
        [(ts, "a", json.loads(v)) for _, v, ts in read_records(bootstrap, "manager.alerts")]
        + [(ts, "m", json.loads(v)) for _, v, ts in read_records(bootstrap, "manager.actions")],
        key=lambda r: r[0],
    )
    routing = RoutingConfig(
        group_wait=timedelta(seconds=2), group_interval=timedelta(seconds=5), daily_cap=1000
    )
    notifier = Notifier(routing)
    # one customer is silenced ("do not contact") before anything arrives
    silenced = alerts[0]["customer_id"]
    start = datetime.fromtimestamp(records[0][0] / 1000, tz=UTC)
    until = (start + timedelta(days=1)).isoformat()
    notifier.on_action(
        {"kind": "silence", "scope": "customer", "target": silenced, "until": until}, start
    )
    digests = []
    for ts, kind, value in records:
        at = datetime.fromtimestamp(ts / 1000, tz=UTC)
        digests += notifier.due(at)
        if kind == "a":
            notifier.on_alert(value, at)
        else:
            notifier.on_action(value, at)
    digests += notifier.due(at + timedelta(minutes=1))
    final = {cid: h[-1][1] for cid, h in history.items()}
    for cid, item in notifier.open.items():
        assert item.recipient == final[cid], (cid, item.recipient, final[cid])
    assert any(kind == "m" for _, kind, _ in records)  # live reassignments were published
    # digests: one recipient each, spaced by the group interval, the silenced customer never
    assert digests
    last: dict[str, datetime] = {}
    for d in digests:
        assert all((a["manager_id"] or f"branch:{a['branch_id']}") == d.recipient for a in d.alerts)
        assert all(a["customer_id"] != silenced for a in d.alerts)
        if d.recipient in last:
            assert d.at - last[d.recipient] >= routing.group_interval
        last[d.recipient] = d.at
    assert notifier.suppressed["silenced"] >= 1
    # inhibition: where the critical rule fired, the lower ones were held back
    critical = [a for a in alerts if "big_loss" in a["rules"]]
    assert critical
    assert all(a["rules"] == ["big_loss"] and a["severity"] == "critical" for a in critical)
    # a customer alerts at most once per cooldown and rule
    for times in fired.values():
        times.sort()
        assert all(b - a >= timedelta(days=7) for a, b in itertools.pairwise(times)), times


def test_a_killed_worker_restarts_without_losing_or_double_counting(
    broker: Broker, stream_log: Path, champion_dir: Path
) -> None:
    worker = start_worker(broker, champion_dir, "crash")
    try:
        sent = send(broker, stream_log, None, None, backfill=True)
        deadline = time.monotonic() + 300
        while int(worker.stats()["counts"].get("consumed", 0)) < sent // 3:  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            time.sleep(0.3)
        os.killpg(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait()
    finally:
        stop(worker.proc)
    again = start_worker(broker, champion_dir, "crash-restarted")
    try:
        wait_caught_up(broker, again)
        stats = again.stats()
    finally:
        stop(again.proc)
    assert_accounted(stats)
    assert_states_match_offline(final_states(broker), stream_log)


def assert_accounted(stats: dict[str, object]) -> None:
    """consumed = applied + duplicates + dead-lettered: nothing dropped silently."""
    counts = Counter(stats["counts"])  # type: ignore[arg-type]
    dead = sum(Counter(stats["dead_lettered"]).values())  # type: ignore[arg-type]
    assert counts["consumed"] > 0
    assert counts["consumed"] == counts["applied"] + counts["duplicate"] + dead
    # the span of its work (what the throughput benchmarks divide by), in order
    work: dict[str, float] = stats["work"]  # type: ignore[assignment]
    assert work["first_batch"] <= work["last_batch"]
    assert work["first_batch"] <= work["flush_began"] <= work["last_flush"]


def test_two_workers_share_partitions_and_the_survivor_takes_over(
    broker: Broker, stream_log: Path, champion_dir: Path, tmp_path: Path
) -> None:
    second_dir = tmp_path / "second"
    second_dir.mkdir()
    # the second worker reads the same registry through the same store
    (second_dir / "mlflow").symlink_to(champion_dir / "mlflow")
    a = start_worker(broker, champion_dir, "scale-a")
    b = start_worker(broker, second_dir, "scale-b")
    try:
        # the log (44,001 records) drains in seconds: sent before the second
        # worker has joined the group, all of it could go to the first
        wait_partitions_split(a, b)
        send(broker, stream_log, None, None, backfill=True)
        deadline = time.monotonic() + 300
        while int(b.stats()["counts"].get("consumed", 0)) < 1000:  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the second worker read too little\n" + views_of(
                a, b
            )
            time.sleep(0.5)
        os.killpg(b.proc.pid, signal.SIGKILL)
        b.proc.wait()
        wait_caught_up(broker, a)
        # records read again after the rebalance are duplicates, recognised and counted
        assert_accounted(a.stats())
    finally:
        stop(a.proc)
        stop(b.proc)
    assert_states_match_offline(final_states(broker), stream_log)


def test_a_promoted_model_is_picked_up_while_events_flow(
    broker: Broker, stream_log: Path, champion_dir: Path, tmp_path: Path
) -> None:
    from training import promote, register, train_models

    store_dir = tmp_path / "reload"
    store_dir.mkdir()
    import shutil

    shutil.copytree(champion_dir / "mlflow", store_dir / "mlflow")
    store = Store.resolve(store_dir, environ={})
    _, before = load_bundle(store, "champion")
    worker = start_worker(broker, store_dir, "reload", poll=2.0)
    try:
        send(broker, stream_log, None, CUT - timedelta(days=60), backfill=True)
        frame = load_replay(stream_log, CUT - timedelta(days=60), None)
        # the live feed (about 33 s at 400/s) starts once the worker has the champion and
        # the history: a feed that began with the worker would be mostly read as a
        # backlog, and could be over before the promotion (a faster worker catches up)
        deadline = time.monotonic() + 120
        while worker.stats()["model_version"] != before:
            assert time.monotonic() < deadline, "the first champion was not loaded"
            time.sleep(0.5)
        wait_caught_up(broker, worker)
        import threading

        feeder = threading.Thread(
            target=replay,
            args=(broker.url.removeprefix("kafka://"), "bank.events", frame),
            kwargs={"rate": 400.0},
        )
        feeder.start()
        deadline = time.monotonic() + 120
        while worker.stats()["model_version"] != before or not worker.stats()["counts"].get(
            "scored"
        ):  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the first champion was not loaded"
            time.sleep(0.5)
        train_set = pl.read_parquet(champion_dir / "train.parquet")
        import dataclasses

        newer = train_models(
            train_set,
            __import__("features").LabelConfig(),
            dataclasses.replace(fast_config(), seed=99),
            now=NOW,
        )
        version, _ = register(store, newer)
        assert promote(store, tolerance=1.0, who="test", now=NOW).promoted
        promoted_at = time.monotonic()
        feeder.join()
        wait_caught_up(broker, worker)
        stats = worker.stats()
    finally:
        stop(worker.proc)
    assert stats["model_version"] == version
    assert stats["reloads"] == 1
    # per customer, scores never go back to the old version once the new one is in use
    seen: dict[str, list[str]] = {}
    for key, value in read_topic(broker.url.removeprefix("kafka://"), "customer.scores"):
        seen.setdefault(key.decode(), []).append(json.loads(value)["model_version"])  # type: ignore[union-attr]
    versions = Counter(v for vs in seen.values() for v in vs)
    assert set(versions) == {before, version}
    for vs in seen.values():
        switched = [i for i, v in enumerate(vs) if v == version]
        if switched:
            assert all(v == version for v in vs[switched[0] :])
    assert time.monotonic() - promoted_at < 400
    counts = Counter(stats["counts"])  # type: ignore[arg-type]
    assert counts["scored"] == sum(versions.values())
