"""Online per-customer state: events applied one at a time, aggregates at any as-of.

The state keeps

* the events of the last 180 days (the longest window) as compact records, sorted:
  ``(time, balance, id hash, signal mask, value, aux)``. They answer every windowed
  aggregate and identify duplicates: a second copy of an event still in the window
  gives the very same record (the 32-bit hash of its id included), and a record
  already held is not applied again. Two different events that carry the same time,
  amounts, signals *and* id hash would be taken for one: the hash is there so that
  this takes a hash collision on top of identical contents;
* running lifetime aggregates, only for the signals and stats some feature reads
  (count, sum, first time, last time and last value);
* the entities whose state matters now: products (open or closed), complaints
  (open or resolved; once resolved before the window, only their id is kept: they
  stay closed whatever arrives for them later), the segment and the relationship
  manager.

``aux`` holds the type's extra quantity: the days late of a loan instalment, or the
merchant category (as a code) of a card payment, from which the distinct categories
of a window are counted.

Memory is bounded by the activity of 180 days, whatever the length of the history.

**Rule for old events.** An event whose day is 180 days or more before the newest
day seen for the customer is *too late*: it is not applied (``apply`` returns
``"too_late"``; the stream dead-letters it). Its duplicate could no longer be
recognised, and no windowed feature would see it. Logs replayed in delivery order
with less than 180 days of lateness therefore give exactly the offline features.

>>> from datetime import UTC, datetime, timezone, tzinfo
>>> from features.events import DigitalLogin
>>> s = CustomerState("C1")
>>> ev = DigitalLogin(event_id="e1", customer_id="C1",
...                   occurred_at=datetime(2025, 1, 1, tzinfo=UTC), channel="mobile")
>>> s.apply(ev), s.apply(ev)
('applied', 'duplicate')
>>> round(s.features(datetime(2025, 1, 11, tzinfo=UTC))["days_since_login"], 3)
10.0
"""

from __future__ import annotations

import bisect
import itertools
import threading
import zlib
from array import array
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timezone, tzinfo
from operator import attrgetter
from types import SimpleNamespace
from typing import Any, Final, Literal, cast

import msgspec
import numpy as np
import numpy.typing as npt
import zstandard

from features._definitions import (
    AGGREGATES,
    AS_OF,
    DAY_US,
    LONGEST_WINDOW,
    MONTH_DAYS,
    SIGNALS,
    finalize,
)
from features.errors import ChurnEngineError, DataError
from features.events import EVENT_TYPES, MERCHANT_CATEGORIES, PRODUCT_TYPES, SEGMENTS, Event

__all__ = ["FOLD_COMPILED", "STATE_VERSION", "CustomerState", "event_hash", "fold_event", "to_us"]

STATE_VERSION: Final = 3  # 3: zstd, records in 8 byte planes per column
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
Outcome = Literal["applied", "duplicate", "too_late"]

# record columns
_T, _BAL, _HASH, _MASK, _VALUE, _AUX = range(6)
Record = tuple[int, int, int, int, int, int]
_NONE: Final = -(1 << 63)  # "no event yet" for the newest time and the window floor


def to_us(when: datetime) -> int:
    """Exact microseconds since the epoch of an aware datetime."""
    epoch = _EPOCHS.get(when.tzinfo) or _epoch_for(when)
    delta = when - epoch
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


# The epoch as a datetime of the same zone, for zones of a fixed offset: subtracting
# two datetimes of one zone object skips the offset look-ups (zoneinfo's UTC, which
# polars hands out, costs 0.7 µs per subtraction otherwise). Other zones get the UTC
# epoch (offsets applied, as for any two zones).
_EPOCHS: Final[dict[tzinfo | None, datetime]] = {UTC: EPOCH}
_FIXED_ZONES: Final = frozenset({"UTC", "Etc/UTC", "Etc/GMT", "GMT", "Etc/Universal", "Etc/Zulu"})


def _epoch_for(when: datetime) -> datetime:
    zone = when.tzinfo
    if zone is None:
        raise DataError(f"naive datetime {when.isoformat()}: an offset is required")
    fixed = isinstance(zone, timezone) or getattr(zone, "key", None) in _FIXED_ZONES
    epoch = EPOCH.astimezone(zone) if fixed else EPOCH
    if len(_EPOCHS) < 1024:  # zones are few; a bound all the same
        _EPOCHS[zone] = epoch
    return epoch


def event_hash(event_id: str) -> int:
    """32-bit hash of an event id (CRC-32), stable across processes.

    Short, to keep the state small: a hash match counts as a duplicate only when
    the whole record (time, balance, signals, value) matches as well.
    """
    return zlib.crc32(event_id.encode())


_SIG_INDEX: Final = {s.name: i for i, s in enumerate(SIGNALS)}
# categorical values kept as codes in the aux column
_CODES: Final[dict[str, dict[object, int]]] = {
    "merchant_category": {c: i for i, c in enumerate(MERCHANT_CATEGORIES)}
}
# where each signal's value lives in a record; None: the signal counts events
_VALUE_COLUMN: Final[dict[str | None, int | None]] = {
    "amount_minor": _VALUE,
    "score": _VALUE,
    "balance_minor": _BAL,
    "days_late": _AUX,
    "merchant_category": _AUX,
    None: None,
}
_SEGMENT_CODE: Final = {s: i for i, s in enumerate(SEGMENTS)}
_PRODUCT_CODE: Final = {p: i for i, p in enumerate(PRODUCT_TYPES)}

# lifetime record per signal: [count, sum, first_t, last_t, last_v]; kept only for the
# signals of a lifetime aggregate, and only the fields that aggregate needs are
# serialised (the others read 0 after a round trip: nothing reads them)
_L_COUNT, _L_SUM, _L_FIRST, _L_LAST, _L_LASTV = range(5)
_LIFE_FIELDS_OF_STAT: Final = {
    "count": (_L_COUNT,),
    "sum": (_L_SUM,),
    "first_us": (_L_FIRST,),
    "last_us": (_L_LAST,),
    "last": (_L_LAST, _L_LASTV),
}
# the field of the lifetime record each lifetime stat reads
_LIFE_FIELD: Final = {
    "count": _L_COUNT,
    "sum": _L_SUM,
    "first_us": _L_FIRST,
    "last_us": _L_LAST,
    "last": _L_LASTV,
}
_LIFE: Final[dict[int, tuple[int, ...]]] = {}
for _a in AGGREGATES:
    if _a.window is None and _a.signal in _SIG_INDEX and _a.stat in _LIFE_FIELDS_OF_STAT:
        _i = _SIG_INDEX[_a.signal]
        _LIFE[_i] = tuple(sorted({*_LIFE.get(_i, ()), *_LIFE_FIELDS_OF_STAT[_a.stat]}))
_LIFE_TIMES: Final = frozenset({_L_FIRST, _L_LAST})


def _matches(sig_index: int, ev: Any) -> bool:
    sig = SIGNALS[sig_index]
    for name, allowed in sig.where:
        if getattr(ev, name, None) not in allowed:
            return False
    for name, banned in sig.where_not:
        if getattr(ev, name, None) in banned:
            return False
    return not (sig.positive and not getattr(ev, sig.value or "", 0) > 0)


# A plan per event type: which of the record's numbers the type has (shape), a key
# made of the fields the signal conditions read, and a cache from that key to what
# the event feeds: (signal mask, aux code, lifetime feeds ((signal, value column), ...)).
# Shapes: 0 no numbers, 1 money (aux from the cache), 2 money with an integer aux
# field, 3 a survey score.
_Fed = tuple[int, int, tuple[tuple[int, int], ...]]
_Plan = tuple[int, Callable[[Any], object] | None, dict[object, _Fed]]


def _plan(tag: str, cls: Any) -> _Plan:
    fields = set(cls.__struct_fields__)
    sigs = [s for s in SIGNALS if tag in s.event_types]
    keys = sorted(
        {name for s in sigs for name, _ in (*s.where, *s.where_not) if name in fields}
        | {s.value for s in sigs if s.value in _CODES}
    )
    positive = sorted({s.value for s in sigs if s.positive and s.value})
    aux = {s.value for s in sigs if _VALUE_COLUMN.get(s.value) == _AUX} - set(_CODES)
    if len(aux) > 1:  # pragma: no cover - definitions never ask
        raise ValueError(f"{tag}: more than one aux quantity: {aux}")
    shape = (2 if aux else 1) if "amount_minor" in fields else 3 if "score" in fields else 0
    key: Callable[[Any], object] | None = None
    if positive:
        get = attrgetter(*keys) if keys else (lambda _ev: None)
        key = lambda ev: (get(ev), *(getattr(ev, p) > 0 for p in positive))  # noqa: E731
    elif keys:
        key = attrgetter(*keys)
    return shape, key, {}


_PLANS: Final = {cls: _plan(tag, cls) for tag, cls in EVENT_TYPES.items()}
_TAG: Final[dict[type, str]] = {cls: tag for tag, cls in EVENT_TYPES.items()}


def _feeds(ev: Any) -> _Fed:
    """What an event feeds (the cache of its type misses: computed once per key)."""
    tag = _TAG[type(ev)]
    mask, code = 0, 0
    life: list[tuple[int, int]] = []
    for i, sig in enumerate(SIGNALS):
        if tag not in sig.event_types or not _matches(i, ev):
            continue
        mask |= 1 << i
        if sig.value in _CODES:
            code = _CODES[sig.value][getattr(ev, sig.value)]
        if i in _LIFE:
            column = _VALUE_COLUMN.get(sig.value, -2)
            # -1: the signal counts (value 1); -2: not a number (value 0)
            life.append((i, -1 if column is None else -2 if sig.value in _CODES else column))
    return mask, code, tuple(life)


def _choices(t: Any) -> tuple[object, ...] | None:
    """Every value a field of this type can take, or None when they are too many."""
    if isinstance(t, msgspec.inspect.Metadata):
        t = t.type
    if isinstance(t, msgspec.inspect.LiteralType):
        return tuple(t.values)
    if isinstance(t, msgspec.inspect.BoolType):
        return (False, True)
    if isinstance(t, msgspec.inspect.UnionType):
        parts = [_choices(x) for x in t.types]
        if all(p is not None for p in parts):
            return tuple(v for p in parts for v in p or ())
    if isinstance(t, msgspec.inspect.NoneType):
        return (None,)
    return None


def _reachable_masks() -> tuple[int, ...]:
    """Every signal mask a valid event can have: records store a code into this table."""
    masks: set[int] = set()
    for tag, cls in EVENT_TYPES.items():
        sigs = [(i, s) for i, s in enumerate(SIGNALS) if tag in s.event_types]
        types = {f.name: f.type for f in msgspec.inspect.type_info(cls).fields}  # type: ignore[attr-defined]
        names = sorted({n for _, s in sigs for n, _ in (*s.where, *s.where_not)} & set(types))
        positive = sorted({s.value for _, s in sigs if s.positive and s.value})
        options = [_choices(types[n]) for n in names] + [(0, 1)] * len(positive)
        if any(o is None for o in options):  # pragma: no cover - definitions never ask
            continue  # such masks go to a palette of the state's own
        for combo in itertools.product(*(o or () for o in options)):
            ev = SimpleNamespace(**dict(zip([*names, *positive], combo, strict=True)))
            masks.add(sum(1 << i for i, _ in sigs if _matches(i, ev)))
    return tuple(sorted(masks))


_MASKS: Final = np.array(_reachable_masks(), np.int64)
_MASK_MODULUS: Final = next(
    m for m in itertools.count(_MASKS.size) if np.unique(_MASKS % m).size == _MASKS.size
)
_MASK_SLOT: Final = np.zeros(_MASK_MODULUS, np.int64)
_MASK_SLOT[_MASKS % _MASK_MODULUS] = np.arange(_MASKS.size)


_ENTITY_TYPES: Final = frozenset(
    {
        "product_opened",
        "product_closed",
        "complaint_filed",
        "complaint_resolved",
        "customer_onboarded",
        "manager_reassigned",
    }
)
_ENTITY_CLASSES: Final = frozenset(EVENT_TYPES[t] for t in _ENTITY_TYPES)


class CustomerState:
    """One customer's state, folded from events (see the module docstring)."""

    __slots__ = (
        "_arrays",
        "_entity_row",
        "_flat",
        "_floor",
        "_top",
        "carry_balance",
        "closed_complaints",
        "complaints",
        "customer_id",
        "life",
        "manager",
        "products",
        "records",
        "segment",
    )

    def __init__(self, customer_id: str) -> None:
        self.customer_id = customer_id
        self._top = _NONE  # newest event time
        self._floor = _NONE  # first time still in the window: older events are too late
        self.records: list[Record] = []
        # the same records flat (6 int64 per record), kept beside the list as it
        # changes: numpy reads them in one copy (serialising, scoring many states)
        self._flat = array("q")
        self.life: dict[int, list[int]] = {}
        self.carry_balance: int | None = None  # the latest balance among expired records
        self.products: dict[str, tuple[int, int, int]] = {}  # id -> (t, is_closed, type)
        self.complaints: dict[str, tuple[int | None, int | None]] = {}  # id -> filed, resolved
        self.closed_complaints: set[str] = set()  # resolved before the window
        self.segment: tuple[int, int] | None = None  # (t, code)
        self.manager: tuple[int, str, str | None] | None = None  # (t, manager, branch)
        self._arrays: dict[str, npt.NDArray[np.int64]] | None = None
        # _entity_values() until an entity changes (most events are not about one)
        self._entity_row: list[float] | None = None

    @property
    def max_t(self) -> int | None:
        """Time (µs) of the newest event applied; None before the first."""
        return None if self._top == _NONE else self._top

    # ------------------------------------------------------------------ folding
    def apply(self, ev: Event) -> Outcome:
        """Fold one event in. Idempotent: the same event twice changes nothing.

        The compiled fold (``features/_fold.c``, when built) does the common case;
        what it hands over, and everything when it is not built, is
        :meth:`apply_python`'s.
        """
        return fold_event(self, ev)

    def apply_python(self, ev: Event) -> Outcome:
        """The fold, in Python: the definition the compiled one follows."""
        if ev.customer_id != self.customer_id:
            raise ChurnEngineError(
                f"event {ev.event_id} of customer {ev.customer_id} applied to {self.customer_id}"
            )
        when = ev.occurred_at
        delta = when - (_EPOCHS.get(when.tzinfo) or _epoch_for(when))
        t = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
        if t < self._floor:
            return "too_late"
        shape, key, cache = _PLANS[type(ev)]
        k = key(ev) if key is not None else None
        fed = cache.get(k)
        if fed is None:
            fed = cache[k] = _feeds(ev)
        mask, aux, life_feeds = fed
        h = zlib.crc32(ev.event_id.encode())
        if shape == 1:
            record: Record = (t, ev.balance_minor, h, mask, ev.amount_minor, aux)  # type: ignore[union-attr]
        elif shape == 0:
            record = (t, 0, h, mask, 0, 0)
        elif shape == 2:
            record = (t, ev.balance_minor, h, mask, ev.amount_minor, ev.days_late)  # type: ignore[union-attr]
        else:
            record = (t, 0, h, mask, ev.score, 0)  # type: ignore[union-attr]
        records = self.records
        # a duplicate gives the very same record: look for it where it would go
        if not records or record > records[-1]:
            records.append(record)
            self._flat.extend(record)
        elif record == records[-1]:
            return "duplicate"
        else:
            i = bisect.bisect_left(records, record)
            if records[i] == record:
                return "duplicate"
            records.insert(i, record)
            self._flat[6 * i : 6 * i] = array("q", record)
        self._arrays = None
        if life_feeds:
            life = self.life
            for i, column in life_feeds:
                n = record[column] if column >= 0 else 1 if column == -1 else 0
                rec = life.get(i)
                if rec is None:
                    life[i] = [1, n, t, t, n]
                    continue
                rec[_L_COUNT] += 1
                rec[_L_SUM] += n
                if t < rec[_L_FIRST]:
                    rec[_L_FIRST] = t
                if t > rec[_L_LAST] or (t == rec[_L_LAST] and n > rec[_L_LASTV]):
                    rec[_L_LAST] = t
                    rec[_L_LASTV] = n
        if type(ev) in _ENTITY_CLASSES:
            self._entities(ev, _TAG[type(ev)], t)
        if t > self._top:
            self._top = t
            floor = (t // DAY_US - LONGEST_WINDOW + 1) * DAY_US
            if floor > self._floor:
                self._floor = floor
                if records[0][0] < floor:
                    self._expire()
        return "applied"

    def _entities(self, ev: Any, etype: str, t: int) -> None:
        self._entity_row = None
        if etype in ("product_opened", "product_closed"):
            closed = int(etype == "product_closed")
            key = (t, closed, _PRODUCT_CODE[ev.product_type])
            old = self.products.get(ev.product_id)
            if old is None or key > old:
                self.products[ev.product_id] = key
        elif etype in ("complaint_filed", "complaint_resolved"):
            if ev.complaint_id not in self.closed_complaints:
                self._complaint(ev.complaint_id, etype == "complaint_filed", t)
        elif etype == "customer_onboarded":
            key2 = (t, _SEGMENT_CODE[ev.segment])
            if self.segment is None or key2 > self.segment:
                self.segment = key2
            self._manager(t, ev.manager_id, ev.branch_id)
        elif etype == "manager_reassigned":
            self._manager(t, ev.manager_id, ev.branch_id)

    def _complaint(self, cid: str, filing: bool, t: int) -> None:
        filed, resolved = self.complaints.get(cid, (None, None))
        if filing:
            self.complaints[cid] = (t if filed is None else min(filed, t), resolved)
        else:
            self.complaints[cid] = (filed, t if resolved is None else min(resolved, t))

    def _manager(self, t: int, manager: str, branch: str | None) -> None:
        if self.manager is None or (t, manager) > self.manager[:2]:
            self.manager = (t, manager, branch or (self.manager[2] if self.manager else None))

    def _expire(self) -> None:
        """Drop the records older than the window; keep the last balance among them."""
        horizon_t = self._floor
        records = self.records
        cut = bisect.bisect_left(records, (horizon_t,))
        # sorted by (time, balance): the last balance record expired is the latest,
        # and later than any expired before (records older than the window are
        # refused, so every record expires after those already gone)
        for j in range(cut - 1, -1, -1):
            if records[j][_MASK] & _BALANCE_BIT:
                self.carry_balance = records[j][_BAL]
                break
        del records[:cut]
        del self._flat[: 6 * cut]
        if self.complaints:
            self._entity_row = None
            for cid, (_filed, resolved) in list(self.complaints.items()):
                if resolved is not None and resolved < horizon_t:
                    del self.complaints[cid]
                    self.closed_complaints.add(cid)

    # ------------------------------------------------------------------ reading
    @property
    def manager_id(self) -> str | None:
        return self.manager[1] if self.manager else None

    @property
    def branch_id(self) -> str | None:
        return self.manager[2] if self.manager else None

    def matrix(self) -> npt.NDArray[np.int64]:
        """The records as an (n, 6) array of their own (a copy: the state goes on changing)."""
        return np.frombuffer(self._flat, np.int64).reshape(-1, 6).copy()

    def _columns(self) -> dict[str, npt.NDArray[np.int64]]:
        if self._arrays is None:
            arr = self.matrix()
            self._arrays = {
                "t": arr[:, _T],
                "day": arr[:, _T] // DAY_US,
                "bal": arr[:, _BAL],
                "mask": arr[:, _MASK],
                "value": arr[:, _VALUE],
                "aux": arr[:, _AUX],
            }
        return self._arrays

    def aggregates(self, as_of: datetime | int) -> npt.NDArray[np.float64]:
        """The aggregate vector (layout :data:`AGGREGATES`) at ``as_of``."""
        as_of_us = as_of if isinstance(as_of, int) else to_us(as_of)
        if as_of_us < self._top:
            raise DataError(
                f"as_of {as_of_us} is before the newest event applied ({self._top}) "
                f"for customer {self.customer_id}"
            )
        out = np.full(len(AGGREGATES), np.nan)
        cols = self._columns()
        as_of_day = as_of_us // DAY_US
        age = as_of_day - cols["day"]
        for k, agg in enumerate(AGGREGATES):
            out[k] = self._one(agg, cols, age, as_of_us, as_of_day)
        return out

    def _exact(self, agg: Any, as_of_us: int) -> float:
        """One aggregate at ``as_of_us``, the state's own (exact) way: where the
        many-state computation could lose exactness."""
        cols = self._columns()
        day = as_of_us // DAY_US
        return self._one(agg, cols, day - cols["day"], as_of_us, day)

    def _one(
        self,
        agg: Any,
        cols: dict[str, npt.NDArray[np.int64]],
        age: npt.NDArray[np.int64],
        as_of_us: int,
        as_of_day: int,
    ) -> float:
        if agg is AS_OF or agg.key == AS_OF.key:
            return float(as_of_us)
        stat, window = agg.stat, agg.window
        i = _SIG_INDEX[agg.signal]
        sig = SIGNALS[i]
        if stat in ("open", "open_types", "oldest_open_us", "segment") or stat.startswith("open_"):
            return self._entity(agg.signal, stat)
        if window is None:
            rec = self.life.get(i)
            if rec is None:
                return 0.0 if stat in ("count", "sum") else np.nan
            return float(rec[_LIFE_FIELD[stat]])
        sel = ((cols["mask"] >> i) & 1).astype(bool)
        if stat == "at_start":
            start_t = (as_of_day - window + 1) * DAY_US
            before = sel & (cols["t"] < start_t)
            if before.any():
                return float(cols["bal"][np.flatnonzero(before)[-1]])
            return float(self.carry_balance) if self.carry_balance is not None else np.nan
        sel &= age < window
        if stat == "count":
            return float(sel.sum())
        if stat == "days":
            return float(np.unique(cols["day"][sel]).size)
        if stat == "months":
            return float(np.unique(age[sel] // MONTH_DAYS).size)
        column = _VALUE_COLUMN[sig.value]
        if column is None:  # pragma: no cover - definitions never ask
            raise ValueError(f"{agg.key}: signal {sig.name} has no value")
        values = cols[("t", "bal", "hash", "mask", "value", "aux")[column]][sel]
        if stat == "distinct":
            return float(np.unique(values).size)
        if stat == "sum":
            return float(int(values.sum()))
        if stat == "sumsq":
            return float(sum(int(v) * int(v) for v in values.tolist()))
        if values.size == 0:
            return np.nan
        if stat == "min":
            return float(values.min())
        if stat == "max":
            return float(values.max())
        raise ValueError(f"unsupported aggregate {agg.key}")  # pragma: no cover

    def _entity(self, signal: str, stat: str) -> float:
        return self._entity_values()[_entity_piece(signal, stat)]

    def _entity_values(self) -> list[float]:
        """What the entity aggregates read, in one pass (see :func:`_entity_piece`):
        products held, their distinct types, held per type (``PRODUCT_TYPES``
        order), complaints open, the oldest open one's filing time, the segment.
        Kept until an event about an entity (or the expiry of complaints) changes them."""
        row = self._entity_row
        if row is None:
            row = self._entity_row = self._entity_values_now()
        return row

    def _entity_values_now(self) -> list[float]:
        per_type = [0] * len(PRODUCT_TYPES)
        for _t, closed, code in self.products.values():
            if not closed:
                per_type[code] += 1
        open_filed = [f for f, r in self.complaints.values() if f is not None and r is None]
        return [
            float(sum(per_type)),
            float(len(per_type) - per_type.count(0)),
            *map(float, per_type),
            float(len(open_filed)),
            float(min(open_filed)) if open_filed else np.nan,
            float(self.segment[1]) if self.segment else np.nan,
        ]

    def features(self, as_of: datetime | int) -> dict[str, float]:
        """The feature values at ``as_of`` (NaN where a feature has no value)."""
        aggs = self.aggregates(as_of)
        columns = {a.key: aggs[j : j + 1] for j, a in enumerate(AGGREGATES)}
        return {name: float(v[0]) for name, v in finalize(columns).items()}

    # ------------------------------------------------------------------ bytes
    def to_bytes(self) -> bytes:
        """Compact, versioned serialisation: a version byte, then zstd(msgpack); no pickle.

        Records are stored column by column (see :func:`_pack_many`); every other
        time is written as the index of a record with that time, or as its distance
        to the newest event (see :class:`_Times`). :func:`to_bytes_many` writes many
        states at once, the same bytes.
        """
        return to_bytes_many([self])[0]

    def _body(self, times: _Times, n: int, records: bytes, palette: list[int]) -> bytes:
        life = []
        for i in sorted(self.life):
            rec = self.life[i]
            life.append(i)
            life += [times.put(rec[f]) if f in _LIFE_TIMES else rec[f] for f in _LIFE[i]]
        return _ENCODER.encode(
            (
                self.customer_id,
                n,
                records,
                palette,
                life,
                self.carry_balance,
                [(k, times.put(t), c, p) for k, (t, c, p) in sorted(self.products.items())],
                [(k, times.opt(f), times.opt(r)) for k, (f, r) in sorted(self.complaints.items())],
                None if self.segment is None else times.pair(self.segment),
                None if self.manager is None else (times.put(self.manager[0]), *self.manager[1:]),
                sorted(self.closed_complaints),
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> CustomerState:
        version = data[0] if data else None
        if version != STATE_VERSION:
            older = (
                "; it was written by an older engine: rebuild the state by replaying the log"
                if isinstance(version, int) and 0 < version < STATE_VERSION
                else ""
            )
            raise DataError(
                f"customer state version {version!r}; this engine reads {STATE_VERSION}{older}"
            )
        try:
            fields = _DECODER.decode(_unzstd().decompress(data[1:]))
            s = cls(fields[0])
            s.records, s._flat = _unpack_records(fields[2], fields[1], fields[3])
            times = _Times([r[_T] for r in s.records])
            life, j = fields[4], 0
            while j < len(life):
                rec = [0, 0, 0, 0, 0]
                i, j = life[j], j + 1
                for f in _LIFE[i]:
                    rec[f] = times.get(life[j]) if f in _LIFE_TIMES else life[j]
                    j += 1
                s.life[i] = rec
            s.carry_balance = fields[5]
            s.products = {k: (times.get(t), c, p) for k, t, c, p in fields[6]}
            s.complaints = {k: (times.opt_get(f), times.opt_get(r)) for k, f, r in fields[7]}
            s.segment = None if fields[8] is None else times.unpair(fields[8])
            if fields[9] is not None:
                s.manager = (times.get(fields[9][0]), fields[9][1], fields[9][2])
            s.closed_complaints = set(fields[10])
        except (
            zstandard.ZstdError,
            msgspec.DecodeError,
            ValueError,
            TypeError,
            IndexError,
            KeyError,
        ) as exc:
            raise DataError(f"corrupt customer state: {exc}") from exc
        if s.records:
            s._top = s.records[-1][_T]
            s._floor = (s._top // DAY_US - LONGEST_WINDOW + 1) * DAY_US
        return s

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CustomerState) and self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def fold(cls, customer_id: str, events: Iterable[Event]) -> CustomerState:
        state = cls(customer_id)
        for ev in events:
            state.apply(ev)
        return state


def _compiled_fold() -> Callable[[CustomerState, Event], Outcome] | None:
    try:
        from features import _fold
    except ImportError:
        return None
    outcomes: tuple[Outcome, ...] = ("applied", "duplicate", "too_late")
    _fold.configure(_PLANS, _EPOCHS, _ENTITY_CLASSES, DAY_US, LONGEST_WINDOW, outcomes)
    return cast(Callable[[CustomerState, Event], Outcome], _fold.fold_event)


_COMPILED: Final = _compiled_fold()
#: folds one event into a state: the compiled fold when it is built, else the Python one
fold_event: Final = _COMPILED or CustomerState.apply_python
FOLD_COMPILED: Final = _COMPILED is not None


class _Times:
    """Times written small: the index of a record at that time (even numbers), else
    the distance to the newest record (odd numbers); lossless both ways."""

    __slots__ = ("newest", "times")

    def __init__(self, times: list[int]) -> None:
        self.times = times
        self.newest = times[-1] if times else 0

    def put(self, t: int) -> int:
        j = bisect.bisect_left(self.times, t)
        if j < len(self.times) and self.times[j] == t:
            return 2 * j
        return 2 * (self.newest - t) + 1

    def get(self, code: int) -> int:
        return self.times[code >> 1] if code % 2 == 0 else self.newest - (code >> 1)

    def opt(self, t: int | None) -> int | None:
        return None if t is None else self.put(t)

    def opt_get(self, code: int | None) -> int | None:
        return None if code is None else self.get(code)

    def pair(self, tv: tuple[int, int]) -> tuple[int, int]:
        return self.put(tv[0]), tv[1]

    def unpair(self, tv: list[int]) -> tuple[int, int]:
        return self.get(tv[0]), tv[1]


def _bits(*names: str) -> int:
    return sum(1 << _SIG_INDEX[n] for n in names)


_BALANCE_BIT: Final = _bits("balance")
_IN_BITS: Final = _bits("salary", "inflow_ext", "inflow_int", "interest")
_OUT_BITS: Final = _bits("card", "outflow_ext", "outflow_int", "cash", "fee", "loan_repayment")


def _unplanes(blob: bytes, k: int, n: int) -> npt.NDArray[np.int64]:
    planes = np.frombuffer(blob, np.uint8, k * n * 8).reshape(k, 8, n).transpose(0, 2, 1)
    return np.ascontiguousarray(planes).view("<i8").reshape(k, n).astype(np.int64)


def _diff(x: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """``np.diff(x, prepend=0)``, without its generality's cost (a third of packing)."""
    out = np.empty_like(x)
    out[:1] = x[:1]
    np.subtract(x[1:], x[:-1], out=out[1:])
    return out


def _zigzag(x: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    return (x << 1) ^ (x >> 63)


def _unzigzag(z: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    return (z >> 1) ^ -(z & 1)


def _mask_codes(mask: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], Any]:
    """Each signal mask's code in the table of the masks a valid event can have, and
    whether it is there at all (where it is not, the code means nothing). A perfect
    hash: the table's masks leave distinct remainders by ``_MASK_MODULUS`` (a
    search of the table cost five times as much)."""
    code = _MASK_SLOT[mask % _MASK_MODULUS]
    return code, _MASKS[code] == mask


def to_bytes_many(states: Sequence[CustomerState]) -> list[bytes]:
    """The bytes of each state (:meth:`CustomerState.to_bytes`), their records packed
    all together: what the write-behind flush of many states needs."""
    lengths = [len(s.records) for s in states]
    rows = np.frombuffer(b"".join([s._flat.tobytes() for s in states]), np.int64).reshape(-1, 6)
    times = rows[:, _T].tolist()
    compress = _zstd().compress
    out = []
    end = 0
    for state, n, (records, palette) in zip(
        states, lengths, _pack_many(rows, lengths), strict=True
    ):
        start, end = end, end + n
        body = state._body(_Times(times[start:end]), n, records, palette)
        # zstd level 1: a quarter of zlib level 1's time, and smaller
        out.append(bytes([STATE_VERSION]) + compress(body))
    return out


def _pack_many(rows: npt.NDArray[np.int64], lengths: list[int]) -> list[tuple[bytes, list[int]]]:
    """The records of several states, each state's lossless and small: (bytes, palette
    of signal masks) per state; ``rows`` are the states' records one after another,
    ``lengths`` how many each has.

    Times as differences (from the state's previous record: never negative); the
    balance as the difference from the previous balance minus the signed amount (zero
    for a well-behaved ledger), zigzag-encoded; all split into byte planes
    (little-endian) so that the compressor finds the zero bytes. The signal masks are
    codes into the table of the masks a valid event can have (or, should one of a
    state's be missing there, into a palette of the state's own).
    """
    total = rows.shape[0]
    if total == 0:
        return [(b"", [])] * len(lengths)
    sizes = np.asarray(lengths, np.int64)
    starts = np.cumsum(sizes) - sizes
    owner = np.repeat(np.arange(sizes.size), sizes)
    first = starts[sizes > 0]  # each state's first record: its differences start from 0
    t, bal, mask, value = rows[:, _T], rows[:, _BAL], rows[:, _MASK], rows[:, _VALUE]
    money = (mask & _BALANCE_BIT) != 0
    position = np.arange(total)
    last_money = np.maximum.accumulate(np.where(money, position, -1))
    last_money = np.where(last_money >= starts[owner], last_money, -1)  # not a state before
    carried = np.where(last_money >= 0, bal[np.maximum(last_money, 0)], 0)
    step = _diff(carried)
    step[first] = carried[first]
    sign = np.where(mask & _IN_BITS, 1, np.where(mask & _OUT_BITS, -1, 0))
    index, known = _mask_codes(mask)
    columns = np.empty((6, total), np.int64)
    columns[0] = _diff(t)
    columns[0, first] = t[first]
    columns[1] = _zigzag(np.where(money, step - sign * value, 0))
    columns[2] = rows[:, _HASH]
    columns[3] = value
    columns[4] = rows[:, _AUX]
    columns[5] = index
    palettes: dict[int, list[int]] = {}
    for j in [] if known.all() else np.unique(owner[~known]).tolist():  # a mask not in the table
        lo, hi = starts[j], starts[j] + sizes[j]
        palette, columns[5, lo:hi] = np.unique(mask[lo:hi], return_inverse=True)
        palettes[j] = palette.tolist()
    # byte planes: for each state, the first bytes of its column 0, their second
    # bytes, ... then column 1 (the zero high bytes of small numbers line up)
    planes = np.ascontiguousarray(
        np.ascontiguousarray(columns, "<i8").view(np.uint8).reshape(6, total, 8).transpose(0, 2, 1)
    )
    return [
        (planes[:, :, lo : lo + n].tobytes(), palettes.get(j, []))
        for j, (lo, n) in enumerate(zip(starts.tolist(), lengths, strict=True))
    ]


def _unpack_records(blob: bytes, n: int, palette: list[int]) -> tuple[list[Record], array[int]]:
    """One state's records of :func:`_pack_many`, as a list and flat (``CustomerState._flat``)."""
    if n == 0:
        return [], array("q")
    table = np.asarray(palette, np.int64) if palette else _MASKS
    if len(blob) != n * 48:
        raise ValueError(f"{len(blob)} bytes of records for {n} records")
    packed = _unplanes(blob, 6, n)
    cols = np.empty((6, n), np.int64)
    cols[_T] = np.cumsum(packed[0])
    residual = _unzigzag(packed[1])
    cols[_HASH] = packed[2]
    cols[_VALUE] = value = packed[3]
    cols[_AUX] = packed[4]
    cols[_MASK] = mask = table[packed[5]]
    money = (mask & _BALANCE_BIT) != 0
    sign = np.where(mask & _IN_BITS, 1, np.where(mask & _OUT_BITS, -1, 0))
    cols[_BAL] = np.where(money, np.cumsum(np.where(money, residual + sign * value, 0)), 0)
    rows = cols.T
    flat = array("q", np.ascontiguousarray(rows).tobytes())
    return cast("list[Record]", [tuple(r) for r in rows.tolist()]), flat


_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder()
_CODECS: Final = threading.local()  # zstd contexts are not for two threads at once


def _zstd() -> zstandard.ZstdCompressor:
    codec = getattr(_CODECS, "compress", None)
    if codec is None:
        codec = _CODECS.compress = zstandard.ZstdCompressor(level=1)
    return codec


def _unzstd() -> zstandard.ZstdDecompressor:
    codec = getattr(_CODECS, "decompress", None)
    if codec is None:
        codec = _CODECS.decompress = zstandard.ZstdDecompressor()
    return codec


# ---------------------------------------------------------------- many states at once
_EXACT_FLOAT: Final = 2**53  # sums below this are exact in float64


def _distinct_per_group(g: npt.NDArray[np.int64], v: npt.NDArray[np.int64], n: int) -> Any:
    """How many distinct ``v`` each group ``g`` has."""
    if g.size == 0:
        return np.zeros(n)
    order = np.lexsort((v, g))
    return _distinct_in_order(g[order], v[order], n)


def _distinct_in_order(gs: npt.NDArray[np.int64], vs: npt.NDArray[np.int64], n: int) -> Any:
    """How many distinct ``vs`` each group ``gs`` has, where equal (group, value)
    pairs are next to each other: a state's records are in time order, so its days,
    and its ages in months, come in runs."""
    if gs.size == 0:
        return np.zeros(n)
    first = np.ones(gs.size, bool)
    first[1:] = (gs[1:] != gs[:-1]) | (vs[1:] != vs[:-1])
    return np.bincount(gs[first], minlength=n).astype(np.float64)


def aggregates_many(states: list[CustomerState], as_of_us: list[int]) -> npt.NDArray[np.float64]:
    """The aggregate vectors of many states (row i: ``states[i]`` at ``as_of_us[i]``).

    Equal to ``np.vstack([s.aggregates(t) for s, t in zip(states, as_of_us)])``, by
    test; the windowed aggregates are computed for all states together (grouped
    numpy reductions over their concatenated records) instead of one state at a
    time, which is what a micro-batch of the live scorer needs. Where a float sum
    could lose exactness (beyond 2**53), that aggregate falls back to the exact
    per-state computation.
    """
    n = len(states)
    out = np.full((n, len(AGGREGATES)), np.nan)
    if n == 0:
        return out
    for s, t in zip(states, as_of_us, strict=True):
        if t < s._top:
            raise DataError(
                f"as_of {t} is before the newest event applied ({s._top}) "
                f"for customer {s.customer_id}"
            )
    lengths = np.fromiter((len(s.records) for s in states), np.int64, n)
    rows = np.frombuffer(b"".join([s._flat.tobytes() for s in states]), np.int64).reshape(-1, 6)
    g = np.repeat(np.arange(n, dtype=np.int64), lengths)
    t_col, bal, mask = rows[:, _T], rows[:, _BAL], rows[:, _MASK]
    day = t_col // DAY_US
    as_of = np.asarray(as_of_us, np.int64)
    as_of_day = as_of // DAY_US
    age = as_of_day[g] - day
    columns = (t_col, bal, rows[:, _HASH], mask, rows[:, _VALUE], rows[:, _AUX])
    carry = np.array(
        [np.nan if s.carry_balance is None else float(s.carry_balance) for s in states]
    )
    code, known = _mask_codes(mask)
    in_table = bool(known.all())  # else a mask outside the table: the codes mean nothing
    _counted_and_summed(out, rows, g, age, code, in_table, states, as_of_us)
    # lifetime aggregates: read from each state's records of them, a row per state
    out[:, _LIFE_AT] = [
        [default if (rec := life(i)) is None else rec[at] for i, at, default in _LIFE_READ]
        for life in [s.life.get for s in states]
    ]
    sig_rows: dict[int, npt.NDArray[np.int64]] = {}
    in_window: dict[tuple[int, int], npt.NDArray[np.int64]] = {}
    entities: npt.NDArray[np.float64] | None = None
    for k, agg in enumerate(AGGREGATES):
        if k in _SUMMED_AT or k in _LIFE_OF:
            continue
        window = getattr(agg, "window", None)
        stat = getattr(agg, "stat", None)
        if agg is AS_OF or agg.key == AS_OF.key:
            out[:, k] = as_of.astype(np.float64)
            continue
        if window is None:  # entities: products, complaints, segment
            if entities is None:
                entities = np.array([s._entity_values() for s in states], np.float64)
            out[:, k] = entities[:, _entity_piece(agg.signal, agg.stat)]
            continue
        i = _SIG_INDEX[agg.signal]
        # the rows of the signal, then of the signal in the window: positions into the
        # concatenated records, worked out once per signal and per (signal, window)
        of_signal = sig_rows.get(i)
        if of_signal is None:
            held = _SIGNAL_HOLDS[i][code] if in_table else (mask >> i) & 1
            of_signal = sig_rows[i] = np.flatnonzero(held)
        if stat == "at_start":
            start_t = (as_of_day - window + 1) * DAY_US
            before = of_signal[t_col[of_signal] < start_t[g[of_signal]]]
            last = np.full(n, -1, np.int64)
            np.maximum.at(last, g[before], before)
            out[:, k] = np.where(last >= 0, bal[np.maximum(last, 0)].astype(np.float64), carry)
            continue
        sel = in_window.get((i, window))
        if sel is None:
            sel = in_window[i, window] = of_signal[age[of_signal] < window]
        gs = g[sel]
        if stat == "days":
            out[:, k] = _distinct_in_order(gs, day[sel], n)
            continue
        if stat == "months":
            out[:, k] = _distinct_in_order(gs, age[sel] // MONTH_DAYS, n)
            continue
        values = columns[_VALUE_COLUMN[SIGNALS[i].value]][sel]  # type: ignore[index]
        if stat == "distinct":
            out[:, k] = _distinct_per_group(gs, values, n)
        elif stat == "sumsq":
            fv = values.astype(np.float64)
            fv = fv * fv
            if np.abs(fv).sum() < _EXACT_FLOAT:
                out[:, k] = np.bincount(gs, weights=fv, minlength=n)
            else:  # too large to sum exactly in floats: the exact per-state way
                out[:, k] = [s._exact(agg, t) for s, t in zip(states, as_of_us, strict=True)]
        elif stat in ("min", "max"):
            fill = np.inf if stat == "min" else -np.inf
            acc = np.full(n, fill)
            (np.minimum if stat == "min" else np.maximum).at(acc, gs, values.astype(np.float64))
            out[:, k] = np.where(np.isinf(acc), np.nan, acc)
        else:  # pragma: no cover - definitions never ask
            raise ValueError(f"unsupported aggregate {agg.key}")
    return out


def _entity_piece(signal: str, stat: str) -> int:
    """Where an entity aggregate is in :meth:`CustomerState._entity_values`."""
    n_types = len(PRODUCT_TYPES)
    if stat == "segment":
        return n_types + 4
    if signal == "complaint":
        return n_types + 2 if stat == "open" else n_types + 3
    if stat == "open":
        return 0
    if stat == "open_types":
        return 1
    return 2 + PRODUCT_TYPES.index(stat.removeprefix("open_"))


# lifetime aggregates by column: (signal index, field of the lifetime record, value
# without one), as CustomerState._one reads them
_LIFE_OF: Final = {
    k: (
        _SIG_INDEX[a.signal],
        _LIFE_FIELD[a.stat],
        0.0 if a.stat in ("count", "sum") else np.nan,
    )
    for k, a in enumerate(AGGREGATES)
    if a is not AS_OF and a.window is None and a.stat in _LIFE_FIELD
}
_LIFE_AT: Final = list(_LIFE_OF)
_LIFE_READ: Final = [_LIFE_OF[k] for k in _LIFE_AT]


# Windowed counts and sums: every (signal, window) of them at once. The records are
# binned by (state, age band, signal mask), the bands cut at the windows' lengths; a
# mask's bins count towards each signal it holds (a product with the masks' signal
# table), and a window is the running total of its bands. Sums are exact below 2**53
# as floats (each partial sum is an integer no larger than the absolute total); a cell
# at or over that falls back to the state's own exact computation, as elsewhere here.
_SUMMED: Final = [
    (k, a.stat, _SIG_INDEX[a.signal], a.window)
    for k, a in enumerate(AGGREGATES)
    if a is not AS_OF and a.window is not None and a.stat in ("count", "sum")
]
_SUMMED_AT: Final = frozenset(k for k, *_ in _SUMMED)
_SUMMED_SIGNALS: Final = np.array(sorted({i for _, _, i, _ in _SUMMED}), np.int64)
_SIGNAL_AT: Final = {int(i): j for j, i in enumerate(_SUMMED_SIGNALS)}
_BANDS: Final = np.array(sorted({w for *_, w in _SUMMED}), np.int64)
_BAND_OF: Final = {int(w): b for b, w in enumerate(_BANDS)}
# the record column each signal's value is in (signals without one: none)
_SUMMED_VALUE_COLUMN: Final = [_VALUE_COLUMN[SIGNALS[i].value] for i in _SUMMED_SIGNALS]
_SUMMED_COLUMNS: Final = sorted({c for c in _SUMMED_VALUE_COLUMN if c is not None})


def _holds(table: npt.NDArray[np.int64], signals: Any) -> npt.NDArray[np.int64]:
    """Whether each mask of ``table`` holds each of ``signals`` (indices): (masks,
    signals) of 0/1."""
    held: npt.NDArray[np.int64] = (table[:, None] >> signals) & 1
    return held


def _members(table: npt.NDArray[np.int64]) -> list[npt.NDArray[np.float64]]:
    """Which of the summed signals each mask of ``table`` holds, as (masks, signals) of
    0/1: for counting, then for summing each value column in turn."""
    held = _holds(table, _SUMMED_SIGNALS).astype(np.float64)
    return [held] + [held * [col == c for col in _SUMMED_VALUE_COLUMN] for c in _SUMMED_COLUMNS]


_MASK_MEMBERS: Final = _members(_MASKS)
# whether each mask of the table holds each signal, a row per signal (by mask code)
_SIGNAL_HOLDS: Final = np.ascontiguousarray(_holds(_MASKS, np.arange(len(SIGNALS))).T.astype(bool))
# each age's band, as searchsorted gives it (ages past the longest window: the last)
_BAND_AT: Final = np.searchsorted(_BANDS, np.arange(_BANDS[-1] + 1), side="right")


def _counted_and_summed(
    out: npt.NDArray[np.float64],
    rows: npt.NDArray[np.int64],
    g: npt.NDArray[np.int64],
    age: npt.NDArray[np.int64],
    code: npt.NDArray[np.int64],
    in_table: bool,
    states: list[CustomerState],
    as_of_us: list[int],
) -> None:
    """Fill the windowed ``count`` and ``sum`` columns of :func:`aggregates_many`
    (``code``: each record's mask code, meaningful if ``in_table``)."""
    n, n_bands = out.shape[0], _BANDS.size + 1
    if in_table:
        members = _MASK_MEMBERS
    else:  # a mask outside the table: a table of the batch's own
        table, code = np.unique(rows[:, _MASK], return_inverse=True)
        members = _members(table)
    n_masks = members[0].shape[0]
    band = _BAND_AT[np.clip(age, 0, _BANDS[-1])]
    key = (g * n_bands + band) * n_masks + code
    size = n * n_bands * n_masks

    def per_window(weights: npt.NDArray[np.float64] | None, of: npt.NDArray[np.float64]) -> Any:
        """(state, window, signal) totals: the bands' running totals, per signal."""
        binned = np.bincount(key, weights=weights, minlength=size).reshape(-1, n_masks)
        bands = (binned @ of).reshape(n, n_bands, -1)
        total = np.empty((n, n_bands - 1, bands.shape[2]))
        total[:, 0] = bands[:, 0]
        for b in range(1, n_bands - 1):  # the last band is older than every window
            np.add(total[:, b - 1], bands[:, b], out=total[:, b])
        return total

    counts = per_window(None, members[0])
    sums = np.zeros_like(counts)
    mags = None  # where a cell could reach 2**53 (none unless a whole column could)
    for c, of in zip(_SUMMED_COLUMNS, members[1:], strict=True):
        values = rows[:, c].astype(np.float64)
        sums += per_window(values, of)
        magnitudes = np.abs(values)
        if magnitudes.sum() >= _EXACT_FLOAT:  # the whole batch's: then find the cells
            mags = per_window(magnitudes, of) + (0 if mags is None else mags)
    for k, stat, i, window in _SUMMED:
        j, b = _SIGNAL_AT[i], _BAND_OF[window]
        if stat == "count":
            out[:, k] = counts[:, b, j]
            continue
        out[:, k] = sums[:, b, j]
        for row in [] if mags is None else np.flatnonzero(mags[:, b, j] >= _EXACT_FLOAT):
            # too large to sum exactly in floats: the exact per-state way
            out[row, k] = states[row]._exact(AGGREGATES[k], as_of_us[row])
