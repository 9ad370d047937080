"""The offset guard: records the consumer left out are found and read from the broker.

The guard is fed the offsets a faust stream would hand out, with holes in them; it
reads the missing records from the real (dev) broker, and once they are marked
acknowledged, faust's own commit computation moves past them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from faust.transport.consumer import Consumer
from faust.types import TP
from faust.types.tuples import ConsumerMessage
from intervaltree import IntervalTree

from stream import Broker
from stream._offsets import Gap, OffsetGuard, ack_held, hold, mark_acked
from stream._replay import ensure_topics
from tests.conftest import free_port

TOPIC = "guard.events"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(free_port(), log=tmp_path / "broker.log") as b:
        yield b


def _produce(bootstrap: str, n: int) -> None:
    from aiokafka import AIOKafkaProducer

    async def run() -> None:
        await ensure_topics(bootstrap, [TOPIC], 2)
        p = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await p.start()
        try:
            for i in range(n):
                await p.send_and_wait(TOPIC, f"v{i}".encode(), key=b"k", partition=1)
        finally:
            await p.stop()

    asyncio.run(run())


class _Consumer:
    """faust's consumer bookkeeping (the attributes its commit computation reads)."""

    def __init__(self, committed: dict[TP, int]) -> None:
        self._committed_offset: defaultdict[TP, int | None] = defaultdict(lambda: None)
        self._committed_offset.update(committed)
        self._acked: defaultdict[TP, list[int]] = defaultdict(list)
        self._acked_index: defaultdict[TP, set[int]] = defaultdict(set)
        self._gap: defaultdict[TP, IntervalTree] = defaultdict(IntervalTree)


def _events(tp: TP, offsets: range) -> list[Any]:
    return [
        SimpleNamespace(message=SimpleNamespace(topic=tp.topic, tp=tp, offset=o)) for o in offsets
    ]


def test_skipped_records_are_read_from_the_broker_and_let_commits_move_on(broker: Broker) -> None:
    bootstrap = broker.url.removeprefix("kafka://")
    _produce(bootstrap, 60)
    tp = TP(TOPIC, 1)
    consumer = _Consumer({tp: 10})
    app = SimpleNamespace(consumer=consumer, consumer_generation_id=1)
    guard = OffsetGuard(app, TOPIC, bootstrap)

    # delivered: 12..19, then 40..44 (10, 11 and 20..39 left out by the consumer)
    delivered = _events(tp, range(12, 20)) + _events(tp, range(40, 45))
    gaps = guard.observe(delivered)
    assert gaps == [Gap(tp, 10, 12), Gap(tp, 20, 40)]
    assert guard.expected[tp] == 45
    # the same offsets again (a redelivery): nothing missing
    assert guard.observe(_events(tp, range(40, 45))) == []

    async def read_all() -> list[tuple[list[Any], bool]]:
        try:
            return [await guard.read(gap) for gap in gaps]
        finally:
            await guard.stop()

    reads = asyncio.run(read_all())
    for gap, (records, complete) in zip(gaps, reads, strict=True):
        assert complete
        assert [r.message.offset for r in records] == list(range(gap.start, gap.end))
        assert [r.value for r in records] == [f"v{o}".encode() for o in range(gap.start, gap.end)]
        assert all(r.message.partition == 1 and r.message.key == b"k" for r in records)
    assert guard.refetched == 2 + 20

    # faust acknowledged what it delivered; its commit stops at the first hole
    for ev in delivered:
        consumer._acked[tp].append(ev.message.offset)
        consumer._acked_index[tp].add(ev.message.offset)
    assert Consumer._new_offset(consumer, tp) is None  # type: ignore[arg-type]
    for gap in gaps:
        mark_acked(consumer, tp, range(gap.start, gap.end))
    assert Consumer._new_offset(consumer, tp) == 45  # type: ignore[arg-type]


def test_a_new_generation_expects_each_partition_from_its_committed_offset() -> None:
    tp = TP(TOPIC, 0)
    consumer = _Consumer({tp: 100})
    app = SimpleNamespace(consumer=consumer, consumer_generation_id=1)
    guard = OffsetGuard(app, TOPIC, "unused:0")
    assert guard.observe(_events(tp, range(100, 110))) == []
    # a rebalance; the partition comes back from its commit (105): a hole before 107
    app.consumer_generation_id = 2
    consumer._committed_offset[tp] = 105
    assert guard.observe(_events(tp, range(107, 109))) == [Gap(tp, 105, 107)]
    # a partition never committed is expected from its start
    fresh = TP(TOPIC, 1)
    assert guard.observe(_events(fresh, range(3, 4))) == [Gap(fresh, 0, 3)]
    # other topics (a table's changelog) are not the guard's
    assert guard.observe(_events(TP("other", 0), range(50, 51))) == []


def test_a_quiet_partition_read_to_its_end_has_a_tail_gap_only_if_records_were_dropped() -> None:
    tp = TP(TOPIC, 0)
    consumer = _Consumer({tp: 40})
    quiet = SimpleNamespace(
        flow_active=True,
        _unacked_messages=set(),
        _read_offset={tp: 49},
        assignment=lambda: {tp},
        highwater=lambda _tp: 50,
    )
    for name in ("_committed_offset", "_acked", "_acked_index", "_gap"):
        setattr(quiet, name, getattr(consumer, name))
    app = SimpleNamespace(consumer=quiet, consumer_generation_id=1)
    guard = OffsetGuard(app, TOPIC, "unused:0", quiet_seconds=0.0)
    # faust read to offset 49 (the last record), the worker saw up to 44: 45..49 dropped
    guard.observe(_events(tp, range(40, 45)))
    assert guard.tail_gaps() == [Gap(tp, 45, 50)]
    # a partition taken over at its end: faust seeks it to the commit (50), and its
    # read offset is then the next offset to read, not a record it read
    app.consumer_generation_id = 2
    consumer._committed_offset[tp] = 50
    quiet._read_offset[tp] = 50
    assert guard.tail_gaps() == []


def test_records_before_the_groups_commit_are_not_read_again(broker: Broker) -> None:
    """faust's view of the commit can be behind the group's (a partition taken over
    from a worker that committed): the guard reads only from the group's commit on."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    bootstrap = broker.url.removeprefix("kafka://")
    _produce(bootstrap, 30)
    tp = TP(TOPIC, 1)

    async def run() -> tuple[list[Any], bool]:
        committer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id="workers", enable_auto_commit=False
        )
        await committer.start()
        try:
            atp = TopicPartition(TOPIC, 1)
            committer.assign([atp])
            await committer.commit({atp: 15})
        finally:
            await committer.stop()
        app = SimpleNamespace(consumer=_Consumer({}), consumer_generation_id=1)
        guard = OffsetGuard(app, TOPIC, bootstrap, group="workers")
        try:
            return await guard.read(Gap(tp, 0, 20))
        finally:
            await guard.stop()

    records, complete = asyncio.run(run())
    assert complete
    assert [r.message.offset for r in records] == list(range(15, 20))


def test_recovery_reads_a_changelog_partition_to_its_true_end(broker: Broker) -> None:
    """faust's recovery restores a changelog partition up to the end offsets the
    worker's consumer reports. The dev broker answers ListOffsets with the base offset
    of a partition's last batch: a changelog written in one batch looked empty, and
    none of its states came back after a crash. The worker's transport reads the ends
    from the data."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.structs import TopicPartition
    from yarl import URL

    from stream._transport import _ConsumerThread

    bootstrap = broker.url.removeprefix("kafka://")
    topic = "guard.changelog"

    # faust's recovery asks with faust's partitions; aiokafka's consumer wants its own
    tps = [TP(topic, 0), TopicPartition(topic, 1)]

    async def run() -> dict[TP, int]:
        await ensure_topics(bootstrap, [topic], 2)
        p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=200)
        await p.start()
        try:  # seven records in one batch, as a flush of seven states sends them
            sent = [await p.send(topic, f"s{i}".encode(), key=b"k", partition=0) for i in range(7)]
            await asyncio.gather(*sent)
        finally:
            await p.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            thread: Any = object.__new__(_ConsumerThread)  # the method under test only
            thread._consumer = consumer
            thread.consumer = SimpleNamespace(in_transaction=False)
            thread.transport = SimpleNamespace(url=[URL(broker.url)], default_port=9092)
            ends: dict[TP, int] = await thread._highwaters(tps)
            return ends
        finally:
            await consumer.stop()

    assert asyncio.run(run()) == {tps[0]: 7, tps[1]: 0}


def _held_messages(way: str) -> tuple[Any, list[Any]]:
    """A real faust consumer and the messages of a few micro-batches as the worker
    holds them, then acknowledged at its flush ``way``: "faust" (each message's own
    ``ack``, as the worker did) or "batch" (:func:`ack_held`). The messages cover every
    branch of faust's ack: an offset already committed, one delivered twice, one still
    referenced elsewhere, one already acknowledged, a topic without acknowledgements."""
    app = faust.App(f"acks-{uuid.uuid4().hex}", broker="kafka://127.0.0.1:1")
    consumer = app.consumer
    app.topics._acking_topics.add(TOPIC)
    consumer._committed_offset[TP(TOPIC, 0)] = 3  # offsets 0-2 of partition 0: committed
    messages = [
        ConsumerMessage(topic, p, o, 0.0, 0, [], b"k", b"v", None)
        for topic, p, o in [
            *((TOPIC, p, o) for p in (0, 1) for o in range(12)),
            (TOPIC, 1, 5),  # delivered twice (a redelivery after a seek)
            ("no.acks", 0, 0),
        ]
    ]
    for message in messages:
        consumer.track_message(message)
        message.incref()  # faust's, when it hands the message to the stream
    if way == "batch":
        hold(messages)
    else:
        for message in messages:
            message.incref()
    messages[7].incref()  # another reference: still held after the flush
    messages[9].ack(consumer)  # acknowledged early
    for message in messages:
        message.ack(consumer)  # the stream's own acknowledgement after the micro-batch
    assert consumer._n_acked == 1  # held until the flush, but the one acknowledged early

    async def flush() -> None:
        consumer._waiting_for_ack = asyncio.get_running_loop().create_future()
        if way == "batch":
            # all but the three committed offsets, the one held and the one acked early
            assert ack_held(consumer, messages) == 2 * 12 - 3 - 1 - 1
        else:
            for message in messages:
                message.ack(consumer)
        assert consumer._waiting_for_ack.done()  # woken, as faust's own ack does

    asyncio.run(flush())
    consumer._thread.thread_loop.close()  # its thread (never started) owns a loop
    return consumer, messages


def test_held_messages_acknowledged_in_one_pass_as_faust_acknowledges_each() -> None:
    """The flush acknowledges its held messages in one pass under faust's lock; the
    consumer's bookkeeping (what its commits and its shutdown read) and each message
    end as they do with faust's ``Message.ack`` per message."""
    ours, batch = _held_messages("batch")
    faust_consumer, each = _held_messages("faust")
    for attribute in ("_acked", "_acked_index"):
        assert dict(getattr(ours, attribute)) == dict(getattr(faust_consumer, attribute))
    assert ours._n_acked == faust_consumer._n_acked == 2 * 12 - 3 - 1  # committed; held
    assert sorted(m.offset + 100 * m.partition for m in ours._unacked_messages) == sorted(
        m.offset + 100 * m.partition for m in faust_consumer._unacked_messages
    )
    assert [(m.acked, m.refcount) for m in batch] == [(m.acked, m.refcount) for m in each]
    assert not batch[7].acked
    assert batch[7].refcount == 1
    # partition 0 commits up to the message still held; partition 1, all of it
    assert Consumer._new_offset(ours, TP(TOPIC, 0)) == 7  # type: ignore[arg-type]
    assert Consumer._new_offset(ours, TP(TOPIC, 1)) == 12  # type: ignore[arg-type]
