"""The crash loop: SIGKILL the real server at random moments, again and again, and lose nothing.

Method: each cycle starts `inventoryd serve` on the same database, drives concurrent reserves,
confirms and cancels (each with its own Idempotency-Key) for a random while, records every
acknowledged outcome, and SIGKILLs the process mid-stream. After each restart: every acknowledged
change is still there (a reservation is never found "behind" its last acknowledged step), nothing
is oversold (the audit replays the whole log), and every acknowledged request, retried with its key,
gets its original answer. INVENTORYD_CRASH_CYCLES sets the cycles (3 in CI; 20 or more for the long
mode), INVENTORYD_CRASH_SEED the seed, which a failure prints.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from inventoryd.audit import audit
from tests.helpers import ADMIN, free_port, running_server, wait_ready

CYCLES = int(os.environ.get("INVENTORYD_CRASH_CYCLES", "3"))
SEED = int(os.environ.get("INVENTORYD_CRASH_SEED", str(random.randrange(1_000_000))))
CLIENTS = 24
CAPACITY = 400
# How far each acknowledged step takes a reservation; a later crash may only move it further.
STEP = {"held": 0, "confirmed": 1, "cancelled": 2}


@dataclass
class Acknowledged:
    # reservation id -> the furthest acknowledged step
    reservations: dict[str, str] = field(default_factory=dict)
    # idempotency key -> (method, path, body, status, answer)
    answers: dict[str, tuple[str, str, Any, int, Any]] = field(default_factory=dict)


async def test_crash_loop(database_url: str, db: Any) -> None:
    rng = random.Random(SEED)
    acknowledged = Acknowledged()
    event_id = ""
    try:
        for cycle in range(CYCLES):
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession(headers=ADMIN, timeout=aiohttp.ClientTimeout(total=20)) as session:
                with running_server(database_url, port) as process:
                    await wait_ready(session, base, process)
                    await check_cycle(session, base, acknowledged, event_id)
                    if not event_id:
                        async with session.post(
                            f"{base}/v1/events",
                            json={
                                "name": "Crash loop",
                                "starts_at": "2027-06-01T19:00:00Z",
                                "currency": "EUR",
                                "per_user_limit": 6,
                                "ticket_types": [{"code": "GA", "name": "GA", "price": 100, "capacity": CAPACITY}],
                            },
                        ) as response:
                            event_id = (await response.json())["id"]
                    await load_then_kill(session, base, process, event_id, acknowledged, rng, cycle)
        # A last start, to check the last kill.
        port = free_port()
        async with aiohttp.ClientSession(headers=ADMIN, timeout=aiohttp.ClientTimeout(total=20)) as session:
            with running_server(database_url, port) as process:
                await wait_ready(session, f"http://127.0.0.1:{port}", process)
                await check_cycle(session, f"http://127.0.0.1:{port}", acknowledged, event_id)
    except AssertionError as error:
        raise AssertionError(f"{error}\nreplay with INVENTORYD_CRASH_SEED={SEED}") from error
    results = await audit(db)
    assert results and all(not result.problems for result in results), [result.line() for result in results]
    assert len(acknowledged.reservations) > CYCLES * 10


async def load_then_kill(
    session: aiohttp.ClientSession,
    base: str,
    process: Any,
    event_id: str,
    acknowledged: Acknowledged,
    rng: random.Random,
    cycle: int,
) -> None:
    killed = asyncio.Event()

    async def client(index: int) -> None:
        mine: list[str] = []
        attempt = 0
        while not killed.is_set():
            attempt += 1
            key = f"c{cycle}-{index}-{attempt}"
            if mine and rng.random() < 0.5:
                reservation_id = rng.choice(mine)
                verb = "confirm" if rng.random() < 0.7 else "cancel"
                method, path, body = "POST", f"/v1/reservations/{reservation_id}/{verb}", None
            else:
                body = {"ticket_type": "GA", "quantity": rng.choice([1, 1, 2]), "user_id": f"user{rng.randrange(150)}"}
                method, path = "POST", f"/v1/events/{event_id}/reservations"
            try:
                async with session.request(method, base + path, json=body, headers={"Idempotency-Key": key}) as response:
                    status = response.status
                    answer = await response.json()
            except (TimeoutError, aiohttp.ClientError):
                return
            if status in (200, 201):
                acknowledged.answers[key] = (method, path, body, status, answer)
                step = answer["status"]
                previous = acknowledged.reservations.get(answer["id"])
                if previous is None or STEP[step] > STEP[previous]:
                    acknowledged.reservations[answer["id"]] = step
                if status == 201:
                    mine.append(answer["id"])
            elif status == 409:
                acknowledged.answers.pop(key, None)
            else:
                assert status == 503, answer

    async def killer() -> None:
        await asyncio.sleep(rng.uniform(0.3, 1.5))
        process.send_signal(signal.SIGKILL)
        killed.set()

    await asyncio.gather(killer(), *(client(index) for index in range(CLIENTS)))
    process.wait(timeout=10)


async def check_cycle(session: aiohttp.ClientSession, base: str, acknowledged: Acknowledged, event_id: str) -> None:
    if not event_id:
        return
    for reservation_id, step in acknowledged.reservations.items():
        async with session.get(f"{base}/v1/reservations/{reservation_id}") as response:
            assert response.status == 200, f"acknowledged {reservation_id} is missing"
            status = (await response.json())["status"]
        allowed = {"held": {"held", "confirmed", "cancelled", "expired"}, "confirmed": {"confirmed", "cancelled"}}.get(
            step, {"cancelled"}
        )
        assert status in allowed, f"{reservation_id}: acknowledged {step}, found {status}"
    for key, (method, path, body, status, answer) in acknowledged.answers.items():
        async with session.request(method, base + path, json=body, headers={"Idempotency-Key": key}) as response:
            assert response.status == status, f"retry of {key}: {response.status} != {status}"
            assert await response.json() == answer, f"retry of {key} answered differently"
    async with session.get(f"{base}/v1/events/{event_id}") as response:
        ticket_type = (await response.json())["ticket_types"][0]
    assert ticket_type["held"] + ticket_type["sold"] <= CAPACITY
