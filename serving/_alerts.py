"""The alert policy interface, and the simple threshold rule used until the full policy.

A policy sees each new score with the customer's features and returns the alerts to
raise (possibly none). Policies are pure: same inputs, same alerts, so alerts can be
rebuilt by replaying the log.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from serving._scores import Score

__all__ = ["Alert", "AlertPolicy", "ThresholdPolicy"]


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


class AlertPolicy(Protocol):
    def evaluate(self, score: Score, features: Mapping[str, float]) -> Sequence[Alert]: ...


@dataclass(frozen=True, slots=True)
class ThresholdPolicy:
    """Alert when the churn probability reaches ``threshold`` and the value is positive.

    Customers with zero or negative predicted value get no retention alert.
    """

    threshold: float = 0.5

    def evaluate(self, score: Score, features: Mapping[str, float]) -> Sequence[Alert]:
        if score.churn_probability < self.threshold or score.predicted_value_minor <= 0:
            return ()
        at_risk = score.churn_probability * score.predicted_value_minor
        return (
            Alert(
                alert_id=f"{score.customer_id}:churn_threshold:{score.as_of}",
                customer_id=score.customer_id,
                manager_id=score.manager_id,
                branch_id=score.branch_id,
                rule="churn_threshold",
                severity="high",
                as_of=score.as_of,
                churn_probability=score.churn_probability,
                predicted_value_minor=score.predicted_value_minor,
                value_at_risk_minor=at_risk,
                message=(
                    f"churn risk {score.churn_probability:.0%}, "
                    f"{score.value_tier} customer, value at risk {at_risk / 100:,.0f}"
                ),
                model_version=score.model_version,
            ),
        )
