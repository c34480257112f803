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
from datetime import UTC, datetime
from email import message_from_bytes
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web
from aiosmtpd.controller import Controller

from inventoryd import cli, limits
from inventoryd.audit import audit
from inventoryd.outbox.dispatcher import Pace
from inventoryd.outbox.webhooks import DELIVERY_HEADER, SIGNATURE_HEADER, verify
from persistence import outbox as outbox_store
from tests.helpers import (
    ADMIN,
    cluster_of,
    create_event,
    create_events,
    event_body,
    free_port,
    make_api_token,
    metric,
    running_server,
    wait_node_ready,
    wait_ready,
    wait_settled,
    wait_until,
)

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


async def test_a_failing_endpoint_holds_up_no_other_and_is_set_going_again(start: Any) -> None:
    client = await start(settings={**FAST, "webhook_attempts_max": 3})
    event = await create_event(client)
    async with receiving(answer=lambda _: 500) as failing, receiving() as healthy:
        broken = await subscribe(client, failing.url, ["reservation.held"])
        fine = await subscribe(client, healthy.url, ["reservation.held"])
        await some_trade(client, event["id"], 10, rng=random.Random(3))
        wanted = [c["seq"] for c in await all_changes(client, event["id"]) if c["type"] == "reservation.held"]
        await wait_until(lambda: sorted(set(healthy.delivered_seqs(event["id"]))) == wanted, 10)
        check_in_order_and_signed(healthy, fine["secret"], event["id"], wanted)

        async def failed() -> bool:
            return (await (await client.get(f"/v1/webhooks/{broken['id']}")).json())["status"] == "failed"

        await eventually(failed, 10)
        # Out of attempts at the first change: nothing after it was sent, nothing skipped.
        assert set(failing.delivered_seqs(event["id"])) == {wanted[0]} and len(failing.got) == 3
        log = (await (await client.get(f"/v1/webhooks/{broken['id']}/deliveries")).json())["items"]
        assert [(d["seq"], d["status"], d["attempts"], d["last_status"]) for d in log] == [(wanted[0], "failed", 3, 500)]
        # Mended, and the failed delivery retried by hand: from there, in order, all of it.
        failing.answer = lambda _: 200
        failing.got.clear()
        retried = await client.post(f"/v1/webhooks/{broken['id']}/deliveries/{log[0]['id']}/retry")
        assert retried.status == 202, await retried.text()
        await wait_until(lambda: sorted(set(failing.delivered_seqs(event["id"]))) == wanted, 10)
        check_in_order_and_signed(failing, broken["secret"], event["id"], wanted)
        assert (await (await client.get(f"/v1/webhooks/{broken['id']}")).json())["status"] == "active"
        # A delivered one (once the log says so), retried: sent once more, with its delivery id.
        async def delivered() -> bool:
            items = (await (await client.get(f"/v1/webhooks/{broken['id']}/deliveries", params={"limit": 200})).json())["items"]
            return {d["status"] for d in items} == {"delivered"}

        await eventually(delivered, 10)
        sent = len(failing.got)
        assert (await client.post(f"/v1/webhooks/{broken['id']}/deliveries/{log[0]['id']}/retry")).status == 202
        await wait_until(lambda: len(failing.got) == sent + 1, 10)
        assert failing.got[-1][0][DELIVERY_HEADER] == log[0]["id"]
        # Deleted: nothing more.
        assert (await client.delete(f"/v1/webhooks/{broken['id']}")).status == 204
        assert (await client.get(f"/v1/webhooks/{broken['id']}")).status == 404


async def test_kill_9_mid_delivery_skips_nothing(database_url: str, tmp_path: Any) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"INVENTORYD_WEBHOOKS_ALLOW_PRIVATE": "1", "INVENTORYD_WEBHOOK_RETRY_BASE_S": "0.02", "INVENTORYD_WEBHOOK_TIMEOUT_S": "2"}
    async with receiving() as receiver, aiohttp.ClientSession(headers=ADMIN) as session:

        class Client:  # the test client's calls, against the process
            async def post(self, path: str, **options: Any) -> aiohttp.ClientResponse:
                return await session.post(base + path, **options)

            async def get(self, path: str, **options: Any) -> aiohttp.ClientResponse:
                return await session.get(base + path, **options)

        slow_down = asyncio.Event()

        async def hook(request: web.Request) -> web.Response:  # 20 ms a delivery: a backlog builds
            body = await request.read()
            receiver.got.append((dict(request.headers), body))
            await asyncio.sleep(0.02)
            slow_down.set()
            return web.Response(text="ok")

        receiver._hook = hook  # type: ignore[method-assign]
        await receiver.stop()
        await receiver.start()
        client = Client()
        with running_server(database_url, port, env=env, log_path=tmp_path / "first.log") as process:
            await wait_ready(session, base, process)
            event = await create_event(client)
            hook_row = await subscribe(client, receiver.url, ["reservation.held", "reservation.confirmed"])
            await some_trade(client, event["id"], 60, rng=random.Random(4))
            await slow_down.wait()
            assert len(receiver.got) < 60, "everything was delivered before the kill: no test of it"
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
        before = len(receiver.got)
        with running_server(database_url, port, env=env, log_path=tmp_path / "second.log") as process:
            await wait_ready(session, base, process)
            wanted = [c["seq"] for c in await all_changes(client, event["id"]) if c["type"] in ("reservation.held", "reservation.confirmed")]
            await wait_until(lambda: sorted(set(receiver.delivered_seqs(event["id"]))) == wanted, 60)
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        assert len(receiver.got) > before
        seqs = receiver.delivered_seqs(event["id"])
        # In order within each life of the server; the second starts again at most where the first's cursor was saved.
        assert seqs[:before] == sorted(seqs[:before]) and seqs[before:] == sorted(seqs[before:])
        assert seqs[before] <= min((s for s in wanted if s > seqs[before - 1]), default=seqs[before - 1]), "a change was skipped"
        for headers, body in receiver.got:
            assert verify(hook_row["secret"], body, headers[SIGNATURE_HEADER])


class Mailbox:
    """What a real SMTP server (aiosmtpd, on loopback) was handed."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.refuse = False

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.refuse:
            return "451 try again later"
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


@contextlib.contextmanager
def mail_server() -> Any:
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield mailbox, f"smtp://127.0.0.1:{controller.port}"
    finally:
        controller.stop()


async def test_one_email_per_confirmation_also_retried_and_across_a_restart(start: Any) -> None:
    with mail_server() as (mailbox, url):
        settings = {"smtp_url": url, "smtp_from": "box-office@example.org", "webhook_retry_base_s": 0.02, "rate_limits": False}
        client = await start(settings=settings)
        event = await create_event(client, venue="Hall A")
        # A buyer a service reserves for, with the address it gives; and a registered attendee.
        given = await client.post(
            f"/v1/events/{event['id']}/reservations",
            json={"ticket_type": "GA", "quantity": 2, "user_id": "crm-77", "email": "buyer77@example.org"},
        )
        assert given.status == 201, await given.text()
        attendee = await account(client, "ada@example.org", "attendee")
        own = await client.post(f"/v1/events/{event['id']}/reservations", json={"ticket_type": "GA", "quantity": 1}, headers=attendee)
        assert own.status == 201, await own.text()
        # An attendee may not name another address.
        other = await client.post(
            f"/v1/events/{event['id']}/reservations", json={"ticket_type": "GA", "quantity": 1, "email": "x@example.org"}, headers=attendee
        )
        assert other.status == 403 and (await other.json())["field"] == "$.email"
        mailbox.refuse = True  # the first tries fail: retried, still once
        for reservation, headers in (((await given.json())["id"], ADMIN), ((await own.json())["id"], attendee)):
            for _ in range(3):  # the same confirmation, retried with its key
                confirmed = await client.post(
                    f"/v1/reservations/{reservation}/confirm", headers={**headers, "Idempotency-Key": f"confirm-{reservation}"}
                )
                assert confirmed.status == 200, await confirmed.text()
        await asyncio.sleep(0.3)
        mailbox.refuse = False
        await wait_until(lambda: len(mailbox.messages) == 2, 10)
        by_address = {message["To"]: message for message in mailbox.messages}
        assert set(by_address) == {"buyer77@example.org", "ada@example.org"}
        mail = by_address["buyer77@example.org"]
        body = mail.get_payload(decode=True).decode()
        assert mail["From"] == "box-office@example.org" and "Hot concert" in mail["Subject"]
        assert "Hall A" in body and "2 × GA" in body and "90.00 EUR" in body
        tickets = (await (await client.get(f"/v1/reservations/{(await given.json())['id']}")).json())["tickets"]
        assert all(ticket["id"] in body for ticket in tickets) and len(tickets) == 2
        await client.close()
        # Restarted on the same database: nothing sent again.
        again = await start(settings=settings)
        await asyncio.sleep(1.0)
        assert len(mailbox.messages) == 2
        await again.close()


async def test_erasure_leaves_no_trace_and_the_log_whole(start: Any, database_url: str) -> None:
    client = await start(settings={"rate_limits": False})
    event = await create_event(client)
    email, name = "erase.me@example.org", "Eraseme Person"
    registered = await client.post("/v1/auth/register", json={"email": email, "password": "correct horse battery", "name": name})
    assert registered.status == 201
    user_id = (await registered.json())["id"]
    tokens = await (await client.post("/v1/auth/login", json={"email": email, "password": "correct horse battery"})).json()
    me = {"Authorization": f"Bearer {tokens['access_token']}"}
    held = await client.post(f"/v1/events/{event['id']}/reservations", json={"ticket_type": "GA", "quantity": 2}, headers=me)
    assert held.status == 201
    assert (await client.post(f"/v1/reservations/{(await held.json())['id']}/confirm", headers=me)).status == 200
    # A service gave the same person's address for another reservation.
    given = await client.post(
        f"/v1/events/{event['id']}/reservations", json={"ticket_type": "GA", "quantity": 1, "user_id": user_id, "email": email}
    )
    assert given.status == 201
    connection = await asyncpg.connect(database_url)
    try:
        log_before = await connection.fetch("SELECT event_id, seq, kind, body::text FROM journal ORDER BY event_id, seq")
        before = (await (await client.get(f"/v1/events/{event['id']}")).json())["ticket_types"]
        assert (await client.delete("/v1/users/me", headers=me)).status == 204
        # No table holds the email or the name.
        tables = [row[0] for row in await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        for table in tables:
            found = await connection.fetchval(
                f'SELECT count(*) FROM "{table}" t WHERE t::text ILIKE $1 OR t::text ILIKE $2', f"%{email}%", f"%{name}%"
            )
            assert found == 0, f"{table} still holds the person"
        # The person's tokens fail: the access token, and the refresh token.
        assert (await client.get("/v1/users/me", headers=me)).status == 401
        assert (await client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})).status == 401
        assert (await client.post("/v1/auth/login", json={"email": email, "password": "correct horse battery"})).status == 401
        # The log is unchanged and audits clean; a restart rebuilds the same inventory.
        assert await connection.fetch("SELECT event_id, seq, kind, body::text FROM journal ORDER BY event_id, seq") == log_before
        assert all(not result.problems for result in await audit(connection, None))
    finally:
        await connection.close()
    await client.close()
    again = await start()
    assert (await (await again.get(f"/v1/events/{event['id']}")).json())["ticket_types"] == before
    report = await again.get(f"/v1/events/{event['id']}/report")
    assert report.status == 200 and (await report.json())["total"]["sold"] == 2


async def test_the_csv_report_is_every_reservation_as_the_service_has_it(start: Any) -> None:
    client = await start()
    event = await create_event(client, ticket_types=[{"code": "GA", "name": "GA", "price": 4500, "capacity": 20}])
    await some_trade(client, event["id"], 25 if False else 20, rng=random.Random(5))
    waitlisted = await client.post(
        f"/v1/events/{event['id']}/reservations", json={"ticket_type": "GA", "quantity": 1, "user_id": "late", "waitlist": True}
    )
    assert waitlisted.status in (201, 202)
    response = await client.get(f"/v1/events/{event['id']}/report.csv")
    assert response.status == 200 and response.content_type == "text/csv"
    rows = list(csv.DictReader(io.StringIO(await response.text())))
    listed = (await (await client.get(f"/v1/events/{event['id']}/reservations", params={"limit": 200})).json())["items"]
    assert [row["reservation_id"] for row in rows] == [r["id"] for r in listed]
    for row, reservation in zip(rows, listed, strict=True):
        assert row["status"] == reservation["status"], (row, reservation)
        assert (row["ticket_type"], int(row["quantity"]), int(row["amount"]), row["user_id"]) == (
            reservation["ticket_type"], reservation["quantity"], reservation["amount"], reservation["user_id"],
        )
        assert bool(row["confirmed_at"]) == (reservation["confirmed_at"] is not None)
    # Cancelled: every reservation still counted is cancelled in the report too.
    assert (await client.post(f"/v1/events/{event['id']}/cancel")).status == 200
    rows = list(csv.DictReader(io.StringIO(await (await client.get(f"/v1/events/{event['id']}/report.csv")).text())))
    assert {row["status"] for row in rows} <= {"cancelled", "expired"}


async def test_a_cluster_delivers_each_change_once_from_its_owner(database_url: str, tmp_path: Any) -> None:
    env = {"INVENTORYD_WEBHOOKS_ALLOW_PRIVATE": "1", "INVENTORYD_WEBHOOK_RETRY_BASE_S": "0.02"}
    async with receiving() as receiver, aiohttp.ClientSession(headers=ADMIN) as session:
        with cluster_of(database_url, tmp_path) as cluster:
            first = cluster.start("first", env=env)
            await wait_node_ready(session, first)
            second = cluster.start("second", env=env)
            await wait_node_ready(session, second)
            await wait_settled(session, first, owners=2, balanced=True)
            events = await create_events(session, [first, second], 6)
            async with session.post(f"{first.base}/v1/webhooks", json={"url": receiver.url, "types": ["reservation.held"]}) as response:
                assert response.status == 201, await response.text()
                secret = (await response.json())["secret"]
            for index, event_id in enumerate(events * 3):  # through either node: forwarded to the owner
                node = (first, second)[index % 2]
                async with session.post(
                    f"{node.base}/v1/events/{event_id}/reservations", json={"ticket_type": "GA", "quantity": 1, "user_id": f"b{index}"}
                ) as response:
                    assert response.status == 201, await response.text()
            await wait_until(lambda: len(receiver.got) >= 3 * len(events), 30)
            await asyncio.sleep(0.5)  # nothing more comes: each change once
            assert len(receiver.got) == 3 * len(events)
            for event_id in events:
                seqs = receiver.delivered_seqs(event_id)
                assert len(seqs) == 3 and seqs == sorted(seqs)
            assert all(verify(secret, body, headers[SIGNATURE_HEADER]) for headers, body in receiver.got)
            # Each node delivered its own events' changes (every attempt a delivery: the receiver answers 200).
            delivered = [await metric(session, node, "inventoryd_outbox_deliveries_total") for node in (first, second)]
            assert sum(delivered) == 3 * len(events) and min(delivered) > 0, delivered
            # The feed and the report through either node (the report relayed as it streams).
            for node in (first, second):
                for event_id in events:
                    async with session.get(f"{node.base}/v1/events/{event_id}/changes") as response:
                        assert [c["type"] for c in (await response.json())["items"]].count("reservation.held") == 3
                    async with session.get(f"{node.base}/v1/events/{event_id}/report.csv") as response:
                        assert response.status == 200 and response.content_type == "text/csv"
                        assert len(list(csv.DictReader(io.StringIO(await response.text())))) == 3


async def test_an_operator_erases_anyone_and_retention_erases_given_addresses(start: Any, database_url: str) -> None:
    client = await start(settings={"rate_limits": False})
    event = await create_event(client)
    person = await account(client, "someone@example.org", "attendee")
    user_id = (await (await client.get("/v1/users/me", headers=person)).json())["id"]
    given = await client.post(
        f"/v1/events/{event['id']}/reservations", json={"ticket_type": "GA", "quantity": 1, "user_id": "crm-9", "email": "nine@example.org"}
    )
    assert given.status == 201
    # `inventoryd user erase ID`, as the operator runs it (its own event loop, in a thread here).
    for target, expected in ((user_id, "erased the personal data"), ("crm-9", "erased the personal data"), ("nobody", "nothing held")):
        arguments = cli._parser().parse_args(["user", "erase", target, "--database-url", database_url])
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = await asyncio.to_thread(cli.erase_user, cli._settings(arguments), arguments.user_id)
        assert code == 0 and expected in out.getvalue(), out.getvalue()
    connection = await asyncpg.connect(database_url)
    try:
        assert await connection.fetchval("SELECT count(*) FROM users WHERE email LIKE '%someone%' OR name <> ''") == 0
        assert await connection.fetchval("SELECT count(*) FROM buyer_contacts") == 0
        # Retention: the addresses given for buyers of events that started before the cut-off.
        await outbox_store.save_contact(connection, event["id"], "crm-10", "ten@example.org")
        assert await outbox_store.erase_expired_contacts(connection, datetime(2027, 1, 1, tzinfo=UTC)) == 0  # the event starts later
        assert await outbox_store.erase_expired_contacts(connection, datetime(2027, 7, 1, tzinfo=UTC)) == 1
    finally:
        await connection.close()
    # The person's session ends on this node at its next read of ended sessions (within seconds).
    await eventually(lambda: _status(client, "/v1/users/me", person, 401), 15)


async def _status(client: Any, path: str, headers: dict[str, str], status: int) -> bool:
    return (await client.get(path, headers=headers)).status == status


async def test_a_webhook_made_again_with_its_key_is_the_same_one(start: Any) -> None:
    client = await start(settings={"webhooks_allow_private": True})
    body = {"url": "http://127.0.0.1:9/hook", "types": ["reservation.held", "event.updated"]}
    keyed = {"Idempotency-Key": "hook-1"}
    first = await client.post("/v1/webhooks", json=body, headers=keyed)
    assert first.status == 201 and "Idempotent-Replayed" not in first.headers
    # The same request (its types in another order) with the key: the same endpoint, secret and all.
    again = await client.post("/v1/webhooks", json={**body, "types": body["types"][::-1]}, headers=keyed)
    assert again.status == 201 and again.headers.get("Idempotent-Replayed") == "true"
    assert await again.json() == await first.json()
    other = await client.post("/v1/webhooks", json={**body, "url": "http://127.0.0.1:10/hook"}, headers=keyed)
    assert other.status == 409 and (await other.json())["code"] == "idempotency_conflict"
    assert len((await (await client.get("/v1/webhooks")).json())["items"]) == 1


async def test_deliveries_are_paced_only_while_the_loop_runs_late() -> None:
    pace = Pace()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(*(pace.turn() for _ in range(20)))
    assert loop.time() - started < 0.05, "paced while the loop kept time"
    pace.lag_s = 2 * limits.OUTBOX_BUSY_LAG_S  # as the probe finds it during an on-sale
    started = loop.time()
    await asyncio.gather(*(pace.turn() for _ in range(16)))
    assert loop.time() - started >= 15 / limits.OUTBOX_BUSY_DELIVERIES_PER_S * 0.95
