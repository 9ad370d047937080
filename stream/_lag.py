"""Consumer lag and topic reading, from outside the worker (aiokafka)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["consumer_lag", "read_placed", "read_records", "read_topic", "true_end_offsets"]


async def true_end_offsets(
    bootstrap: str | list[str], tps: list[Any], reported: Mapping[Any, int] | None = None
) -> dict[Any, int]:
    """End offsets of ``tps`` read from the data (see :func:`_true_ends`), with a
    consumer of our own; ``reported``: the broker's answer, when already asked. Keyed
    as given (faust's partitions are not aiokafka's, which its consumer requires)."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    ours = {TopicPartition(tp.topic, tp.partition): tp for tp in tps}
    known = None if reported is None else {k: reported[ours[k]] for k in ours}
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await _true_ends(consumer, list(ours), known)
    finally:
        await consumer.stop()
    return {ours[k]: v for k, v in ends.items()}


async def _true_ends(
    consumer: Any, tps: list[Any], reported: Mapping[Any, int] | None = None
) -> dict[Any, int]:
    """End offsets read from the data: the dev broker (Tansu 0.6) answers ListOffsets
    with the base offset of the last batch, not the high watermark, so we read from
    there to the end (on a Kafka broker, that reads nothing)."""
    if reported is None:
        reported = await consumer.end_offsets(tps) if tps else {}
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, reported[tp])
    ends = dict(reported)
    while True:
        batch = await consumer.getmany(*tps, timeout_ms=1000)
        if not batch:
            break
        for tp, records in batch.items():
            if records:
                ends[tp] = max(ends[tp], records[-1].offset + 1)
    return ends


async def _lag(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.structs import TopicPartition

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            await consumer.topics()  # refresh metadata once
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        ends = await _true_ends(consumer, tps)
        committed = await admin.list_consumer_group_offsets(group, partitions=tps)
        return {
            tp.partition: ends[tp] - max(0, committed[tp].offset if tp in committed else 0)
            for tp in tps
        }
    finally:
        await consumer.stop()
        await admin.close()


def consumer_lag(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """Records not yet committed by ``group``, per partition of ``topic``."""
    return asyncio.run(_lag(bootstrap, group, topic))


async def _read(bootstrap: str, topic: str, idle: float) -> list[Any]:
    from aiokafka import AIOKafkaConsumer
    from aiokafka.structs import TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    out: list[Any] = []  # aiokafka's records, each partition's in offset order
    try:
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            return out
        ends = await _true_ends(consumer, tps)
        await consumer.seek_to_beginning(*tps)
        todo = {tp for tp in tps if ends[tp] > 0}
        quiet = 0.0
        while todo and quiet < idle:
            batch = await consumer.getmany(*todo, timeout_ms=500, max_records=10_000)
            quiet = quiet + 0.5 if not batch else 0.0
            for tp, records in batch.items():
                out.extend(r for r in records if r.value is not None)
                if records and records[-1].offset + 1 >= ends[tp]:
                    todo.discard(tp)
        return out
    finally:
        await consumer.stop()


def read_topic(
    bootstrap: str, topic: str, idle: float = 3.0
) -> Iterator[tuple[bytes | None, bytes]]:
    """Every record of ``topic`` from the start to its current end (or until ``idle``
    seconds bring nothing)."""
    return iter([(r.key, r.value) for r in asyncio.run(_read(bootstrap, topic, idle))])


def read_records(
    bootstrap: str, topic: str, idle: float = 3.0
) -> list[tuple[bytes | None, bytes, int]]:
    """Like :func:`read_topic`, with each record's timestamp (ms since the epoch)."""
    return [(r.key, r.value, r.timestamp) for r in asyncio.run(_read(bootstrap, topic, idle))]


def read_placed(
    bootstrap: str, topic: str, idle: float = 3.0
) -> list[tuple[int, bytes | None, bytes, list[tuple[str, bytes]]]]:
    """Like :func:`read_topic`, with where each record is and its headers:
    (partition, key, value, headers), each partition's in offset order."""
    return [
        (r.partition, r.key, r.value, list(r.headers))
        for r in asyncio.run(_read(bootstrap, topic, idle))
    ]
