"""Snapshots bound recovery: an actor snapshots every SNAPSHOT_EVERY_RECORDS records, a restart
loads the latest snapshot and replays only the tail, and the result is exactly the state before.

Method: a small snapshot interval (patched), real history over HTTP, a restart, then a field-by-field
comparison and a look at how many records recovery replayed; the audit checks the snapshot against
the log, and a corrupted snapshot is caught. A database that refuses snapshots (a constraint no row
passes) shows how often a failing one is tried again.
"""

from __future__ import annotations

from typing import Any

import pytest

from inventoryd import limits
from inventoryd.audit import audit
from inventoryd.http import keys
from tests.helpers import create_event, full_state

EVERY = 25


async def test_restart_from_snapshot_and_tail(start: Any, db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "SNAPSHOT_EVERY_RECORDS", EVERY)
    monkeypatch.setattr(limits, "SNAPSHOT_TAIL_RATIO", 0.0)
    client = await start()
    event = await create_event(client, ticket_types=[{"code": "GA", "name": "GA", "price": 10, "capacity": 40}])
    made = []
    for index in range(60):
        response = await client.post(
            f"/v1/events/{event['id']}/reservations",
            json={"ticket_type": "GA", "quantity": 1, "user_id": f"u{index}", "waitlist": True},
        )
        made.append(await response.json())
    for reservation in made[:30]:
        await client.post(f"/v1/reservations/{reservation['id']}/confirm")
    for reservation in made[30:35]:
        await client.post(f"/v1/reservations/{reservation['id']}/cancel")  # promotes waiting buyers
    await client.app[keys.REGISTRY].get(event["id"]).snapshots.wait_written()
    total = await db.fetchval("SELECT count(*) FROM journal WHERE event_id = $1", event["id"])
    snapshot_seq = await db.fetchval("SELECT max(seq) FROM snapshots WHERE event_id = $1", event["id"])
    # A snapshot that falls due while the previous one is still being written waits for the next
    # batch (on a busy machine that can be a few records later).
    assert snapshot_seq is not None and total - snapshot_seq < 2 * EVERY
    assert await db.fetchval("SELECT count(*) FROM snapshots WHERE event_id = $1", event["id"]) == 1
    before = full_state(client.app)
    await client.close()

    restarted = await start()
    assert full_state(restarted.app) == before
    assert restarted.app[keys.REGISTRY].stats.recovered_records == total - snapshot_seq
    results = await audit(db)
    assert all(not result.problems for result in results), [result.line() for result in results]

    # A snapshot that disagrees with the log is a violation the audit names.
    await db.execute(
        "UPDATE snapshots SET state = (SELECT state FROM snapshots WHERE event_id = $1) || '\\x00'::bytea WHERE event_id = $1",
        event["id"],
    )
    results = await audit(db)
    assert any("snapshot" in problem for result in results for problem in result.problems)


async def test_a_snapshot_that_cannot_be_written_is_tried_again_only_after_as_many_records(
    start: Any, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A failing snapshot write costs a longer recovery, and no more: it is not encoded and sent
    # again after every batch (for a large event, a snapshot too big for DB_TIMEOUT_S would be).
    monkeypatch.setattr(limits, "SNAPSHOT_EVERY_RECORDS", EVERY)
    monkeypatch.setattr(limits, "SNAPSHOT_TAIL_RATIO", 0.0)
    client = await start()
    event = await create_event(client, ticket_types=[{"code": "GA", "name": "GA", "price": 10, "capacity": 1000}])
    registry = client.app[keys.REGISTRY]
    actor = registry.get(event["id"])
    # The database refuses every snapshot from now on (a real refusal: a constraint no row passes).
    await db.execute("ALTER TABLE snapshots ADD CONSTRAINT refuse_all CHECK (seq < 0) NOT VALID")

    async def reserve(count: int, first: int) -> None:
        for index in range(first, first + count):
            response = await client.post(
                f"/v1/events/{event['id']}/reservations", json={"ticket_type": "GA", "quantity": 1, "user_id": f"u{index}"}
            )
            assert response.status == 201
            await actor.snapshots.wait_written()

    await reserve(3 * EVERY - 10, 0)  # a snapshot falls due at 25 and 50 records, and fails each time
    assert registry.stats.snapshots_failed == 2
    assert registry.stats.snapshots_written == 0
    assert actor.snapshots.failed_seq >= 2 * EVERY
    metrics = await (await client.get("/metrics")).text()
    assert "inventoryd_snapshot_failures_total 2.0" in metrics

    # Once the database takes them again, the next one due is written.
    await db.execute("ALTER TABLE snapshots DROP CONSTRAINT refuse_all")
    await reserve(EVERY, 3 * EVERY - 10)
    assert registry.stats.snapshots_written == 1
    assert await db.fetchval("SELECT seq FROM snapshots WHERE event_id = $1", event["id"]) == actor.snapshots.written_seq
    assert actor.snapshots.written_seq >= 3 * EVERY
