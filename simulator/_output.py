"""From simulated chunks to the event log: strings, dirty records, sinks, ground truth."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt
import orjson
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.events import LOG_SCHEMA
from simulator import _bank as K
from simulator import _config as P
from simulator._config import SimConfig

DIRTY_KINDS: Final = {
    # kind: (share of dirty records, dead-letter reason it must get; None = valid but dirty)
    "duplicate": (0.35, None),
    "late": (0.25, None),
    "malformed_json": (0.08, "malformed_json"),
    "missing_field": (0.08, "missing_field"),
    "bad_value": (0.08, "invalid_value"),
    "naive_timestamp": (0.06, "naive_timestamp"),
    "unknown_event_type": (0.10, "unknown_event_type"),
}


class Sink(Protocol):
    """Where simulated events go, chunk by chunk, in customer order."""

    def write(self, table: pa.Table, part: int) -> None: ...

    def close(self) -> None: ...


PART_WRITE_OPTIONS: Final[dict[str, Any]] = {
    "compression": "lz4",
    "store_schema": False,  # readers see plain (dictionary-encoded) strings
    "write_statistics": ["customer_id", "event_type", "occurred_at"],
    # dictionary pages only where the values are few (the rest would fall back anyway)
    "use_dictionary": [
        "customer_id",
        "event_type",
        "currency",
        "segment",
        "branch_id",
        "manager_id",
        "previous_manager_id",
        "product_id",
        "product_type",
        "initiated_by",
        "employer_id",
        "counterparty",
        "counterparty_bank",
        "channel",
        "merchant_category",
        "fee_type",
        "category",
        "purpose",
        "survey",
    ],
    "row_group_size": 1 << 20,
}


class ParquetDataset:
    """An event log as a directory of Parquet parts, one per chunk of customers.

    ``events.parquet/part-00000.parquet``, ... each hold a disjoint range of
    customers sorted by customer and time; polars, pyarrow, DuckDB and Spark read
    the directory as one table. Parts are written by the processes that simulate
    them, in parallel. Opening a dataset removes the parts of an earlier one.
    """

    def __init__(self, path: Path) -> None:
        if path.is_file():
            path.unlink()
        path.mkdir(parents=True, exist_ok=True)
        for old in path.glob("part-*.parquet"):
            old.unlink()
        self.path = path

    def part_path(self, part: int) -> Path:
        return self.path / f"part-{part:05d}.parquet"

    def write(self, table: pa.Table, part: int) -> None:
        pq.write_table(table, self.part_path(part), **PART_WRITE_OPTIONS)

    def close(self) -> None:
        if not any(self.path.glob("part-*.parquet")):
            pq.write_table(
                log_arrow_schema().empty_table(), self.part_path(0), **PART_WRITE_OPTIONS
            )


def log_arrow_schema() -> pa.Schema:
    return pl.DataFrame(schema=LOG_SCHEMA).to_arrow().schema


def _lookup(codes: npt.NDArray[np.int32], vocabulary: list[str] | tuple[str, ...]) -> pa.Array:
    """Strings from codes (-1 = null) as a dictionary array: no copy, fast to write."""
    indices = _numbers(codes, codes >= 0, pa.int32())
    return pa.DictionaryArray.from_arrays(indices, pa.array(vocabulary, pa.string()))


def _numbers(
    values: npt.NDArray[Any], valid: npt.NDArray[np.bool_], dtype: pa.DataType
) -> pa.Array:
    """An Arrow array from a numpy array and a validity mask, built from buffers."""
    n = values.size
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
    if dtype == pa.bool_():
        data = pa.py_buffer(np.packbits(values.astype(bool), bitorder="little"))
    else:
        data = pa.py_buffer(
            np.ascontiguousarray(values.astype(dtype.to_pandas_dtype(), copy=False))
        )
    return pa.Array.from_buffers(dtype, n, [bitmap, data], null_count=n - int(valid.sum()))


def chunk_table(cfg: SimConfig, chunk: K.Chunk) -> pa.Table:
    """The chunk's events in the event-log layout (clean: no dirty records).

    Low-cardinality strings are dictionary arrays (the Parquet file stores them as
    plain dictionary-encoded strings); use :func:`to_frame` for a polars frame.
    """
    e = chunk.events
    t = e["type"]
    n = t.size
    cust = e["cust"]
    packed = {"a": e["a"], "b": e["b"], "c": e["c"]}
    order = np.argsort(t, kind="stable")
    bounds = np.r_[0, np.cumsum(np.bincount(t, minlength=len(K.TYPES)))]
    rows = {k: order[bounds[k] : bounds[k + 1]] for k in range(len(K.TYPES))}

    def pick(*spec: tuple[int, str]) -> npt.NDArray[np.int32]:
        """Codes from packed column ``col`` for rows of type ``kind``; -1 elsewhere."""
        out = np.full(n, -1, np.int32)
        for kind, col in spec:
            r = rows[kind]
            out[r] = packed[col][r]
        return out

    def is_type(*kinds: int) -> npt.NDArray[np.bool_]:
        mask = np.zeros(n, bool)
        for k in kinds:
            mask[rows[k]] = True
        return mask

    money = is_type(*K.MONEY_TYPES)
    first = chunk.first_customer
    ids = [f"C{i:08d}" for i in range(first, first + len(chunk.customers["index"]))]
    customer_id = _lookup(cust, ids)
    seq = pa.array(e["seq"]).cast(pa.string())
    n_branches = max(int(chunk.customers["branch"].max()) + 1 if n else 1, 100)
    branches = [f"BR{i:03d}" for i in range(n_branches)]
    managers = [f"RM{i:04d}" for i in range(n_branches * 9)]
    product = pick((K.T_OPEN, "a"), (K.T_CLOSE, "a"), (K.T_LOAN, "a"))
    products = [f"{cid}-P{s}" for cid in ids for s in range(K.SLOTS)]
    has_complaint = is_type(K.T_CFILED, K.T_CRESOLVED)
    complaint = e["a"][has_complaint]
    complaint_ids = [
        f"{ids[i]}-K{k:02d}" for i, k in zip(cust[has_complaint], complaint, strict=True)
    ]
    complaint_ix = np.full(n, -1, np.int32)
    complaint_ix[has_complaint] = np.arange(complaint.size, dtype=np.int32)
    employers = [f"EMP{i:05d}" for i in range(20_000)]
    transfer = (K.T_TIN, K.T_TOUT)
    arrow = {
        "event_id": pc.binary_join_element_wise(customer_id.cast(pa.string()), seq, "-"),
        "customer_id": customer_id,
        "event_type": _lookup(t.astype(np.int32), K.TYPES),
        "occurred_at": pa.array(e["t"], pa.timestamp("us", "UTC")),
        "schema_version": pa.array(np.ones(n, np.int16)),
        "amount_minor": _numbers(e["amount"], money, pa.int64()),
        "currency": _lookup(np.where(money, 0, -1).astype(np.int32), [cfg.currency]),
        "balance_minor": _numbers(e["balance"], money, pa.int64()),
        "segment": _lookup(pick((K.T_ONBOARD, "a")), P.SEGMENTS),
        "branch_id": _lookup(
            pick((K.T_ONBOARD, "b"), (K.T_REASSIGN, "c"), (K.T_BRANCH, "a")), branches
        ),
        "manager_id": _lookup(pick((K.T_ONBOARD, "c"), (K.T_REASSIGN, "a")), managers),
        "previous_manager_id": _lookup(pick((K.T_REASSIGN, "b")), managers),
        "product_id": _lookup(np.where(product >= 0, cust * K.SLOTS + product, -1), products),
        "product_type": _lookup(pick((K.T_OPEN, "b"), (K.T_CLOSE, "b")), P.PRODUCTS),
        "initiated_by": _lookup(pick((K.T_CLOSE, "c")), K.INITIATED),
        "employer_id": _lookup(pick((K.T_SALARY, "a")), employers),
        "counterparty": _lookup(pick(*((k, "a") for k in transfer)), K.COUNTERPARTY),
        "counterparty_bank": _lookup(pick(*((k, "b") for k in transfer)), P.OTHER_BANKS),
        "channel": _lookup(
            pick(
                (K.T_TIN, "c"), (K.T_TOUT, "c"), (K.T_CASH, "a"), (K.T_LOGIN, "a"), (K.T_CARD, "b")
            ),
            K.CHANNELS,
        ),
        "merchant_category": _lookup(pick((K.T_CARD, "a")), P.MERCHANT_CATEGORIES),
        "fee_type": _lookup(pick((K.T_FEE, "a")), K.FEE_TYPES),
        "days_late": _numbers(e["b"], is_type(K.T_LOAN), pa.int32()),
        "complaint_id": _lookup(complaint_ix, complaint_ids).cast(pa.string()),
        "category": _lookup(pick((K.T_CFILED, "b")), K.COMPLAINT_CATEGORIES),
        "satisfied": _numbers(e["b"] == 1, is_type(K.T_CRESOLVED), pa.bool_()),
        "score": _numbers(e["a"].astype(np.int16), is_type(K.T_SURVEY), pa.int16()),
        "purpose": _lookup(pick((K.T_BRANCH, "b")), K.PURPOSES),
        "survey": _lookup(pick((K.T_SURVEY, "b")), K.SURVEYS),
        "published_at": pa.nulls(n, pa.timestamp("us", "UTC")),
        "raw": pa.nulls(n, pa.binary()),
    }
    return pa.table(arrow)


def to_frame(table: pa.Table) -> pl.DataFrame:
    """An event-log table as a polars frame with the :data:`LOG_SCHEMA` dtypes."""
    plain = table.cast(log_arrow_schema())
    frame = pl.from_arrow(plain)
    if not isinstance(frame, pl.DataFrame):  # pragma: no cover - from_arrow of a table
        raise TypeError("expected a DataFrame")
    return frame


@dataclass(slots=True)
class DirtyReport:
    """What was made dirty, so tests can check the pipeline's handling of it."""

    rows: list[dict[str, object]] = field(default_factory=list)


def make_dirty(
    frame: pl.DataFrame, rate: float, rng: np.random.Generator, report: DirtyReport
) -> pl.DataFrame:
    """Add duplicates, late deliveries, malformed records and unknown types to a frame."""
    n = frame.height
    k = int(rng.binomial(n, rate)) if n else 0
    if k == 0:
        return frame
    kinds = list(DIRTY_KINDS)
    share = np.array([DIRTY_KINDS[x][0] for x in kinds])
    chosen = rng.choice(len(kinds), k, p=share / share.sum())
    rows = np.sort(rng.choice(n, k, replace=False))
    base = frame[rows.tolist()]
    # typed event rows (no dirty ones yet) to derive wire records from
    out_parts = [frame]
    late_rows: list[int] = []
    late_delay: list[int] = []
    extra: list[dict[str, object]] = []
    for i, (row, kind_ix) in enumerate(zip(rows, chosen, strict=True)):
        kind = kinds[kind_ix]
        rec = base.row(i, named=True)
        delay_s = int(rng.integers(60, 10 * 86_400))
        reason = DIRTY_KINDS[kind][1]
        if kind == "late":
            late_rows.append(int(row))
            late_delay.append(delay_s)
        elif kind == "duplicate":
            dup = dict(rec)
            dup["published_at"] = rec["occurred_at"] + timedelta(seconds=delay_s)
            extra.append(dup)
        else:
            extra.append(_wire_only(rec, kind, delay_s))
        report.rows.append(
            {
                "event_id": rec["event_id"],
                "customer_id": rec["customer_id"],
                "kind": kind,
                "reason": reason,
                "raw": extra[-1]["raw"] if reason is not None else None,
            }
        )
    if late_rows:
        delays = np.zeros(n, np.int64)
        delays[late_rows] = np.asarray(late_delay) * 1_000_000
        published = pl.Series(frame["occurred_at"].to_numpy().astype(np.int64) + delays)
        frame = frame.with_columns(
            pl.when(pl.Series(delays) > 0)
            .then(published.cast(pl.Datetime("us", "UTC")))
            .otherwise(None)
            .alias("published_at")
        )
        out_parts[0] = frame
    if extra:
        out_parts.append(pl.DataFrame(extra, schema=LOG_SCHEMA))
    return pl.concat(out_parts).sort("customer_id", maintain_order=True)


def _wire_only(rec: dict[str, object], kind: str, delay_s: int) -> dict[str, object]:
    """A record as bytes on the wire, broken in the way ``kind`` says."""
    wire = {k: v for k, v in rec.items() if v is not None and k not in ("published_at", "raw")}
    occurred = rec["occurred_at"]
    wire["occurred_at"] = occurred.isoformat()  # type: ignore[attr-defined]
    if kind == "malformed_json":
        raw = orjson.dumps(wire)[: -int(1 + len(wire) % 7)]
    elif kind == "missing_field":
        del wire["occurred_at"]
        raw = orjson.dumps(wire)
    elif kind == "bad_value":
        if "amount_minor" in wire:
            wire["amount_minor"] = "12,50"  # a decimal comma where minor units belong
        else:
            wire["occurred_at"] = occurred.strftime("%d/%m/%Y %H:%M")  # type: ignore[attr-defined]
        raw = orjson.dumps(wire)
    elif kind == "naive_timestamp":
        wire["occurred_at"] = occurred.replace(tzinfo=None).isoformat()  # type: ignore[attr-defined]
        raw = orjson.dumps(wire)
    else:
        wire["event_type"] = "loyalty_points_redeemed"
        raw = orjson.dumps(wire)
    return {
        "event_id": None,
        "customer_id": rec["customer_id"],
        "published_at": occurred + timedelta(seconds=delay_s),  # type: ignore[operator]
        "raw": raw,
    }


def truth_frames(cfg: SimConfig, chunk: K.Chunk) -> dict[str, pl.DataFrame]:
    """Ground truth of a chunk: per customer, per customer-week, per customer-month."""
    c = chunk.customers
    ids = pl.Series("index", c["index"]).cast(pl.String).str.zfill(8)
    cid = ("C" + ids).alias("customer_id")
    start = pl.lit(cfg.start)
    customers = pl.DataFrame(
        {
            "customer_id": cid,
            "segment": pl.Series(np.asarray(P.SEGMENTS)[c["segment"].astype(np.int64)]),
            "branch_id": ("BR" + pl.Series(c["branch"]).cast(pl.String).str.zfill(3)),
            "onboarded_on": pl.Series(c["onboard_day"]),
            "churned_on": pl.Series(c["churn_day"]),
            "churn_kind": pl.Series(
                [
                    None if day < 0 else ("gradual" if gradual else "sudden")
                    for day, gradual in zip(c["churn_day"], c["churn_gradual"], strict=True)
                ],
                dtype=pl.String,
            ),
            "salaried": pl.Series(c["salaried"]),
            "salary_redirected_on": pl.Series(c["salary_redirected_day"]),
            "monthly_income_minor": pl.Series(np.round(c["monthly_income"] * 100).astype(np.int64)),
            "shifted": pl.Series(c["shifted"]),
        }
    ).with_columns(
        (start + pl.duration(days=pl.col("onboarded_on"))).alias("onboarded_on"),
        pl.when(pl.col("churned_on") >= 0)
        .then(start + pl.duration(days=pl.col("churned_on")))
        .alias("churned_on"),
        pl.when(pl.col("salary_redirected_on") >= 0)
        .then(start + pl.duration(days=pl.col("salary_redirected_on")))
        .alias("salary_redirected_on"),
    )
    n, weeks = chunk.hazard.shape
    hazard = pl.DataFrame(
        {
            "customer_id": cid.gather(np.repeat(np.arange(n), weeks)),
            "week_start": pl.Series(np.tile(np.arange(weeks) * 7, n)),
            "hazard": pl.Series(chunk.hazard.ravel()),
            "disengagement": pl.Series(chunk.disengagement.ravel()),
        }
    ).filter(pl.col("hazard").is_not_nan())
    hazard = hazard.with_columns(
        (start + pl.duration(days=pl.col("week_start"))).alias("week_start")
    )
    months = chunk.contribution.shape[1]
    value = pl.DataFrame(
        {
            "customer_id": cid.gather(np.repeat(np.arange(n), months)),
            "month": pl.Series(np.tile(np.arange(months), n)),
            "contribution_minor": pl.Series(
                np.round(chunk.contribution.ravel() * 100).astype(np.int64)
            ),
        }
    )
    return {"customers": customers, "hazard": hazard, "value": value}


def chunks(cfg: SimConfig) -> Iterator[int]:
    return iter(range((cfg.customers + cfg.chunk_customers - 1) // cfg.chunk_customers))
