"""Bad input gets a clear 4xx problem naming what is wrong, and changes nothing.

Method: each malformed request is sent to a live app over real HTTP; the answer must be a problem
document with the expected status, code and field, and afterwards the event's availability and the
number of log records must be exactly what they were.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest

from inventoryd import limits
from inventoryd.http.schemas import MOMENT_PATTERN, digits_between
from tests.helpers import create_event, event_body

RESERVE = "/v1/events/{event_id}/reservations"
JSON_HEADERS = {"Content-Type": "application/json"}

# (name, raw body, status, field that must be named or None)
BAD_RESERVATIONS = [
    ("malformed JSON", b'{"ticket_type": "GA", ', 400, None),
    ("not JSON at all", b"quantity=2", 400, None),
    ("empty body", b"", 400, None),
    ("an array", b"[1, 2]", 422, "$"),
    ("unknown field", b'{"ticket_type": "GA", "quantity": 1, "user_id": "u", "seat": "A1"}', 422, "$.seat"),
    ("missing quantity", b'{"ticket_type": "GA", "user_id": "u"}', 422, "$.quantity"),
    ("quantity as a string", b'{"ticket_type": "GA", "quantity": "2", "user_id": "u"}', 422, "$.quantity"),
    ("quantity as a float", b'{"ticket_type": "GA", "quantity": 1.5, "user_id": "u"}', 422, "$.quantity"),
    ("zero quantity", b'{"ticket_type": "GA", "quantity": 0, "user_id": "u"}', 422, "$.quantity"),
    ("negative quantity", b'{"ticket_type": "GA", "quantity": -3, "user_id": "u"}', 422, "$.quantity"),
    ("huge quantity", b'{"ticket_type": "GA", "quantity": 99999999999999999999, "user_id": "u"}', 422, "$.quantity"),
    ("quantity over the bound", json.dumps({"ticket_type": "GA", "quantity": limits.RESERVATION_QUANTITY_MAX + 1, "user_id": "u"}).encode(), 422, "$.quantity"),
    ("null ticket type", b'{"ticket_type": null, "quantity": 1, "user_id": "u"}', 422, "$.ticket_type"),
    ("ticket type with spaces", b'{"ticket_type": "G A", "quantity": 1, "user_id": "u"}', 422, "$.ticket_type"),
    ("missing user for a service", b'{"ticket_type": "GA", "quantity": 1}', 422, "$.user_id"),
    ("empty user id", b'{"ticket_type": "GA", "quantity": 1, "user_id": ""}', 422, "$.user_id"),
    ("waitlist as a string", b'{"ticket_type": "GA", "quantity": 1, "user_id": "u", "waitlist": "yes"}', 422, "$.waitlist"),
    ("invalid UTF-8", b'{"ticket_type": "\xff\xfe", "quantity": 1, "user_id": "u"}', 400, None),
]


async def snapshot(client: Any, db: Any, event_id: str) -> tuple[Any, int, int]:
    availability = await (await client.get(f"/v1/events/{event_id}/availability")).json()
    records = await db.fetchval("SELECT count(*) FROM journal")
    events = await db.fetchval("SELECT count(*) FROM events")
    return availability, records, events


def assert_problem(response: Any, body: dict[str, Any], status: int, field: str | None) -> None:
    assert response.status == status, body
    assert response.content_type == "application/problem+json"
    assert set(body) >= {"type", "title", "status", "detail", "code"}
    assert body["status"] == status and body["detail"]
    if field is not None:
        assert body.get("field") == field, body


@pytest.mark.parametrize(("name", "raw", "status", "field"), BAD_RESERVATIONS, ids=[case[0] for case in BAD_RESERVATIONS])
async def test_bad_reservation_bodies(client: Any, db: Any, name: str, raw: bytes, status: int, field: str | None) -> None:
    event = await create_event(client)
    before = await snapshot(client, db, event["id"])
    response = await client.post(RESERVE.format(event_id=event["id"]), data=raw, headers=JSON_HEADERS)
    assert_problem(response, await response.json(), status, field)
    assert await snapshot(client, db, event["id"]) == before


async def test_unknown_event_and_ticket_type(client: Any, db: Any) -> None:
    event = await create_event(client)
    before = await snapshot(client, db, event["id"])
    body = {"ticket_type": "GA", "quantity": 1, "user_id": "u"}
    response = await client.post(RESERVE.format(event_id="evt_doesnotexist"), json=body)
    assert_problem(response, await response.json(), 404, "event_id")
    response = await client.post(RESERVE.format(event_id=event["id"]), json=body | {"ticket_type": "VIP"})
    problem = await response.json()
    assert_problem(response, problem, 404, None)
    assert problem["code"] == "not_found" and "VIP" in problem["detail"]
    assert await snapshot(client, db, event["id"]) == before


async def test_oversized_body_is_refused_before_it_is_read(client: Any, db: Any) -> None:
    event = await create_event(client)
    before = await snapshot(client, db, event["id"])
    padding = "x" * (limits.REQUEST_BODY_BYTES_MAX + 1)
    raw = json.dumps({"ticket_type": "GA", "quantity": 1, "user_id": "u", "pad": padding}).encode()
    response = await client.post(RESERVE.format(event_id=event["id"]), data=raw, headers=JSON_HEADERS)
    problem = await response.json()
    assert_problem(response, problem, 413, None)
    assert problem["code"] == "payload_too_large"
    assert await snapshot(client, db, event["id"]) == before


async def test_wrong_content_type(client: Any, db: Any) -> None:
    event = await create_event(client)
    response = await client.post(
        RESERVE.format(event_id=event["id"]),
        data=b'{"ticket_type": "GA", "quantity": 1, "user_id": "u"}',
        headers={"Content-Type": "text/plain"},
    )
    assert_problem(response, await response.json(), 415, None)


async def test_bad_idempotency_key(client: Any, db: Any) -> None:
    event = await create_event(client)
    before = await snapshot(client, db, event["id"])
    body = {"ticket_type": "GA", "quantity": 1, "user_id": "u"}
    for key in ("k" * (limits.IDEMPOTENCY_KEY_BYTES_MAX + 1), "tab\there", "caf\u00e9"):
        response = await client.post(RESERVE.format(event_id=event["id"]), json=body, headers={"Idempotency-Key": key})
        assert_problem(response, await response.json(), 400, "Idempotency-Key")
    assert await snapshot(client, db, event["id"]) == before


async def test_confirm_takes_no_body(client: Any, db: Any) -> None:
    event = await create_event(client)
    held = await (await client.post(RESERVE.format(event_id=event["id"]), json={"ticket_type": "GA", "quantity": 1, "user_id": "u"})).json()
    before = await snapshot(client, db, event["id"])
    response = await client.post(f"/v1/reservations/{held['id']}/confirm", json={"quantity": 5})
    assert_problem(response, await response.json(), 422, None)
    assert await snapshot(client, db, event["id"]) == before


BAD_EVENTS = [
    ("no ticket types", {"ticket_types": []}, "$.ticket_types"),
    ("lowercase currency", {"currency": "eur"}, "$.currency"),
    ("time without a zone", {"starts_at": "2027-06-01T19:00:00"}, "$.starts_at"),
    ("not a time", {"starts_at": "tomorrow"}, "$.starts_at"),
    ("negative price", {"ticket_types": [{"code": "GA", "name": "GA", "price": -1, "capacity": 1}]}, "$.ticket_types[0].price"),
    ("capacity over the bound", {"ticket_types": [{"code": "GA", "name": "GA", "price": 1, "capacity": limits.TICKET_TYPE_CAPACITY_MAX + 1}]}, "$.ticket_types[0].capacity"),
    ("duplicate codes", {"ticket_types": [{"code": "GA", "name": "A", "price": 1, "capacity": 1}, {"code": "GA", "name": "B", "price": 1, "capacity": 1}]}, "$.ticket_types[1].code"),
    ("ends before it starts", {"ends_at": "2027-05-01T19:00:00Z"}, "$.ends_at"),
    ("sale ends before it starts", {"sale_starts_at": "2027-05-01T00:00:00Z", "sale_ends_at": "2027-04-01T00:00:00Z"}, "$.sale_ends_at"),
    ("hold too short", {"hold_seconds": 1}, "$.hold_seconds"),
    ("zero per-user limit", {"per_user_limit": 0}, "$.per_user_limit"),
    ("empty name", {"name": ""}, "$.name"),
    ("unknown field", {"organiser": "me"}, "$.organiser"),
]


@pytest.mark.parametrize(("name", "overrides", "field"), BAD_EVENTS, ids=[case[0] for case in BAD_EVENTS])
async def test_bad_events(client: Any, db: Any, name: str, overrides: dict[str, Any], field: str) -> None:
    response = await client.post("/v1/events", json=event_body(**overrides))
    assert_problem(response, await response.json(), 422, field)
    assert await db.fetchval("SELECT count(*) FROM events") == 0
    assert await db.fetchval("SELECT count(*) FROM journal") == 0


@pytest.mark.parametrize("query", [{"limit": "0"}, {"limit": "abc"}, {"limit": "100000"}, {"cursor": "%%%"}])
async def test_bad_list_queries(client: Any, query: dict[str, str]) -> None:
    response = await client.get("/v1/events", params=query)
    assert response.status == 400
    assert (await response.json())["field"] == next(iter(query))


async def test_text_postgresql_cannot_store_is_refused_at_the_edge(client: Any, db: Any) -> None:
    """NUL (and unpaired surrogates) would make PostgreSQL refuse the statement: refused here, named."""
    response = await client.post("/v1/events", data=json.dumps(event_body(name="bad\u0000name")).encode(), headers=JSON_HEADERS)
    assert_problem(response, await response.json(), 422, "$.name")
    # An unpaired surrogate escape is not valid JSON text at all: msgspec says so.
    response = await client.post("/v1/events", data=b'{"name": "x\\ud800", "starts_at": "2027-01-01T00:00:00Z", "currency": "EUR", "ticket_types": [{"code": "GA", "name": "GA", "price": 1, "capacity": 1}]}', headers=JSON_HEADERS)
    assert_problem(response, await response.json(), 400, None)
    for query in ({"q": "a\x00b"}, {"city": "\x00"}):
        response = await client.get("/v1/events", params=query)
        assert_problem(response, await response.json(), 400, next(iter(query)))
    response = await client.post(
        "/v1/auth/register", data=json.dumps({"email": "a\u0000@b.co", "password": "long enough pass", "name": "x"}).encode(), headers=JSON_HEADERS
    )
    assert_problem(response, await response.json(), 422, "$.email")
    assert await db.fetchval("SELECT count(*) FROM events") == 0


# -- the hardening findings' classes, where else they were: times, cursors, keys, query integers --


def test_the_documented_time_pattern_is_the_year_bound_the_server_checks() -> None:
    """Finding 5: the document states the years as a pattern; it must take exactly the years the
    server takes (all 10,000 four-digit years tried), and `digits_between` any range."""
    for year in range(10_000):
        in_bounds = limits.MOMENT_YEAR_MIN <= year <= limits.MOMENT_YEAR_MAX
        assert (re.search(MOMENT_PATTERN, f"{year:04d}-06-01T19:00:00Z") is not None) == in_bounds, year
    for low, high in [(0, 9999), (123, 4567), (1999, 2001), (5, 5), (2000, 2999), (9990, 9999)]:
        pattern = re.compile(f"^{digits_between(f'{low:04d}', f'{high:04d}')}$")
        assert [n for n in range(10_000) if (pattern.match(f"{n:04d}") is not None) != (low <= n <= high)] == []


# Times at the edges of the years: accepted (and stored, and paged through by cursor) or refused.
EDGE_TIMES = [
    ("2000-01-01T00:00:00+23:59", 201),  # 1999-12-31T00:01Z in UTC: still storable
    ("9998-12-31T23:59:59.999999-23:59", 201),  # 9999-01-01T23:58:59.999999Z
    ("1999-12-31T23:59:59Z", 422),
    ("9999-01-01T00:00:00Z", 422),
]


async def test_times_at_the_edges_of_the_years(client: Any, db: Any) -> None:
    """Finding 5, the bounds themselves: a time written in the first or last year is stored, and
    the catalogue pages through such events by cursor (its UTC keys a day beyond those years);
    one a year beyond is refused naming the field, on create and on change."""
    event = await create_event(client)
    for moment, status in EDGE_TIMES:
        response = await client.post("/v1/events", json=event_body(name=moment, starts_at=moment))
        assert response.status == status, await response.text()
        if status == 422:
            assert (await response.json())["field"] == "$.starts_at"
            response = await client.patch(f"/v1/events/{event['id']}", json={"cancel_until": moment})
            assert_problem(response, await response.json(), 422, "$.cancel_until")
    for sort in ("starts_at", "-starts_at"):
        names, cursor = [], None
        while True:
            params = {"sort": sort, "limit": "1"} | ({"cursor": cursor} if cursor else {})
            response = await client.get("/v1/events", params=params)
            assert response.status == 200, await response.text()
            page = await response.json()
            names += [item["name"] for item in page["items"]]
            if not (cursor := page["next_cursor"]):
                break
        assert len(names) == 3 and names[0 if sort == "starts_at" else -1] == EDGE_TIMES[0][0], names


def forge_cursor(values: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(values).encode()).decode().rstrip("=")


FORGED_CURSORS = [
    ("catalogue newest first, a date out of range", "/v1/events?sort=-starts_at", ["-starts_at", "9999-12-31T23:59:59-23:59", "evt_x"]),
    ("catalogue, a time without a zone", "/v1/events", ["starts_at", "2027-06-01T19:00:00", "evt_x"]),
    ("catalogue, a date without a time", "/v1/events", ["starts_at", "2027-06-01", "evt_x"]),
    ("event reservations, negative", "/v1/events/{event_id}/reservations", -1),
    ("event reservations, beyond the numbering", "/v1/events/{event_id}/reservations", 2),
    ("user reservations, a time without a zone", "/v1/users/someone/reservations", ["2027-01-01T00:00:00", "evt_x", 1]),
    ("user reservations, a negative number", "/v1/users/someone/reservations", ["2027-01-01T00:00:00Z", "evt_x", -1]),
]


@pytest.mark.parametrize(("name", "path", "values"), FORGED_CURSORS, ids=[case[0] for case in FORGED_CURSORS])
async def test_cursors_the_service_never_issues_are_400(client: Any, name: str, path: str, values: Any) -> None:
    """Finding 6, beyond the reported cases: cursors no page ever answered (another sort, a time
    without its zone, a number below zero or past the event's reservations) are a 400 naming
    `cursor` (some answered 500, the others a page of a query nobody asked)."""
    event = await create_event(client)
    response = await client.post(RESERVE.format(event_id=event["id"]), json={"ticket_type": "GA", "quantity": 1, "user_id": "someone"})
    assert response.status == 201
    url = path.format(event_id=event["id"])
    response = await client.get(f"{url}{'&' if '?' in url else '?'}cursor={forge_cursor(values)}")
    problem = await response.json()
    assert_problem(response, problem, 400, "cursor")
    assert problem["detail"] == "cursor is not one this service issued"


DUPLICATE_KEYS = [
    ("ticket type", "POST", "/v1/events/{event_id}/ticket-types", b'{"code": "VIP", "name": "VIP", "price": 1, "capacity": 5, "price": 0}', "$.price"),
    ("ticket type change", "PATCH", "/v1/events/{event_id}/ticket-types/GA", b'{"capacity": 100, "capacity": 1}', "$.capacity"),
    ("reservation, space before the colon", "POST", RESERVE, b'{"ticket_type": "GA", "quantity" : 1, "quantity"\n:\t100, "user_id": "u"}', "$.quantity"),
    ("event change, the second one null", "PATCH", "/v1/events/{event_id}", b'{"venue": "A", "city": "B", "venue": null}', "$.venue"),
]


@pytest.mark.parametrize(("name", "method", "path", "raw", "field"), DUPLICATE_KEYS, ids=[case[0] for case in DUPLICATE_KEYS])
async def test_duplicate_keys_are_refused_in_every_body(client: Any, db: Any, name: str, method: str, path: str, raw: bytes, field: str) -> None:
    """Finding 11, the other bodies: a key given twice is a 400 naming it, and nothing changes."""
    event = await create_event(client)
    before = await snapshot(client, db, event["id"])
    response = await client.request(method, path.format(event_id=event["id"]), data=raw, headers=JSON_HEADERS)
    assert_problem(response, await response.json(), 400, field)
    assert await snapshot(client, db, event["id"]) == before


async def test_duplicate_keys_are_refused_in_account_bodies(start: Any) -> None:
    """Finding 11, the accounts' bodies: registering with `role` given twice is refused."""
    client = await start(headers=None, settings={"rate_limits": False})
    raw = b'{"email": "twice@example.org", "password": "correct horse battery", "name": "T", "role": "attendee", "role": "organizer"}'
    response = await client.post("/v1/auth/register", data=raw, headers=JSON_HEADERS)
    assert_problem(response, await response.json(), 400, "$.role")
    response = await client.post("/v1/auth/login", data=b'{"email": "twice@example.org", "password": "x", "password": "y"}', headers=JSON_HEADERS)
    assert_problem(response, await response.json(), 400, "$.password")


async def test_a_key_end_inside_a_string_is_no_duplicate(client: Any) -> None:
    """Finding 11, the fast path's other side: text that looks like the end of a key (`":`) inside
    a value, or the same key in two objects, is valid and accepted."""
    raw = json.dumps(event_body(name='say ":" twice', description='"a": 1, "a": 2', ticket_types=[
        {"code": "GA", "name": "GA", "price": 1, "capacity": 1}, {"code": "VIP", "name": "VIP", "price": 2, "capacity": 1}
    ])).encode()
    response = await client.post("/v1/events", data=raw, headers=JSON_HEADERS)
    assert response.status == 201, await response.text()
    assert (await response.json())["name"] == 'say ":" twice'


@pytest.mark.parametrize("value", ["+5", "5 ", "-1", "0x10", "1e1", "\uff15", "9" * 5000])
@pytest.mark.parametrize("path", ["/v1/events", "/v1/events/{event_id}/reservations", "/v1/users/someone/reservations"])
async def test_limit_is_ascii_digits_only(client: Any, path: str, value: str) -> None:
    """Finding 11 (query), the other spellings Python's int() takes: a sign, a trailing space,
    fullwidth digits; and a number too long to convert. Each a 400 naming `limit`."""
    event = await create_event(client)
    response = await client.get(path.format(event_id=event["id"]), params={"limit": value})
    assert_problem(response, await response.json(), 400, "limit")
    response = await client.get(path.format(event_id=event["id"]), params={"limit": "007"})
    assert response.status == 200
