"""Durable before acknowledged: a SIGKILL at full speed loses no acknowledged reservation.

Method: the real `inventoryd serve` runs as a subprocess on the test's PostgreSQL. Many concurrent
clients reserve as fast as they can, each request with its own Idempotency-Key, recording every 201
that reaches them. Mid-stream the server is SIGKILLed, then started again on the same database.
Every acknowledged reservation must be there unchanged, nothing may be oversold or over the per-user
limit, the log must replay to exactly what the server shows, and a retry of every request (the
acknowledged and the cut-off ones alike) with its key must change nothing twice.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from typing import Any

import aiohttp

from inventoryd.domain import Inventory
from inventoryd.registry import decode_log
from persistence import store
from tests.helpers import ADMIN, free_port, running_server, wait_ready

CAPACITY = 3000
PER_USER_LIMIT = 6
USERS = 400
CLIENTS = 48
KILL_AFTER_ACKNOWLEDGED = 400


async def test_sigkill_mid_stream_loses_nothing_acknowledged(database_url: str, db: Any) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    acknowledged: dict[str, dict[str, Any]] = {}  # idempotency key -> the 201 body
    attempted: dict[str, dict[str, Any]] = {}  # idempotency key -> the request body
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(timeout=timeout, headers=ADMIN) as session:
        with running_server(database_url, port) as process:
            await wait_ready(session, base, process)
            async with session.post(
                f"{base}/v1/events",
                json={
                    "name": "Kill test",
                    "starts_at": "2027-06-01T19:00:00Z",
                    "currency": "EUR",
                    "per_user_limit": PER_USER_LIMIT,
                    "ticket_types": [{"code": "GA", "name": "GA", "price": 2500, "capacity": CAPACITY}],
                },
            ) as response:
                assert response.status == 201
                event = await response.json()
            killed = asyncio.Event()

            async def buyer(index: int) -> None:
                attempt = 0
                while not killed.is_set():
                    attempt += 1
                    key = f"buyer{index}-{attempt}"
                    body = {"ticket_type": "GA", "quantity": 1 + attempt % 2, "user_id": f"user{(index * 7 + attempt) % USERS}"}
                    attempted[key] = body
                    try:
                        async with session.post(
                            f"{base}/v1/events/{event['id']}/reservations", json=body, headers={"Idempotency-Key": key}
                        ) as response:
                            if response.status == 201:
                                acknowledged[key] = await response.json()
                            elif response.status != 409:
                                raise AssertionError(f"unexpected {response.status}: {await response.text()}")
                    except (TimeoutError, aiohttp.ClientError):
                        return  # the server is gone

            async def killer() -> None:
                while len(acknowledged) < KILL_AFTER_ACKNOWLEDGED:
                    await asyncio.sleep(0.005)
                process.send_signal(signal.SIGKILL)
                killed.set()

            await asyncio.gather(killer(), *(buyer(index) for index in range(CLIENTS)))
            assert process.wait(timeout=10) == -signal.SIGKILL

        # Restart on the same database.
        with running_server(database_url, port) as process:
            await wait_ready(session, base, process)
            for key, body in acknowledged.items():
                async with session.get(f"{base}/v1/reservations/{body['id']}") as response:
                    assert response.status == 200, f"acknowledged {body['id']} is missing"
                    assert await response.json() == body
            # Retry everything: acknowledged keys replay; cut-off keys either replay what committed
            # or are carried out now, once.
            for key, request_body in attempted.items():
                async with session.post(
                    f"{base}/v1/events/{event['id']}/reservations", json=request_body, headers={"Idempotency-Key": key}
                ) as response:
                    if key in acknowledged:
                        assert response.status == 201
                        assert await response.json() == acknowledged[key]
                        assert response.headers.get("Idempotent-Replayed") == "true"
                    else:
                        assert response.status in (201, 409), await response.text()
            async with session.get(f"{base}/v1/events/{event['id']}") as response:
                shown = (await response.json())["ticket_types"][0]

    print(f"attempted {len(attempted)}, acknowledged {len(acknowledged)}")
    assert len(attempted) > len(acknowledged), "the kill should cut requests off mid-flight"
    # The log, replayed here, agrees with what the server showed, and nothing is oversold.
    inventory = Inventory.replay(event["id"], decode_log(await store.read_event_log(db, event["id"])))
    ticket_type = inventory.ticket_types["GA"]
    assert (ticket_type.held, ticket_type.sold, ticket_type.available) == (shown["held"], shown["sold"], shown["available"])
    assert ticket_type.held + ticket_type.sold <= CAPACITY
    per_user = Counter()
    for reservation in inventory.reservations.values():
        per_user[reservation.user_id] += reservation.quantity
    assert max(per_user.values()) <= PER_USER_LIMIT
    keys_stored = await db.fetchval("SELECT count(*) FROM idempotency_keys")
    assert keys_stored == len(inventory.reservations), "one stored answer per reservation: no key acted twice"
