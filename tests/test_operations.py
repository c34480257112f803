"""What operators rely on: metrics, the API reference, structured logs, and a clean SIGTERM.

Method: scrape /metrics and parse it as Prometheus does; validate /openapi.json with an OpenAPI 3.1
validator and compare it with the route table; capture log events as data; send SIGTERM to a real
`inventoryd serve` under load and check that it drains, answers, and exits 0 in time.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import structlog
from openapi_spec_validator import validate

from inventoryd.cli import SHUTDOWN_TIMEOUT_S
from inventoryd.config import Settings
from inventoryd.http import keys
from inventoryd.http.routes import ROUTES
from inventoryd.metrics import Histogram
from tests.helpers import ADMIN, FakeClock, create_event, free_port, make_api_token, running_server, samples, wait_ready, wait_until


async def test_metrics(client: Any) -> None:
    event = await create_event(client, ticket_types=[{"code": "GA", "name": "GA", "price": 1, "capacity": 3}])
    for user in ("a", "b", "c", "d"):
        await client.post(f"/v1/events/{event['id']}/reservations", json={"ticket_type": "GA", "quantity": 1, "user_id": user})
    response = await client.get("/metrics")
    assert response.status == 200 and response.content_type == "text/plain"
    found = samples(await response.text())
    route = "/v1/events/{event_id}/reservations"
    assert found[("inventoryd_http_requests_total", (("method", "POST"), ("route", route), ("status", "201")))] == 3
    assert found[("inventoryd_http_requests_total", (("method", "POST"), ("route", route), ("status", "409")))] == 1
    assert found[("inventoryd_http_request_duration_seconds_count", (("method", "POST"), ("route", route)))] == 4
    assert found[("inventoryd_reservations_total", (("outcome", "held"),))] == 3
    assert found[("inventoryd_reservations_total", (("outcome", "sold_out"),))] == 1
    assert found[("inventoryd_journal_commit_duration_seconds_count", ())] >= 4
    assert found[("inventoryd_journal_commit_records_sum", ())] >= 4
    assert found[("inventoryd_journal_wait_seconds_count", ())] == 0  # one buyer at a time: no group to wait for
    assert found[("inventoryd_actor_batch_messages_count", ())] >= 4
    assert found[("inventoryd_actors", ())] == 1 and found[("inventoryd_actors_running", ())] == 1
    assert found[("inventoryd_ready", ())] == 1
    assert ("inventoryd_actor_restarts_total", ()) in found and ("inventoryd_recovery_duration_seconds", ()) in found


async def test_metrics_token_guards_metrics_when_set(start: Any, database_url: str) -> None:
    metrics_token = "metrics-token-0123456789abcdef"
    client = await start(headers=None, settings={"metrics_token": metrics_token})
    service = await make_api_token(database_url, "service", "scraper")
    answers = {}
    for who, headers in {
        "nobody": {},
        "metrics token": {"Authorization": f"Bearer {metrics_token}"},
        "admin": ADMIN,
        "service": {"Authorization": f"Bearer {service}"},
        "wrong token": {"Authorization": f"Bearer {metrics_token}x"},
    }.items():
        response = await client.get("/metrics", headers=headers)
        answers[who] = (response.status, response.content_type)
    assert answers == {
        "nobody": (401, "application/problem+json"),
        "metrics token": (200, "text/plain"),
        "admin": (200, "text/plain"),
        "service": (401, "application/problem+json"),
        "wrong token": (401, "application/problem+json"),
    }
    # The token guards /metrics only: the other public routes stay public, and it opens nothing else.
    for path in ("/openapi.json", "/docs", "/healthz", "/v1/events"):
        assert (await client.get(path)).status == 200, path
    assert (await client.post("/v1/events", json={}, headers={"Authorization": f"Bearer {metrics_token}"})).status == 401


async def test_metrics_are_public_without_a_metrics_token(start: Any) -> None:
    client = await start(headers=None)
    assert (await client.get("/metrics")).status == 200


def test_a_short_metrics_token_is_refused() -> None:
    with pytest.raises(SystemExit, match="INVENTORYD_METRICS_TOKEN"):
        Settings(metrics_token="short")


def test_histograms_count_as_prometheus_buckets_do() -> None:
    # A bucket counts the values up to and including its bound; the last one is +Inf.
    histogram = Histogram((1, 2, 4))
    for value in (0.5, 1, 1.5, 4, 9):
        histogram.observe(value)
    assert histogram.cumulative() == [("1", 2), ("2", 3), ("4", 4), ("+Inf", 5)]
    assert histogram.sum == 16


async def test_openapi_document_is_valid_and_complete(client: Any) -> None:
    response = await client.get("/openapi.json")
    assert response.status == 200
    document = await response.json()
    validate(document)
    assert document["openapi"] == "3.1.0"
    documented = {(method.upper(), path) for path, operations in document["paths"].items() for method in operations}
    assert documented == {(route.method, route.path) for route in ROUTES}
    operation_ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(operation_ids) == len(set(operation_ids))
    reserve = document["paths"]["/v1/events/{event_id}/reservations"]["post"]
    assert {p["name"] for p in reserve["parameters"]} == {"event_id", "Idempotency-Key"}
    assert {"201", "202", "401", "403", "404", "409", "422", "429", "503"} <= set(reserve["responses"])
    assert reserve["security"] == [{"bearer": []}]
    assert document["paths"]["/v1/events"]["get"]["security"] == []
    schema = document["components"]["schemas"]["ReservationIn"]
    assert schema["properties"]["quantity"]["minimum"] == 1 and schema["additionalProperties"] is False


async def test_docs_page_works_offline(client: Any) -> None:
    page = await client.get("/docs")
    assert page.status == 200 and page.content_type == "text/html"
    html = await page.text()
    assert "/docs/static/swagger-ui-bundle.js" in html and "http" not in html.replace("http-equiv", "")
    for asset in ("/docs/static/swagger-ui-bundle.js", "/docs/static/swagger-ui.css", "/docs/init.js"):
        response = await client.get(asset)
        assert response.status == 200, asset
    assert "script-src" not in page.headers["Content-Security-Policy"] or "'self'" in page.headers["Content-Security-Policy"]


async def test_one_access_line_per_request_and_domain_events(start: Any) -> None:
    clock = FakeClock()
    client = await start(clock=clock, access_log=True)
    with structlog.testing.capture_logs() as logs:
        event = await create_event(client, hold_seconds=60, ticket_types=[{"code": "GA", "name": "GA", "price": 1, "capacity": 2}])
        response = await client.post(
            f"/v1/events/{event['id']}/reservations",
            json={"ticket_type": "GA", "quantity": 2, "user_id": "u"},
            headers={"X-Request-ID": "req-42"},
        )
        assert response.headers["X-Request-ID"] == "req-42"
        clock.advance(61)
        registry = client.app[keys.REGISTRY]
        registry.get(event["id"]).wake_expiry()
        await wait_until(lambda: any(entry["event"] == "holds_expired" for entry in logs))
    access = [entry for entry in logs if entry["event"] == "request"]
    assert len(access) == 2
    reserve_line = next(entry for entry in access if entry["request_id"] == "req-42")
    assert reserve_line["route"] == "/v1/events/{event_id}/reservations"
    assert reserve_line["status"] == 201 and reserve_line["method"] == "POST"
    assert reserve_line["principal"] == "admin:bootstrap" and reserve_line["duration_ms"] > 0
    events = {entry["event"] for entry in logs}
    assert {"event_created", "sold_out", "holds_expired"} <= events
    sold_out = [entry for entry in logs if entry["event"] == "sold_out"]
    # Once, when the last seats went: not again when the holds expired (seats came back).
    assert len(sold_out) == 1
    assert sold_out[0]["event_id"] == event["id"] and sold_out[0]["ticket_type"] == "GA" and sold_out[0]["capacity"] == 2


async def test_sigterm_drains_and_exits_cleanly(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    env = {"INVENTORYD_DRAIN_GRACE_S": "0.5", "INVENTORYD_ACCESS_LOG": "1"}
    with running_server(database_url, port, env=env, log_path=log_path) as process:
        async with aiohttp.ClientSession(headers=ADMIN, timeout=aiohttp.ClientTimeout(total=30)) as session:
            await wait_ready(session, base, process)
            async with session.post(
                f"{base}/v1/events",
                json={"name": "Drain", "starts_at": "2027-01-01T00:00:00Z", "currency": "EUR",
                      "ticket_types": [{"code": "GA", "name": "GA", "price": 1, "capacity": 100000}]},
            ) as response:
                event = await response.json()
            answered: list[dict[str, Any]] = []
            stop = asyncio.Event()

            async def buyer(index: int) -> None:
                attempt = 0
                while not stop.is_set():
                    attempt += 1
                    try:
                        async with session.post(
                            f"{base}/v1/events/{event['id']}/reservations",
                            json={"ticket_type": "GA", "quantity": 1, "user_id": f"u{index}-{attempt}"},
                        ) as response:
                            if response.status == 201:
                                answered.append(await response.json())
                            else:
                                assert response.status == 503, await response.text()
                    except aiohttp.ClientConnectionError:
                        return  # the listener closed

            buyers = [asyncio.create_task(buyer(index)) for index in range(16)]
            await wait_until(lambda: len(answered) >= 100)
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            # While draining, readiness says no, and requests are still answered.
            await asyncio.sleep(0.1)
            async with session.get(f"{base}/readyz") as response:
                assert response.status == 503
            await asyncio.wait_for(asyncio.gather(*buyers), timeout=SHUTDOWN_TIMEOUT_S)
            stop.set()
            code = await asyncio.to_thread(process.wait, SHUTDOWN_TIMEOUT_S)
            assert code == 0, log_path.read_text()[-2000:]
            assert time.monotonic() - signalled < SHUTDOWN_TIMEOUT_S
    log_lines = [msgspec.json.decode(line) for line in log_path.read_bytes().splitlines() if line.startswith(b"{")]
    assert [entry["event"] for entry in log_lines if entry["event"] in ("draining", "drained", "stopped")] == [
        "draining",
        "drained",
        "stopped",
    ]
    # The access lines (written in blocks) were all flushed by the drain: one per answer at least.
    reserve_lines = [
        entry for entry in log_lines
        if entry["event"] == "request" and entry["route"] == "/v1/events/{event_id}/reservations"
    ]
    assert sum(entry["status"] == 201 for entry in reserve_lines) >= len(answered)
    assert {"request_id", "method", "status", "duration_ms", "principal", "level", "timestamp"} <= set(reserve_lines[0])
    # Everything answered 201 is in the log.
    port = free_port()
    with running_server(database_url, port) as restarted:
        async with aiohttp.ClientSession(headers=ADMIN) as session:
            await wait_ready(session, f"http://127.0.0.1:{port}", restarted)
            async with session.get(f"http://127.0.0.1:{port}/v1/events/{event['id']}") as response:
                held = (await response.json())["ticket_types"][0]["held"]
    assert held == len(answered)
