"""A no-op faust worker on ``bank.events``: the ceiling the pipeline is compared with.

Same broker and topic, micro-batches of 500 (faust's ``take_events``; a drain fills
them, so the worker's pacing would not change them); it decodes nothing and writes
nothing. Run: ``python -m bench.noop_worker BROKER_URL
[DATA_DIR] [--faust-delivery]``. It uses the worker's transport (``stream._transport``);
with ``--faust-delivery`` that transport hands records to the agent as faust 0.15.3
does (``wait_first`` per record) instead of inline: the ceiling of a stock faust agent.
"""

from __future__ import annotations

import sys

import faust
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.drivers import TRANSPORTS
from faust.worker import Worker

from stream import _transport

FAUST_DELIVERY = "churnkafkafaust"


class _FaustDeliveryConsumer(_transport._Consumer):
    _drain_messages = FaustConsumer._drain_messages


class FaustDeliveryTransport(_transport.Transport):
    Consumer = _FaustDeliveryConsumer


TRANSPORTS.aliases[FAUST_DELIVERY] = "bench.noop_worker:FaustDeliveryTransport"


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--faust-delivery"]
    scheme = FAUST_DELIVERY if "--faust-delivery" in sys.argv else _transport.SCHEME
    app = faust.App(
        "noop-bench",
        broker=args[0].replace("kafka://", f"{scheme}://", 1),
        store="memory://",
        topic_partitions=8,
        topic_replication_factor=1,
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        datadir=args[1] if len(args) > 1 else "noop-data",
    )
    topic = app.topic("bank.events", partitions=8, internal=True)

    @app.agent(topic)
    async def noop(stream):  # type: ignore[no-untyped-def]
        async for _batch in stream.take_events(500, within=0.1):
            pass

    Worker(app, loglevel="warn", redirect_stdouts=False).execute_from_commandline()


if __name__ == "__main__":
    main()
