"""faust's aiokafka transport, with a short fetch wait.

faust creates its consumer with ``fetch_max_wait_ms=1500`` and no setting to change
it. A Kafka broker answers a fetch as soon as there is data, so the wait does not
matter there; the development broker (Tansu 0.6) holds every fetch for the full
wait, which puts up to 1.5 s between an event and its score. The worker's broker URL
uses the scheme ``churnkafka://`` (registered here), whose consumer waits
``CHURN_FETCH_WAIT_MS`` (:func:`set_fetch_wait`; default 50 ms) instead;
recovery asks for the end offsets of changelog partitions read from the data (the
dev broker misreports them); everything else is faust's aiokafka transport.
Measured with a plain consumer on the dev broker: median delivery 420 ms with a
1,500 ms wait, 5 ms with 100 ms.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as _faust_aiokafka
from faust.transport.drivers.aiokafka import server_list

from stream._lag import true_end_offsets

__all__ = ["FETCH_MAX_WAIT_MS", "SCHEME", "Transport", "set_fetch_wait"]

logger = logging.getLogger(__name__)

# set by the worker from CHURN_FETCH_WAIT_MS (WorkerConfig.fetch_wait_ms, 50 ms by default)
FETCH_MAX_WAIT_MS = 50
SCHEME = "churnkafka"


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


class _Consumer(_faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> Any:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

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
