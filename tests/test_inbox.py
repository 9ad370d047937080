"""The managers' inbox (`churn serve`) on the real broker: API with per-manager tokens,
only one's own customers (403/404 by URL and API), actions as events, headless
Chromium for the pages, and schemathesis against the OpenAPI spec."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from serving._inbox import hash_token
from serving._outbox import ACTIONS_TOPIC, ALERTS_TOPIC
from stream import Broker, read_topic
from tests.conftest import BIN, free_port, produce_json, stop

pytestmark = pytest.mark.integration

TOKENS = {"M1": "token-of-m1", "M2": "token-of-m2", "L1": "token-of-lead"}


def alert(customer: str, manager: str, var: float) -> dict[str, Any]:
    return {
        "alert_id": f"{customer}:high_churn_risk:2025-03-01T09:30:00+00:00",
        "customer_id": customer,
        "manager_id": manager,
        "branch_id": "B1",
        "rule": "high_churn_risk",
        "severity": "high",
        "as_of": "2025-03-01T09:30:00+00:00",
        "churn_probability": 0.5,
        "predicted_value_minor": var * 2,
        "value_at_risk_minor": var,
        "reasons": [
            {
                "driver": "salary",
                "weight": 0.8,
                "en": "salary credits stopped 34 days ago",
                "zh": "工资已停发34天",
            }
        ],
        "action": "payroll_offer",
    }


@dataclass
class Inbox:
    url: str
    proc: subprocess.Popen[bytes]
    bootstrap: str

    def call(self, method: str, path: str, who: str | None, body: Any = None) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if who:
            headers["Authorization"] = f"Bearer {TOKENS[who]}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")


@pytest.fixture(scope="module")
def inbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Inbox]:
    work = tmp_path_factory.mktemp("inbox")
    with Broker(free_port(), log=work / "broker.log") as broker:
        bootstrap = broker.url.removeprefix("kafka://")
        produce_json(
            bootstrap,
            ALERTS_TOPIC,
            [alert("C1", "M1", 300_000), alert("C2", "M1", 900_000), alert("C3", "M2", 500_000)],
        )
        produce_json(
            bootstrap,
            "customer.scores",
            [
                {
                    "customer_id": "C1",
                    "as_of": f"2025-02-{d:02d}T10:00:00+00:00",
                    "churn_probability": p,
                }
                for d, p in [(1, 0.1), (8, 0.2), (15, 0.35), (22, 0.5)]
            ],
        )
        managers = work / "managers.yaml"
        managers.write_text(
            "managers:\n"
            f"  M1: {{language: zh, token_sha256: {hash_token(TOKENS['M1'])}}}\n"
            f"  M2: {{language: en, token_sha256: {hash_token(TOKENS['M2'])}}}\n"
            f"  L1: {{language: en, team: [M1], token_sha256: {hash_token(TOKENS['L1'])}}}\n"
        )
        port = free_port()
        env = {
            **os.environ,
            "CHURN_KAFKA_URL": broker.url,
            "CHURN_MANAGERS": str(managers),
            "CHURN_INBOX_PORT": str(port),
            "CHURN_INBOX_SECRET": "a-test-session-key",
        }
        log = (work / "serve.log").open("wb")
        proc = subprocess.Popen(
            [str(BIN / "churn"), "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (work / "serve.log").read_text()
            assert time.monotonic() < deadline, "the inbox did not become ready"
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2) as resp:
                    if json.loads(resp.read())["ready"]:
                        break
            except OSError:
                pass
            time.sleep(0.5)
        try:
            yield Inbox(url, proc, bootstrap)
        finally:
            stop(proc)
            log.close()


def actions(bootstrap: str) -> list[dict[str, Any]]:
    return [json.loads(v) for _, v in read_topic(bootstrap, ACTIONS_TOPIC, idle=1)]


def test_each_manager_sees_only_their_own_alerts_and_a_lead_their_team(inbox: Inbox) -> None:
    status, mine = inbox.call("GET", "/api/alerts", "M1")
    assert status == 200
    assert [a["customer_id"] for a in mine] == ["C2", "C1"]  # most value at risk first
    assert mine[0]["reasons"][0]["text"] == "工资已停发34天"  # M1 reads Chinese
    assert mine[0]["action_text"] == "提供代发工资服务"
    assert [a["customer_id"] for a in inbox.call("GET", "/api/alerts", "M2")[1]] == ["C3"]
    lead = inbox.call("GET", "/api/alerts", "L1")[1]
    assert {a["customer_id"] for a in lead} == {"C1", "C2"}
    assert lead[0]["reasons"][0]["text"] == "salary credits stopped 34 days ago"


def test_another_managers_customer_is_not_found_and_no_token_is_refused(inbox: Inbox) -> None:
    assert inbox.call("GET", "/api/customers/C3", "M1")[0] == 404
    assert inbox.call("POST", "/api/customers/C3/acknowledge", "M1")[0] == 404
    assert inbox.call("GET", "/api/customers/C3", "M2")[0] == 200
    assert inbox.call("GET", "/api/alerts", None)[0] == 401
    assert inbox.call("GET", "/api/customers/C1", None)[0] == 401
    status, detail = inbox.call("GET", "/api/customers/C1", "M1")
    assert status == 200
    assert [s["churn_probability"] for s in detail["scores"]] == [0.1, 0.2, 0.35, 0.5]


def test_api_actions_are_events_on_manager_actions(inbox: Inbox) -> None:
    status, out = inbox.call("POST", "/api/customers/C3/snooze", "M2", {"hours": 4})
    assert status == 200
    assert inbox.call("POST", "/api/customers/C3/outcome", "M2", {"outcome": "won"})[0] == 422
    events = {e["action_id"]: e for e in actions(inbox.bootstrap)}
    assert events[out["action_id"]]["kind"] == "snooze"
    assert events[out["action_id"]]["by"] == "M2"
    assert events[out["action_id"]]["customer_id"] == "C3"
    assert inbox.call("GET", "/api/customers/C3", "M2")[1]["alert"]["snoozed_until"]


def test_the_inbox_exports_its_metrics_without_customer_ids(inbox: Inbox) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from monitoring import SERVE_METRICS

    assert inbox.call("POST", "/api/customers/C3/acknowledge", "M2")[0] == 200
    with urllib.request.urlopen(inbox.url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    exported = {n + "_total" if f.type == "counter" else n: f.type for n, f in families.items()}
    assert set(SERVE_METRICS) <= set(exported)
    acks = [
        s for s in families["churn_inbox_actions"].samples if s.labels == {"kind": "acknowledge"}
    ]
    assert acks
    assert acks[0].value >= 1
    routes = {s.labels["route"] for s in families["churn_inbox_requests"].samples}
    assert "/api/customers/{customer_id}/acknowledge" in routes
    assert "C3" not in text


def test_a_manager_signs_in_acknowledges_and_records_an_outcome_in_chromium(
    inbox: Inbox, tmp_path: Path
) -> None:
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,900",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        driver.get(inbox.url + "/")
        driver.find_element(By.ID, "manager").send_keys("M1")
        driver.find_element(By.ID, "token").send_keys(TOKENS["M1"])
        # each action (signing in too) posts a form and the page comes back: wait for
        # the new page's state (Chrome may report the old page's nodes as detached)
        wait = WebDriverWait(driver, 10, ignored_exceptions=(WebDriverException,))
        driver.find_element(By.ID, "signin").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr.alert"))
        rows = driver.find_elements(By.CSS_SELECTOR, "tr.alert")
        assert [r.get_attribute("data-customer") for r in rows] == ["C2", "C1"]
        assert "C3" not in driver.page_source
        assert "工资已停发34天" in driver.page_source
        driver.find_element(By.CSS_SELECTOR, "#alert-C1 button.ack").click()
        wait.until(
            lambda d: (
                "acknowledged" in (d.find_element(By.ID, "alert-C1").get_attribute("class") or "")
            )
        )
        Select(driver.find_element(By.CSS_SELECTOR, "#alert-C2 select.outcome")).select_by_value(
            "retained"
        )
        driver.find_element(By.CSS_SELECTOR, "#alert-C2 button.record").click()
        wait.until(lambda d: not d.find_elements(By.ID, "alert-C2"))  # the case is closed
        shot = tmp_path / "inbox.png"
        driver.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert shot.stat().st_size > 5000
        print(f"inbox screenshot: {shot}")
        driver.get(inbox.url + "/inbox/C3")
        assert "Not in your inbox" in driver.page_source
        driver.get(inbox.url + "/inbox/C1")
        assert driver.find_elements(By.CSS_SELECTOR, "svg.history polyline")
    finally:
        driver.quit()
    events = actions(inbox.bootstrap)
    assert any(
        e["kind"] == "acknowledge" and e["customer_id"] == "C1" and e["by"] == "M1" for e in events
    )
    assert any(
        e["kind"] == "outcome" and e["outcome"] == "retained" and e["customer_id"] == "C2"
        for e in events
    )


def test_the_api_survives_schemathesis_without_a_server_error(inbox: Inbox, tmp_path: Path) -> None:
    result = subprocess.run(
        [
            str(BIN / "schemathesis"),
            "run",
            inbox.url + "/openapi.json",
            "-H",
            f"Authorization: Bearer {TOKENS['M2']}",
            "--checks",
            "not_a_server_error,status_code_conformance,response_schema_conformance",
            "--max-examples",
            "25",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
