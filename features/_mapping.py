"""The declarative mapping of a bank extract (CSV, fixed-width, Parquet, JSON lines) to events.

A mapping is a YAML file, validated when it is loaded: an error names the key, the
value and what is allowed. See ``docs/mappings/`` for commented examples.

>>> m = ImportMapping.from_dict({
...     "customer_id": "CUST", "occurred_at": {"column": "DATE", "format": "%d/%m/%Y"},
...     "amount": {"column": "AMT"}, "currency": {"value": "EUR"},
...     "event_type": {"value": "card_payment"},
...     "fields": {"merchant_category": {"value": "retail"}, "channel": {"value": "pos"}}})
>>> m.source_columns()
('CUST', 'DATE', 'AMT')
>>> ImportMapping.from_dict({"customer_id": "C", "occurred_at": "T",
...                          "event_type": {"value": "card_paid"}})
Traceback (most recent call last):
...
features.errors.ConfigError: invalid config event_type.value='card_paid': allowed one of: branch_visit, card_payment, cash_withdrawal, complaint_filed, complaint_resolved, customer_onboarded, digital_login, fee_charged, interest_paid, loan_repayment, manager_reassigned, product_closed, product_opened, salary_credited, survey_answered, transfer_in, transfer_out
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, cast, get_args

import msgspec
import yaml

from features.errors import ConfigError
from features.events import EVENT_TYPES, LOG_ONLY_COLUMNS, LOG_SCHEMA

__all__ = [
    "FIELD_RULES",
    "MONEY_TYPES",
    "OPTIONAL_FIELDS",
    "AmountSpec",
    "FieldSpec",
    "ImportMapping",
    "SourceSpec",
    "TimeSpec",
    "load_mapping",
]

SourceFormat = Literal["auto", "csv", "fixed_width", "parquet", "ndjson"]
FORMATS: Final[tuple[str, ...]] = get_args(SourceFormat)
_ENVELOPE: Final = frozenset(
    {"event_id", "customer_id", "event_type", "occurred_at", "schema_version"}
)
_MONEY: Final = frozenset({"amount_minor", "currency", "balance_minor"})
OPTIONAL_FIELDS: Final[tuple[str, ...]] = tuple(
    c for c in LOG_SCHEMA if c not in _ENVELOPE | _MONEY | LOG_ONLY_COLUMNS
)
"""The typed fields a mapping may fill under ``fields:`` (those of each event type)."""


@dataclass(frozen=True, slots=True)
class FieldRule:
    """What one event type requires of one field (read off the event classes)."""

    required: bool
    default: object
    allowed: tuple[object, ...] | None  # literal values, None = any of its type
    kind: Literal["id", "str", "int", "bool", "literal"]
    low: int | None = None
    high: int | None = None


def _rule(f: Any) -> FieldRule:
    t = f.type
    if isinstance(t, msgspec.inspect.UnionType):  # X | None
        t = next(x for x in t.types if not isinstance(x, msgspec.inspect.NoneType))
    if isinstance(t, msgspec.inspect.Metadata):
        t = t.type
    default = None if f.default is msgspec.NODEFAULT else f.default
    if isinstance(t, msgspec.inspect.LiteralType):
        return FieldRule(f.required, default, tuple(t.values), "literal")
    if isinstance(t, msgspec.inspect.IntType):
        low = t.ge if t.ge is not None else (t.gt + 1 if t.gt is not None else None)
        return FieldRule(f.required, default, None, "int", low, t.le)
    if isinstance(t, msgspec.inspect.BoolType):
        return FieldRule(f.required, default, None, "bool")
    if isinstance(t, msgspec.inspect.StrType) and t.max_length == 64:
        return FieldRule(f.required, default, None, "id")
    return FieldRule(f.required, default, None, "str")


FIELD_RULES: Final[dict[str, dict[str, FieldRule]]] = {
    tag: {
        f.name: _rule(f)
        for f in msgspec.inspect.type_info(cls).fields  # type: ignore[attr-defined]
        if f.name not in _ENVELOPE
    }
    for tag, cls in EVENT_TYPES.items()
}
"""Per event type and typed field: required or not, default, allowed values."""
MONEY_TYPES: Final = frozenset(t for t, rules in FIELD_RULES.items() if "amount_minor" in rules)


def _allowed_keys(where: str, data: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    for key in data:
        if key not in allowed:
            name = f"{where}.{key}" if where else str(key)
            raise ConfigError(name, data[key], "keys: " + ", ".join(allowed))


def _as_dict(where: str, value: Any, shorthand: str | None = None) -> dict[str, Any]:
    if isinstance(value, str) and shorthand:
        return {shorthand: value}
    if not isinstance(value, dict):
        raise ConfigError(
            where, value, "a mapping" + (f" or a {shorthand} name" if shorthand else "")
        )
    return value


def _str(where: str, value: Any, allowed: str = "a non-empty string") -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(where, value, allowed)
    return value


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """How to read the extract.

    ``fixed_width`` splits lines on runs of whitespace (columns of a fixed-width
    report without spaces inside values); ``auto`` picks the format from the file
    suffix (``.parquet``, ``.jsonl``/``.ndjson``, else CSV).
    """

    format: SourceFormat = "auto"
    delimiter: str = ","
    header: bool = True
    columns: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SourceSpec:
        _allowed_keys("source", data, ("format", "delimiter", "header", "columns"))
        fmt = data.get("format", "auto")
        if fmt not in FORMATS:
            raise ConfigError("source.format", fmt, "one of: " + ", ".join(FORMATS))
        delimiter = data.get("delimiter", ",")
        if delimiter == "\\t":
            delimiter = "\t"
        if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in '\r\n"':
            raise ConfigError(
                "source.delimiter", delimiter, "one character, e.g. ',', ';', '|', '\\t'"
            )
        header = data.get("header", True)
        if not isinstance(header, bool):
            raise ConfigError("source.header", header, "true or false")
        columns = data.get("columns", [])
        if not isinstance(columns, list) or not all(isinstance(c, str) and c for c in columns):
            raise ConfigError("source.columns", columns, "a list of column names")
        if len(set(columns)) != len(columns):
            raise ConfigError("source.columns", columns, "distinct column names")
        if not header and not columns and fmt in ("auto", "csv", "fixed_width"):
            raise ConfigError("source.columns", None, "the column names when header is false")
        return cls(cast(SourceFormat, fmt), delimiter, header, tuple(columns))

    def resolve(self, path: Path) -> SourceFormat:
        """The format of this file."""
        if self.format != "auto":
            return self.format
        suffix = path.suffix.lower()
        if suffix == ".parquet" or path.is_dir():
            return "parquet"
        if suffix in (".jsonl", ".ndjson"):
            return "ndjson"
        return "csv"


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """A value from a column (optionally recoded by ``map``) or a fixed ``value``.

    With ``map``, a code not in the map is rejected (``unknown_code``) unless
    ``default`` is given.
    """

    column: str | None = None
    value: str | None = None
    map: tuple[tuple[str, str], ...] = ()
    default: str | None = None

    @classmethod
    def from_dict(cls, where: str, raw: Any) -> FieldSpec:
        data = _as_dict(where, raw, "column")
        _allowed_keys(where, data, ("column", "value", "map", "default"))
        column, value = data.get("column"), data.get("value")
        if (column is None) == (value is None):
            raise ConfigError(where, data, "exactly one of column or value")
        if column is not None:
            _str(f"{where}.column", column, "a column name")
        if value is not None and not isinstance(value, str | int | bool):
            raise ConfigError(f"{where}.value", value, "a text, number or true/false")
        code_map = data.get("map", {})
        if not isinstance(code_map, dict) or (code_map and column is None):
            raise ConfigError(f"{where}.map", code_map, "a mapping of codes to values, with column")
        default = data.get("default")
        return cls(
            column,
            None if value is None else _text(value),
            tuple((_text(k), _text(v)) for k, v in code_map.items()),
            None if default is None else _text(default),
        )

    def values(self) -> tuple[str, ...]:
        """Every value this spec can give (fixed, mapped and default)."""
        out = [v for _, v in self.map]
        out += [v for v in (self.value, self.default) if v is not None]
        return tuple(out)


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True, slots=True)
class TimeSpec:
    """The event time: a column, its strftime ``format`` (None = ISO 8601 / RFC 3339)
    and the IANA ``timezone`` of local times (ignored when the text has an offset)."""

    column: str
    format: str | None = None
    timezone: str = "UTC"

    @classmethod
    def from_dict(cls, where: str, raw: Any) -> TimeSpec:
        data = _as_dict(where, raw, "column")
        _allowed_keys(where, data, ("column", "format", "timezone"))
        column = _str(f"{where}.column", data.get("column"), "a column name")
        fmt = data.get("format")
        if fmt is not None and (not isinstance(fmt, str) or "%" not in fmt):
            raise ConfigError(f"{where}.format", fmt, "a strftime format, e.g. %d.%m.%Y %H:%M")
        tz = data.get("timezone", "UTC")
        try:
            zoneinfo.ZoneInfo(_str(f"{where}.timezone", tz, "an IANA time zone"))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(
                f"{where}.timezone", tz, "an IANA time zone, e.g. UTC, Asia/Shanghai"
            ) from exc
        return cls(column, fmt, tz)


@dataclass(frozen=True, slots=True)
class AmountSpec:
    """Money from a column: a decimal string (``decimal`` separator, ``thousands``
    grouping removed) turned into exact minor units with ``scale`` digits, or
    integer minor units already (``minor_units: true``). ``absolute: true`` takes
    the absolute value (signed ledgers whose direction is in the event type)."""

    column: str
    decimal: str = "."
    thousands: str = ""
    scale: int = 2
    minor_units: bool = False
    absolute: bool = False

    @classmethod
    def from_dict(cls, where: str, raw: Any) -> AmountSpec:
        data = _as_dict(where, raw, "column")
        _allowed_keys(
            where, data, ("column", "decimal", "thousands", "scale", "minor_units", "absolute")
        )
        column = _str(f"{where}.column", data.get("column"), "a column name")
        decimal = data.get("decimal", ".")
        if decimal not in (".", ","):
            raise ConfigError(f"{where}.decimal", decimal, "one of: '.', ','")
        thousands = data.get("thousands", "")
        if thousands not in ("", ",", ".", " ", "'", "_") or thousands == decimal:
            raise ConfigError(
                f"{where}.thousands",
                thousands,
                "one of: '', ',', '.', ' ', \"'\", '_' (not the decimal)",
            )
        scale = data.get("scale", 2)
        if not isinstance(scale, int) or isinstance(scale, bool) or not 0 <= scale <= 4:
            raise ConfigError(f"{where}.scale", scale, "digits of the minor unit, 0..4")
        flags = {}
        for name in ("minor_units", "absolute"):
            flags[name] = data.get(name, False)
            if not isinstance(flags[name], bool):
                raise ConfigError(f"{where}.{name}", flags[name], "true or false")
        return cls(column, decimal, thousands, scale, flags["minor_units"], flags["absolute"])


_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,40}$")
_TOP_KEYS: Final = (
    "source",
    "customer_id",
    "event_id",
    "id_prefix",
    "occurred_at",
    "event_type",
    "amount",
    "currency",
    "balance",
    "fields",
)


@dataclass(frozen=True, slots=True)
class ImportMapping:
    """Which columns of an extract make which parts of an event.

    ``event_id`` names a column of unique transaction references; without it, ids
    are generated from the row's mapped values (:func:`features.row_ids`):
    ``<id_prefix>-<32 hex digits>``, the same every time the same row is imported.
    """

    customer_id: str
    occurred_at: TimeSpec
    event_type: FieldSpec
    source: SourceSpec = field(default_factory=SourceSpec)
    event_id: str | None = None
    id_prefix: str = "imp"
    amount: AmountSpec | None = None
    currency: FieldSpec | None = None
    balance: AmountSpec | None = None
    fields: tuple[tuple[str, FieldSpec], ...] = ()

    @classmethod
    def from_dict(cls, data: Any) -> ImportMapping:
        if not isinstance(data, dict):
            raise ConfigError("mapping", data, "a YAML mapping with keys " + ", ".join(_TOP_KEYS))
        _allowed_keys("", data, _TOP_KEYS)
        for key in ("customer_id", "occurred_at", "event_type"):
            if key not in data:
                raise ConfigError(key, None, "required")
        event_type = FieldSpec.from_dict("event_type", data["event_type"])
        known = sorted(EVENT_TYPES)
        for v in event_type.values():
            where = "event_type.value" if event_type.value is not None else "event_type.map"
            if v not in EVENT_TYPES:
                raise ConfigError(where, v, "one of: " + ", ".join(known))
        types = set(event_type.values())
        money = types & MONEY_TYPES
        amount = currency = balance = None
        if "amount" in data:
            amount = AmountSpec.from_dict("amount", data["amount"])
        elif money:
            raise ConfigError("amount", None, f"an amount column (for {', '.join(sorted(money))})")
        if "currency" in data:
            currency = FieldSpec.from_dict("currency", data["currency"])
            for v in currency.values():
                if not re.fullmatch(r"[A-Z]{3}", v):
                    raise ConfigError("currency", v, "ISO 4217 codes (3 upper-case letters)")
        elif money:
            raise ConfigError(
                "currency", None, "a currency column or a fixed value, e.g. {value: CNY}"
            )
        if "balance" in data:
            balance = AmountSpec.from_dict("balance", data["balance"])
        fields = _as_dict("fields", data.get("fields", {}))
        specs: list[tuple[str, FieldSpec]] = []
        for name, raw in fields.items():
            if name not in OPTIONAL_FIELDS:
                raise ConfigError(f"fields.{name}", raw, "one of: " + ", ".join(OPTIONAL_FIELDS))
            spec = FieldSpec.from_dict(f"fields.{name}", raw)
            rules = [FIELD_RULES[t][name] for t in sorted(types) if name in FIELD_RULES[t]]
            if rules and all(r.allowed is not None for r in rules):
                # each value must suit one of the types (rows are checked one by one)
                allowed = sorted({str(a) for r in rules for a in r.allowed or ()})
                for v in spec.values():
                    if v not in allowed:
                        raise ConfigError(f"fields.{name}", v, "one of: " + ", ".join(allowed))
            specs.append((name, spec))
        given = {n for n, _ in specs}
        for t in sorted(types):
            for name, rule in FIELD_RULES[t].items():
                if rule.required and name not in _MONEY and name not in given:
                    raise ConfigError(
                        f"fields.{name}", None, f"a column or a value: {t} requires it"
                    )
        event_id = data.get("event_id")
        if event_id is not None:
            _str("event_id", event_id, "a column of unique transaction references")
        prefix = data.get("id_prefix", "imp")
        if not isinstance(prefix, str) or not _ID.match(prefix):
            raise ConfigError("id_prefix", prefix, "1-40 characters [A-Za-z0-9_.:-]")
        return cls(
            customer_id=_str("customer_id", data["customer_id"], "a column name"),
            occurred_at=TimeSpec.from_dict("occurred_at", data["occurred_at"]),
            event_type=event_type,
            source=SourceSpec.from_dict(_as_dict("source", data.get("source", {}))),
            event_id=event_id,
            id_prefix=prefix,
            amount=amount,
            currency=currency,
            balance=balance,
            fields=tuple(specs),
        )

    def event_types(self) -> frozenset[str]:
        """The event types this mapping can produce."""
        return frozenset(self.event_type.values())

    def lacks_balance(self) -> bool:
        """True when it makes money events without ``balance_minor``: such events are
        fine for training (the balance features are then unavailable) but not on the
        wire, where the published schema requires the balance."""
        return self.balance is None and bool(self.event_types() & MONEY_TYPES)

    def source_columns(self) -> tuple[str, ...]:
        """The extract's columns this mapping reads, in mapping order, each once."""
        cols: list[str | None] = [self.event_id, self.customer_id, self.occurred_at.column]
        cols += [self.event_type.column]
        for spec in (self.amount, self.balance):
            cols.append(spec.column if spec else None)
        cols.append(self.currency.column if self.currency else None)
        cols += [s.column for _, s in self.fields]
        return tuple(dict.fromkeys(c for c in cols if c is not None))


def load_mapping(path: Path) -> ImportMapping:
    """Read and validate a mapping file (YAML)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("--mapping", str(path), "a readable YAML file") from exc
    except yaml.YAMLError as exc:
        raise ConfigError("--mapping", str(path), f"valid YAML ({exc})") from exc
    return ImportMapping.from_dict(data)
