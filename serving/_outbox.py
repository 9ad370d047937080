"""``churn notify``: the notifier as a service on Kafka.

It reads ``manager.alerts`` (from the worker), ``manager.actions`` (from the inbox)
and ``manager.digests`` (what it sent before) from the start, folds them in record
time order into a :class:`~serving._notify.Notifier` (so a restart rebuilds it and
sends nothing twice), then follows them live. Every ``tick`` it sends the digests
that are due:

- always to ``manager.digests`` (keyed by recipient): the record of what was sent;
- to the webhook, if ``CHURN_WEBHOOK_URL`` is set (signed with ``CHURN_WEBHOOK_SECRET``);
- by e-mail, if ``CHURN_SMTP_HOST`` is set and the manager directory
  (``CHURN_MANAGERS``, YAML) has the recipient's address; in their language.

A digest a channel could not deliver goes to ``manager.digests.dlq`` with the
channel and the error: nothing is dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import yaml
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from features.errors import ConfigError
from monitoring import counter_family, gauge_family
from serving._actions import digest_json
from serving._delivery import EmailConfig, WebhookConfig, send_email, send_webhook
from serving._notify import Digest, Notifier, RoutingConfig

__all__ = [
    "ACTIONS_TOPIC",
    "ALERTS_TOPIC",
    "DIGESTS_DLQ",
    "DIGESTS_TOPIC",
    "ManagerDirectory",
    "NotifyCollector",
    "NotifyConfig",
    "NotifyCounters",
    "load_directory",
    "run_notifier",
]

logger = logging.getLogger(__name__)
ALERTS_TOPIC: Final = "manager.alerts"
ACTIONS_TOPIC: Final = "manager.actions"
DIGESTS_TOPIC: Final = "manager.digests"
DIGESTS_DLQ: Final = "manager.digests.dlq"


class Manager(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = ""
    email: str | None = Field(None, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
    language: str = Field("en", pattern="^(en|zh)$")
    team: list[str] = []  # a team lead sees these managers' customers too
    token_sha256: str | None = None  # the inbox / API token, hashed (never the token)


class ManagerDirectory(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    managers: dict[str, Manager] = {}

    def language(self, manager_id: str) -> str:
        m = self.managers.get(manager_id)
        return m.language if m else "en"


def load_directory(path: Path | None) -> ManagerDirectory:
    """The managers file (``CHURN_MANAGERS``); empty when not set."""
    if path is None:
        return ManagerDirectory()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return ManagerDirectory.model_validate(raw)
    except OSError as exc:
        raise ConfigError("CHURN_MANAGERS", str(path), f"a readable file ({exc})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError("CHURN_MANAGERS", str(path), f"valid YAML ({exc})") from exc
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(where, err.get("input"), str(err["msg"])) from exc


@dataclass(frozen=True)
class NotifyConfig:
    bootstrap: str
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    webhook: WebhookConfig | None = None
    email: EmailConfig | None = None
    directory: ManagerDirectory = field(default_factory=ManagerDirectory)
    tick: float = 1.0
    partitions: int = 8  # of topics this service creates if they are missing


@dataclass
class NotifyCounters:
    """What the notifier did, for ``/metrics`` (:class:`NotifyCollector`)."""

    sent: Counter[str] = field(default_factory=Counter)  # digests, by channel
    failed: Counter[str] = field(default_factory=Counter)
    alerts_delivered: int = 0
    notifier: Notifier | None = None


class NotifyCollector(Collector):
    def __init__(self, counts: NotifyCounters) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        c = self.counts
        yield counter_family(
            "churn_digests_delivered",
            "Digests delivered, by channel (topic, webhook, email)",
            {(k,): n for k, n in c.sent.items()},
            ("channel",),
        )
        yield counter_family(
            "churn_digests_failed",
            "Digests that failed after every retry (sent to manager.digests.dlq), by channel",
            {(k,): n for k, n in c.failed.items()},
            ("channel",),
        )
        yield counter_family(
            "churn_alerts_delivered", "Alerts sent in digests", {(): c.alerts_delivered}
        )
        held = c.notifier.suppressed if c.notifier else {}
        yield counter_family(
            "churn_alerts_held",
            "Alerts the notifier held back, by why (duplicate, silenced, inhibited, daily_cap...)",
            {(k,): n for k, n in held.items()},
            ("reason",),
        )
        yield gauge_family(
            "churn_notify_alerts_open",
            "Open (unacknowledged) alerts",
            {(): float(len(c.notifier.open)) if c.notifier else 0.0},
        )


def _at(ts_ms: int) -> datetime:
    return datetime.fromtimestamp(ts_ms / 1000, tz=UTC)


def _fold(notifier: Notifier, topic: str, value: dict[str, Any], at: datetime) -> None:
    if topic == ALERTS_TOPIC:
        notifier.on_alert(value, at)
    elif topic == ACTIONS_TOPIC:
        notifier.on_action(value, at)
    elif topic == DIGESTS_TOPIC:
        notifier.on_digest(value, at)


async def _deliver(
    cfg: NotifyConfig, producer: Any, digest: Digest, counts: NotifyCounters
) -> None:
    payload = digest_json(digest.recipient, digest.digest_id, digest.alerts, digest.overflow)
    payload["at"] = digest.at.isoformat()
    body = json.dumps(payload, ensure_ascii=False).encode()
    key = digest.recipient.encode()
    await producer.send_and_wait(DIGESTS_TOPIC, body, key=key)
    counts.sent["topic"] += 1
    counts.alerts_delivered += len(digest.alerts)
    failures = []
    if cfg.webhook is not None:
        result = await asyncio.to_thread(send_webhook, cfg.webhook, payload, digest.digest_id)
        if result.delivered:
            counts.sent["webhook"] += 1
        else:
            failures.append(("webhook", result.error, result.attempts))
    manager = cfg.directory.managers.get(digest.recipient)
    if cfg.email is not None and manager is not None and manager.email:
        result = await asyncio.to_thread(
            send_email,
            cfg.email,
            str(manager.email),
            digest.alerts,
            digest.overflow,
            manager.language,
            digest.digest_id,
        )
        if result.delivered:
            counts.sent["email"] += 1
        else:
            failures.append(("email", result.error, result.attempts))
    for channel, error, attempts in failures:
        counts.failed[channel] += 1
        letter = {"channel": channel, "error": error, "attempts": attempts, "digest": payload}
        await producer.send_and_wait(DIGESTS_DLQ, json.dumps(letter).encode(), key=key)


async def run_notifier(
    cfg: NotifyConfig,
    *,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
    counts: NotifyCounters | None = None,
) -> NotifyCounters:
    """Rebuild from the topics, then send due digests every ``tick`` until ``stop``."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.structs import TopicPartition

    from stream._lag import _true_ends
    from stream._replay import ensure_topics

    stop = stop or asyncio.Event()
    topics = (ALERTS_TOPIC, ACTIONS_TOPIC, DIGESTS_TOPIC)
    await ensure_topics(cfg.bootstrap, [*topics, DIGESTS_DLQ], cfg.partitions)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=cfg.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    producer = AIOKafkaProducer(bootstrap_servers=cfg.bootstrap, acks="all")
    await consumer.start()
    await producer.start()
    notifier = Notifier(cfg.routing)
    counts = counts or NotifyCounters()
    counts.notifier = notifier
    try:
        await consumer.topics()
        tps = [
            TopicPartition(t, p)
            for t in topics
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        ends = await _true_ends(consumer, tps)  # what there is now: folded, not sent
        consumer.assign(tps)
        if tps:
            await consumer.seek_to_beginning(*tps)
        backlog: list[tuple[int, str, dict[str, Any]]] = []
        pending = {tp for tp in tps if ends[tp] > 0}
        deadline = asyncio.get_running_loop().time() + 120
        while pending:
            if asyncio.get_running_loop().time() > deadline:
                # folding less than there is would send old digests again: stop here
                raise RuntimeError(f"could not read {sorted(map(str, pending))} to their end")
            batch = await consumer.getmany(*pending, timeout_ms=1000)
            for tp, records in batch.items():
                for r in records:
                    if r.offset < ends[tp]:
                        backlog.append((r.timestamp, tp.topic, json.loads(r.value)))
                if records and records[-1].offset + 1 >= ends[tp]:
                    pending.discard(tp)
                    consumer.pause(tp)
        backlog.sort(key=lambda x: x[0])
        for ts, topic, value in backlog:
            _fold(notifier, topic, value, _at(ts))
        for tp in tps:
            consumer.seek(tp, ends[tp])
        consumer.resume(*tps)
        logger.info(
            "notifier rebuilt from %d records; %d open alerts", len(backlog), len(notifier.open)
        )
        if ready is not None:
            ready.set()
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=int(cfg.tick * 1000))
            for tp, records in batch.items():
                for r in records:
                    if tp.topic != DIGESTS_TOPIC:  # our own sends are already folded
                        _fold(notifier, tp.topic, json.loads(r.value), clock())
            for digest in notifier.due(clock()):
                await _deliver(cfg, producer, digest, counts)
                logger.info(
                    "digest %s: %d alerts to %s",
                    digest.digest_id,
                    len(digest.alerts),
                    digest.recipient,
                )
    finally:
        await consumer.stop()
        await producer.stop()
    return counts
