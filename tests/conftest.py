"""Shared fixtures: real external components started on loopback for integration tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import pytest

if TYPE_CHECKING:
    from training import TrainConfig

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer in {timeout} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process group started with start_new_session=True."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` on a free port: SQLite backend, its own artifact root."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = root / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--backend-store-uri",
                f"sqlite:///{root / 'mlflow.db'}",
                "--artifacts-destination",
                str(root / "artifacts"),
                "--workers",
                "1",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health", proc, 120, log)
        yield url
    finally:
        stop(proc)


# ---------------------------------------------------------------- a trained champion
NOW = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def fast_config() -> TrainConfig:
    from training import TrainConfig

    return TrainConfig(max_rounds=150, early_stopping=20, threads=1)


@pytest.fixture(scope="session")
def bank(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A simulated bank big enough to train on (2,500 customers, 24 months)."""
    from simulator import SimConfig, write_parquet

    out = tmp_path_factory.mktemp("bank") / "events.parquet"
    write_parquet(SimConfig(customers=2500, months=24, seed=23), out, workers=1)
    return out


@pytest.fixture(scope="session")
def train_set(bank: Path) -> pl.DataFrame:
    from features import build_training_set, scan_log

    return build_training_set(
        scan_log(bank), date(2024, 7, 1), date(2025, 10, 1), 30, workers=1
    ).frame


@pytest.fixture(scope="session")
def champion_dir(
    bank: Path, train_set: pl.DataFrame, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A data dir whose embedded MLflow store has a champion (and its training set);
    its drift reference is taken at the bank's events, as the worker scores."""
    from features import LabelConfig, scan_log
    from training import Store, promote, register, train_models

    root = tmp_path_factory.mktemp("champion")
    store = Store.resolve(root, environ={})
    model = train_models(train_set, LabelConfig(), fast_config(), events=scan_log(bank), now=NOW)
    register(store, model)
    assert promote(store, who="fixture", now=NOW).promoted
    train_set.write_parquet(root / "train.parquet")
    return root


def produce_json(bootstrap: str, topic: str, records: list[dict[str, Any]]) -> None:
    """Send each record as JSON, keyed by its customer id (tests of the alert topics)."""
    import asyncio
    import json

    from aiokafka import AIOKafkaProducer

    async def run() -> None:
        p = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await p.start()
        try:
            for r in records:
                await p.send_and_wait(topic, json.dumps(r).encode(), key=r["customer_id"].encode())
        finally:
            await p.stop()

    asyncio.run(run())
