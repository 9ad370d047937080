"""No record skipped: the worker checks the offsets it is given and reads any it missed.

faust (with aiokafka) can leave out records of a source partition around a
rebalance, in three ways seen here in the crash and scale-out tests:

- records its fetcher had taken when the flow was suspended are dropped, and
  aiokafka's ``seek_to_committed`` does not seek a partition without a commit back;
- a batch fetched before a seek is handed out after it: faust counts the jump as a
  gap (acknowledged: committed unprocessed, which the worker's transport turns off,
  see ``stream._transport``) and then drops the records read again from the seek,
  as older than its read offset;
- a record dropped at the suspension with its read offset already set.

A record left out is never processed, and as faust commits only a contiguous run of
acknowledged offsets, that partition's commits stop for good: the stall.

:class:`OffsetGuard` does not depend on how faust loses a record. Per source
partition it keeps the next offset the worker expects; in each consumer generation
it starts at the partition's committed offset (everything before it has been
processed: commits follow acknowledgements, which follow processing). When a record
arrives beyond the expected offset, the records in between are read directly from
the broker (a consumer of its own, no group) and processed first; they are then
acknowledged to faust, so its commits move on. A partition that goes quiet with
faust's read offset past the expected one (records dropped at the end of what was
sent) is checked by :meth:`OffsetGuard.tail_gaps` from a timer. Records read twice
are recognised by the idempotent fold (counted as duplicates); the cost of a wrong
guess is only a re-read, never a loss.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["DirectEvent", "Gap", "OffsetGuard", "ack_held", "hold", "mark_acked"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Gap:
    tp: Any  # faust's TP (topic, partition)
    start: int  # first offset missed
    end: int  # first offset not missed (exclusive)


class _DirectMessage:
    """The parts of a faust ``Message`` the worker reads, from an aiokafka record."""

    def __init__(self, tp: Any, record: Any) -> None:
        self.tp = tp
        self.topic = tp.topic
        self.partition = tp.partition
        self.offset = record.offset
        self.key = record.key
        self.value = record.value
        self.headers = list(record.headers or ())
        self.timestamp = record.timestamp / 1000.0


class DirectEvent:
    """A record read by the guard, shaped like a faust event (``.message``, ``.value``)."""

    def __init__(self, tp: Any, record: Any) -> None:
        self.message = _DirectMessage(tp, record)
        self.value = record.value


class OffsetGuard:
    """The next expected offset per source partition, and the reader of missed ones."""

    def __init__(
        self,
        app: Any,
        topic: str,
        bootstrap: str,
        group: str | None = None,
        quiet_seconds: float = 10.0,
    ) -> None:
        self.app = app
        self.topic = topic
        self.bootstrap = bootstrap
        self.group = group  # the worker's consumer group: its commits bound what is re-read
        self.quiet_seconds = quiet_seconds
        self.expected: dict[Any, int] = {}
        self.seen: dict[Any, float] = {}  # monotonic time a record of tp last arrived
        self.generation: Any = None
        self.refetched = 0  # records read by the guard
        self.gaps = 0
        self._reader: Any = None

    def _baseline(self, tp: Any) -> int:
        committed = self.app.consumer._committed_offset.get(tp)
        return int(committed) if committed else 0

    def _check_generation(self) -> None:
        generation = getattr(self.app, "consumer_generation_id", None)
        if generation != self.generation:
            # a rebalance: expect each partition from its committed offset again
            self.generation = generation
            self.expected.clear()

    def observe(self, events: Sequence[Any]) -> list[Gap]:
        """Advance the expected offsets over ``events`` (in delivery order); the
        ranges that were skipped before some of them."""
        self._check_generation()
        gaps: list[Gap] = []
        now = time.monotonic()
        expected, topic = self.expected, self.topic
        for ev in events:
            msg = ev.message
            if msg.topic != topic:
                continue
            tp = msg.tp
            exp = expected.get(tp)
            if exp is None:
                exp = self._baseline(tp)
            if msg.offset > exp:
                gaps.append(Gap(tp, exp, msg.offset))
            if msg.offset + 1 > exp:
                expected[tp] = msg.offset + 1
            else:
                expected[tp] = exp
            self.seen[tp] = now
        return gaps

    def tail_gaps(self) -> list[Gap]:
        """Partitions quiet for ``quiet_seconds`` with nothing in flight, where faust
        has read to the end of the partition and past the expected offset: the records
        between were dropped. (A partition faust has not read to its end is left to
        :meth:`observe`: its next record shows the hole. Faust can hold one partition
        back for a while, so a quiet partition alone proves nothing.)"""
        self._check_generation()
        consumer = self.app.consumer
        if not consumer.flow_active or consumer._unacked_messages:
            return []
        now = time.monotonic()
        gaps = []
        try:
            assigned = [tp for tp in consumer.assignment() if tp.topic == self.topic]
        except Exception:  # not started or mid-rebalance
            return []
        for tp in assigned:
            if now - self.seen.get(tp, 0.0) < self.quiet_seconds:
                continue
            exp = self.expected.get(tp)
            if exp is None:
                exp = self._baseline(tp)
            read = consumer._read_offset.get(tp)
            high = consumer.highwater(tp)
            if read is None or high is None:
                continue
            # faust's read offset is the last record read, or, after a seek (as to the
            # committed offset when a partition is assigned), the next one to read:
            # no record exists at or beyond the high watermark to have been dropped
            end = min(int(read) + 1, int(high))
            if end < int(high):
                continue  # not read to its end: the next record delivered tells
            if end > exp:
                gaps.append(Gap(tp, exp, end))
        return gaps

    def advance(self, gap: Gap, events: Iterable[Any]) -> None:
        """Count the records read for ``gap`` as seen (the expected offset moves on)."""
        last = max((ev.message.offset for ev in events), default=None)
        if last is not None and last + 1 > self.expected.get(gap.tp, 0):
            self.expected[gap.tp] = last + 1
        self.seen[gap.tp] = time.monotonic()

    async def read(self, gap: Gap, timeout: float = 30.0) -> tuple[list[DirectEvent], bool]:
        """The records of ``gap``, read directly from the broker, and whether the whole
        range was read (offsets without a record, such as a compacted topic's, count)."""
        from aiokafka import TopicPartition

        reader = await self._ensure_reader()
        atp = TopicPartition(gap.tp.topic, gap.tp.partition)
        reader.assign([atp])
        # before the group's commit everything has been processed: the expected offset
        # can lag behind it (faust's view of the commit is not always up to date)
        committed = await reader.committed(atp) if self.group else None
        if committed and committed > gap.start:
            gap = Gap(gap.tp, committed, max(committed, gap.end))
        if gap.start >= gap.end:  # all of it committed already: no hole, nothing to read
            logger.debug("%s: the group's commit %s covers the gap", gap.tp, committed)
            return [], True
        reader.seek(atp, gap.start)
        out: list[DirectEvent] = []
        deadline = time.monotonic() + timeout
        complete = False
        while time.monotonic() < deadline:
            if await reader.position(atp) >= gap.end:
                complete = True
                break
            got = await reader.getmany(atp, timeout_ms=500, max_records=5_000)
            for record in got.get(atp, ()):
                if gap.start <= record.offset < gap.end:
                    out.append(DirectEvent(gap.tp, record))
        else:
            logger.error(
                "read %d of the records %d..%d of %s before the timeout",
                len(out),
                gap.start,
                gap.end - 1,
                gap.tp,
            )
        self.gaps += 1
        self.refetched += len(out)
        logger.warning(
            "records %d..%d of %s%d were not delivered by the consumer: %d read directly",
            gap.start,
            gap.end - 1,
            gap.tp.topic,
            gap.tp.partition,
            len(out),
        )
        return out, complete

    async def _ensure_reader(self) -> Any:
        if self._reader is None:
            from aiokafka import AIOKafkaConsumer

            # with the group id only to read its commits: assigned partitions, no
            # membership, nothing committed
            reader = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=self.group,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                fetch_max_wait_ms=100,
            )
            await reader.start()
            self._reader = reader
        return self._reader

    async def stop(self) -> None:
        if self._reader is not None:
            await self._reader.stop()
            self._reader = None


def mark_acked(consumer: Any, tp: Any, offsets: Iterable[int]) -> None:
    """Acknowledge ``offsets`` of ``tp`` to faust's consumer, as its ``ack`` does for a
    message it delivered: its commits then move past records the guard processed."""
    from faust.types.tuples import ack_lock

    with ack_lock:
        committed = consumer._committed_offset[tp]
        index = consumer._acked_index[tp]
        acked = consumer._acked[tp]
        for offset in offsets:
            if (committed is None or offset >= committed) and offset not in index:
                index.add(offset)
                acked.append(offset)


def hold(messages: Iterable[Any]) -> None:
    """One more reference on each of faust's ``messages``: the stream's own
    acknowledgement then leaves them unacknowledged, for :func:`ack_held` (faust's
    ``incref`` for each, under its lock once)."""
    from faust.types.tuples import ack_lock

    with ack_lock:
        for message in messages:
            message.refcount += 1


def ack_held(consumer: Any, messages: Iterable[Any]) -> int:
    """Drop the reference :func:`hold` took on each of ``messages``, and acknowledge
    those left with none, as faust's ``Message.ack`` and ``Consumer.ack`` do one
    message at a time: the same bookkeeping (the acknowledged offsets, their count,
    the messages awaited at shutdown), under faust's lock once, and those waiting
    for an acknowledgement woken once. The number acknowledged."""
    from faust.types.tuples import ack_lock
    from mode.utils.futures import notify

    done = 0
    enabled: dict[str, bool] = {}
    unacked = consumer._unacked_messages
    with ack_lock:
        for message in messages:
            if message.acked:
                continue
            refcount = message.refcount = max(message.refcount - 1, 0)
            if refcount:
                continue
            message.acked = True
            topic = message.topic
            acks = enabled.get(topic)
            if acks is None:
                acks = enabled[topic] = consumer.app.topics.acks_enabled_for(topic)
            if not acks:
                continue
            tp, offset = message.tp, message.offset
            committed = consumer._committed_offset[tp]
            if committed is None or offset >= committed:
                index = consumer._acked_index[tp]
                if offset not in index:
                    unacked.discard(message)
                    index.add(offset)
                    consumer._acked[tp].append(offset)
                    consumer._n_acked += 1
                    done += 1
    notify(consumer._waiting_for_ack)
    return done
