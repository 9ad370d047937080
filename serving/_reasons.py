"""Reason codes: why a customer's churn risk is high, in a manager's words.

LightGBM's contributions (``pred_contrib``: per feature, in log-odds, summing with
the bias to the raw score) say which features pushed *this* customer's risk up. The
features are grouped into drivers a manager recognises (salary, balance leaving,
complaints, fees, ...); a driver's weight is the sum of its features' contributions,
and only drivers that raise the risk are reasons. Each reason is a sentence built
from the customer's own numbers, in English or Simplified Chinese:

>>> f = {"days_since_salary": 34.0, "salary_months_6m": 5.0}
>>> explain(f, {"days_since_salary": 0.9, "salary_months_6m": 0.2}, "en")[0].text
'salary credits stopped 34 days ago'
>>> explain(f, {"days_since_salary": 0.9}, "zh")[0].text
'工资已停发34天'

Contributions are computed only for the customers who alert (they cost about as
much as the prediction itself).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["DRIVERS", "LANGUAGES", "Driver", "Reason", "driver_of", "explain"]

Language = Literal["en", "zh"]
LANGUAGES: Final = ("en", "zh")
Features = Mapping[str, float]


def _v(f: Features, name: str) -> float:
    x = f.get(name, math.nan)
    return math.nan if x is None else float(x)


def _ok(x: float) -> bool:
    return not math.isnan(x)


def _money(minor: float) -> str:
    return f"{minor / 100:,.0f}"


def _pct(ratio: float) -> int:
    return round(abs(ratio) * 100)


@dataclass(frozen=True, slots=True)
class Driver:
    """A group of features with one meaning, and how to say it."""

    key: str
    features: tuple[str, ...]
    say: Callable[[Features, Language], str]


@dataclass(frozen=True, slots=True)
class Reason:
    driver: str
    weight: float  # summed contributions (log-odds) of the driver's features
    text: str


def _salary(f: Features, lang: Language) -> str:
    days, months = _v(f, "days_since_salary"), _v(f, "salary_months_6m")
    trend = _v(f, "salary_trend")
    if _ok(days) and days > 31:  # paid monthly: a month and a day without one
        return (
            f"工资已停发{days:.0f}天"
            if lang == "zh"
            else f"salary credits stopped {days:.0f} days ago"
        )
    if _ok(trend) and trend < 0.9:
        return (
            f"工资收入下降{_pct(1 - trend)}%"
            if lang == "zh"
            else f"salary credits down {_pct(1 - trend)}% on the previous months"
        )
    if _ok(months):
        return (
            f"近6个月仅{months:.0f}个月有工资入账"
            if lang == "zh"
            else f"salary paid in only {months:.0f} of the last 6 months"
        )
    return "没有工资入账" if lang == "zh" else "no salary paid in"


def _balance(f: Features, lang: Language) -> str:
    change = next(
        (
            (d, _v(f, f"balance_change_{d}d"))
            for d in (30, 90, 180)
            if _ok(_v(f, f"balance_change_{d}d")) and _v(f, f"balance_change_{d}d") < -0.05
        ),
        None,
    )
    ext = _v(f, "outflow_ext_share_90d")
    out90 = _v(f, "outflow_ext_90d")
    mostly = _ok(ext) and ext >= 0.5
    if change is not None:
        days, ratio = change
        if lang == "zh":
            tail = "，主要转往他行" if mostly else ""
            return f"{days}天内存款余额下降{_pct(ratio)}%{tail}"
        tail = ", mostly transfers to other banks" if mostly else ""
        return f"balance down {_pct(ratio)}% in {days} days{tail}"
    if _ok(out90) and out90 > 0:
        return (
            f"90天内转往他行{_money(out90)}元"
            if lang == "zh"
            else f"{_money(out90)} moved to other banks in 90 days"
        )
    bal = _v(f, "balance")
    if not _ok(bal):
        return "存款余额偏低" if lang == "zh" else "a low deposit balance"
    return f"存款余额{_money(bal)}元" if lang == "zh" else f"balance of {_money(bal)}"


def _complaints(f: Features, lang: Language) -> str:
    n, oldest = _v(f, "open_complaints"), _v(f, "days_oldest_open_complaint")
    unhappy, recent = _v(f, "unsatisfied_resolutions_180d"), _v(f, "complaints_90d")
    if _ok(n) and n > 0:
        if lang == "zh":
            return f"{n:.0f}宗投诉未解决" + (f"，最早的已{oldest:.0f}天" if _ok(oldest) else "")
        s = "complaint" if n == 1 else "complaints"
        return f"{n:.0f} unresolved {s}" + (
            f", the oldest open {oldest:.0f} days" if _ok(oldest) else ""
        )
    if _ok(unhappy) and unhappy > 0:
        return (
            f"{unhappy:.0f}宗投诉的处理结果客户不满意"
            if lang == "zh"
            else f"{unhappy:.0f} complaint(s) closed without satisfying the customer"
        )
    r = recent if _ok(recent) else 0.0
    return f"近90天投诉{r:.0f}次" if lang == "zh" else f"{r:.0f} complaint(s) in 90 days"


def _digital(f: Features, lang: Language) -> str:
    trend, n30 = _v(f, "login_trend"), _v(f, "logins_30d")
    since = _v(f, "days_since_login")
    if _ok(trend) and trend < 0.9:
        n = n30 if _ok(n30) else 0.0
        return (
            f"手机银行登录减少{_pct(1 - trend)}%（近30天{n:.0f}次）"
            if lang == "zh"
            else f"digital banking sign-ins down {_pct(1 - trend)}% ({n:.0f} in 30 days)"
        )
    if _ok(since):
        return (
            f"已{since:.0f}天未登录手机银行"
            if lang == "zh"
            else f"no digital banking sign-in for {since:.0f} days"
        )
    return "从未使用手机银行" if lang == "zh" else "never signed in to digital banking"


def _activity(f: Features, lang: Language) -> str:
    since, trend = _v(f, "days_since_activity"), _v(f, "activity_trend")
    if _ok(trend) and trend < 0.9:
        return (
            f"账户活跃天数减少{_pct(1 - trend)}%"
            if lang == "zh"
            else f"active days down {_pct(1 - trend)}% on the previous months"
        )
    if _ok(since):
        return (
            f"已{since:.0f}天没有主动交易"
            if lang == "zh"
            else f"no activity of their own for {since:.0f} days"
        )
    return "没有主动交易" if lang == "zh" else "no activity of their own"


def _cards(f: Features, lang: Language) -> str:
    trend, since = _v(f, "card_spend_trend"), _v(f, "days_since_card")
    if _ok(trend) and trend < 0.9:
        return (
            f"刷卡消费减少{_pct(1 - trend)}%"
            if lang == "zh"
            else f"card spending down {_pct(1 - trend)}% on the previous months"
        )
    if _ok(since):
        return f"已{since:.0f}天未刷卡" if lang == "zh" else f"no card payment for {since:.0f} days"
    return "没有刷卡消费" if lang == "zh" else "no card payments"


def _fees(f: Features, lang: Language) -> str:
    total, largest = _v(f, "fee_sum_90d"), _v(f, "fee_max_90d")
    t = total if _ok(total) else 0.0
    if lang == "zh":
        return f"90天内收取手续费{_money(t)}元" + (
            f"，单笔最高{_money(largest)}元" if _ok(largest) else ""
        )
    return f"fees of {_money(t)} charged in 90 days" + (
        f" (largest {_money(largest)})" if _ok(largest) else ""
    )


def _products(f: Features, lang: Language) -> str:
    closed, held = _v(f, "products_closed_90d"), _v(f, "open_products")
    c = closed if _ok(closed) else 0.0
    h = held if _ok(held) else 0.0
    if c > 0:
        return (
            f"近90天销户{c:.0f}个产品，现持有{h:.0f}个"
            if lang == "zh"
            else f"{c:.0f} product(s) closed in 90 days, {h:.0f} still held"
        )
    return f"仅持有{h:.0f}个产品" if lang == "zh" else f"only {h:.0f} product(s) held"


def _survey(f: Features, lang: Language) -> str:
    last, low = _v(f, "last_survey_score"), _v(f, "min_survey_score_180d")
    if _ok(last):
        return (
            f"最近一次满意度评分{last:.0f}/10"
            if lang == "zh"
            else f"last satisfaction score {last:.0f}/10"
        )
    if _ok(low):
        return f"满意度最低{low:.0f}/10" if lang == "zh" else f"satisfaction as low as {low:.0f}/10"
    return "没有满意度评分" if lang == "zh" else "no satisfaction survey answered"


def _loans(f: Features, lang: Language) -> str:
    late, worst = _v(f, "late_repayments_180d"), _v(f, "max_days_late_180d")
    n = late if _ok(late) else 0.0
    if n > 0:
        w = worst if _ok(worst) else 0.0
        return (
            f"180天内{n:.0f}次逾期还款，最长{w:.0f}天"
            if lang == "zh"
            else f"{n:.0f} late loan instalment(s) in 180 days, up to {w:.0f} days late"
        )
    return "贷款还款情况变化" if lang == "zh" else "change in loan repayments"


def _manager(f: Features, lang: Language) -> str:
    n = _v(f, "manager_changes_180d")
    n = n if _ok(n) else 0.0
    return (
        f"180天内更换客户经理{n:.0f}次"
        if lang == "zh"
        else f"relationship manager changed {n:.0f} time(s) in 180 days"
    )


def _relationship(f: Features, lang: Language) -> str:
    tenure = _v(f, "tenure_days")
    years = tenure / 365.25 if _ok(tenure) else 0.0
    return (
        f"客户关系较浅（开户{years:.1f}年）"
        if lang == "zh"
        else f"a short relationship ({years:.1f} years with the bank)"
    )


def _inflows(f: Features, lang: Language) -> str:
    trend, net = _v(f, "inflow_trend"), _v(f, "net_flow_30d")
    if _ok(trend) and trend < 0.9:
        return (
            f"资金流入减少{_pct(1 - trend)}%"
            if lang == "zh"
            else f"money coming in down {_pct(1 - trend)}% on the previous months"
        )
    n = net if _ok(net) else 0.0
    return (
        f"近30天净流出{_money(-n)}元"
        if lang == "zh" and n < 0
        else (
            f"近30天净流入{_money(n)}元" if lang == "zh" else f"net flow of {_money(n)} in 30 days"
        )
    )


DRIVERS: Final[tuple[Driver, ...]] = (
    Driver(
        "salary",
        (
            "days_since_salary",
            "salary_months_6m",
            "salary_30d",
            "salary_monthly_180d",
            "salary_trend",
        ),
        _salary,
    ),
    Driver(
        "balance_leaving",
        (
            "balance",
            "balance_change_30d",
            "balance_change_90d",
            "balance_change_180d",
            "balance_slope_90d",
            "balance_min_30d",
            "balance_drawdown_30d",
            "outflow_ext_30d",
            "outflow_ext_90d",
            "outflow_ext_count_30d",
            "outflow_ext_max_90d",
            "outflow_ext_share_90d",
            "outflow_ext_trend",
            "cash_30d",
            "cash_count_90d",
        ),
        _balance,
    ),
    Driver(
        "inflows",
        (
            "inflow_30d",
            "inflow_trend",
            "inflow_ext_90d",
            "net_flow_30d",
            "net_flow_90d",
            "interest_180d",
        ),
        _inflows,
    ),
    Driver(
        "complaints",
        (
            "complaints_90d",
            "complaints_total",
            "open_complaints",
            "days_oldest_open_complaint",
            "unsatisfied_resolutions_180d",
        ),
        _complaints,
    ),
    Driver(
        "digital",
        (
            "logins_7d",
            "logins_30d",
            "logins_90d",
            "login_trend",
            "days_since_login",
            "mobile_login_share_90d",
        ),
        _digital,
    ),
    Driver(
        "activity",
        (
            "active_days_30d",
            "active_days_90d",
            "activity_trend",
            "days_since_activity",
            "branch_visits_90d",
            "days_since_branch_visit",
        ),
        _activity,
    ),
    Driver(
        "cards",
        (
            "card_count_30d",
            "card_spend_30d",
            "card_spend_90d",
            "card_spend_180d",
            "card_spend_trend",
            "card_avg_ticket_90d",
            "card_ticket_std_90d",
            "merchant_categories_90d",
            "essentials_share_90d",
            "leisure_spend_90d",
            "online_card_share_90d",
            "days_since_card",
        ),
        _cards,
    ),
    Driver("fees", ("fee_count_30d", "fee_sum_90d", "fee_max_90d", "fee_trend"), _fees),
    Driver(
        "products",
        (
            "open_products",
            "open_product_types",
            "has_savings",
            "has_card",
            "has_loan",
            "has_mortgage",
            "has_wealth",
            "products_closed_90d",
            "products_closed_180d",
            "products_opened_180d",
            "days_since_product_opened",
        ),
        _products,
    ),
    Driver(
        "satisfaction",
        (
            "last_survey_score",
            "min_survey_score_180d",
            "avg_survey_score_180d",
            "days_since_survey",
        ),
        _survey,
    ),
    Driver("loans", ("loan_repayments_90d", "late_repayments_180d", "max_days_late_180d"), _loans),
    Driver("manager_changes", ("manager_changes_180d",), _manager),
    Driver("relationship", ("tenure_days", "segment_code", "revenue_180d"), _relationship),
)
_BY_FEATURE: Final = {name: d for d in DRIVERS for name in d.features}


def driver_of(feature: str) -> Driver | None:
    """The driver a feature belongs to (None for a feature no driver claims)."""
    return _BY_FEATURE.get(feature)


def explain(
    features: Features, contributions: Mapping[str, float], lang: Language = "en", top: int = 3
) -> list[Reason]:
    """The ``top`` drivers that raised this customer's churn risk most, as sentences.

    ``contributions`` maps feature names to their contribution (log-odds) for this
    customer; drivers whose summed contribution is not positive are no reason.
    """
    if lang not in LANGUAGES:
        raise ValueError(f"language {lang!r}: allowed {', '.join(LANGUAGES)}")
    weight: dict[str, float] = {}
    for name, c in contributions.items():
        d = _BY_FEATURE.get(name)
        if d is not None and not math.isnan(c):
            weight[d.key] = weight.get(d.key, 0.0) + float(c)
    ranked = sorted((w, k) for k, w in weight.items() if w > 0)
    ranked.reverse()
    by_key = {d.key: d for d in DRIVERS}
    return [Reason(k, w, by_key[k].say(features, lang)) for w, k in ranked[:top]]
