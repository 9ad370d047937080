"""Consumer lag and topic reading, from outside the worker (aiokafka)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

__all__ = ["consumer_lag", "read_topic"]


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
        ends = await consumer.end_offsets(tps) if tps else {}
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


async def _read(bootstrap: str, topic: str, idle: float) -> list[tuple[bytes | None, bytes]]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    out: list[tuple[bytes | None, bytes]] = []
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=int(idle * 1000), max_records=10_000)
            if not batch:
                return out
            for records in batch.values():
                out.extend((r.key, r.value) for r in records if r.value is not None)
    finally:
        await consumer.stop()


def read_topic(
    bootstrap: str, topic: str, idle: float = 3.0
) -> Iterator[tuple[bytes | None, bytes]]:
    """Every record of ``topic`` from the start, until ``idle`` seconds bring nothing."""
    return iter(asyncio.run(_read(bootstrap, topic, idle)))
