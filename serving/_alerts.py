"""Alerts: the record on ``manager.alerts``, and the rule policy that raises them.

:class:`RulePolicy` sees each micro-batch of scores with the customers' features and
rule memories and returns the alerts to raise, with reasons and an action. It is
pure: same inputs, same alerts, so alerts can be rebuilt by replaying the log.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Final

from serving._policy import AlertMemory, Hit, PolicyConfig, evaluate_rules
from serving._reasons import explain
from serving._scores import Score

__all__ = [
    "Alert",
    "ExplainedAlert",
    "ReasonText",
    "RulePolicy",
    "segment_of",
]


@dataclass(frozen=True, slots=True)
class Alert:
    """One alert for a relationship manager (topic ``manager.alerts``)."""

    alert_id: str  # deterministic: customer, rule and as-of
    customer_id: str
    manager_id: str | None
    branch_id: str | None
    rule: str
    severity: str
    as_of: str
    churn_probability: float
    predicted_value_minor: float
    value_at_risk_minor: float
    message: str
    model_version: str


# ------------------------------------------------------------------ the rule policy
@dataclass(frozen=True, slots=True)
class ReasonText:
    driver: str
    weight: float
    en: str
    zh: str


@dataclass(frozen=True, slots=True)
class ExplainedAlert:
    """An alert with its reasons (English and Chinese) and the suggested action."""

    alert: Alert
    rules: tuple[str, ...]  # every rule that fired; ``alert.rule`` is the most severe
    reasons: tuple[ReasonText, ...]
    action: str
    segment: str | None

    def to_dict(self) -> dict[str, object]:
        """The record on ``manager.alerts``: the alert's fields, then the rest."""
        return {
            **asdict(self.alert),
            "rules": list(self.rules),
            "reasons": [asdict(r) for r in self.reasons],
            "action": self.action,
            "segment": self.segment,
        }


_SEGMENT_OF_CODE: Final = {0: "mass", 1: "affluent", 2: "private", 3: "sme"}


def segment_of(features: Mapping[str, float]) -> str | None:
    code = features.get("segment_code", math.nan)
    if code is None or math.isnan(code):
        return None
    return _SEGMENT_OF_CODE.get(int(code))


@dataclass
class RulePolicy:
    """The YAML policy (:mod:`serving._policy`) with reasons and actions.

    ``evaluate_many`` takes a micro-batch of scores with their features and each
    customer's :class:`AlertMemory`, and returns the explained alerts, the
    suppressions (rule, why) and the new memories. Contributions are asked for
    only for the customers that alert (one call for the batch).
    """

    config: PolicyConfig
    suppressed: Counter[str] = field(default_factory=Counter)

    def evaluate_many(
        self,
        scored: Sequence[tuple[Score, Mapping[str, float]]],
        memories: Sequence[AlertMemory],
        contributions: Callable[[list[int]], Sequence[Mapping[str, float]]],
    ) -> tuple[list[ExplainedAlert], list[AlertMemory]]:
        pending: list[tuple[int, list[Hit], str | None]] = []
        new_memories = []
        for i, ((score, features), memory) in enumerate(zip(scored, memories, strict=True)):
            segment = segment_of(features)
            hits, suppressed, new = evaluate_rules(self.config, score, features, memory, segment)
            for _rule, why in suppressed:
                self.suppressed[why] += 1
            new_memories.append(new)
            if hits:
                pending.append((i, hits, segment))
        if not pending:
            return [], new_memories
        contribs = contributions([i for i, _, _ in pending])
        out = []
        for (i, hits, segment), contrib in zip(pending, contribs, strict=True):
            score, features = scored[i]
            out.append(self._explained(score, features, hits, segment, contrib))
        return out, new_memories

    def _explained(
        self,
        score: Score,
        features: Mapping[str, float],
        hits: list[Hit],
        segment: str | None,
        contrib: Mapping[str, float],
    ) -> ExplainedAlert:
        en = explain(features, contrib, "en")
        zh = explain(features, contrib, "zh")
        reasons = tuple(
            ReasonText(a.driver, a.weight, a.text, b.text) for a, b in zip(en, zh, strict=True)
        )
        top = hits[0]
        driver = reasons[0].driver if reasons else "satisfaction"
        action = self.config.action_for(driver, score.value_tier, segment)
        at_risk = score.churn_probability * score.predicted_value_minor
        because = "; ".join(r.en for r in reasons) or top.detail
        alert = Alert(
            alert_id=f"{score.customer_id}:{top.rule}:{score.as_of}",
            customer_id=score.customer_id,
            manager_id=score.manager_id,
            branch_id=score.branch_id,
            rule=top.rule,
            severity=top.severity,
            as_of=score.as_of,
            churn_probability=score.churn_probability,
            predicted_value_minor=score.predicted_value_minor,
            value_at_risk_minor=at_risk,
            message=f"{top.detail}: {because}",
            model_version=score.model_version,
        )
        return ExplainedAlert(alert, tuple(h.rule for h in hits), reasons, action, segment)
