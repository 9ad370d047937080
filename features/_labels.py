"""Labels: churn within a horizon after as-of, and customer value over the next months.

Banks define churn differently, so the definition is a setting:

``last_product`` (default)
    The customer churns when their last open product is closed (they held at least
    one product before). A customer with no open product at ``as_of`` has already
    churned and is excluded from that snapshot.

``inactivity``
    The customer churns when ``inactivity_days`` pass without any activity they
    started themselves (sign-ins, card payments, transfers out other than standing
    orders, cash, branch visits, complaints, survey answers, product openings): the
    dormancy rule banks use, and Dynamics 365's "transactional churn" for customers
    without contracts. The churn time is the last activity + ``inactivity_days``. A
    customer already dormant at ``as_of`` is excluded.

In both, ``churn = 1`` when a churn time falls in ``(as_of, as_of + horizon]``.
Snapshots whose horizon runs past the end of the data are *censored*: excluded and
counted, never labelled 0.

The value label is the customer's contribution over ``(as_of, as_of + value_days]``:
fees + card interchange + deposit margin on the average positive balance + loan
margin on instalments, all from the events (minor units). It is null where the
value period runs past the end of the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import polars as pl

from features._definitions import (
    DAY_US,
    DEPOSIT_SPREAD,
    INTERCHANGE,
    LOAN_MARGIN_SHARE,
    SIGNALS_BY_NAME,
)
from features._offline import held_products, signal_condition
from features._series import last_at_or_before
from features.errors import ConfigError

__all__ = [
    "CHURN_DEFINITIONS",
    "LabelConfig",
    "churn_times",
    "data_end",
    "label_snapshots",
    "trailing_value",
]

ChurnDefinition = Literal["last_product", "inactivity"]
CHURN_DEFINITIONS: Final = ("last_product", "inactivity")


@dataclass(frozen=True, slots=True)
class LabelConfig:
    """How labels are defined.

    >>> LabelConfig(churn_definition="dormant")
    Traceback (most recent call last):
    ...
    features.errors.ConfigError: invalid config churn_definition='dormant': allowed one of: last_product, inactivity
    """

    horizon_days: int = 90
    churn_definition: ChurnDefinition = "last_product"
    inactivity_days: int = 90
    value_days: int = 365

    def __post_init__(self) -> None:
        if self.churn_definition not in CHURN_DEFINITIONS:
            raise ConfigError(
                "churn_definition", self.churn_definition, "one of: " + ", ".join(CHURN_DEFINITIONS)
            )
        for name in ("horizon_days", "inactivity_days", "value_days"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= 3650:
                raise ConfigError(name, value, "a whole number of days, 1..3650")

    def params(self) -> dict[str, object]:
        """The exact definition, for tracking (e.g. MLflow params)."""
        return {
            "label.churn_definition": self.churn_definition,
            "label.horizon_days": self.horizon_days,
            "label.inactivity_days": self.inactivity_days,
            "label.value_days": self.value_days,
            "label.value": "fees + 0.45% card spend + 1.8%/yr avg positive balance "
            "+ 22% of loan instalments",
        }


def _churn_times(events: pl.LazyFrame, cfg: LabelConfig, data_end_us: int) -> pl.LazyFrame:
    """(customer_id, churn_t) for every churn of every customer."""
    if cfg.churn_definition == "last_product":
        moves = (
            events.filter(pl.col("event_type").is_in(["product_opened", "product_closed"]))
            .sort("customer_id", "product_id", "t", pl.col("event_type") == "product_closed")
            .with_columns(
                (pl.col("event_type") == "product_opened").alias("is_open"),
                pl.col("event_type").shift().over("customer_id", "product_id").alias("prev"),
            )
            # a product's open/close changes the count only when its state changes
            .with_columns(
                pl.when(pl.col("is_open") & (pl.col("prev") != "product_opened").fill_null(True))
                .then(1)
                .when(~pl.col("is_open") & (pl.col("prev") == "product_opened"))
                .then(-1)
                .otherwise(0)
                .alias("delta")
            )
            .filter(pl.col("delta") != 0)
            .sort("customer_id", "t", "delta", descending=[False, False, True])
            .with_columns(pl.col("delta").cum_sum().over("customer_id").alias("open"))
        )
        return moves.filter((pl.col("open") == 0) & (pl.col("delta") == -1)).select(
            "customer_id", pl.col("t").alias("churn_t")
        )
    cond = signal_condition(SIGNALS_BY_NAME["initiated"])
    gap = cfg.inactivity_days * DAY_US
    acts = (
        events.filter(cond)
        .select("customer_id", "t")
        .unique()
        .sort("customer_id", "t")
        .with_columns(
            pl.col("t").shift(-1).over("customer_id").fill_null(data_end_us + gap + 1).alias("next")
        )
    )
    return acts.filter(pl.col("next") - pl.col("t") > gap).select(
        "customer_id", (pl.col("t") + gap).alias("churn_t")
    )


def churn_times(events: pl.LazyFrame, cfg: LabelConfig, data_end_us: int) -> pl.DataFrame:
    """Every churn of every customer in clean events: ``customer_id``, ``churn_t`` (µs)."""
    return _churn_times(events, cfg, data_end_us).collect()


def label_snapshots(
    events: pl.LazyFrame, snapshots: pl.DataFrame, cfg: LabelConfig, data_end_us: int
) -> tuple[pl.DataFrame, dict[str, int]]:
    """Labels for (customer_id, as_of) snapshots of clean events (with ``t``).

    Returns the kept snapshots with ``churn`` (0/1) and ``value_minor`` (null where
    censored), and counts of what was excluded and why.
    """
    horizon = cfg.horizon_days * DAY_US
    snaps = snapshots.select(
        "customer_id",
        "as_of",
        pl.col("as_of").dt.cast_time_unit("us").cast(pl.Int64).alias("as_of_us"),
    ).with_row_index("snap")
    churns = _churn_times(events, cfg, data_end_us).collect()
    joined = (
        snaps.join(churns, on="customer_id", how="left")
        .group_by("snap")
        .agg(
            (
                (pl.col("churn_t") > pl.col("as_of_us"))
                & (pl.col("churn_t") <= pl.col("as_of_us") + horizon)
            )
            .any()
            .alias("churn"),
        )
    )
    already = _already_churned(events, snaps, cfg)
    labelled = snaps.join(joined, on="snap").join(already, on="snap", how="left")
    censored = pl.col("as_of_us") + horizon > data_end_us
    excluded_churned = pl.col("already").fill_null(False)
    counts = {
        "censored": int(labelled.select((censored & ~excluded_churned).sum()).item()),
        "already_churned": int(labelled.select(excluded_churned.sum()).item()),
    }
    kept = labelled.filter(~censored & ~excluded_churned)
    value = _value(events, kept, cfg, data_end_us)
    out = kept.join(value, on="snap", how="left").sort("snap")
    counts["kept"] = out.height
    return (
        out.select("customer_id", "as_of", pl.col("churn").cast(pl.Int8), "value_minor"),
        counts,
    )


def _already_churned(events: pl.LazyFrame, snaps: pl.DataFrame, cfg: LabelConfig) -> pl.DataFrame:
    s = snaps.lazy().select("snap", "customer_id", "as_of_us")
    if cfg.churn_definition == "last_product":
        latest = held_products(events, snaps).group_by("snap").agg(pl.len().alias("open"))
        return (
            s.join(latest, on="snap", how="left")
            .select("snap", (pl.col("open").fill_null(0) == 0).alias("already"))
            .collect()
        )
    cond = signal_condition(SIGNALS_BY_NAME["initiated"])
    last = (
        events.filter(cond)
        .select("customer_id", "t")
        .join(s, on="customer_id")
        .filter(pl.col("t") <= pl.col("as_of_us"))
        .group_by("snap")
        .agg(pl.col("t").max().alias("last"))
    )
    gap = cfg.inactivity_days * DAY_US
    return (
        s.join(last, on="snap", how="left")
        .select(
            "snap",
            (pl.col("last").is_null() | (pl.col("as_of_us") - pl.col("last") > gap)).alias(
                "already"
            ),
        )
        .collect()
    )


def _value(
    events: pl.LazyFrame, kept: pl.DataFrame, cfg: LabelConfig, data_end_us: int
) -> pl.DataFrame:
    """The value label over ``(as_of, as_of + value_days]``; null where not over yet."""
    period = cfg.value_days * DAY_US
    value = _period_value(events, kept, 0, cfg.value_days)
    return kept.select(
        "snap",
        pl.when(pl.col("as_of_us") + period <= data_end_us)
        .then(pl.Series(value, dtype=pl.Float64))
        .otherwise(None)
        .alias("value_minor"),
    )


def _period_value(events: pl.LazyFrame, snaps: pl.DataFrame, start: int, end: int) -> np.ndarray:
    """Contribution over ``(as_of + start days, as_of + end days]`` per row of ``snaps``
    (``customer_id``, ``as_of_us``): sums read from prefix sums of the customer's money
    events (sorted by time) at both ends of the period."""
    money = (
        events.filter(pl.col("amount_minor").is_not_null())
        .select(
            "customer_id",
            "t",
            *(
                pl.when(pl.col("event_type") == kind).then("amount_minor").otherwise(0).alias(kind)
                for kind in _VALUE_KINDS
            ),
            pl.col("balance_minor").clip(lower_bound=0).fill_null(0).alias("balance"),
            pl.col("balance_minor").is_not_null().cast(pl.Int64).alias("balances"),
        )
        .collect()
    )
    ids = pl.concat([money["customer_id"], snaps["customer_id"]]).unique().sort()
    codes = pl.Enum(ids)
    money = money.with_columns(
        pl.col("customer_id").cast(codes).to_physical().cast(pl.Int64).alias("cust")
    )
    cust, t = money["cust"].to_numpy(), money["t"].to_numpy()
    if not np.all((np.diff(cust) > 0) | ((np.diff(cust) == 0) & (np.diff(t) >= 0))):
        money = money.sort("cust", "t")  # logs read in order are sorted already
        cust, t = money["cust"].to_numpy(), money["t"].to_numpy()
    snap_cust = snaps["customer_id"].cast(codes).to_physical().cast(pl.Int64).to_numpy()
    as_of = snaps["as_of_us"].to_numpy()
    lo = last_at_or_before(cust, t, snap_cust, as_of + start * DAY_US)
    hi = last_at_or_before(cust, t, snap_cust, as_of + end * DAY_US)

    def total(name: str) -> np.ndarray:
        prefix = np.concatenate([np.zeros(1, np.int64), np.cumsum(money[name].to_numpy())])
        return np.asarray(prefix[hi + 1] - prefix[lo + 1])

    balances = total("balances")
    avg_balance = np.where(balances > 0, total("balance") / np.maximum(balances, 1), 0.0)
    years = (end - start) / 365.0
    return np.asarray(
        total("fee_charged")
        + INTERCHANGE * total("card_payment")
        + DEPOSIT_SPREAD * years * avg_balance
        + LOAN_MARGIN_SHARE * total("loan_repayment")
    )


_VALUE_KINDS: Final = ("fee_charged", "card_payment", "loan_repayment")


def trailing_value(events: pl.LazyFrame, snapshots: pl.DataFrame, days: int = 365) -> pl.DataFrame:
    """The value label's formula over the ``days`` *before* each as-of (a naive baseline).

    ``events`` are clean events (with ``t``); returns ``customer_id``, ``as_of``,
    ``trailing_value_minor`` in the order of ``snapshots``.
    """
    snaps = snapshots.select(
        "customer_id",
        "as_of",
        pl.col("as_of").dt.cast_time_unit("us").cast(pl.Int64).alias("as_of_us"),
    )
    value = _period_value(events, snaps, -days, 0)
    return snaps.select(
        "customer_id", "as_of", pl.Series("trailing_value_minor", value, dtype=pl.Float64)
    )


def data_end(events: pl.LazyFrame) -> int:
    """The last event time of a log (µs): where labels stop being observable."""
    return int(events.select(pl.col("t").max()).collect().item())
