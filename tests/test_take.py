"""The worker's micro-batching (stream._take) and its inline record delivery
(stream._transport): faust's in-memory channels, no broker."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import pytest

from stream._take import PacedStream
from stream._transport import BUFFERED_POLL, _Resumed

Feed = Callable[[Any], Awaitable[None]]


def _batches(
    feed: Feed,
    total: int,
    max_: int,
    within: float,
    work: float = 0.0,
    hog: float = 0.0,
    hooks: list[Callable[[], None]] | None = None,
) -> list[tuple[float, list[int]]]:
    """(seconds since the feed began, values) of each batch ``take_paced`` hands out
    until ``total`` values are seen; each batch holds the agent ``work`` seconds. With
    ``hog``, another task holds the loop that long in each of its turns. With ``hooks``,
    the consumer takes hand-out hooks as the worker's transport does, into that list."""

    async def main() -> list[tuple[float, list[int]]]:
        app = faust.App(f"take-{uuid.uuid4().hex}", Stream=PacedStream)  # never started
        seen: list[tuple[float, list[int]]] = []
        done = asyncio.Event()
        if hooks is not None:

            def on_handed_out(hook: Callable[[], None]) -> Callable[[], None]:
                hooks.append(hook)
                return lambda: hooks.remove(hook)

            app.consumer.on_handed_out = on_handed_out

        async def hogging() -> None:
            while not done.is_set():
                time.sleep(hog)  # holding the loop is the point
                await asyncio.sleep(0)

        @app.agent(app.channel())  # type: ignore[untyped-decorator]
        async def agent(stream: Any) -> None:
            async for batch in stream.take_paced(max_, within=within):
                seen.append((time.monotonic() - began, [e.value for e in batch]))
                if sum(len(b) for _, b in seen) >= total:
                    done.set()
                await asyncio.sleep(work)

        async with agent.test_context() as ctx:
            began = time.monotonic()
            hogger = asyncio.ensure_future(hogging()) if hog else None
            await feed(ctx)
            await asyncio.wait_for(done.wait(), timeout=60)
            if hogger is not None:
                await hogger
        # the stream made the app's consumer, whose thread (never started) owns a loop
        app.consumer._thread.thread_loop.close()
        return seen

    return asyncio.run(main())


def _put(values: range, every: float = 0.0) -> Feed:
    async def feed(ctx: Any) -> None:
        for value in values:
            await ctx.put(value, wait=False)
            if every:
                await asyncio.sleep(every)

    return feed


def test_full_batches_go_at_once_and_never_exceed_the_maximum() -> None:
    seen = _batches(_put(range(23)), total=23, max_=5, within=3.0)
    assert [v for _, batch in seen for v in batch] == list(range(23))  # each once, in order
    assert max(len(batch) for _, batch in seen) == 5
    # the full batches did not wait for the window (faust's take does not either)
    assert all(at < 1.5 for at, batch in seen if len(batch) == 5)


def test_a_lone_event_is_not_held_for_the_window() -> None:
    async def idle_then_one(ctx: Any) -> None:
        await asyncio.sleep(0.3)
        await ctx.put(7, wait=False)

    seen = _batches(idle_then_one, total=1, max_=100, within=10.0)
    assert [batch for _, batch in seen] == [[7]]
    # faust's take_events holds it for the whole window (10 s); here a tenth of it
    assert seen[0][0] < 5.0


def test_batches_are_paced_from_the_start_of_the_last_one() -> None:
    """Each batch keeps the agent 0.6 s; the window is 1 s. faust's take waits the window
    after each batch (1.6 s apart); paced, they are one window apart."""
    seen = _batches(_put(range(100), every=0.05), total=100, max_=10_000, within=1.0, work=0.6)
    assert [v for _, batch in seen for v in batch] == list(range(100))
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(seen)]
    assert len(gaps) >= 3
    assert statistics.median(gaps) < 1.3, gaps


def test_a_busy_loop_leaves_no_queued_event_out_of_the_next_batch() -> None:
    """Another task holds the loop 20 ms in each of its turns (in the worker: a flush,
    a batch of another agent). faust's stream moves one queued event into the buffer
    per turn of the loop, about 50 a second here; every queued event joins the next
    batch."""
    seen = _batches(_put(range(300)), total=300, max_=10_000, within=0.5, hog=0.02)
    assert [v for _, batch in seen for v in batch] == list(range(300))
    assert len(seen) <= 2, [len(batch) for _, batch in seen]


def test_a_batch_goes_when_the_consumer_has_handed_out_all_it_fetched() -> None:
    """The worker's transport calls the hook once every record of a fetch is handed
    out: the next batch goes then, not a window (here 10 s) after the last one."""
    hooks: list[Callable[[], None]] = []

    async def one_then_a_fetch(ctx: Any) -> None:
        await ctx.put(0, wait=False)
        await asyncio.sleep(2.0)  # the first batch (a lone event: a tenth of 10 s) is done
        for value in range(1, 11):
            await ctx.put(value, wait=False)
        for hook in hooks:
            hook()

    seen = _batches(one_then_a_fetch, total=11, max_=100, within=10.0, hooks=hooks)
    assert [batch for _, batch in seen] == [[0], list(range(1, 11))]
    assert seen[1][0] < 3.0, seen
    assert hooks == []  # unhooked when the stream stopped


def test_a_resumed_delivery_finishes_where_it_stopped() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        gate: asyncio.Future[int] = loop.create_future()

        async def deliver() -> int:
            return await gate + 1

        coro = deliver()
        pending = coro.send(None)  # stepped once inline: it waits for the gate
        assert pending is gate
        task = asyncio.ensure_future(_Resumed(coro, pending))
        await asyncio.sleep(0)
        assert not task.done()
        gate.set_result(41)
        assert await task == 42

    asyncio.run(main())


def test_a_resumed_delivery_is_cancelled_and_fails_as_itself() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        seen: list[str] = []

        async def deliver(gate: asyncio.Future[int]) -> int:
            try:
                return await gate
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise

        gate: asyncio.Future[int] = loop.create_future()
        coro = deliver(gate)
        task = asyncio.ensure_future(_Resumed(coro, coro.send(None)))
        await asyncio.sleep(0)
        task.cancel()  # what wait_first does when the flow is suspended
        with pytest.raises(asyncio.CancelledError):
            await task
        assert seen == ["cancelled"]

        failing: asyncio.Future[int] = loop.create_future()
        coro = deliver(failing)
        task = asyncio.ensure_future(_Resumed(coro, coro.send(None)))
        failing.set_exception(ValueError("bad record"))
        with pytest.raises(ValueError, match="bad record"):
            await task

    asyncio.run(main())


def test_events_read_before_a_rebalance_are_left_out_of_the_batch() -> None:
    """A rebalance while events wait for the next batch: they are acknowledged and left
    out, as faust's iteration skips events of an older generation (the consumer reads
    them again from the committed offset); the events read since go on."""

    async def rebalance_while_waiting(ctx: Any) -> None:
        await ctx.put(0, wait=False)
        await asyncio.sleep(0.5)  # the first batch is out (the agent holds it 1 s)
        for value in range(1, 6):
            await ctx.put(value, wait=False)
        await asyncio.sleep(0.1)
        ctx.app.consumer_generation_id += 1
        for value in range(6, 9):
            await ctx.put(value, wait=False)

    seen = _batches(rebalance_while_waiting, total=4, max_=100, within=1.0, work=1.0)
    assert [batch for _, batch in seen] == [[0], [6, 7, 8]]


def test_events_buffered_when_the_batching_stopped_go_to_the_next() -> None:
    """faust restarts a crashed agent on the same stream, which takes again: the events
    that were waiting for the next batch are its first batch, none lost, none twice."""

    async def main() -> list[list[int]]:
        app = faust.App(f"take-{uuid.uuid4().hex}", Stream=PacedStream)  # never started
        seen: list[list[int]] = []
        done = asyncio.Event()

        @app.agent(app.channel())  # type: ignore[untyped-decorator]
        async def agent(stream: Any) -> None:
            first = stream.take_paced(100, within=0.2)
            seen.append([e.value for e in await first.__anext__()])
            await asyncio.sleep(0.5)  # events arrive meanwhile
            await first.aclose()  # as when the agent raises out of its loop
            async for batch in stream.take_paced(100, within=0.2):
                seen.append([e.value for e in batch])
                if sum(map(len, seen)) >= 11:
                    done.set()

        async with agent.test_context() as ctx:
            await ctx.put(0, wait=False)
            await asyncio.sleep(0.2)
            for value in range(1, 11):
                await ctx.put(value, wait=False)
            await asyncio.wait_for(done.wait(), timeout=30)
        app.consumer._thread.thread_loop.close()
        return seen

    seen = asyncio.run(main())
    assert seen[0] == [0]
    assert [v for batch in seen[1:] for v in batch] == list(range(1, 11))


def test_a_stream_that_is_not_on_a_channel_is_refused() -> None:
    app = faust.App(f"take-{uuid.uuid4().hex}", Stream=PacedStream)
    stream = app.stream([1, 2, 3])
    with pytest.raises(TypeError, match="channel or a topic"):
        stream.take_paced(10, within=0.1)
    with pytest.raises(ValueError, match="within must be > 0"):
        app.stream(app.channel()).take_paced(10, within=0)


def _consumer_with_full_buffers(full: int, idle: int) -> tuple[Any, list[Any], list[Any]]:
    """The worker's consumer (no broker: its fetch is recorded) with ``full``
    partitions of ``bank.events`` whose stream buffers are full, and ``idle``
    partitions of another topic."""
    from faust.types import TP

    app = faust.App(f"buffers-{uuid.uuid4().hex}", broker="churnkafka://127.0.0.1:1")
    consumer = app.consumer
    busy = [TP("bank.events", p) for p in range(full)]
    other = [TP("manager.actions", p) for p in range(idle)]
    consumer._set_active_tps({*busy, *other})  # what faust does on an assignment
    fetches: list[tuple[set[Any], float]] = []

    async def fetch(active_partitions: set[Any], timeout: float) -> dict[Any, Any]:
        fetches.append((set(active_partitions), timeout))
        return {}

    consumer._getmany = fetch
    for tp in busy:
        consumer.on_buffer_full(tp)
    return consumer, busy, fetches


def test_a_fetch_beside_full_buffers_comes_back_soon() -> None:
    """Partitions left out for their full stream buffers: the fetch of the others
    waits ``BUFFERED_POLL`` at most (faust: the whole timeout, a second in which the
    full buffers drain and the agent runs dry), and once they have drained, the next
    fetch asks for them again with faust's timeout."""

    async def main() -> None:
        consumer, busy, fetches = _consumer_with_full_buffers(full=8, idle=1)
        await consumer._wait_next_records(1.0)
        assert fetches[-1][0].isdisjoint(busy)
        assert fetches[-1][1] == BUFFERED_POLL < 1.0
        for tp in busy:
            consumer.on_buffer_drop(tp)
        await consumer._wait_next_records(1.0)
        assert fetches[-1] == ({*busy, *fetches[0][0]}, 1.0)
        consumer._thread.thread_loop.close()  # its thread (never started) owns a loop

    asyncio.run(main())


def test_a_fetch_with_every_buffer_full_waits_for_one_to_drain() -> None:
    """Every assigned partition's buffer full: no fetch until one drains (faust
    sleeps a whole second), then a fetch of the drained partition; with none drained
    in ``timeout``, faust's empty answer and no fetch."""

    async def main() -> None:
        consumer, busy, fetches = _consumer_with_full_buffers(full=3, idle=0)
        assert await consumer._wait_next_records(0.05) == ({}, set())
        assert fetches == []
        waiting = asyncio.ensure_future(consumer._wait_next_records(30.0))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        assert fetches == []
        consumer.on_buffer_drop(busy[1])
        await asyncio.wait_for(waiting, timeout=5)
        assert fetches == [({busy[1]}, BUFFERED_POLL)]  # the other two are still full
        assert consumer.buffer_waits == 2
        consumer._thread.thread_loop.close()

    asyncio.run(main())
