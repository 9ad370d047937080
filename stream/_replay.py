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
from typing import Any

import polars as pl

from features import scan_log
from features.events import log_records
from stream._partition import KeyPartitioner

__all__ = ["ReplayResult", "load_replay", "replay"]

logger = logging.getLogger(__name__)

BATCH = 2000
PACED_SLICE, PACED_STEP = 250, 50


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


async def _send_chunk(
    producer: Any,
    topic: str,
    chunk: list[tuple[bytes | None, bytes]],
    partitions: list[int],
    partition_of: KeyPartitioner,
    headers: list[tuple[str, bytes]],
) -> list[asyncio.Future[Any]]:
    """Send records as one batch per partition (in their order within each): a
    batch is built in aiokafka's compiled record builder, where ``send`` per record
    cost about 100 µs of Python."""
    batches: dict[int, Any] = {}
    futures = []
    for key, value in chunk:
        p = partition_of(key, partitions, partitions)
        batch = batches.get(p)
        if batch is None:
            batch = batches[p] = producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
            futures.append(await producer.send_batch(batch, topic, partition=p))  # full
            batch = batches[p] = producer.create_batch()
            # an empty batch takes any record, as Kafka's do (the broker may refuse it:
            # the send fails, and the replay with it)
            if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
                raise RuntimeError(f"a new batch refused a record of {len(value):,} bytes")
    for p, batch in batches.items():
        futures.append(await producer.send_batch(batch, topic, partition=p))
    return futures


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
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1)
    await producer.start()
    headers = [("churn-backfill", b"1")] if backfill else []
    sent = 0
    began = time.monotonic()
    try:
        parts, partition_of = sorted(await producer.partitions_for(topic)), KeyPartitioner()
        # paced: encoded a little at a time, sent 50 at a time (each when due)
        size, step = (PACED_SLICE, PACED_STEP) if rate else (BATCH, BATCH)
        for start in range(0, frame.height, size):
            records = [
                (key.encode() if key else None, value)
                for key, value in log_records(frame.slice(start, size))
            ]
            futures = []
            for at in range(0, len(records), step):
                if rate:
                    ahead = sent / rate - (time.monotonic() - began)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                chunk = records[at : at + step]
                futures += await _send_chunk(producer, topic, chunk, parts, partition_of, headers)
                sent += len(chunk)
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
