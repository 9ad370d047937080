"""Feature engine: online == offline, idempotent, serialisable; a conformance suite.

The conformance suite discovers every feature definition: a new feature is tested
(online == offline on a simulated bank and on random histories, words, unit) without
writing a new test.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features import (
    AGGREGATES,
    FEATURES,
    CustomerState,
    DataError,
    check_parity,
    event_hash,
    finalize,
    offline_aggregates,
    to_us,
)
from features._parity import replay_snapshots
from features._state import aggregates_many, to_bytes_many
from features.events import EVENT_TYPES, Event, events_to_frame
from simulator import SimConfig, write_parquet

BASE = datetime(2024, 3, 1, tzinfo=UTC)
POOLS = {
    "product_id": ("P1", "P2", "P3"),
    "complaint_id": ("K1", "K2", "K3"),
    "manager_id": ("RM1", "RM2"),
    "previous_manager_id": ("RM1", "RM2"),
}


def _value(draw: Any, name: str, t: msgspec.inspect.Type) -> object:
    if isinstance(t, msgspec.inspect.Metadata):
        t = t.type
    if isinstance(t, msgspec.inspect.UnionType):
        t = next(x for x in t.types if not isinstance(x, msgspec.inspect.NoneType))
        if isinstance(t, msgspec.inspect.Metadata):
            t = t.type
    if isinstance(t, msgspec.inspect.LiteralType):
        return draw(st.sampled_from(t.values))
    if isinstance(t, msgspec.inspect.BoolType):
        return draw(st.booleans())
    if isinstance(t, msgspec.inspect.IntType):
        if name == "balance_minor":
            return draw(st.integers(-(10**6), 10**9))
        lo = (t.gt + 1) if t.gt is not None else (t.ge if t.ge is not None else 0)
        hi = t.le if t.le is not None else 10**8
        return draw(st.integers(lo, min(hi, 10**8)))
    if name == "currency":
        return "CNY"
    return draw(st.sampled_from(POOLS.get(name, ("X1", "X2"))))


@st.composite
def histories(
    draw: Any, days: int = 420, kinds: tuple[str, ...] | None = None, most: int = 45
) -> list[tuple[Event, datetime]]:
    """Events of two customers with their delivery times: duplicates, late and out of
    order; over ``days`` days, of the event types ``kinds`` (default: all)."""
    n = draw(st.integers(1, most))
    out: list[tuple[Event, datetime]] = []
    for i in range(n):
        kind = draw(st.sampled_from(kinds or sorted(EVENT_TYPES)))
        cls = EVENT_TYPES[kind]
        when = BASE + timedelta(
            seconds=draw(st.integers(0, days * 86_400)), microseconds=draw(st.integers(0, 999_999))
        )
        body: dict[str, object] = {
            "event_id": f"E{i}",
            "customer_id": draw(st.sampled_from(("C1", "C2"))),
            "occurred_at": when,
        }
        for f in msgspec.inspect.type_info(cls).fields:  # type: ignore[attr-defined]
            if f.name not in body and f.name != "schema_version":
                body[f.name] = _value(draw, f.name, f.type)
        event = cls(**body)
        late = draw(st.sampled_from((0, 0, 0, 1, 5, 60, 170)))
        out.append((event, when + timedelta(days=late)))
        if draw(st.integers(0, 9)) == 0:  # a duplicate, delivered again later
            out.append((event, when + timedelta(days=late + draw(st.integers(0, 100)))))
    return out


def _log(history: list[tuple[Event, datetime]]) -> pl.DataFrame:
    frame = events_to_frame([e for e, _ in history])
    return frame.with_columns(
        pl.Series("published_at", [d for _, d in history], dtype=pl.Datetime("us", "UTC"))
    )


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (np.isnan(a) & np.isnan(b)) | (np.abs(a - b) <= 1e-9 * np.maximum(np.abs(a), np.abs(b)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), st.integers(0, 2**16))
def test_online_equals_offline_on_random_histories(
    history: list[tuple[Event, datetime]], seed: int
) -> None:
    log = _log(history)
    snapshots, online, _ = replay_snapshots(log, per_customer=4, seed=seed)
    offline = offline_aggregates(log.lazy(), snapshots)
    for i, cid in enumerate(snapshots["customer_id"]):
        row = online[(cid, i)]
        for j, agg in enumerate(AGGREGATES):
            off = float(offline[agg.key][i]) if offline[agg.key][i] is not None else np.nan
            assert _same(np.array([row[j]]), np.array([off]))[0], (agg.key, cid, row[j], off)


@settings(max_examples=60, deadline=None)
@given(histories(), st.data())
def test_reapplying_any_event_is_a_no_op(history: list[tuple[Event, datetime]], data: Any) -> None:
    states: dict[str, CustomerState] = {}
    for event, _ in sorted(history, key=lambda x: x[1]):
        states.setdefault(event.customer_id, CustomerState(event.customer_id)).apply(event)
    event = data.draw(st.sampled_from([e for e, _ in history]))
    state = states[event.customer_id]
    before = state.to_bytes()
    assert state.apply(event) in ("duplicate", "too_late")
    assert state.to_bytes() == before


@settings(max_examples=60, deadline=None)
@given(histories())
def test_serialisation_round_trips(history: list[tuple[Event, datetime]]) -> None:
    for cid in ("C1", "C2"):
        mine = sorted((h for h in history if h[0].customer_id == cid), key=lambda x: x[1])
        state = CustomerState.fold(cid, (e for e, _ in mine))
        copy = CustomerState.from_bytes(state.to_bytes())
        assert copy == state
        # the flat mirror of the records (what serialising and scoring read) follows the
        # list through out-of-order inserts and expiry, and comes back from bytes
        for s in (state, copy):
            assert s.matrix().tolist() == [list(r) for r in s.records]
        if state.max_t is not None:
            a, b = state.aggregates(state.max_t), copy.aggregates(state.max_t)
            assert _same(a, b).all()
            # and the copy goes on folding like the original
            extra = mine[0][0] if mine else None
            if extra is not None:
                assert copy.apply(extra) == state.apply(extra)
                assert copy.matrix().tolist() == [list(r) for r in copy.records]


def _identical(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(((np.isnan(a) & np.isnan(b)) | (a == b)).all())


def _with_odd_mask(state: CustomerState) -> CustomerState:
    """A copy whose first record has a signal mask outside the table of the masks
    events can have (a bit no signal uses), its signals kept."""
    odd = CustomerState.from_bytes(state.to_bytes())
    if odd.records:
        odd.records[0] = (*odd.records[0][:3], 1 << 62 | odd.records[0][3], *odd.records[0][4:])
        odd._flat[3] = odd.records[0][3]
    return odd


@settings(max_examples=60, deadline=None)
@given(histories(), st.lists(st.integers(0, 400 * 86_400_000_000), min_size=2, max_size=2))
def test_many_states_at_once_equal_one_at_a_time(
    history: list[tuple[Event, datetime]], later: list[int]
) -> None:
    states = _folded(history)
    _many_equal_one_at_a_time([*states, CustomerState("C3")], [*later, 0])  # C3: no event


def _folded(history: list[tuple[Event, datetime]]) -> list[CustomerState]:
    """The states of C1 and C2, each folded from its events in delivery order."""
    states = []
    for cid in ("C1", "C2"):
        mine = sorted((h for h in history if h[0].customer_id == cid), key=lambda x: x[1])
        states.append(CustomerState.fold(cid, (e for e, _ in mine)))
    return states


def _many_equal_one_at_a_time(states: list[CustomerState], later: list[int]) -> None:
    """Aggregates of the states together equal each one's own, ``later`` after each
    one's newest event."""
    as_of = [(s.max_t or to_us(BASE)) + d for s, d in zip(states, later, strict=True)]
    for row, state, t in zip(aggregates_many(states, as_of), states, as_of, strict=True):
        assert _identical(row, state.aggregates(t))


# many events of a few kinds within months: repeated days, months and card categories
# inside the windows, which the distinct counts must not count twice
DENSE = histories(
    days=120,
    kinds=("card_payment", "digital_login", "salary_credited", "transfer_out", "fee_charged"),
    most=80,
)


@settings(max_examples=60, deadline=None)
@given(DENSE, st.lists(st.integers(0, 100 * 86_400_000_000), min_size=2, max_size=2))
def test_many_dense_states_at_once_equal_one_at_a_time(
    history: list[tuple[Event, datetime]], later: list[int]
) -> None:
    states = _folded(history)
    # a mask outside the table: mask codes of the batch's own
    _many_equal_one_at_a_time([*states, _with_odd_mask(states[0])], [*later, later[0]])


@settings(max_examples=60, deadline=None)
@given(
    histories(
        days=400,
        kinds=(
            "product_opened",
            "product_closed",
            "complaint_filed",
            "complaint_resolved",
            "customer_onboarded",
            "card_payment",
        ),
        most=30,
    )
)
def test_the_entities_read_between_events_follow_every_change(
    history: list[tuple[Event, datetime]],
) -> None:
    """A state's products, complaints and segment, read after each event (the live
    scorer's way: they are kept between reads), equal those of the same events
    folded afresh."""
    mine = sorted((h for h in history if h[0].customer_id == "C1"), key=lambda x: x[1])
    events = [e for e, _ in mine]
    state = CustomerState("C1")
    for i, event in enumerate(events):
        state.apply(event)
        if state.max_t is None:
            continue
        fresh = CustomerState.fold("C1", events[: i + 1])
        assert _identical(aggregates_many([state], [state.max_t])[0], fresh.aggregates(state.max_t))


@settings(max_examples=60, deadline=None)
@given(histories())
def test_many_states_serialised_at_once_give_each_ones_own_bytes(
    history: list[tuple[Event, datetime]],
) -> None:
    states = _folded(history)
    states.insert(1, CustomerState("C3"))  # never saw an event, between two that did
    # a state with a signal mask outside the table of masks events can have: its
    # masks are written through a palette of its own
    states.append(_with_odd_mask(states[0]))
    many = to_bytes_many(states)
    assert many == [to_bytes_many([s])[0] for s in states]
    for blob, state in zip(many, states, strict=True):
        copy = CustomerState.from_bytes(blob)
        assert copy.matrix().tolist() == state.matrix().tolist()
        assert copy.to_bytes() == blob


def test_many_states_keep_exact_sums_of_huge_amounts() -> None:
    big = 2**52  # two of these overflow float64's exact integers
    state = CustomerState("C1")
    for i in range(3):
        state.apply(
            EVENT_TYPES["card_payment"](
                event_id=f"E{i}",
                customer_id="C1",
                occurred_at=BASE + timedelta(days=i),
                amount_minor=big + i,
                balance_minor=big - i,
                currency="CNY",
                merchant_category="groceries",
                channel="pos",
            )
        )
    t = state.max_t
    assert t is not None
    assert _identical(aggregates_many([state], [t])[0], state.aggregates(t))


def _zone(name: str) -> tzinfo:
    if name.startswith(("+", "-")):
        hours = int(name[:3])
        return timezone(timedelta(hours=hours))
    try:
        return ZoneInfo(name)
    except ZoneInfoNotFoundError:  # pragma: no cover - no time zone database here
        pytest.skip(f"no time zone database entry for {name}")


@pytest.mark.parametrize("name", ["UTC", "Europe/Paris", "+08:00", "-05:00"])
def test_event_times_are_exact_microseconds_in_any_zone(name: str) -> None:
    zone = _zone(name)
    login = EVENT_TYPES["digital_login"]
    # around the DST changes of 2024 in Europe, and a microsecond apart
    for when in (
        datetime(2024, 3, 31, 0, 59, 59, 999_999, tzinfo=UTC),
        datetime(2024, 3, 31, 1, 0, 0, 1, tzinfo=UTC),
        datetime(2024, 10, 27, 0, 30, tzinfo=UTC),
        datetime(2024, 10, 27, 1, 30, tzinfo=UTC),
    ):
        exact = (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
        local = when.astimezone(zone)
        assert to_us(local) == exact
        state = CustomerState("C1")
        state.apply(login(event_id="e", customer_id="C1", occurred_at=local, channel="web"))
        assert state.max_t == exact
    with pytest.raises(DataError, match="naive"):
        to_us(datetime(2024, 1, 1))  # noqa: DTZ001


def test_as_of_before_the_newest_event_is_refused() -> None:
    state = CustomerState("C1")
    ev = EVENT_TYPES["digital_login"](
        event_id="e", customer_id="C1", occurred_at=BASE, channel="web"
    )
    state.apply(ev)
    with pytest.raises(DataError, match="before the newest event"):
        state.aggregates(BASE - timedelta(seconds=1))


def test_events_older_than_the_longest_window_are_too_late() -> None:
    login = EVENT_TYPES["digital_login"]
    state = CustomerState("C1")
    assert (
        state.apply(login(event_id="new", customer_id="C1", occurred_at=BASE, channel="web"))
        == "applied"
    )
    old = login(
        event_id="old", customer_id="C1", occurred_at=BASE - timedelta(days=181), channel="web"
    )
    assert state.apply(old) == "too_late"
    recent = login(
        event_id="r", customer_id="C1", occurred_at=BASE - timedelta(days=170), channel="web"
    )
    assert state.apply(recent) == "applied"
    assert state.features(BASE)["logins_90d"] == 1.0
    assert state.features(BASE)["logins_7d"] == 1.0


def test_memory_is_bounded_by_the_window() -> None:
    login = EVENT_TYPES["digital_login"]
    state = CustomerState("C1")
    for day in range(3 * 365):
        state.apply(
            login(
                event_id=f"e{day}",
                customer_id="C1",
                occurred_at=BASE + timedelta(days=day),
                channel="web",
            )
        )
    assert len(state.records) <= 180
    assert state.matrix().tolist() == [list(r) for r in state.records]  # expired from both
    assert state.features(BASE + timedelta(days=3 * 365 - 1))["logins_90d"] == 90.0
    assert state.features(BASE + timedelta(days=3 * 365))["logins_90d"] == 89.0


def test_corrupt_or_foreign_state_bytes_are_refused() -> None:
    good = CustomerState("C1").to_bytes()
    with pytest.raises(DataError, match="corrupt"):
        CustomerState.from_bytes(good[:1] + b"not zstd")
    with pytest.raises(DataError, match="version"):
        CustomerState.from_bytes(bytes([99]) + good[1:])
    with pytest.raises(DataError, match="older engine: rebuild the state by replaying the log"):
        CustomerState.from_bytes(bytes([1]) + good[1:])
    with pytest.raises(DataError, match="version"):
        CustomerState.from_bytes(b"")


# ----------------------------------------------------------------------------- conformance


@pytest.fixture(scope="module")
def simulated_parity(tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("parity") / "ev.parquet"
    write_parquet(SimConfig(customers=120, months=14, seed=21, dirty_rate=0.03), out, workers=1)
    return check_parity(pl.read_parquet(out), per_customer=6, seed=3)


@pytest.mark.parametrize("feature", FEATURES, ids=lambda f: f.name)
def test_conformance_online_equals_offline_on_a_simulated_bank(
    feature: Any, simulated_parity: Any
) -> None:
    assert simulated_parity.snapshots > 500
    assert simulated_parity.mismatches.get(feature.name, 0) == 0, simulated_parity.examples


@pytest.mark.parametrize("feature", FEATURES, ids=lambda f: f.name)
def test_conformance_definition_is_explained(feature: Any) -> None:
    assert len(feature.description) > 15
    assert feature.unit
    assert feature.name.isidentifier()
    assert feature.needs, "a feature must depend on some event type"
    values = finalize(
        {
            a.key: np.array([np.nan]) if a.key != "as_of.last_us.life" else np.array([0.0])
            for a in AGGREGATES
        }
    )
    assert values[feature.name].shape == (1,)


def test_feature_names_are_unique_and_enough() -> None:
    names = [f.name for f in FEATURES]
    assert len(names) == len(set(names))
    assert len(names) >= 60


def test_finalize_is_vectorised_and_matches_row_by_row(tmp_path: Path) -> None:
    out = tmp_path / "ev.parquet"
    write_parquet(SimConfig(customers=40, months=8, seed=4), out, workers=1)
    log = pl.read_parquet(out)
    snapshots, online, _ = replay_snapshots(log, per_customer=3, seed=0)
    matrix = np.vstack([online[(c, i)] for i, c in enumerate(snapshots["customer_id"])])
    together = finalize({a.key: matrix[:, j] for j, a in enumerate(AGGREGATES)})
    for i in range(matrix.shape[0]):
        alone = finalize({a.key: matrix[i : i + 1, j] for j, a in enumerate(AGGREGATES)})
        for name, values in alone.items():
            assert _same(values, together[name][i : i + 1]).all()


def test_features_of_a_hand_written_history_are_their_formulas_worked_by_hand() -> None:
    """A few formulas of every kind (count, ratio, trend, days since, mean, sample
    standard deviation, relative change, monthly rate, flag), worked out here by hand:
    the parity tests compare online with offline, which share ``finalize``."""

    def at(day: int, hour: int = 9) -> datetime:
        return BASE + timedelta(days=day, hours=hour)

    n = iter(range(100))
    cid = "C1"

    def ev(kind: str, when: datetime, **fields: Any) -> Event:
        return EVENT_TYPES[kind](
            event_id=f"E{next(n)}", customer_id=cid, occurred_at=when, **fields
        )

    def card(day: int, amount: int, balance: int) -> Event:
        return ev(
            "card_payment",
            at(day),
            amount_minor=amount,
            balance_minor=balance,
            currency="CNY",
            merchant_category="groceries",
            channel="pos",
        )

    history = [
        ev("customer_onboarded", BASE, segment="affluent", branch_id="B1", manager_id="M1"),
        ev("product_opened", at(0), product_id="P1", product_type="card"),
        *(ev("digital_login", at(d), channel="mobile") for d in (20, 50, 80, 95, 99)),
        card(5, 500, -10_000),  # overdrawn
        card(30, 1_000, 50_000),
        card(70, 3_000, 47_000),
        ev(
            "salary_credited",
            at(75),
            amount_minor=20_000,
            balance_minor=67_000,
            currency="CNY",
            employer_id="EMP1",
        ),
        card(90, 2_000, 65_000),
    ]
    as_of = at(100, 12)  # day 100 at noon: ages in days 80, 50, 20, 5 and 1 for the logins
    f = CustomerState.fold(cid, history).features(as_of)
    logins_30d, logins_90d = 3, 5  # days 80, 95, 99; and all five
    spend = [1_000, 3_000, 2_000]
    mean = sum(spend) / 3
    expected = {
        "logins_7d": 2,
        "logins_30d": logins_30d,
        "logins_90d": logins_90d,
        "login_trend": logins_30d / (logins_90d * 30 / 90),
        "days_since_login": 1 + 3 / 24,  # day 99 at 09:00
        "card_count_30d": 1,  # day 90 (day 70 is 30 days old: outside)
        "card_spend_90d": 6_000,  # not day 5's: 95 days old
        "card_spend_180d": 6_500,
        "card_avg_ticket_90d": mean,
        "card_ticket_std_90d": (sum((x - mean) ** 2 for x in spend) / 2) ** 0.5,
        "balance": 65_000,
        # the window's first day is day 71: the balance at its start is day 70's
        "balance_change_30d": (65_000 - 47_000) / 47_000,
        # from an overdraft (day 5, before day 11): the change is against its size
        "balance_change_90d": (65_000 - -10_000) / 10_000,
        "salary_monthly_180d": 20_000 / 6,
        "tenure_days": 100.5,
        "has_card": 1,
        "has_loan": 0,
        "open_products": 1,
    }
    for name, value in expected.items():
        assert f[name] == pytest.approx(value, rel=1e-12), name


def test_a_hash_collision_is_not_taken_for_a_duplicate() -> None:
    by_hash: dict[int, str] = {}
    pair: tuple[str, str] | None = None
    rng = np.random.default_rng(0)
    for _ in range(400_000):
        ident = f"evt-{int(rng.integers(0, 2**62)):x}"
        h = event_hash(ident)
        if h in by_hash:
            pair = (by_hash[h], ident)
            break
        by_hash[h] = ident
    assert pair is not None
    login = EVENT_TYPES["digital_login"]
    state = CustomerState("C1")
    first = login(event_id=pair[0], customer_id="C1", occurred_at=BASE, channel="web")
    second = login(
        event_id=pair[1], customer_id="C1", occurred_at=BASE + timedelta(hours=1), channel="web"
    )
    assert state.apply(first) == "applied"
    assert state.apply(second) == "applied"
    assert state.apply(second) == "duplicate"
    assert state.features(BASE + timedelta(hours=2))["logins_7d"] == 2.0
