"""A no-op faust worker on ``bank.events``: the ceiling the pipeline is compared with.

Same broker and topic, micro-batches of 500; it decodes nothing and writes nothing.
Run: ``python -m bench.noop_worker BROKER_URL [DATA_DIR] [--stock-faust]``. It reads
the way the worker does: the worker's transport (``stream._transport``, records
handed over inline) and micro-batches (``stream._take``, every queued record taken in
one turn of the loop). With ``--stock-faust`` it reads as faust 0.15.3 does (``wait_first``
per record, ``take_events`` filled one record per turn): the ceiling of a stock
faust agent. Both keep the rest of the worker's transport: the short fetch wait the
dev broker needs, and end offsets read from the data. After each batch it writes
``work.json`` in its data directory: records seen, the wall-clock start of its first
batch and the end of its latest (the span a throughput benchmark divides by). Its
process settings are the worker's (``stream._worker.settle_process``: the cyclic
collector's thresholds, imports frozen, numeric thread pools at one thread).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import faust
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.drivers import TRANSPORTS
from faust.worker import Worker

from stream import _transport
from stream._take import PacedStream
from stream._worker import settle_process

STOCK = "churnkafkafaust"


class _FaustDeliveryConsumer(_transport._Consumer):
    _drain_messages = FaustConsumer._drain_messages


class FaustDeliveryTransport(_transport.Transport):
    Consumer = _FaustDeliveryConsumer


TRANSPORTS.aliases[STOCK] = "bench.noop_worker:FaustDeliveryTransport"


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--stock-faust"]
    stock = "--stock-faust" in sys.argv
    datadir = Path(args[1] if len(args) > 1 else "noop-data")
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        "noop-bench",
        broker=args[0].replace("kafka://", f"{STOCK if stock else _transport.SCHEME}://", 1),
        store="memory://",
        topic_partitions=8,
        topic_replication_factor=1,
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        datadir=str(datadir),
        **({} if stock else {"Stream": PacedStream}),
    )
    topic = app.topic("bank.events", partitions=8, internal=True)
    report = datadir / "work.json"
    work = {"records": 0, "first_batch": None, "last_batch": None}

    @app.agent(topic)
    async def noop(stream):  # type: ignore[no-untyped-def]
        batches = stream.take_events(500, 0.1) if stock else stream.take_paced(500, 0.1)
        async for batch in batches:
            now = time.time()
            if work["first_batch"] is None:
                work["first_batch"] = now  # the batch is taken: its work begins
            work["records"] += len(batch)
            work["last_batch"] = now
            report.with_suffix(".tmp").write_text(json.dumps(work))
            os.replace(report.with_suffix(".tmp"), report)

    settle_process()  # the worker's process settings: collector, one numeric thread
    Worker(app, loglevel="warn", redirect_stdouts=False).execute_from_commandline()


if __name__ == "__main__":
    main()
