"""Drift measures against scipy and hand-computed cases; metrics exposition."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from scipy import stats
from scipy.special import rel_entr

from monitoring import (
    NOTIFY_METRICS,
    SERVE_METRICS,
    WORKER_METRICS,
    BatchHistogram,
    DriftWindow,
    WorkerCollector,
    WorkerView,
    exposition,
    ks_binned,
    merge_snapshots,
    metric_names,
    psi,
    registry_of,
)
from training import reference_distribution

DAY_US = 86_400_000_000


def test_psi_matches_the_hand_computed_formula_and_the_symmetric_kl_divergence() -> None:
    e = np.array([0.1, 0.2, 0.3, 0.4])
    a = np.array([0.25, 0.25, 0.25, 0.25])
    by_hand = sum((ai - ei) * math.log(ai / ei) for ai, ei in zip(a, e, strict=True))
    assert psi(e, a) == pytest.approx(by_hand, rel=1e-12)
    # PSI is KL(a||e) + KL(e||a)
    assert psi(e, a) == pytest.approx(float(np.sum(rel_entr(a, e) + rel_entr(e, a))), rel=1e-12)
    # counts are normalised
    assert psi(e * 1000, a * 37) == pytest.approx(by_hand, rel=1e-12)
    assert psi(e, e) == 0.0
    # an empty bin is floored, so the index stays finite and large
    assert 0.5 < psi([0.5, 0.5, 0.0], [0.0, 0.5, 0.5]) < 20


def test_binned_ks_equals_scipy_on_binned_samples() -> None:
    rng = np.random.default_rng(3)
    ref = rng.normal(0, 1, 5_000)
    live = rng.normal(0.3, 1.2, 3_000)
    edges = np.quantile(ref, np.linspace(0, 1, 11)[1:-1])
    rb = np.searchsorted(edges, ref, side="left")
    lb = np.searchsorted(edges, live, side="left")
    ours = ks_binned(np.bincount(rb, minlength=10), np.bincount(lb, minlength=10))
    assert ours == pytest.approx(stats.ks_2samp(rb, lb).statistic, abs=1e-12)
    # on the raw values, the binned statistic is scipy's restricted to the edges
    assert ours <= stats.ks_2samp(ref, live).statistic + 1e-12
    assert ours > 0.1


def test_the_window_counts_values_into_the_reference_bins_and_measures_them() -> None:
    rng = np.random.default_rng(5)
    ref = rng.normal(0, 1, 20_000)
    reference = {"x": reference_distribution(ref), "p": reference_distribution(rng.random(20_000))}
    w = DriftWindow(reference, ["p", "x"], window_days=7)
    t = np.full(4_000, 100 * DAY_US)
    same = rng.normal(0, 1, 4_000)
    w.add(t, {"x": same, "p": rng.random(4_000)})
    drifts = {d.column: d for d in w.drift()}
    assert drifts["x"].psi < 0.01
    assert drifts["x"].n == 4_000
    assert drifts["x"].level == "stable"
    # psi equals the plain function on the same bins
    edges = reference["x"]["edges"]
    live = np.bincount(np.searchsorted(edges, same, side="left"), minlength=len(edges) + 1)
    expected = np.append(reference["x"]["shares"], 0.0)
    assert drifts["x"].psi == pytest.approx(psi(expected, np.append(live, 0)), rel=1e-9)
    # a shifted day: the window's PSI rises past the retraining threshold
    w.add(np.full(8_000, 101 * DAY_US), {"x": rng.normal(1.0, 1, 8_000), "p": rng.random(8_000)})
    drifts = {d.column: d for d in w.drift()}
    assert drifts["x"].psi > 0.25
    assert drifts["x"].level == "shifted"
    assert drifts["p"].psi < 0.01
    assert w.drift()[0].column == "x"  # worst first
    # missing values have their own bin
    w.add(np.full(10, 101 * DAY_US), {"x": np.full(10, np.nan), "p": rng.random(10)})
    assert w.counts()[w.columns.index("x")][-1] == 10


def test_each_value_goes_to_the_bin_its_column_s_edges_give_it() -> None:
    rng = np.random.default_rng(11)
    reference = {
        "many": reference_distribution(rng.normal(0, 1, 5_000)),
        "few": reference_distribution(np.repeat([0.0, 1.0, 2.0], 100)),
        "wide": reference_distribution(rng.lognormal(8, 2, 5_000)),
    }
    w = DriftWindow(reference, window_days=7)
    values = {}
    for name, ref in reference.items():
        edges = np.asarray(ref["edges"])
        x = rng.choice(np.concatenate([edges, rng.normal(0, 3, 50), edges * 10]), 600)
        infinite = -np.inf if name == "wide" else np.inf  # (both in one sum: NaN)
        x[:30] = rng.choice([np.nan, infinite, 0.0, -0.0], 30)
        values[name] = x
    w.add(np.full(600, 3 * DAY_US), values)
    for j, name in enumerate(w.columns):
        x, edges = values[name], np.asarray(reference[name]["edges"])
        bins = np.where(np.isnan(x), edges.size + 1, np.searchsorted(edges, x, side="left"))
        assert w.counts()[j].tolist() == np.bincount(bins, minlength=w.width).tolist()
        assert w._buckets[3][1][j] == np.where(np.isnan(x), 0.0, x).sum()


def test_old_buckets_leave_the_window_and_late_values_are_counted_not_kept() -> None:
    reference = {"x": reference_distribution(np.arange(100.0))}
    w = DriftWindow(reference, window_days=3)
    for day in range(10):
        w.add(np.full(5, day * DAY_US), {"x": np.full(5, float(day))})
    assert w.n == 15  # days 7, 8, 9
    w.add(np.full(4, 2 * DAY_US), {"x": np.zeros(4)})
    assert w.too_old == 4
    assert w.n == 15


def test_drift_memory_is_bounded_whatever_the_stream_length() -> None:
    rng = np.random.default_rng(1)
    reference = {f"f{i}": reference_distribution(rng.normal(0, 1, 2_000)) for i in range(80)}
    w = DriftWindow(reference, window_days=7)

    def feed(days: range) -> None:
        for day in days:
            t = day * DAY_US + rng.integers(0, DAY_US, 500)
            w.add(t, {k: rng.normal(0, 1, 500) for k in reference})

    feed(range(30))
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    feed(range(30, 400))
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(w._buckets) <= w.buckets_kept + 1
    assert after - base < 200_000  # 370 more days of scores: no growth beyond noise


def test_snapshots_of_two_workers_merge_into_the_counts_of_both() -> None:
    rng = np.random.default_rng(2)
    reference = {"x": reference_distribution(rng.normal(0, 1, 5_000))}
    a, b, both = (DriftWindow(reference) for _ in range(3))
    xa, xb = rng.normal(0, 1, 300), rng.normal(2, 1, 700)
    a.add(np.full(300, DAY_US), {"x": xa})
    b.add(np.full(700, DAY_US), {"x": xb})
    both.add(np.full(1_000, DAY_US), {"x": np.concatenate([xa, xb])})
    merged = merge_snapshots([a.snapshot(), b.snapshot()])
    assert merged["counts"] == both.snapshot()["counts"]
    assert merged["drift"][0]["psi"] == pytest.approx(both.drift()[0].psi)


def test_batch_histograms_match_prometheus_bucket_semantics() -> None:
    h = BatchHistogram((0.1, 0.5, 1.0))
    h.observe_many([0.1, 0.2, 0.5, 0.7, 2.0, float("nan")])
    assert h.buckets() == [("0.1", 1.0), ("0.5", 3.0), ("1.0", 4.0), ("+Inf", 5.0)]
    assert h.count == 5
    assert h.total == pytest.approx(3.5)


def _view(**over: object) -> WorkerView:
    h = BatchHistogram((0.5, 1.0))
    h.observe_many([0.2, 0.9])
    fields: dict[str, object] = {
        "counts": {"consumed": 10, "applied": 7, "duplicate": 1, "scored": 5},
        "dead": {"malformed_json": 2},
        "suppressed": {"cooldown": 3},
        "alerts_by_rule": {("churn_probability", "high"): 2},
        "model": lambda: ("churn-engine", "4"),
        "reloads": lambda: 1,
        "reload_failures": lambda: 0,
        "lag": lambda: {("bank.events", 3): 42},
        "state_customers": lambda: 9,
        "drift": lambda: ([("churn_probability", "score", 0.3, 0.2)], 5, 0),
        "last_event_s": lambda: 1.7e9,
        "last_processed_s": lambda: 1.8e9,
        "histograms": {"churn_score_churn_probability": ("probabilities", h)},
    }
    fields.update(over)
    return WorkerView(**fields)  # type: ignore[arg-type]


def test_the_worker_exposition_parses_and_carries_the_counts() -> None:
    reg = registry_of(WorkerCollector(_view()))
    text = exposition(reg).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    assert samples[("churn_events_consumed_total", ())] == 10
    assert samples[("churn_events_processed_total", (("outcome", "applied"),))] == 7
    assert samples[("churn_events_dead_lettered_total", (("reason", "malformed_json"),))] == 2
    assert samples[("churn_consumer_lag", (("partition", "3"), ("topic", "bank.events")))] == 42
    key = ("churn_model_info", (("name", "churn-engine"), ("version", "4")))
    assert samples[key] == 1
    assert samples[("churn_drift_psi", (("column", "churn_probability"), ("kind", "score")))] == 0.3
    assert samples[("churn_score_churn_probability_bucket", (("le", "0.5"),))] == 1
    assert samples[("churn_score_churn_probability_count", ())] == 2
    rule = (("rule", "churn_probability"), ("severity", "high"))
    assert samples[("churn_alerts_raised_total", rule)] == 2


def test_every_declared_worker_metric_is_exported_with_its_type() -> None:
    hists = {
        name: ("h", BatchHistogram((1.0,)))
        for name, kind in WORKER_METRICS.items()
        if kind == "histogram"
    }
    exported = metric_names(registry_of(WorkerCollector(_view(histograms=hists))))
    assert exported == WORKER_METRICS


MONITORING = Path(__file__).parent.parent / "monitoring"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def test_promtool_checks_the_alert_rules_and_passes_their_unit_tests() -> None:
    rules = MONITORING / "prometheus"
    for args in (["check", "rules", "rules.yml"], ["test", "rules", "rules_test.yml"]):
        done = subprocess.run(
            [PROMTOOL, *args], cwd=rules, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SUCCESS" in done.stdout


def _exported() -> set[str]:
    """Every sample name our processes export (histograms with their suffixes)."""
    names: set[str] = set()
    for declared in (WORKER_METRICS, NOTIFY_METRICS, SERVE_METRICS):
        for name, kind in declared.items():
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            elif kind == "info":
                names.add(f"{name}_info")
            else:
                names.add(name)
    return names


def _queries() -> list[tuple[str, str]]:
    dashboard = json.loads((MONITORING / "grafana" / "churn-engine.json").read_text())
    out = [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    rules = yaml.safe_load((MONITORING / "prometheus" / "rules.yml").read_text())
    out += [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]
    return out


def test_every_dashboard_and_rule_query_names_metrics_the_code_exports() -> None:
    exported = _exported()
    queries = _queries()
    assert len(queries) > 30
    unknown = [
        (title, name)
        for title, expr in queries
        for name in re.findall(r"\bchurn_[a-z0-9_]+", expr)
        if name not in exported
    ]
    assert unknown == []
    # and the dashboard shows what operators asked for
    joined = " ".join(expr for _, expr in queries)
    for needed in ("churn_consumer_lag", "churn_drift_psi", "churn_event_latency_seconds_bucket"):
        assert needed in joined


def test_the_notifier_exports_its_declared_metrics() -> None:
    from serving._notify import Notifier, RoutingConfig
    from serving._outbox import NotifyCollector, NotifyCounters

    counts = NotifyCounters(notifier=Notifier(RoutingConfig()))
    counts.sent["webhook"] += 2
    counts.failed["email"] += 1
    counts.notifier.suppressed["silenced"] += 3  # type: ignore[union-attr]
    reg = registry_of(NotifyCollector(counts))
    assert metric_names(reg) == NOTIFY_METRICS
    text = exposition(reg).decode()
    assert 'churn_digests_delivered_total{channel="webhook"} 2.0' in text
    assert 'churn_digests_failed_total{channel="email"} 1.0' in text
    assert 'churn_alerts_held_total{reason="silenced"} 3.0' in text


def test_evaluate_live_judges_emitted_scores_once_churn_matured(
    bank: Path, champion_dir: Path, tmp_path: Path
) -> None:
    """Scores 'emitted' at month ends of 2025 for the simulated bank (offline features,
    the champion's probabilities), judged against what its log says happened."""
    from datetime import UTC, datetime

    import polars as pl
    from prometheus_client.parser import text_string_to_metric_families

    from churn._cli import main
    from features import offline_features, scan_log
    from training import Store, load_bundle

    bundle, version = load_bundle(Store.resolve(champion_dir, environ={}), "champion")
    customers = (
        scan_log(bank).select("customer_id").unique().sort("customer_id").head(800).collect()
    )
    months = [datetime(2025, m, 28, 12, tzinfo=UTC) for m in range(3, 13)]
    snaps = customers.join(
        pl.DataFrame({"as_of": months}, schema={"as_of": pl.Datetime("us", "UTC")}), how="cross"
    )
    feats = offline_features(scan_log(bank), snaps)
    x = np.column_stack([feats[n].to_numpy().astype(np.float64) for n in bundle.features])
    p, _ = bundle.predict(x)
    lines = [
        json.dumps(
            {
                "customer_id": c,
                "as_of": t.isoformat(),
                "churn_probability": float(pi),
                "model_version": version,
            }
        )
        for c, t, pi in zip(feats["customer_id"], feats["as_of"], p, strict=True)
    ]
    # an earlier score in the same month counts for nothing: the month's last one does
    first = json.loads(lines[0])
    first.update(as_of="2025-03-02T00:00:00+00:00", churn_probability=0.999)
    scores = tmp_path / "scores.jsonl"
    scores.write_text("\n".join([json.dumps(first), *lines]) + "\n")
    out, prom = tmp_path / "live.json", tmp_path / "live.prom"
    args = ["--events", str(bank), "--scores", str(scores), "--out", str(out), "--prom", str(prom)]
    code = main(["evaluate-live", *args])
    assert code == 0
    rows = {r["month"]: r for r in json.loads(out.read_text())}
    assert sorted(rows) == [f"2025-{m:02d}" for m in range(3, 13)]
    assert {r["scores"] for r in rows.values()} == {800}
    # the data end 2026-01-01: a 90-day horizon has passed for the scores up to September
    assert [m for m, r in rows.items() if r["matured"]] == [f"2025-{m:02d}" for m in range(3, 10)]
    for m in range(3, 10):
        r = rows[f"2025-{m:02d}"]
        assert r["roc_auc"] > 0.65
        assert r["lift_top10"] > 1.5
        assert abs(r["expected_churn_rate"] - r["observed_churn_rate"]) < 0.05
        assert r["labelled"] <= r["scores"]
    for m in (10, 11, 12):
        early = rows[f"2025-{m:02d}"]
        assert early["roc_auc"] is None
        assert early["observed_churn_rate"] is not None
        assert early["observed_churn_rate"] <= early["expected_churn_rate"] + 0.05
    # December has seen the fewest days of its horizon: the least churn so far
    assert rows["2025-12"]["observed_churn_rate"] <= rows["2025-10"]["observed_churn_rate"]
    gauges = {
        (s.name, s.labels["month"]): s.value
        for fam in text_string_to_metric_families(prom.read_text())
        for s in fam.samples
    }
    assert gauges[("churn_live_roc_auc", "2025-05")] == pytest.approx(rows["2025-05"]["roc_auc"])
    assert ("churn_live_roc_auc", "2025-11") not in gauges


def test_the_newest_buckets_alone_give_their_own_counts_and_means() -> None:
    reference = {"x": reference_distribution(np.arange(100.0))}
    w = DriftWindow(reference, window_days=7)
    w.add(np.full(10, 1 * DAY_US), {"x": np.full(10, 10.0)})
    w.add(np.full(4, 2 * DAY_US), {"x": np.full(4, 90.0)})
    newest = w.drift(last_buckets=1)[0]
    assert newest.n == 4
    assert newest.live_mean == pytest.approx(90.0)
    assert w.drift()[0].live_mean == pytest.approx((100 + 360) / 14)
    assert w.snapshot(last_buckets=1)["drift"][0]["n"] == 4


def test_the_window_counts_each_column_and_bucket_as_one_bincount_per_column_would() -> None:
    """Columns of different bin counts, missing values, several event-time buckets in
    one batch: the counts are those of a bincount per column and bucket."""
    rng = np.random.default_rng(11)
    reference = {
        "wide": reference_distribution(rng.normal(0, 1, 5_000)),
        "narrow": reference_distribution(rng.integers(0, 3, 5_000).astype(float)),
        "p": reference_distribution(rng.random(5_000)),
    }
    columns = ["wide", "narrow", "p"]
    w = DriftWindow(reference, columns, window_days=7)
    n = 3_000
    t = (100 * DAY_US + rng.integers(0, 3 * DAY_US, n)).astype(np.int64)  # 3 buckets
    values = {
        "wide": np.where(rng.random(n) < 0.1, np.nan, rng.normal(0.5, 2, n)),
        "narrow": np.where(rng.random(n) < 0.3, np.nan, rng.integers(-1, 5, n).astype(float)),
        "p": rng.random(n),
    }
    w.add(t[: n // 2], {k: v[: n // 2] for k, v in values.items()})
    w.add(t[n // 2 :], {k: v[n // 2 :] for k, v in values.items()})
    expected = np.zeros((len(columns), w.width), np.int64)
    for j, (name, edges) in enumerate(zip(w.columns, w.edges, strict=True)):
        x = values[name]
        bins = np.where(np.isnan(x), len(edges) + 1, np.searchsorted(edges, x, side="left"))
        expected[j] = np.bincount(bins, minlength=w.width)[: w.width]
    assert len({len(e) for e in w.edges}) > 1  # the columns' bins differ
    assert (w.counts() == expected).all()
    assert expected[:, -1].sum() > 0  # missing values counted
