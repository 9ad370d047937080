"""Importing bank extracts: round trip, dirty rows, formats, ids, purchases-only training."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from churn._cli import main
from features import (
    ConfigError,
    ImportMapping,
    feature_availability,
    import_events,
    load_mapping,
    row_ids,
    scan_log,
)
from features.events import events_from_frame
from simulator import SimConfig, write_parquet

ROOT = Path(__file__).resolve().parents[1]
MAPPINGS = ROOT / "docs" / "mappings"

CODES = {
    "customer_onboarded": "ONB",
    "manager_reassigned": "MGR",
    "product_opened": "POP",
    "product_closed": "PCL",
    "salary_credited": "SAL",
    "transfer_in": "TIN",
    "transfer_out": "TOUT",
    "card_payment": "CARD",
    "cash_withdrawal": "ATM",
    "fee_charged": "FEE",
    "interest_paid": "INT",
    "loan_repayment": "LOAN",
    "complaint_filed": "CMPF",
    "complaint_resolved": "CMPR",
    "digital_login": "LOGIN",
    "branch_visit": "VISIT",
    "survey_answered": "SURV",
}
FIELDS = [
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
    "days_late",
    "complaint_id",
    "category",
    "satisfied",
    "score",
    "purpose",
    "survey",
]


def _money(col: str) -> pl.Expr:
    """Minor units as a German-style decimal string: -1.234,56 (thousands '.')."""
    v = pl.col(col)
    whole = (v.abs() // 100).cast(pl.String)
    cents = (v.abs() % 100).cast(pl.String).str.zfill(2)
    sign = pl.when(v < 0).then(pl.lit("-")).otherwise(pl.lit(""))
    return pl.when(v.is_not_null()).then(pl.concat_str(sign, whole, pl.lit(","), cents))


@pytest.fixture(scope="module")
def small_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("imp") / "ev.parquet"
    write_parquet(SimConfig(customers=60, months=6, seed=5), out, workers=1)
    return out


def _bank_csv(log: Path, path: Path) -> pl.DataFrame:
    """The log as a bank extract: renamed columns, local times, decimal strings, codes."""
    frame = scan_log(log).filter(pl.col("raw").is_null()).collect()
    extract = frame.select(
        pl.col("event_id").alias("REF"),
        pl.col("customer_id").alias("KUNDE"),
        pl.col("occurred_at")
        .dt.convert_time_zone("Asia/Shanghai")
        .dt.strftime("%d.%m.%Y %H:%M:%S%.6f")
        .alias("ZEIT"),
        pl.col("event_type").replace_strict(CODES).alias("CODE"),
        _money("amount_minor").alias("BETRAG"),
        pl.col("currency").alias("WHG"),
        _money("balance_minor").alias("SALDO"),
        *(pl.col(f).cast(pl.String).alias(f.upper()) for f in FIELDS),
    )
    extract.write_csv(path, separator=";")
    return frame


def _round_trip_mapping() -> dict[str, Any]:
    return {
        "source": {"delimiter": ";"},
        "customer_id": "KUNDE",
        "event_id": "REF",
        "occurred_at": {
            "column": "ZEIT",
            "format": "%d.%m.%Y %H:%M:%S%.6f",
            "timezone": "Asia/Shanghai",
        },
        "event_type": {"column": "CODE", "map": {v: k for k, v in CODES.items()}},
        "amount": {"column": "BETRAG", "decimal": ",", "thousands": "."},
        "currency": {"column": "WHG"},
        "balance": {"column": "SALDO", "decimal": ","},
        "fields": {f: {"column": f.upper()} for f in FIELDS},
    }


def test_round_trip_of_a_bank_style_csv_gives_the_same_events(
    small_log: Path, tmp_path: Path
) -> None:
    extract = tmp_path / "extract.csv"
    original = _bank_csv(small_log, extract)
    assert set(original["event_type"]) == set(CODES)  # every type goes through
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(_round_trip_mapping()), encoding="utf-8")
    mapping = load_mapping(tmp_path / "m.yaml")
    out = tmp_path / "imported.parquet"
    report = import_events([extract], mapping, out)
    assert report.rejected == {}, (tmp_path / "imported.rejects.csv").read_text()[:2000]
    assert report.events == original.height
    back = pl.read_parquet(out)
    assert sorted(events_from_frame(back), key=lambda e: (e.event_id, e.occurred_at)) == sorted(
        events_from_frame(original), key=lambda e: (e.event_id, e.occurred_at)
    )


def _dirty(tmp_path: Path) -> tuple[Path, ImportMapping]:
    mapping = ImportMapping.from_dict(
        {
            "source": {"delimiter": "|"},
            "customer_id": "cust",
            "occurred_at": {"column": "day", "format": "%d/%m/%Y", "timezone": "Europe/London"},
            "event_type": {"column": "code", "map": {"P": "card_payment", "W": "cash_withdrawal"}},
            "amount": {"column": "amt"},
            "currency": {"value": "GBP"},
            "balance": {"column": "bal"},
            "fields": {
                "merchant_category": {"value": "retail"},
                "channel": {"column": "ch"},
            },
        }
    )
    lines = [
        "cust|day|code|amt|bal|ch",  # 1
        "C1|01/02/2025|P|12.50|100.00|pos",  # 2 ok
        "C1|31/02/2025|P|12.50|100.00|pos",  # 3 bad date
        "C2|02/02/2025|P|twelve|100.00|pos",  # 4 non-numeric amount
        "C2|02/02/2025|X|1.00|100.00|pos",  # 5 unknown code
        "|02/02/2025|P|1.00|100.00|pos",  # 6 blank id
        "C3|02/02/2025|P|1.00|100.00",  # 7 wrong column count
        "",  # 8 blank line: skipped, not a row
        "C3|03/02/2025|W|20|-5.5|atm",  # 9 ok
        "C3|03/02/2025|W|1.234|0|atm",  # 10 more digits than cents
        "C4|03/02/2025|W|-3.00|0|atm",  # 11 not positive
        "C4|03/02/2025|W|3.00|0|pos",  # 12 channel not one of a withdrawal's
        "C 5|03/02/2025|P|3.00|0|pos",  # 13 id with a space
    ]
    path = tmp_path / "dirty.csv"
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    return path, mapping


def test_dirty_extract_rejects_rows_with_the_right_reasons_and_keeps_the_valid(
    tmp_path: Path,
) -> None:
    path, mapping = _dirty(tmp_path)
    report = import_events([path], mapping, tmp_path / "ev.parquet")
    with (tmp_path / "ev.rejects.csv").open(encoding="utf-8", newline="") as f:
        rejects = {int(r["row"]): r for r in csv.DictReader(f)}
    assert {row: r["reason"] for row, r in rejects.items()} == {
        3: "invalid_timestamp",
        4: "invalid_amount",
        5: "unknown_code",
        6: "missing_value",
        7: "wrong_column_count",
        10: "invalid_amount",
        11: "invalid_amount",
        12: "invalid_value",
        13: "invalid_id",
    }
    assert rejects[4]["field"] == "amount_minor"
    assert rejects[4]["value"] == "twelve"
    assert rejects[12]["field"] == "channel"
    assert rejects[7]["raw"] == "C3|02/02/2025|P|1.00|100.00"
    assert report.rows == 11  # data lines; the blank one is no row
    assert report.events == 2
    assert report.rejected["invalid_amount"] == 3
    events = list(events_from_frame(pl.read_parquet(tmp_path / "ev.parquet")))
    assert [(e.customer_id, e.amount_minor, e.balance_minor) for e in events] == [  # type: ignore[union-attr]
        ("C1", 1250, 10000),
        ("C3", 2000, -550),
    ]
    assert str(events[0].occurred_at) == "2025-02-01 00:00:00+00:00"


def test_coded_columns_are_written_and_read_back_as_text(tmp_path: Path) -> None:
    """Columns filled from codes are written from Enums (each text hashed and written
    once); the log reads back as text, with the values and ids of plain texts."""
    mapping = ImportMapping.from_dict(
        {
            "source": {"delimiter": ","},
            "customer_id": "cust",
            "occurred_at": {"column": "day", "format": "%Y-%m-%d", "timezone": "UTC"},
            "event_type": {"column": "code", "map": {"T": "transfer_out", "P": "card_payment"}},
            "amount": {"column": "amt"},
            "currency": {"column": "ccy", "map": {"r": "CNY", "e": "EUR"}},
            "balance": {"column": "bal"},
            "fields": {
                "counterparty": {"column": "cp", "map": {"E": "external"}, "default": "internal"},
                "counterparty_bank": {"column": "bank", "map": {"X": " BANK_X "}},
                "merchant_category": {"value": "groceries"},
                "channel": {"column": "ch", "map": {"P": "pos", "M": "mobile"}},
            },
        }
    )
    src = tmp_path / "coded.csv"
    src.write_text(
        "cust,day,code,amt,bal,ccy,cp,bank,ch\n"
        "C1,2025-01-02,T,5.00,1.00,r,E,X,\n"  # channel: the transfer's default (mobile)
        "C1,2025-01-03,P,2.50,1.00,e,,,P\n"
        "C2,2025-01-03,T,1.00,1.00,r,,,M\n",
        encoding="utf-8",
    )
    report = import_events([src], mapping, tmp_path / "ev.parquet")
    assert report.rejected == {}
    assert report.events == 3
    got = pl.read_parquet(tmp_path / "ev.parquet")
    assert {c: got.schema[c] for c in ("event_type", "currency", "channel")} == {
        "event_type": pl.String,
        "currency": pl.String,
        "channel": pl.String,
    }
    assert got.select(
        "event_type",
        "currency",
        "counterparty",
        "counterparty_bank",
        "merchant_category",
        "channel",
    ).rows() == [
        ("transfer_out", "CNY", "external", "BANK_X", None, "mobile"),
        ("card_payment", "EUR", None, None, "groceries", "pos"),
        ("transfer_out", "CNY", "internal", None, None, "mobile"),
    ]
    assert got["event_id"].to_list() == row_ids(got, mapping.id_prefix).to_list()


def test_reject_rate_over_the_threshold_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = _dirty(tmp_path)
    m = tmp_path / "m.yaml"
    m.write_text(
        yaml.safe_dump(
            {
                "source": {"delimiter": "|"},
                "customer_id": "cust",
                "occurred_at": {"column": "day", "format": "%d/%m/%Y"},
                "event_type": {"column": "code", "map": {"P": "card_payment"}},
                "amount": "amt",
                "currency": {"value": "GBP"},
                "balance": "bal",
                "fields": {"merchant_category": {"value": "retail"}, "channel": "ch"},
            }
        ),
        encoding="utf-8",
    )
    args = [
        "import",
        "--source",
        str(path),
        "--mapping",
        str(m),
        "--out",
        str(tmp_path / "o.parquet"),
    ]
    assert main([*args, "--max-reject-rate", "0.05"]) == 1
    out = capsys.readouterr()
    assert "rows read" in out.out
    assert "more than --max-reject-rate" in out.err
    assert main([*args, "--max-reject-rate", "0.99"]) == 0


@pytest.mark.parametrize("fmt", ["csv", "fixed_width", "ndjson", "parquet"])
def test_every_format_gives_the_same_events(tmp_path: Path, fmt: str) -> None:
    rows = [
        {"id": "C1", "ts": "2025-03-01T10:00:00+01:00", "amt": "10.00"},
        {"id": "C2", "ts": "2025-03-02T10:00:00Z", "amt": "0.05"},
        {"id": "C2", "ts": "2025-03-02 11:00:00", "amt": "7"},
    ]
    frame = pl.DataFrame(rows)
    path = (
        tmp_path
        / f"x.{ {'csv': 'csv', 'fixed_width': 'txt', 'ndjson': 'jsonl', 'parquet': 'parquet'}[fmt] }"
    )
    if fmt == "csv":
        frame.write_csv(path)
    elif fmt == "fixed_width":
        path.write_text(
            "id   ts                          amt\n"
            + "".join(f"{r['id']:<5}{r['ts'].replace(' ', 'T'):<28}{r['amt']:>8}\n" for r in rows),
            encoding="utf-8",
        )
    elif fmt == "ndjson":
        frame.write_ndjson(path)
    else:
        frame.write_parquet(path)
    mapping = ImportMapping.from_dict(
        {
            "source": {"format": fmt},
            "customer_id": "id",
            "occurred_at": "ts",
            "event_type": {"value": "card_payment"},
            "amount": "amt",
            "currency": {"value": "EUR"},
            "fields": {"merchant_category": {"value": "retail"}, "channel": {"value": "pos"}},
        }
    )
    report = import_events([path], mapping, tmp_path / "ev.parquet")
    assert report.rejected == {}
    assert "balance_minor" not in pl.read_parquet_schema(tmp_path / "ev.parquet")  # not mapped
    got = scan_log(tmp_path / "ev.parquet").collect()  # absent columns read as nulls
    assert got["amount_minor"].to_list() == [1000, 5, 700]
    assert got.select(pl.col("occurred_at").dt.strftime("%H:%M")).to_series().to_list() == [
        "09:00",
        "10:00",
        "11:00",
    ]
    assert got["balance_minor"].null_count() == 3  # no balance mapped: training only


def test_generated_ids_are_deterministic_and_recognise_duplicates(tmp_path: Path) -> None:
    mapping = load_mapping(MAPPINGS / "retail_purchases.yaml")
    src = tmp_path / "p.csv"
    src.write_text(
        "customer,date,amount\nA,2025-01-01,1.00\nB,2025-01-01,1.00\nA,2025-01-01,1.00\n",
        encoding="utf-8",
    )
    import_events([src], mapping, tmp_path / "a.parquet")
    import_events([src], mapping, tmp_path / "b.parquet", batch_rows=1)
    a = pl.read_parquet(tmp_path / "a.parquet")["event_id"].to_list()
    assert a == pl.read_parquet(tmp_path / "b.parquet")["event_id"].to_list()
    assert a[0] == a[2] != a[1]  # the same row twice: the same id (a duplicate)
    assert all(i.startswith("retail-") and len(i) == 39 for i in a)
    # stable across versions: fixed values give a fixed id, whatever their dtypes
    event = pl.DataFrame(
        {
            "customer_id": ["C1"],
            "event_type": ["card_payment"],
            "occurred_at": [datetime(2025, 1, 31, tzinfo=UTC)],
            "amount_minor": [1250],
        }
    )
    narrower = event.with_columns(
        pl.col("occurred_at").dt.cast_time_unit("ms"),
        pl.col("amount_minor").cast(pl.Int32),
        pl.lit(None, pl.String).alias("segment"),  # nulls are skipped
    )
    assert row_ids(event, "card").to_list() == ["card-5567648d7b8ff3ace8c37e4917466c10"]
    assert row_ids(narrower, "card").to_list() == row_ids(event, "card").to_list()
    # the ids written are those of the events' values
    assert a == row_ids(pl.read_parquet(tmp_path / "a.parquet"), "retail").to_list()


@pytest.mark.parametrize("name", ["card_transactions", "core_ledger", "retail_purchases"])
def test_documented_examples_import_their_samples_cleanly(tmp_path: Path, name: str) -> None:
    mapping = load_mapping(MAPPINGS / f"{name}.yaml")
    report = import_events([MAPPINGS / f"{name}.sample.csv"], mapping, tmp_path / "ev.parquet")
    assert report.rejected == {}
    assert report.events >= 3
    if not mapping.lacks_balance():
        assert (
            len(list(events_from_frame(pl.read_parquet(tmp_path / "ev.parquet")))) == report.events
        )


@pytest.mark.parametrize(
    ("change", "field", "allowed"),
    [
        ({"colour": 1}, "colour", "keys: source"),
        ({"event_type": {"value": "card_paid"}}, "event_type.value", "card_payment"),
        ({"currency": None}, "currency", "{value: CNY}"),
        ({"fields": {"channel": {"value": "pigeon"}}}, "fields.channel", "contactless"),
        ({"fields": {"merchant_category": {"value": "retail"}}}, "fields.channel", "requires it"),
        (
            {"occurred_at": {"column": "d", "timezone": "Mars/Olympus"}},
            "occurred_at.timezone",
            "IANA",
        ),
        ({"amount": {"column": "a", "scale": 9}}, "amount.scale", "0..4"),
        ({"source": {"format": "xls"}}, "source.format", "csv, fixed_width"),
    ],
)
def test_mapping_errors_name_the_key_and_the_allowed_values(
    change: dict[str, Any], field: str, allowed: str
) -> None:
    data: dict[str, Any] = {
        "customer_id": "c",
        "occurred_at": "d",
        "event_type": {"value": "card_payment"},
        "amount": "a",
        "currency": {"value": "EUR"},
        "fields": {"merchant_category": {"value": "retail"}, "channel": {"value": "pos"}},
    }
    for k, v in change.items():
        if v is None:
            data.pop(k)
        else:
            data[k] = v
    with pytest.raises(ConfigError) as err:
        ImportMapping.from_dict(data)
    assert err.value.field == field
    assert allowed in str(err.value)


def test_purchases_only_log_imports_and_trains_with_inactivity_churn(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bank = tmp_path / "bank.parquet"
    write_parquet(SimConfig(customers=700, months=20, seed=11), bank, workers=1)
    purchases = tmp_path / "purchases.csv"
    (
        pl.scan_parquet(bank)
        .filter(pl.col("event_type") == "card_payment")
        .select(
            pl.col("customer_id").alias("customer"),
            pl.col("occurred_at").dt.strftime("%Y-%m-%d").alias("date"),
            (pl.col("amount_minor") / 100).round(2).cast(pl.String).alias("amount"),
        )
        .collect()
        .write_csv(purchases)
    )
    out = tmp_path / "retail.parquet"
    code = main(
        [
            "import",
            "--source",
            str(purchases),
            "--mapping",
            str(MAPPINGS / "retail_purchases.yaml"),
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    availability = feature_availability(scan_log(out))
    assert availability.present == {"card_payment"}
    for name in ("days_since_salary", "balance", "logins_30d", "tenure_days", "segment_code"):
        assert name in availability.unavailable
    for name in ("card_spend_30d", "days_since_activity", "active_days_30d"):
        assert name not in availability.unavailable
    code = main(
        [
            "train",
            "--events",
            str(out),
            "--churn-definition",
            "inactivity",
            "--inactivity-days",
            "60",
            "--horizon",
            "60d",
            "--value-days",
            "60d",
            "--no-register",
            "--threads",
            "1",
            "--data-dir",
            str(tmp_path / "data"),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "churn definition: inactivity" in printed
    assert "unavailable (null, no signal in the log)" in printed
    model_line = next(line for line in printed.splitlines() if line.startswith("churn model"))
    auc = float(model_line.split()[2])
    assert 0.5 < auc <= 1.0
    assert "features unavailable in this data" in printed
