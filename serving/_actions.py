"""Digests as managers read them: suggested actions and alerts in English or Chinese,
as plain text and HTML (e-mail), and as JSON (webhooks)."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any, Final

from serving._reasons import LANGUAGES

__all__ = ["ACTION_TEXT", "digest_html", "digest_json", "digest_subject", "digest_text"]

ACTION_TEXT: Final[dict[str, dict[str, str]]] = {
    "service_recovery_call": {"en": "Service-recovery call", "zh": "服务补救回访"},
    "fee_waiver": {"en": "Offer a fee waiver", "zh": "提供手续费减免"},
    "rate_offer": {"en": "Offer a better deposit rate", "zh": "提供优惠存款利率"},
    "exclusive_wealth_product": {
        "en": "Present an exclusive wealth product",
        "zh": "推荐专属理财产品",
    },
    "payroll_offer": {"en": "Offer payroll (salary account) services", "zh": "提供代发工资服务"},
    "satisfaction_call": {"en": "Satisfaction call", "zh": "满意度回访"},
    "repayment_plan_call": {"en": "Call about a repayment plan", "zh": "沟通还款计划"},
    "digital_onboarding_call": {
        "en": "Help them back onto digital banking",
        "zh": "协助使用手机银行",
    },
}
_WORDS: Final = {
    "en": {
        "subject": "{n} customer(s) need your attention",
        "risk": "churn risk",
        "at_stake": "value at stake",
        "why": "Why",
        "do": "Suggested",
        "more": "{n} more alert(s) are waiting in your inbox (daily limit reached).",
        "customer": "Customer",
    },
    "zh": {
        "subject": "{n}位客户需要您关注",
        "risk": "流失风险",
        "at_stake": "潜在损失价值",
        "why": "原因",
        "do": "建议",
        "more": "另有{n}条提醒在收件箱中（已达每日上限）。",
        "customer": "客户",
    },
}


def _lang(lang: str) -> str:
    if lang not in LANGUAGES:
        raise ValueError(f"language {lang!r}: allowed {', '.join(LANGUAGES)}")
    return lang


def _money(minor: float) -> str:
    return f"{minor / 100:,.0f}"


def digest_subject(alerts: Sequence[Mapping[str, Any]], lang: str) -> str:
    return _WORDS[_lang(lang)]["subject"].format(n=len(alerts))


def _lines(a: Mapping[str, Any], lang: str) -> tuple[str, list[str], str]:
    w = _WORDS[lang]
    head = (
        f"{w['customer']} {a['customer_id']}: {w['risk']} {float(a['churn_probability']):.0%}, "
        f"{w['at_stake']} {_money(float(a['value_at_risk_minor']))}"
    )
    reasons = [str(r[lang]) for r in a.get("reasons", [])]
    action = ACTION_TEXT.get(str(a.get("action")), {}).get(lang, str(a.get("action")))
    return head, reasons, action


def digest_text(alerts: Sequence[Mapping[str, Any]], overflow: int, lang: str) -> str:
    w = _WORDS[_lang(lang)]
    out = []
    for a in alerts:
        head, reasons, action = _lines(a, lang)
        out.append(head)
        out += [f"  - {r}" for r in reasons]
        out.append(f"  {w['do']}: {action}")
        out.append("")
    if overflow:
        out.append(w["more"].format(n=overflow))
    return "\n".join(out).rstrip() + "\n"


def digest_html(alerts: Sequence[Mapping[str, Any]], overflow: int, lang: str) -> str:
    w = _WORDS[_lang(lang)]
    rows = []
    for a in alerts:
        head, reasons, action = _lines(a, lang)
        items = "".join(f"<li>{html.escape(r)}</li>" for r in reasons)
        rows.append(
            f'<section class="alert" data-customer="{html.escape(str(a["customer_id"]))}">'
            f"<h3>{html.escape(head)}</h3><p>{w['why']}:</p><ul>{items}</ul>"
            f"<p><b>{w['do']}:</b> {html.escape(action)}</p></section>"
        )
    more = f"<p>{html.escape(w['more'].format(n=overflow))}</p>" if overflow else ""
    return (
        f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8">'
        f"<title>{html.escape(digest_subject(alerts, lang))}</title></head>"
        f"<body>{''.join(rows)}{more}</body></html>"
    )


def digest_json(
    recipient: str, digest_id: str, alerts: Sequence[Mapping[str, Any]], overflow: int
) -> dict[str, Any]:
    return {
        "digest_id": digest_id,
        "recipient": recipient,
        "alerts": list(alerts),
        "overflow": overflow,
    }
