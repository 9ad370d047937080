"""faust's aiokafka transport, with a configurable fetch wait and a fix to its seek.

faust creates its consumer with ``fetch_max_wait_ms=1500`` and no setting to change
it. A Kafka broker answers a fetch as soon as there is data, so the wait does not
matter there; the development broker (Tansu 0.6) holds every fetch for the full
wait, which puts up to 1.5 s between an event and its score. The worker's broker URL
uses the scheme ``churnkafka://`` (registered here), whose consumer waits
``CHURN_FETCH_WAIT_MS`` (:func:`set_fetch_wait`; default 1,500, faust's own) instead;
everything else is faust's aiokafka transport.
Measured with a plain consumer on the dev broker: median delivery 420 ms with a
1,500 ms wait, 5 ms with 100 ms.

**The seek fix.** During a rebalance faust suspends the flow; records its fetcher
has already taken are then dropped (never given to the agent, never acknowledged)
and faust relies on seeking every partition back to its committed offset to read
them again. aiokafka's ``seek_to_committed`` skips partitions with no committed
offset (or 0), so on a partition nobody has committed yet the position stays past
the dropped records: they are never processed, and as faust commits only a
contiguous run of acknowledged offsets, that partition's commits stop for good
(seen here: a worker joining, or a survivor taking over the partitions of a worker
that died before its first commit). :class:`_ConsumerThread` seeks such partitions
of the source topics to their beginning, which is where they start anyway with
``auto_offset_reset=earliest``; the records read twice are recognised by the
idempotent fold and counted as duplicates.

**Stale batches.** faust's fetcher goes on handing out the records of a batch it
fetched before a seek: after the seek has set its read offset back, the next stale
record looks like a jump forward, which faust records as a "gap" and treats as
acknowledged. Those offsets are then either never processed (lost) or acknowledged
twice, and a duplicate in faust's list of acknowledged offsets breaks its
contiguous run: commits then advance by one offset per commit interval (seen here
after a takeover: gap 189..1004 recorded, commits 237, 238, 239...). :class:`_Consumer`'s
fetch loop (faust's, with this one change) drops the rest of a batch as soon as a
seek of the source partitions happened after it was fetched, and such a seek keeps
the read offset it set; the records are read again from the new position.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, cast

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as _faust_aiokafka

__all__ = [
    "FETCH_MAX_WAIT_MS",
    "SCHEME",
    "Transport",
    "seek_to_committed_or_beginning",
    "set_fetch_wait",
]

# set by the worker from CHURN_FETCH_WAIT_MS (WorkerConfig.fetch_wait_ms); faust's own
# 1,500 ms by default
FETCH_MAX_WAIT_MS = 1500
SCHEME = "churnkafka"


class _ConsumerThread(_faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when its fetcher starts
        return consumer

    async def seek_to_committed(self) -> Mapping[Any, int]:
        return cast(Mapping[Any, int], await self.call_thread(self._seek_to_committed))

    async def _seek_to_committed(self) -> Mapping[Any, int]:
        return await seek_to_committed_or_beginning(self._ensure_consumer())


async def seek_to_committed_or_beginning(consumer: Any) -> Mapping[Any, int]:
    """aiokafka's ``seek_to_committed``, then the source partitions without a commit
    (none, or 0) to their beginning; returns the committed offsets as aiokafka does."""
    committed: Mapping[Any, int] = await consumer.seek_to_committed()
    fresh = [tp for tp, offset in committed.items() if not offset and is_source(tp.topic)]
    if fresh:
        await consumer.seek_to_beginning(*fresh)
    return committed


def is_source(topic: str) -> bool:
    """Not a table's changelog (faust reads those itself, from its own offsets)."""
    return not topic.endswith("-changelog")


class _Consumer(_faust_aiokafka.Consumer):
    _seeks = 0  # seeks of the source partitions so far (see _drain_messages)

    def _new_consumer_thread(self) -> Any:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def perform_seek(self) -> None:
        self._seeks += 1
        await super().perform_seek()

    async def seek(self, partition: Any, offset: int) -> None:
        if is_source(partition.topic):
            self._seeks += 1
        await super().seek(partition, offset)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - faust's loop
        """faust's fetch loop (``faust.transport.consumer.Consumer._drain_messages``,
        faust-streaming 0.15.3), changed in one respect: a record of a batch fetched
        before a seek of the source partitions is neither handed out nor allowed to
        move the read offset; the loop fetches again from the new position."""
        callback = self.callback
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        yield_every, num_since_yield = 100, 0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                seeks = self._seeks
                ait = self.getmany(timeout=1.0)
                await self.sleep(0)
                if self.should_stop:
                    continue
                async for tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > yield_every:
                        await asyncio.sleep(0)
                        num_since_yield = 0
                    if self._seeks != seeks:
                        break  # stale: fetched before the seek
                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is not None and offset < r_offset:
                        continue  # read already (faust: "DROPPED MESSAGE ROFF")
                    gap = offset - (r_offset or 0)
                    if gap > 1 and r_offset and acks_enabled_for(message.topic):
                        await self._add_gap(tp, r_offset + 1, offset)
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    if self._seeks != seeks:
                        break
                    await self.wait_first(callback(message), self.suspend_flow.wait())
                    if self._seeks != seeks:
                        break  # the seek set the read offset: keep it
                    set_read_offset(tp, offset)
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)


class Transport(_faust_aiokafka.Transport):
    Consumer = _Consumer


TRANSPORTS.aliases[SCHEME] = "stream._transport:Transport"


def set_fetch_wait(ms: int) -> None:
    """The fetch wait of consumers created from now on in this process."""
    global FETCH_MAX_WAIT_MS
    FETCH_MAX_WAIT_MS = ms
