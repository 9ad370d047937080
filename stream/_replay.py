"""Replay an event log into ``bank.events``: the event-sourced rebuild, and the demo feed.

Records go out in delivery order (``published_at`` where the log has it, so late
events arrive late; else ``occurred_at``), keyed by customer id, malformed ones
with their original bytes. ``rate`` paces them (events per second, steady).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import polars as pl

from features import scan_log
from features.events import log_records

__all__ = ["ReplayResult", "load_replay", "replay"]

logger = logging.getLogger(__name__)

BATCH = 2000


@dataclass(frozen=True, slots=True)
class ReplayResult:
    sent: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


def load_replay(
    events: Path,
    since: datetime | None = None,
    until: datetime | None = None,
    customers: list[str] | None = None,
) -> pl.DataFrame:
    """The rows to replay, in delivery order, delivered in ``[since, until)``."""
    log = scan_log(events)
    if customers is not None:
        log = log.filter(pl.col("customer_id").is_in(customers))
    names = log.collect_schema().names()
    order = pl.col("occurred_at")
    if "published_at" in names:
        order = pl.coalesce("published_at", "occurred_at")
    # the period is on delivery time; records without any time go with the first period
    if since is not None:
        log = log.filter(order >= since)
    if until is not None:
        log = log.filter(order.is_null() | (order < until))
    return log.with_columns(order.alias("_order")).sort("_order", maintain_order=True).collect()


async def ensure_topics(bootstrap: str, topics: list[str], partitions: int) -> None:
    """Create the topics that do not exist yet, with ``partitions`` partitions."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(t, partitions, 1) for t in topics if t not in existing]
        if new:
            await admin.create_topics(new)
    finally:
        await admin.close()


async def _produce(
    bootstrap: str,
    topic: str,
    frame: pl.DataFrame,
    rate: float | None,
    backfill: bool,
    progress: Callable[[int], None] | None,
    partitions: int,
) -> int:
    from aiokafka import AIOKafkaProducer

    await ensure_topics(bootstrap, [topic], partitions)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=10, acks=1)
    await producer.start()
    headers = [("churn-backfill", b"1")] if backfill else []
    sent = 0
    began = time.monotonic()
    try:
        for start in range(0, frame.height, BATCH):
            futures = []
            for key, value in log_records(frame.slice(start, BATCH)):
                futures.append(
                    await producer.send(
                        topic,
                        value=value,
                        key=key.encode() if key else None,
                        headers=headers,
                    )
                )
                sent += 1
                if rate and sent % 50 == 0:
                    ahead = sent / rate - (time.monotonic() - began)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            await asyncio.gather(*futures)
            if progress:
                progress(sent)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


def replay(
    bootstrap: str,
    topic: str,
    frame: pl.DataFrame,
    rate: float | None = None,
    backfill: bool = False,
    progress: Callable[[int], None] | None = None,
    partitions: int = 8,
) -> ReplayResult:
    """Send every row of ``frame`` to ``topic``; returns how many and how fast."""
    began = time.monotonic()
    sent = asyncio.run(_produce(bootstrap, topic, frame, rate, backfill, progress, partitions))
    return ReplayResult(sent, time.monotonic() - began)
