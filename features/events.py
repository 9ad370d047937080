"""The bank event schema: one envelope, one typed record per business signal.

Events are the source of truth of the engine. On the wire they are JSON objects
keyed by ``customer_id``; in the event log they are rows of one wide Parquet table
(:data:`LOG_SCHEMA`). Money is exact: integer minor units (``amount_minor``,
``balance_minor``) plus an ISO 4217 ``currency``; never binary floats.

>>> ev = decode(b'{"event_type": "digital_login", "event_id": "e1", "customer_id": "C1",'
...             b' "occurred_at": "2025-01-31T09:30:00+08:00", "schema_version": 1,'
...             b' "channel": "mobile"}')
>>> ev.channel, ev.occurred_at.utcoffset().total_seconds()
('mobile', 28800.0)
>>> decode(encode(ev)) == ev
True
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Annotated, Any, Final, Literal, TypeAlias, cast, get_args

import msgspec
import orjson
import polars as pl

from features.errors import InvalidEventError

__all__ = [
    "CHANNELS_DIGITAL",
    "CURRENCY_PATTERN",
    "EVENT_TYPES",
    "LOG_ONLY_COLUMNS",
    "LOG_SCHEMA",
    "MERCHANT_CATEGORIES",
    "PRODUCT_TYPES",
    "SCHEMA_VERSION",
    "SEGMENTS",
    "BranchVisit",
    "CardPayment",
    "CashWithdrawal",
    "ComplaintFiled",
    "ComplaintResolved",
    "CustomerOnboarded",
    "DigitalLogin",
    "Event",
    "FeeCharged",
    "InterestPaid",
    "LoanRepayment",
    "ManagerReassigned",
    "ProductClosed",
    "ProductOpened",
    "SalaryCredited",
    "SurveyAnswered",
    "TransferIn",
    "TransferOut",
    "decode",
    "empty_log",
    "encode",
    "events_from_frame",
    "events_to_frame",
    "json_schema",
    "log_records",
    "validate_log",
]

SCHEMA_VERSION: Final = 1
CURRENCY_PATTERN: Final = "^[A-Z]{3}$"

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:\-]+$")]
EventTime = Annotated[
    datetime,
    msgspec.Meta(tz=True, description="Event time, RFC 3339 with an offset (e.g. +08:00 or Z)"),
]
PositiveMinor = Annotated[
    int, msgspec.Meta(gt=0, description="Amount in minor units of the currency (e.g. fen, cents)")
]
BalanceMinor = Annotated[
    int,
    msgspec.Meta(
        description="Deposit balance after the movement, minor units; negative = overdrawn"
    ),
]
Currency = Annotated[str, msgspec.Meta(pattern=CURRENCY_PATTERN, description="ISO 4217 code")]

Segment = Literal["mass", "affluent", "private", "sme"]
ProductType = Literal["current", "savings", "card", "loan", "mortgage", "wealth"]
Counterparty = Literal["internal", "external"]
TransferChannel = Literal["mobile", "web", "branch", "standing_order"]
MerchantCategory = Literal[
    "groceries",
    "dining",
    "travel",
    "fuel",
    "retail",
    "online",
    "utilities",
    "entertainment",
    "health",
    "education",
    "other",
]
CardChannel = Literal["pos", "contactless", "online"]
CashChannel = Literal["atm", "branch", "other_bank_atm"]
FeeType = Literal[
    "maintenance", "overdraft", "atm", "fx", "card_annual", "late_payment", "transfer", "other"
]
ComplaintCategory = Literal["fees", "service", "digital", "card", "loan", "other"]
DigitalChannel = Literal["mobile", "web"]
VisitPurpose = Literal["advice", "cash", "service", "complaint", "other"]
SurveyKind = Literal["nps", "csat"]
InitiatedBy = Literal["customer", "bank"]

SEGMENTS: Final[tuple[str, ...]] = get_args(Segment)
PRODUCT_TYPES: Final[tuple[str, ...]] = get_args(ProductType)
MERCHANT_CATEGORIES: Final[tuple[str, ...]] = get_args(MerchantCategory)
CHANNELS_DIGITAL: Final[tuple[str, ...]] = get_args(DigitalChannel)


class _Envelope(msgspec.Struct, frozen=True, kw_only=True, tag_field="event_type"):
    """Fields every event carries."""

    event_id: Id
    customer_id: Id
    occurred_at: EventTime
    schema_version: Literal[1] = 1


class _Money(_Envelope, frozen=True, kw_only=True):
    amount_minor: PositiveMinor
    currency: Currency
    balance_minor: BalanceMinor


class CustomerOnboarded(_Envelope, frozen=True, kw_only=True, tag="customer_onboarded"):
    """A customer relationship starts: segment, home branch, assigned manager."""

    segment: Segment
    branch_id: Id
    manager_id: Id


class ManagerReassigned(_Envelope, frozen=True, kw_only=True, tag="manager_reassigned"):
    """The customer's relationship manager changes."""

    manager_id: Id
    previous_manager_id: Id | None = None
    branch_id: Id | None = None


class ProductOpened(_Envelope, frozen=True, kw_only=True, tag="product_opened"):
    """A product (account, card, loan, ...) is opened."""

    product_id: Id
    product_type: ProductType


class ProductClosed(_Envelope, frozen=True, kw_only=True, tag="product_closed"):
    """A product is closed; closing the last one ends the relationship."""

    product_id: Id
    product_type: ProductType
    initiated_by: InitiatedBy = "customer"


class SalaryCredited(_Money, frozen=True, kw_only=True, tag="salary_credited"):
    """A salary payment from an employer lands on the customer's account."""

    employer_id: Id


class TransferIn(_Money, frozen=True, kw_only=True, tag="transfer_in"):
    """Money arrives from another account (own bank = internal, other bank = external)."""

    counterparty: Counterparty
    counterparty_bank: Id | None = None
    channel: TransferChannel = "mobile"


class TransferOut(_Money, frozen=True, kw_only=True, tag="transfer_out"):
    """Money leaves to another account (own bank = internal, other bank = external)."""

    counterparty: Counterparty
    counterparty_bank: Id | None = None
    channel: TransferChannel = "mobile"


class CardPayment(_Money, frozen=True, kw_only=True, tag="card_payment"):
    """A card purchase, with its merchant category group."""

    merchant_category: MerchantCategory
    channel: CardChannel


class CashWithdrawal(_Money, frozen=True, kw_only=True, tag="cash_withdrawal"):
    """Cash taken out at an ATM or a counter."""

    channel: CashChannel


class FeeCharged(_Money, frozen=True, kw_only=True, tag="fee_charged"):
    """The bank charges a fee."""

    fee_type: FeeType


class InterestPaid(_Money, frozen=True, kw_only=True, tag="interest_paid"):
    """Deposit interest credited to the customer."""


class LoanRepayment(_Money, frozen=True, kw_only=True, tag="loan_repayment"):
    """An instalment of a loan or mortgage, on time (days_late = 0) or late."""

    product_id: Id
    days_late: Annotated[int, msgspec.Meta(ge=0, le=3650)] = 0


class ComplaintFiled(_Envelope, frozen=True, kw_only=True, tag="complaint_filed"):
    """The customer files a complaint."""

    complaint_id: Id
    category: ComplaintCategory


class ComplaintResolved(_Envelope, frozen=True, kw_only=True, tag="complaint_resolved"):
    """A complaint is closed, to the customer's satisfaction or not."""

    complaint_id: Id
    satisfied: bool


class DigitalLogin(_Envelope, frozen=True, kw_only=True, tag="digital_login"):
    """The customer signs in to mobile or web banking."""

    channel: DigitalChannel


class BranchVisit(_Envelope, frozen=True, kw_only=True, tag="branch_visit"):
    """The customer visits a branch."""

    branch_id: Id
    purpose: VisitPurpose = "other"


class SurveyAnswered(_Envelope, frozen=True, kw_only=True, tag="survey_answered"):
    """A satisfaction survey answer on a 0-10 scale."""

    score: Annotated[int, msgspec.Meta(ge=0, le=10)]
    survey: SurveyKind = "nps"


Event: TypeAlias = (
    CustomerOnboarded
    | ManagerReassigned
    | ProductOpened
    | ProductClosed
    | SalaryCredited
    | TransferIn
    | TransferOut
    | CardPayment
    | CashWithdrawal
    | FeeCharged
    | InterestPaid
    | LoanRepayment
    | ComplaintFiled
    | ComplaintResolved
    | DigitalLogin
    | BranchVisit
    | SurveyAnswered
)

_EVENT_CLASSES: Final[tuple[type[_Envelope], ...]] = Event.__args__
EVENT_TYPES: Final[dict[str, type[Any]]] = {
    msgspec.inspect.type_info(cls).tag: cls  # type: ignore[attr-defined]
    for cls in _EVENT_CLASSES
}

# ----------------------------------------------------------------------------- wire format

_decoder = msgspec.json.Decoder(Event)
_encoder = msgspec.json.Encoder()


def encode(event: Event) -> bytes:
    """Encode one event as compact JSON bytes."""
    return _encoder.encode(event)


def decode(raw: bytes | str) -> Event:
    """Decode and validate one event; raise :class:`InvalidEventError` if it is bad."""
    try:
        return cast(Event, _decoder.decode(raw))
    except msgspec.ValidationError as exc:
        raise _explain(raw, str(exc)) from exc
    except msgspec.DecodeError as exc:
        text = raw[:80] if isinstance(raw, str) else raw[:80].decode("utf-8", "replace")
        raise InvalidEventError("malformed_json", "$", text, f"a JSON object ({exc})") from exc


_MISSING = re.compile(
    r"Object missing required field `(?P<field>[^`]+)`(?: - at `(?P<path>[^`]+)`)?"
)
_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def _field_rules() -> dict[str, dict[str, str]]:
    """Human-readable 'what is allowed' per event type and field, read off the types."""
    rules: dict[str, dict[str, str]] = {}
    for tag, cls in EVENT_TYPES.items():
        info = msgspec.inspect.type_info(cls)
        per_field: dict[str, str] = {}
        for f in info.fields:  # type: ignore[attr-defined]
            per_field[f.name] = _describe(f.type)
        rules[tag] = per_field
    return rules


def _describe(t: msgspec.inspect.Type) -> str:
    if isinstance(t, msgspec.inspect.Metadata):
        return _describe(t.type)
    if isinstance(t, msgspec.inspect.UnionType):
        return " or ".join(_describe(x) for x in t.types)
    if isinstance(t, msgspec.inspect.LiteralType):
        return "one of: " + ", ".join(str(v) for v in t.values)
    if isinstance(t, msgspec.inspect.IntType):
        bounds = []
        if t.gt is not None:
            bounds.append(f"> {t.gt}")
        if t.ge is not None:
            bounds.append(f">= {t.ge}")
        if t.le is not None:
            bounds.append(f"<= {t.le}")
        return "integer" + (" " + " and ".join(bounds) if bounds else "")
    if isinstance(t, msgspec.inspect.StrType):
        if t.pattern == CURRENCY_PATTERN:
            return "ISO 4217 currency code (3 upper-case letters)"
        return f"string of 1-{t.max_length} characters [A-Za-z0-9_.:-]"
    if isinstance(t, msgspec.inspect.DateTimeType):
        return "RFC 3339 timestamp with an offset, e.g. 2025-01-31T09:30:00+08:00"
    if isinstance(t, msgspec.inspect.BoolType):
        return "true or false"
    if isinstance(t, msgspec.inspect.NoneType):
        return "null"
    return type(t).__name__


_RULES: Final = _field_rules()


def _explain(raw: bytes | str, message: str) -> InvalidEventError:
    """Turn msgspec's validation message into our typed error with field, value, allowed."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        obj = None
    if not isinstance(obj, dict):
        return InvalidEventError("not_an_object", "$", obj, "a JSON object with an event_type")
    event_type = obj.get("event_type")
    if event_type not in EVENT_TYPES:
        return InvalidEventError(
            "unknown_event_type" if "event_type" in obj else "missing_field",
            "event_type",
            event_type,
            "one of: " + ", ".join(sorted(EVENT_TYPES)),
        )
    rules = _RULES[event_type]
    missing = _MISSING.search(message)
    if missing:
        name = missing.group("field")
        return InvalidEventError("missing_field", name, None, rules.get(name, "required"))
    at = _AT.search(message)
    name = at.group("path").lstrip(".") if at else "$"
    value = obj.get(name) if at else obj
    allowed = rules.get(name, message)
    if name == "schema_version":
        return InvalidEventError(
            "unsupported_schema_version", name, value, f"one of: {SCHEMA_VERSION}"
        )
    if name == "occurred_at" and "timezone" in message:
        return InvalidEventError("naive_timestamp", name, value, allowed)
    return InvalidEventError("invalid_value", name, value, allowed)


def json_schema() -> dict[str, Any]:
    """The published JSON Schema of an event (``docs/events.schema.json``)."""
    schema = msgspec.json.schema(Event)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Bank event"
    schema["description"] = (
        f"Envelope + typed fields per event_type; schema_version {SCHEMA_VERSION}. "
        "Kafka key = customer_id. Money in integer minor units with an ISO 4217 currency."
    )
    return schema


# ----------------------------------------------------------------------------- event log

LOG_SCHEMA: Final[dict[str, pl.DataType]] = {
    "event_id": pl.String(),
    "customer_id": pl.String(),
    "event_type": pl.String(),
    "occurred_at": pl.Datetime("us", "UTC"),
    "schema_version": pl.Int16(),
    "amount_minor": pl.Int64(),
    "currency": pl.String(),
    "balance_minor": pl.Int64(),
    "segment": pl.String(),
    "branch_id": pl.String(),
    "manager_id": pl.String(),
    "previous_manager_id": pl.String(),
    "product_id": pl.String(),
    "product_type": pl.String(),
    "initiated_by": pl.String(),
    "employer_id": pl.String(),
    "counterparty": pl.String(),
    "counterparty_bank": pl.String(),
    "channel": pl.String(),
    "merchant_category": pl.String(),
    "fee_type": pl.String(),
    "days_late": pl.Int32(),
    "complaint_id": pl.String(),
    "category": pl.String(),
    "satisfied": pl.Boolean(),
    "score": pl.Int16(),
    "purpose": pl.String(),
    "survey": pl.String(),
    "published_at": pl.Datetime("us", "UTC"),
    "raw": pl.Binary(),
}
"""Columns of the Parquet event log: the envelope plus the union of every type's fields.

Two columns are the log's, not the event's: ``published_at`` is when the source
system delivered the record (null = at ``occurred_at``; later for late arrivals and
re-deliveries), and ``raw`` holds the original bytes of a record that could not be
typed (malformed input kept for the dead-letter path; its other columns are null).
"""

LOG_ONLY_COLUMNS: Final = frozenset({"published_at", "raw"})

_ALL_FIELDS = {
    f.name
    for cls in _EVENT_CLASSES
    for f in msgspec.inspect.type_info(cls).fields  # type: ignore[attr-defined]
}
if _ALL_FIELDS | {"event_type"} | LOG_ONLY_COLUMNS != set(
    LOG_SCHEMA
):  # pragma: no cover - guarded by tests
    raise RuntimeError(f"LOG_SCHEMA out of sync: {sorted(_ALL_FIELDS ^ set(LOG_SCHEMA))}")


def events_to_frame(events: Iterable[Event]) -> pl.DataFrame:
    """Events as a frame in the event-log layout (small logs, tests)."""
    rows = [msgspec.to_builtins(e, builtin_types=(datetime,)) for e in events]
    return pl.DataFrame(rows, schema=LOG_SCHEMA) if rows else empty_log()


def empty_log() -> pl.DataFrame:
    """An empty frame with the event-log columns."""
    return pl.DataFrame(schema=LOG_SCHEMA)


def events_from_frame(frame: pl.DataFrame) -> Iterator[Event]:
    """Events from rows of the event-log layout, validated (raises on a bad row)."""
    columns = [c for c in frame.columns if c in LOG_SCHEMA and c != "published_at"]
    for row in frame.select(columns).iter_rows(named=True):
        raw = row.pop("raw", None)
        yield decode(raw) if raw is not None else _from_row(row)


def _from_row(row: Mapping[str, Any]) -> Event:
    data = {k: v for k, v in row.items() if v is not None}
    try:
        return cast(Event, msgspec.convert(data, Event))
    except msgspec.ValidationError as exc:
        raise _explain(orjson.dumps(data, default=str), str(exc)) from exc


def validate_log(frame: pl.DataFrame) -> tuple[int, dict[str, int]]:
    """Validate every record of an event-log frame: (valid count, rejected count by reason).

    Duplicated event ids are valid records (delivery is at-least-once); they are
    counted as valid here and deduplicated where state is folded.
    """
    valid = 0
    rejected: dict[str, int] = {}
    columns = [c for c in frame.columns if c in LOG_SCHEMA and c != "published_at"]
    for row in frame.select(columns).iter_rows(named=True):
        raw = row.pop("raw", None)
        try:
            decode(raw) if raw is not None else _from_row(row)
        except InvalidEventError as exc:
            rejected[exc.reason] = rejected.get(exc.reason, 0) + 1
        else:
            valid += 1
    return valid, rejected


def log_records(frame: pl.DataFrame) -> Iterator[tuple[str | None, bytes]]:
    """(key, bytes) of each row as it goes on the wire: the original bytes for
    malformed records (``raw``), the JSON encoding for the others. The key is the
    customer id (None where a malformed record has none)."""
    columns = [c for c in frame.columns if c in LOG_SCHEMA and c != "published_at"]
    for row in frame.select(columns).iter_rows(named=True):
        raw = row.pop("raw", None)
        if raw is not None:
            yield row.get("customer_id"), bytes(raw)
        else:
            yield row["customer_id"], encode(_from_row(row))
