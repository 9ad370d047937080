"""Micro-batches that take all that has been fetched, as soon as it has been handed out.

faust's ``Stream.take_events(max_, within)`` puts three waits on every record:

- it waits ``within`` after each batch is processed before it hands out the next, so
  a record that arrives during a batch waits for that batch, then a whole window;
- its buffer is fed by the stream's iteration, one event per turn of the event loop:
  while other tasks hold the loop (a flush, scoring), the records already fetched
  trickle in, and the next batches take a few of them each (at 2,264 records/s the
  worker's batches fell to 3-16 records while the flush ran, their oldest record
  250 ms old);
- it feeds no buffer while a batch is out.

:meth:`PacedStream.take_paced`:

- feeds its buffer with every event queued on the stream's channel in one turn (the
  processors, if any, being synchronous), doing faust's per-event work of
  ``Stream.__aiter__`` (events read before a rebalance are skipped and acknowledged,
  messages tracked for the commit, sensors told, processors run), and goes on feeding
  a new buffer while a batch is out;
- hands out the next batch when the consumer has put every record it fetched on the
  agents' channels (the worker's transport calls a hook: ``stream._transport``), but
  not sooner than ``floor`` after the last batch ended; at once when ``max_`` events
  are buffered; and otherwise ``within`` after the last batch began (or ``floor``
  after it ended, if that is later);
- after a full batch (the worker is behind) gathers the next full batch as faust does,
  waiting ``within`` at most; an idle stream waits for its first record, then
  ``floor`` at most.

Events are acknowledged once their batch is done, and stopping is faust's. While a
batch is out at most ``max_`` more events wait in the buffer; those still buffered
when the agent stops iterating (it crashed and faust restarts it on the same stream)
are handed out first by its next ``take_paced``. A batch leaves out, and acknowledges,
the events read before a rebalance that came while they waited, as faust skips them.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncGenerator
from typing import Any, cast

import faust
from faust.exceptions import Skip
from faust.streams import _current_event
from faust.types import ChannelT, EventT
from mode.utils.futures import maybe_async
from mode.utils.locks import Event

__all__ = ["PacedStream"]


class PacedStream(faust.Stream[Any]):
    _paced_leftover: list[Any] | None = None  # buffered, not handed out: see the docstring

    def take_paced(
        self, max_: int, within: float, floor: float | None = None
    ) -> AsyncGenerator[list[Any], None]:
        """Batches of at most ``max_`` events, ``within`` seconds apart at most (see the
        module docstring); ``floor`` defaults to a tenth of ``within``."""
        if within <= 0:
            raise ValueError(f"within must be > 0 seconds, got {within!r}")
        if not isinstance(self.channel, ChannelT):
            raise TypeError(f"take_paced reads a channel or a topic, not {self.channel!r}")
        agen = self._take_paced(max_, within, within / 10 if floor is None else floor)
        self._active_agens.add(agen)  # closed when the stream stops (faust's take does so)
        return agen

    async def _take_paced(
        self, max_: int, within: float, floor: float
    ) -> AsyncGenerator[list[Any], None]:
        loop = self.loop
        events: list[Any] = self._paced_leftover or []
        self._paced_leftover = None
        full, consumed, arrived = Event(), Event(), Event()
        ready = Event()  # max_ buffered, or the consumer has handed out all it fetched

        async def fill() -> None:
            """faust's per-event path of ``Stream.__aiter__`` (skip events of an old
            generation, track the message, tell the sensors, run the processors), for
            every event queued on the channel in one turn of the loop: faust takes one
            per turn, so a busy loop (a flush, a long batch) left most of what had been
            fetched out of the next batch."""
            app = self.app
            channel = cast(Any, self.channel)
            queue = channel.queue
            processors = self._processors
            track = app.consumer.unacked.add
            acking_topics = app.topics.acking_topics
            flow_active = app.flow_control.is_active
            on_message_in, on_event_in = self._on_message_in, self._on_stream_event_in
            try:
                while not self.should_stop:
                    event = await channel.__anext__()  # the first; the rest without waiting
                    while True:
                        if not isinstance(event, EventT):
                            raise RuntimeError(f"take_paced takes events, got {event!r}")
                        message = event.message
                        if not flow_active() or message.generation_id != app.consumer_generation_id:
                            await self.ack(event)  # read before a rebalance: read again
                        else:
                            if message.topic in acking_topics and not message.tracked:
                                message.tracked = True
                                track(message)
                                on_message_in(message.tp, message.offset, message)
                            on_event_in(message.tp, message.offset, self, event)
                            _current_event.set(weakref.ref(event))
                            self.current_event = event
                            try:
                                value = event.value
                                for processor in processors:
                                    value = await maybe_async(processor(value))
                            except Skip:
                                await self.ack(event)
                            else:
                                self.events_total += 1
                                events.append(event)
                                arrived.set()
                                if len(events) >= max_:
                                    full.set()
                                    ready.set()
                                    consumed.clear()
                                    # until taken: never more than max_
                                    if (await self.wait(consumed)).stopped:
                                        return
                        if queue.empty():
                            break
                        event = queue.get_nowait()
                    self.current_event = None
            except StopAsyncIteration:  # the channel has ended: so does the batching
                for waited in (arrived, ready, full):
                    waited.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.exception("Error adding to take buffer: %r", exc)
                await self.crash(exc)

        self._finalized = True
        started = await self.maybe_start()
        filler = loop.create_task(fill())
        # the worker's transport says when it has handed out all it fetched (stream._transport)
        on_handed_out = getattr(self.app.consumer, "on_handed_out", None)
        unhook = on_handed_out(ready.set) if on_handed_out is not None else None
        due: float | None = loop.time()  # None: the last batch was full
        ended = loop.time()  # when the last batch was done
        try:
            while not self.should_stop:
                if due is None:
                    await self.wait_for_stopped(full, timeout=within)
                else:
                    if not events and loop.time() >= due:
                        await self.wait_for_stopped(arrived)  # idle until a record comes
                    await self.wait_for_stopped(ready, timeout=max(due - loop.time(), floor))
                    if not full.is_set() and loop.time() < ended + floor:
                        await self.wait_for_stopped(full, timeout=ended + floor - loop.time())
                if not events:
                    if filler.done():
                        return  # the channel has ended, or the stream crashed
                    due = loop.time()
                    ready.clear()  # a hand-out to other agents
                    continue
                began = loop.time()
                # records go on arriving into a new buffer while this batch is out
                batch, events = events, []
                full.clear()
                ready.clear()
                arrived.clear()
                consumed.set()  # a filler held by the full buffer goes on into the new one
                batch = await self._skip_stale(batch)
                if not batch:
                    continue
                try:
                    yield batch
                finally:
                    for event in batch:
                        await self.ack(event)
                ended = loop.time()
                due = None if len(batch) >= max_ else began + within
        finally:
            filler.cancel()
            self._paced_leftover = events or None
            if unhook is not None:
                unhook()
            self._channel_stop_iteration(self.channel)
            if started:  # as faust's iteration: a stream it started, it stops
                await self.stop()
                self.service_reset()

    async def _skip_stale(self, batch: list[Any]) -> list[Any]:
        """The batch without the events read before a rebalance (or while one is under
        way) that came since they were buffered: acknowledged and left out, as faust's
        iteration skips them; the consumer reads them again from the committed offset."""
        app = self.app
        generation = app.consumer_generation_id
        active = app.flow_control.is_active()
        if active and all(event.message.generation_id == generation for event in batch):
            return batch
        kept = []
        for event in batch:
            if active and event.message.generation_id == generation:
                kept.append(event)
            else:
                await self.ack(event)
        return kept
