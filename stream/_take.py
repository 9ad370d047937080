"""Micro-batches paced from the start of the last batch, not from its end.

faust's ``Stream.take_events(max_, within)`` waits ``within`` after each batch is
processed before it hands out the next: a record that arrives while a batch is being
processed waits for that batch, then a whole ``within`` more. At a steady rate the
cycle is ``within`` + processing, and the processing time lands on every record's
latency twice (the batch before it, then its own).

:meth:`PacedStream.take_paced` hands out the next batch ``within`` after the previous
one was handed out, and at least ``floor`` after that one was processed (so the records
queued meanwhile reach the buffer), or at once when ``max_`` records are buffered. After a full batch (the worker
is behind) it gathers the next full batch as faust does, waiting ``within`` at most.
An idle stream waits for its first record, then ``floor``: a lone event is not held
for a window. Acknowledgement, the buffer's bound and stopping are faust's, unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any, cast

import faust
from faust.types import ChannelT
from mode.utils.futures import notify
from mode.utils.locks import Event

__all__ = ["PacedStream"]


class PacedStream(faust.Stream[Any]):
    def take_paced(
        self, max_: int, within: float, floor: float | None = None
    ) -> AsyncGenerator[list[Any], None]:
        """Batches of at most ``max_`` events, ``within`` seconds apart at most (see the
        module docstring); ``floor`` defaults to a tenth of ``within``."""
        if within <= 0:
            raise ValueError(f"within must be > 0 seconds, got {within!r}")
        agen = self._take_paced(max_, within, within / 10 if floor is None else floor)
        self._active_agens.add(agen)  # closed when the stream stops (faust's take does so)
        return agen

    async def _take_paced(
        self, max_: int, within: float, floor: float
    ) -> AsyncGenerator[list[Any], None]:
        loop = self.loop
        events: list[Any] = []
        full, consumed, arrived = Event(), Event(), Event()
        gate: asyncio.Future[Any] | None = None  # closed while a batch is out
        enable_acks = self.enable_acks

        async def add_to_buffer(value: Any) -> Any:
            nonlocal gate
            try:
                if gate is not None:
                    try:
                        await gate
                    finally:
                        gate = None
                event = self.current_event
                if event is None:
                    raise RuntimeError("Take buffer found current_event is None")
                events.append(event)
                arrived.set()
                if len(events) >= max_:
                    full.set()
                    consumed.clear()
                    await self.wait(consumed)  # never more than max_ in one batch
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.exception("Error adding to take buffer: %r", exc)
                await self.crash(exc)
            return value

        self.enable_acks = False  # events are acknowledged once their batch is done
        self.add_processor(add_to_buffer)
        self._enable_passive(cast(ChannelT[Any], self.channel.__aiter__()))  # as faust's take
        due: float | None = loop.time()  # None: the last batch was full
        try:
            while not self.should_stop:
                if due is None:
                    await self.wait_for_stopped(full, timeout=within)
                else:
                    if not events and loop.time() >= due:
                        await self.wait_for_stopped(arrived)  # idle until a record comes
                    await self.wait_for_stopped(full, timeout=max(due - loop.time(), floor))
                if not events:
                    due = loop.time()
                    continue
                began = loop.time()
                batch = list(events)
                gate = loop.create_future()
                opened = gate
                try:
                    yield batch
                finally:
                    events.clear()
                    for event in batch:
                        await self.ack(event)
                    notify(opened)
                    full.clear()
                    arrived.clear()
                    consumed.set()
                due = None if len(batch) >= max_ else began + within
        finally:
            self.enable_acks = enable_acks
            self._processors.remove(add_to_buffer)
