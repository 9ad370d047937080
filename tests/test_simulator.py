"""The simulated bank behaves like a bank, its churn is learnable but not trivial."""

from __future__ import annotations

import hashlib
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import orjson
import polars as pl
import pytest

from features.errors import ConfigError, InvalidEventError
from features.events import EVENT_TYPES, decode, validate_log
from simulator import SimConfig, SimSummary, truth_dir_for, write_parquet

START = date(2024, 1, 1)


@pytest.fixture(scope="session")
def bank(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SimSummary]:
    out = tmp_path_factory.mktemp("bank") / "events.parquet"
    summary = write_parquet(SimConfig(customers=4_000, months=24, seed=11), out, workers=1)
    return out, summary


@pytest.fixture(scope="session")
def events(bank: tuple[Path, SimSummary]) -> pl.DataFrame:
    return pl.read_parquet(bank[0])


@pytest.fixture(scope="session")
def customers(bank: tuple[Path, SimSummary]) -> pl.DataFrame:
    return pl.read_parquet(truth_dir_for(bank[0]) / "customers.parquet")


def _auc(score: np.ndarray, label: np.ndarray) -> float:
    order = np.argsort(score, kind="stable")
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    pos = label.astype(bool)
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _digest(dataset: Path) -> str:
    sha = hashlib.sha256()
    for part in sorted(dataset.glob("part-*.parquet")):
        sha.update(part.name.encode())
        sha.update(part.read_bytes())
    return sha.hexdigest()


def test_same_seed_same_bytes_whatever_the_workers(tmp_path: Path) -> None:
    cfg = SimConfig(customers=700, months=3, seed=3, chunk_customers=300)
    digests = []
    for name, workers in (("a", 1), ("b", 1), ("c", 2)):
        write_parquet(cfg, tmp_path / f"{name}.parquet", workers=workers)
        digests.append(_digest(tmp_path / f"{name}.parquet"))
    assert len(list((tmp_path / "a.parquet").glob("part-*.parquet"))) == 3
    assert digests[0] == digests[1] == digests[2]
    write_parquet(cfg.replace(seed=4), tmp_path / "d.parquet", workers=1)
    assert _digest(tmp_path / "d.parquet") != digests[0]


def test_rewriting_a_dataset_leaves_no_stale_parts(tmp_path: Path) -> None:
    out = tmp_path / "ev.parquet"
    write_parquet(SimConfig(customers=500, months=1, seed=1, chunk_customers=100), out, workers=1)
    write_parquet(SimConfig(customers=150, months=1, seed=1, chunk_customers=100), out, workers=1)
    assert len(list(out.glob("part-*.parquet"))) == 2
    assert pl.read_parquet(out)["customer_id"].n_unique() == 150


def test_bank_has_every_signal_and_segment(
    events: pl.DataFrame, bank: tuple[Path, SimSummary]
) -> None:
    assert set(events["event_type"].unique()) == set(EVENT_TYPES)
    summary = bank[1]
    assert summary.events == events.height
    assert set(summary.customers_per_segment) == {"mass", "affluent", "private", "sme"}
    per_customer_month = events.height / (4_000 * 24)
    assert 10 <= per_customer_month <= 40
    text = summary.format()
    assert "churn/yr" in text
    assert "customer value" in text


def test_events_are_time_ordered_per_customer_and_unique(events: pl.DataFrame) -> None:
    assert events["event_id"].is_unique().all()
    unordered = events.select(
        (pl.col("occurred_at").diff().over("customer_id") < pl.duration(microseconds=0)).sum()
    ).item()
    assert unordered == 0


def test_every_simulated_event_validates(tmp_path: Path) -> None:
    out = tmp_path / "small.parquet"
    summary = write_parquet(SimConfig(customers=250, months=24, seed=2), out, workers=1)
    log = pl.read_parquet(out)
    assert set(log["event_type"].unique()) == set(EVENT_TYPES)
    valid, rejected = validate_log(log)
    assert rejected == {}
    assert valid == log.height == summary.events


def test_balances_follow_the_money(events: pl.DataFrame) -> None:
    money = events.filter(pl.col("amount_minor").is_not_null())
    signed = (
        pl.when(pl.col("event_type").is_in(["salary_credited", "transfer_in", "interest_paid"]))
        .then(pl.col("amount_minor"))
        .otherwise(-pl.col("amount_minor"))
    )
    check = money.with_columns(
        (pl.col("balance_minor") - pl.col("balance_minor").shift().over("customer_id")).alias(
            "delta"
        ),
        signed.alias("signed"),
    ).filter(pl.col("delta").is_not_null())
    assert (check["delta"] == check["signed"]).all()


def test_churn_rate_per_segment_is_plausible(bank: tuple[Path, SimSummary]) -> None:
    summary = bank[1]
    for segment in ("mass", "affluent", "private", "sme"):
        assert 0.02 <= summary.churn_rate_per_year(segment) <= 0.22, segment
    assert 0.05 <= summary.churn_rate_per_year() <= 0.18
    assert summary.churn_rate_per_year("private") < summary.churn_rate_per_year("mass")


def test_churn_ends_with_closing_the_last_product(
    events: pl.DataFrame, customers: pl.DataFrame
) -> None:
    churned = customers.filter(pl.col("churned_on").is_not_null())
    assert churned.height > 100
    last = events.group_by("customer_id").agg(
        pl.col("event_type").last().alias("last_type"),
        pl.col("product_type").last().alias("last_product"),
    )
    joined = churned.join(last, on="customer_id")
    assert (joined["last_type"] == "product_closed").all()
    assert (joined["last_product"] == "current").all()
    alive = customers.filter(pl.col("churned_on").is_null()).join(last, on="customer_id")
    # customers still with the bank never closed their current account last
    closed_current = (alive["last_type"] == "product_closed") & (alive["last_product"] == "current")
    assert not closed_current.any()


def test_salary_stops_before_churn_for_most_salaried_churners(
    events: pl.DataFrame, customers: pl.DataFrame
) -> None:
    salaried_churners = customers.filter(
        pl.col("churned_on").is_not_null()
        & pl.col("salaried")
        & (pl.col("churned_on") > pl.col("onboarded_on").clip(START) + timedelta(days=120))
    )
    last_salary = (
        events.filter(pl.col("event_type") == "salary_credited")
        .group_by("customer_id")
        .agg(pl.col("occurred_at").max().dt.date().alias("last_salary"))
    )
    joined = salaried_churners.join(last_salary, on="customer_id", how="left")
    gap = (joined["churned_on"] - joined["last_salary"]).dt.total_days().fill_null(9_999)
    stopped_early = (gap > 35).mean()
    assert stopped_early is not None
    assert stopped_early >= 0.5
    # ... and not for everybody: some churn comes without warning
    assert stopped_early < 0.98


def test_precursors_precede_churn(events: pl.DataFrame, customers: pl.DataFrame) -> None:
    """In the 60 days before churn, churners log in less and move more money out."""
    churned = customers.filter(
        pl.col("churned_on").is_not_null() & (pl.col("churned_on") > date(2024, 9, 1))
    ).select("customer_id", pl.col("churned_on").cast(pl.Datetime("us", "UTC")).alias("end"))
    window = events.join(churned, on="customer_id").filter(
        pl.col("occurred_at") < pl.col("end") - pl.duration(days=1)
    )
    recent = window.filter(pl.col("occurred_at") >= pl.col("end") - pl.duration(days=60))
    before = window.filter(
        (pl.col("occurred_at") < pl.col("end") - pl.duration(days=120))
        & (pl.col("occurred_at") >= pl.col("end") - pl.duration(days=240))
    )

    def per_day(frame: pl.DataFrame, kind: str, days: int) -> float:
        return frame.filter(pl.col("event_type") == kind).height / days

    assert per_day(recent, "digital_login", 60) < 0.8 * per_day(before, "digital_login", 120)
    ext_share = [
        f.filter(pl.col("event_type") == "transfer_out")["counterparty"].eq("external").mean()
        for f in (recent, before)
    ]
    assert ext_share[0] > ext_share[1] + 0.05  # type: ignore[operator]
    closed = recent.filter(
        (pl.col("event_type") == "product_closed")
        & (pl.col("occurred_at") < pl.col("end") - pl.duration(days=1))
    )
    assert closed.height > 0.1 * churned.height


def test_churn_is_learnable_but_not_trivial(
    bank: tuple[Path, SimSummary], customers: pl.DataFrame
) -> None:
    """The true hazard at an as-of date ranks 90-day churners well, but not perfectly."""
    hazard = pl.read_parquet(truth_dir_for(bank[0]) / "hazard.parquet")
    as_of = date(2025, 1, 6)
    at = hazard.filter(pl.col("week_start") == as_of)
    labelled = at.join(customers, on="customer_id").filter(
        pl.col("churned_on").is_null() | (pl.col("churned_on") >= as_of)
    )
    label = (
        labelled["churned_on"].is_not_null() & (labelled["churned_on"] < as_of + timedelta(days=90))
    ).to_numpy()
    assert 0.01 < label.mean() < 0.2
    oracle = _auc(labelled["hazard"].to_numpy(), label)
    assert 0.75 < oracle < 0.99


def test_value_has_a_real_spread(bank: tuple[Path, SimSummary]) -> None:
    value = pl.read_parquet(truth_dir_for(bank[0]) / "value.parquet")
    customers = pl.read_parquet(truth_dir_for(bank[0]) / "customers.parquet")
    yearly = (
        value.group_by("customer_id")
        .agg(pl.col("contribution_minor").sum() / 2)
        .join(customers, on="customer_id")
    )
    medians = yearly.group_by("segment").agg(pl.col("contribution_minor").median())
    m = dict(medians.iter_rows())
    assert m["private"] > m["affluent"] > m["mass"]
    assert (yearly["contribution_minor"] < 0).mean() > 0.005  # some customers cost money


def test_dirty_records_are_rejected_with_the_right_reason(tmp_path: Path) -> None:
    out = tmp_path / "dirty.parquet"
    summary = write_parquet(
        SimConfig(customers=300, months=4, seed=5, dirty_rate=0.05), out, workers=1
    )
    log = pl.read_parquet(out)
    dirty = pl.read_parquet(truth_dir_for(out) / "dirty.parquet")
    assert summary.records == log.height > summary.events
    kinds = Counter(dirty["kind"])
    assert set(kinds) == {
        "duplicate",
        "late",
        "malformed_json",
        "missing_field",
        "bad_value",
        "naive_timestamp",
        "unknown_event_type",
    }
    for row in dirty.filter(pl.col("reason").is_not_null()).iter_rows(named=True):
        with pytest.raises(InvalidEventError) as err:
            decode(row["raw"])
        assert err.value.reason == row["reason"], row["kind"]
    valid, rejected = validate_log(log)
    expected = Counter(r for r in dirty["reason"] if r is not None)
    assert rejected == dict(expected)
    assert valid == summary.events + kinds["duplicate"]
    # duplicates keep their event id; late and re-delivered records arrive after they happened
    dup_ids = dirty.filter(pl.col("kind") == "duplicate")["event_id"]
    counts = log.filter(pl.col("event_id").is_in(dup_ids.implode())).group_by("event_id").len()
    assert (counts["len"] == 2).all()
    late = log.filter(pl.col("published_at").is_not_null() & pl.col("raw").is_null())
    assert (late["published_at"] > late["occurred_at"]).all()
    assert late.height == kinds["late"] + kinds["duplicate"]


def test_raw_records_keep_their_customer_key(tmp_path: Path) -> None:
    out = tmp_path / "dirty.parquet"
    write_parquet(SimConfig(customers=100, months=2, seed=9, dirty_rate=0.1), out, workers=1)
    raw = pl.read_parquet(out).filter(pl.col("raw").is_not_null())
    assert raw.height > 0
    assert raw["customer_id"].is_not_null().all()
    parsed = [orjson.loads(r) for r in raw["raw"] if r.endswith(b"}")]
    assert all(p["customer_id"].startswith("C") for p in parsed)


@pytest.mark.parametrize(
    ("field", "value"),
    [("customers", 0), ("months", 0), ("dirty_rate", 0.9), ("currency", "rmb")],
)
def test_bad_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as err:
        SimConfig(**{field: value})  # type: ignore[arg-type]
    assert err.value.field == field
    assert field in str(err.value)
