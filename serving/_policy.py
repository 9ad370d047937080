"""The alert policy: rules in a validated YAML file, evaluated on each new score.

A rule decides *whether* a customer needs a manager's attention; the reasons
(:mod:`serving._reasons`) say *why* and the actions table says *what to do*. Rules:

``churn_probability``  the churn probability reaches a threshold, per value tier or
                       segment (the lowest matching threshold applies);
``risk_jump``          the probability rose by ``jump`` or more within ``within``
                       (against the lowest score in that time);
``value_at_risk``      churn probability x predicted value reaches ``min_minor``;
``lifecycle``          the lifecycle stage turned to one of ``to`` (from another);
``unresolved_complaint``  a complaint open ``days`` or more, for the ``tiers`` listed.

Customers whose predicted value is zero or negative get no retention alert: the
bank does not spend a manager's time keeping them (banks exit such customers too).

A rule alerts a customer at most once per ``cooldown`` (per customer and rule).
Everything a rule needs to remember (recent scores, the last stage, when each rule
last fired) is kept per customer in :class:`AlertMemory`, itself derived from the
scores, so replaying the event log rebuilds it. All times are event times.

Errors in the file name the field and what is allowed::

    invalid config rules[1].severity='urgent': allowed one of critical, high, medium, low
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from features.errors import ConfigError
from serving._reasons import DRIVERS
from serving._scores import Score

__all__ = [
    "DEFAULT_POLICY",
    "SEVERITIES",
    "AlertMemory",
    "Hit",
    "PolicyConfig",
    "evaluate_rules",
    "load_policy",
    "parse_policy",
]

SEVERITIES: Final = ("critical", "high", "medium", "low")
SEGMENTS: Final = ("mass", "affluent", "private", "sme")
Severity = Literal["critical", "high", "medium", "low"]
Tier = Literal["platinum", "gold", "silver", "bronze"]
Segment = Literal["mass", "affluent", "private", "sme"]
Stage = Literal["new", "growing", "mature", "declining", "dormant"]
Action = Literal[
    "service_recovery_call",
    "fee_waiver",
    "rate_offer",
    "exclusive_wealth_product",
    "payroll_offer",
    "satisfaction_call",
    "repayment_plan_call",
    "digital_onboarding_call",
]
ACTIONS: Final = Action.__args__  # type: ignore[attr-defined]
_DURATION = re.compile(r"^(\d+)\s*([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(value: object) -> timedelta:
    if isinstance(value, timedelta):
        return value
    m = _DURATION.match(str(value).strip())
    if not m:
        raise ValueError("a duration such as 30s, 15m, 4h or 7d")
    return timedelta(seconds=int(m.group(1)) * _UNIT[m.group(2)])


def human(td: timedelta) -> str:
    """A duration as the file writes it: ``7d``, ``4h``, ``15m``, ``30s``."""
    secs = int(td.total_seconds())
    for unit in ("d", "h", "m"):
        if secs and secs % _UNIT[unit] == 0:
            return f"{secs // _UNIT[unit]}{unit}"
    return f"{secs}s"


Duration = Annotated[timedelta, Field(description="30s, 15m, 4h, 7d")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Rule(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{1,40}$")
    severity: Severity = "high"
    cooldown: Duration | None = None  # None: the policy's default

    @field_validator("cooldown", mode="before")
    @classmethod
    def _cool(cls, v: object) -> timedelta | None:
        return None if v is None else _duration(v)


class ChurnProbabilityRule(_Rule):
    kind: Literal["churn_probability"]
    threshold: float = Field(0.5, gt=0, le=1)
    by_tier: dict[Tier, Annotated[float, Field(gt=0, le=1)]] = {}
    by_segment: dict[Segment, Annotated[float, Field(gt=0, le=1)]] = {}


class RiskJumpRule(_Rule):
    kind: Literal["risk_jump"]
    jump: float = Field(0.2, gt=0, le=1)
    within: Duration = timedelta(days=7)

    @field_validator("within", mode="before")
    @classmethod
    def _within(cls, v: object) -> timedelta:
        return _duration(v)


class ValueAtRiskRule(_Rule):
    kind: Literal["value_at_risk"]
    min_minor: float = Field(gt=0)


class LifecycleRule(_Rule):
    kind: Literal["lifecycle"]
    to: list[Stage] = ["declining", "dormant"]


class UnresolvedComplaintRule(_Rule):
    kind: Literal["unresolved_complaint"]
    days: int = Field(14, ge=1)
    tiers: list[Tier] = ["platinum", "gold"]


AnyRule = Annotated[
    ChurnProbabilityRule | RiskJumpRule | ValueAtRiskRule | LifecycleRule | UnresolvedComplaintRule,
    Field(discriminator="kind"),
]


class ActionChoice(_Strict):
    default: Action
    tiers: dict[Tier, Action] = {}
    segments: dict[Segment, Action] = {}


class Routing(_Strict):
    """How alerts reach managers (see :mod:`serving._notify`)."""

    group_wait: Duration = timedelta(seconds=30)
    group_interval: Duration = timedelta(minutes=5)
    repeat_interval: Duration = timedelta(hours=24)
    daily_cap: int = Field(20, ge=1, le=10_000)

    @field_validator("group_wait", "group_interval", "repeat_interval", mode="before")
    @classmethod
    def _durations(cls, v: object) -> timedelta:
        return _duration(v)


class PolicyConfig(_Strict):
    """The whole policy file (see ``DEFAULT_POLICY`` for a commented example)."""

    version: Literal[1] = 1
    routing: Routing = Routing()
    cooldown: Duration = timedelta(days=7)
    rules: list[AnyRule] = Field(min_length=1)
    actions: dict[str, Action | ActionChoice] = {}
    inhibit: bool = True  # a critical alert suppresses lower ones for the same customer

    @field_validator("cooldown", mode="before")
    @classmethod
    def _cool(cls, v: object) -> timedelta:
        return _duration(v)

    @field_validator("actions")
    @classmethod
    def _drivers(cls, v: dict[str, Any]) -> dict[str, Any]:
        known = {d.key for d in DRIVERS}
        for key in v:
            if key not in known:
                raise ValueError(f"unknown driver {key!r}; one of {', '.join(sorted(known))}")
        return v

    @field_validator("rules")
    @classmethod
    def _unique(cls, v: list[Any]) -> list[Any]:
        names = [r.name for r in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"rule names must be unique; repeated: {', '.join(dup)}")
        return v

    def action_for(self, driver: str, tier: str, segment: str | None) -> str:
        choice = self.actions.get(driver, _DEFAULT_ACTIONS.get(driver, "satisfaction_call"))
        if isinstance(choice, str):
            return choice
        segments: dict[str, str] = dict(choice.segments)
        tiers: dict[str, str] = dict(choice.tiers)
        if segment is not None and segment in segments:
            return segments[segment]
        return tiers.get(tier, str(choice.default))

    def cooldown_of(self, rule: Any) -> timedelta:
        return rule.cooldown if rule.cooldown is not None else self.cooldown


_DEFAULT_ACTIONS: Final[dict[str, Any]] = {
    "complaints": "service_recovery_call",
    "fees": "fee_waiver",
    "balance_leaving": ActionChoice(
        default="rate_offer",
        tiers={"platinum": "exclusive_wealth_product", "gold": "exclusive_wealth_product"},
        segments={"private": "exclusive_wealth_product"},
    ),
    "inflows": "rate_offer",
    "salary": "payroll_offer",
    "loans": "repayment_plan_call",
    "digital": "digital_onboarding_call",
}

DEFAULT_POLICY: Final = """\
# Alert policy (CHURN_ALERT_POLICY points at a file like this one).
version: 1
cooldown: 7d            # a rule alerts a customer at most once per cooldown
inhibit: true           # a critical alert suppresses lower ones for the same customer
rules:
  - name: high_churn_risk
    kind: churn_probability
    severity: high
    threshold: 0.5
    by_tier: {platinum: 0.3, gold: 0.4}
    by_segment: {private: 0.3}
  - name: risk_jump
    kind: risk_jump
    severity: medium
    jump: 0.2
    within: 7d
  - name: large_value_at_risk
    kind: value_at_risk
    severity: critical
    min_minor: 2000000      # 20,000 in the account currency
  - name: turning_away
    kind: lifecycle
    severity: medium
    to: [declining, dormant]
  - name: complaint_left_open
    kind: unresolved_complaint
    severity: high
    days: 14
    tiers: [platinum, gold]
    cooldown: 14d
routing:                # how alerts reach managers
  group_wait: 30s       # a manager's first alert waits this long for others: one digest
  group_interval: 5m    # then at most one digest per manager this often
  repeat_interval: 24h  # an unacknowledged alert is sent again after this
  daily_cap: 20         # alerts per manager and day; the rest wait in the inbox
actions:                # driver -> action (or per tier / segment)
  complaints: service_recovery_call
  fees: fee_waiver
  balance_leaving:
    default: rate_offer
    tiers: {platinum: exclusive_wealth_product, gold: exclusive_wealth_product}
    segments: {private: exclusive_wealth_product}
  salary: payroll_offer
"""


_KINDS: Final = (
    "churn_probability",
    "risk_jump",
    "value_at_risk",
    "lifecycle",
    "unresolved_complaint",
)


def _field(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _KINDS or "[" in str(part) or "(" in str(part):
            continue  # pydantic's name of a union branch, not a field
        else:
            out += ("." if out else "") + str(part)
    return out or "(file)"


def _allowed(err: Mapping[str, Any]) -> str:
    ctx = err.get("ctx") or {}
    if "expected" in ctx:
        return "one of " + str(ctx["expected"]).replace("'", "")
    if err["type"] == "union_tag_invalid":
        return "one of " + str(ctx.get("expected_tags", "")).replace("'", "")
    if err["type"] == "union_tag_not_found":
        return "one of " + ", ".join(_KINDS)
    if err["type"] == "string_pattern_mismatch":
        return "lower-case letters, digits and _, starting with a letter (2-41 characters)"
    if err["type"] == "extra_forbidden":
        return "no such field"
    if err["type"] == "missing":
        return "a value (the field is required)"
    return str(err["msg"]).removeprefix("Value error, ")


def parse_policy(text: str, source: str = "policy") -> PolicyConfig:
    """The policy from YAML text; a :class:`ConfigError` naming the field otherwise."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, None, f"valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(source, raw, "a mapping with version, rules, actions")
    try:
        return PolicyConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where, value = _field(err["loc"]), err.get("input")
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            where, value = f"{where}.kind", (err.get("ctx") or {}).get("tag")
        elif err["type"] == "missing":
            value = None
        raise ConfigError(where, value, _allowed(err)) from exc


def load_policy(path: Path | None) -> PolicyConfig:
    """The policy in ``path``, or the default policy when ``path`` is None."""
    if path is None:
        return parse_policy(DEFAULT_POLICY, "default policy")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("CHURN_ALERT_POLICY", str(path), f"a readable file ({exc})") from exc
    return parse_policy(text, str(path))


# ------------------------------------------------------------------ memory
class AlertMemory(msgspec.Struct, array_like=True):
    """What the rules remember about one customer (small; JSON on the wire)."""

    # (t_us, p), oldest first: each score appends its own, as new as any before it
    recent: list[tuple[int, float]] = msgspec.field(default_factory=list)
    stage: str | None = None
    fired: dict[str, int] = msgspec.field(default_factory=dict)  # rule -> t_us
    last_t: int = 0

    def to_bytes(self) -> bytes:
        return _ENC.encode(self)

    @classmethod
    def from_bytes(cls, data: bytes | None) -> AlertMemory:
        return cls() if not data else _DEC.decode(data)


_ENC: Final = msgspec.json.Encoder()
_DEC: Final = msgspec.json.Decoder(AlertMemory)


@dataclass(frozen=True, slots=True)
class Hit:
    """A rule that fires for a score."""

    rule: str
    severity: str
    detail: str


_RANK: Final = {s: i for i, s in enumerate(SEVERITIES)}


def _since(recent: list[tuple[int, float]], t: int) -> list[tuple[int, float]]:
    """The scores of ``recent`` (oldest first) at ``t`` or later."""
    return recent[bisect.bisect_left(recent, t, key=_time_of) :]


def _time_of(entry: tuple[int, float]) -> int:
    return entry[0]


def _t_us(iso: str) -> int:
    dt = datetime.fromisoformat(iso)
    return int(dt.timestamp()) * 1_000_000 + dt.microsecond


def _feature(f: Mapping[str, float], name: str) -> float:
    x = f.get(name, math.nan)
    return math.nan if x is None else float(x)


_PLANS: Final[dict[int, tuple[PolicyConfig, int, dict[str, Any]]]] = {}


def _plan_of(policy: PolicyConfig) -> tuple[int, dict[str, Any]]:
    """What every evaluation of a (frozen) policy needs, worked out once per policy:
    the longest risk-jump window (µs) and the rules by name."""
    plan = _PLANS.get(id(policy))
    if plan is None or plan[0] is not policy:
        jump = max(
            (r.within for r in policy.rules if isinstance(r, RiskJumpRule)), default=timedelta(0)
        )
        if len(_PLANS) > 64:  # policies are few; a bound all the same
            _PLANS.clear()
        plan = _PLANS[id(policy)] = (
            policy,
            int(jump.total_seconds() * 1e6),
            {r.name: r for r in policy.rules},
        )
    return plan[1], plan[2]


def evaluate_rules(
    policy: PolicyConfig,
    score: Score,
    features: Mapping[str, float],
    memory: AlertMemory,
    segment: str | None = None,
) -> tuple[list[Hit], list[tuple[str, str]], AlertMemory]:
    """The rules that fire for ``score``: (hits, suppressed as (rule, why), new memory).

    Pure: the same score, features and memory give the same result. A score older
    than the newest one seen (a replay of an older state) changes nothing.
    """
    t = _t_us(score.as_of)
    if t < memory.last_t:
        return [], [], memory
    p = score.churn_probability
    jump_us, by_name = _plan_of(policy)
    horizon = t - jump_us
    recent = _since(memory.recent, horizon)
    candidates: list[Hit] = []
    for rule in policy.rules:
        hit = _fires(rule, score, features, recent, memory.stage, t, segment)
        if hit is not None:
            candidates.append(Hit(rule.name, rule.severity, hit))
    suppressed: list[tuple[str, str]] = []
    fired = dict(memory.fired)
    hits: list[Hit] = []
    if candidates and score.predicted_value_minor <= 0:
        suppressed = [(h.rule, "no_value") for h in candidates]
        candidates = []
    for h in candidates:
        last = fired.get(h.rule)
        cool = int(policy.cooldown_of(by_name[h.rule]).total_seconds() * 1e6)
        if last is not None and t - last < cool:
            suppressed.append((h.rule, "cooldown"))
            continue
        hits.append(h)
    if policy.inhibit and any(h.severity == "critical" for h in hits):
        suppressed += [(h.rule, "inhibited") for h in hits if h.severity != "critical"]
        hits = [h for h in hits if h.severity == "critical"]
    for h in hits:
        fired[h.rule] = t
    hits.sort(key=lambda h: (_RANK[h.severity], h.rule))
    new = AlertMemory(
        recent=[*recent, (t, p)][-64:],
        stage=score.lifecycle_stage,
        fired=fired,
        last_t=t,
    )
    return hits, suppressed, new


def _fires(
    rule: Any,
    score: Score,
    f: Mapping[str, float],
    recent: list[tuple[int, float]],
    stage: str | None,
    t: int,
    segment: str | None,
) -> str | None:
    p = score.churn_probability
    if isinstance(rule, ChurnProbabilityRule):
        limits = [rule.threshold]
        if score.value_tier in rule.by_tier:
            limits.append(rule.by_tier[score.value_tier])
        if segment is not None and segment in rule.by_segment:
            limits.append(rule.by_segment[segment])
        limit = min(limits)
        return f"churn probability {p:.0%} >= {limit:.0%}" if p >= limit else None
    if isinstance(rule, RiskJumpRule):
        since = t - int(rule.within.total_seconds() * 1e6)
        low = min((pp for _, pp in _since(recent, since)), default=None)
        if low is not None and p - low >= rule.jump:
            return f"churn probability up from {low:.0%} to {p:.0%}"
        return None
    if isinstance(rule, ValueAtRiskRule):
        at_risk = p * score.predicted_value_minor
        return f"value at risk {at_risk / 100:,.0f}" if at_risk >= rule.min_minor else None
    if isinstance(rule, LifecycleRule):
        now = score.lifecycle_stage
        if stage is not None and now != stage and now in rule.to:
            return f"lifecycle turned {stage} -> {now}"
        return None
    if isinstance(rule, UnresolvedComplaintRule):
        days = _feature(f, "days_oldest_open_complaint")
        if score.value_tier in rule.tiers and not math.isnan(days) and days >= rule.days:
            return f"complaint open {days:.0f} days"
        return None
    raise TypeError(f"unknown rule {rule!r}")  # pragma: no cover
