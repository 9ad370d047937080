"""Serving: scores, tiers, lifecycle stages, the alert policy and its delivery."""

from serving._alerts import Alert, AlertPolicy, ThresholdPolicy
from serving._model import Bundle, LiveModel, champion_version, load_live_model, score_states
from serving._scores import (
    LIFECYCLE_STAGES,
    VALUE_TIERS,
    Score,
    lifecycle_stage,
    loyalty_score,
    value_tier,
)

__all__ = [
    "LIFECYCLE_STAGES",
    "VALUE_TIERS",
    "Alert",
    "AlertPolicy",
    "Bundle",
    "LiveModel",
    "Score",
    "ThresholdPolicy",
    "champion_version",
    "lifecycle_stage",
    "load_live_model",
    "loyalty_score",
    "score_states",
    "value_tier",
]
