"""The managers' inbox: ``churn serve``, web pages and a JSON API (OpenAPI at
``/openapi.json``, docs at ``/docs``).

A manager signs in (web: manager id and token, then a signed, HttpOnly session
cookie; API: ``Authorization: Bearer <token>``). Tokens are kept only as SHA-256
hashes in the managers file. A manager sees only the alerts routed to them (a team
lead also those of their team); anything else answers 404, by page and by API, so
that another manager's customers cannot even be confirmed to exist.

The view is a fold of ``manager.alerts``, ``manager.actions`` and
``customer.scores`` (read from the start, then followed), so it is rebuilt by
replaying them. Every action a manager takes (acknowledge, snooze, record an
outcome, silence) is an event on ``manager.actions``: who, when, what; the
notifier folds the same events.
"""

# no ``from __future__ import annotations`` here: FastAPI reads the endpoints'
# annotations at run time, including the local ``Me`` dependency
import asyncio
import contextlib
import hashlib
import hmac
import html
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal

from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as PromCounter
from pydantic import BaseModel, Field

from monitoring import CONTENT_TYPE, LATENCY_BUCKETS, exposition
from serving._actions import ACTION_TEXT
from serving._notify import OUTCOMES, Notifier, RoutingConfig
from serving._outbox import ACTIONS_TOPIC, ALERTS_TOPIC, ManagerDirectory

__all__ = ["InboxView", "build_inbox", "hash_token"]

logger = logging.getLogger(__name__)
SCORES_TOPIC: Final = "customer.scores"
HISTORY: Final = 24  # scores kept per customer for the chart
COOKIE: Final = "churn_session"
Outcome = Literal["contacted", "offer_made", "retained", "lost", "unreachable"]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# ------------------------------------------------------------------ the view
@dataclass
class InboxView:
    directory: ManagerDirectory
    notifier: Notifier = field(default_factory=lambda: Notifier(RoutingConfig()))
    scores: dict[str, deque[tuple[str, float]]] = field(default_factory=dict)
    outcomes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def fold(self, topic: str, value: dict[str, Any], at: datetime) -> None:
        if topic == ALERTS_TOPIC:
            self.notifier.on_alert(value, at)
        elif topic == ACTIONS_TOPIC:
            if value.get("kind") == "outcome":
                self.outcomes.setdefault(str(value["customer_id"]), []).append(value)
            self.notifier.on_action(value, at)
        elif topic == SCORES_TOPIC:
            cid = str(value["customer_id"])
            history = self.scores.get(cid)
            if history is None:
                history = self.scores[cid] = deque(maxlen=HISTORY)
            history.append((str(value["as_of"]), float(value["churn_probability"])))

    def sees(self, manager_id: str) -> set[str]:
        me = self.directory.managers.get(manager_id)
        return {manager_id, *(me.team if me else [])}

    def alerts_for(self, manager_id: str) -> list[tuple[dict[str, Any], Any]]:
        mine = self.sees(manager_id)
        items = [(it.alert, it) for it in self.notifier.open.values() if it.recipient in mine]
        return sorted(items, key=lambda x: -float(x[0].get("value_at_risk_minor", 0.0)))

    def open_item(self, manager_id: str, customer_id: str) -> Any | None:
        item = self.notifier.open.get(customer_id)
        if item is None or item.recipient not in self.sees(manager_id):
            return None
        return item


# ------------------------------------------------------------------ API models
_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    400: {"description": "the body is not valid JSON"},
    401: {"description": "no valid bearer token"},
}


class ReasonOut(BaseModel):
    driver: str
    text: str


class AlertOut(BaseModel):
    alert_id: str
    customer_id: str
    manager_id: str | None
    rule: str
    severity: str
    as_of: str
    churn_probability: float
    predicted_value_minor: float
    value_at_risk_minor: float
    reasons: list[ReasonOut]
    action: str
    action_text: str
    acknowledged: bool
    snoozed_until: str | None


class ScorePoint(BaseModel):
    as_of: str
    churn_probability: float


class CustomerOut(BaseModel):
    customer_id: str
    alert: AlertOut
    scores: list[ScorePoint]
    outcomes: list[str]


class SnoozeIn(BaseModel):
    hours: int = Field(ge=1, le=24 * 30)


class OutcomeIn(BaseModel):
    outcome: Outcome
    note: str = Field("", max_length=500)


class SilenceIn(BaseModel):
    scope: Literal["customer", "manager"]
    target: str = Field(min_length=1, max_length=64)
    days: int = Field(ge=1, le=365)
    reason: str = Field(min_length=1, max_length=200)


class ActionOut(BaseModel):
    action_id: str
    kind: str
    by: str
    at: str
    customer_id: str | None


def _alert_out(alert: dict[str, Any], item: Any, lang: str) -> AlertOut:
    action = str(alert.get("action", "satisfaction_call"))
    return AlertOut(
        alert_id=str(alert["alert_id"]),
        customer_id=str(alert["customer_id"]),
        manager_id=item.recipient,
        rule=str(alert.get("rule", "")),
        severity=str(alert.get("severity", "")),
        as_of=str(alert.get("as_of", "")),
        churn_probability=float(alert.get("churn_probability", 0.0)),
        predicted_value_minor=float(alert.get("predicted_value_minor", 0.0)),
        value_at_risk_minor=float(alert.get("value_at_risk_minor", 0.0)),
        reasons=[
            ReasonOut(driver=str(r["driver"]), text=str(r.get(lang) or r.get("en", "")))
            for r in alert.get("reasons", [])
        ],
        action=action,
        action_text=ACTION_TEXT.get(action, {}).get(lang, action),
        acknowledged=bool(item.acknowledged),
        snoozed_until=item.snoozed_until.isoformat() if item.snoozed_until else None,
    )


# ------------------------------------------------------------------ the app
@dataclass
class _Kafka:
    producer: Any = None
    task: asyncio.Task[None] | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)


def build_inbox(
    directory: ManagerDirectory,
    bootstrap: str,
    secret: bytes,
    *,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> tuple[FastAPI, InboxView]:
    """The web app and its view; it follows the topics while it runs."""
    view = InboxView(directory)
    kafka = _Kafka()
    by_hash = {m.token_sha256: mid for mid, m in directory.managers.items() if m.token_sha256}

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        from aiokafka import AIOKafkaProducer

        from stream._replay import ensure_topics

        await ensure_topics(bootstrap, [ALERTS_TOPIC, ACTIONS_TOPIC, SCORES_TOPIC], 8)
        kafka.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await kafka.producer.start()
        kafka.task = asyncio.create_task(_follow(bootstrap, view, kafka.ready))
        try:
            yield
        finally:
            kafka.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await kafka.task
            await kafka.producer.stop()

    app = FastAPI(
        title="churn-engine managers' inbox",
        version="1",
        description="Open alerts of the signed-in manager, and the actions they take.",
        lifespan=lifespan,
    )

    # -------------------------------------------------------------- metrics
    registry = CollectorRegistry(auto_describe=False)
    requests = PromCounter(
        "churn_inbox_requests",
        "Requests to the inbox, by route and status",
        ("route", "method", "status"),
        registry=registry,
    )
    latency = Histogram(
        "churn_inbox_request_seconds",
        "Time to answer a request, by route",
        ("route",),
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    actions = PromCounter(
        "churn_inbox_actions",
        "Actions managers took (acknowledge, snooze, outcome, silence)",
        ("kind",),
        registry=registry,
    )
    open_alerts = Gauge("churn_inbox_alerts_open", "Open alerts in the inbox", registry=registry)
    open_alerts.set_function(lambda: float(len(view.notifier.open)))

    @app.middleware("http")
    async def measure(request: Request, call_next: Callable[[Request], Any]) -> Response:
        began = time.perf_counter()
        response: Response = await call_next(request)
        route = request.scope.get("route")
        name = getattr(route, "path", "unmatched")  # the template: no ids in labels
        requests.labels(name, request.method, str(response.status_code)).inc()
        latency.labels(name).observe(time.perf_counter() - began)
        return response

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(exposition(registry), media_type=CONTENT_TYPE)

    # -------------------------------------------------------------- identity
    def _cookie_value(manager: str, now: datetime) -> str:
        exp = int((now + timedelta(hours=12)).timestamp())
        mac = hmac.new(secret, f"{manager}|{exp}".encode(), hashlib.sha256).hexdigest()
        return f"{manager}|{exp}|{mac}"

    def _from_cookie(value: str | None) -> str | None:
        if not value or value.count("|") != 2:
            return None
        manager, exp, mac = value.split("|")
        good = hmac.new(secret, f"{manager}|{exp}".encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(good, mac) or not exp.isdigit():
            return None
        if int(exp) < clock().timestamp() or manager not in directory.managers:
            return None
        return manager

    def api_manager(request: Request) -> str:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            manager = by_hash.get(hash_token(auth[7:].strip()))
            if manager is not None:
                return manager
        raise HTTPException(401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"})

    Me = Annotated[str, Depends(api_manager)]

    async def record(manager: str, kind: str, customer: str | None, **extra: Any) -> ActionOut:
        now = clock()
        event = {
            "action_id": str(uuid.uuid4()),
            "kind": kind,
            "customer_id": customer,
            "by": manager,
            "at": now.isoformat(),
            **extra,
        }
        key = (customer or manager).encode()
        await kafka.producer.send_and_wait(ACTIONS_TOPIC, json.dumps(event).encode(), key=key)
        view.fold(ACTIONS_TOPIC, event, now)
        actions.labels(kind).inc()
        return ActionOut(
            action_id=event["action_id"],
            kind=kind,
            by=manager,
            at=event["at"],
            customer_id=customer,
        )

    def lang_of(manager: str) -> str:
        return directory.language(manager)

    def item_or_404(manager: str, customer_id: str) -> Any:
        item = view.open_item(manager, customer_id)
        if item is None:
            raise HTTPException(404, "no open alert for this customer in your inbox")
        return item

    # -------------------------------------------------------------- API
    @app.get("/api/alerts", response_model=list[AlertOut], responses=_ERRORS, tags=["alerts"])
    async def list_alerts(me: Me) -> list[AlertOut]:
        """The open alerts you can see, most value at risk first."""
        return [_alert_out(a, it, lang_of(me)) for a, it in view.alerts_for(me)]

    @app.get(
        "/api/customers/{customer_id}",
        response_model=CustomerOut,
        responses=_ERRORS | {404: {"description": "not in your inbox"}},
        tags=["alerts"],
    )
    async def customer(customer_id: str, me: Me) -> CustomerOut:
        item = item_or_404(me, customer_id)
        return CustomerOut(
            customer_id=customer_id,
            alert=_alert_out(item.alert, item, lang_of(me)),
            scores=[
                ScorePoint(as_of=t, churn_probability=p)
                for t, p in view.scores.get(customer_id, ())
            ],
            outcomes=[str(o.get("outcome")) for o in view.outcomes.get(customer_id, [])],
        )

    @app.post(
        "/api/customers/{customer_id}/acknowledge",
        response_model=ActionOut,
        responses=_ERRORS | {404: {"description": "not in your inbox"}},
        tags=["actions"],
    )
    async def acknowledge(customer_id: str, me: Me) -> ActionOut:
        item_or_404(me, customer_id)
        return await record(me, "acknowledge", customer_id)

    @app.post(
        "/api/customers/{customer_id}/snooze",
        response_model=ActionOut,
        responses=_ERRORS | {404: {"description": "not in your inbox"}},
        tags=["actions"],
    )
    async def snooze(customer_id: str, body: SnoozeIn, me: Me) -> ActionOut:
        item_or_404(me, customer_id)
        until = clock() + timedelta(hours=body.hours)
        return await record(me, "snooze", customer_id, until=until.isoformat())

    @app.post(
        "/api/customers/{customer_id}/outcome",
        response_model=ActionOut,
        responses=_ERRORS | {404: {"description": "not in your inbox"}},
        tags=["actions"],
    )
    async def outcome(customer_id: str, body: OutcomeIn, me: Me) -> ActionOut:
        item_or_404(me, customer_id)
        return await record(me, "outcome", customer_id, outcome=body.outcome, note=body.note)

    @app.post(
        "/api/silences",
        response_model=ActionOut,
        responses=_ERRORS | {404: {"description": "not yours to silence"}},
        tags=["actions"],
    )
    async def silence(body: SilenceIn, me: Me) -> ActionOut:
        if body.scope == "manager" and body.target not in view.sees(me):
            raise HTTPException(404, "not yours to silence")
        if body.scope == "customer":
            item_or_404(me, body.target)
        until = clock() + timedelta(days=body.days)
        return await record(
            me,
            "silence",
            body.target if body.scope == "customer" else None,
            scope=body.scope,
            target=body.target,
            until=until.isoformat(),
            reason=body.reason,
        )

    # -------------------------------------------------------------- pages
    def page_manager(request: Request) -> str | None:
        return _from_cookie(request.cookies.get(COOKIE))

    @app.get("/", include_in_schema=False)
    async def home(request: Request) -> Response:
        if page_manager(request):
            return RedirectResponse("/inbox", 303)
        return HTMLResponse(_page("Sign in", _SIGN_IN.format(error="")))

    @app.post("/signin", include_in_schema=False)
    async def signin(manager: Annotated[str, Form()], token: Annotated[str, Form()]) -> Response:
        if by_hash.get(hash_token(token)) != manager:
            body = _SIGN_IN.format(error='<p class="error">Unknown manager or wrong token.</p>')
            return HTMLResponse(_page("Sign in", body), 401)
        resp = RedirectResponse("/inbox", 303)
        resp.set_cookie(COOKIE, _cookie_value(manager, clock()), httponly=True, samesite="strict")
        return resp

    @app.post("/signout", include_in_schema=False)
    async def signout() -> Response:
        resp = RedirectResponse("/", 303)
        resp.delete_cookie(COOKIE)
        return resp

    @app.get("/inbox", include_in_schema=False)
    async def inbox(request: Request) -> Response:
        me = page_manager(request)
        if me is None:
            return RedirectResponse("/", 303)
        rows = [_alert_out(a, it, lang_of(me)) for a, it in view.alerts_for(me)]
        return HTMLResponse(_page(f"Inbox of {me}", _inbox_html(me, rows)))

    @app.get("/inbox/{customer_id}", include_in_schema=False)
    async def inbox_customer(customer_id: str, request: Request) -> Response:
        me = page_manager(request)
        if me is None:
            return RedirectResponse("/", 303)
        item = view.open_item(me, customer_id)
        if item is None:
            return HTMLResponse(_page("Not found", "<p>Not in your inbox.</p>"), 404)
        a = _alert_out(item.alert, item, lang_of(me))
        points = list(view.scores.get(customer_id, ()))
        return HTMLResponse(_page(f"Customer {customer_id}", _customer_html(a, points)))

    @app.post("/inbox/{customer_id}/{what}", include_in_schema=False)
    async def inbox_action(
        customer_id: str,
        what: str,
        request: Request,
        outcome: Annotated[str, Form()] = "",
    ) -> Response:
        me = page_manager(request)
        if me is None:
            return RedirectResponse("/", 303)
        if view.open_item(me, customer_id) is None:
            return HTMLResponse(_page("Not found", "<p>Not in your inbox.</p>"), 404)
        if what == "acknowledge":
            await record(me, "acknowledge", customer_id)
        elif what == "snooze":
            until = clock() + timedelta(hours=24)
            await record(me, "snooze", customer_id, until=until.isoformat())
        elif what == "outcome" and outcome in OUTCOMES:
            await record(me, "outcome", customer_id, outcome=outcome, note="")
        else:
            return HTMLResponse(_page("Bad request", "<p>Unknown action.</p>"), 400)
        return RedirectResponse("/inbox", 303)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, object]:
        return {"ready": kafka.ready.is_set(), "open_alerts": len(view.notifier.open)}

    return app, view


async def _follow(bootstrap: str, view: InboxView, ready: asyncio.Event) -> None:
    """Fold the three topics from their start, then keep following them."""
    from aiokafka import AIOKafkaConsumer

    from stream._lag import _true_ends

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        from aiokafka.structs import TopicPartition

        await consumer.topics()
        topics = (ALERTS_TOPIC, ACTIONS_TOPIC, SCORES_TOPIC)
        tps = [
            TopicPartition(t, p)
            for t in topics
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]
        ends = await _true_ends(consumer, tps)
        consumer.assign(tps)
        if tps:
            await consumer.seek_to_beginning(*tps)
        caught_up = False
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            records = sorted(
                (
                    (r.timestamp, tp.topic, r.value, tp, r.offset)
                    for tp, rs in batch.items()
                    for r in rs
                ),
                key=lambda x: x[0],
            )
            for ts, topic, value, tp, offset in records:
                try:
                    view.fold(topic, json.loads(value), datetime.fromtimestamp(ts / 1000, tz=UTC))
                except (ValueError, KeyError, TypeError):
                    logger.warning("skipping an unreadable record at %s:%s", tp, offset)
            if not caught_up:
                positions = {tp: await consumer.position(tp) for tp in tps}
                if all(positions[tp] >= ends[tp] for tp in tps):
                    caught_up = True
                    ready.set()
    finally:
        await consumer.stop()


# ------------------------------------------------------------------ HTML
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:60rem;color:#222}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.4rem;text-align:left;vertical-align:top}
.sev-critical{color:#b00020;font-weight:bold}.sev-high{color:#c45100}.error{color:#b00020}
form.inline{display:inline}button{margin:.1rem}
"""
_SIGN_IN = """<h1>Managers' inbox</h1>{error}
<form method="post" action="/signin">
<label>Manager id <input name="manager" id="manager" required></label>
<label>Token <input name="token" id="token" type="password" required></label>
<button type="submit" id="signin">Sign in</button></form>"""


def _page(title: str, body: str) -> str:
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def _money(minor: float) -> str:
    return f"{minor / 100:,.0f}"


def _inbox_html(me: str, rows: list[AlertOut]) -> str:
    out = [
        f"<h1>Inbox of {html.escape(me)}</h1>",
        '<form method="post" action="/signout" class="inline"><button>Sign out</button></form>',
        f"<p>{len(rows)} open alert(s), most value at risk first.</p>",
        "<table><tr><th>Customer</th><th>Risk</th><th>Value at risk</th><th>Why</th>"
        "<th>Suggested</th><th></th></tr>",
    ]
    for a in rows:
        cid = html.escape(a.customer_id)
        reasons = "".join(f"<li>{html.escape(r.text)}</li>" for r in a.reasons)
        state = "acknowledged" if a.acknowledged else "new"
        options = "".join(f'<option value="{o}">{o.replace("_", " ")}</option>' for o in OUTCOMES)
        out.append(
            f'<tr class="alert {state}" id="alert-{cid}" data-customer="{cid}">'
            f'<td><a href="/inbox/{cid}">{cid}</a><br><span class="sev-{html.escape(a.severity)}">'
            f"{html.escape(a.severity)}</span></td>"
            f"<td>{a.churn_probability:.0%}</td><td>{_money(a.value_at_risk_minor)}</td>"
            f"<td><ul>{reasons}</ul></td><td>{html.escape(a.action_text)}</td><td>"
            f'<form method="post" action="/inbox/{cid}/acknowledge" class="inline">'
            f'<button class="ack" {"disabled" if a.acknowledged else ""}>Acknowledge</button></form>'
            f'<form method="post" action="/inbox/{cid}/snooze" class="inline">'
            f'<button class="snooze">Snooze 24h</button></form>'
            f'<form method="post" action="/inbox/{cid}/outcome" class="inline">'
            f'<select name="outcome" class="outcome">{options}</select>'
            f'<button class="record">Record outcome</button></form></td></tr>'
        )
    out.append("</table>")
    return "".join(out)


def _sparkline(points: list[tuple[str, float]]) -> str:
    if len(points) < 2:
        return "<p>Not enough scores for a chart yet.</p>"
    w, h = 300, 60
    xs = [i * w / (len(points) - 1) for i in range(len(points))]
    ys = [h - p * h for _, p in points]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))
    return (
        f'<svg class="history" width="{w}" height="{h}" viewBox="0 0 {w} {h}">'
        f'<polyline fill="none" stroke="#c45100" stroke-width="2" points="{path}"/></svg>'
    )


def _customer_html(a: AlertOut, points: list[tuple[str, float]]) -> str:
    reasons = "".join(f"<li>{html.escape(r.text)}</li>" for r in a.reasons)
    return (
        f"<h1>Customer {html.escape(a.customer_id)}</h1>"
        f"<p>Churn risk {a.churn_probability:.0%}; value at risk {_money(a.value_at_risk_minor)}; "
        f"{html.escape(a.severity)} ({html.escape(a.rule)})</p>"
        f"<h2>Why</h2><ul>{reasons}</ul><h2>Suggested</h2><p>{html.escape(a.action_text)}</p>"
        f"<h2>Churn risk over time</h2>{_sparkline(points)}"
        '<p><a href="/inbox">Back to the inbox</a></p>'
    )
