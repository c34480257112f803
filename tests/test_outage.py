"""Database outages: nothing acknowledged is lost, nothing hangs, and service resumes by itself.

Method: a PostgreSQL cluster of the test's own (it gets killed) serves a live app under concurrent
load. It is stopped with `pg_ctl -m immediate` (a crash) for a few seconds and started again. Every
request must be answered within the request bound (503 while the database is away), /readyz must
show the outage, reserves must succeed again within 2 s of the database's return, and every 201 must
be in the log afterwards. Separately, a connection is cut in the middle of a commit (a table lock
holds the statement while the test terminates the backend), and the in-doubt outcome must be settled
from the log.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from inventoryd import limits
from inventoryd.audit import audit
from inventoryd.config import Settings
from inventoryd.http import keys
from inventoryd.http.app import create_app
from persistence.embedded import EmbeddedPostgres
from persistence.journal import Append, AppendFailed, Journal, connect
from tests.helpers import ADMIN, ADMIN_TOKEN, crash_postgres, create_event, hold_a_shard, wait_until

OUTAGE_S = 3.0
RESUME_WITHIN_S = 2.0


@pytest.fixture
def own_cluster() -> Iterator[EmbeddedPostgres]:
    directory = Path(tempfile.mkdtemp(prefix="inventoryd-outage-"))
    directory.chmod(0o755)
    cluster = EmbeddedPostgres(directory / "data")
    cluster.start()
    try:
        yield cluster
    finally:
        if cluster.started_here or cluster._running():
            cluster.started_here = True
            cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
async def outage_client(aiohttp_client: Any, own_cluster: EmbeddedPostgres) -> AsyncIterator[Any]:
    url = own_cluster.dsn()
    settings = Settings(database_url=url, access_log=False, admin_token=ADMIN_TOKEN)
    client = await aiohttp_client(create_app(settings, database_url=url), headers=ADMIN)
    await wait_until(lambda: client.app[keys.REGISTRY].ready)
    yield client


async def test_database_outage_under_load(outage_client: Any, own_cluster: EmbeddedPostgres) -> None:
    client = outage_client
    event = await create_event(client, ticket_types=[{"code": "GA", "name": "GA", "price": 1, "capacity": 1_000_000}])
    acknowledged: list[str] = []
    slowest = 0.0
    statuses: dict[int, int] = {}
    stop = asyncio.Event()

    async def buyer(index: int) -> None:
        nonlocal slowest
        attempt = 0
        while not stop.is_set():
            attempt += 1
            started = time.monotonic()
            response = await asyncio.wait_for(
                client.post(
                    f"/v1/events/{event['id']}/reservations",
                    json={"ticket_type": "GA", "quantity": 1, "user_id": f"b{index}-{attempt}"},
                ),
                timeout=limits.REQUEST_TIMEOUT_S + 5,
            )
            slowest = max(slowest, time.monotonic() - started)
            statuses[response.status] = statuses.get(response.status, 0) + 1
            if response.status == 201:
                acknowledged.append((await response.json())["id"])
            else:
                assert response.status == 503, await response.text()
                assert "Retry-After" in response.headers
                await asyncio.sleep(0.02)

    buyers = [asyncio.create_task(buyer(index)) for index in range(12)]
    await wait_until(lambda: len(acknowledged) >= 50)
    await asyncio.to_thread(crash_postgres, own_cluster)
    down_since = time.monotonic()
    await asyncio.sleep(0.5)
    ready = await client.get("/readyz")
    assert ready.status == 503
    during = len(acknowledged)
    await asyncio.sleep(OUTAGE_S - 0.5)
    assert len(acknowledged) == during, "nothing can be acknowledged while the database is down"
    assert client.app[keys.REGISTRY].get(event["id"]).mailbox_depth() <= limits.MAILBOX_MESSAGES_MAX
    await asyncio.to_thread(own_cluster.start)
    back_at = time.monotonic()
    await wait_until(lambda: len(acknowledged) > during, timeout_s=RESUME_WITHIN_S + 8)
    resumed_after = time.monotonic() - back_at
    await wait_until(lambda: len(acknowledged) > during + 50, timeout_s=10)
    stop.set()
    await asyncio.gather(*buyers)
    assert (await client.get("/readyz")).status == 200
    print(f"outage {back_at - down_since:.1f} s, resumed {resumed_after:.2f} s after, slowest answer {slowest:.2f} s, {statuses}")
    assert resumed_after <= RESUME_WITHIN_S, f"served again {resumed_after:.2f} s after the database came back"
    assert slowest <= limits.REQUEST_TIMEOUT_S + 1
    assert statuses.get(503, 0) > 0

    connection = await connect(own_cluster.dsn())
    try:
        logged = {
            row[0]
            for row in await connection.fetch(
                "SELECT body ->> 'reservation_id' FROM journal WHERE event_id = $1 AND kind = 'reservation_held'", event["id"]
            )
        }
        assert set(acknowledged) <= logged, "an acknowledged reservation is missing from the log"
        results = await audit(connection)
        assert all(not result.problems for result in results), [result.line() for result in results]
    finally:
        await connection.close()


async def test_connection_cut_mid_commit_is_settled_from_the_log(client: Any, db: Any) -> None:
    event = await create_event(client)
    journal: Journal = client.app[keys.JOURNAL]
    assert journal._connection is not None
    journal_pid = journal._connection.get_server_pid()
    # Hold the journal's next statement in flight: it waits for this lock.
    blocker = await connect(client.app[keys.SETTINGS].database_url or "")
    transaction = blocker.transaction()
    await transaction.start()
    await blocker.execute("LOCK TABLE journal IN EXCLUSIVE MODE")
    reserve = asyncio.create_task(
        client.post(f"/v1/events/{event['id']}/reservations", json={"ticket_type": "GA", "quantity": 1, "user_id": "u"})
    )
    await wait_until(lambda: journal.pending_appends() == 0 and journal.stats.commits >= 1)
    waiting = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'", journal_pid
    )
    for _ in range(200):
        if waiting:
            break
        await asyncio.sleep(0.01)
        waiting = await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'", journal_pid
        )
    assert waiting == 1, "the journal's insert should be waiting for the lock"
    await db.execute("SELECT pg_terminate_backend($1)", journal_pid)
    await transaction.rollback()
    await blocker.close()
    response = await reserve
    assert response.status == 503  # cut off, and the log says it did not commit: retry
    assert journal.stats.settled_failed == 1
    retry = await client.post(f"/v1/events/{event['id']}/reservations", json={"ticket_type": "GA", "quantity": 1, "user_id": "u"})
    assert retry.status == 201
    assert (await retry.json())["id"].endswith("_1"), "the rolled-back attempt left nothing behind"
    assert await db.fetchval("SELECT count(*) FROM journal WHERE event_id = $1", event["id"]) == 2


async def test_settling_reads_the_log(database_url: str, db: Any) -> None:
    journal = Journal(database_url)
    await journal.start()
    try:
        lease = await hold_a_shard(database_url)
        written = Append("evt_settle", 1, ["kind"], [b'{"a": 1}'], *lease)
        await journal.append(written)
        never = Append("evt_settle", 2, ["kind"], [b'{"a": 2}'], *lease)
        other = await asyncpg.connect(database_url)
        pid = other.get_server_pid()
        assert await journal._settle_in_doubt(pid, [written]) is True
        other = await asyncpg.connect(database_url)
        assert await journal._settle_in_doubt(other.get_server_pid(), [never]) is False
    finally:
        await journal.close()


async def test_a_refused_append_fails_alone(database_url: str, db: Any) -> None:
    """If the server refuses a coalesced transaction for one append's data, the others still commit."""
    journal = Journal(database_url)
    await journal.start()
    try:
        lease = await hold_a_shard(database_url)
        good = [Append(f"evt_good{index}", 1, ["kind"], [b'{"ok": true}'], *lease) for index in range(3)]
        poisoned = Append("evt_poison", 1, ["kind"], [b'{"not": json'], *lease)  # the server refuses this statement
        outcomes = await asyncio.gather(
            *(journal.append(batch) for batch in [good[0], poisoned, good[1], good[2]]), return_exceptions=True
        )
        assert outcomes[0] is None and outcomes[2] is None and outcomes[3] is None
        assert isinstance(outcomes[1], AppendFailed)
        assert await db.fetchval("SELECT count(*) FROM journal WHERE event_id LIKE 'evt_good%'") == 3
        assert await db.fetchval("SELECT count(*) FROM journal WHERE event_id = 'evt_poison'") == 0
    finally:
        await journal.close()
