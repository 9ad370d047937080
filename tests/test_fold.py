"""The compiled fold (features/_fold.c) folds exactly as the Python one.

Every other test that folds (the features against polars, the stream's parity, crash
and takeover tests) runs the compiled fold through ``CustomerState.apply``; these
compare it with ``CustomerState.apply_python``, the definition it follows, state by
state and outcome by outcome.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import zlib
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import features
from features import FOLD_COMPILED, ChurnEngineError, CustomerState, DataError, fold_event
from features._definitions import LONGEST_WINDOW
from features.events import EVENT_TYPES, Event
from tests.test_features import BASE, histories

ZONES = (
    None,
    timezone(timedelta(hours=8)),
    timezone(timedelta(hours=-5)),
    ZoneInfo("Europe/Paris"),
)


def _both(events: list[Event]) -> tuple[dict[str, CustomerState], dict[str, CustomerState]]:
    """The events folded both ways, in order; the outcomes must agree one by one."""
    python: dict[str, CustomerState] = {}
    compiled: dict[str, CustomerState] = {}
    for i, ev in enumerate(events):
        a = python.setdefault(ev.customer_id, CustomerState(ev.customer_id))
        b = compiled.setdefault(ev.customer_id, CustomerState(ev.customer_id))
        assert fold_event(b, ev) == a.apply_python(ev), ev
        if i % 4 == 0 and a.max_t is not None:  # read between folds: no stale cache
            assert a.aggregates(a.max_t).tobytes() == b.aggregates(a.max_t).tobytes()
    return python, compiled


def _same_state(a: CustomerState, b: CustomerState) -> None:
    assert a == b
    assert a.to_bytes() == b.to_bytes()
    # what the bytes leave out or write only in part: the running fields themselves
    for name in CustomerState.__slots__:
        if name not in ("_arrays", "_entity_row"):
            assert getattr(a, name) == getattr(b, name), name
    assert a.matrix().tolist() == [list(r) for r in b.records]


def test_the_compiled_fold_is_built_and_used() -> None:
    # make install builds it; without it everything folds in Python and these tests
    # would compare the Python fold with itself
    assert FOLD_COMPILED
    assert fold_event is features._state._COMPILED
    assert type(fold_event).__name__ == "builtin_function_or_method"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(most=60), st.lists(st.sampled_from(range(len(ZONES))), min_size=60, max_size=60))
def test_compiled_and_python_folds_give_the_same_states(
    history: list[tuple[Event, Any]], zones: list[int]
) -> None:
    delivered = [e for e, _ in sorted(history, key=lambda p: p[1])]
    # the same instants written in other zones: fixed offsets and a zone with DST
    events = [
        msgspec.structs.replace(ev, occurred_at=ev.occurred_at.astimezone(zone))
        if (zone := ZONES[zones[i % len(zones)]]) is not None
        else ev
        for i, ev in enumerate(delivered)
    ]
    python, compiled = _both(events + events[::3])  # and some delivered again
    for cid, state in python.items():
        _same_state(state, compiled[cid])


@settings(max_examples=40, deadline=None)
@given(histories(days=800, kinds=("card_payment", "digital_login", "salary_credited"), most=80))
def test_compiled_fold_expires_like_the_python_one(history: list[tuple[Event, Any]]) -> None:
    # 800 days of the commonest events: the window moves on and records expire
    python, compiled = _both([e for e, _ in sorted(history, key=lambda p: p[1])])
    for cid, state in python.items():
        _same_state(state, compiled[cid])


def _card(i: int, amount: int, balance: int = 0, day: int = 0) -> Event:
    return EVENT_TYPES["card_payment"](
        event_id=f"E{i}",
        customer_id="C1",
        occurred_at=BASE + timedelta(days=day, seconds=i),
        amount_minor=amount,
        currency="CNY",
        balance_minor=balance,
        merchant_category="groceries",
        channel="pos",
    )


def test_events_at_one_instant_fold_alike_in_any_order() -> None:
    # records of one instant sort by balance, hash, ...: the lifetime "last" value
    # is the largest of that instant's, whichever order they come in
    same = [_card(0, amount, balance=bal) for amount, bal in ((500, 1), (20, 2), (300, 3), (7, 4))]
    same = [msgspec.structs.replace(ev, event_id=f"T{i}") for i, ev in enumerate(same)]
    for order in itertools.permutations(same):
        python, compiled = _both([_card(9, 1, day=-1), *order])
        _same_state(python["C1"], compiled["C1"])


@pytest.mark.parametrize(
    "start",
    [datetime(2024, 3, 1, 12, tzinfo=UTC), datetime(1969, 3, 1, 12, tzinfo=UTC)],
    ids=["2024", "before-1970"],
)
def test_the_window_edges_fold_alike(start: datetime) -> None:
    # before 1970 times are negative: the window's first day is a floor division
    day0 = start.replace(hour=0)
    newest = start + timedelta(days=LONGEST_WINDOW - 1, hours=1)  # its window starts at day0
    times = [
        start,
        newest,
        day0,  # the window's first instant: still folded
        day0 - timedelta(microseconds=1),  # the instant before: too late
        newest + timedelta(days=1),  # the window moves a day on: the first record expires
        day0 + timedelta(days=1) - timedelta(microseconds=1),
    ]
    events = [
        msgspec.structs.replace(_card(i, 100 + i), occurred_at=when) for i, when in enumerate(times)
    ]
    python, compiled = _both(events)
    _same_state(python["C1"], compiled["C1"])
    state = CustomerState("C1")
    outcomes = [state.apply_python(e) for e in events]
    assert outcomes == ["applied", "applied", "applied", "too_late", "applied", "too_late"]
    assert len(compiled["C1"].records) == 2


def test_sums_beyond_64_bits_and_numbers_too_wide_are_the_python_folds() -> None:
    big = 2**62
    events = [_card(i, big, balance=-big) for i in range(6)]  # lifetime sums pass 2**63
    python, compiled = _both(events)
    _same_state(python["C1"], compiled["C1"])
    assert any(rec[1] > 2**63 for rec in compiled["C1"].life.values())
    # a number wider than a record's 64 bits: handed to the Python fold, which refuses it
    too_wide = _card(99, 2**64, day=1)
    for fold in (CustomerState.apply_python, fold_event):
        with pytest.raises(OverflowError):
            fold(CustomerState("C1"), too_wide)


def test_the_compiled_fold_refuses_what_the_python_one_refuses() -> None:
    state = CustomerState("C2")
    with pytest.raises(ChurnEngineError, match="applied to C2"):
        fold_event(state, _card(1, 100))
    naive = msgspec.structs.replace(_card(1, 100), occurred_at=BASE.replace(tzinfo=None))
    with pytest.raises(DataError, match="naive"):
        fold_event(CustomerState("C1"), naive)
    with pytest.raises(TypeError, match="two arguments"):
        fold_event(state)  # type: ignore[call-arg]
    assert state == CustomerState("C2")


@given(st.binary(max_size=200))
def test_the_record_hash_is_zlib_crc32(data: bytes) -> None:
    from features import _fold

    assert _fold.crc32(data) == zlib.crc32(data)


def test_without_the_compiled_fold_everything_folds_in_python() -> None:
    code = (
        "import sys; sys.modules['features._fold'] = None\n"  # as if it were not built
        "import features\n"
        "from features import CustomerState, fold_event\n"
        "from tests.test_fold import _card\n"
        "assert not features.FOLD_COMPILED\n"
        "s = CustomerState('C1')\n"
        "print(fold_event(s, _card(1, 100)), s.apply(_card(1, 100)), len(s.records))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == ["applied", "duplicate", "1"]
