"""Splitting snapshots by time, so no label window overlaps a later period's features.

Churn: the **test** period is the latest snapshot; **validation** takes the latest
``valid_snapshots`` snapshots whose label horizon ends by the test as-of; **train**
takes every snapshot whose horizon ends by the first validation as-of. The
snapshots in between are dropped (a purge gap): a training label never looks into
the validation or test period.

Value: its label runs a year ahead, so a purge gap would leave nothing to train on;
instead customers are split (by a hash of the id, stable across runs): the test
rows are the latest value snapshot of one customer group, validation rows another
group, training rows the rest, all with as-of before the test as-of.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta

import polars as pl

from features.errors import DataError

__all__ = ["ChurnSplit", "ValueSplit", "churn_split", "customer_group", "value_split"]


@dataclass(frozen=True, slots=True)
class ChurnSplit:
    train: pl.DataFrame
    valid: pl.DataFrame
    test: pl.DataFrame
    train_dates: tuple[datetime, ...]
    valid_dates: tuple[datetime, ...]
    test_date: datetime

    def describe(self) -> dict[str, object]:
        return {
            "split.train_from": self.train_dates[0].date().isoformat(),
            "split.train_to": self.train_dates[-1].date().isoformat(),
            "split.valid_from": self.valid_dates[0].date().isoformat(),
            "split.valid_to": self.valid_dates[-1].date().isoformat(),
            "split.test_as_of": self.test_date.date().isoformat(),
            "split.train_rows": self.train.height,
            "split.valid_rows": self.valid.height,
            "split.test_rows": self.test.height,
        }


@dataclass(frozen=True, slots=True)
class ValueSplit:
    train: pl.DataFrame
    valid: pl.DataFrame
    test: pl.DataFrame
    test_date: datetime


def _dates(frame: pl.DataFrame) -> list[datetime]:
    return sorted(frame["as_of"].unique().to_list())


def churn_split(frame: pl.DataFrame, horizon_days: int, valid_snapshots: int = 2) -> ChurnSplit:
    """Train / validation / test by time with purge gaps of one horizon."""
    dates = _dates(frame)
    if not dates:
        raise DataError("the training set is empty: no snapshot to split")
    gap = timedelta(days=horizon_days)
    test = dates[-1]
    valid = [d for d in dates if d + gap <= test][-valid_snapshots:]
    train = [d for d in dates if valid and d + gap <= valid[0]]
    if not train:
        raise DataError(
            f"not enough history to split by time: the {len(dates)} snapshots "
            f"({dates[0].date()} .. {test.date()}) must span at least 2 horizons of "
            f"{horizon_days} days plus one snapshot to train on; build the training set "
            "over a longer period or use a shorter --horizon"
        )

    def pick(ds: list[datetime]) -> pl.DataFrame:
        return frame.filter(pl.col("as_of").is_in(ds))

    return ChurnSplit(pick(train), pick(valid), pick([test]), tuple(train), tuple(valid), test)


def customer_group(ids: pl.Series, groups: int = 5) -> pl.Series:
    """A stable group 0..groups-1 per customer id (CRC-32 of the id)."""
    return pl.Series(
        "group", [zlib.crc32(str(c).encode()) % groups for c in ids.to_list()], dtype=pl.Int64
    )


def value_split(frame: pl.DataFrame) -> ValueSplit:
    """Customer-disjoint split of the rows whose value label is known."""
    known = frame.filter(pl.col("value_minor").is_not_null())
    if known.height == 0:
        raise DataError(
            "no snapshot has a known value label: the value period runs past the end of "
            "the data for every snapshot; start the training period earlier or shorten "
            "--value-days"
        )
    test_date = _dates(known)[-1]
    ids = known["customer_id"].unique()
    groups = pl.DataFrame({"customer_id": ids, "group": customer_group(ids)})
    known = known.join(groups, on="customer_id")
    test = known.filter((pl.col("group") == 0) & (pl.col("as_of") == test_date))
    valid = known.filter((pl.col("group") == 1) & (pl.col("as_of") < test_date))
    train = known.filter((pl.col("group") >= 2) & (pl.col("as_of") < test_date))
    if train.height == 0 or valid.height == 0 or test.height == 0:
        raise DataError(
            "the value label is known on too few snapshots to train and test: "
            "start the training period earlier"
        )
    return ValueSplit(train.drop("group"), valid.drop("group"), test.drop("group"), test_date)
