"""faust's aiokafka transport, with a short fetch wait.

faust creates its consumer with ``fetch_max_wait_ms=1500`` and no setting to change
it. A Kafka broker answers a fetch as soon as there is data, so the wait does not
matter there; the development broker (Tansu 0.6) holds every fetch for the full
wait, which puts up to 1.5 s between an event and its score. The worker's broker URL
uses the scheme ``churnkafka://`` (registered here), whose consumer waits
``CHURN_FETCH_WAIT_MS`` (:func:`set_fetch_wait`; default 50 ms) instead;
recovery asks for the end offsets of changelog partitions read from the data (the
dev broker misreports them). Measured with a plain consumer on the dev broker: median
delivery 420 ms with a 1,500 ms wait, 5 ms with 100 ms.

Its consumer also hands fetched records to the agents inline (``_drain_messages``),
says when it has handed out a whole fetch (``on_handed_out``, for
:mod:`stream._take`), leaves the offset gaps to the worker's guard (``_add_gap``),
and fetches again as soon as a full stream buffer drains (``_wait_next_records``);
everything else is faust's aiokafka transport.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Mapping
from typing import Any, cast

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as _faust_aiokafka
from faust.transport.drivers.aiokafka import server_list
from mode import Service, ServiceT
from mode.utils.locks import Event

from stream._lag import true_end_offsets

__all__ = ["FETCH_MAX_WAIT_MS", "SCHEME", "Transport", "set_fetch_wait"]

logger = logging.getLogger(__name__)

# set by the worker from CHURN_FETCH_WAIT_MS (WorkerConfig.fetch_wait_ms, 50 ms by default)
FETCH_MAX_WAIT_MS = 50
SCHEME = "churnkafka"
# the longest fetch while a partition is left out for its full stream buffer
BUFFERED_POLL = 0.05


class _ConsumerThread(_faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read when its fetcher starts
        return consumer

    async def _highwaters(self, partitions: list[Any]) -> Mapping[Any, int]:
        """End offsets read from the data. The dev broker (Tansu 0.6) answers
        ListOffsets with the base offset of a partition's last batch: a changelog
        partition written in one batch looked empty to faust's recovery, which then
        restored none of its states (the events before the group's commit were lost to
        them: the crash test with write-behind state). On a Kafka broker the reported
        ends are right, and reading from them finds nothing more."""
        reported = await super()._highwaters(partitions)
        if self.consumer.in_transaction or not partitions:
            return reported
        transport: Any = self.transport
        bootstrap = server_list(transport.url, transport.default_port)
        try:
            return await true_end_offsets(bootstrap, list(partitions), reported)
        except Exception:  # faust would end recovery silently: its own answer instead
            logger.exception("could not read the end offsets of %s from the data", partitions)
            return reported


class _Resumed:
    """A coroutine already stepped once (it yielded ``pending``), awaited from where
    it stopped: what ``yield from`` does for a coroutine that has not started."""

    __slots__ = ("coro", "pending")

    def __init__(self, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
        self.coro, self.pending = coro, pending

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, pending = self.coro, self.pending
        while True:
            try:
                sent = yield pending
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # cancellation included: the coroutine's to handle
                try:
                    pending = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    pending = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


class _Consumer(_faust_aiokafka.Consumer):
    _handed_out: tuple[Callable[[], None], ...] = ()
    _buffer_dropped: Event | None = None
    buffer_waits: int = 0  # fetches held back until a full stream buffer drained

    def on_buffer_drop(self, tp: Any) -> None:
        super().on_buffer_drop(tp)
        if self._buffer_dropped is not None:
            self._buffer_dropped.set()

    async def _wait_next_records(self, timeout: float) -> tuple[Any, Any]:
        """faust's, but a fetch made while some stream buffers are full comes back
        within ``BUFFERED_POLL``, or, with no partition left to fetch, as soon as a
        buffer drains; not after the whole ``timeout`` (1 s).

        faust stops fetching a partition whose stream buffer is full, and fetches it
        again once the buffer has drained, at the next fetch. A drain fetches more
        than the buffer holds, so at its next fetch the buffers of every partition
        with records were still full (the records in hand kept them so): faust then
        asked for the other partitions only (none: slept 1 s; an idle one: the fetch
        waited out its 1 s), while the agent ran dry. That was four stalls of about
        a second in a 14 s drain of the benchmark's log. Here a fetch with no
        partition to ask for waits for a buffer to drain (``on_buffer_drop``), and
        one that leaves full partitions out waits ``BUFFERED_POLL`` at most."""
        if self._buffered_partitions and self.flow_active and not self.app.client_only:
            if not self._get_active_partitions():
                if self._buffer_dropped is None:
                    self._buffer_dropped = Event()
                self._buffer_dropped.clear()
                self.buffer_waits += 1
                await self.wait_for_stopped(self._buffer_dropped, timeout=timeout)
                if not self._get_active_partitions():
                    return {}, set()  # still full (or stopping): faust's empty answer
            if self._buffered_partitions:
                timeout = min(timeout, BUFFERED_POLL)
        result: tuple[Any, Any] = await super()._wait_next_records(timeout)
        return result

    def on_handed_out(self, hook: Callable[[], None]) -> Callable[[], None]:
        """Call ``hook`` each time every record of a fetch has been put on the agents'
        channels (the consumer has nothing more in hand); returns the unregistering
        function. :meth:`stream._take.PacedStream.take_paced` starts its next batch
        then, rather than waiting out its window."""
        self._handed_out = (*self._handed_out, hook)

        def remove() -> None:
            self._handed_out = tuple(h for h in self._handed_out if h is not hook)

        return remove

    def _new_consumer_thread(self) -> Any:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: ServiceT) -> None:  # pragma: no cover
        """faust 0.15.3's loop that hands fetched records to the agents, with one
        change: faust awaits each record's delivery through ``wait_first`` (four tasks
        and several turns of the event loop per record, about a sixth of a worker's
        CPU). Here the delivery is stepped inline; only one that blocks (flow control,
        a full stream buffer) is finished under ``wait_first`` as in faust, so a
        rebalance or a stop still cuts it short."""
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        set_flag, unset_flag = self.diag.set_flag, self.diag.unset_flag
        acks_enabled_for = self.app.topics.acks_enabled_for
        commit_every = self._commit_every
        yield_every, since_yield = 100, 0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                records = cast(AsyncIterator[Any], getmany(timeout=1.0))
                await self.sleep(0)  # getmany may not give the loop a turn
                if self.should_stop:
                    continue
                handed = 0
                async for tp, message in records:
                    since_yield += 1
                    if since_yield > yield_every:
                        await asyncio.sleep(0)
                        since_yield = 0
                    offset = message.offset
                    read = get_read_offset(tp)
                    if read is not None and offset < read:
                        continue  # read before (faust logs these at dev level only)
                    if read and offset - read > 1 and acks_enabled_for(message.topic):
                        await self._add_gap(tp, read + 1, offset)
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    delivery = callback(message)
                    handed += 1
                    if not isinstance(delivery, Coroutine):
                        await self.wait_first(delivery, self.suspend_flow.wait())
                    else:
                        try:
                            pending = delivery.send(None)
                        except StopIteration:
                            pass  # delivered without waiting: the usual case
                        else:
                            await self.wait_first(
                                _Resumed(delivery, pending), self.suspend_flow.wait()
                            )
                    set_read_offset(tp, offset)
                if handed:
                    for hook in self._handed_out:
                        hook()
                unset_flag(CONSUMER_FETCHING)
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
            unset_flag(CONSUMER_FETCHING)

    async def _add_gap(self, tp: Any, offset_from: int, offset_to: int) -> None:
        """faust counts a jump in the offsets it reads as acknowledged (for compacted
        topics and transaction markers). On a source topic the jump is records it
        left out (a batch fetched before a seek): counted as acknowledged, they could
        be committed unprocessed. The worker's offset guard reads such records and
        acknowledges them itself, after their states are written (stream._offsets)."""
        return None


class Transport(_faust_aiokafka.Transport):
    Consumer = _Consumer


TRANSPORTS.aliases[SCHEME] = "stream._transport:Transport"


def set_fetch_wait(ms: int) -> None:
    """The fetch wait of consumers created from now on in this process."""
    global FETCH_MAX_WAIT_MS
    FETCH_MAX_WAIT_MS = ms
