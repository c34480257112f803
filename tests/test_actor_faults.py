"""The actor under faults: failed commits roll back, in-doubt commits are settled from the log,
reads never show uncommitted changes, full mailboxes answer at once, and a crashing actor is
restarted (within limits) without touching the others.

Method: the real app on a real PostgreSQL, with the journal wrapped by `FaultyJournal`, which fails
or holds appends on demand; every test ends by checking that memory equals a fresh replay of the log.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from inventoryd import limits
from inventoryd.actor import Unavailable
from inventoryd.domain import Inventory, decide
from inventoryd.http import keys
from inventoryd.registry import decode_log
from persistence import limits as journal_limits
from persistence import store
from tests.helpers import FaultyJournal, create_event, wait_until

BODY = {"ticket_type": "GA", "quantity": 1, "user_id": "alice"}


async def available(client: Any, event_id: str) -> int:
    body = await (await client.get(f"/v1/events/{event_id}/availability")).json()
    return body["ticket_types"]["GA"]["available"]


async def assert_memory_matches_log(client: Any, db: Any, event_id: str) -> None:
    actor = client.app[keys.REGISTRY].get(event_id)
    replayed = Inventory.replay(event_id, decode_log(await store.read_event_log(db, event_id)))
    assert replayed.reservations == actor.inventory.reservations
    assert replayed.seats_by_user == actor.inventory.seats_by_user
    assert {c: (t.held, t.sold) for c, t in replayed.ticket_types.items()} == {
        c: (t.held, t.sold) for c, t in actor.inventory.ticket_types.items()
    }
    assert replayed.last_seq == actor.inventory.last_seq


async def test_failed_commit_rolls_back_and_answers_retryable_503(faulty: Any, db: Any) -> None:
    client, journal = faulty
    event = await create_event(client)
    first = await client.post(f"/v1/events/{event['id']}/reservations", json=BODY)
    assert first.status == 201
    journal.faults.append("fail")
    failed = await client.post(f"/v1/events/{event['id']}/reservations", json=BODY)
    assert failed.status == 503
    assert failed.headers["Retry-After"] == str(limits.RETRY_AFTER_S)
    assert (await failed.json())["code"] == "unavailable"
    assert await available(client, event["id"]) == 99
    retried = await client.post(f"/v1/events/{event['id']}/reservations", json=BODY)
    assert retried.status == 201
    assert await available(client, event["id"]) == 98
    await assert_memory_matches_log(client, db, event["id"])


async def test_a_failed_batch_answers_every_message_in_it(faulty: Any, db: Any) -> None:
    client, journal = faulty
    event = await create_event(client)
    journal.write_gate = asyncio.Event()
    first = asyncio.create_task(client.post(f"/v1/events/{event['id']}/reservations", json=BODY))
    await wait_until(lambda: journal.writes_at_gate == 1)
    # These pile up behind the held commit and become one batch, which will fail as a whole.
    rest = [
        asyncio.create_task(client.post(f"/v1/events/{event['id']}/reservations", json=BODY | {"user_id": f"u{i}"}))
        for i in range(20)
    ]
    actor = client.app[keys.REGISTRY].get(event["id"])
    await wait_until(lambda: actor.mailbox_depth() == 20)
    journal.faults.append("fail")  # the held batch (past the faults already) commits; the next one fails
    journal.write_gate.set()
    assert (await first).status == 201
    statuses = [(await task).status for task in rest]
    assert statuses == [503] * 20
    assert await available(client, event["id"]) == 99
    await assert_memory_matches_log(client, db, event["id"])


async def test_in_doubt_commit_that_happened_is_found_in_the_log(faulty: Any, db: Any) -> None:
    client, journal = faulty
    event = await create_event(client)
    registry = client.app[keys.REGISTRY]
    headers = {"Idempotency-Key": "in-doubt-1"}
    journal.faults.append("unknown_committed")
    answer = await client.post(f"/v1/events/{event['id']}/reservations", json=BODY, headers=headers)
    assert answer.status == 503
    assert "Idempotency-Key" in (await answer.json())["detail"]
    await wait_until(lambda: registry.stats.actors_restarted == 1 and registry.get(event["id"]).running)
    assert await available(client, event["id"]) == 99  # it did commit: the rebuilt actor knows
    retry = await client.post(f"/v1/events/{event['id']}/reservations", json=BODY, headers=headers)
    assert retry.status == 201
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert await available(client, event["id"]) == 99  # and the retry changed nothing
    await assert_memory_matches_log(client, db, event["id"])


async def test_in_doubt_commit_that_did_not_happen_is_retried_once(faulty: Any, db: Any) -> None:
    client, journal = faulty
    event = await create_event(client)
    registry = client.app[keys.REGISTRY]
    headers = {"Idempotency-Key": "in-doubt-2"}
    journal.faults.append("unknown_lost")
    assert (await client.post(f"/v1/events/{event['id']}/reservations", json=BODY, headers=headers)).status == 503
    await wait_until(lambda: registry.stats.actors_restarted == 1 and registry.get(event["id"]).running)
    assert await available(client, event["id"]) == 100
    retry = await client.post(f"/v1/events/{event['id']}/reservations", json=BODY, headers=headers)
    assert retry.status == 201 and "Idempotent-Replayed" not in retry.headers
    again = await client.post(f"/v1/events/{event['id']}/reservations", json=BODY, headers=headers)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await available(client, event["id"]) == 99
    await assert_memory_matches_log(client, db, event["id"])


async def test_reads_never_show_an_uncommitted_change(faulty: Any, db: Any) -> None:
    client, journal = faulty
    event = await create_event(client)
    held = await (await client.post(f"/v1/events/{event['id']}/reservations", json=BODY)).json()
    journal.gate = asyncio.Event()
    confirming = asyncio.create_task(client.post(f"/v1/reservations/{held['id']}/confirm"))
    reserving = asyncio.create_task(client.post(f"/v1/events/{event['id']}/reservations", json=BODY))
    await wait_until(lambda: journal.waiting_at_gate == 1)
    actor = client.app[keys.REGISTRY].get(event["id"])
    # The confirmation is decided and applied in memory, but not committed: nobody may see it.
    assert actor.inventory.reservations[held["id"]].status == "confirmed"
    seen = await (await client.get(f"/v1/reservations/{held['id']}")).json()
    assert seen["status"] == "held"
    event_view = await (await client.get(f"/v1/events/{event['id']}")).json()
    assert event_view["ticket_types"][0]["sold"] == 0
    journal.gate.set()
    assert (await confirming).status == 200
    assert (await reserving).status == 201
    seen = await (await client.get(f"/v1/reservations/{held['id']}")).json()
    assert seen["status"] == "confirmed"


async def test_full_mailbox_answers_at_once(faulty: Any) -> None:
    client, journal = faulty
    event = await create_event(client, ticket_types=[{"code": "GA", "name": "GA", "price": 1, "capacity": 100_000}])
    actor = client.app[keys.REGISTRY].get(event["id"])
    journal.gate = asyncio.Event()
    held_batch = asyncio.create_task(actor.reserve("u0", "GA", 1))
    await wait_until(lambda: journal.waiting_at_gate == 1)
    queued = [asyncio.create_task(actor.reserve(f"u{i}", "GA", 1)) for i in range(limits.MAILBOX_MESSAGES_MAX)]
    await wait_until(lambda: actor.mailbox_depth() == limits.MAILBOX_MESSAGES_MAX)
    with pytest.raises(Unavailable) as refused:
        await asyncio.wait_for(actor.reserve("late", "GA", 1), timeout=0.5)
    assert refused.value.code == "overloaded"
    over_http = await client.post(f"/v1/events/{event['id']}/reservations", json=BODY)
    assert over_http.status == 503 and "Retry-After" in over_http.headers
    assert (await over_http.json())["code"] == "overloaded"
    journal.gate.set()
    await held_batch
    outcomes = await asyncio.gather(*queued)
    assert all(outcome.result is not None and outcome.result.status == "held" for outcome in outcomes)


async def held_commit_with_an_append_waiting_behind_it(client: Any, journal: FaultyJournal) -> tuple[Any, Any]:
    """Another event's commit held in flight, and one reservation of a new event's actor waiting
    in the journal behind it (appended, not yet taken)."""
    other = client.app[keys.REGISTRY].get((await create_event(client, name="other"))["id"])
    event = await create_event(client)
    actor = client.app[keys.REGISTRY].get(event["id"])
    journal.write_gate = asyncio.Event()
    held = asyncio.create_task(other.reserve("o", "GA", 1))
    await wait_until(lambda: journal.writes_at_gate == 1)
    waiting = asyncio.create_task(actor.reserve("first", "GA", 1))
    await wait_until(lambda: len(journal._pending) == 1)
    return actor, (held, waiting)


async def test_messages_that_come_while_the_append_waits_in_the_journal_join_it(faulty: Any, db: Any) -> None:
    # An event's next buyers would otherwise wait for this commit and then the next: they join the
    # batch whose append the journal has not taken yet, and share its transaction.
    client, journal = faulty
    actor, (held, waiting) = await held_commit_with_an_append_waiting_behind_it(client, journal)
    joining = [asyncio.create_task(actor.reserve(f"u{i}", "GA", 1)) for i in range(5)]
    await wait_until(lambda: actor.mailbox_depth() == 5)
    commits = journal.stats.commits
    journal.write_gate.set()
    outcomes = await asyncio.wait_for(asyncio.gather(held, waiting, *joining), timeout=5)
    assert all(outcome.result.status == "held" for outcome in outcomes)
    assert journal.stats.commits == commits + 2  # the held one, then the event's six together
    assert actor.inventory.last_seq == 1 + 6
    await assert_memory_matches_log(client, db, actor.event_id)


async def test_a_joining_message_that_fails_to_decide_withdraws_the_whole_batch(
    faulty: Any, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A bug in deciding a message that joins a waiting append: nothing of that batch is written,
    # every message in it is answered 503, and the actor is rebuilt from the log.
    client, journal = faulty
    registry = client.app[keys.REGISTRY]
    actor, (held, waiting) = await held_commit_with_an_append_waiting_behind_it(client, journal)
    original = decide._reserve

    def bomb(inventory: Inventory, command: Any, now: Any) -> Any:
        if command.user_id == "boom":
            raise RuntimeError("a bug in decide")
        return original(inventory, command, now)

    monkeypatch.setattr(decide, "_reserve", bomb)
    joining = asyncio.create_task(actor.reserve("boom", "GA", 1))
    await wait_until(lambda: actor.mailbox_depth() == 1)
    journal.write_gate.set()
    assert (await held).result.status == "held"
    for task in (waiting, joining):
        with pytest.raises(Unavailable):
            await asyncio.wait_for(task, timeout=5)
    await wait_until(lambda: registry.stats.actors_restarted == 1 and registry.get(actor.event_id).running)
    assert await available(client, actor.event_id) == 100
    assert registry.get(actor.event_id).inventory.last_seq == 1  # only the event's creation
    await assert_memory_matches_log(client, db, actor.event_id)


async def test_a_crashing_actor_is_restarted_and_the_others_run_on(
    faulty: Any, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = faulty
    registry = client.app[keys.REGISTRY]
    doomed = await create_event(client, name="doomed")
    healthy = await create_event(client, name="healthy")
    assert (await client.post(f"/v1/events/{doomed['id']}/reservations", json=BODY)).status == 201
    original = decide._reserve

    def bomb(inventory: Inventory, command: Any, now: Any) -> Any:
        if inventory.event_id == doomed["id"]:
            raise RuntimeError("a bug in decide")
        return original(inventory, command, now)

    monkeypatch.setattr(decide, "_reserve", bomb)
    crashed = await client.post(f"/v1/events/{doomed['id']}/reservations", json=BODY)
    assert crashed.status == 503
    await wait_until(lambda: registry.stats.actors_restarted == 1 and registry.get(doomed["id"]).running)
    assert (await client.post(f"/v1/events/{healthy['id']}/reservations", json=BODY)).status == 201

    # Crash it past the restart-intensity limit: it stays down, answering 503 at once.
    for _ in range(limits.ACTOR_RESTARTS_MAX):
        await wait_until(lambda: registry.get(doomed["id"]).running or registry.stats.actors_failed == 1)
        if registry.stats.actors_failed:
            break
        await client.post(f"/v1/events/{doomed['id']}/reservations", json=BODY)
    await wait_until(lambda: registry.stats.actors_failed == 1)
    down = await client.post(f"/v1/events/{doomed['id']}/reservations", json=BODY)
    assert down.status == 503
    assert (await client.post(f"/v1/events/{healthy['id']}/reservations", json=BODY)).status == 201
    assert (await client.get(f"/v1/events/{doomed['id']}")).status == 200  # reads still answer
    assert await available(client, doomed["id"]) == 99
    await assert_memory_matches_log(client, db, healthy["id"])


async def twenty_behind_one(client: Any, journal: FaultyJournal) -> tuple[Any, list[int], list[asyncio.Task[Any]]]:
    """A new event's actor: one reservation held at the journal's gate and twenty queued behind it.
    Returns the actor, the sizes of its batches so far, and the 21 reservations (the held first)."""
    event = await create_event(client, ticket_types=[{"code": "GA", "name": "GA", "price": 1, "capacity": 1000}])
    actor = client.app[keys.REGISTRY].get(event["id"])
    batches: list[int] = []
    actor.on_batch = lambda messages, depth: batches.append(messages)
    journal.write_gate = asyncio.Event()
    first = asyncio.create_task(actor.reserve("u0", "GA", 1))
    await wait_until(lambda: journal.writes_at_gate == 1)
    queued = [asyncio.create_task(actor.reserve(f"u{i}", "GA", 1)) for i in range(1, 21)]
    await wait_until(lambda: actor.mailbox_depth() == 20)
    return actor, batches, [first, *queued]


async def twenty_one_buyers_waited_for(client: Any, journal: FaultyJournal) -> tuple[Any, list[int]]:
    """Twenty behind one (above); once the gate opens the actor has seen 21 buyers, so it waits for
    21 (with 20 queued), and a 21st buyer's return ends the wait. Returns the actor and the sizes
    of its batches so far."""
    actor, batches, [first, *queued] = await twenty_behind_one(client, journal)
    journal.write_gate.set()
    await first
    await wait_until(lambda: actor._mailbox._wanted == 21)  # waiting, with 20 queued
    queued.append(asyncio.create_task(actor.reserve("u21", "GA", 1)))
    await asyncio.wait_for(asyncio.gather(*queued), timeout=5)
    return actor, batches


async def test_a_busy_event_waits_for_its_buyers_to_share_one_commit(
    faulty: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Group commit under load: 21 buyers were active around the last batch, so the actor waits for
    # 21 messages before it takes the next one (here with a long linger, so the test sees it
    # waiting); the buyer who comes back during the wait joins that batch instead of the next.
    # (The test idles while the actor waits: the wait's end on idling is off, as on a busy server.)
    monkeypatch.setattr(limits, "BATCH_LINGER_S", 30.0)
    monkeypatch.setattr(journal_limits, "LINGER_BUSY_SHARE_MIN", 0.0)
    _, batches = await twenty_one_buyers_waited_for(*faulty)
    assert batches == [1, 21]


async def test_an_idle_server_does_not_wait_for_buyers_who_are_not_coming(
    faulty: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 21 buyers were active around the last batch, 20 are queued and the 21st does not come; the
    # process has nothing else to do (buyers arriving at their own pace, not a burst coming back):
    # the actor takes the 20 within a few LINGER_CHECK_S, not after BATCH_LINGER_S (30 s here).
    client, journal = faulty
    monkeypatch.setattr(limits, "BATCH_LINGER_S", 30.0)
    _, batches, reservations = await twenty_behind_one(client, journal)
    started = asyncio.get_running_loop().time()
    journal.write_gate.set()
    await asyncio.wait_for(asyncio.gather(*reservations), timeout=5)
    assert asyncio.get_running_loop().time() - started < 1.0
    assert batches == [1, 20]


async def test_buyers_who_think_between_requests_are_not_waited_for(
    faulty: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 21 buyers were active, then one comes back and the others do not (they think): the wait runs
    # out with fewer than half back, and the next batches are taken at once, even when a batch
    # later sees many buyers again (here the wait would otherwise last 30 s).
    client, journal = faulty
    monkeypatch.setattr(limits, "BATCH_LINGER_S", 30.0)
    monkeypatch.setattr(journal_limits, "LINGER_BUSY_SHARE_MIN", 0.0)  # as above
    actor, batches = await twenty_one_buyers_waited_for(client, journal)
    assert batches == [1, 21]
    # One buyer back, twenty thinking: the wait (short now) runs out.
    monkeypatch.setattr(limits, "BATCH_LINGER_S", 0.05)
    journal.write_gate = asyncio.Event()
    alone = asyncio.create_task(actor.reserve("u22", "GA", 1))
    await wait_until(lambda: journal.writes_at_gate == 1)
    later = [asyncio.create_task(actor.reserve(f"u{i}", "GA", 1)) for i in range(23, 33)]
    await wait_until(lambda: actor.mailbox_depth() == 10)
    monkeypatch.setattr(limits, "BATCH_LINGER_S", 30.0)
    journal.write_gate.set()
    await asyncio.wait_for(asyncio.gather(alone, *later), timeout=5)
    assert batches == [1, 21, 1, 10]
