"""Start-up: the service is ready as soon as it knows which events exist; their actors are rebuilt
after, in the background, and at once for an event a request asks for. A rebuilt actor is exactly
the one a full recovery gives, every actor is started once, and an event whose log is broken is
refused (503) while the others are served, with readiness reporting the failure.

Method: real history on a real database, a restart with the background rebuild held at a gate
(the test's own `asyncio.Event` in front of `Registry._rebuild_batch`), requests for events the
background has not reached, then the gate opened and the state compared field by field with the
state before the restart.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from inventoryd import limits
from inventoryd.http import keys
from inventoryd.registry import Registry
from persistence import store
from tests.helpers import create_event, full_state, samples


@pytest.fixture
def held_background(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """While this event is not set, the background rebuild waits before each batch."""
    gate = asyncio.Event()
    rebuild_batch = Registry._rebuild_batch

    async def gated(self: Registry, batch: list[str]) -> int:
        await gate.wait()
        return await rebuild_batch(self, batch)

    monkeypatch.setattr(Registry, "_rebuild_batch", gated)
    return gate


async def history(client: Any, events: int) -> list[dict[str, Any]]:
    made = [
        await create_event(client, name=f"E{index}", ticket_types=[{"code": "GA", "name": "GA", "price": 10, "capacity": 30}])
        for index in range(events)
    ]
    for event in made:
        for user in range(12):
            response = await client.post(
                f"/v1/events/{event['id']}/reservations", json={"ticket_type": "GA", "quantity": 2, "user_id": f"u{user}"}
            )
            reservation = await response.json()
            if user % 3 == 0:
                await client.post(f"/v1/reservations/{reservation['id']}/confirm")
            elif user % 3 == 1:
                await client.post(f"/v1/reservations/{reservation['id']}/cancel")
    return made


async def test_requests_are_served_before_the_background_rebuild_reaches_their_event(
    start: Any, held_background: asyncio.Event
) -> None:
    client = await start()
    events = await history(client, 4)
    before = full_state(client.app)
    await client.close()

    restarted = await start(warm=False)
    registry = restarted.app[keys.REGISTRY]
    assert (await restarted.get("/readyz")).status == 200
    assert registry.cold == 4 and registry.actors() == []
    found = samples(await (await restarted.get("/metrics")).text())
    assert found[("inventoryd_actors_cold", ())] == 4

    # Reads and writes of cold events, concurrently: each event's actor is rebuilt once, on demand.
    first, second = events[0]["id"], events[1]["id"]
    answers = await asyncio.gather(
        *(restarted.get(f"/v1/events/{first}/availability") for _ in range(5)),
        *(
            restarted.post(f"/v1/events/{second}/reservations", json={"ticket_type": "GA", "quantity": 1, "user_id": f"n{n}"})
            for n in range(5)
        ),
    )
    assert [answer.status for answer in answers] == [200] * 5 + [201] * 5
    availability = await answers[0].json()
    assert availability["ticket_types"]["GA"]["available"] == 30 - 4 * 2 - 4 * 2  # confirmed and held of 12 buyers
    assert registry.cold == 2 and sorted(actor.event_id for actor in registry.actors()) == sorted([first, second])
    assert not registry.recovered.is_set()
    missing = await restarted.get("/v1/events/evt_nosuchevent/availability")
    assert missing.status == 404

    held_background.set()
    await asyncio.wait_for(registry.recovered.wait(), 10)
    assert registry.cold == 0 and len(registry.actors()) == 4
    after = full_state(restarted.app)
    # Every event is as it was, except the five reservations made after the restart.
    assert {event: state for event, state in after.items() if event != second} == {
        event: state for event, state in before.items() if event != second
    }
    assert after[second][5] == before[second][5] + 5  # reservations_created
    assert set(before[second][3]) < set(after[second][3])


async def test_a_broken_log_takes_down_its_event_and_readiness_not_the_others(start: Any, db: Any) -> None:
    client = await start()
    broken, healthy = await history(client, 2)
    await client.close()
    # A reservation for more seats than exist: a log that breaks "never oversold".
    await db.execute(
        """UPDATE journal SET body = jsonb_set(body::jsonb, '{quantity}', '500')::json WHERE event_id = $1
           AND seq = (SELECT min(seq) FROM journal WHERE event_id = $1 AND kind = 'reservation_held')""",
        broken["id"],
    )

    restarted = await start(ready=False)
    registry = restarted.app[keys.REGISTRY]
    await asyncio.wait_for(registry.recovered.wait(), 10)
    refused = await restarted.get(f"/v1/events/{broken['id']}/availability")
    assert refused.status == 503 and refused.headers["Retry-After"]
    assert "recovery checks" in (await refused.json())["detail"]
    served = await restarted.post(
        f"/v1/events/{healthy['id']}/reservations", json={"ticket_type": "GA", "quantity": 1, "user_id": "late"}
    )
    assert served.status == 201
    readiness = await restarted.get("/readyz")
    assert readiness.status == 503 and broken["id"] in (await readiness.json())["detail"]
    assert registry.stats.actors_failed == 1


async def test_an_event_not_rebuilt_while_the_database_is_away_is_answered_at_once(
    start: Any, held_background: asyncio.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await start()
    (event,) = await history(client, 1)
    await client.close()
    restarted = await start(warm=False)
    registry = restarted.app[keys.REGISTRY]

    async def unreachable(*_: Any, **__: Any) -> None:
        raise ConnectionRefusedError("the database is away")

    reachable = store.latest_snapshot
    monkeypatch.setattr(store, "latest_snapshot", unreachable)
    started = time.monotonic()
    refused = await restarted.get(f"/v1/events/{event['id']}/availability")
    assert refused.status == 503 and refused.headers["Retry-After"]
    assert time.monotonic() - started < limits.COLD_ACTOR_WAIT_S / 2  # at once, not after the wait
    assert registry.cold == 1
    monkeypatch.setattr(store, "latest_snapshot", reachable)  # back: the next request rebuilds it
    served = await restarted.get(f"/v1/events/{event['id']}/availability")
    assert served.status == 200 and registry.cold == 0


async def test_requests_racing_the_background_rebuild_start_each_actor_once(
    start: Any, db: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small batches, so that the background and the requests interleave over many reads.
    monkeypatch.setattr(limits, "RECOVERY_BATCH_BYTES", 1)
    monkeypatch.setattr(limits, "RECOVERY_BATCH_EVENTS_MIN", 2)
    client = await start()
    events = [
        await create_event(client, name=f"E{index}", ticket_types=[{"code": "GA", "name": "GA", "price": 10, "capacity": 1000}])
        for index in range(40)
    ]
    await client.close()

    restarted = await start(warm=False)
    registry = restarted.app[keys.REGISTRY]
    answers = await asyncio.gather(
        *(
            restarted.post(
                f"/v1/events/{event['id']}/reservations", json={"ticket_type": "GA", "quantity": 1, "user_id": f"u{n}"}
            )
            for n in range(5)
            for event in reversed(events)  # the background goes the other way
        )
    )
    assert [answer.status for answer in answers] == [201] * len(answers)
    await asyncio.wait_for(registry.recovered.wait(), 10)
    assert len(registry.actors()) == 40 and registry.stats.actors_restarted == 0
    for event in events:
        seqs = [row["seq"] for row in await db.fetch("SELECT seq FROM journal WHERE event_id = $1 ORDER BY seq", event["id"])]
        assert seqs == list(range(1, 7))  # created, then the five reservations: one writer each
