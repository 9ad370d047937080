"""Streaming: the faust worker, the development broker and log replay."""

from stream._broker import Broker, port_open, stop_group
from stream._lag import consumer_lag, read_placed, read_records, read_topic
from stream._replay import ReplayResult, load_replay, replay
from stream._worker import BACKFILL_HEADER, Runtime, WorkerConfig, build_app, run_worker

__all__ = [
    "BACKFILL_HEADER",
    "Broker",
    "ReplayResult",
    "Runtime",
    "WorkerConfig",
    "build_app",
    "consumer_lag",
    "load_replay",
    "port_open",
    "read_placed",
    "read_records",
    "read_topic",
    "replay",
    "run_worker",
    "stop_group",
]
