"""Routing and hygiene between alerts and the managers who get them.

Alerts (``manager.alerts``) and managers' actions (``manager.actions``: acknowledge,
snooze, outcome, silence, reassignment) are folded into a :class:`Notifier`; its
:meth:`Notifier.due` says which digests to send now. What Prometheus Alertmanager
does for operators, here for relationship managers:

- **routing**: to the customer's current manager; a customer without one goes to
  the branch queue (``branch:<id>``); a reassignment moves the customer's open
  alerts to the new manager;
- **grouping**: a manager's alerts wait ``group_wait`` after the first one and go out
  as one digest; later ones go at most every ``group_interval``;
- **repeat**: an open alert nobody acknowledged is sent again after ``repeat_interval``;
- **silences**: per customer or per manager, until a time, with a reason ("do not
  contact", "case open"); silenced alerts stay open but are not sent;
- **daily cap**: at most ``daily_cap`` alerts per manager and day; the overflow, ranked
  by value at risk, waits in the inbox and is named in the digest as a count.

(Dedup per customer and rule within a cooldown, and inhibition, happen upstream in
the policy: :mod:`serving._policy`.) The notifier is a pure fold of those two
topics plus a clock, so it is rebuilt by replaying them; times are given, never read.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, Literal

__all__ = ["ACTION_KINDS", "OUTCOMES", "Digest", "Notifier", "RoutingConfig"]

OUTCOMES: Final = ("contacted", "offer_made", "retained", "lost", "unreachable")
ACTION_KINDS: Final = ("acknowledge", "snooze", "outcome", "silence", "reassign")
Kind = Literal["acknowledge", "snooze", "outcome", "silence", "reassign"]


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    group_wait: timedelta = timedelta(seconds=30)
    group_interval: timedelta = timedelta(minutes=5)
    repeat_interval: timedelta = timedelta(hours=24)
    daily_cap: int = 20


@dataclass
class _Open:
    alert: dict[str, Any]
    recipient: str
    sent_at: datetime | None = None
    acknowledged: bool = False
    snoozed_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class Digest:
    """One message to one recipient: the alerts to send now, most value at risk first."""

    recipient: str
    alerts: tuple[dict[str, Any], ...]
    overflow: int  # open alerts held back by the daily cap
    at: datetime

    @property
    def digest_id(self) -> str:
        """Stable for the same content: the webhook's idempotency key."""
        ids = ",".join(sorted(str(a["alert_id"]) for a in self.alerts))
        digest = hashlib.sha256(f"{self.recipient}|{ids}".encode()).hexdigest()[:24]
        return f"{self.recipient}:{digest}"


def _recipient(alert: Mapping[str, Any]) -> str:
    if alert.get("manager_id"):
        return str(alert["manager_id"])
    return f"branch:{alert.get('branch_id') or 'unassigned'}"


@dataclass
class Notifier:
    config: RoutingConfig = field(default_factory=RoutingConfig)
    open: dict[str, _Open] = field(default_factory=dict)  # customer -> its open alert
    silences: list[tuple[str, str, datetime, str]] = field(default_factory=list)
    next_flush: dict[str, datetime] = field(default_factory=dict)
    last_sent: dict[str, datetime] = field(default_factory=dict)
    sent_today: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    suppressed: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    # ------------------------------------------------------------ folding
    def on_alert(self, alert: Mapping[str, Any], now: datetime) -> None:
        """A new alert: it replaces the customer's open one (the newest says most)."""
        recipient = _recipient(alert)
        self.open[str(alert["customer_id"])] = _Open(dict(alert), recipient)
        self._schedule(recipient, now)

    def on_action(self, action: Mapping[str, Any], now: datetime) -> None:
        """A manager's action (from ``manager.actions``), or a reassignment."""
        kind = action["kind"]
        customer = action.get("customer_id")
        item = self.open.get(str(customer)) if customer is not None else None
        if kind == "acknowledge" and item is not None:
            item.acknowledged = True
        elif kind == "snooze" and item is not None:
            item.snoozed_until = datetime.fromisoformat(action["until"])
        elif kind == "outcome" and item is not None:
            del self.open[str(customer)]  # the case is closed
        elif kind == "silence":
            scope = action["scope"]  # "customer" or "manager"
            until = datetime.fromisoformat(action["until"])
            self.silences.append((scope, str(action["target"]), until, action.get("reason", "")))
        elif kind == "reassign" and item is not None:
            item.recipient = str(action["manager_id"])
            item.alert["manager_id"] = action["manager_id"]
            item.sent_at = None  # new to the new manager
            item.acknowledged = False
            self._schedule(item.recipient, now)

    def _schedule(self, recipient: str, now: datetime) -> None:
        if recipient in self.next_flush:
            return  # a digest is already waiting
        last = self.last_sent.get(recipient)
        first = now + self.config.group_wait
        self.next_flush[recipient] = (
            first if last is None else max(first, last + self.config.group_interval)
        )

    def silenced(self, item: _Open, now: datetime) -> str | None:
        for scope, target, until, reason in self.silences:
            if until <= now:
                continue
            if (scope == "customer" and target == item.alert["customer_id"]) or (
                scope == "manager" and target == item.recipient
            ):
                return reason or scope
        return None

    def on_digest(self, digest: Mapping[str, Any], at: datetime) -> None:
        """A digest already sent (read back from ``manager.digests`` on a restart)."""
        recipient = str(digest["recipient"])
        for a in digest.get("alerts", []):
            item = self.open.get(str(a["customer_id"]))
            if item is not None and item.alert.get("alert_id") == a.get("alert_id"):
                item.sent_at = at
        self.last_sent[recipient] = at
        self.sent_today[(recipient, at.date().isoformat())] += len(digest.get("alerts", []))
        if self.next_flush.get(recipient, at) <= at:
            self.next_flush.pop(recipient, None)
        if any(
            it.recipient == recipient and it.sent_at is None and not it.acknowledged
            for it in self.open.values()
        ):
            self._schedule(recipient, at)

    # ------------------------------------------------------------ sending
    def due(self, now: datetime) -> list[Digest]:
        """The digests to send at ``now`` (and the notifier's state moves on)."""
        repeat = self.config.repeat_interval
        for item in self.open.values():  # unacknowledged and not sent for a while
            if (
                not item.acknowledged
                and item.sent_at is not None
                and now - item.sent_at >= repeat
                and (item.snoozed_until is None or item.snoozed_until <= now)
            ):
                item.sent_at = None
                self._schedule(item.recipient, now)
            elif item.snoozed_until is not None and item.snoozed_until <= now and item.sent_at:
                item.snoozed_until, item.sent_at = None, None
                self._schedule(item.recipient, now)
        out = []
        for recipient, when in sorted(self.next_flush.items()):
            if when > now:
                continue
            del self.next_flush[recipient]
            waiting = [
                it
                for it in self.open.values()
                if it.recipient == recipient
                and it.sent_at is None
                and not it.acknowledged
                and (it.snoozed_until is None or it.snoozed_until <= now)
            ]
            ready = []
            for it in waiting:
                if self.silenced(it, now):
                    self.suppressed["silenced"] += 1
                    it.sent_at = now  # counted once; repeats after the interval
                else:
                    ready.append(it)
            ready.sort(key=lambda it: -float(it.alert.get("value_at_risk_minor", 0.0)))
            day = (recipient, now.date().isoformat())
            room = max(self.config.daily_cap - self.sent_today[day], 0)
            send, held = ready[:room], ready[room:]
            self.suppressed["daily_cap"] += len(held)
            if not send:
                continue
            for it in send:
                it.sent_at = now
            self.sent_today[day] += len(send)
            self.last_sent[recipient] = now
            out.append(Digest(recipient, tuple(it.alert for it in send), len(held), now))
        return out

    def inbox(self, recipient: str) -> list[dict[str, Any]]:
        """A recipient's open alerts, most value at risk first."""
        items = [it.alert for it in self.open.values() if it.recipient == recipient]
        return sorted(items, key=lambda a: -float(a.get("value_at_risk_minor", 0.0)))
