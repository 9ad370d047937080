"""The simulated bank: a latent churn process and the events it leaves behind.

Generation is vectorised over customers and done per chunk of customers, so memory
is bounded whatever the size of the bank. Each chunk has its own random stream
derived from (seed, chunk index): the output does not depend on anything else.

Phase A walks day by day over the latent state of every customer of the chunk
(disengagement, salary redirection, complaints, balance estimate, hazard, churn)
and emits the discrete events it decides. Phase B draws the high-volume behaviour
(logins, card payments, cash, transfers, visits, surveys) from Poisson rates that
depend on the latent state of each day.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from simulator import _config as P
from simulator._config import SimConfig

I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
F64 = npt.NDArray[np.float64]
B = npt.NDArray[np.bool_]

TYPES: Final = (
    "customer_onboarded",
    "manager_reassigned",
    "product_opened",
    "product_closed",
    "salary_credited",
    "transfer_in",
    "transfer_out",
    "card_payment",
    "cash_withdrawal",
    "fee_charged",
    "interest_paid",
    "loan_repayment",
    "complaint_filed",
    "complaint_resolved",
    "digital_login",
    "branch_visit",
    "survey_answered",
)
(
    T_ONBOARD,
    T_REASSIGN,
    T_OPEN,
    T_CLOSE,
    T_SALARY,
    T_TIN,
    T_TOUT,
    T_CARD,
    T_CASH,
    T_FEE,
    T_INTEREST,
    T_LOAN,
    T_CFILED,
    T_CRESOLVED,
    T_LOGIN,
    T_BRANCH,
    T_SURVEY,
) = range(len(TYPES))
MONEY_TYPES: Final = frozenset({T_SALARY, T_TIN, T_TOUT, T_CARD, T_CASH, T_FEE, T_INTEREST, T_LOAN})
CHANNELS: Final = (
    "mobile",
    "web",
    "branch",
    "standing_order",
    "pos",
    "contactless",
    "online",
    "atm",
    "other_bank_atm",
)
CH_MOBILE, CH_WEB, CH_BRANCH, CH_SO, CH_POS, CH_CONTACTLESS, CH_ONLINE, CH_ATM, CH_OATM = range(9)
FEE_TYPES: Final = (
    "maintenance",
    "overdraft",
    "atm",
    "fx",
    "card_annual",
    "late_payment",
    "transfer",
    "other",
)
F_MAINT, F_OVERDRAFT, F_ATM, F_FX, F_CARD, F_LATE, F_TRANSFER, F_OTHER = range(8)
COMPLAINT_CATEGORIES: Final = ("fees", "service", "digital", "card", "loan", "other")
PURPOSES: Final = ("advice", "cash", "service", "complaint", "other")
SURVEYS: Final = ("nps", "csat")
INITIATED: Final = ("customer", "bank")
COUNTERPARTY: Final = ("internal", "external")
SLOTS: Final = 8  # product slots per customer: 6 at most at start, 2 opened later
MANAGER_SLOTS: Final = ((0, 1, 2), (3, 4), (5, 6), (7, 8))  # per segment, within a branch
DAY_US: Final = 86_400_000_000
K_DISENGAGED: Final = 0.022  # daily hazard at full disengagement (times susceptibility)

T_SETTLE: Final = len(TYPES)  # internal: the closing transfer, settled after sorting
SIGN: Final = np.zeros(len(TYPES) + 1, np.int64)
SIGN[[T_SALARY, T_TIN, T_INTEREST]] = 1
SIGN[[T_TOUT, T_CARD, T_CASH, T_FEE, T_LOAN, T_SETTLE]] = -1
# per type, which attribute goes into the packed columns a, b, c
PACK: Final[dict[int, tuple[str, ...]]] = {
    T_ONBOARD: ("segment", "branch", "manager"),
    T_REASSIGN: ("manager", "prev_manager", "branch"),
    T_OPEN: ("slot", "ptype"),
    T_CLOSE: ("slot", "ptype", "initiated"),
    T_SALARY: ("employer",),
    T_TIN: ("counterparty", "bank", "channel"),
    T_TOUT: ("counterparty", "bank", "channel"),
    T_SETTLE: ("counterparty", "bank", "channel"),
    T_CARD: ("mcc", "channel"),
    T_CASH: ("channel",),
    T_FEE: ("fee",),
    T_INTEREST: (),
    T_LOAN: ("slot", "days_late"),
    T_CFILED: ("complaint", "category"),
    T_CRESOLVED: ("complaint", "satisfied"),
    T_LOGIN: ("channel",),
    T_BRANCH: ("branch", "purpose"),
    T_SURVEY: ("score", "survey"),
}
PACKED: Final = ("a", "b", "c")


Cols = dict[str, npt.NDArray[Any]]
DTYPES: Final[dict[str, type[np.generic]]] = {
    "cust": np.int32,
    "t": np.int64,
    "amount": np.int64,
    "a": np.int32,
    "b": np.int32,
    "c": np.int32,
}


class _Builder:
    """Accumulates events batch by batch in a few packed columns (see :data:`PACK`)."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, Cols]] = []

    def add(
        self,
        kind: int,
        cust: npt.ArrayLike,
        t_us: npt.ArrayLike,
        amount: npt.ArrayLike = 0,
        **attrs: npt.ArrayLike,
    ) -> None:
        c = np.asarray(cust, dtype=np.int32)
        if c.size == 0:
            return
        names = PACK[kind]
        if set(attrs) != set(names):
            raise ValueError(
                f"{TYPES[kind] if kind < len(TYPES) else kind}: {sorted(attrs)} != {names}"
            )
        batch: Cols = {
            "cust": c,
            "t": np.broadcast_to(np.asarray(t_us, dtype=np.int64), c.shape),
            "amount": np.broadcast_to(np.asarray(amount, dtype=np.int64), c.shape),
        }
        for slot, name in zip(PACKED, names, strict=False):
            batch[slot] = np.broadcast_to(np.asarray(attrs[name], dtype=np.int32), c.shape)
        self.batches.append((kind, batch))

    def finish(self) -> Cols:
        sizes = [b["cust"].size for _, b in self.batches]
        out: Cols = {
            "type": np.repeat(np.array([k for k, _ in self.batches], dtype=np.int8), sizes)
        }
        for name, dtype in DTYPES.items():
            out[name] = np.concatenate(
                [
                    b[name] if name in b else np.full(b["cust"].size, -1, dtype)
                    for _, b in self.batches
                ]
            )
        return out


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk of simulated customers: their events (sorted) and ground truth."""

    first_customer: int
    events: Cols
    customers: dict[str, npt.NDArray[Any]]
    hazard: npt.NDArray[np.float32]  # (customers, weeks) mean daily hazard
    disengagement: npt.NDArray[np.float32]  # (customers, weeks)
    contribution: npt.NDArray[np.float64]  # (customers, months) CNY


def _days_from_epoch(d: date) -> int:
    return (d - date(1970, 1, 1)).days


def simulate_chunk(cfg: SimConfig, chunk: int) -> Chunk:
    """Simulate customers ``[chunk * size, (chunk + 1) * size)`` (clipped to the bank)."""
    first = chunk * cfg.chunk_customers
    n = min(cfg.chunk_customers, cfg.customers - first)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, chunk]))
    days = cfg.days
    weeks = (days + 6) // 7
    base_us = _days_from_epoch(cfg.start) * DAY_US - cfg.utc_offset_hours * 3_600_000_000
    day_dates = np.arange(
        np.datetime64(cfg.start), np.datetime64(cfg.start) + days, dtype="datetime64[D]"
    )
    dom = (day_dates - day_dates.astype("datetime64[M]")).astype(np.int64) + 1
    month_idx = day_dates.astype("datetime64[M]").astype(np.int64) - np.datetime64(
        cfg.start, "M"
    ).astype(np.int64)
    calendar_month = day_dates.astype("datetime64[M]").astype(np.int64) % 12
    weekday = (day_dates.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
    month_end = np.r_[month_idx[1:] != month_idx[:-1], True]
    n_months = int(month_idx[-1]) + 1

    def at(day: npt.ArrayLike, seconds: npt.ArrayLike) -> I64:
        return (
            base_us
            + np.asarray(day, np.int64) * DAY_US
            + (np.asarray(seconds, np.float64) * 1e6).astype(np.int64)
        )

    def daytime(size: int, lo: float = 7.0, hi: float = 23.0) -> F64:
        hours = np.clip(rng.normal((lo + hi) / 2, (hi - lo) / 4, size), lo, hi - 1e-3)
        return hours * 3600.0

    ev = _Builder()

    # ------------------------------------------------------------------ customers
    seg = rng.choice(4, size=n, p=P.SEGMENT_SHARE)
    n_branches = int(np.clip(cfg.customers // 500, 4, 80))
    branch = rng.integers(0, n_branches, n)
    slot_choice = rng.random(n)
    manager_slot = np.array(
        [
            MANAGER_SLOTS[s][int(u * len(MANAGER_SLOTS[s]))]
            for s, u in zip(seg, slot_choice, strict=True)
        ],
        dtype=np.int64,
    )
    manager = branch * 9 + manager_slot
    is_new = rng.random(n) < 0.15
    tenure_days = np.minimum(rng.exponential(6 * 365, n), 30 * 365).astype(np.int64) + 1
    onb = np.where(is_new, rng.integers(0, max(days - 30, 1), n), -tenure_days)
    income = np.exp(rng.normal(np.log(np.take(P.INCOME_MEDIAN, seg)), 0.45))
    salaried = (seg != 3) & (rng.random(n) < 0.85)
    payday = rng.integers(1, 29, n)
    employer = rng.integers(0, 20_000, n)
    bal0 = np.exp(rng.normal(np.log(np.take(P.BALANCE_MEDIAN, seg)), 0.9))
    bal0 = np.where(is_new, bal0 * 0.3, bal0)
    spend_ratio = rng.uniform(0.70, 0.97, n)
    susceptibility = np.take(P.SUSCEPTIBILITY, seg) * rng.lognormal(0.0, 0.35, n)
    sudden = np.take(P.SUDDEN_CHURN, seg) / 365.0
    threshold = rng.uniform(0.25, 0.65, n)
    recover_rate = np.where(rng.random(n) < 0.35, 0.012, 0.002)
    digital = np.where(rng.random(n) < 0.15, 0.03, rng.lognormal(0.0, 0.5, n))
    card_fee_month = rng.integers(0, 12, n)

    # products: slot 0 is the current account, 1..5 the other types held at start
    prod_type = np.full((n, SLOTS), -1, np.int64)
    prod_open = np.zeros((n, SLOTS), bool)
    held = rng.random((n, 6)) < np.asarray(P.PRODUCT_PROB)[seg]
    held[:, 0] = True
    prod_type[:, :6] = np.where(held, np.arange(6), -1)
    prod_open[:, :6] = held
    installment = np.zeros((n, SLOTS))
    installment[:, 3] = np.where(held[:, 3], rng.lognormal(np.log(2_500), 0.5, n), 0)
    installment[:, 4] = np.where(held[:, 4], rng.lognormal(np.log(6_500), 0.4, n), 0)
    n_opened = np.zeros(n, np.int64)

    # onboarding: the customer and the products held at start
    onb_sec = daytime(n, 9, 17)
    ev.add(T_ONBOARD, np.arange(n), at(onb, onb_sec), segment=seg, branch=branch, manager=manager)
    rows, cols = np.nonzero(prod_open)
    ev.add(
        T_OPEN,
        rows,
        at(onb[rows], onb_sec[rows] + 60 + cols * 30),
        slot=cols,
        ptype=prod_type[rows, cols],
    )
    new = np.nonzero(is_new)[0]
    ev.add(
        T_TIN,
        new,
        at(onb[new], onb_sec[new] + 400),
        amount=_minor(bal0[new]),
        counterparty=1,
        bank=rng.integers(0, len(P.OTHER_BANKS), new.size),
        channel=CH_BRANCH,
    )
    opening = np.where(is_new, 0, _minor(bal0))
    bal = np.where(is_new, 0.0, bal0)

    # ------------------------------------------------------------------ phase A
    d = np.clip(rng.beta(1.2, 12.0, n), 0, 1)
    d_hist = np.zeros((days, n), np.float32)
    churn_day = np.full(n, days, np.int64)
    churn_gradual = np.zeros(n, bool)
    salary_on = np.ones(n, bool)
    redirected_at = np.full(n, -1, np.int64)
    comp_open = np.full(n, -1, np.int64)
    comp_resolve = np.full(n, -1, np.int64)
    comp_satisfied = np.zeros(n, bool)
    comp_seq = np.zeros(n, np.int64)
    haz_week = np.zeros((n, weeks), np.float64)
    d_week = np.zeros((n, weeks), np.float64)
    contribution = np.zeros((n, n_months), np.float64)
    shift_start = days - cfg.shift_days
    shifted = rng.random(n) < cfg.shift_share
    daily_out = income * spend_ratio / 30.4

    for t in range(days):
        alive = (onb <= t) & (t < churn_day)
        idx_alive = alive
        m = int(month_idx[t])

        # triggers: competitor offers, life events
        shock = idx_alive & (rng.random(n) < 1 / 3_000)
        d = np.where(shock, d + rng.uniform(0.25, 0.75, n), d)
        if cfg.shift_share > 0 and t >= shift_start:
            d = np.where(shifted & idx_alive, np.maximum(d, 0.8), d)

        # complaints: filed, resolved, left open
        file = idx_alive & (comp_open < 0) & (rng.random(n) < 0.0010 * (1 + 5 * d))
        if file.any():
            fi = np.nonzero(file)[0]
            fast = rng.random(fi.size) < 0.7
            delay = np.where(fast, rng.geometric(1 / 5, fi.size), rng.geometric(1 / 40, fi.size))
            comp_open[fi] = t
            comp_resolve[fi] = t + delay
            comp_satisfied[fi] = rng.random(fi.size) < np.where(fast, 0.8, 0.25)
            comp_seq[fi] += 1
            ev.add(
                T_CFILED,
                fi,
                at(t, daytime(fi.size, 8, 20)),
                complaint=comp_seq[fi],
                category=rng.choice(6, fi.size, p=(0.30, 0.25, 0.15, 0.12, 0.08, 0.10)),
            )
        resolve = idx_alive & (comp_open >= 0) & (comp_resolve == t)
        if resolve.any():
            ri = np.nonzero(resolve)[0]
            ev.add(
                T_CRESOLVED,
                ri,
                at(t, daytime(ri.size, 9, 18)),
                complaint=comp_seq[ri],
                satisfied=comp_satisfied[ri].astype(np.int64),
            )
            d[ri] += np.where(comp_satisfied[ri], -0.05, 0.12)
            comp_open[ri] = -1
            answer = ri[rng.random(ri.size) < 0.4]
            score = np.clip(
                np.round(
                    8.0
                    - 8 * d[answer]
                    - 3 * ~comp_satisfied[answer]
                    + rng.normal(0, 1.2, answer.size)
                ),
                0,
                10,
            )
            ev.add(T_SURVEY, answer, at(t + 1, daytime(answer.size, 10, 20)), score=score, survey=1)
        long_open = (comp_open >= 0) & (t - comp_open > 14)
        d = np.where(long_open & idx_alive, d + 0.004, d)

        # fee shocks: a new or raised charge the customer notices
        fee_shock = idx_alive & (rng.random(n) < 1 / 1_500)
        if fee_shock.any():
            fi = np.nonzero(fee_shock)[0]
            amount = rng.uniform(80, 400, fi.size)
            ev.add(
                T_FEE,
                fi,
                at(t, daytime(fi.size, 1, 5)),
                amount=_minor(amount),
                fee=rng.choice([F_TRANSFER, F_FX, F_OTHER], fi.size),
            )
            bal[fi] -= amount
            contribution[fi, m] += amount
            d[fi] += 0.15

        # recovery and noise
        d = np.clip(d - recover_rate * d + rng.normal(0, 0.002, n), 0.0, 1.0)

        # salary redirected to another bank, and back
        redirect = salaried & salary_on & idx_alive & (d > threshold) & (rng.random(n) < 0.05)
        salary_on &= ~redirect
        redirected_at = np.where(redirect & (redirected_at < 0), t, redirected_at)
        back = salaried & ~salary_on & idx_alive & (d < threshold - 0.25) & (rng.random(n) < 0.03)
        salary_on |= back
        pay = idx_alive & salary_on & (payday == dom[t])
        if pay.any():
            pi = np.nonzero(pay)[0]
            amount = income[pi] * rng.normal(1.0, 0.03, pi.size)
            sal = pi[salaried[pi]]
            other = pi[~salaried[pi]]
            sal_amount = amount[salaried[pi]]
            ev.add(
                T_SALARY,
                sal,
                at(t, rng.uniform(2, 6, sal.size) * 3600),
                amount=_minor(sal_amount),
                employer=employer[sal],
            )
            # income of the others (pensions, rents, SME revenue) arrives as transfers
            oth_amount = amount[~salaried[pi]] * np.where(seg[other] == 3, 0.5, 1.0)
            ev.add(
                T_TIN,
                other,
                at(t, daytime(other.size, 8, 18)),
                amount=_minor(oth_amount),
                counterparty=1,
                bank=rng.integers(0, len(P.OTHER_BANKS), other.size),
                channel=CH_WEB,
            )
            bal[pi] += amount

        # balances drained to other banks
        drain = idx_alive & (d > 0.45) & (rng.random(n) < 0.025 * d) & (bal > 500)
        if drain.any():
            di = np.nonzero(drain)[0]
            amount = bal[di] * rng.uniform(0.3, 0.85, di.size)
            ev.add(
                T_TOUT,
                di,
                at(t, daytime(di.size, 8, 22)),
                amount=_minor(amount),
                counterparty=1,
                bank=rng.integers(0, len(P.OTHER_BANKS), di.size),
                channel=rng.choice([CH_MOBILE, CH_WEB, CH_BRANCH], di.size, p=(0.6, 0.25, 0.15)),
            )
            bal[di] -= amount

        # products closed one by one
        close = idx_alive & (d > 0.45) & (rng.random(n) < 0.02 * d)
        if close.any():
            ci = np.nonzero(close)[0]
            candidates = prod_open[ci].copy()
            candidates[:, 0] = False
            pick = np.argmax(rng.random(candidates.shape) * candidates, axis=1)
            ok = candidates[np.arange(ci.size), pick]
            ci, pick = ci[ok], pick[ok]
            prod_open[ci, pick] = False
            ev.add(
                T_CLOSE,
                ci,
                at(t, daytime(ci.size, 9, 18)),
                slot=pick,
                ptype=prod_type[ci, pick],
                initiated=0,
            )

        # engaged customers open new products
        grow = idx_alive & (d < 0.15) & (n_opened < 2) & (rng.random(n) < 1 / 700)
        if grow.any():
            gi = np.nonzero(grow)[0]
            missing = np.ones((gi.size, 6), bool)
            for s in range(SLOTS):
                tp = prod_type[gi, s]
                live = prod_open[gi, s] & (tp >= 0)
                missing[np.nonzero(live)[0], tp[live]] = False
            missing[:, 0] = False
            missing[:, 4] = False  # no mortgages on a whim
            pick = np.argmax(rng.random(missing.shape) * missing, axis=1)
            ok = missing[np.arange(gi.size), pick]
            gi, pick = gi[ok], pick[ok]
            slot = 6 + n_opened[gi]
            prod_type[gi, slot] = pick
            prod_open[gi, slot] = True
            installment[gi, slot] = np.where(
                pick == 3, rng.lognormal(np.log(2_000), 0.5, gi.size), 0
            )
            n_opened[gi] += 1
            ev.add(T_OPEN, gi, at(t, daytime(gi.size, 9, 18)), slot=slot, ptype=pick)

        # relationship managers move on
        move = idx_alive & (rng.random(n) < 0.06 / 365)
        if move.any():
            mi = np.nonzero(move)[0]
            new_slot = np.array(
                [
                    MANAGER_SLOTS[s][
                        (MANAGER_SLOTS[s].index(int(m_ % 9)) + 1) % len(MANAGER_SLOTS[s])
                    ]
                    for s, m_ in zip(seg[mi], manager[mi], strict=True)
                ],
                dtype=np.int64,
            )
            new_manager = branch[mi] * 9 + new_slot
            ev.add(
                T_REASSIGN,
                mi,
                at(t, daytime(mi.size, 9, 17)),
                manager=new_manager,
                prev_manager=manager[mi],
                branch=branch[mi],
            )
            manager[mi] = new_manager

        # monthly: loans, fees, interest
        if dom[t] == 15:
            for s in (3, 4, 6, 7):
                li = np.nonzero(idx_alive & prod_open[:, s] & (installment[:, s] > 0))[0]
                if li.size == 0:
                    continue
                late = rng.random(li.size) < 0.012 + 0.3 * d[li]
                days_late = np.where(late, np.minimum(rng.geometric(0.15, li.size), 60), 0)
                when = t + days_late
                keep = when < churn_day[li]
                li, days_late, when = li[keep], days_late[keep], when[keep]
                amount = installment[li, s]
                ev.add(
                    T_LOAN,
                    li,
                    at(when, rng.uniform(1, 4, li.size) * 3600),
                    amount=_minor(amount),
                    slot=s,
                    days_late=days_late,
                )
                lf = li[days_late > 0]
                ev.add(
                    T_FEE,
                    lf,
                    at(when[days_late > 0], 5 * 3600),
                    amount=_minor(50.0),
                    fee=F_LATE,
                )
                bal[li] -= amount
                contribution[li, m] += amount * P.LOAN_MARGIN_SHARE
                contribution[lf, m] += 50.0
        if dom[t] == 1:
            mi = np.nonzero(idx_alive & (seg == 0) & (bal < 5_000))[0]
            ev.add(T_FEE, mi, at(t, 1800), amount=_minor(10.0), fee=F_MAINT)
            bal[mi] -= 10.0
            contribution[mi, m] += 10.0
            ci = np.nonzero(
                idx_alive & (seg == 0) & prod_open[:, 2] & (card_fee_month == calendar_month[t])
            )[0]
            ev.add(T_FEE, ci, at(t, 2400), amount=_minor(100.0), fee=F_CARD)
            bal[ci] -= 100.0
            contribution[ci, m] += 100.0
            d[ci] += 0.03
        if month_end[t]:
            ii = np.nonzero(idx_alive & (bal > 200))[0]
            interest = bal[ii] * 0.006 / 12
            ok = interest >= 0.01
            ii, interest = ii[ok], interest[ok]
            ev.add(T_INTEREST, ii, at(t, 86_000), amount=_minor(interest))
            bal[ii] += interest
            oi = np.nonzero(idx_alive & (bal < 0))[0]
            ev.add(T_FEE, oi, at(t, 86_100), amount=_minor(30.0), fee=F_OVERDRAFT)
            bal[oi] -= 30.0
            contribution[oi, m] += 30.0
            d[oi] += 0.06

        # everyday spending, as expected (phase B draws the actual events)
        active = idx_alive & (t > onb)
        bal = np.where(active, bal - daily_out * (1 - 0.6 * d), bal)
        contribution[:, m] += np.where(active, np.maximum(bal, 0) * P.DEPOSIT_SPREAD / 365, 0.0)

        # the hazard, and churn
        d = np.clip(d, 0.0, 1.0)
        redirected = salaried & ~salary_on
        hazard = np.where(
            alive,
            sudden
            + K_DISENGAGED * susceptibility * d**3 * (1 + 1.5 * redirected)
            + 0.0004 * long_open,
            0.0,
        )
        haz_week[:, t // 7] += hazard
        d_week[:, t // 7] += np.where(alive, d, 0.0)
        d_hist[t] = d
        churn = alive & (rng.random(n) < hazard)
        if churn.any():
            ci = np.nonzero(churn)[0]
            churn_day[ci] = t
            churn_gradual[ci] = d[ci] > 0.3
            ev.add(
                T_SETTLE,
                ci,
                at(t, 86_200),
                amount=0,
                counterparty=1,
                bank=rng.integers(0, len(P.OTHER_BANKS), ci.size),
                channel=CH_BRANCH,
            )
            rows, cols = np.nonzero(prod_open[ci])
            order = np.where(cols == 0, SLOTS, cols)  # the current account closes last
            ev.add(
                T_CLOSE,
                ci[rows],
                at(t, 86_250 + order * 10),
                slot=cols,
                ptype=prod_type[ci[rows], cols],
                initiated=0,
            )
            prod_open[ci] = False

    for mm in range(n_months):
        in_month = month_idx == mm
        alive_days = np.clip(
            np.minimum(churn_day, np.nonzero(in_month)[0][-1] + 1)
            - np.maximum(onb, np.nonzero(in_month)[0][0]),
            0,
            None,
        )
        contribution[:, mm] -= np.take(P.COST_TO_SERVE, seg) * alive_days / in_month.sum()

    # ------------------------------------------------------------------ phase B
    day_ix = np.arange(days)
    alive_m = (onb[None, :] <= day_ix[:, None]) & (day_ix[:, None] < churn_day[None, :])
    alive_m &= day_ix[:, None] > onb[None, :]
    wd = weekday
    spend_season = np.asarray(P.MONTH_SPEND)[calendar_month] * np.asarray(P.WEEKDAY_SPEND)[wd]

    def draw(rate: npt.NDArray[np.floating]) -> tuple[I64, I64]:
        """Daily counts ~ Poisson(rate), for rates well below 1 (truncated at 3 a day)."""
        lam = rate.astype(np.float32, copy=False).ravel()
        u = rng.random(lam.shape, dtype=np.float32)
        p0 = np.exp(-lam)
        c1 = p0 * (1 + lam)
        c2 = c1 + p0 * lam * lam * np.float32(0.5)
        # P(count >= k) thresholds; the k-th event of a day exists where u passes it
        flat = np.concatenate(
            [np.flatnonzero(u > p0), np.flatnonzero(u > c1), np.flatnonzero(u > c2)]
        )
        return flat // n, flat % n

    # digital logins
    login_rate = (
        _f32(np.take(P.LOGIN_RATE, seg) * digital)[None, :]
        * _f32(np.asarray(P.WEEKDAY_LOGIN)[wd])[:, None]
        * (1 - 0.85 * d_hist)
        * alive_m
    )
    lt, lc = draw(login_rate)
    del login_rate
    ev.add(
        T_LOGIN,
        lc,
        at(lt, daytime(lc.size, 6, 24)),
        channel=np.where(rng.random(lc.size) < 0.8, CH_MOBILE, CH_WEB),
    )

    # card payments
    card_rate_i = np.take(P.CARD_RATE, seg)
    card_rate = (
        _f32(card_rate_i)[None, :] * _f32(spend_season)[:, None] * (1 - 0.75 * d_hist) * alive_m
    )
    ct, cc = draw(card_rate)
    del card_rate
    mcc = rng.choice(len(P.MERCHANT_CATEGORIES), cc.size, p=P.MERCHANT_SHARE)
    ticket = income * spend_ratio * 0.45 / (card_rate_i * 30.4) / 1.5
    card_amount = (
        ticket[cc] * np.asarray(P.MERCHANT_TICKET)[mcc] * rng.lognormal(-0.18, 0.6, cc.size)
    )
    u = rng.random(cc.size)
    ev.add(
        T_CARD,
        cc,
        at(ct, daytime(cc.size, 7, 23)),
        amount=_minor(card_amount),
        mcc=mcc,
        channel=np.where(mcc == 5, CH_ONLINE, np.where(u < 0.55, CH_CONTACTLESS, CH_POS)),
    )
    np.add.at(contribution, (cc, month_idx[ct]), card_amount * P.INTERCHANGE)

    # cash
    atm_rate = _f32(np.take(P.ATM_RATE, seg))[None, :] * (1 - 0.5 * d_hist) * alive_m
    at_, ac = draw(atm_rate)
    del atm_rate
    atm_amount = 100.0 * (
        1
        + rng.poisson(
            (income[ac] * spend_ratio[ac] * 0.12) / (np.take(P.ATM_RATE, seg)[ac] * 30.4) / 100
        )
    )
    channel = rng.choice([CH_ATM, CH_OATM, CH_BRANCH], ac.size, p=(0.72, 0.2, 0.08))
    cash_time = at(at_, daytime(ac.size, 8, 22))
    ev.add(T_CASH, ac, cash_time, amount=_minor(atm_amount), channel=channel)
    foreign = channel == CH_OATM
    ev.add(
        T_FEE,
        ac[foreign],
        cash_time[foreign] + 1_000_000,
        amount=_minor(4.0),
        fee=F_ATM,
    )
    np.add.at(contribution, (ac[foreign], month_idx[at_[foreign]]), 4.0)

    # everyday transfers out (rent, bills, family) and in
    tout_rate = _f32(np.take(P.TRANSFER_OUT_RATE, seg))[None, :] * (1 - 0.4 * d_hist) * alive_m
    tt, tc = draw(tout_rate)
    del tout_rate
    tout_amount = (
        income[tc]
        * spend_ratio[tc]
        * 0.40
        / (np.take(P.TRANSFER_OUT_RATE, seg)[tc] * 30.4)
        * rng.lognormal(-0.3, 0.75, tc.size)
    )
    external = rng.random(tc.size) < 0.30 + 0.45 * d_hist[tt, tc]
    ev.add(
        T_TOUT,
        tc,
        at(tt, daytime(tc.size, 7, 23)),
        amount=_minor(tout_amount),
        counterparty=external.astype(np.int64),
        bank=np.where(external, rng.integers(0, len(P.OTHER_BANKS), tc.size), -1),
        channel=rng.choice(
            [CH_MOBILE, CH_WEB, CH_BRANCH, CH_SO], tc.size, p=(0.55, 0.12, 0.05, 0.28)
        ),
    )
    tin_rate = _f32(np.take(P.TRANSFER_IN_RATE, seg))[None, :] * (1 - 0.3 * d_hist) * alive_m
    it, ic = draw(tin_rate)
    del tin_rate
    tin_amount = (
        income[ic]
        * np.where(seg[ic] == 3, 0.55, 0.08)
        / (np.take(P.TRANSFER_IN_RATE, seg)[ic] * 30.4)
        * rng.lognormal(-0.3, 0.75, ic.size)
    )
    ext_in = rng.random(ic.size) < 0.55
    ev.add(
        T_TIN,
        ic,
        at(it, daytime(ic.size, 7, 23)),
        amount=_minor(tin_amount),
        counterparty=ext_in.astype(np.int64),
        bank=np.where(ext_in, rng.integers(0, len(P.OTHER_BANKS), ic.size), -1),
        channel=rng.choice([CH_MOBILE, CH_WEB, CH_BRANCH], ic.size, p=(0.7, 0.2, 0.1)),
    )

    # branch visits and spontaneous survey answers
    visit_rate = (
        _f32(np.take(P.BRANCH_RATE, seg))[None, :]
        * (1 - 0.3 * d_hist)
        * alive_m
        * (wd < 6)[:, None]
    )
    vt, vc = draw(visit_rate)
    del visit_rate
    ev.add(
        T_BRANCH,
        vc,
        at(vt, daytime(vc.size, 9, 17)),
        branch=branch[vc],
        purpose=rng.choice(len(PURPOSES), vc.size, p=(0.3, 0.25, 0.3, 0.05, 0.1)),
    )
    survey_rate = np.full(n, 0.0015, np.float32)[None, :] * alive_m
    st, sc = draw(survey_rate)
    del survey_rate
    score = np.clip(np.round(8.3 - 7.5 * d_hist[st, sc] + rng.normal(0, 1.3, sc.size)), 0, 10)
    ev.add(
        T_SURVEY,
        sc,
        at(st, daytime(sc.size, 10, 21)),
        score=score,
        survey=rng.integers(0, 2, sc.size),
    )
    del alive_m

    # nothing happens after the day of churn (late repayments and surveys scheduled then)
    cutoff = np.where(churn_day < days, base_us + (churn_day + 1) * DAY_US, np.iinfo(np.int64).max)
    events = _finish(ev, opening, cutoff)
    weeks_alive = np.maximum(
        np.minimum(churn_day[:, None], np.minimum((np.arange(weeks) + 1) * 7, days)[None, :])
        - np.maximum(onb[:, None], (np.arange(weeks) * 7)[None, :]),
        0,
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        haz = np.where(weeks_alive > 0, haz_week / np.maximum(weeks_alive, 1), np.nan)
        dis = np.where(weeks_alive > 0, d_week / np.maximum(weeks_alive, 1), np.nan)
    customers: dict[str, npt.NDArray[Any]] = {
        "index": np.arange(first, first + n),
        "segment": seg,
        "branch": branch,
        "onboard_day": onb,
        "churn_day": np.where(churn_day < days, churn_day, -1),
        "churn_gradual": churn_gradual,
        "salaried": salaried,
        "salary_redirected_day": redirected_at,
        "monthly_income": income,
        "shifted": shifted,
    }
    return Chunk(
        first, events, customers, haz.astype(np.float32), dis.astype(np.float32), contribution
    )


def _f32(values: npt.ArrayLike) -> npt.NDArray[np.float32]:
    return np.asarray(values, dtype=np.float32)


def _minor(amount: npt.ArrayLike) -> I64:
    """CNY (float) to minor units, at least 1."""
    return np.maximum(np.round(np.asarray(amount, np.float64) * 100.0), 1).astype(np.int64)


def _finish(ev: _Builder, opening: I64, cutoff: I64) -> Cols:
    """Sort by customer and time, settle closing transfers, compute balances and seq."""
    cols = ev.finish()
    cust_all = cols["cust"].astype(np.int64)
    # nothing after the cutoff; then one int64 key: customer (high bits), time in ms;
    # a stable sort keeps the order of emission for events in the same millisecond
    idx = np.nonzero(cols["t"] < cutoff[cust_all])[0]
    t_ms = cols["t"][idx] // 1000
    key = (cust_all[idx] << 42) | (t_ms - t_ms.min())
    idx = idx[np.argsort(key, kind="stable")]
    cust, kind, amount = cust_all[idx], cols["type"][idx], cols["amount"][idx]
    flow = SIGN[kind] * amount
    start = np.r_[0, np.nonzero(np.diff(cust))[0] + 1]
    group = np.repeat(np.arange(start.size), np.diff(np.r_[start, cust.size]))
    cs = np.cumsum(flow)
    balance = opening[cust] + cs - np.r_[0, cs][start][group]
    settle = kind == T_SETTLE
    keep = np.ones(idx.size, bool)
    if settle.any():
        before = balance[settle]  # the placeholder moves nothing: the balance before it
        amount[settle] = np.abs(before)
        kind[settle] = np.where(before >= 0, T_TOUT, T_TIN)
        flow[settle] = -before
        cs = np.cumsum(flow)
        balance = opening[cust] + cs - np.r_[0, cs][start][group]
        keep = ~(settle & (amount == 0))
    out: Cols = {
        "type": kind[keep],
        "cust": cust[keep],
        "amount": amount[keep],
        "balance": balance[keep],
    }
    idx = idx[keep]
    for name in ("t", "a", "b", "c"):
        out[name] = cols[name][idx]
    start = np.r_[0, np.nonzero(np.diff(out["cust"]))[0] + 1]
    sizes = np.diff(np.r_[start, out["cust"].size])
    out["seq"] = np.arange(out["cust"].size) - np.repeat(start, sizes)
    return out
