"""Import bank extracts (CSV, fixed-width, Parquet, JSON lines) into the event log.

An extract is read in batches of lines (polars' CSV reader splits a block of lines
on all cores), each batch turned into events with vectorised polars, then into an
Arrow table with generated ids (numpy) and written with pyarrow; the four overlap,
each in its own thread (the next batch is read, the previous one converted and the
one before written while one is turned into events: all four mostly release the
GIL), so at most five batches are in memory, whatever the size of the file. Each
row becomes one event or one reject (its 1-based row number, a stable reason code,
the field, the bad value and the original text of the row). The reasons:

``wrong_column_count``, ``malformed_json``, ``missing_value``, ``invalid_id``,
``invalid_timestamp``, ``invalid_amount``, ``unknown_code``, ``invalid_value``.

Row numbers: for CSV and fixed-width files the line number (a header is line 1;
blank lines are skipped, not counted as rows); for JSON lines the line number; for
Parquet the row's position (from 1). Values are stripped of surrounding whitespace.
CSV fields are split on every delimiter, then a field in double quotes is unquoted.

Generated event ids (:func:`row_ids`) hash the event's typed values with a
documented 128-bit function of our own (``features._rowid``), computed with numpy:
stable across polars versions and machines (polars' ``hash`` is not).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from features._mapping import (
    FIELD_RULES,
    MONEY_TYPES,
    AmountSpec,
    FieldSpec,
    ImportMapping,
    TimeSpec,
)
from features._rowid import U64, Lanes, hash_columns, hex_id_array, hex_ids
from features.errors import DataError
from features.events import LOG_SCHEMA

__all__ = ["REJECT_REASONS", "ImportReport", "import_events", "row_ids"]

logger = logging.getLogger(__name__)

REJECT_REASONS: Final = (
    "wrong_column_count",
    "malformed_json",
    "missing_value",
    "invalid_id",
    "invalid_timestamp",
    "invalid_amount",
    "unknown_code",
    "invalid_value",
)
BATCH_ROWS: Final = 250_000
_ID_RE: Final = r"^[A-Za-z0-9_.:\-]{1,64}$"
_SEP: Final = "\x1f"  # never in a text line we split
_TRUE: Final = ["true", "1", "yes", "y", "t"]
_FALSE: Final = ["false", "0", "no", "n", "f"]


# ----------------------------------------------------------------------------- reading


def _split(raw: pl.Expr, delimiter: str | None) -> pl.Expr:
    """A text line into its fields (``None`` = runs of whitespace)."""
    if delimiter is None:
        return raw.str.strip_chars().str.replace_all(r"\s+", _SEP).str.split(_SEP)
    return raw.str.split(delimiter)


def _unquote(e: pl.Expr) -> pl.Expr:
    e = e.str.strip_chars()
    quoted = e.str.starts_with('"') & e.str.ends_with('"') & (e.str.len_chars() >= 2)
    return (
        pl.when(quoted)
        .then(e.str.slice(1).str.slice(0, e.str.len_chars() - 2).str.replace_all('""', '"'))
        .otherwise(e)
    )


def _header(path: Path, delimiter: str | None) -> list[str]:
    with path.open("rb") as f:  # the first line only: invalid UTF-8 after it is no error
        line = f.readline().decode("utf-8-sig", "replace").rstrip("\r\n")
    names = line.split() if delimiter is None else line.split(delimiter)
    return [n.strip().strip('"') for n in names]


_Parse = Callable[[bytes, pl.DataFrame], pl.LazyFrame]


def _names(path: Path, mapping: ImportMapping) -> list[str] | None:
    """The columns of a delimited or fixed-width file (None for JSON lines and Parquet)."""
    fmt = mapping.source.resolve(path)
    if fmt == "parquet":
        return pl.scan_parquet(path).collect_schema().names()
    if fmt == "ndjson":
        return None
    if mapping.source.columns:
        return list(mapping.source.columns)
    return _header(path, None if fmt == "fixed_width" else mapping.source.delimiter)


def _read_block(block: bytes, **options: Any) -> pl.DataFrame:
    """``pl.read_csv`` of a block of lines: strict UTF-8 first (the faster reader),
    lossy (invalid bytes replaced) only for a block that is not valid UTF-8."""
    options |= {"has_header": False, "quote_char": None, "raise_if_empty": False}
    try:
        return pl.read_csv(block, encoding="utf8", **options)
    except pl.exceptions.ComputeError:
        return pl.read_csv(block, encoding="utf8-lossy", **options)


def _read_text(path: Path, header: bool, batch_rows: int, parse: _Parse) -> Iterator[pl.DataFrame]:
    """Batches of about ``batch_rows`` lines of a text file: ``row`` (the line
    number), ``_raw`` (the line) and what ``parse(block, lines)`` adds to them.

    The file is read in blocks of whole lines; polars splits a block into lines
    (``\\r\\n`` or ``\\n``) and ``parse`` into fields, both on all cores. Blank lines
    are dropped after numbering."""
    with path.open("rb") as f:
        first = 1
        if header:
            f.readline()
            first = 2
        size = batch_rows * 64  # bytes; then from the length of the lines read
        while block := f.read(max(size, 1)):
            if not block.endswith(b"\n"):
                block += f.readline()
            if first == 1:
                block = block.removeprefix(b"\xef\xbb\xbf")
            lines = _read_block(
                block, separator=_SEP, schema={"_raw": pl.String}, truncate_ragged_lines=True
            )
            n = lines.height
            frame = parse(block, lines).with_columns(
                pl.int_range(first, first + n, dtype=pl.Int64).alias("row")
            )
            if lines["_raw"].has_nulls():
                frame = frame.filter(pl.col("_raw").is_not_null())
            yield frame.collect()  # one query a batch: eager steps cost milliseconds each
            first += n
            size = batch_rows * len(block) // max(n, 1)


def _bare(block: bytes, delimiter: str) -> bool:
    """Whether no field of these lines begins or ends with whitespace, so that
    stripping would change none: no space, control or non-ASCII byte (a multi-byte
    character may be whitespace) next to a delimiter, a line end or an end of the
    block. Such bytes and the line ends are found in one pass with numpy (two
    comparisons of the block would cost as much as the rest of the check)."""
    b = np.frombuffer(block, np.uint8)
    at = np.flatnonzero(b.view(np.int8) <= 32)  # line ends among them
    here = b[at]
    at = at[here != 10]
    if not at.size:
        return True
    d, last = ord(delimiter), b.size - 1
    nxt = b[np.minimum(at + 1, last)]
    here = b[at]
    # a delimiter is no field's text, nor the \r of a \r\n (polars drops it)
    text = (here != d) & ((here != 13) | (nxt != 10) | (at == last))
    at, nxt = at[text], nxt[text]
    prev = b[np.maximum(at - 1, 0)]
    edge = (at == 0) | (at == last)
    for c in (10, 13, d):
        edge |= (prev == c) | (nxt == c)
    return not edge.any()


def _delimited(names: list[str], index: dict[str, int], delimiter: str) -> _Parse:
    """Fields of CSV lines, split by polars' CSV reader (no quote handling: fields
    are unquoted afterwards, as every line is split on every delimiter)."""
    schema = {f"_{i}": pl.String for i in range(len(names))} | {"_x": pl.String}
    # a line of the right number of fields is their lengths plus the delimiters
    length = pl.sum_horizontal(pl.col(c).str.len_bytes().fill_null(0) for c in schema)
    wrong = pl.col("_raw").str.len_bytes() != length + (len(names) - 1)

    def parse(block: bytes, lines: pl.DataFrame) -> pl.LazyFrame:
        fields = _read_block(
            block,
            separator=delimiter,
            schema=schema,
            truncate_ragged_lines=True,
            missing_columns="insert",
        )
        if fields.height != lines.height:  # cannot happen: the same lines, split
            raise DataError(f"could not split {lines.height} lines into fields")
        # one chunk a column (the reader gives one a thread): cheaper to turn into events
        fields = fields.rechunk()
        clean = (
            _unquote
            if b'"' in block
            else (lambda e: e)
            if _bare(block, delimiter)
            else (lambda e: e.str.strip_chars())
        )
        return pl.concat([lines.lazy(), fields.lazy()], how="horizontal").select(
            "_raw",
            *(clean(pl.col(f"_{i}")).alias("@" + c) for c, i in index.items()),
            pl.when(wrong).then(pl.lit("wrong_column_count")).alias("_shape"),
        )

    return parse


def _split_lines(names: list[str], index: dict[str, int]) -> _Parse:
    """Fields of fixed-width lines (runs of whitespace between them)."""
    parts = _split(pl.col("_raw"), None)

    def parse(block: bytes, lines: pl.DataFrame) -> pl.LazyFrame:
        return (
            lines.lazy()
            .with_columns(parts.alias("_parts"))
            .select(
                "_raw",
                *(
                    _unquote(pl.col("_parts").list.get(i, null_on_oob=True)).alias("@" + c)
                    for c, i in index.items()
                ),
                pl.when(pl.col("_parts").list.len() != len(names))
                .then(pl.lit("wrong_column_count"))
                .alias("_shape"),
            )
        )

    return parse


def _json_lines(wanted: tuple[str, ...]) -> _Parse:
    path_of = {c: "$." + c if c.isidentifier() else f"$['{c}']" for c in wanted}

    def parse(block: bytes, lines: pl.DataFrame) -> pl.LazyFrame:
        raw = pl.col("_raw")
        return lines.lazy().select(
            "_raw",
            *(raw.str.json_path_match(path_of[c]).str.strip_chars().alias("@" + c) for c in wanted),
            pl.when(
                raw.str.json_path_match("$").is_null() | ~raw.str.strip_chars().str.starts_with("{")
            )
            .then(pl.lit("malformed_json"))
            .alias("_shape"),
        )

    return parse


def _batches(path: Path, mapping: ImportMapping, batch_rows: int) -> Iterator[pl.DataFrame]:
    """The extract in batches: ``row``, ``_raw``, as text every source column the
    mapping reads (``@`` + its name, stripped), and ``_shape``: a reason (wrong
    column count, malformed JSON) or null."""
    fmt = mapping.source.resolve(path)
    wanted = mapping.source_columns()
    if fmt == "parquet":
        lf = pl.scan_parquet(path).with_row_index("row", offset=1)
        yield from lf.select(
            pl.col("row").cast(pl.Int64),
            pl.struct(wanted).struct.json_encode().alias("_raw"),
            *(pl.col(c).cast(pl.String).str.strip_chars().alias("@" + c) for c in wanted),
            pl.lit(None, pl.String).alias("_shape"),
        ).collect_batches(chunk_size=batch_rows)
        return
    if fmt == "ndjson":
        yield from _read_text(path, False, batch_rows, _json_lines(wanted))
        return
    names = _names(path, mapping) or []
    index = {c: names.index(c) for c in wanted}
    parse = (
        _split_lines(names, index)
        if fmt == "fixed_width"
        else _delimited(names, index, mapping.source.delimiter)
    )
    yield from _read_text(path, mapping.source.header, batch_rows, parse)


# ----------------------------------------------------------------------------- parsing


def _src(name: str) -> pl.Expr:
    """A source column, stripped (prefixed, so that no name of an extract clashes with ours)."""
    return pl.col("@" + name)


def _blank(e: pl.Expr) -> pl.Expr:
    """Null or empty (of a stripped text)."""
    return e.is_null() | (e == "")


def _minor(spec: AmountSpec) -> pl.Expr:
    """Exact minor units from a decimal string (null when it is not a number).

    The digits without the decimal separator are one integer; the number of
    fraction digits says by what power of ten to scale it (more than ``scale``
    digits only when the extra ones are zeros)."""
    s = _src(spec.column)
    if spec.minor_units:
        units = s.str.strip_prefix("+").cast(pl.Int64, strict=False)
        return units.abs() if spec.absolute else units
    if spec.thousands:
        s = s.str.replace_all(spec.thousands, "", literal=True)
    n = s.str.replace(spec.decimal, "", literal=True).cast(pl.Int64, strict=False)
    point = s.str.find(spec.decimal, literal=True)
    fraction = (s.str.len_bytes().cast(pl.Int64) - point - 1).fill_null(0)
    # powers of ten by the number of fraction digits, looked up (a gather, no hashing);
    # 19 and more digits index the null at the end of both tables
    at = fraction.clip(0, 19)
    up = pl.lit(
        pl.Series(
            [10 ** (spec.scale - k) if k <= spec.scale else None for k in range(20)], dtype=pl.Int64
        )
    ).gather(at)
    down = pl.lit(
        pl.Series(
            [10 ** (k - spec.scale) if spec.scale < k < 19 else None for k in range(20)],
            dtype=pl.Int64,
        )
    ).gather(at)
    # digits before the separator: "5", "-5.0", "5." are numbers, ".5" and "-.5" are not
    signed = s.str.starts_with("-") | s.str.starts_with("+")
    whole = point.is_null() | (point > signed.cast(pl.UInt32))
    value = (
        pl.when(~whole)
        .then(None)
        .when(fraction <= spec.scale)
        .then(n * up)
        .when(n % down == 0)
        .then(n // down)
    )
    return value.abs() if spec.absolute else value


_FEW_CODES: Final = 6


def _coded(
    spec: FieldSpec, staged: str | None = None, texts: pl.DataType | None = None
) -> tuple[pl.Expr, pl.Expr]:
    """(value, unknown code?) of a field spec; ``staged``: the column the value is
    staged as, which the unknown test then reads (rather than map the codes again);
    ``texts``: the type of a code's or a constant's value (an Enum of the texts it
    can be: each then hashed and written once, not once a row; None: text)."""
    texts = texts or pl.String()
    if spec.value is not None:
        return pl.lit(spec.value.strip(), texts), pl.lit(False)
    assert spec.column is not None  # noqa: S101 - from_dict guarantees it
    col = _src(spec.column)
    default = None if spec.default is None else pl.lit(spec.default.strip(), pl.String)
    if not spec.map:
        return (col if default is None else pl.when(_blank(col)).then(default).otherwise(col)), (
            pl.lit(False)
        )
    pairs = [(k.strip(), v.strip()) for k, v in spec.map]
    if len(pairs) <= _FEW_CODES:  # a few comparisons cost less than replace_strict's join
        chain: Any = pl.when(col == pairs[0][0]).then(pl.lit(pairs[0][1], texts))
        for k, v in pairs[1:]:
            chain = chain.when(col == k).then(pl.lit(v, texts))
        mapped = chain.otherwise(pl.lit(None, texts))
    else:
        mapped = col.replace_strict(
            [k for k, _ in pairs], [v for _, v in pairs], default=None, return_dtype=texts
        )
    if default is not None:
        return mapped.fill_null(default), pl.lit(False)
    return mapped, (mapped if staged is None else pl.col(staged)).is_null() & ~_blank(col)


_ISO_TZ: Final = ("%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z")
_ISO: Final = ("%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d")


def _time(spec: TimeSpec) -> tuple[pl.Expr, bool]:
    """(the event time, local?): for a strftime format without an offset, the local
    time, which :meth:`_Plan.apply` places in time, batch by batch."""
    s = _src(spec.column)
    if spec.format is None:  # ISO 8601 / RFC 3339, with or without an offset
        e = s.str.replace(r"Z$", "+00:00")
        aware = pl.coalesce(
            *(
                e.str.to_datetime(f, time_unit="us", time_zone="UTC", strict=False, cache=False)
                for f in _ISO_TZ
            )
        )
        naive = pl.coalesce(
            *(e.str.strptime(pl.Datetime("us"), f, strict=False, cache=False) for f in _ISO)
        )
        return pl.coalesce(aware, _localise(naive, spec)), False
    if "%z" in spec.format or "%:z" in spec.format or "%#z" in spec.format:
        return s.str.to_datetime(
            spec.format, time_unit="us", time_zone="UTC", strict=False, cache=False
        ), False
    return s.str.strptime(pl.Datetime("us"), spec.format, strict=False, cache=False), True


_LOCAL: Final = "_local"  # the local times of a batch, before they are placed in time
_FIXED_SPAN: Final = timedelta(days=3 * 366)


def _localise(local: pl.Expr, spec: TimeSpec) -> pl.Expr:
    """Local times of ``spec.timezone`` in UTC: the earlier of an ambiguous time,
    null for a time that does not exist there."""
    return local.dt.replace_time_zone(
        spec.timezone, ambiguous="earliest", non_existent="null"
    ).dt.convert_time_zone("UTC")


def _fixed_offset(local: pl.Series, spec: TimeSpec) -> timedelta | None:
    """The one UTC offset of ``spec.timezone`` over the span of these local times
    (and a day either side), when it has one: no change of offset at any of its
    probes, 15 minutes apart (the zone's rules applied to a few probes, not to each row).
    None when the offset changes, or the span is over three years (too many probes)."""
    lo, hi = local.min(), local.max()
    if not isinstance(lo, datetime) or not isinstance(hi, datetime) or hi - lo > _FIXED_SPAN:
        return None
    day = timedelta(days=1)
    probes = pl.datetime_range(lo - day, hi + day, "15m", time_unit="us", eager=True)
    placed = pl.select(_localise(pl.lit(probes), spec).dt.replace_time_zone(None)).to_series()
    if placed.has_nulls():
        return None
    offsets = (probes - placed).unique()
    offset = offsets[0] if len(offsets) == 1 else None
    return offset if isinstance(offset, timedelta) else None


def _among(e: pl.Expr, wanted: Iterable[str], possible: frozenset[str] | None) -> pl.Expr:
    """``e.is_in(wanted)`` where ``e`` is known to hold only ``possible`` texts (or
    null; None = any text): decided when the plan is made where it can be, else a
    few comparisons (cheaper than hashing every row)."""
    chosen = set(wanted) if possible is None else set(wanted) & possible
    if possible is not None and chosen == possible:
        return e.is_not_null()
    if not chosen:
        return pl.when(e.is_not_null()).then(pl.lit(False))
    if len(chosen) > 4:
        return e.is_in(sorted(chosen))
    return pl.any_horizontal(e == v for v in sorted(chosen))


@dataclass(frozen=True, slots=True)
class _Check:
    bad: pl.Expr
    reason: str
    field: str
    value: pl.Expr


def _transform(mapping: ImportMapping) -> _Plan:
    """The plan turning a batch (from :func:`_batches`) into typed event-log rows and
    rejects with ``_reason``, ``_field``, ``_value`` (the first failed check)."""
    types = sorted(mapping.event_types())
    # intermediate values become columns first: each is computed once, not in every
    # check; ``then`` ones after them, from them
    stage: dict[str, pl.Expr] = {}
    then: dict[str, pl.Expr] = {}

    def put(name: str, expr: pl.Expr, after: bool = False) -> pl.Expr:
        (then if after else stage)[name] = expr
        return pl.col(name)

    when, local = _time(mapping.occurred_at)
    if local:  # placed in time per batch, as "_t" (see _Plan.apply)
        put(_LOCAL, when)
    # the columns filled from codes or constants hold Enums of their few texts
    enums = _coded_texts(mapping)
    etype_e, unknown_type_e = _coded(mapping.event_type, "_etype", enums.get("event_type"))
    etype, unknown_type = put("_etype", etype_e), put("_unknown_type", unknown_type_e, True)
    cust = _src(mapping.customer_id)
    out: dict[str, pl.Expr] = {
        "customer_id": cust,
        "event_type": etype,
        "occurred_at": pl.col("_t") if local else put("_t", when),
    }
    checks = [
        _Check(pl.col("_shape").is_not_null(), "", "$", pl.lit(None, pl.String)),
        _Check(_blank(cust), "missing_value", "customer_id", pl.lit(None, pl.String)),
        _Check(~cust.str.contains(_ID_RE), "invalid_id", "customer_id", cust),
    ]
    if mapping.event_id is not None:
        eid = _src(mapping.event_id)
        out["event_id"] = eid
        checks += [
            _Check(_blank(eid), "missing_value", "event_id", pl.lit(None, pl.String)),
            _Check(~eid.str.contains(_ID_RE), "invalid_id", "event_id", eid),
        ]
    et_col = mapping.event_type.column
    if et_col is not None:
        raw_code = _src(et_col)
        checks += [
            _Check(_blank(raw_code) & etype.is_null(), "missing_value", "event_type", raw_code),
            _Check(unknown_type, "unknown_code", "event_type", raw_code),
        ]
    tcol = _src(mapping.occurred_at.column)
    checks += [
        _Check(_blank(tcol), "missing_value", "occurred_at", pl.lit(None, pl.String)),
        _Check(pl.col("_t").is_null(), "invalid_timestamp", "occurred_at", tcol),
    ]
    # a coded or constant type is one of the mapping's; a column's may be any text
    et_spec = mapping.event_type
    possible_types = frozenset(types) if et_spec.value is not None or et_spec.map else None
    is_money = _among(etype, MONEY_TYPES, possible_types)
    money_types = [t for t in types if t in MONEY_TYPES]
    if mapping.amount is not None and money_types:
        amount, acol = put("_amount", _minor(mapping.amount)), _src(mapping.amount.column)
        out["amount_minor"] = pl.when(is_money).then(amount)
        checks += [
            _Check(
                is_money & _blank(acol), "missing_value", "amount_minor", pl.lit(None, pl.String)
            ),
            _Check(
                is_money & ~(amount > 0).fill_null(False), "invalid_amount", "amount_minor", acol
            ),
        ]
    if mapping.currency is not None and money_types:
        currency = mapping.currency
        if currency.value is not None:  # a constant, an ISO code (checked with the mapping)
            out["currency"] = pl.when(is_money).then(
                pl.lit(currency.value.strip(), enums["currency"])
            )
        else:
            ccy_e, unknown_ccy_e = _coded(currency, "_ccy")
            ccy, unknown_ccy = put("_ccy", ccy_e), put("_unknown_ccy", unknown_ccy_e, True)
            out["currency"] = pl.when(is_money).then(ccy.str.to_uppercase())
            checks += [
                _Check(is_money & unknown_ccy, "unknown_code", "currency", ccy),
                _Check(
                    is_money & _blank(ccy), "missing_value", "currency", pl.lit(None, pl.String)
                ),
                _Check(
                    is_money & ~ccy.str.to_uppercase().str.contains(r"^[A-Z]{3}$").fill_null(False),
                    "invalid_value",
                    "currency",
                    ccy,
                ),
            ]
    if mapping.balance is not None and money_types:
        bal, bcol = put("_bal", _minor(mapping.balance)), _src(mapping.balance.column)
        out["balance_minor"] = pl.when(is_money).then(bal)
        checks += [
            _Check(
                is_money & _blank(bcol), "missing_value", "balance_minor", pl.lit(None, pl.String)
            ),
            _Check(is_money & bal.is_null(), "invalid_amount", "balance_minor", bcol),
        ]
    specs = dict(mapping.fields)
    for name in sorted(
        {f for t in types for f in FIELD_RULES[t]} - {"amount_minor", "currency", "balance_minor"}
    ):
        # a blank text is no value; codes and constants are never blank
        spec = specs.get(name)
        coded = spec is not None and (spec.value is not None or bool(spec.map))
        blank = not (coded and spec is not None and all(v.strip() for v in spec.values()))
        value, unknown = (
            _coded(spec, None if blank else f"_v_{name}", enums.get(name))
            if spec is not None
            else (pl.lit(None, pl.String), pl.lit(False))
        )
        if blank:
            value = pl.when(value != "").then(value)
        value = put(f"_v_{name}", value)
        # the texts a code or a constant can give (None: those of a column, any)
        possible = frozenset(v.strip() for v in spec.values()) if coded and spec else None
        unknown = put(f"_u_{name}", unknown, True)
        typed: pl.Expr | None = None
        per_type = pl.lit(None, pl.String)
        bad_value = pl.lit(False)
        missing = pl.lit(False)
        for t in types:
            rule = FIELD_RULES[t].get(name)
            if rule is None:
                continue
            here = etype == t
            default = (
                None
                if rule.default is None
                else str(rule.default).lower()
                if isinstance(rule.default, bool)
                else str(rule.default)
            )
            filled = value if default is None else value.fill_null(pl.lit(default))
            possible_here = (
                possible | {default} if possible is not None and default is not None else possible
            )
            per_type = pl.when(here).then(filled).otherwise(per_type)
            if rule.required:
                missing = missing | (here & filled.is_null())
            if rule.kind == "literal" and rule.allowed is not None:
                bad_value = bad_value | (
                    here
                    & filled.is_not_null()
                    & ~_among(filled, [str(a) for a in rule.allowed], possible_here)
                )
            elif rule.kind == "id":
                text = filled.cast(pl.String) if name in enums else filled
                bad_value = bad_value | (here & filled.is_not_null() & ~text.str.contains(_ID_RE))
            elif rule.kind == "int":
                n = filled.cast(pl.Int64, strict=False)
                ok = n.is_not_null()
                if rule.low is not None:
                    ok = ok & (n >= rule.low)
                if rule.high is not None:
                    ok = ok & (n <= rule.high)
                bad_value = bad_value | (here & filled.is_not_null() & ~ok.fill_null(False))
            elif rule.kind == "bool":
                ok = filled.str.to_lowercase().is_in(_TRUE + _FALSE)
                bad_value = bad_value | (here & filled.is_not_null() & ~ok)
        dtype = LOG_SCHEMA[name]
        if dtype == pl.Boolean():
            typed = per_type.str.to_lowercase().is_in(_TRUE)
            typed = pl.when(per_type.is_not_null()).then(typed)
        elif dtype.is_integer():
            typed = per_type.cast(pl.Int64, strict=False)
        else:
            typed = per_type
        out[name] = typed
        column = specs[name].column if name in specs else None
        raw_value = _src(column) if column is not None else value
        checks += [
            _Check(
                unknown
                & _among(etype, [t for t in types if name in FIELD_RULES[t]], possible_types),
                "unknown_code",
                name,
                raw_value,
            ),
            _Check(missing, "missing_value", name, pl.lit(None, pl.String)),
            _Check(bad_value, "invalid_value", name, raw_value),
        ]
    # the columns the mapping can fill (the others are left out: see _arrow_schema)
    out["schema_version"] = pl.lit(1, pl.Int16)
    columns = [out[c].cast(enums.get(c, dt)).alias(c) for c, dt in LOG_SCHEMA.items() if c in out]
    bad = [c.bad.fill_null(False) for c in checks]
    reason: pl.Expr = pl.lit(None, pl.String)
    fld: pl.Expr = pl.lit(None, pl.String)
    val: pl.Expr = pl.lit(None, pl.String)
    for c, b in zip(reversed(checks), reversed(bad), strict=True):
        r = pl.col("_shape") if c.reason == "" else pl.lit(c.reason)
        reason = pl.when(b).then(r).otherwise(reason)
        fld = pl.when(b).then(pl.lit(c.field)).otherwise(fld)
        val = pl.when(b).then(c.value.cast(pl.String)).otherwise(val)
    return _Plan(
        zone=mapping.occurred_at if local else None,
        stage=stage,
        then=then,
        bad=pl.any_horizontal(bad).alias("_bad"),
        columns=columns,
        reasons=[reason.alias("_reason"), fld.alias("_field"), val.alias("_value")],
    )


@dataclass(frozen=True, slots=True)
class _Plan:
    """How a batch becomes events: ``stage`` columns first (each intermediate value
    computed once) and ``then`` columns from them, then ``bad`` (any check failed);
    valid rows select ``columns`` (those of the event log the mapping fills), the
    others ``reasons`` (the first failed check)."""

    zone: TimeSpec | None  # local times to place in time (``_local`` to ``_t``)
    stage: dict[str, pl.Expr]
    then: dict[str, pl.Expr]  # from ``stage`` columns
    bad: pl.Expr
    columns: list[pl.Expr]
    reasons: list[pl.Expr]

    @property
    def filled(self) -> list[str]:
        """The event-log columns these events fill (the others are left out)."""
        return [c.meta.output_name() for c in self.columns]

    def apply(self, batch: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        """(events, rejects with row, _raw, _reason, _field, _value) of a batch."""
        staged = batch.lazy().with_columns(**self.stage).with_columns(**self.then).collect()
        # lazy frames, not eager operations: each of those costs milliseconds a batch
        lazy = staged.lazy()
        if self.zone is not None:
            # by the one offset of the zone over the batch's times where it has one
            # (a subtraction), else by the zone's rules (a look-up per row)
            local = staged[_LOCAL]
            offset = _fixed_offset(local, self.zone)
            placed = (
                _localise(pl.col(_LOCAL), self.zone)
                if offset is None
                else (pl.col(_LOCAL) - offset).dt.replace_time_zone("UTC")
            )
            lazy = lazy.with_columns(placed.alias("_t"))
        staged = lazy.with_columns(self.bad).collect()
        events = staged.lazy().filter(~pl.col("_bad")).select(self.columns)
        rejects = staged.lazy().filter(pl.col("_bad")).select("row", "_raw", *self.reasons)
        good, bad = pl.collect_all([events, rejects])
        return good, bad


# ----------------------------------------------------------------------------- the job


@dataclass(slots=True)
class ImportReport:
    """What an import read, wrote and rejected, and why."""

    sources: list[str] = field(default_factory=list)
    rows: int = 0
    events: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    event_types: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    out: str = ""
    rejects: str = ""

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def reject_rate(self) -> float:
        return self.rejected_total / self.rows if self.rows else 0.0

    def format(self) -> str:
        rate = self.rows / self.seconds if self.seconds else 0.0
        lines = [
            f"{'rows read':<32}{self.rows:>14,}",
            f"{'events written':<32}{self.events:>14,}",
            f"{'rejected':<32}{self.rejected_total:>14,}  ({self.reject_rate:.2%})",
        ]
        lines += [f"  {reason:<30}{n:>14,}" for reason, n in sorted(self.rejected.items())]
        lines.append("events by type:")
        lines += [f"  {t:<30}{n:>14,}" for t, n in sorted(self.event_types.items())]
        lines.append(f"{self.seconds:.2f} s ({rate:,.0f} rows/s); events: {self.out}")
        if self.rejected_total:
            lines.append(f"rejects (row, reason, field, value, raw): {self.rejects}")
        return "\n".join(lines)


_DICTIONARY: Final = pa.dictionary(pa.int32(), pa.large_string())


def _arrow_schema(filled: Iterable[str], coded: Iterable[str] = ()) -> pa.Schema:
    """The Arrow schema of an imported event log: ``event_id`` and the ``filled``
    columns (those a mapping can fill), in the log's order, typed as in the log;
    ``coded`` ones as dictionaries of their texts (written as Parquet dictionaries
    directly, and read back as text).

    The other columns of the log are left out rather than written as nulls (which
    cost a twentieth of an import): ``features.scan_log`` reads an absent optional
    column as nulls of its type, as the log's contract says."""
    keep = {"event_id", *filled}
    schema = pl.DataFrame(schema={c: dt for c, dt in LOG_SCHEMA.items() if c in keep})
    arrow = schema.to_arrow(compat_level=pl.CompatLevel.oldest()).schema
    for name in coded:
        at = arrow.get_field_index(name)
        if at >= 0:
            arrow = arrow.set(at, arrow.field(at).with_type(_DICTIONARY))
    return arrow


_UNHASHED: Final = frozenset({"event_id", "schema_version", "published_at", "raw"})


def _write_options(generated_ids: bool, schema: pa.Schema) -> dict[str, Any]:
    """``pq.ParquetWriter`` options of the event log.

    Dictionary encoding only where values repeat (texts, not ids); lz4, which costs
    a third less CPU than zstd for a larger file; generated ids (random hex) left
    uncompressed, as lz4 would save a fifth of their size for three times the CPU of
    writing them plain; no statistics (min/max) of ids, which serve no filter. The
    Arrow schema is not stored: coded columns, written from dictionaries, are then
    read back as text (with it, polars would read them as categoricals)."""
    names = schema.names
    return {
        "compression": {c: "none" if generated_ids and c == "event_id" else "lz4" for c in names},
        "use_dictionary": [c for c in names if LOG_SCHEMA[c] == pl.String and c != "event_id"],
        "write_statistics": [c for c in names if c not in ("event_id", "raw")],
        "store_schema": False,
    }


def row_ids(events: pl.DataFrame, prefix: str) -> pl.Series:
    """Deterministic event ids of events: ``<prefix>-<32 hex digits>``, a 128-bit
    hash of their typed values (every event-log column but ``event_id``,
    ``schema_version``, ``published_at`` and ``raw``; see ``features._rowid`` for
    the function). The same event gives the same id, whatever its source text.

    >>> from datetime import UTC, datetime
    >>> row_ids(pl.DataFrame({"customer_id": ["C1"], "event_type": ["card_payment"],
    ...     "occurred_at": [datetime(2025, 1, 31, tzinfo=UTC)], "amount_minor": [1250]}),
    ...     "card").to_list()
    ['card-5567648d7b8ff3ace8c37e4917466c10']
    """
    return hex_ids(_lanes(events), prefix)


def _lanes(events: pl.DataFrame) -> Lanes:
    """The hash lanes of events (an Enum column's texts are hashed once each)."""
    columns: list[tuple[int, pl.Series | U64]] = [
        (position, events[name])
        for position, name in enumerate(LOG_SCHEMA)
        if name not in _UNHASHED and name in events.columns
    ]
    return hash_columns(columns, events.height)


def _coded_texts(mapping: ImportMapping) -> dict[str, pl.Enum]:
    """The texts of the columns a mapping fills from codes or constants."""
    specs = dict(mapping.fields)
    specs["event_type"] = mapping.event_type
    if mapping.currency is not None:
        specs["currency"] = mapping.currency
    out = {}
    for name, spec in specs.items():
        if LOG_SCHEMA[name] != pl.String or (spec.value is None and not spec.map):
            continue
        texts = {v.strip() for v in spec.values()}  # as _coded gives them
        if name == "currency":
            texts |= {t.upper() for t in texts}
        for t in mapping.event_types():
            rule = FIELD_RULES[t].get(name)
            if rule is not None and rule.default is not None:
                texts.add(str(rule.default))
        out[name] = pl.Enum(sorted(texts))
    return out


def _table(events: pl.DataFrame, ids: pa.Array | None, schema: pa.Schema) -> pa.Table:
    """Events as an Arrow table of ``schema`` (see :func:`_arrow_schema`): the
    columns the mapping fills (texts or Enums as the schema's texts or
    dictionaries) and ``ids`` (when generated)."""
    filled = events.to_arrow(compat_level=pl.CompatLevel.oldest())
    arrays = [
        ids if f.name == "event_id" and ids is not None else filled[f.name].cast(f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def import_events(
    sources: Sequence[Path],
    mapping: ImportMapping,
    out: Path,
    rejects: Path | None = None,
    batch_rows: int = BATCH_ROWS,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Turn extracts into one event-log Parquet file ``out``; rows that cannot become
    valid events go to ``rejects`` (CSV: source, row, reason, field, value, raw).

    Sources are read in order and in batches of about ``batch_rows`` rows; one is
    read ahead, one converted to Arrow and one written in the background while the
    next is turned into events: memory depends on the batch, not the file.
    """
    began = time.perf_counter()
    rejects = rejects or out.with_name(out.name.removesuffix(".parquet") + ".rejects.csv")
    report = ImportReport(sources=[str(s) for s in sources], out=str(out), rejects=str(rejects))
    wanted = mapping.source_columns()
    for src in sources:
        if not src.exists():
            raise DataError(f"no extract at {src}")
        names = _names(src, mapping)
        missing = [c for c in wanted if names is not None and c not in names]
        if missing:
            raise DataError(
                f"{src} lacks the columns {missing} that the mapping reads; it has: {names}"
            )
    plan = _transform(mapping)
    coded = _coded_texts(mapping)
    out.parent.mkdir(parents=True, exist_ok=True)
    rejects.parent.mkdir(parents=True, exist_ok=True)
    schema = _arrow_schema(plan.filled, coded)
    prefix = mapping.id_prefix if mapping.event_id is None else None

    def arrow(events: pl.DataFrame) -> pa.Table:
        """The event log's Arrow table of events, with generated ids (numpy)."""
        ids = None if prefix is None else hex_id_array(_lanes(events), prefix)
        return _table(events, ids, schema)

    with (
        pq.ParquetWriter(out, schema, **_write_options(mapping.event_id is None, schema)) as writer,
        rejects.open("wb") as rej,
        ThreadPoolExecutor(1, thread_name_prefix="import-read") as reader,
        ThreadPoolExecutor(1, thread_name_prefix="import-arrow") as converter,
        ThreadPoolExecutor(1, thread_name_prefix="import-write") as background,
    ):

        def write(table: pa.Table, previous: Future[None] | None) -> Future[None]:
            if previous is not None:  # one table written at a time, in order
                previous.result()
            return background.submit(writer.write_table, table)

        rej.write(b"source,row,reason,field,value,raw\n")
        built: Future[pa.Table] | None = None
        written: Future[None] | None = None
        for src in sources:
            # a pipeline of four threads, each mostly off the GIL, five batches at
            # most in memory: one read ahead (polars' reader), one turned into events
            # here (polars), one into an Arrow table with ids (numpy), one written
            # (pyarrow; it writes columns one by one) and one table waiting for it
            batches = _batches(src, mapping, batch_rows)
            ahead = reader.submit(next, batches, None)
            while (batch := ahead.result()) is not None:
                ahead = reader.submit(next, batches, None)
                report.rows += batch.height
                good, bad = plan.apply(batch)
                del batch
                if good.height:
                    building = converter.submit(arrow, good)
                    if built is not None:
                        written = write(built.result(), written)
                    built = building
                    report.events += good.height
                    for t, n in good["event_type"].value_counts().iter_rows():
                        report.event_types[t] = report.event_types.get(t, 0) + n
                if bad.height:
                    for reason, n in bad["_reason"].value_counts().iter_rows():
                        report.rejected[reason] = report.rejected.get(reason, 0) + n
                    bad.select(
                        pl.lit(src.name).alias("source"),
                        "row",
                        "_reason",
                        "_field",
                        "_value",
                        "_raw",
                    ).write_csv(rej, include_header=False)
                if progress:
                    progress(report.rows)
        if built is not None:
            written = write(built.result(), written)
        if written is not None:
            written.result()
    report.seconds = time.perf_counter() - began
    logger.info(
        "imported %d rows from %d extracts: %d events, %d rejected",
        report.rows,
        len(sources),
        report.events,
        report.rejected_total,
    )
    return report
