"""Labels and point-in-time training sets."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from churn import main
from features import DataError, scan_log
from features._labels import LabelConfig
from features._trainset import build_training_set
from features.errors import ConfigError
from simulator import SimConfig, truth_dir_for, write_parquet


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bank") / "events.parquet"
    write_parquet(SimConfig(customers=500, months=24, seed=17), out, workers=1)
    return out


def test_churn_labels_match_the_simulated_truth(bank: Path) -> None:
    ts = build_training_set(scan_log(bank), date(2024, 4, 1), date(2025, 9, 1), 30)
    truth = pl.read_parquet(truth_dir_for(bank) / "customers.parquet").select(
        "customer_id", "churned_on"
    )
    rows = ts.frame.select("customer_id", "as_of", "churn").join(truth, on="customer_id")
    as_of_day = rows["as_of"].dt.date()
    expected = (
        rows["churned_on"].is_not_null()
        & (rows["churned_on"] >= as_of_day)
        & (rows["churned_on"] < as_of_day + timedelta(days=90))
    )
    assert (rows["churn"].cast(pl.Boolean) == expected).all()
    assert 0.01 < rows["churn"].mean() < 0.15  # type: ignore[operator]
    # customers already gone at as-of are never labelled
    gone = rows.filter(pl.col("churned_on") < pl.col("as_of").dt.date())
    assert gone.height == 0
    assert ts.counts["already_churned"] > 0


def test_horizon_past_the_end_is_censored_not_negative(bank: Path) -> None:
    ts = build_training_set(scan_log(bank), date(2025, 6, 1), date(2025, 12, 1), 30)
    assert ts.counts["censored"] > 0
    latest = ts.frame["as_of"].max()
    assert latest is not None
    assert latest + timedelta(days=90) <= datetime(2026, 1, 1, tzinfo=UTC)


def test_inactivity_labels_follow_the_definition(bank: Path) -> None:
    cfg = LabelConfig(churn_definition="inactivity", inactivity_days=45, horizon_days=60)
    ts = build_training_set(scan_log(bank), date(2024, 9, 1), date(2025, 6, 1), 60, cfg)
    events = pl.read_parquet(bank)
    initiated = events.filter(
        pl.col("event_type").is_in(
            [
                "digital_login",
                "card_payment",
                "transfer_out",
                "cash_withdrawal",
                "branch_visit",
                "complaint_filed",
                "survey_answered",
                "product_opened",
            ]
        )
        & (pl.col("channel").fill_null("") != "standing_order")
    )
    acts = {
        cid: np.sort(g["occurred_at"].dt.epoch("us").to_numpy())
        for (cid,), g in initiated.group_by("customer_id")
    }
    end_us = int(events["occurred_at"].dt.epoch("us").max())  # type: ignore[arg-type]
    gap, horizon = 45 * 86_400_000_000, 60 * 86_400_000_000
    sample = ts.frame.sample(300, seed=1)
    for cid, as_of, churn in sample.select("customer_id", "as_of", "churn").iter_rows():
        times = acts[cid]
        a = int(as_of.timestamp() * 1_000_000)
        nxt = np.r_[times[1:], end_us + gap + 1]
        onsets = times[(nxt - times) > gap] + gap
        assert int(((onsets > a) & (onsets <= a + horizon)).any()) == churn
        assert a - times[times <= a].max() <= gap  # not dormant already


def test_features_are_point_in_time(bank: Path) -> None:
    """Features at as-of do not change when everything after as-of is removed."""
    as_of = datetime(2025, 3, 1, tzinfo=UTC)
    full = build_training_set(
        scan_log(bank), as_of.date(), as_of.date(), 30, LabelConfig(horizon_days=30)
    )
    past = pl.read_parquet(bank).filter(pl.col("occurred_at") <= as_of)
    tail = pl.read_parquet(bank).filter(
        (pl.col("occurred_at") > as_of) & (pl.col("occurred_at") <= as_of + timedelta(days=40))
    )
    # the labels need the future; the features must not: compute both and compare features only
    cut = build_training_set(
        pl.concat([past, tail]).lazy(), as_of.date(), as_of.date(), 30, LabelConfig(horizon_days=30)
    )
    names = [c for c in full.frame.columns if c not in ("churn", "value_minor")]
    a = full.frame.select(names).sort("customer_id")
    b = cut.frame.select(names).sort("customer_id")
    assert a.height == b.height > 300
    assert a.equals(b)


def test_value_label_is_null_when_its_period_is_not_over(bank: Path) -> None:
    ts = build_training_set(scan_log(bank), date(2024, 6, 1), date(2025, 6, 1), 60)
    known = ts.frame.filter(pl.col("value_minor").is_not_null())
    assert known["as_of"].max() <= datetime(2025, 1, 1, tzinfo=UTC)  # type: ignore[operator]
    assert known["value_minor"].median() > 0  # type: ignore[operator]


@pytest.mark.parametrize(
    ("start", "end", "match"),
    [
        (date(2025, 1, 1), date(2024, 1, 1), "the period is empty"),
        (date(1950, 1, 1), date(1950, 6, 1), "no customer is known"),
        (date(2025, 11, 1), date(2025, 12, 1), "no snapshot has a full 90-day horizon"),
    ],
)
def test_unusable_periods_fail_with_one_clear_message(
    bank: Path, start: date, end: date, match: str
) -> None:
    with pytest.raises(DataError, match=match):
        build_training_set(scan_log(bank), start, end, 30)


def test_missing_columns_and_bad_label_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    pl.DataFrame({"customer_id": ["C1"], "amount": [1]}).write_parquet(bad)
    with pytest.raises(DataError, match="lacks columns"):
        scan_log(bad)
    with pytest.raises(ConfigError, match="horizon_days"):
        LabelConfig(horizon_days=0)


def test_cli_builds_a_training_set_and_checks_parity(
    bank: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "train.parquet"
    code = main(
        [
            "features",
            "build",
            "--events",
            str(bank),
            "--start",
            "2024-06-01",
            "--end",
            "2025-06-01",
            "--every",
            "60d",
            "--horizon",
            "90d",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    frame = pl.read_parquet(out)
    assert {"customer_id", "as_of", "churn", "value_minor", "logins_30d"} <= set(frame.columns)
    assert "churn rate" in capsys.readouterr().out
    assert (
        main(["features", "parity", "--events", str(bank), "--sample", "40", "--per-customer", "3"])
        == 0
    )
    assert "total mismatches: 0" in capsys.readouterr().out
    assert (
        main(
            [
                "features",
                "build",
                "--events",
                str(tmp_path / "none"),
                "--start",
                "2024-01-01",
                "--end",
                "2024-02-01",
                "--out",
                str(out),
            ]
        )
        == 2
    )


def test_chunks_and_worker_processes_do_not_change_the_result(bank: Path) -> None:
    one = build_training_set(scan_log(bank), date(2024, 9, 1), date(2025, 3, 1), 60, workers=1)
    many = build_training_set(
        scan_log(bank), date(2024, 9, 1), date(2025, 3, 1), 60, chunk_customers=150, workers=2
    )
    assert one.frame.equals(many.frame)
    assert one.counts == many.counts
