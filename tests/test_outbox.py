"""The outbox: the change feed, webhooks, confirmation emails, the CSV report, erasure (issue 22).

Method: the real service on the test's PostgreSQL; a real HTTP receiver (aiohttp, in this process,
on loopback) that answers as each test tells it (200, 500, too late, or not at all: its listener
closed), and a real SMTP server (aiosmtpd) on loopback. What is judged is what the receiver and the
mail server got, against the log itself (the feed, the journal, `audit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import random
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from email import message_from_bytes
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiosmtpd.controller import Controller

from inventoryd.audit import audit
from inventoryd.outbox.webhooks import DELIVERY_HEADER, SIGNATURE_HEADER, verify
from tests.helpers import ADMIN, create_event, event_body, free_port, make_api_token, running_server, wait_ready, wait_until

# Retries within the test's seconds: a failed delivery is tried again after 20 ms, 40 ms, …
FAST = {"webhooks_allow_private": True, "webhook_retry_base_s": 0.02, "webhook_timeout_s": 0.5, "webhook_attempts_max": 100}
EVERY_TYPE = ["reservation.held", "reservation.confirmed", "reservation.cancelled", "reservation.expired", "event.updated"]


@dataclass
class Receiver:
    """A webhook endpoint on loopback. `answer(delivery)` says what to do with each request: a
    status to answer, or "slow" (answer after the service's timeout)."""

    port: int = field(default_factory=free_port)
    answer: Callable[[dict[str, Any]], int | str] = lambda _: 200
    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.got.append((dict(request.headers), body))
        verdict = self.answer(json.loads(body))
        if verdict == "slow":
            await asyncio.sleep(1.0)
            verdict = 200
        return web.Response(status=int(verdict), text="thanks" if verdict == 200 else "no")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        """Gone: connections to it are refused until it starts again."""
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def deliveries(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.got]

    def delivered_seqs(self, event_id: str) -> list[int]:
        return [delivery["seq"] for delivery in self.deliveries() if delivery["event_id"] == event_id]


@contextlib.asynccontextmanager
async def receiving(**options: Any) -> AsyncIterator[Receiver]:
    receiver = Receiver(**options)
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


async def eventually(condition: Callable[[], Any], timeout_s: float = 10.0) -> None:
    """Until the async `condition()` holds, looking every 50 ms."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def subscribe(client: Any, url: str, types: list[str], **extra: Any) -> dict[str, Any]:
    response = await client.post("/v1/webhooks", json={"url": url, "types": types, **extra})
    assert response.status == 201, await response.text()
    return await response.json()


async def feed(client: Any, event_id: str, after: int = 0, limit: int = 1000) -> dict[str, Any]:
    response = await client.get(f"/v1/events/{event_id}/changes", params={"after": after, "limit": limit})
    assert response.status == 200, await response.text()
    return await response.json()


async def all_changes(client: Any, event_id: str) -> list[dict[str, Any]]:
    changes, after = [], 0
    while True:
        page = await feed(client, event_id, after, 7)
        changes += page["items"]
        if page["next_after"] == after:
            return changes
        after = page["next_after"]


async def some_trade(client: Any, event_id: str, buyers: int, *, rng: random.Random) -> None:
    """Buyers reserve; most confirm, some cancel, the rest let their hold stand."""
    for index in range(buyers):
        response = await client.post(
            f"/v1/events/{event_id}/reservations", json={"ticket_type": "GA", "quantity": 1, "user_id": f"buyer-{index}"}
        )
        assert response.status == 201, await response.text()
        reservation = await response.json()
        roll = rng.random()
        if roll < 0.7:
            assert (await client.post(f"/v1/reservations/{reservation['id']}/confirm")).status == 200
        elif roll < 0.85:
            assert (await client.post(f"/v1/reservations/{reservation['id']}/cancel")).status == 200


def check_in_order_and_signed(receiver: Receiver, secret: str, event_id: str, wanted: list[int]) -> None:
    """Every wanted change arrived; in log order (a repeat is of the change just sent, never an
    older one after a newer); each signature verifies; a repeat carries the same delivery id."""
    seqs = receiver.delivered_seqs(event_id)
    assert sorted(set(seqs)) == wanted, (seqs, wanted)
    assert seqs == sorted(seqs), f"out of order: {seqs}"
    ids: dict[int, str] = {}
    for headers, body in receiver.got:
        delivery = json.loads(body)
        assert verify(secret, body, headers[SIGNATURE_HEADER]), headers
        assert headers[DELIVERY_HEADER] == delivery["id"]
        assert ids.setdefault(delivery["seq"], delivery["id"]) == delivery["id"], "a repeat with another delivery id"


# -- the feed ---------------------------------------------------------------------------------------


async def test_the_feed_resumes_from_every_position_and_is_the_log(start: Any, database_url: str) -> None:
    client = await start()
    event = await create_event(client)
    await some_trade(client, event["id"], 12, rng=random.Random(1))
    assert (await client.patch(f"/v1/events/{event['id']}", json={"venue": "Hall B"})).status == 200
    changes = await all_changes(client, event["id"])
    seqs = [change["seq"] for change in changes]
    assert seqs == sorted(seqs) and changes[0]["type"] == "event.created" and changes[-1]["type"] == "event.updated"
    assert {change["type"] for change in changes} >= {"reservation.held", "reservation.confirmed", "reservation.cancelled"}
    for change in changes:
        assert set(change) == {"seq", "type", "at", "data"}
        assert "email" not in json.dumps(change["data"])
    # From every position: exactly the changes after it.
    for position in range(seqs[-1] + 1):
        page = await feed(client, event["id"], position)
        assert [c["seq"] for c in page["items"]] == [s for s in seqs if s > position], position
    # The feed is the log: one change per record (every record of this event is public), as audit replays it.
    connection = await asyncpg.connect(database_url)
    try:
        logged = [row[0] for row in await connection.fetch("SELECT seq FROM journal WHERE event_id = $1 ORDER BY seq", event["id"])]
        results = await audit(connection, event["id"])
    finally:
        await connection.close()
    assert logged == seqs
    assert len(results) == 1 and not results[0].problems and results[0].records == len(seqs)


async def test_bad_webhooks_are_refused_and_change_nothing(start: Any, database_url: str) -> None:
    client = await start(settings={"rate_limits": False})
    event = await create_event(client)
    cases = [
        ({"url": "http://127.0.0.1:9/hook", "types": ["reservation.held"]}, 422, "$.url"),  # loopback, not allowed
        ({"url": "http://10.1.2.3/hook", "types": ["reservation.held"]}, 422, "$.url"),
        ({"url": "http://169.254.169.254/latest", "types": ["reservation.held"]}, 422, "$.url"),
        ({"url": "http://[::1]:8080/", "types": ["reservation.held"]}, 422, "$.url"),
        ({"url": "ftp://example.org/", "types": ["reservation.held"]}, 422, "$.url"),
        ({"url": "http://user:pw@example.org/", "types": ["reservation.held"]}, 422, "$.url"),
        ({"url": "http://no-such-host.invalid/", "types": ["reservation.held"]}, 422, "$.url"),
        ({"url": "https://example.org/", "types": ["reservation.sold"]}, 422, "$.types[0]"),
        ({"url": "https://example.org/", "types": []}, 422, "$.types"),
        ({"url": "https://example.org/", "types": ["reservation.held", "reservation.held"]}, 422, "$.types"),
        ({"url": "https://example.org/", "types": ["reservation.held"], "event_id": "evt_nosuchevent"}, 404, "event_id"),
        ({"url": "https://example.org/", "types": ["reservation.held"], "colour": "red"}, 422, None),
    ]
    for body, status, field_name in cases:
        response = await client.post("/v1/webhooks", json=body)
        problem = await response.json()
        assert response.status == status and response.content_type == "application/problem+json", (body, problem)
        if field_name is not None:
            assert problem.get("field") == field_name, (body, problem)
    assert (await (await client.get("/v1/webhooks")).json())["items"] == []
    # Only organizers (their own events) and admins: not an attendee, a service, or another organizer.
    service = {"Authorization": f"Bearer {await make_api_token(database_url, 'service', 'storefront')}"}
    attendee = await account(client, "fan@example.org", "attendee")
    organizer = await account(client, "org@example.org", "organizer")
    other = await account(client, "other@example.org", "organizer")
    theirs = await client.post("/v1/events", json=event_body(), headers=other)
    assert theirs.status == 201
    good = {"url": "https://example.org/hook", "types": ["reservation.held"]}
    for headers, body in ((service, good), (attendee, good), (organizer, {**good, "event_id": (await theirs.json())["id"]})):
        response = await client.post("/v1/webhooks", json=body, headers=headers)
        assert response.status == 403 and (await response.json())["code"] == "forbidden", await response.text()
    assert (await (await client.get("/v1/webhooks")).json())["items"] == []
    assert event


async def account(client: Any, email: str, role: str) -> dict[str, str]:
    """A registered, logged-in account's headers."""
    response = await client.post("/v1/auth/register", json={"email": email, "password": "correct horse battery", "name": "N", "role": role})
    assert response.status == 201, await response.text()
    response = await client.post("/v1/auth/login", json={"email": email, "password": "correct horse battery"})
    assert response.status == 200, await response.text()
    return {"Authorization": f"Bearer {(await response.json())['access_token']}"}


async def test_a_chaotic_receiver_gets_every_change_in_order_signed(start: Any) -> None:
    client = await start(settings=FAST)
    event = await create_event(client)
    rng = random.Random(7)
    async with receiving() as receiver:
        hook = await subscribe(client, receiver.url, EVERY_TYPE)
        chaos = True

        def answer(_: dict[str, Any]) -> int | str:
            if not chaos:
                return 200
            return rng.choice([200, 200, 500, 503, "slow"])

        receiver.answer = answer
        trading = asyncio.ensure_future(some_trade(client, event["id"], 40, rng=random.Random(2)))
        for _ in range(3):  # and it goes away now and then: connections refused
            await asyncio.sleep(0.3)
            await receiver.stop()
            await asyncio.sleep(0.2)
            await receiver.start()
        await trading
        chaos = False
        wanted = [c["seq"] for c in await all_changes(client, event["id"]) if c["type"] in EVERY_TYPE]
        await wait_until(lambda: sorted(set(receiver.delivered_seqs(event["id"]))) == wanted, 30)
        check_in_order_and_signed(receiver, hook["secret"], event["id"], wanted)
        assert len(receiver.got) > len(wanted), "the chaos never made a delivery fail"
        # The delivery log says so too (it is written a moment after).
        log: list[dict[str, Any]] = []

        async def logged() -> bool:
            log[:] = (await (await client.get(f"/v1/webhooks/{hook['id']}/deliveries", params={"limit": 200})).json())["items"]
            return sorted(d["seq"] for d in log) == wanted and {d["status"] for d in log} == {"delivered"}

        await eventually(logged, 10)
        assert max(d["attempts"] for d in log) > 1
