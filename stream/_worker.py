"""The faust worker: bank events in; state, scores, alerts and dead letters out.

Per micro-batch (``PacedStream.take_paced``, stream._take):

1. each record is decoded and validated; a bad one goes to the dead-letter topic
   with its reason, the original bytes and its topic/partition/offset;
2. the event is folded into its customer's state (idempotent: a redelivered event
   is recognised and changes nothing);
3. each touched customer's state is kept as pending (:class:`WriteBehind`) and written
   to the changelog-backed table once per ``flush_seconds``, however many batches
   touched it; the batch's offsets are acknowledged only after that write;
4. with a champion model, each touched customer is scored once at the time of its
   newest event, the score goes to ``customer.scores`` and to the alert policy
   (:mod:`serving._policy`, a YAML file), whose alerts, with their reasons and a
   suggested action, go to ``manager.alerts``; what the rules remember about each
   customer (recent scores, last stage, cooldowns) is a second changelog-backed
   table, ``alert-memory``, so it survives crashes and rebuilds from the log;
   a worker that is behind (``catchup_seconds``) scores each customer once per flush
   instead, at its newest event, before its state is written, and flushes every
   ``catchup_flush_seconds``.

Records with the header ``churn-backfill: 1`` (``churn replay --backfill``) are
folded but not scored: bootstrapping state from history raises no stale alerts.

Offsets are acknowledged only after the states they changed are written, so a crash
replays at most what was pending, which the idempotent fold absorbs. Records the
consumer leaves out around a rebalance are read directly (:mod:`stream._offsets`). Every record is
counted: consumed = applied + duplicates + dead-lettered (malformed, wrong key, or
older than the longest window: ``too_late``).
"""

from __future__ import annotations

import asyncio
import base64
import gc
import logging
import time
import weakref
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from features import FOLD_COMPILED, CustomerState, InvalidEventError, fold_event, to_bytes_many
from features.events import ManagerReassigned, decode
from monitoring import (
    CONTENT_TYPE,
    LATENCY_BUCKETS,
    PROBABILITY_BUCKETS,
    STATE_BUCKETS,
    VALUE_BUCKETS,
    BatchHistogram,
    DriftWindow,
    WorkerCollector,
    WorkerView,
    exposition,
    registry_of,
)
from serving import LiveModel, RulePolicy, champion_version, load_live_model, score_batch
from serving._policy import AlertMemory, load_policy
from stream._offsets import DirectEvent, Gap, OffsetGuard, ack_held, hold, mark_acked
from stream._take import PacedStream

__all__ = ["BACKFILL_HEADER", "Runtime", "WorkerConfig", "build_app", "run_worker"]

logger = logging.getLogger(__name__)

BACKFILL_HEADER = "churn-backfill"
SCORE_COLUMNS = ("churn_probability", "predicted_value_minor")


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    broker_url: str = "kafka://127.0.0.1:9092"
    app_id: str = "churn-engine"
    store: str = "memory://"
    partitions: int = 8
    events_topic: str = "bank.events"
    dlq_topic: str = "bank.events.dlq"
    scores_topic: str = "customer.scores"
    alerts_topic: str = "manager.alerts"
    actions_topic: str = "manager.actions"
    tracking_uri: str = ""
    model_name: str = "churn-engine"
    model_alias: str = "champion"
    model_poll_seconds: float = 30.0
    batch_size: int = 500
    batch_within: float = 0.05
    fetch_wait_ms: int = 50  # longest wait of a fetch (see stream._transport)
    cache_size: int = 5_000  # decoded customer states kept in memory
    # changed states written this often (see WriteBehind); 0: every micro-batch
    flush_seconds: float = 1.0
    flush_max: int = 20_000  # ... or when this many customers have changed
    # events older than this when read: behind, scored once per flush (see WriteBehind)
    catchup_seconds: float = 2.0
    # ... and flushed (so scored) this often while behind (never more often than above)
    catchup_flush_seconds: float = 3.0
    alert_policy: str = ""  # a YAML file; empty: the default policy
    web_port: int = 6066
    data_dir: str = "data/worker"
    monitoring: bool = True  # histograms and drift (off only to measure their cost)
    drift_window_days: float = 7.0  # event time covered by the drift window

    def flush_interval(self, behind: bool) -> float:
        """How long changed states wait to be written: ``flush_seconds``, or while the
        worker is behind, ``catchup_flush_seconds`` if that is longer (with
        ``flush_seconds`` 0, every micro-batch writes its own)."""
        if behind and self.flush_seconds > 0:
            return max(self.flush_seconds, self.catchup_flush_seconds)
        return self.flush_seconds


@dataclass
class WriteBehind:
    """What changed since the last flush, and the acknowledgements that wait for it.

    Kafka Streams' record cache, for this worker: a customer touched by several
    micro-batches within ``flush_seconds`` is serialised and written to the table and
    its changelog once, not once per batch. The offsets of the events behind those
    changes are acknowledged only after the flush, so faust never commits past a change
    that is not in the changelog yet: a crash replays them (the idempotent fold absorbs
    what was already written). A rebalance discards what is pending, unacknowledged,
    and the events are read again from the committed offsets.

    A worker that is behind (its events older than ``catchup_seconds`` when read)
    scores the same way: the customers its batches touch wait in ``due`` and are scored
    once, at their newest event, just before the flush writes their states, so an
    event's score still goes out before its offset is committed. Its flushes then come
    every ``catchup_flush_seconds`` (3 s): a backlog's customers are scored and written
    a third as often, and a crash while catching up replays up to 3 s of events, not 1.
    """

    states: dict[bytes, tuple[CustomerState, Any]] = field(default_factory=dict)
    due: dict[bytes, tuple[CustomerState, Any]] = field(default_factory=dict)  # to score
    memories: dict[bytes, tuple[AlertMemory, Any]] = field(default_factory=dict)
    held: list[Any] = field(default_factory=list)  # faust messages, acknowledged at the flush
    held_gaps: list[tuple[Any, Any]] = field(default_factory=list)  # (tp, offsets) read directly
    since: float | None = None  # monotonic time of the oldest pending change
    generation: Any = None

    def pending(self) -> bool:
        return bool(self.states or self.due or self.memories or self.held or self.held_gaps)

    def take(self) -> WriteBehind:
        """What is pending, moved to a new object (to be written); nothing left here
        but ``due``, which the flush scores before it takes (customers still waiting
        stay to be scored, never carried off unscored)."""
        taken = WriteBehind(
            dict(self.states),
            {},
            dict(self.memories),
            list(self.held),
            list(self.held_gaps),
            self.since,
            self.generation,
        )
        due = dict(self.due)
        self.clear()
        self.due.update(due)
        return taken

    def clear(self) -> None:
        """Nothing pending (after a flush, or dropped by a rebalance)."""
        self.states.clear()
        self.due.clear()
        self.memories.clear()
        self.held.clear()
        self.held_gaps.clear()
        self.since = None


@dataclass
class Runtime:
    """What one worker process holds besides the table: model, counters, caches."""

    config: WorkerConfig
    policy: RulePolicy
    model: LiveModel | None = None
    counts: Counter[str] = field(default_factory=Counter)
    dead: Counter[str] = field(default_factory=Counter)
    # decoded states of recently seen customers (least recently used dropped first):
    # saves decoding a state for a customer seen again soon; bounded by ``cache_size``
    cache: OrderedDict[bytes, tuple[bytes, CustomerState]] = field(default_factory=OrderedDict)
    started: float = field(default_factory=time.monotonic)
    reloads: int = 0
    warned_no_model: bool = False
    reload_failures: int = 0
    batches: deque[tuple[int, float, float]] = field(default_factory=lambda: deque(maxlen=1000))
    model_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    refresh_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    first_check: asyncio.Event = field(default_factory=asyncio.Event)  # registry asked once
    alerts_by_rule: Counter[tuple[str, str]] = field(default_factory=Counter)
    drift: DriftWindow | None = None  # of the model in use (its reference)
    last_event_us: int | None = None
    last_processed: float | None = None  # wall clock, seconds
    first_batch: float | None = None  # wall clock when the first micro-batch began
    flush_began: float | None = None  # wall clock when the last write-behind flush began
    last_flushed: float | None = None  # wall clock when the last write-behind flush ended
    guard: OffsetGuard | None = None
    pending: WriteBehind = field(default_factory=WriteBehind)
    flushing: WriteBehind | None = None  # taken from ``pending``, being written
    behind: bool = False  # the last batch's events were older than ``catchup_seconds``
    flushes: int = 0
    discarded: int = 0  # pending flushes dropped by a rebalance
    hist: dict[str, tuple[str, BatchHistogram]] = field(
        default_factory=lambda: {
            "churn_batch_processing_seconds": (
                "Time to process one micro-batch (fold, store, score, alert)",
                BatchHistogram(LATENCY_BUCKETS),
            ),
            "churn_event_latency_seconds": (
                "From produce (record timestamp) to the end of its batch",
                BatchHistogram(LATENCY_BUCKETS),
            ),
            "churn_scoring_seconds": (
                "Time to score the customers of one micro-batch and evaluate their alerts",
                BatchHistogram(LATENCY_BUCKETS),
            ),
            "churn_score_churn_probability": (
                "Emitted churn probabilities",
                BatchHistogram(PROBABILITY_BUCKETS),
            ),
            "churn_score_predicted_value_minor": (
                "Emitted predicted 12-month values (minor units)",
                BatchHistogram(VALUE_BUCKETS),
            ),
            "churn_state_bytes": (
                "Size of each customer state written",
                BatchHistogram(STATE_BUCKETS),
            ),
        }
    )

    def observe(self, name: str, values: Any) -> None:
        if self.config.monitoring:
            self.hist[name][1].observe_many(values)

    def drift_rows(self) -> tuple[list[tuple[str, str, float, float]], int, int]:
        window = self.drift
        if window is None:
            return [], 0, 0
        rows = [
            (d.column, "score" if d.column in SCORE_COLUMNS else "feature", d.psi, d.ks)
            for d in window.drift()
        ]
        return rows, window.n, window.too_old

    def stats(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "dead_lettered": dict(self.dead),
            "model_version": self.model.version if self.model else None,
            "fold": "compiled" if FOLD_COMPILED else "python",
            "reloads": self.reloads,
            "reload_failures": self.reload_failures,
            "flushes": self.flushes,
            "pending_dropped_by_rebalance": self.discarded,
            "alerts_suppressed": dict(self.policy.suppressed),
            "uptime_seconds": round(time.monotonic() - self.started, 1),
            "batches": self.batch_summary(),
            # wall clock (s): the span of the worker's work, for throughput benchmarks
            "work": {
                "first_batch": self.first_batch,
                "last_batch": self.last_processed,
                "flush_began": self.flush_began,
                "last_flush": self.last_flushed,
            },
        }

    def batch_summary(self) -> dict[str, float]:
        """The last 1,000 micro-batches: size, the age of their oldest record when
        taken (wait in the broker and the consumer), and the time to process them."""
        if not self.batches:
            return {}
        sizes, waits, took = (np.array(x, np.float64) for x in zip(*self.batches, strict=True))
        return {
            "n": float(len(sizes)),
            "size_p50": float(np.median(sizes)),
            "wait_ms_p50": round(float(np.percentile(waits, 50)), 1),
            "wait_ms_p99": round(float(np.percentile(waits, 99)), 1),
            "process_ms_p50": round(float(np.percentile(took, 50)), 1),
            "process_ms_p99": round(float(np.percentile(took, 99)), 1),
        }

    def state_for(self, key: bytes, stored: bytes | None, customer_id: str) -> CustomerState:
        """The customer's state: the cached object if the table still holds its bytes."""
        if stored is None:
            return CustomerState(customer_id)
        hit = self.cache.get(key)
        if hit is not None and hit[0] is stored:
            return hit[1]
        return CustomerState.from_bytes(stored)

    def remember(self, key: bytes, blob: bytes, state: CustomerState) -> None:
        cache = self.cache
        cache[key] = (blob, state)
        cache.move_to_end(key)
        while len(cache) > self.config.cache_size:
            cache.popitem(last=False)

    def new_drift_window(self, model: LiveModel) -> DriftWindow | None:
        reference = model.bundle.reference
        if not self.config.monitoring or not reference:
            return None
        columns = [*SCORE_COLUMNS, *model.bundle.features]
        return DriftWindow(reference, columns, window_days=self.config.drift_window_days)

    async def refresh_model(self) -> None:
        """Load the champion if the alias moved (in a thread: the loop keeps going)."""
        if self.refresh_lock.locked():
            return  # a check is already running
        async with self.refresh_lock:
            try:
                await self._refresh()
            finally:
                self.first_check.set()

    async def _refresh(self) -> None:
        cfg = self.config
        if not cfg.tracking_uri:
            return
        try:
            version = await asyncio.to_thread(
                champion_version, cfg.tracking_uri, cfg.model_name, cfg.model_alias
            )
        except Exception:  # registry unreachable: keep the current model
            logger.exception("cannot reach the model registry at %s", cfg.tracking_uri)
            self.reload_failures += 1
            return
        current = self.model.version if self.model else None
        if version is None:
            if current is None and not self.warned_no_model:
                logger.warning(
                    "no %s@%s yet: folding state, emitting no scores",
                    cfg.model_name,
                    cfg.model_alias,
                )
                self.warned_no_model = True
            return
        if version == current:
            return
        try:
            model = await asyncio.to_thread(
                load_live_model, cfg.tracking_uri, cfg.model_name, version
            )
        except Exception:
            logger.exception("cannot load %s version %s", cfg.model_name, version)
            self.reload_failures += 1
            return
        async with self.model_lock:  # swapped between batches, never inside one
            self.model = model
            self.drift = self.new_drift_window(model)
            if current is not None:
                self.reloads += 1
        # the modules and the model just loaded live as long as the process: kept out of
        # the cyclic collector's full passes, which otherwise walk them all (half a
        # million objects, 250 ms with the loop stopped, every few seconds: the p99)
        gc.freeze()
        logger.info("model %s version %s in use (was %s)", cfg.model_name, version, current)


# the cyclic collector's thresholds in a worker: a young collection every 50,000 net
# allocations, not 700. With Python's, a 163k-record drain spent 0.9 s of its 11 s in
# the collector, 0.4 s of it in ten full passes of about 40 ms each (the events held
# until their flush outlive young passes and are promoted, and so many promotions set
# off full passes); with these, 0.3 s and no full pass. A young pass takes about 25 ms.
GC_THRESHOLDS = (50_000, 10, 10)
COMMIT_EVERY = 1 << 62  # records between count-based commits: never (see build_app)
FLUSH_SLICE = 128  # states written between two micro-batches (about 10 ms)


def settle_process() -> None:
    """The worker's process settings, set once its modules are imported (the no-op
    benchmark agent sets the same).

    - What is imported so far is frozen: out of the cyclic collector's full passes.
    - The collector's thresholds are ``GC_THRESHOLDS``.
    - The numeric libraries' thread pools (OpenBLAS, OpenMP) use one thread. A worker
      is one event loop on one core, and scales by partitions and more workers. With
      OpenBLAS's default (a thread per core), each small matrix product of the
      features woke a helper thread that then spun waiting for more work: 8-13 s of
      CPU a minute on a 2-core machine at 2,000 records/s, taken from the loop, the
      broker and the producers (2026-11-25, 13:08-14:10; BENCHMARKS.md). The
      libraries a model loads (LightGBM's OpenMP, scipy's OpenBLAS) are imported
      first, so that their pools are held too; the worker logs the pools once its
      model is loaded (:func:`thread_pools`).
    """
    from threadpoolctl import threadpool_limits

    import training._bundle  # noqa: F401  (the model's libraries: their pools are held too)

    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    threadpool_limits(limits=1)


def thread_pools() -> list[str]:
    """The numeric libraries' thread pools loaded in this process, with their sizes."""
    from threadpoolctl import threadpool_info

    return [
        f"{lib['internal_api']} {Path(lib['filepath']).name}: {lib['num_threads']}"
        for lib in threadpool_info()
    ]


def _log_failure(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("write-behind flush failed", exc_info=task.exception())


def _is_backfill(message: Any) -> bool:
    """Whether the record carries ``churn-backfill: 1`` (no dict of its headers built;
    the worker asks only for records that have headers: live ones have none)."""
    raw = getattr(message, "headers", None)
    if not raw:
        return False
    if isinstance(raw, Mapping):
        return bytes(raw.get(BACKFILL_HEADER) or b"") == b"1"
    return any(str(k) == BACKFILL_HEADER and bytes(v or b"") == b"1" for k, v in raw)


def dead_letter(reason: str, detail: str, raw: bytes, message: Any) -> bytes:
    return orjson.dumps(
        {
            "reason": reason,
            "detail": detail,
            "original_base64": base64.b64encode(raw).decode(),
            "topic": message.topic,
            "partition": message.partition,
            "offset": message.offset,
            "key": (message.key or b"").decode("utf-8", "replace"),
        }
    )


def _assigned(app: Any, topic: str) -> list[Any]:
    """The partitions of ``topic`` assigned to this worker; none while the consumer is
    not started or is mid-rebalance (its ``assignment()`` raises then)."""
    try:
        return [tp for tp in app.consumer.assignment() if tp.topic == topic]
    except Exception:
        return []


def consumer_state(app: Any, topic: str) -> dict[str, Any]:
    """What faust's consumer believes about each source partition (for diagnosis):
    committed and read offsets, acknowledged offsets waiting for a commit, gaps,
    and whether the partition is being fetched; plus each agent's current stack."""
    consumer = app.consumer
    assigned = sorted(_assigned(app, topic), key=lambda t: t[1])
    active = consumer._active_partitions or set()
    out: dict[str, Any] = {"partitions": {}, "flow_active": consumer.flow_active}
    for tp in assigned:
        acked = consumer._acked.get(tp) or []
        gap = consumer._gap.get(tp)
        out["partitions"][str(tp.partition)] = {
            "committed": consumer._committed_offset.get(tp),
            "read": consumer._read_offset.get(tp),
            "acked_waiting": len(acked),
            "acked_min": min(acked) if acked else None,
            "acked_max": max(acked) if acked else None,
            "gaps": sorted((i.begin, i.end) for i in gap)[:10] if gap else [],
            "fetching": tp in active,
            "paused": tp in consumer._paused_partitions,
            "buffered": tp in consumer._buffered_partitions,
        }
    out["unacked"] = len(consumer._unacked_messages)
    out["agents"] = app.agents.human_tracebacks()
    return out


def consumer_lag(app: Any, topic: str) -> dict[tuple[str, int], int]:
    """Records not yet read per assigned partition of ``topic``: the high watermark
    of the last fetch minus the next offset to read."""
    consumer = app.consumer
    out: dict[tuple[str, int], int] = {}
    for tp in _assigned(app, topic):
        high = consumer.highwater(tp)
        if high is None:
            continue
        read = consumer._read_offset.get(tp)
        nxt = read + 1 if read is not None else (consumer._committed_offset.get(tp) or 0)
        out[(topic, tp.partition)] = max(0, int(high) - nxt)
    return out


def build_app(cfg: WorkerConfig, policy: RulePolicy | None = None) -> tuple[Any, Runtime]:
    """The faust app with its topics, table, agent, model timer and stats page."""
    import faust

    from stream._partition import KeyPartitioner
    from stream._transport import SCHEME, set_fetch_wait

    set_fetch_wait(cfg.fetch_wait_ms)
    app = faust.App(
        cfg.app_id,
        # faust's Kafka transport with a short fetch wait (see stream._transport)
        broker=cfg.broker_url.replace("kafka://", f"{SCHEME}://", 1),
        store=cfg.store,
        topic_partitions=cfg.partitions,
        topic_replication_factor=1,
        key_serializer="raw",
        value_serializer="raw",
        datadir=cfg.data_dir,
        web_host="127.0.0.1",
        web_port=cfg.web_port,
        consumer_auto_offset_reset="earliest",
        producer_linger_ms=5,
        producer_partitioner=KeyPartitioner(),  # the default's partitions, hashed once a key
        # offsets committed on faust's timer (every 2.8 s) only: its commit every 10,000
        # acknowledged records runs inside its fetch loop, which hands out no record
        # until the producer has flushed and the commit is done (write-behind acks a
        # second of records at once: p99 latency 533 -> 360 ms at 1,600 records/s)
        broker_commit_every=COMMIT_EVERY,
        Stream=PacedStream,  # micro-batches paced from the last one's start (stream._take)
    )
    if policy is None:
        policy = RulePolicy(load_policy(Path(cfg.alert_policy) if cfg.alert_policy else None))
    runtime = Runtime(cfg, policy)
    # internal=True: faust creates missing topics with our partition count (a broker's
    # auto-creation would pick its own default, and the table must match the source)
    events, dlq, scores, alerts, actions = (
        app.topic(name, partitions=cfg.partitions, internal=True)
        for name in (
            cfg.events_topic,
            cfg.dlq_topic,
            cfg.scores_topic,
            cfg.alerts_topic,
            cfg.actions_topic,
        )
    )
    table, memory_table = (
        app.Table(name, partitions=cfg.partitions, key_type=bytes, value_type=bytes)
        for name in ("customer-state", "alert-memory")
    )

    async def produce(topic: str, key: bytes, value: bytes, partition: int | None = None) -> None:
        """Hand a record to faust's producer (the one its commits flush first), without
        the per-record machinery of ``Topic.send`` (a third of a score's cost)."""
        delivery = await app.producer.send(topic, key, value, partition, None, None)
        asyncio.ensure_future(delivery).add_done_callback(delivered)  # a future already

    def delivered(delivery: asyncio.Future[Any]) -> None:
        """A record the broker refused (after the producer's retries): counted, logged;
        faust's commit flushes the producer first, but does not look at the outcome."""
        if not delivery.cancelled() and delivery.exception() is not None:
            runtime.counts["produce_failures"] += 1
            logger.error("a record was not delivered: %r", delivery.exception())

    async def store(tbl: Any, key: bytes, blob: bytes, event: Any) -> None:
        """Write ``key`` in its event's context: the store and the changelog partition
        are the partition of this key's event (not of the batch's last event). The
        store directly, and the changelog record produced here: a table's sync
        ``__setitem__`` queues the record in faust's producer buffer, which a whole
        batch of writes overfills (and which stalled after a restart)."""
        _current_event.set(weakref.ref(event))
        tbl.data[key] = blob
        await produce(changelogs[id(tbl)], key, blob, event.message.partition)

    changelogs = {id(t): t.changelog_topic.get_topic_name() for t in (table, memory_table)}
    scores_topic = scores.get_topic_name()
    counts, dead = runtime.counts, runtime.dead
    from faust.streams import _current_event  # set per key: see "in its event's context"

    wb = runtime.pending

    def discard_if_rebalanced() -> bool:
        """A new consumer generation: what is pending may belong to partitions this
        worker no longer has; drop it, unacknowledged (it is read again)."""
        generation = getattr(app, "consumer_generation_id", None)
        if generation == wb.generation:
            return False
        if wb.pending():
            runtime.discarded += 1
            logger.info(
                "rebalance: %d pending states dropped, their %d events are read again",
                len(wb.states),
                len(wb.held),
            )
        for key in wb.states:
            runtime.cache.pop(key, None)  # the cached object holds the dropped changes
        wb.clear()
        if runtime.flushing is not None:  # a flush under way stops at its next slice
            for key in runtime.flushing.states:
                runtime.cache.pop(key, None)
            runtime.flushing = None
        wb.generation = generation
        return True

    async def flush() -> None:
        """Write the pending states and alert memories, then acknowledge their events."""
        consumer: Any = app.consumer
        if discard_if_rebalanced() or not consumer.flow_active:
            return  # a rebalance is under way: the events are read again
        runtime.flush_began = time.time()
        await score_due()
        sizes = await write_states(wb.states.items())
        await finish_flush(wb, sizes)
        wb.clear()

    async def write_states(items: Iterable[tuple[bytes, tuple[CustomerState, Any]]]) -> list[int]:
        """Serialise and write states (each in its event's partition); their sizes."""
        sizes = []
        items = list(items)
        blobs = to_bytes_many([state for _key, (state, _ev) in items])
        for (key, (state, ev)), blob in zip(items, blobs, strict=True):
            await store(table, key, blob, ev)
            runtime.remember(key, blob, state)
            sizes.append(len(blob))
        return sizes

    async def finish_flush(written: WriteBehind, sizes: list[int]) -> None:
        """The alert memories written, then the events behind it all acknowledged."""
        consumer: Any = app.consumer
        for key, (memory, ev) in written.memories.items():
            await store(memory_table, key, memory.to_bytes(), ev)
        ack_held(consumer, written.held)
        for tp, offsets in written.held_gaps:
            mark_acked(consumer, tp, offsets)
        runtime.observe("churn_state_bytes", sizes)
        runtime.flushes += 1
        runtime.last_flushed = time.time()

    def still_ours(taken: WriteBehind) -> bool:
        """Whether a flush under way may go on: no rebalance since it began. Else its
        states are dropped (the cached objects hold the unwritten changes) and their
        events, unacknowledged, are read again."""
        generation = getattr(app, "consumer_generation_id", None)
        consumer: Any = app.consumer
        if generation == taken.generation and consumer.flow_active:
            return True
        for key in taken.states:
            runtime.cache.pop(key, None)
        runtime.discarded += 1
        logger.info("rebalance during a flush: %d events are read again", len(taken.held))
        return False

    async def flush_spread() -> None:
        """The write-behind flush in slices of ``FLUSH_SLICE`` states, the micro-batches
        going on between them (a whole flush at once held them up: the p99 latency).

        What is pending is taken first; batches meanwhile fold into new pending states,
        finding a customer's newest state in the taken ones until it is written (the
        objects are shared: a slice writes a state with whatever folded into it since,
        which is safe, the idempotent fold absorbing a replay). The taken events are
        acknowledged after the last slice."""
        consumer: Any = app.consumer
        async with processing:
            if discard_if_rebalanced() or not consumer.flow_active or not wb.pending():
                return
            runtime.flush_began = time.time()
            await score_due()
            taken = runtime.flushing = wb.take()
        try:
            items = list(taken.states.items())
            sizes: list[int] = []
            for start in range(0, len(items), FLUSH_SLICE):
                async with processing:
                    if not still_ours(taken):
                        return
                    sizes += await write_states(items[start : start + FLUSH_SLICE])
            async with processing:
                if still_ours(taken):
                    await finish_flush(taken, sizes)
        finally:
            runtime.flushing = None

    flush_task: asyncio.Future[None] | None = None

    def flush_due() -> bool:
        return wb.since is not None and (
            time.monotonic() - wb.since >= cfg.flush_interval(runtime.behind)
            or len(wb.states) >= cfg.flush_max
        )

    def start_flush() -> None:
        """A spread flush in its own task (one at a time)."""
        nonlocal flush_task
        if flush_task is not None and not flush_task.done():
            return
        flush_task = asyncio.ensure_future(flush_spread())
        flush_task.add_done_callback(_log_failure)

    def pending_state(key: bytes) -> CustomerState | None:
        """The customer's state with changes not yet written, if any."""
        waiting = wb.states.get(key)
        if waiting is None and runtime.flushing is not None:
            waiting = runtime.flushing.states.get(key)
        return None if waiting is None else waiting[0]

    def pending_memory(key: bytes) -> AlertMemory:
        for held in (wb, runtime.flushing):
            if held is not None and key in held.memories:
                return held.memories[key][0]
        return AlertMemory.from_bytes(memory_table.get(key))

    async def process(batch: list[Any]) -> None:
        touched: dict[bytes, CustomerState] = {}
        source: dict[bytes, Any] = {}  # the last event of each key, for its partition
        to_score: dict[bytes, CustomerState] = {}
        for ev in batch:
            msg = ev.message
            raw = ev.value
            if type(raw) is not bytes:
                raw = bytes(raw or b"")
            counts["consumed"] += 1
            try:
                event = decode(raw)
            except InvalidEventError as exc:
                dead[exc.reason] += 1
                await dlq.send(key=msg.key, value=dead_letter(exc.reason, str(exc), raw, msg))
                continue
            key = event.customer_id.encode()
            if msg.key is not None and msg.key != key:
                dead["key_mismatch"] += 1
                detail = f"message key {msg.key!r} is not the customer id {event.customer_id!r}"
                await dlq.send(key=key, value=dead_letter("key_mismatch", detail, raw, msg))
                continue
            try:
                state = touched.get(key) or pending_state(key)
                if state is None:
                    state = runtime.state_for(key, table.get(key), event.customer_id)
                outcome = fold_event(state, event)
            except Exception as exc:  # a bug or a state this engine cannot read: counted
                logger.exception("cannot fold event %s", event.event_id)
                dead["processing_error"] += 1
                detail = f"{type(exc).__name__}: {exc}"
                await dlq.send(key=key, value=dead_letter("processing_error", detail, raw, msg))
                continue
            if outcome == "too_late":  # older than the longest window: cannot count any more
                dead["too_late"] += 1
                detail = f"event {event.event_id} is older than the longest window"
                await dlq.send(key=key, value=dead_letter("too_late", detail, raw, msg))
                continue
            counts[outcome] += 1
            live = not msg.headers or not _is_backfill(msg)  # most records have none
            if (
                live
                and outcome == "applied"
                and isinstance(event, ManagerReassigned)
                and state.manager_id == event.manager_id
            ):
                # the customer's open alert moves to the new manager (notifier, inbox)
                move = {
                    "action_id": f"reassign:{event.event_id}",
                    "kind": "reassign",
                    "customer_id": event.customer_id,
                    "manager_id": event.manager_id,
                    "by": "event-log",
                    "at": event.occurred_at.isoformat(),
                }
                await actions.send(key=key, value=orjson.dumps(move))
            touched[key] = state
            source[key] = ev
            if live:
                to_score[key] = state
        for key, state in touched.items():
            wb.states[key] = (state, source[key])
            if state.max_t is not None and state.max_t > (runtime.last_event_us or 0):
                runtime.last_event_us = state.max_t
        # acknowledged at the flush (faust's own ack leaves the reference held here)
        messages = [ev.message for ev in batch if not isinstance(ev, DirectEvent)]
        hold(messages)
        wb.held += messages
        if wb.since is None:
            wb.since = time.monotonic()
        if to_score and runtime.behind and cfg.flush_seconds > 0:
            for key, state in to_score.items():  # scored once, at the flush
                if key in wb.due:
                    counts["coalesced"] += 1  # a score that would have gone out
                wb.due[key] = (state, source[key])
        elif to_score or wb.due:
            for key, (state, ev) in wb.due.items():  # caught up: the waiting ones too
                to_score.setdefault(key, state)
                source.setdefault(key, ev)
            wb.due.clear()
            await score_safely(to_score, source)
        if cfg.flush_seconds <= 0:
            await flush()  # per batch: written before the next batch
        elif flush_due():
            start_flush()

    async def score_safely(to_score: dict[bytes, CustomerState], source: dict[bytes, Any]) -> None:
        try:
            await score_and_alert(to_score, source)
        except Exception:
            # the events are folded and their states kept: only these scores are
            # missing (the customers' next events score them again); counted, logged
            logger.exception("scoring failed for %d customers", len(to_score))
            counts["score_failures"] += len(to_score)

    async def score_due() -> None:
        """Score the customers waiting since the worker fell behind (before a flush)."""
        if wb.due:
            due = dict(wb.due)
            wb.due.clear()
            await score_safely(
                {key: state for key, (state, _) in due.items()},
                {key: ev for key, (_, ev) in due.items()},
            )

    async def score_and_alert(
        to_score: dict[bytes, CustomerState], source: dict[bytes, Any]
    ) -> None:
        async with runtime.model_lock:
            model = runtime.model
            if model is None:
                counts["unscored"] += len(to_score)
                return
            began = time.perf_counter()
            batch = score_batch(model, list(to_score.values()))
            scored = batch.pairs
            if runtime.config.monitoring:
                runtime.observe("churn_score_churn_probability", batch.churn)
                runtime.observe("churn_score_predicted_value_minor", batch.value)
                if runtime.drift is not None:
                    runtime.drift.add(
                        batch.t_us,
                        {
                            **batch.features,
                            "churn_probability": batch.churn,
                            "predicted_value_minor": batch.value,
                        },
                    )
            keys = [score.customer_id.encode() for score, _ in scored]
            for key, (score, _) in zip(keys, scored, strict=True):
                await produce(scores_topic, key, orjson.dumps(score))
            counts["scored"] += len(scored)
            memories = [pending_memory(key) for key in keys]
            names = model.bundle.features

            def contributions(rows: list[int]) -> list[dict[str, float]]:
                x = np.array([[scored[i][1][n] for n in names] for i in rows], np.float64)
                return [dict(zip(names, c, strict=False)) for c in model.bundle.contributions(x)]

            explained, new_memories = runtime.policy.evaluate_many(scored, memories, contributions)
            for key, old, new in zip(keys, memories, new_memories, strict=True):
                if new != old:
                    wb.memories[key] = (new, source[key])
            for alert in explained:
                key = alert.alert.customer_id.encode()
                await alerts.send(key=key, value=orjson.dumps(alert.to_dict()))
                runtime.alerts_by_rule[(alert.alert.rule, alert.alert.severity)] += 1
            counts["alerts"] += len(explained)
            runtime.observe("churn_scoring_seconds", [time.perf_counter() - began])

    # records faust left out are read directly and processed first (see stream._offsets)
    guard = OffsetGuard(
        app, cfg.events_topic, cfg.broker_url.removeprefix("kafka://"), group=cfg.app_id
    )
    runtime.guard = guard
    processing = asyncio.Lock()  # the agent's batches and the guard's tail check

    async def process_with_gaps(batch: list[Any], gaps: list[Gap]) -> None:
        discard_if_rebalanced()
        filled: list[Any] = []
        for gap in gaps:
            records, complete = await guard.read(gap)
            guard.advance(gap, records)
            filled += records
            offsets = (
                range(gap.start, gap.end) if complete else [ev.message.offset for ev in records]
            )
            wb.held_gaps.append((gap.tp, offsets))  # acknowledged at the flush
            counts["refetched"] += len(records)
        await process(filled + batch)

    @app.agent(events, name="fold-and-score")
    async def fold_and_score(stream: Any) -> None:
        # the first look at the registry comes first: events read before the champion
        # is loaded would go unscored (a worker without a champion goes on at once)
        try:
            await asyncio.wait_for(runtime.first_check.wait(), timeout=60)
        except TimeoutError:
            logger.warning("no answer from the model registry in 60 s: folding without scores")
        async for batch in stream.take_paced(cfg.batch_size, within=cfg.batch_within):
            began = time.time()
            if runtime.first_batch is None:
                runtime.first_batch = began
            stamps = np.fromiter((ev.message.timestamp for ev in batch), np.float64, len(batch))
            oldest = float(stamps.min()) if len(batch) else began
            # even its newest event waited this long: behind, scoring once per flush
            runtime.behind = bool(
                len(batch) and 0 < cfg.catchup_seconds < began - float(stamps.max())
            )
            async with processing:
                await process_with_gaps(batch, guard.observe(batch))
            done = time.time()
            runtime.batches.append((len(batch), (began - oldest) * 1000, (done - began) * 1000))
            runtime.last_processed = done
            runtime.observe("churn_batch_processing_seconds", [done - began])
            runtime.observe("churn_event_latency_seconds", done - stamps)

    @app.timer(interval=max(cfg.flush_seconds / 2, 0.25))  # type: ignore[untyped-decorator]
    async def flush_when_idle() -> None:
        """A stream that stops still gets its last changes written and committed."""
        if not flush_due():
            return
        if cfg.flush_seconds > 0:
            start_flush()
            return
        async with processing:
            if wb.since is not None:
                await flush()

    @app.timer(interval=5.0)  # type: ignore[untyped-decorator]
    async def check_tails() -> None:
        async with processing:
            gaps = guard.tail_gaps()
            if gaps:
                await process_with_gaps([], gaps)

    @app.task  # type: ignore[untyped-decorator]
    async def first_model() -> None:
        await runtime.refresh_model()
        logger.info("numeric thread pools (threads): %s", "; ".join(thread_pools()) or "none")

    @app.timer(interval=cfg.model_poll_seconds)  # type: ignore[untyped-decorator]
    async def watch_model() -> None:
        await runtime.refresh_model()

    @app.timer(interval=10.0)  # type: ignore[untyped-decorator]
    async def log_stats() -> None:
        logger.info("stats %s", orjson.dumps(runtime.stats()).decode())

    @app.page("/stats/")
    async def stats(web: Any, request: Any) -> Any:
        return web.json(runtime.stats())

    view = WorkerView(
        counts=counts,
        dead=dead,
        suppressed=runtime.policy.suppressed,
        alerts_by_rule=runtime.alerts_by_rule,
        model=lambda: (cfg.model_name, runtime.model.version) if runtime.model else None,
        reloads=lambda: runtime.reloads,
        reload_failures=lambda: runtime.reload_failures,
        lag=lambda: consumer_lag(app, cfg.events_topic),
        # counting a RocksDB store's keys reads them all: the gauge is for memory://
        state_customers=lambda: len(table.data) if cfg.store.startswith("memory") else None,
        drift=runtime.drift_rows,
        last_event_s=lambda: runtime.last_event_us / 1e6 if runtime.last_event_us else None,
        last_processed_s=lambda: runtime.last_processed,
        histograms=runtime.hist if cfg.monitoring else {},
    )
    registry = registry_of(WorkerCollector(view))

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        return web.bytes(exposition(registry), headers={"Content-Type": CONTENT_TYPE})

    @app.page("/drift/")
    async def drift(web: Any, request: Any) -> Any:
        window = runtime.drift
        if window is None:
            return web.json({"columns": [], "model_version": None}, status=404)
        try:
            days = float(request.query.get("days") or 0)
        except ValueError:
            return web.json({"error": "days must be a number"}, status=400)
        snap = window.snapshot(window.buckets_for(days) if days > 0 else None)
        snap["model_version"] = runtime.model.version if runtime.model else None
        return web.json(snap)

    @app.page("/debug/consumer/")
    async def consumer_debug(web: Any, request: Any) -> Any:
        return web.json(consumer_state(app, cfg.events_topic))

    return app, runtime


def run_worker(cfg: WorkerConfig, loglevel: str = "info") -> None:
    """Run the worker until it is stopped (SIGTERM / Ctrl-C)."""
    from faust.worker import Worker

    app, _ = build_app(cfg)
    settle_process()
    if FOLD_COMPILED:
        logger.info("fold: compiled (features/_fold.c)")
    else:
        logger.warning(
            "fold: the compiled fold is not built (python -m features._build, run by make "
            "install): folding in Python, about 1.6 times slower"
        )
    level = {"warning": "warn", "debug": "debug", "error": "error"}.get(loglevel, "info")
    Worker(app, loglevel=level, redirect_stdouts=False).execute_from_commandline()
