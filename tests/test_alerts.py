"""The alert policy: YAML validation, rules, cooldown, inhibition, reasons and actions."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from features import FEATURES
from features.errors import ConfigError
from serving import Score
from serving._alerts import RulePolicy, segment_of
from serving._policy import (
    ACTIONS,
    DEFAULT_POLICY,
    AlertMemory,
    Stage,
    Tier,
    evaluate_rules,
    load_policy,
    parse_policy,
)
from serving._reasons import DRIVERS, explain
from serving._scores import LIFECYCLE_STAGES, VALUE_TIERS
from training import Store, load_bundle

T0 = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)


def score(
    p: float,
    *,
    at: datetime = T0,
    value: float = 1_000_000.0,
    tier: str = "gold",
    stage: str = "mature",
    customer: str = "C1",
) -> Score:
    return Score(
        customer_id=customer,
        as_of=at.isoformat(),
        churn_probability=p,
        predicted_value_minor=value,
        value_tier=tier,
        loyalty_score=50.0,
        lifecycle_stage=stage,
        model_version="3",
        manager_id="M1",
        branch_id="B1",
    )


def policy(text: str) -> Any:
    return parse_policy("version: 1\n" + text)


def fire(pol: Any, s: Score, memory: AlertMemory | None = None, **features: float) -> Any:
    return evaluate_rules(pol, s, features, memory or AlertMemory(), segment_of(features))


# ----------------------------------------------------------------------------- the file


def test_the_default_policy_loads_and_covers_every_rule_kind() -> None:
    pol = load_policy(None)
    assert {r.kind for r in pol.rules} == {
        "churn_probability",
        "risk_jump",
        "value_at_risk",
        "lifecycle",
        "unresolved_complaint",
    }
    assert pol == parse_policy(DEFAULT_POLICY)


def test_policy_literals_match_the_engine() -> None:
    assert set(Stage.__args__) == set(LIFECYCLE_STAGES)  # type: ignore[attr-defined]
    assert set(Tier.__args__) == set(VALUE_TIERS)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "field", "allowed"),
    [
        (
            "rules:\n - {name: ab, kind: churn_probability, severity: urgent}",
            "rules[0].severity",
            "critical, high, medium or low",
        ),
        ("rules:\n - {name: ab, kind: churnprob}", "rules[0].kind", "risk_jump"),
        ("rules:\n - {name: ab, kind: risk_jump, within: 7 weeks}", "rules[0].within", "7d"),
        ("rules:\n - {name: ab, kind: value_at_risk}", "rules[0].min_minor", "required"),
        ("rules:\n - {name: ab, kind: lifecycle, to: [gone]}", "rules[0].to[0]", "declining"),
        (
            "rules:\n - {name: ab, kind: lifecycle}\nactions: {salary: free_money}",
            "actions.salary",
            "payroll_offer",
        ),
        (
            "rules:\n - {name: ab, kind: lifecycle}\nactions: {wages: fee_waiver}",
            "actions",
            "balance_leaving",
        ),
        ("rules:\n - {name: ab, kind: lifecycle, colour: red}", "rules[0].colour", "no such field"),
        (
            "rules:\n - {name: ab, kind: lifecycle}\n - {name: ab, kind: risk_jump}",
            "rules",
            "unique",
        ),
        (
            "rules:\n - {name: ab, kind: churn_probability, threshold: 1.5}",
            "rules[0].threshold",
            "1",
        ),
        (
            "rules:\n - {name: ab, kind: churn_probability, by_tier: {diamond: 0.2}}",
            "rules[0].by_tier.diamond",
            "platinum",
        ),
        ("rules: []", "rules", "at least 1"),
        ("cooldown: soon\nrules:\n - {name: ab, kind: lifecycle}", "cooldown", "duration"),
    ],
)
def test_a_bad_policy_names_the_field_and_what_is_allowed(
    text: str, field: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as err:
        policy(text)
    assert err.value.field == field
    assert allowed in err.value.allowed


def test_a_missing_or_broken_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="readable file"):
        load_policy(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [\n")
    with pytest.raises(ConfigError, match="valid YAML"):
        load_policy(bad)


# ----------------------------------------------------------------------------- the rules


def test_thresholds_per_tier_and_segment_take_the_lowest() -> None:
    pol = policy(
        "rules:\n - {name: risk, kind: churn_probability, threshold: 0.5,"
        " by_tier: {platinum: 0.3}, by_segment: {private: 0.2}}"
    )
    assert fire(pol, score(0.4, tier="gold"))[0] == []
    assert [h.rule for h in fire(pol, score(0.4, tier="platinum"))[0]] == ["risk"]
    assert fire(pol, score(0.25, tier="platinum"))[0] == []
    assert len(fire(pol, score(0.25, tier="silver"), segment_code=2)[0]) == 1
    assert len(fire(pol, score(0.55, tier="bronze"))[0]) == 1


def test_a_risk_jump_within_the_window_alerts_and_an_old_low_does_not() -> None:
    pol = policy("rules:\n - {name: jump, kind: risk_jump, jump: 0.2, within: 7d}")
    _, _, mem = fire(pol, score(0.1, at=T0))
    hits, _, _mem2 = fire(pol, score(0.35, at=T0 + timedelta(days=6)), mem)
    assert [h.rule for h in hits] == ["jump"]
    assert "10%" in hits[0].detail
    assert "35%" in hits[0].detail
    hits, _, _ = fire(pol, score(0.35, at=T0 + timedelta(days=8)), mem)
    assert hits == []  # the low score left the window


def test_a_low_exactly_the_window_ago_still_counts_and_the_memory_keeps_it() -> None:
    pol = policy("rules:\n - {name: jump, kind: risk_jump, jump: 0.2, within: 7d}")
    _, _, mem = fire(pol, score(0.1, at=T0))
    _, _, mem = fire(pol, score(0.2, at=T0 + timedelta(days=3)), mem)
    week = T0 + timedelta(days=7)
    hits, _, after = fire(pol, score(0.35, at=week), mem)
    assert [h.rule for h in hits] == ["jump"]
    assert "10%" in hits[0].detail  # the lowest in the window, its oldest end included
    assert [p for _, p in after.recent] == [0.1, 0.2, 0.35]
    # a microsecond later, the low is out: 0.2 -> 0.35 is no jump of 0.2
    hits, _, after = fire(pol, score(0.35, at=week + timedelta(microseconds=1)), mem)
    assert hits == []
    assert [p for _, p in after.recent] == [0.2, 0.35]


def test_value_at_risk_lifecycle_and_complaint_rules() -> None:
    pol = policy(
        "rules:\n"
        " - {name: var, kind: value_at_risk, min_minor: 500000, severity: critical}\n"
        " - {name: turn, kind: lifecycle, to: [declining]}\n"
        " - {name: complaint, kind: unresolved_complaint, days: 14, tiers: [gold]}\n"
        "inhibit: false"
    )
    assert [h.rule for h in fire(pol, score(0.6, value=1_000_000))[0]] == ["var"]
    assert fire(pol, score(0.4, value=1_000_000))[0] == []
    _, _, mem = fire(pol, score(0.1, stage="mature"))
    later = T0 + timedelta(days=1)
    assert [h.rule for h in fire(pol, score(0.1, at=later, stage="declining"), mem)[0]] == ["turn"]
    _, _, mem = fire(pol, score(0.1, stage="declining"))
    assert fire(pol, score(0.1, at=later, stage="declining"), mem)[0] == []  # no turn
    hits = fire(pol, score(0.1), days_oldest_open_complaint=20.0)[0]
    assert [h.rule for h in hits] == ["complaint"]
    assert fire(pol, score(0.1, tier="silver"), days_oldest_open_complaint=20.0)[0] == []
    assert fire(pol, score(0.1), days_oldest_open_complaint=5.0)[0] == []


def test_customers_of_no_value_get_no_retention_alert() -> None:
    pol = load_policy(None)
    hits, suppressed, _ = fire(pol, score(0.9, value=-5000.0))
    assert hits == []
    assert suppressed
    assert {why for _, why in suppressed} == {"no_value"}


def test_a_customer_alerts_once_per_cooldown_per_rule() -> None:
    pol = policy("cooldown: 7d\nrules:\n - {name: risk, kind: churn_probability, threshold: 0.5}")
    hits, _, mem = fire(pol, score(0.6))
    assert len(hits) == 1
    for days in (1, 3, 6):
        hits, suppressed, mem = fire(pol, score(0.7, at=T0 + timedelta(days=days)), mem)
        assert hits == []
        assert suppressed == [("risk", "cooldown")]
    hits, _, mem = fire(pol, score(0.7, at=T0 + timedelta(days=7)), mem)
    assert len(hits) == 1


def test_a_critical_alert_inhibits_lower_ones_for_the_same_customer() -> None:
    pol = policy(
        "rules:\n"
        " - {name: var, kind: value_at_risk, min_minor: 1000, severity: critical}\n"
        " - {name: risk, kind: churn_probability, threshold: 0.5, severity: high}"
    )
    hits, suppressed, mem = fire(pol, score(0.8))
    assert [h.rule for h in hits] == ["var"]
    assert suppressed == [("risk", "inhibited")]
    assert "risk" not in mem.fired  # inhibited, not sent: it may alert later


def test_an_older_score_changes_nothing_and_memory_round_trips() -> None:
    pol = load_policy(None)
    _, _, mem = fire(pol, score(0.2, at=T0 + timedelta(days=2)))
    hits, suppressed, same = fire(pol, score(0.95, at=T0), mem)
    assert (hits, suppressed, same) == ([], [], mem)
    assert AlertMemory.from_bytes(mem.to_bytes()) == mem
    assert AlertMemory.from_bytes(None) == AlertMemory()


# ----------------------------------------------------------------------------- reasons


def test_every_feature_belongs_to_one_driver() -> None:
    owners = [d.key for d in DRIVERS for _ in d.features]
    assert len(owners) == sum(len(d.features) for d in DRIVERS)
    claimed = [name for d in DRIVERS for name in d.features]
    assert len(claimed) == len(set(claimed))
    assert {f.name for f in FEATURES} == set(claimed)


@pytest.mark.parametrize("driver", DRIVERS, ids=lambda d: d.key)
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_each_driver_speaks_both_languages_with_or_without_numbers(driver: Any, lang: Any) -> None:
    empty: dict[str, float] = {}
    typical = {f.name: 3.0 for f in FEATURES} | {
        "balance_change_30d": -0.62,
        "outflow_ext_share_90d": 0.8,
        "login_trend": 0.4,
        "days_since_salary": 40.0,
        "open_complaints": 2.0,
    }
    for features in (empty, typical, dict.fromkeys(typical, math.nan)):
        text = driver.say(features, lang)
        assert text
        assert "nan" not in text.lower()
        if lang == "zh":
            assert any("\u4e00" <= ch <= "\u9fff" for ch in text)


def test_reasons_use_the_customers_own_numbers() -> None:
    f = {
        "balance_change_30d": -0.62,
        "outflow_ext_share_90d": 0.7,
        "open_complaints": 2.0,
        "days_oldest_open_complaint": 21.0,
        "days_since_salary": 34.0,
    }
    contrib = {"balance_change_30d": 0.8, "open_complaints": 0.5, "days_since_salary": 0.6}
    texts = [r.text for r in explain(f, contrib, "en")]
    assert texts == [
        "balance down 62% in 30 days, mostly transfers to other banks",
        "salary credits stopped 34 days ago",
        "2 unresolved complaints, the oldest open 21 days",
    ]
    assert next(r.text for r in explain(f, contrib, "zh")) == "30天内存款余额下降62%，主要转往他行"  # noqa: RUF001
    # drivers that lower the risk are no reason
    assert [r.driver for r in explain(f, {"open_complaints": -0.5, "fee_sum_90d": 0.1})] == ["fees"]
    with pytest.raises(ValueError, match="allowed en, zh"):
        explain(f, contrib, "fr")  # type: ignore[arg-type]


def test_actions_follow_the_reason_tier_and_segment() -> None:
    pol = load_policy(None)
    assert pol.action_for("complaints", "silver", None) == "service_recovery_call"
    assert pol.action_for("fees", "bronze", None) == "fee_waiver"
    assert pol.action_for("balance_leaving", "silver", "mass") == "rate_offer"
    assert pol.action_for("balance_leaving", "gold", "mass") == "exclusive_wealth_product"
    assert pol.action_for("balance_leaving", "bronze", "private") == "exclusive_wealth_product"
    assert pol.action_for("salary", "gold", None) == "payroll_offer"
    assert pol.action_for("digital", "gold", None) in ACTIONS


def test_explained_alerts_from_the_trained_model(champion_dir: Path) -> None:
    """Real LightGBM contributions: they add up to the raw score, and the alerting
    customers get up to three reasons in both languages and an action."""
    bundle, version = load_bundle(Store.resolve(champion_dir, environ={}))
    frame = pl.read_parquet(champion_dir / "train.parquet").head(400)
    x = frame.select(list(bundle.features)).to_numpy().astype(np.float64)
    contrib = bundle.contributions(x)
    assert contrib.shape == (len(x), len(bundle.features) + 1)  # the last column: the bias
    assert np.allclose(contrib.sum(axis=1), bundle.churn.predict(x, raw_score=True))
    churn, value = bundle.predict(x)
    feats = [dict(zip(bundle.features, row, strict=True)) for row in x.tolist()]
    scored = [
        (replace(score(float(p), value=float(v), customer=f"C{i}")), f)
        for i, (p, v, f) in enumerate(zip(churn, value, feats, strict=True))
    ]
    rp = RulePolicy(policy("rules:\n - {name: risk, kind: churn_probability, threshold: 0.05}"))
    asked: list[list[int]] = []

    def contributions(rows: list[int]) -> list[dict[str, float]]:
        asked.append(rows)
        return [dict(zip(bundle.features, contrib[i], strict=False)) for i in rows]

    alerts, memories = rp.evaluate_many(scored, [AlertMemory()] * len(scored), contributions)
    alerting = [
        i
        for i, (s, _) in enumerate(scored)
        if s.churn_probability >= 0.05 and s.predicted_value_minor > 0
    ]
    assert asked == [alerting]
    assert len(alerts) == len(alerting) > 0
    assert len(memories) == len(scored)
    for a in alerts:
        assert 1 <= len(a.reasons) <= 3
        weights = [r.weight for r in a.reasons]
        assert weights == sorted(weights, reverse=True)
        assert min(weights) > 0
        assert len({r.driver for r in a.reasons}) == len(a.reasons)
        assert a.action in ACTIONS
        assert a.alert.value_at_risk_minor == pytest.approx(
            a.alert.churn_probability * a.alert.predicted_value_minor
        )
        assert a.reasons[0].en in a.alert.message
    assert version
