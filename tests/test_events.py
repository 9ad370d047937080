"""The event schema: round trips, typed errors, published JSON Schema in sync."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import jsonschema
import msgspec
import orjson
import pytest

from features.errors import InvalidEventError
from features.events import (
    EVENT_TYPES,
    Event,
    decode,
    encode,
    events_from_frame,
    events_to_frame,
    json_schema,
)

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2025, 3, 1, 9, 30, tzinfo=timezone(timedelta(hours=8)))

SAMPLE_FIELDS: dict[str, dict[str, object]] = {
    "customer_onboarded": {"segment": "affluent", "branch_id": "BR001", "manager_id": "RM0001"},
    "manager_reassigned": {"manager_id": "RM0002", "previous_manager_id": "RM0001"},
    "product_opened": {"product_id": "P1", "product_type": "wealth"},
    "product_closed": {"product_id": "P1", "product_type": "card", "initiated_by": "customer"},
    "salary_credited": {"employer_id": "EMP1"},
    "transfer_in": {"counterparty": "external", "counterparty_bank": "ICBC"},
    "transfer_out": {"counterparty": "internal", "channel": "standing_order"},
    "card_payment": {"merchant_category": "dining", "channel": "contactless"},
    "cash_withdrawal": {"channel": "atm"},
    "fee_charged": {"fee_type": "overdraft"},
    "interest_paid": {},
    "loan_repayment": {"product_id": "L1", "days_late": 12},
    "complaint_filed": {"complaint_id": "K1", "category": "fees"},
    "complaint_resolved": {"complaint_id": "K1", "satisfied": False},
    "digital_login": {"channel": "web"},
    "branch_visit": {"branch_id": "BR001", "purpose": "advice"},
    "survey_answered": {"score": 3, "survey": "nps"},
}
MONEY = {"amount_minor": 123_456, "currency": "CNY", "balance_minor": -50}


def sample(kind: str, /, **changes: object) -> dict[str, object]:
    event_type = kind
    cls = EVENT_TYPES[event_type]
    fields = {f.name for f in msgspec.structs.fields(cls)}
    body: dict[str, object] = {
        "event_type": event_type,
        "event_id": f"E-{event_type}",
        "customer_id": "C00000001",
        "occurred_at": T0.isoformat(),
        "schema_version": 1,
        **SAMPLE_FIELDS[event_type],
    }
    if "amount_minor" in fields:
        body.update(MONEY)
    body.update(changes)
    return body


def test_every_event_type_has_a_sample() -> None:
    assert set(SAMPLE_FIELDS) == set(EVENT_TYPES)


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_round_trip_wire_and_frame(event_type: str) -> None:
    event = decode(orjson.dumps(sample(event_type)))
    assert isinstance(event, EVENT_TYPES[event_type])
    assert decode(encode(event)) == event
    assert list(events_from_frame(events_to_frame([event]))) == [event]


def test_money_is_exact_integers() -> None:
    event = decode(orjson.dumps(sample("card_payment", amount_minor=10**15 + 1)))
    assert event.amount_minor == 10**15 + 1  # type: ignore[union-attr]
    with pytest.raises(InvalidEventError) as err:
        decode(orjson.dumps(sample("card_payment", amount_minor=12.5)))
    assert (err.value.reason, err.value.field, err.value.value) == (
        "invalid_value",
        "amount_minor",
        12.5,
    )


@pytest.mark.parametrize(
    ("changes", "reason", "field", "allowed_part"),
    [
        ({"occurred_at": "2025-03-01T09:30:00"}, "naive_timestamp", "occurred_at", "offset"),
        ({"occurred_at": "yesterday"}, "invalid_value", "occurred_at", "RFC 3339"),
        ({"amount_minor": 0}, "invalid_value", "amount_minor", "> 0"),
        ({"currency": "rmb"}, "invalid_value", "currency", "ISO 4217"),
        ({"merchant_category": "casino"}, "invalid_value", "merchant_category", "dining"),
        ({"customer_id": ""}, "invalid_value", "customer_id", "1-64"),
        ({"event_type": "teleport"}, "unknown_event_type", "event_type", "card_payment"),
        ({"schema_version": 2}, "unsupported_schema_version", "schema_version", "1"),
    ],
)
def test_bad_events_name_field_value_and_allowed(
    changes: dict[str, object], reason: str, field: str, allowed_part: str
) -> None:
    with pytest.raises(InvalidEventError) as err:
        decode(orjson.dumps(sample("card_payment", **changes)))
    assert err.value.reason == reason
    assert err.value.field == field
    assert err.value.value == changes[field]
    assert allowed_part in err.value.allowed


def test_missing_field_and_broken_json() -> None:
    body = sample("salary_credited")
    del body["employer_id"]
    with pytest.raises(InvalidEventError) as err:
        decode(orjson.dumps(body))
    assert (err.value.reason, err.value.field) == ("missing_field", "employer_id")
    with pytest.raises(InvalidEventError) as err:
        decode(b'{"event_type": "digital_lo')
    assert err.value.reason == "malformed_json"
    with pytest.raises(InvalidEventError) as err:
        decode(b"[1, 2]")
    assert err.value.reason == "not_an_object"


def test_unknown_extra_fields_are_ignored_for_forward_compatibility() -> None:
    event = decode(orjson.dumps(sample("digital_login", device="ios")))
    assert event.customer_id == "C00000001"


def test_offsets_are_kept_and_instants_compare() -> None:
    event = decode(orjson.dumps(sample("digital_login")))
    assert event.occurred_at.utcoffset() == timedelta(hours=8)
    assert event.occurred_at == T0.astimezone(UTC)


def test_published_schema_is_in_sync_with_the_code() -> None:
    published = json.loads((ROOT / "docs" / "events.schema.json").read_text(encoding="utf-8"))
    assert published == json_schema(), "docs/events.schema.json is stale: run `make schema`"


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_published_schema_accepts_good_and_rejects_bad(event_type: str) -> None:
    schema = json_schema()
    jsonschema.validate(sample(event_type), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(sample(event_type, occurred_at=12), schema)


def test_event_union_covers_all_types() -> None:
    assert set(Event.__args__) == set(EVENT_TYPES.values())  # type: ignore[attr-defined]
