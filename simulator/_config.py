"""Simulator settings and the fixed parameters of the simulated bank."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import date
from typing import Final

from features.errors import ConfigError
from features.events import MERCHANT_CATEGORIES, PRODUCT_TYPES, SEGMENTS

__all__ = ["MERCHANT_CATEGORIES", "SEGMENTS", "SimConfig"]

SEGMENT_SHARE: Final = (0.70, 0.18, 0.04, 0.08)
PRODUCTS: Final = PRODUCT_TYPES
# probability of holding each product at the start, per segment (rows follow SEGMENTS)
PRODUCT_PROB: Final = (
    (1.0, 0.40, 0.55, 0.12, 0.15, 0.03),
    (1.0, 0.80, 0.85, 0.15, 0.35, 0.35),
    (1.0, 0.90, 0.90, 0.10, 0.30, 0.85),
    (1.0, 0.50, 0.60, 0.45, 0.00, 0.10),
)
# monthly income (CNY, median) and its spread; SME income arrives as business transfers
INCOME_MEDIAN: Final = (7_000.0, 22_000.0, 65_000.0, 45_000.0)
BALANCE_MEDIAN: Final = (25_000.0, 380_000.0, 4_200_000.0, 600_000.0)
# events per active day, per segment
LOGIN_RATE: Final = (0.22, 0.28, 0.20, 0.45)
CARD_RATE: Final = (0.30, 0.40, 0.35, 0.50)
ATM_RATE: Final = (0.040, 0.030, 0.015, 0.030)
TRANSFER_OUT_RATE: Final = (0.070, 0.090, 0.080, 0.300)
TRANSFER_IN_RATE: Final = (0.020, 0.040, 0.060, 0.400)
BRANCH_RATE: Final = (0.006, 0.012, 0.030, 0.020)
# yearly rate of churn without any warning (moved abroad, died, ...), per segment
SUDDEN_CHURN: Final = (0.020, 0.010, 0.006, 0.025)
# susceptibility of the hazard to disengagement, per segment
SUSCEPTIBILITY: Final = (1.0, 0.75, 0.5, 0.9)
COST_TO_SERVE: Final = (25.0, 45.0, 180.0, 80.0)  # CNY a month
MERCHANT_SHARE: Final = (0.26, 0.16, 0.04, 0.07, 0.12, 0.15, 0.06, 0.05, 0.04, 0.02, 0.03)
MERCHANT_TICKET: Final = (1.0, 0.8, 6.0, 1.6, 2.0, 1.2, 1.5, 1.0, 1.8, 4.0, 1.0)
OTHER_BANKS: Final = ("ICBC", "CCB", "BOC", "ABC", "CMB", "PSBC", "BOCOM", "CITIC", "SPDB", "CIB")
WEEKDAY_SPEND: Final = (0.90, 0.90, 0.95, 1.00, 1.15, 1.30, 1.05)  # Monday first
WEEKDAY_LOGIN: Final = (1.10, 1.05, 1.00, 1.00, 1.00, 0.85, 0.80)
MONTH_SPEND: Final = (1.20, 1.25, 0.95, 0.95, 1.00, 1.00, 1.05, 1.05, 0.95, 1.05, 1.05, 1.25)
DEPOSIT_SPREAD: Final = 0.018  # yearly net interest margin earned on deposits
INTERCHANGE: Final = 0.0045  # share of card spend earned as interchange
LOAN_MARGIN_SHARE: Final = 0.22  # share of a loan instalment that is bank margin


@dataclass(frozen=True, slots=True)
class SimConfig:
    """What to simulate. The same config gives the same bytes.

    >>> SimConfig(customers=10, months=1).days
    31
    """

    customers: int = 10_000
    months: int = 24
    seed: int = 7
    start: date = date(2024, 1, 1)
    currency: str = "CNY"
    dirty_rate: float = 0.0
    utc_offset_hours: int = 8
    chunk_customers: int = 12_500
    shift_share: float = 0.0
    """Share of customers hit by a population shift in the last ``shift_days``."""
    shift_days: int = 60

    def __post_init__(self) -> None:
        checks = (
            ("customers", self.customers, 1 <= self.customers <= 50_000_000, "1..50000000"),
            ("months", self.months, 1 <= self.months <= 240, "1..240"),
            ("seed", self.seed, 0 <= self.seed < 2**63, "0..2**63-1"),
            ("dirty_rate", self.dirty_rate, 0.0 <= self.dirty_rate <= 0.5, "0.0..0.5"),
            (
                "currency",
                self.currency,
                len(self.currency) == 3 and self.currency.isupper(),
                "ISO 4217 code",
            ),
            (
                "utc_offset_hours",
                self.utc_offset_hours,
                -12 <= self.utc_offset_hours <= 14,
                "-12..14",
            ),
            (
                "chunk_customers",
                self.chunk_customers,
                100 <= self.chunk_customers <= 1_000_000,
                "100..1000000",
            ),
            ("shift_share", self.shift_share, 0.0 <= self.shift_share <= 1.0, "0.0..1.0"),
            ("shift_days", self.shift_days, 1 <= self.shift_days <= 365, "1..365"),
        )
        for name, value, ok, allowed in checks:
            if not ok:
                raise ConfigError(name, value, allowed)

    @property
    def end(self) -> date:
        """First day after the simulated period."""
        month = self.start.month - 1 + self.months
        return self.start.replace(year=self.start.year + month // 12, month=month % 12 + 1)

    @property
    def days(self) -> int:
        return (self.end - self.start).days

    def replace(self, **changes: object) -> SimConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
