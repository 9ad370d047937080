"""Routing and hygiene: grouping, repeats, silences, daily cap, reassignment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from serving._notify import Notifier, RoutingConfig

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
CFG = RoutingConfig(
    group_wait=timedelta(seconds=30),
    group_interval=timedelta(minutes=5),
    repeat_interval=timedelta(hours=24),
    daily_cap=3,
)


def alert(
    customer: str, manager: str | None = "M1", var: float = 1000.0, **kw: Any
) -> dict[str, Any]:
    return {
        "alert_id": f"{customer}:rule:{kw.get('at', T0).isoformat()}",
        "customer_id": customer,
        "manager_id": manager,
        "branch_id": "B7",
        "value_at_risk_minor": var,
        "rule": "high_churn_risk",
    }


def ids(digests: list[Any]) -> list[tuple[str, list[str]]]:
    return [(d.recipient, [a["customer_id"] for a in d.alerts]) for d in digests]


def test_alerts_wait_to_be_grouped_then_go_as_one_digest_per_manager() -> None:
    n = Notifier(CFG)
    n.on_alert(alert("C1"), T0)
    n.on_alert(alert("C2", var=5000), T0 + timedelta(seconds=10))
    n.on_alert(alert("C3", manager="M2"), T0 + timedelta(seconds=20))
    assert n.due(T0 + timedelta(seconds=29)) == []
    assert ids(n.due(T0 + timedelta(seconds=30))) == [("M1", ["C2", "C1"])]  # by value at risk
    assert ids(n.due(T0 + timedelta(seconds=50))) == [("M2", ["C3"])]
    # a later alert waits for the group interval after the last digest
    n.on_alert(alert("C4"), T0 + timedelta(minutes=1))
    assert n.due(T0 + timedelta(minutes=2)) == []
    assert ids(n.due(T0 + timedelta(minutes=5, seconds=30))) == [("M1", ["C4"])]


def test_a_customer_without_a_manager_goes_to_the_branch_queue() -> None:
    n = Notifier(CFG)
    n.on_alert(alert("C1", manager=None), T0)
    assert ids(n.due(T0 + timedelta(minutes=1))) == [("branch:B7", ["C1"])]


def test_unacknowledged_alerts_repeat_and_acknowledged_ones_do_not() -> None:
    n = Notifier(CFG)
    n.on_alert(alert("C1"), T0)
    n.on_alert(alert("C2"), T0)
    assert len(n.due(T0 + timedelta(minutes=1))) == 1
    n.on_action({"kind": "acknowledge", "customer_id": "C1"}, T0 + timedelta(hours=1))
    assert n.due(T0 + timedelta(hours=23)) == []
    again = n.due(T0 + timedelta(hours=24, minutes=2))
    again += n.due(T0 + timedelta(hours=24, minutes=3))
    assert ids(again) == [("M1", ["C2"])]


def test_snoozed_alerts_come_back_when_the_snooze_ends() -> None:
    n = Notifier(CFG)
    n.on_alert(alert("C1"), T0)
    n.due(T0 + timedelta(minutes=1))
    until = T0 + timedelta(hours=2)
    n.on_action({"kind": "snooze", "customer_id": "C1", "until": until.isoformat()}, T0)
    assert n.due(T0 + timedelta(hours=1)) == []
    n.due(until)
    assert ids(n.due(until + timedelta(minutes=1))) == [("M1", ["C1"])]


def test_silences_hold_per_customer_and_per_manager_until_they_end() -> None:
    n = Notifier(CFG)
    end = T0 + timedelta(days=2)
    n.on_action(
        {
            "kind": "silence",
            "scope": "customer",
            "target": "C1",
            "until": end.isoformat(),
            "reason": "do not contact",
        },
        T0,
    )
    n.on_action(
        {
            "kind": "silence",
            "scope": "manager",
            "target": "M2",
            "until": end.isoformat(),
            "reason": "on leave",
        },
        T0,
    )
    n.on_alert(alert("C1"), T0)
    n.on_alert(alert("C2"), T0)
    n.on_alert(alert("C3", manager="M2"), T0)
    assert ids(n.due(T0 + timedelta(minutes=1))) == [("M1", ["C2"])]
    assert n.suppressed["silenced"] == 2
    # still open in the inbox, and sent once the silence is over
    assert [a["customer_id"] for a in n.inbox("M2")] == ["C3"]
    n.on_alert(alert("C3", manager="M2", at=end), end + timedelta(hours=1))
    assert ids(n.due(end + timedelta(hours=2))) == [("M2", ["C3"])]


def test_the_daily_cap_keeps_the_most_valuable_and_counts_the_rest() -> None:
    n = Notifier(CFG)
    for i, var in enumerate([10.0, 500.0, 40.0, 3000.0, 7.0]):
        n.on_alert(alert(f"C{i}", var=var), T0)
    [digest] = n.due(T0 + timedelta(minutes=1))
    assert [a["customer_id"] for a in digest.alerts] == ["C3", "C1", "C2"]
    assert digest.overflow == 2
    assert n.suppressed["daily_cap"] == 2
    # the cap is per day: tomorrow the held ones go out with the new one
    for a in digest.alerts:
        n.on_action({"kind": "acknowledge", "customer_id": a["customer_id"]}, T0)
    n.on_alert(alert("C9"), T0 + timedelta(days=1))
    assert ids(n.due(T0 + timedelta(days=1, minutes=1))) == [("M1", ["C9", "C0", "C4"])]


def test_reassigning_a_manager_moves_the_open_alert() -> None:
    n = Notifier(CFG)
    n.on_alert(alert("C1"), T0)
    n.due(T0 + timedelta(minutes=1))
    n.on_action(
        {"kind": "reassign", "customer_id": "C1", "manager_id": "M9"}, T0 + timedelta(hours=1)
    )
    assert n.inbox("M1") == []
    assert [a["customer_id"] for a in n.inbox("M9")] == ["C1"]
    assert ids(n.due(T0 + timedelta(hours=1, minutes=1))) == [("M9", ["C1"])]


def test_an_outcome_closes_the_alert_and_digest_ids_are_stable() -> None:
    n = Notifier(CFG)
    n.on_alert(alert("C1"), T0)
    [d] = n.due(T0 + timedelta(minutes=1))
    m = Notifier(CFG)
    m.on_alert(alert("C1"), T0)
    assert m.due(T0 + timedelta(minutes=1))[0].digest_id == d.digest_id
    n.on_action({"kind": "outcome", "customer_id": "C1", "outcome": "retained"}, T0)
    assert n.inbox("M1") == []
