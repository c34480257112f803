"""The whole ticket lifecycle over HTTP on a real PostgreSQL: waiting lists (strictly FIFO, also
under concurrency), check-in (one scan wins), event management, event cancellation, reports,
reservation lists, a user's history, the catalogue's search and filters, and live availability.
Every rule is also in the seeded model test; here each is shown end to end, durably."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from inventoryd import limits
from inventoryd.http import keys
from tests.helpers import FakeClock, create_event, wait_until

GA = [{"code": "GA", "name": "General admission", "price": 5000, "capacity": 2}]


async def reserve(client: Any, event_id: str, user: str, quantity: int = 1, **extra: Any) -> Any:
    return await client.post(
        f"/v1/events/{event_id}/reservations",
        json={"ticket_type": "GA", "quantity": quantity, "user_id": user, **extra},
    )


async def body(response: Any) -> Any:
    return await response.json()


async def test_waitlist_joins_with_positions_and_promotes_fifo_on_cancel(client: Any) -> None:
    event = await create_event(client, ticket_types=GA)
    first = await body(await reserve(client, event["id"], "a", 2))
    sold_out = await reserve(client, event["id"], "b")
    assert sold_out.status == 409 and (await sold_out.json())["code"] == "sold_out"
    waiting = []
    for user in ("b", "c", "d"):
        response = await reserve(client, event["id"], user, waitlist=True)
        assert response.status == 202
        waiting.append(await response.json())
    assert [(w["status"], w["position"]) for w in waiting] == [("waitlisted", 1), ("waitlisted", 2), ("waitlisted", 3)]
    availability = await body(await client.get(f"/v1/events/{event['id']}/availability"))
    assert availability["ticket_types"]["GA"] == {"available": 0, "waitlist": 3}

    # One seat frees up (cancel of a 2-seat hold frees two): b and c move up, first in first out.
    await client.post(f"/v1/reservations/{first['id']}/cancel")
    states = [await body(await client.get(f"/v1/reservations/{w['id']}")) for w in waiting]
    assert [s["status"] for s in states] == ["held", "held", "waitlisted"]
    assert states[2]["position"] == 1
    assert states[0]["expires_at"] is not None
    confirmed = await client.post(f"/v1/reservations/{waiting[0]['id']}/confirm")
    assert confirmed.status == 200


async def test_waitlist_is_strict_fifo_when_the_head_does_not_fit(client: Any) -> None:
    event = await create_event(client, ticket_types=[{"code": "GA", "name": "GA", "price": 100, "capacity": 3}])
    holds = [await body(await reserve(client, event["id"], f"h{i}")) for i in range(3)]
    big = await body(await reserve(client, event["id"], "big", 2, waitlist=True))
    small = await body(await reserve(client, event["id"], "small", 1, waitlist=True))
    await client.post(f"/v1/reservations/{holds[0]['id']}/cancel")  # one seat: the head needs two
    assert (await body(await client.get(f"/v1/reservations/{big['id']}")))["status"] == "waitlisted"
    assert (await body(await client.get(f"/v1/reservations/{small['id']}")))["status"] == "waitlisted"
    await client.post(f"/v1/reservations/{holds[1]['id']}/cancel")  # two seats: the head goes
    assert (await body(await client.get(f"/v1/reservations/{big['id']}")))["status"] == "held"
    assert (await body(await client.get(f"/v1/reservations/{small['id']}")))["status"] == "waitlisted"


async def test_waitlist_promotion_on_expiry_under_concurrency(start: Any) -> None:
    clock = FakeClock()
    client = await start(clock=clock)
    event = await create_event(
        client, hold_seconds=60, ticket_types=[{"code": "GA", "name": "GA", "price": 100, "capacity": 5}]
    )
    await asyncio.gather(*(reserve(client, event["id"], f"early{i}") for i in range(5)))
    joined = await asyncio.gather(*(reserve(client, event["id"], f"late{i}", waitlist=True) for i in range(30)))
    assert {response.status for response in joined} == {202}
    waiting = sorted([await body(response) for response in joined], key=lambda r: int(r["id"].rpartition("_")[2]))
    assert sorted(w["position"] for w in waiting) == list(range(1, 31))
    # Joining order is the order the actor decided them: the ids' numbers.
    assert [w["position"] for w in waiting] == list(range(1, 31))
    clock.advance(61)
    actor = client.app[keys.REGISTRY].get(event["id"])
    actor.wake_expiry()
    await wait_until(lambda: actor.view().ticket_types[0].waiting == 25)
    states = [await body(await client.get(f"/v1/reservations/{w['id']}")) for w in waiting]
    assert [s["status"] for s in states] == ["held"] * 5 + ["waitlisted"] * 25
    assert [s["position"] for s in states[5:]] == list(range(1, 26))
    assert all(s["expires_at"] > clock().isoformat().replace("+00:00", "Z") for s in states[:5])


async def test_waitlisted_seats_count_against_the_per_user_limit(client: Any) -> None:
    event = await create_event(client, ticket_types=GA, per_user_limit=3)
    await reserve(client, event["id"], "a", 2)
    assert (await reserve(client, event["id"], "b", 2, waitlist=True)).status == 202
    over = await reserve(client, event["id"], "b", 2, waitlist=True)
    assert over.status == 409 and (await over.json())["code"] == "limit_exceeded"


async def test_two_concurrent_scans_of_one_ticket_exactly_one_wins(client: Any) -> None:
    event = await create_event(client)
    held = await body(await reserve(client, event["id"], "a", 2))
    confirmed = await body(await client.post(f"/v1/reservations/{held['id']}/confirm"))
    ticket_id = confirmed["tickets"][0]["id"]
    scans = await asyncio.gather(*(client.post(f"/v1/tickets/{ticket_id}/check-in") for _ in range(10)))
    statuses = sorted(scan.status for scan in scans)
    assert statuses == [200] + [409] * 9
    winner = next(scan for scan in scans if scan.status == 200)
    won = await winner.json()
    assert won["status"] == "checked_in" and won["checked_in_at"]
    loser = await next(scan for scan in scans if scan.status == 409).json()
    assert loser["code"] == "already_checked_in" and loser["checked_in_at"] == won["checked_in_at"]
    ticket = await body(await client.get(f"/v1/tickets/{ticket_id}"))
    assert ticket["status"] == "checked_in" and ticket["reservation_id"] == held["id"]
    other = await body(await client.get(f"/v1/tickets/{confirmed['tickets'][1]['id']}"))
    assert other["status"] == "valid"
    # A reservation with a used ticket is not refunded.
    cancel = await client.post(f"/v1/reservations/{held['id']}/cancel")
    assert cancel.status == 409
    assert (await client.get("/v1/tickets/tkt_nosuch_1_1")).status == 404


async def test_a_cancelled_ticket_cannot_check_in(client: Any) -> None:
    event = await create_event(client)
    held = await body(await reserve(client, event["id"], "a"))
    confirmed = await body(await client.post(f"/v1/reservations/{held['id']}/confirm"))
    await client.post(f"/v1/reservations/{held['id']}/cancel")
    scan = await client.post(f"/v1/tickets/{confirmed['tickets'][0]['id']}/check-in")
    assert scan.status == 409 and (await scan.json())["code"] == "conflict"


async def test_event_management(start: Any) -> None:
    clock = FakeClock()
    client = await start(clock=clock)
    event = await create_event(client, ticket_types=GA)
    updated = await client.patch(
        f"/v1/events/{event['id']}",
        json={"name": "Renamed", "venue": "Hall", "sale_starts_at": "2027-01-01T13:00:00Z", "description": None},
    )
    assert updated.status == 200
    shown = await updated.json()
    assert (shown["name"], shown["venue"], shown["sale_starts_at"]) == ("Renamed", "Hall", "2027-01-01T13:00:00Z")
    assert (await body(await client.get(f"/v1/events/{event['id']}")))["name"] == "Renamed"
    early = await reserve(client, event["id"], "a")
    assert early.status == 409 and (await early.json())["code"] == "sale_not_open"
    bad = await client.patch(f"/v1/events/{event['id']}", json={"sale_ends_at": "2027-01-01T12:00:00Z"})
    assert bad.status == 422 and (await bad.json())["field"] == "$.sale_ends_at"
    empty = await client.patch(f"/v1/events/{event['id']}", json={})
    assert empty.status == 422
    clock.advance(3600)
    held = await body(await reserve(client, event["id"], "a", 2))
    assert held["amount"] == 10_000

    added = await client.post(f"/v1/events/{event['id']}/ticket-types", json={"code": "VIP", "name": "VIP", "price": 20000, "capacity": 10})
    assert added.status == 201 and (await added.json())["available"] == 10
    again = await client.post(f"/v1/events/{event['id']}/ticket-types", json={"code": "VIP", "name": "VIP", "price": 1, "capacity": 1})
    assert again.status == 409

    below = await client.patch(f"/v1/events/{event['id']}/ticket-types/GA", json={"capacity": 1})
    assert below.status == 409 and (await below.json())["code"] == "capacity_below_reserved"
    waiting = await body(await reserve(client, event["id"], "b", 2, waitlist=True))
    raised = await client.patch(f"/v1/events/{event['id']}/ticket-types/GA", json={"capacity": 4, "price": 6000})
    assert raised.status == 200
    assert (await raised.json())["capacity"] == 4
    promoted = await body(await client.get(f"/v1/reservations/{waiting['id']}"))
    assert promoted["status"] == "held"  # the raised capacity went to the waiting list first
    new_price = await body(await client.post(
        f"/v1/events/{event['id']}/ticket-types", json={"code": "PIT", "name": "Pit", "price": 1, "capacity": 1}
    ))
    assert new_price["code"] == "PIT"
    unknown = await client.patch(f"/v1/events/{event['id']}/ticket-types/NOPE", json={"capacity": 4})
    assert unknown.status == 404


async def test_cancelling_an_event(client: Any) -> None:
    event = await create_event(client, ticket_types=GA)
    held = await body(await reserve(client, event["id"], "a"))
    sold = await body(await reserve(client, event["id"], "b"))
    await client.post(f"/v1/reservations/{sold['id']}/confirm")
    waiting = await body(await reserve(client, event["id"], "c", waitlist=True))
    cancelled = await client.post(f"/v1/events/{event['id']}/cancel")
    assert cancelled.status == 200 and (await cancelled.json())["status"] == "cancelled"
    assert (await body(await client.get(f"/v1/reservations/{held['id']}")))["status"] == "cancelled"
    refunded = await body(await client.get(f"/v1/reservations/{sold['id']}"))
    assert refunded["status"] == "cancelled" and refunded["refunded"] is True
    assert (await body(await client.get(f"/v1/reservations/{waiting['id']}")))["status"] == "cancelled"
    after = await reserve(client, event["id"], "d")
    assert after.status == 409 and (await after.json())["code"] == "event_cancelled"
    report = await body(await client.get(f"/v1/events/{event['id']}/report"))
    # Nothing of a cancelled event is available (issue 21 item 15b: it showed its free seats).
    assert report["total"] | {} == {
        "capacity": 2, "available": 0, "held": 0, "sold": 0, "checked_in": 0, "cancelled": 3, "revenue": 0, "waitlist": 0
    }
    again = await client.post(f"/v1/events/{event['id']}/cancel")
    assert again.status == 200
    listing = await body(await client.get("/v1/events"))
    assert listing["items"][0]["status"] == "cancelled"


async def test_report_revenue_is_the_sum_of_confirmed_amounts(client: Any) -> None:
    event = await create_event(
        client,
        ticket_types=[
            {"code": "GA", "name": "GA", "price": 1500, "capacity": 50},
            {"code": "VIP", "name": "VIP", "price": 9900, "capacity": 5},
        ],
    )
    reservations = []
    for index in range(12):
        code = "VIP" if index % 4 == 0 else "GA"
        response = await client.post(
            f"/v1/events/{event['id']}/reservations",
            json={"ticket_type": code, "quantity": 1 + index % 3, "user_id": f"u{index}"},
        )
        reservations.append(await response.json())
    confirmed = []
    for index, reservation in enumerate(reservations):
        if index % 3 != 2:
            confirmed.append(await body(await client.post(f"/v1/reservations/{reservation['id']}/confirm")))
    await client.post(f"/v1/reservations/{confirmed[0]['id']}/cancel")  # refunded: leaves revenue
    ticket = confirmed[1]["tickets"][0]["id"]
    await client.post(f"/v1/tickets/{ticket}/check-in")
    still_confirmed = [r for r in confirmed[1:]]
    report = await body(await client.get(f"/v1/events/{event['id']}/report"))
    by_type = {line["code"]: line for line in report["ticket_types"]}
    for code in ("GA", "VIP"):
        expected = sum(r["amount"] for r in still_confirmed if r["ticket_type"] == code)
        assert by_type[code]["revenue"] == expected
        assert by_type[code]["sold"] == sum(r["quantity"] for r in still_confirmed if r["ticket_type"] == code)
    assert report["total"]["revenue"] == sum(r["amount"] for r in still_confirmed)
    assert report["total"]["checked_in"] == 1
    assert report["total"]["cancelled"] == confirmed[0]["quantity"]
    assert report["currency"] == "EUR"


async def test_event_reservations_list(client: Any) -> None:
    event = await create_event(client, ticket_types=[{"code": "GA", "name": "GA", "price": 1, "capacity": 100}])
    made = [await body(await reserve(client, event["id"], f"u{i}")) for i in range(7)]
    for reservation in made[::2]:
        await client.post(f"/v1/reservations/{reservation['id']}/confirm")
    page = await body(await client.get(f"/v1/events/{event['id']}/reservations", params={"limit": "3"}))
    assert [r["id"] for r in page["items"]] == [r["id"] for r in made[:3]]
    rest = await body(await client.get(f"/v1/events/{event['id']}/reservations", params={"cursor": page["next_cursor"]}))
    assert [r["id"] for r in rest["items"]] == [r["id"] for r in made[3:]] and rest["next_cursor"] is None
    confirmed = await body(await client.get(f"/v1/events/{event['id']}/reservations", params={"status": "confirmed"}))
    assert [r["id"] for r in confirmed["items"]] == [r["id"] for r in made[::2]]
    bad = await client.get(f"/v1/events/{event['id']}/reservations", params={"status": "lost"})
    assert bad.status == 400 and (await bad.json())["field"] == "status"


async def test_user_history_across_events(client: Any) -> None:
    first = await create_event(client, name="First")
    second = await create_event(client, name="Second")
    mine = []
    for event in (first, second, first, second, first):
        mine.append(await body(await reserve(client, event["id"], "alice")))
        await reserve(client, event["id"], "bob")
    await client.post(f"/v1/reservations/{mine[1]['id']}/confirm")
    page = await body(await client.get("/v1/users/alice/reservations", params={"limit": "2"}))
    assert [r["id"] for r in page["items"]] == [mine[4]["id"], mine[3]["id"]]  # newest first
    rest = await body(await client.get("/v1/users/alice/reservations", params={"cursor": page["next_cursor"]}))
    assert [r["id"] for r in rest["items"]] == [mine[2]["id"], mine[1]["id"], mine[0]["id"]]
    assert rest["next_cursor"] is None
    confirmed = await body(await client.get("/v1/users/alice/reservations", params={"status": "confirmed"}))
    assert [r["id"] for r in confirmed["items"]] == [mine[1]["id"]] and confirmed["items"][0]["status"] == "confirmed"
    only_first = await body(await client.get("/v1/users/alice/reservations", params={"event_id": first["id"]}))
    assert [r["id"] for r in only_first["items"]] == [mine[4]["id"], mine[2]["id"], mine[0]["id"]]
    assert (await body(await client.get("/v1/users/nobody/reservations")))["items"] == []


async def test_catalogue_search_filters_and_sorts(client: Any) -> None:
    await create_event(client, name="Jazz night", venue="Blue Note", city="Paris", category="music", starts_at="2027-05-01T20:00:00Z")
    await create_event(client, name="Cup final", description="football", city="Lyon", category="sport", starts_at="2027-06-01T20:00:00Z")
    sold_out = await create_event(
        client, name="Opera gala", city="Paris", category="music", starts_at="2027-07-01T20:00:00Z",
        ticket_types=[{"code": "GA", "name": "GA", "price": 1, "capacity": 1}],
    )
    await reserve(client, sold_out["id"], "a")

    async def names(**params: str) -> list[str]:
        response = await client.get("/v1/events", params=params)
        assert response.status == 200, await response.text()
        return [item["name"] for item in (await response.json())["items"]]

    assert await names(q="jazz") == ["Jazz night"]
    assert await names(q="FOOT") == ["Cup final"]  # description, any case
    assert await names(q="blue note") == ["Jazz night"]  # venue
    assert await names(q="100%") == []  # LIKE wildcards are literal
    assert await names(city="paris") == ["Jazz night", "Opera gala"]
    assert await names(category="music", venue="Blue Note") == ["Jazz night"]
    assert await names(**{"from": "2027-05-15T00:00:00Z", "to": "2027-06-15T00:00:00Z"}) == ["Cup final"]
    assert await names(available="true") == ["Jazz night", "Cup final"]
    assert await names(sort="-starts_at") == ["Opera gala", "Cup final", "Jazz night"]
    assert await names(sort="name") == ["Cup final", "Jazz night", "Opera gala"]
    page = await body(await client.get("/v1/events", params={"sort": "name", "limit": "2"}))
    rest = await body(await client.get("/v1/events", params={"sort": "name", "cursor": page["next_cursor"]}))
    assert [i["name"] for i in page["items"] + rest["items"]] == ["Cup final", "Jazz night", "Opera gala"]
    wrong_sort = await client.get("/v1/events", params={"sort": "starts_at", "cursor": page["next_cursor"]})
    assert wrong_sort.status == 400
    for bad in ({"sort": "price"}, {"from": "yesterday"}, {"from": "2027-01-01T00:00:00"}, {"available": "maybe"}):
        response = await client.get("/v1/events", params=bad)
        assert response.status == 400 and (await response.json())["field"] == next(iter(bad))


async def test_live_availability_stream(client: Any) -> None:
    event = await create_event(client)
    async with client.get(f"/v1/events/{event['id']}/availability/stream") as stream:
        assert stream.status == 200 and stream.content_type == "text/event-stream"
        # A stream sends its headers itself: the common ones are there all the same.
        assert stream.headers["X-Content-Type-Options"] == "nosniff" and stream.headers["X-Request-ID"]

        async def next_event() -> dict[str, Any]:
            import json

            lines: list[str] = []
            while True:
                line = (await asyncio.wait_for(stream.content.readline(), 5)).decode().rstrip("\n")
                if line == "" and lines:
                    data = next(item for item in lines if item.startswith("data: "))
                    return json.loads(data.removeprefix("data: "))
                if line and not line.startswith(":"):
                    lines.append(line)

        assert (await next_event())["ticket_types"]["GA"]["available"] == 100
        await reserve(client, event["id"], "a", 3)
        await reserve(client, event["id"], "b", 2)
        update = await next_event()
        # Both changes may arrive together (coalesced) or one after the other.
        if update["ticket_types"]["GA"]["available"] == 97:
            update = await next_event()
        assert update["ticket_types"]["GA"]["available"] == 95


async def test_a_stream_ends_when_its_event_leaves_this_node(client: Any) -> None:
    # The shard moved (taken by another node, or handed over in a rebalance): the actor the stream
    # watches is gone from here and will never change again. The stream must end at once, so the
    # client reconnects (through any node, to the new owner), not hear "still here" from a stale
    # copy for an hour.
    event = await create_event(client)
    registry = client.app[keys.REGISTRY]
    async with client.get(f"/v1/events/{event['id']}/availability/stream") as stream:
        assert stream.status == 200
        assert (await asyncio.wait_for(stream.content.readline(), 5)).startswith(b"event: availability")
        registry.shard_lost(registry.cluster.shard_of(event["id"]))
        rest = await asyncio.wait_for(stream.content.read(), 3)
        assert b"event: availability" not in rest


async def test_stream_subscribers_are_bounded(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    event = await create_event(client)
    monkeypatch.setattr(limits, "STREAM_SUBSCRIBERS_MAX", 1)
    async with client.get(f"/v1/events/{event['id']}/availability/stream") as first:
        assert first.status == 200
        await first.content.readline()
        second = await client.get(f"/v1/events/{event['id']}/availability/stream")
        assert second.status == 503 and "Retry-After" in second.headers


async def test_lifecycle_survives_a_restart(start: Any) -> None:
    clock = FakeClock()
    client = await start(clock=clock)
    event = await create_event(client, ticket_types=GA, per_user_limit=4)
    held = await body(await reserve(client, event["id"], "a", 2))
    confirmed = await body(await client.post(f"/v1/reservations/{held['id']}/confirm"))
    await client.post(f"/v1/tickets/{confirmed['tickets'][0]['id']}/check-in")
    waiting = await body(await reserve(client, event["id"], "b", 1, waitlist=True))
    await client.patch(f"/v1/events/{event['id']}", json={"name": "Kept"})
    await client.post(f"/v1/events/{event['id']}/ticket-types", json={"code": "VIP", "name": "VIP", "price": 1, "capacity": 1})
    before = {
        "event": await body(await client.get(f"/v1/events/{event['id']}")),
        "report": await body(await client.get(f"/v1/events/{event['id']}/report")),
        "waiting": await body(await client.get(f"/v1/reservations/{waiting['id']}")),
        "ticket": await body(await client.get(f"/v1/tickets/{confirmed['tickets'][0]['id']}")),
    }
    await client.close()
    restarted = await start(clock=clock)
    after = {
        "event": await body(await restarted.get(f"/v1/events/{event['id']}")),
        "report": await body(await restarted.get(f"/v1/events/{event['id']}/report")),
        "waiting": await body(await restarted.get(f"/v1/reservations/{waiting['id']}")),
        "ticket": await body(await restarted.get(f"/v1/tickets/{confirmed['tickets'][0]['id']}")),
    }
    assert after == before
