"""The HTTP contract of API.md for the core routes, end to end against a real PostgreSQL: shapes,
status codes, problem documents, idempotent replay (also across an app restart) and committed reads."""

from __future__ import annotations

from typing import Any

from tests.helpers import FakeClock, create_event, event_body


async def reserve(client: Any, event_id: str, **body: Any) -> Any:
    payload = {"ticket_type": "GA", "quantity": 1, "user_id": "alice"}
    payload.update(body)
    headers = body.pop("headers", None)
    payload.pop("headers", None)
    return await client.post(f"/v1/events/{event_id}/reservations", json=payload, headers=headers)


async def test_create_and_read_an_event(client: Any) -> None:
    event = await create_event(client, venue="Arena", city="Lyon", per_user_limit=4)
    assert event["id"].startswith("evt_")
    assert event["status"] == "on_sale"
    assert event["ticket_types"] == [
        {"code": "GA", "name": "General admission", "price": 4500, "capacity": 100, "available": 100, "held": 0, "sold": 0,
         "seated": False, "blocked": 0}
    ]
    response = await client.get(f"/v1/events/{event['id']}")
    assert response.status == 200
    assert await response.json() == event
    availability = await (await client.get(f"/v1/events/{event['id']}/availability")).json()
    assert availability == {"event_id": event["id"], "status": "on_sale", "ticket_types": {"GA": {"available": 100, "waitlist": 0}}}


async def test_reserve_confirm_cancel(client: Any) -> None:
    event = await create_event(client)
    response = await reserve(client, event["id"], quantity=3)
    assert response.status == 201
    held = await response.json()
    assert held["status"] == "held" and held["quantity"] == 3 and held["amount"] == 3 * 4500
    assert held["user_id"] == "alice" and held["event_id"] == event["id"]
    assert held["expires_at"] > held["created_at"]

    confirmed = await client.post(f"/v1/reservations/{held['id']}/confirm")
    assert confirmed.status == 200
    body = await confirmed.json()
    assert body["status"] == "confirmed"
    assert len({ticket["id"] for ticket in body["tickets"]}) == 3
    assert all(ticket["status"] == "valid" for ticket in body["tickets"])

    event_now = await (await client.get(f"/v1/events/{event['id']}")).json()
    assert event_now["ticket_types"][0] | {} == {**event["ticket_types"][0], "available": 97, "sold": 3}

    cancelled = await client.post(f"/v1/reservations/{held['id']}/cancel")
    assert cancelled.status == 200
    body = await cancelled.json()
    assert body["status"] == "cancelled" and body["refunded"] is True
    assert all(ticket["status"] == "cancelled" for ticket in body["tickets"])
    fetched = await (await client.get(f"/v1/reservations/{held['id']}")).json()
    assert fetched == body
    availability = await (await client.get(f"/v1/events/{event['id']}/availability")).json()
    assert availability["ticket_types"]["GA"]["available"] == 100


async def test_cancelling_a_hold_is_not_a_refund_and_repeats_are_harmless(client: Any) -> None:
    event = await create_event(client)
    held = await (await reserve(client, event["id"])).json()
    first = await client.post(f"/v1/reservations/{held['id']}/cancel")
    second = await client.post(f"/v1/reservations/{held['id']}/cancel")
    assert first.status == second.status == 200
    assert (await first.json())["refunded"] is False
    assert await first.json() == await second.json()
    confirm = await client.post(f"/v1/reservations/{held['id']}/confirm")
    assert confirm.status == 409
    assert (await confirm.json())["code"] == "conflict"


async def test_sold_out_and_insufficient_tickets(client: Any) -> None:
    event = await create_event(client, ticket_types=[{"code": "GA", "name": "GA", "price": 100, "capacity": 3}])
    assert (await reserve(client, event["id"], quantity=2)).status == 201
    short = await reserve(client, event["id"], quantity=2, user_id="bob")
    assert short.status == 409
    problem = await short.json()
    assert short.content_type == "application/problem+json"
    assert problem["code"] == "insufficient_tickets" and problem["available"] == 1 and "1" in problem["detail"]
    assert (await reserve(client, event["id"], quantity=1, user_id="bob")).status == 201
    sold_out = await reserve(client, event["id"], user_id="carol")
    assert sold_out.status == 409
    assert (await sold_out.json())["code"] == "sold_out"


async def test_per_user_limit(client: Any) -> None:
    event = await create_event(client, per_user_limit=2)
    assert (await reserve(client, event["id"], quantity=2)).status == 201
    over = await reserve(client, event["id"])
    assert over.status == 409
    assert (await over.json())["code"] == "limit_exceeded"
    assert (await reserve(client, event["id"], user_id="bob", quantity=2)).status == 201


async def test_sale_window(start: Any) -> None:
    clock = FakeClock()
    client = await start(clock=clock)
    event = await create_event(client, sale_starts_at="2027-01-01T13:00:00Z", sale_ends_at="2027-01-01T14:00:00Z")
    early = await reserve(client, event["id"])
    assert early.status == 409 and (await early.json())["code"] == "sale_not_open"
    clock.advance(3600)
    assert (await reserve(client, event["id"])).status == 201
    clock.advance(3600)
    late = await reserve(client, event["id"])
    assert late.status == 409 and (await late.json())["code"] == "sale_not_open"


async def test_unknown_things_are_404_problems(client: Any) -> None:
    event = await create_event(client)
    for path in (
        "/v1/events/evt_nosuchevent",
        "/v1/reservations/rsv_nosuchevent_1",
        "/v1/reservations/garbage",
        f"/v1/reservations/rsv_{event['id'][4:]}_99",
        "/v1/no-such-route",
    ):
        response = await client.get(path)
        assert response.status == 404, path
        assert response.content_type == "application/problem+json"
        assert (await response.json())["code"] == "not_found"
    unknown_type = await reserve(client, event["id"], ticket_type="VIP")
    assert unknown_type.status == 404
    assert "VIP" in (await unknown_type.json())["detail"]
    wrong_method = await client.delete("/v1/events")
    assert wrong_method.status == 405
    assert (await wrong_method.json())["code"] == "method_not_allowed"


async def test_idempotent_reserve_replays_and_refuses_a_different_body(client: Any) -> None:
    event = await create_event(client)
    headers = {"Idempotency-Key": "order-42"}
    first = await reserve(client, event["id"], quantity=2, headers=headers)
    again = await reserve(client, event["id"], quantity=2, headers=headers)
    assert first.status == again.status == 201
    assert await first.json() == await again.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    different = await reserve(client, event["id"], quantity=3, headers=headers)
    assert different.status == 409
    assert (await different.json())["code"] == "idempotency_conflict"
    availability = await (await client.get(f"/v1/events/{event['id']}/availability")).json()
    assert availability["ticket_types"]["GA"]["available"] == 98


async def test_idempotent_replay_survives_a_restart(start: Any) -> None:
    client = await start()
    event = await create_event(client)
    headers = {"Idempotency-Key": "k-1"}
    original = await (await reserve(client, event["id"], headers=headers)).json()
    await client.post(f"/v1/reservations/{original['id']}/confirm", headers={"Idempotency-Key": "k-2"})
    await client.close()

    restarted = await start()
    replay = await reserve(restarted, event["id"], headers=headers)
    assert replay.status == 201
    assert await replay.json() == original  # the original answer (held), not today's state
    confirmed = await restarted.post(f"/v1/reservations/{original['id']}/confirm", headers={"Idempotency-Key": "k-2"})
    assert confirmed.status == 200 and confirmed.headers["Idempotent-Replayed"] == "true"
    availability = await (await restarted.get(f"/v1/events/{event['id']}/availability")).json()
    assert availability["ticket_types"]["GA"]["available"] == 99


async def test_concurrent_duplicates_change_state_once(client: Any) -> None:
    import asyncio

    event = await create_event(client)
    headers = {"Idempotency-Key": "same"}
    responses = await asyncio.gather(*(reserve(client, event["id"], headers=headers) for _ in range(20)))
    bodies = [await response.json() for response in responses]
    assert {response.status for response in responses} == {201}
    assert len({body["id"] for body in bodies}) == 1
    availability = await (await client.get(f"/v1/events/{event['id']}/availability")).json()
    assert availability["ticket_types"]["GA"]["available"] == 99


async def test_idempotent_event_creation(client: Any) -> None:
    headers = {"Idempotency-Key": "create-1"}
    first = await client.post("/v1/events", json=event_body(), headers=headers)
    second = await client.post("/v1/events", json=event_body(), headers=headers)
    assert first.status == second.status == 201
    assert await first.json() == await second.json()
    listing = await (await client.get("/v1/events")).json()
    assert len(listing["items"]) == 1


async def test_catalogue_pagination_is_stable_while_events_are_added(client: Any) -> None:
    for day in range(1, 8):
        await create_event(client, name=f"Show {day}", starts_at=f"2027-03-0{day}T20:00:00Z")
    page = await (await client.get("/v1/events", params={"limit": "3"})).json()
    assert [item["name"] for item in page["items"]] == ["Show 1", "Show 2", "Show 3"]
    # An event that sorts before the cursor must not shift the next page.
    await create_event(client, name="Show 0", starts_at="2027-02-01T20:00:00Z")
    second = await (await client.get("/v1/events", params={"limit": "3", "cursor": page["next_cursor"]})).json()
    assert [item["name"] for item in second["items"]] == ["Show 4", "Show 5", "Show 6"]
    last = await (await client.get("/v1/events", params={"limit": "3", "cursor": second["next_cursor"]})).json()
    assert [item["name"] for item in last["items"]] == ["Show 7"] and last["next_cursor"] is None
    bad = await client.get("/v1/events", params={"cursor": "!!"})
    assert bad.status == 400 and (await bad.json())["field"] == "cursor"


async def test_health_and_readiness(client: Any) -> None:
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["status"] == "ready"


async def test_request_id_is_echoed_or_made(client: Any) -> None:
    given = await client.get("/healthz", headers={"X-Request-ID": "trace-123"})
    assert given.headers["X-Request-ID"] == "trace-123"
    made = await client.get("/healthz")
    assert made.headers["X-Request-ID"] != (await client.get("/healthz")).headers["X-Request-ID"]
