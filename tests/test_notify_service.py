"""`churn notify` on the real broker: digests per manager on the topic, the webhook
and e-mail; reassignment; a dead letter for an undeliverable digest; and a restart
that rebuilds from the topics and sends nothing twice."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from serving._delivery import EmailConfig, WebhookConfig
from serving._notify import RoutingConfig
from serving._outbox import (
    ACTIONS_TOPIC,
    ALERTS_TOPIC,
    DIGESTS_DLQ,
    DIGESTS_TOPIC,
    Manager,
    ManagerDirectory,
    NotifyConfig,
    run_notifier,
)
from stream import Broker, read_topic
from tests.conftest import free_port, produce_json
from tests.test_delivery import SECRET, Inbox, Receiver

pytestmark = pytest.mark.integration


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(free_port(), log=tmp_path / "broker.log") as b:
        yield b


def alert(customer: str, manager: str | None, var: float) -> dict[str, Any]:
    return {
        "alert_id": f"{customer}:high_churn_risk:2025-03-01T09:30:00+00:00",
        "customer_id": customer,
        "manager_id": manager,
        "branch_id": "B7",
        "rule": "high_churn_risk",
        "severity": "high",
        "churn_probability": 0.6,
        "predicted_value_minor": var / 0.6,
        "value_at_risk_minor": var,
        "reasons": [
            {
                "driver": "fees",
                "weight": 0.5,
                "en": "fees of 120 charged in 90 days",
                "zh": "90天内收取手续费120元",
            }
        ],
        "action": "fee_waiver",
    }


class Running:
    """run_notifier in a thread of its own, stopped on demand."""

    def __init__(self, cfg: NotifyConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self.stop = asyncio.Event()
        self.ready = threading.Event()
        self.result: Any = None

        async def main() -> Any:
            ready = asyncio.Event()

            async def flag() -> None:
                await ready.wait()
                self.ready.set()

            waiter = asyncio.ensure_future(flag())
            try:
                return await run_notifier(cfg, stop=self.stop, ready=ready)
            finally:
                waiter.cancel()

        self.thread = threading.Thread(
            target=lambda: setattr(self, "result", self.loop.run_until_complete(main()))
        )
        self.thread.start()
        assert self.ready.wait(60), "the notifier did not start"

    def close(self) -> Any:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(60)
        self.loop.close()
        return self.result


def digests(bootstrap: str, topic: str = DIGESTS_TOPIC) -> list[dict[str, Any]]:
    return [json.loads(v) for _, v in read_topic(bootstrap, topic, idle=1)]


def wait_for(pred: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)


def test_digests_reach_each_manager_by_every_channel_once(broker: Broker) -> None:
    bootstrap = broker.url.removeprefix("kafka://")
    receiver = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), receiver.handler())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    inbox = Inbox()
    smtp_port = free_port()
    smtp = Controller(inbox, hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    cfg = NotifyConfig(
        bootstrap=bootstrap,
        routing=RoutingConfig(
            group_wait=timedelta(seconds=2),
            group_interval=timedelta(seconds=2),
            repeat_interval=timedelta(hours=1),
            daily_cap=20,
        ),
        webhook=WebhookConfig(
            f"http://127.0.0.1:{server.server_address[1]}/hook",
            SECRET,
            max_attempts=2,
            backoff=0.05,
        ),
        email=EmailConfig("127.0.0.1", smtp_port, "alerts@bank.example"),
        directory=ManagerDirectory(
            managers={
                "M1": Manager(email="m1@bank.example", language="zh"),
                "M2": Manager(email="m2@bank.example", language="en"),
                "M3": Manager(email="m3@bank.example", language="en"),
            }
        ),
        tick=0.5,
    )
    try:
        produce_json(
            bootstrap,
            ALERTS_TOPIC,
            [
                alert("C1", "M1", 500),
                alert("C2", "M1", 9000),
                alert("C3", "M2", 100),
                alert("C4", None, 50),
            ],
        )
        first = Running(cfg)
        try:
            wait_for(lambda: len(digests(bootstrap)) >= 3)
            sent = digests(bootstrap)
            by = {d["recipient"]: [a["customer_id"] for a in d["alerts"]] for d in sent}
            assert by == {"M1": ["C2", "C1"], "M2": ["C3"], "branch:B7": ["C4"]}
            wait_for(lambda: len(inbox.messages) >= 2)  # M1, M2: the branch queue has no address
            # a reassignment moves the open alert to the new manager
            produce_json(
                bootstrap,
                ACTIONS_TOPIC,
                [{"kind": "reassign", "customer_id": "C3", "manager_id": "M3"}],
            )
            wait_for(lambda: any(d["recipient"] == "M3" for d in digests(bootstrap)))
            wait_for(lambda: len(inbox.messages) >= 3)
        finally:
            counts = first.close()
        assert counts.sent["topic"] == 4
        assert counts.sent["email"] == 3  # M1, M2, M3: the branch queue has no address
        # every webhook call was signed, one idempotency key per digest
        keys = {s["key"] for s in receiver.seen}
        assert keys == {d["digest_id"] for d in digests(bootstrap)}
        assert all(s["signed"] for s in receiver.seen)
        subjects = sorted(
            email.message_from_bytes(m, policy=email.policy.default)["Subject"]
            for m in inbox.messages
        )
        assert subjects == [
            "1 customer(s) need your attention",
            "1 customer(s) need your attention",
            "2位客户需要您关注",
        ]
        # a restart rebuilds from the topics and sends nothing again
        before = len(digests(bootstrap))
        second = Running(cfg)
        time.sleep(5)
        again = second.close()
        assert sum(again.sent.values()) == 0
        assert len(digests(bootstrap)) == before
    finally:
        smtp.stop()
        server.shutdown()
        server.server_close()


def test_an_undeliverable_digest_goes_to_the_dead_letter_topic(broker: Broker) -> None:
    bootstrap = broker.url.removeprefix("kafka://")
    cfg = NotifyConfig(
        bootstrap=bootstrap,
        routing=RoutingConfig(group_wait=timedelta(seconds=1)),
        webhook=WebhookConfig(
            f"http://127.0.0.1:{free_port()}/", SECRET, max_attempts=2, backoff=0.05
        ),
        tick=0.5,
    )
    produce_json(bootstrap, ALERTS_TOPIC, [alert("C1", "M1", 500)])
    run = Running(cfg)
    try:
        wait_for(lambda: len(digests(bootstrap, DIGESTS_DLQ)) >= 1)
    finally:
        counts = run.close()
    [letter] = digests(bootstrap, DIGESTS_DLQ)
    assert letter["channel"] == "webhook"
    assert letter["attempts"] == 2
    assert "URLError" in letter["error"]
    assert letter["digest"]["recipient"] == "M1"
    assert counts.failed["webhook"] == 1
    assert counts.sent["topic"] == 1
