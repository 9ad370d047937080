"""Serving: scores, tiers, lifecycle stages, the alert policy and its delivery."""

from serving._alerts import (
    Alert,
    ExplainedAlert,
    ReasonText,
    RulePolicy,
)
from serving._model import (
    Bundle,
    LiveModel,
    ScoredBatch,
    champion_version,
    load_live_model,
    score_batch,
    score_states,
)
from serving._policy import DEFAULT_POLICY, AlertMemory, PolicyConfig, load_policy, parse_policy
from serving._reasons import DRIVERS, explain
from serving._scores import (
    LIFECYCLE_STAGES,
    VALUE_TIERS,
    Score,
    lifecycle_stage,
    loyalty_score,
    value_tier,
)

__all__ = [
    "DEFAULT_POLICY",
    "DRIVERS",
    "LIFECYCLE_STAGES",
    "VALUE_TIERS",
    "Alert",
    "AlertMemory",
    "Bundle",
    "ExplainedAlert",
    "LiveModel",
    "PolicyConfig",
    "ReasonText",
    "RulePolicy",
    "Score",
    "ScoredBatch",
    "champion_version",
    "explain",
    "lifecycle_stage",
    "load_live_model",
    "load_policy",
    "loyalty_score",
    "parse_policy",
    "score_batch",
    "score_states",
    "value_tier",
]
