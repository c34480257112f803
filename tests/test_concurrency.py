"""Under concurrency the actor never oversells and commits many buyers per transaction.

Method: thousands of reserve requests are fired at once over real HTTP (aiohttp's test server, a
real PostgreSQL) at one event; afterwards the answers, the in-memory state, a fresh replay of the
log, and the database's own transaction counter are compared.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

from inventoryd.domain import Inventory
from inventoryd.http import keys
from inventoryd.registry import decode_log
from persistence import store
from tests.helpers import create_event

CAPACITY = 500
REQUESTS = 2000
USERS = 320
PER_USER_LIMIT = 3


async def test_no_oversell_under_2000_concurrent_reserves(client: Any, db: Any) -> None:
    event = await create_event(
        client,
        per_user_limit=PER_USER_LIMIT,
        ticket_types=[{"code": "GA", "name": "GA", "price": 1000, "capacity": CAPACITY}],
    )
    rng = random.Random(7)
    requests = [(f"user{rng.randrange(USERS)}", rng.choice([1, 1, 1, 2])) for _ in range(REQUESTS)]
    assert len({user for user, _ in requests}) >= 300

    async def reserve(user: str, quantity: int) -> tuple[int, dict[str, Any]]:
        response = await client.post(
            f"/v1/events/{event['id']}/reservations",
            json={"ticket_type": "GA", "quantity": quantity, "user_id": user},
        )
        return response.status, await response.json()

    answers = await asyncio.gather(*(reserve(user, quantity) for user, quantity in requests))

    statuses = Counter(status for status, _ in answers)
    assert set(statuses) <= {201, 409}, statuses
    held = [body for status, body in answers if status == 201]
    refused = Counter(body["code"] for status, body in answers if status == 409)
    assert set(refused) <= {"sold_out", "insufficient_tickets", "limit_exceeded"}
    assert sum(body["quantity"] for body in held) == CAPACITY, "every seat sold, none twice"
    per_user = Counter()
    for body in held:
        per_user[body["user_id"]] += body["quantity"]
    assert max(per_user.values()) <= PER_USER_LIMIT
    assert len({body["id"] for body in held}) == len(held)

    # Memory, the published view, and the log all agree.
    actor = client.app[keys.REGISTRY].get(event["id"])
    assert actor.inventory.ticket_types["GA"].held == CAPACITY
    availability = await (await client.get(f"/v1/events/{event['id']}/availability")).json()
    assert availability["ticket_types"]["GA"]["available"] == 0
    replayed = Inventory.replay(event["id"], decode_log(await store.read_event_log(db, event["id"])))
    assert replayed.reservations == actor.inventory.reservations
    assert replayed.seats_by_user == actor.inventory.seats_by_user
    assert {r.id for r in replayed.reservations.values()} == {body["id"] for body in held}


async def test_group_commit_many_reserves_per_transaction(client: Any, db: Any) -> None:
    event = await create_event(
        client, ticket_types=[{"code": "GA", "name": "GA", "price": 1000, "capacity": 100_000}]
    )
    journal = client.app[keys.JOURNAL]
    commits_before = journal.stats.commits
    transactions_before = await store.committed_transactions(db)
    count = 1000

    async def reserve(index: int) -> int:
        response = await client.post(
            f"/v1/events/{event['id']}/reservations",
            json={"ticket_type": "GA", "quantity": 1, "user_id": f"u{index}"},
        )
        return response.status

    statuses = await asyncio.gather(*(reserve(index) for index in range(count)))
    assert statuses == [201] * count
    commits = journal.stats.commits - commits_before
    # The journal's own count, and PostgreSQL's count of every committed transaction in this
    # database (which also includes the test's own statements and the service's reads).
    await asyncio.sleep(0.6)  # the statistics collector reports at most twice a second
    transactions = await store.committed_transactions(db) - transactions_before
    assert commits <= count / 10, f"{commits} journal commits for {count} reserves"
    assert transactions <= count / 5, f"{transactions} transactions for {count} reserves"
    rows = await db.fetchval("SELECT count(*) FROM journal WHERE event_id = $1", event["id"])
    assert rows == count + 1
