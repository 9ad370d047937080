"""Delivery of digests: signed webhooks with retries, and e-mail over SMTP.

**Webhooks.** Each POST carries the digest as JSON and three headers:

- ``X-Churn-Signature: t=<unix seconds>,v1=<hex>``, where ``v1`` is the HMAC-SHA256,
  keyed with the shared secret, of ``"<t>." + body`` (the receiver recomputes it,
  compares in constant time, and refuses old ``t`` to stop replays);
- ``Idempotency-Key: <digest id>``: the same digest keeps its key through retries,
  so a receiver that saw it already can answer 200 and do nothing;
- ``Content-Type: application/json``.

A 2xx is delivered. A 429, a 5xx, a time-out or a refused connection is retried with
exponential backoff (``backoff`` x 2^n seconds, at most ``max_attempts`` attempts); any
other 4xx is permanent. An undeliverable digest is returned as dead (the caller writes
it to the dead-letter topic, nothing is dropped). The secret comes from the
environment (``CHURN_WEBHOOK_SECRET``) and is never logged.

**E-mail.** One message per digest, ``multipart/alternative`` with a plain-text and an
HTML part, in the manager's language, sent with STARTTLS when the server offers it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import smtplib
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from serving._actions import digest_html, digest_subject, digest_text

__all__ = [
    "DeliveryResult",
    "EmailConfig",
    "WebhookConfig",
    "send_email",
    "send_webhook",
    "sign",
    "verify",
]

logger = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Churn-Signature"


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: bytes, header: str, body: bytes, now: float, tolerance: float = 300) -> bool:
    """What a receiver does: the signature matches and is recent."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        t = int(parts["t"])
    except (ValueError, KeyError):
        return False
    expected = sign(secret, t, body).split("v1=", 1)[1]
    return abs(now - t) <= tolerance and hmac.compare_digest(expected, parts.get("v1", ""))


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    secret: bytes
    max_attempts: int = 5
    backoff: float = 0.5  # seconds before the 2nd attempt; doubles each time
    timeout: float = 10.0

    def __repr__(self) -> str:  # the secret stays out of logs and tracebacks
        return f"WebhookConfig(url={self.url!r}, secret=<hidden>, max_attempts={self.max_attempts})"


@dataclass(frozen=True)
class DeliveryResult:
    delivered: bool
    attempts: int
    error: str | None = None  # the last failure, for the dead letter


def _retriable(status: int) -> bool:
    return status == 429 or status >= 500


def send_webhook(
    cfg: WebhookConfig,
    payload: Mapping[str, Any],
    idempotency_key: str,
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> DeliveryResult:
    """POST ``payload`` (signed), retrying what can succeed later."""
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    error = None
    for attempt in range(1, cfg.max_attempts + 1):
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": idempotency_key,
            SIGNATURE_HEADER: sign(cfg.secret, int(clock()), body),
        }
        req = urllib.request.Request(cfg.url, data=body, headers=headers, method="POST")  # noqa: S310
        try:
            with urllib.request.urlopen(req, timeout=cfg.timeout) as resp:  # noqa: S310
                if 200 <= resp.status < 300:
                    return DeliveryResult(True, attempt)
                error = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            error = f"HTTP {exc.code}"
            if not _retriable(exc.code):
                logger.warning("webhook %s refused digest %s: %s", cfg.url, idempotency_key, error)
                return DeliveryResult(False, attempt, error)
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            error = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        if attempt < cfg.max_attempts:
            sleep(cfg.backoff * 2 ** (attempt - 1))
    logger.warning("webhook %s: digest %s undeliverable: %s", cfg.url, idempotency_key, error)
    return DeliveryResult(False, cfg.max_attempts, error)


@dataclass(frozen=True)
class EmailConfig:
    host: str
    port: int
    sender: str
    username: str | None = None
    password: str | None = None
    timeout: float = 10.0

    def __repr__(self) -> str:
        return f"EmailConfig(host={self.host!r}, port={self.port}, sender={self.sender!r})"


def send_email(
    cfg: EmailConfig,
    to: str,
    alerts: Sequence[Mapping[str, Any]],
    overflow: int,
    lang: str,
    digest_id: str,
) -> DeliveryResult:
    """One digest e-mail (text and HTML, in ``lang``) to ``to``."""
    msg = EmailMessage()
    msg["Subject"] = digest_subject(alerts, lang)
    msg["From"] = cfg.sender
    msg["To"] = to
    msg["Message-ID"] = f"<{hashlib.sha256(digest_id.encode()).hexdigest()[:32]}@churn-engine>"
    msg.set_content(digest_text(alerts, overflow, lang))
    msg.add_alternative(digest_html(alerts, overflow, lang), subtype="html")
    try:
        with smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout) as smtp:
            smtp.ehlo()
            if smtp.has_extn("starttls"):
                smtp.starttls()
                smtp.ehlo()
            if cfg.username and cfg.password:
                smtp.login(cfg.username, cfg.password)
            smtp.send_message(msg)
    except (smtplib.SMTPException, OSError) as exc:
        return DeliveryResult(False, 1, f"{type(exc).__name__}: {exc}")
    return DeliveryResult(True, 1)
