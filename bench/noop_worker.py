"""A no-op faust worker on ``bank.events``: the ceiling the pipeline is compared with.

Same broker, same topic, same micro-batching (``take_events(500, within=0.1)``);
it decodes nothing and writes nothing. Run: ``python -m bench.noop_worker BROKER_URL``.
"""

from __future__ import annotations

import sys

import faust
from faust.worker import Worker


def main() -> None:
    from stream._transport import SCHEME  # the worker's transport (short fetch wait)

    app = faust.App(
        "noop-bench",
        broker=sys.argv[1].replace("kafka://", f"{SCHEME}://", 1),
        store="memory://",
        topic_partitions=8,
        topic_replication_factor=1,
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        datadir=sys.argv[2] if len(sys.argv) > 2 else "noop-data",
    )
    topic = app.topic("bank.events", partitions=8, internal=True)

    @app.agent(topic)
    async def noop(stream):  # type: ignore[no-untyped-def]
        async for _batch in stream.take_events(500, within=0.1):
            pass

    Worker(app, loglevel="warn", redirect_stdouts=False).execute_from_commandline()


if __name__ == "__main__":
    main()
