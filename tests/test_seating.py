"""Reserved seating: seat maps, exact seats, best available without orphans, blocks, and the map
as the log says it is.

Method: the app in-process on a real PostgreSQL for the HTTP flows (a 5,000-seat map under 2,000
concurrent best-available requests; overlapping exact-seat requests; bad input refused with nothing
changed); a real `inventoryd serve` killed with SIGKILL mid-sale for durability; and a seeded
property test of the state machine against a small reference model of the seat map, which picks
best available by brute force over every row (INVENTORYD_SEATING_STEPS sets its length, the seed is
printed on failure).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import xml.etree.ElementTree as ElementTree
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from inventoryd import domain
from inventoryd.audit import audit
from inventoryd.domain import Inventory, SeatLayout
from inventoryd.http import keys
from persistence import store
from tests.helpers import ADMIN, create_event, free_port, full_state, running_server, wait_ready

STEPS = int(os.environ.get("INVENTORYD_SEATING_STEPS", "3000"))
SEED = int(os.environ.get("INVENTORYD_SEATING_SEED", str(random.randrange(1_000_000))))


def seated_types(**extra: Any) -> list[dict[str, Any]]:
    return [
        {"code": "PREM", "name": "Premium", "price": 9000, "capacity": 0, "seated": True},
        {"code": "STD", "name": "Standard", "price": 5000, "capacity": 0, "seated": True},
        {"code": "GA", "name": "Standing", "price": 3000, "capacity": 50},
    ]


SMALL_MAP: dict[str, Any] = {
    "sections": [
        {
            "id": "A",
            "ticket_type": "PREM",
            "rows": [{"id": "1", "seats": [{"id": str(n)} for n in range(1, 11)]}, {"id": "2", "seats": [{"id": str(n)} for n in range(1, 11)]}],
        }
    ],
    "blocks": [{"section": "B", "rows": 5, "seats_per_row": 20, "ticket_type": "STD"}],
}


async def seated_event(client: Any, seat_map: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    event = await create_event(client, ticket_types=seated_types(), **overrides)
    response = await client.put(f"/v1/events/{event['id']}/seatmap", json=seat_map or SMALL_MAP)
    assert response.status == 200, await response.text()
    return await response.json()


def adjacent(seat_ids: list[str]) -> bool:
    """The seats are in one row, side by side (numbered in order, as the maps here are)."""
    rows = {seat.rsplit("-", 1)[0] for seat in seat_ids}
    numbers = sorted(int(seat.rsplit("-", 1)[1]) for seat in seat_ids)
    return len(rows) == 1 and numbers == list(range(numbers[0], numbers[0] + len(numbers)))


async def test_a_seated_sale_end_to_end(client: Any) -> None:
    event = await seated_event(client)
    event_id = event["id"]
    capacities = {t["code"]: (t["capacity"], t["seated"]) for t in event["ticket_types"]}
    assert capacities == {"PREM": (20, True), "STD": (100, True), "GA": (50, False)}
    layout = await (await client.get(f"/v1/events/{event_id}/seatmap")).json()
    assert layout["blocks"] == [{"section": "B", "rows": 5, "seats_per_row": 20, "ticket_type": "STD"}]

    # Best available: the middle of the front row, side by side.
    best = await client.post(f"/v1/events/{event_id}/reservations", json={"user_id": "u1", "ticket_type": "STD", "quantity": 4})
    held = await best.json()
    assert best.status == 201, held
    assert held["seats"] == ["B-1-9", "B-1-10", "B-1-11", "B-1-12"]
    # Exact seats, all or none.
    exact = await client.post(f"/v1/events/{event_id}/reservations", json={"user_id": "u1", "ticket_type": "PREM", "seats": ["A-1-5", "A-1-6"]})
    assert exact.status == 201 and (await exact.json())["seats"] == ["A-1-5", "A-1-6"]
    overlap = await client.post(f"/v1/events/{event_id}/reservations", json={"user_id": "u1", "ticket_type": "PREM", "seats": ["A-1-6", "A-1-7"]})
    problem = await overlap.json()
    assert overlap.status == 409 and problem["code"] == "seats_unavailable" and problem["seats"] == ["A-1-6"]
    assert (await client.get(f"/v1/events/{event_id}/seats", params={"section": "A"})).status == 200

    confirmed = await (await client.post(f"/v1/reservations/{held['id']}/confirm")).json()
    assert [ticket["seat"] for ticket in confirmed["tickets"]] == held["seats"]
    ticket = await (await client.get(f"/v1/tickets/{confirmed['tickets'][0]['id']}")).json()
    assert ticket["seat"] == "B-1-9"

    seats = await (await client.get(f"/v1/events/{event_id}/seats")).json()
    rows = {(section["id"], row["id"]): row for section in seats["sections"] for row in section["rows"]}
    assert rows["A", "1"]["status"] == "ffffhhffff" and rows["B", "1"]["status"] == "f" * 8 + "ssss" + "f" * 8
    assert rows["B", "1"]["seats"][:3] == ["1", "2", "3"]
    assert (seats["free"], seats["held"], seats["sold"], seats["blocked"]) == (114, 2, 4, 0)

    # Blocked seats are never sold or picked.
    blocked = await client.post(f"/v1/events/{event_id}/seats/block", json={"seats": ["A-1-1", "A-1-2"], "reason": "camera"})
    assert blocked.status == 200, await blocked.text()
    prem = next(t for t in (await blocked.json())["ticket_types"] if t["code"] == "PREM")
    assert (prem["blocked"], prem["available"]) == (2, 16)
    refused = await client.post(f"/v1/events/{event_id}/reservations", json={"user_id": "u1", "ticket_type": "PREM", "seats": ["A-1-1"]})
    assert refused.status == 409 and (await refused.json())["seats"] == ["A-1-1"]
    on_held = await client.post(f"/v1/events/{event_id}/seats/block", json={"seats": ["A-1-5"], "reason": "broken"})
    assert on_held.status == 409 and (await on_held.json())["seats"] == ["A-1-5"]
    unblocked = await client.post(f"/v1/events/{event_id}/seats/unblock", json={"seats": ["A-1-1"]})
    assert next(t for t in (await unblocked.json())["ticket_types"] if t["code"] == "PREM")["blocked"] == 1

    # The map drawn: a square a seat, coloured by status.
    svg = await client.get(f"/v1/events/{event_id}/seatmap.svg")
    assert svg.status == 200 and svg.content_type == "image/svg+xml"
    drawn = ElementTree.fromstring(await svg.read())
    statuses = [rect.get("data-status") for rect in drawn.iter("{http://www.w3.org/2000/svg}rect") if rect.get("data-status")]
    assert len(statuses) == 120 and statuses.count("sold") == 4 and statuses.count("held") == 2 and statuses.count("blocked") == 1
    again = await client.get(f"/v1/events/{event_id}/seatmap.svg", headers={"If-None-Match": svg.headers["ETag"]})
    assert again.status == 304

    # The layout may change only where no seat is held or sold: the sold block stays.
    smaller = {"blocks": [{"section": "B", "rows": 1, "seats_per_row": 8, "ticket_type": "STD"}]}
    moved = await client.put(f"/v1/events/{event_id}/seatmap", json=smaller)
    problem = await moved.json()
    assert moved.status == 409 and problem["code"] == "seats_unavailable"
    assert set(problem["seats"]) == {"A-1-5", "A-1-6", "B-1-9", "B-1-10", "B-1-11", "B-1-12"}
    # A seated type's capacity is its seats on the map.
    capacity = await client.patch(f"/v1/events/{event_id}/ticket-types/PREM", json={"capacity": 99})
    assert capacity.status == 409 and (await capacity.json())["field"] == "$.capacity"

    # Cancel frees the seats; an orphan-free block is found in the front row again.
    await client.post(f"/v1/reservations/{held['id']}/cancel")
    again_best = await (await client.post(f"/v1/events/{event_id}/reservations", json={"user_id": "u1", "ticket_type": "STD", "quantity": 2})).json()
    assert again_best["seats"] == ["B-1-10", "B-1-11"]
    actor = client.app[keys.REGISTRY].get(event_id)
    actor.inventory.check_invariants()
