"""Delivery against real peers: an HTTP receiver that checks signatures and fails on
purpose, and an SMTP server on loopback that receives and parses the digest."""

from __future__ import annotations

import email
import email.policy
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from serving._actions import digest_text
from serving._delivery import (
    SIGNATURE_HEADER,
    EmailConfig,
    WebhookConfig,
    send_email,
    send_webhook,
    sign,
    verify,
)
from tests.conftest import free_port

SECRET = b"test-secret-not-a-real-one"

ALERTS = [
    {
        "alert_id": "C1:high_churn_risk:2025-03-01T09:30:00+00:00",
        "customer_id": "C1",
        "manager_id": "M1",
        "churn_probability": 0.62,
        "value_at_risk_minor": 1_240_000.0,
        "reasons": [
            {
                "driver": "salary",
                "weight": 0.9,
                "en": "salary credits stopped 34 days ago",
                "zh": "工资已停发34天",
            },
            {
                "driver": "complaints",
                "weight": 0.4,
                "en": "2 unresolved complaints",
                "zh": "2宗投诉未解决",
            },
        ],
        "action": "payroll_offer",
    }
]


@dataclass
class Receiver:
    """Answers ``fail_first`` requests with ``fail_status``, then 200, if the
    signature holds (401 otherwise); keeps every request it saw."""

    fail_first: int = 0
    fail_status: int = 503
    seen: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0

    def handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                ok = verify(SECRET, self.headers.get(SIGNATURE_HEADER, ""), body, time.time())
                receiver.seen.append(
                    {"body": body, "key": self.headers.get("Idempotency-Key"), "signed": ok}
                )
                if not ok:
                    status = 401
                elif len(receiver.seen) <= receiver.fail_first:
                    status = receiver.fail_status
                else:
                    status = 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), r.handler())
    r.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield r
    server.shutdown()
    server.server_close()


def cfg(r: Receiver, secret: bytes = SECRET, attempts: int = 5) -> WebhookConfig:
    return WebhookConfig(
        f"http://127.0.0.1:{r.port}/hook", secret, max_attempts=attempts, backoff=0.01
    )


def test_a_webhook_is_retried_with_backoff_then_delivered_signed_with_one_key(
    receiver: Receiver,
) -> None:
    receiver.fail_first = 3
    waits: list[float] = []
    payload = {"digest_id": "M1:abc", "alerts": ALERTS}
    result = send_webhook(cfg(receiver), payload, "M1:abc", sleep=waits.append)
    assert result.delivered
    assert result.attempts == 4
    assert waits == [0.01, 0.02, 0.04]
    assert len(receiver.seen) == 4
    assert {s["key"] for s in receiver.seen} == {"M1:abc"}
    assert all(s["signed"] for s in receiver.seen)
    assert json.loads(receiver.seen[-1]["body"]) == payload


def test_a_webhook_that_keeps_failing_is_dead_after_the_last_attempt(receiver: Receiver) -> None:
    receiver.fail_first = 100
    result = send_webhook(cfg(receiver, attempts=3), {"x": 1}, "k", sleep=lambda _s: None)
    assert not result.delivered
    assert result.attempts == 3
    assert result.error == "HTTP 503"
    assert len(receiver.seen) == 3


def test_a_refused_signature_is_permanent_and_not_retried(receiver: Receiver) -> None:
    result = send_webhook(cfg(receiver, secret=b"wrong"), {"x": 1}, "k", sleep=lambda _s: None)
    assert not result.delivered
    assert result.attempts == 1
    assert result.error == "HTTP 401"


def test_an_unreachable_receiver_is_retried_then_dead() -> None:
    hook = WebhookConfig(f"http://127.0.0.1:{free_port()}/", SECRET, max_attempts=2, backoff=0)
    result = send_webhook(hook, {"x": 1}, "k", sleep=lambda _s: None)
    assert not result.delivered
    assert result.attempts == 2
    assert "URLError" in (result.error or "")


def test_signatures_fail_on_a_changed_body_an_old_time_or_garbage() -> None:
    now = 1_700_000_000
    header = sign(SECRET, now, b"{}")
    assert verify(SECRET, header, b"{}", now)
    assert not verify(SECRET, header, b"{ }", now)
    assert not verify(SECRET, header, b"{}", now + 3600)
    assert not verify(b"other", header, b"{}", now)
    assert not verify(SECRET, "nonsense", b"{}", now)
    assert "test-secret" not in repr(WebhookConfig("http://x", SECRET))


@dataclass
class Inbox:
    messages: list[bytes] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.original_content)
        return "250 OK"


def test_a_digest_email_arrives_in_the_managers_language_as_text_and_html() -> None:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        smtp = EmailConfig("127.0.0.1", port, "alerts@bank.example")
        result = send_email(smtp, "m1@bank.example", ALERTS, 2, "zh", "M1:abc")
    finally:
        controller.stop()
    assert result.delivered
    [raw] = inbox.messages
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["To"] == "m1@bank.example"
    assert msg["Subject"] == "1位客户需要您关注"
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    page = msg.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert text.replace("\r\n", "\n") == digest_text(ALERTS, 2, "zh")  # CRLF on the wire
    assert "工资已停发34天" in text
    assert "提供代发工资服务" in text
    assert "另有2条提醒" in text
    assert 'data-customer="C1"' in page
    assert "2宗投诉未解决" in page


def test_an_unreachable_smtp_server_is_a_failed_delivery() -> None:
    smtp = EmailConfig("127.0.0.1", free_port(), "alerts@bank.example", timeout=2)
    result = send_email(smtp, "m1@bank.example", ALERTS, 0, "en", "k")
    assert not result.delivered
    assert result.error
