"""State is a fold of the log: a restarted service rebuilds every actor to exactly the state it had,
and holds expire on time, by the actor's own timer, also when they fell due while it was down.

Method: drive several events through every kind of change over HTTP, stop the app, start a new one
on the same database, and compare the complete inventory of every event field by field. Expiry is
tested with a clock the test moves.
"""

from __future__ import annotations

import random
from typing import Any

from inventoryd.http import keys
from tests.helpers import FakeClock, create_event, full_state, wait_until


async def test_restart_rebuilds_exactly_the_same_state(start: Any) -> None:
    clock = FakeClock()
    client = await start(clock=clock)
    rng = random.Random(3)
    events = [
        await create_event(
            client,
            name=f"E{index}",
            per_user_limit=5,
            ticket_types=[
                {"code": "GA", "name": "GA", "price": 1000, "capacity": 40},
                {"code": "VIP", "name": "VIP", "price": 9000, "capacity": 5},
            ],
        )
        for index in range(4)
    ]
    reservations: list[str] = []
    tickets: list[str] = []
    for _step in range(300):
        clock.advance(rng.choice([0, 1, 10]))
        action = rng.random()
        if action < 0.5 or not reservations:
            event = rng.choice(events)
            response = await client.post(
                f"/v1/events/{event['id']}/reservations",
                json={
                    "ticket_type": rng.choice(["GA", "VIP"]),
                    "quantity": rng.randint(1, 3),
                    "user_id": f"u{rng.randint(1, 9)}",
                    "waitlist": rng.random() < 0.3,
                },
            )
            if response.status in (201, 202):
                reservations.append((await response.json())["id"])
        elif action < 0.9 or not tickets:
            verb = "confirm" if action < 0.75 else "cancel"
            response = await client.post(f"/v1/reservations/{rng.choice(reservations)}/{verb}")
            if verb == "confirm" and response.status == 200:
                tickets.extend(ticket["id"] for ticket in (await response.json())["tickets"])
        else:
            await client.post(f"/v1/tickets/{rng.choice(tickets)}/check-in")
    clock.advance(400)  # some holds expire before the restart
    for actor in client.app[keys.REGISTRY].actors():
        actor.wake_expiry()
    await wait_until(lambda: all(a.inventory.next_expiry() is None or a.inventory.next_expiry() > clock() for a in client.app[keys.REGISTRY].actors()))
    before = full_state(client.app)
    statuses = {r.status for state in before.values() for r in state[3].values()}
    assert statuses == {"held", "confirmed", "cancelled", "expired", "waitlisted"}, statuses
    assert any(t.checked_in for a in client.app[keys.REGISTRY].actors() for t in a.inventory.ticket_types.values())
    await client.close()

    restarted = await start(clock=clock)
    assert full_state(restarted.app) == before


async def test_holds_expire_on_time_and_seats_return(start: Any, db: Any) -> None:
    clock = FakeClock()
    client = await start(clock=clock)
    event = await create_event(client, hold_seconds=60)
    held = await (await client.post(f"/v1/events/{event['id']}/reservations", json={"ticket_type": "GA", "quantity": 4, "user_id": "u"})).json()
    actor = client.app[keys.REGISTRY].get(event["id"])
    clock.advance(59)
    actor.wake_expiry()
    await wait_until(lambda: actor.mailbox_depth() == 0)
    assert (await (await client.get(f"/v1/reservations/{held['id']}")).json())["status"] == "held"
    clock.advance(1)
    actor.wake_expiry()
    await wait_until(lambda: actor.reservation(held["id"]).status == "expired")
    availability = await (await client.get(f"/v1/events/{event['id']}/availability")).json()
    assert availability["ticket_types"]["GA"]["available"] == 100
    late = await client.post(f"/v1/reservations/{held['id']}/confirm")
    assert late.status == 409 and (await late.json())["code"] == "hold_expired"
    kinds = [row["kind"] for row in await db.fetch("SELECT kind FROM journal WHERE event_id = $1 ORDER BY seq", event["id"])]
    assert kinds == ["event_created", "reservation_held", "hold_expired"]


async def test_confirming_after_the_hold_ended_expires_it_even_before_the_timer(start: Any) -> None:
    clock = FakeClock()
    client = await start(clock=clock)
    event = await create_event(client, hold_seconds=60)
    held = await (await client.post(f"/v1/events/{event['id']}/reservations", json={"ticket_type": "GA", "quantity": 1, "user_id": "u"})).json()
    clock.advance(61)  # the timer has not fired: it runs on the loop's time, not on this clock
    late = await client.post(f"/v1/reservations/{held['id']}/confirm")
    assert late.status == 409 and (await late.json())["code"] == "hold_expired"
    assert (await (await client.get(f"/v1/reservations/{held['id']}")).json())["status"] == "expired"


async def test_holds_that_fell_due_while_down_expire_at_recovery(start: Any) -> None:
    clock = FakeClock()
    client = await start(clock=clock)
    event = await create_event(client, hold_seconds=60)
    held = await (await client.post(f"/v1/events/{event['id']}/reservations", json={"ticket_type": "GA", "quantity": 2, "user_id": "u"})).json()
    await client.close()
    clock.advance(3600)
    restarted = await start(clock=clock)
    actor = restarted.app[keys.REGISTRY].get(event["id"])
    await wait_until(lambda: actor.reservation(held["id"]).status == "expired")
    availability = await (await restarted.get(f"/v1/events/{event['id']}/availability")).json()
    assert availability["ticket_types"]["GA"]["available"] == 100
