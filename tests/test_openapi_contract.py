"""The document's promises, one by one: what /openapi.json states about requests and answers is what
the server does, where schemathesis would find a break only by chance.

Method: the app in-process with the admin token; each rule the document lists as beyond a schema
(`x-inventoryd-rules`) is broken on purpose and must be answered with its status and `field`; every
pattern the server checks is compared, on strings chosen at the edges (a final newline, Unicode
whitespace, NUL), with the pattern the document states, as a Rust JSON Schema validator reads it;
integral numbers written 3.0 or 1e2 are integers; a logout with an API token is the 403 documented.
The shape of the document is checked too: no request default (openapi-typescript would demand the
field), every field of an answer required but Problem's optional ones, headers declared.
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema_rs
import msgspec

from inventoryd.http import openapi
from inventoryd.http.routes import ROUTES
from inventoryd.http.schemas import documented_pattern
from tests.fuzz_hooks import rule_matches
from tests.helpers import create_event, event_body

# Strings at the edges of the patterns: final newlines, Unicode whitespace, NUL, non-ASCII.
SAMPLES = (
    "", "GA", "GA\n", "GA\r\n", "\nGA", "ga_1-X", "-GA", "EUR", "EUR\n", "eur", "a@b.c", "a@b.c\n", "a b@c.d",
    "a\u2028b@c.d", "a@b\u00a0c.d", "a\x1c@b.c", "a@b.c\ufeff", "\u00e9@\u00fc.com", "x\x00y", "plain text",
    "user:42@x.y", "abc=", "WyJzdGFydHNfYXQiXQ", "\U0001f600", "tab\there",
)


def _patterns(value: Any) -> set[str]:
    if isinstance(value, dict):
        found = {value["pattern"]} if isinstance(value.get("pattern"), str) else set()
        return found.union(*(_patterns(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(*(_patterns(item) for item in value))
    return set()


def test_every_pattern_the_server_checks_is_the_one_the_document_states() -> None:
    kinds = sorted({route.request_body for route in ROUTES if route.request_body is not None}, key=lambda kind: kind.__name__)
    _, components = msgspec.json.schema_components(kinds)
    server_patterns = _patterns(components) | _patterns([query.schema for route in ROUTES for query in route.query])
    server_patterns |= _patterns(list(openapi._PATH_PARAMETERS.values()))
    assert len(server_patterns) >= 5
    disagreements = []
    for pattern in server_patterns:
        stated, _ = documented_pattern(pattern)
        validator = jsonschema_rs.validator_for({"type": "string", "pattern": stated})
        for sample in SAMPLES:
            # msgspec checks a pattern with re.search, as here.
            if (re.search(pattern, sample) is not None) != validator.is_valid(sample):
                disagreements.append(f"{pattern!r} / {stated!r} on {sample!r}")
    assert not disagreements, "\n".join(disagreements)


def test_the_document_states_no_request_default_and_requires_every_answer_field() -> None:
    document = openapi.build(ROUTES)
    schemas = document["components"]["schemas"]
    assert '"default"' not in msgspec.json.encode(schemas).decode()
    for name in ("EventOut", "Reservation", "TicketOut", "AvailabilityOut", "ReportOut", "TicketTypeReport", "UserOut", "Health"):
        assert set(schemas[name]["required"]) == set(schemas[name]["properties"]), name
    assert set(schemas["Problem"]["required"]) == {"type", "title", "status", "detail", "code"}
    assert schemas["Problem"]["properties"]["field"] == {"type": "string"}
    assert schemas["Reservation"]["properties"]["created_at"]["format"] == "date-time"
    assert schemas["EventOut"]["properties"]["status"]["enum"] == ["cancelled", "on_sale"]
    assert schemas["TicketOut"]["properties"]["status"]["enum"] == ["cancelled", "checked_in", "valid"]
    assert schemas["UserOut"]["properties"]["role"]["enum"] == ["attendee", "organizer"]
    assert schemas["TicketTypeIn"]["properties"]["capacity"]["type"] == "integer"
    assert schemas["EventPatch"]["minProperties"] == 1
    created = document["paths"]["/v1/events"]["post"]["responses"]
    assert {"X-Request-ID", "Location", "Idempotent-Replayed"} <= set(created["201"]["headers"])
    assert "Retry-After" in created["429"]["headers"] and "Retry-After" in created["503"]["headers"]
    assert "content" in document["paths"]["/openapi.json"]["get"]["responses"]["200"]
    logout = document["paths"]["/v1/auth/logout"]["post"]
    assert "403" in logout["responses"] and "API token" in logout["description"]


_QUEUE = {"opens_at": "2027-03-01T00:00:00Z", "admit_per_minute": 60, "admission_seconds": 60}


async def _rule_breakers(client: Any) -> dict[tuple[str, str], Any]:
    """For each documented rule (operation, field): a request that breaks it, answered."""
    event = await create_event(client)
    path = f"/v1/events/{event['id']}"
    twice = [{"code": "GA", "name": "A", "price": 1, "capacity": 1}, {"code": "GA", "name": "B", "price": 1, "capacity": 1}]
    answers = {
        ("create_event", "$.ticket_types[*].code"): await client.post("/v1/events", json=event_body(ticket_types=twice)),
        ("create_event", "$.ends_at"): await client.post("/v1/events", json=event_body(ends_at="2027-05-01T00:00:00Z")),
        ("create_event", "$.sale_ends_at"): await client.post(
            "/v1/events", json=event_body(sale_starts_at="2027-05-01T00:00:00Z", sale_ends_at="2027-04-01T00:00:00Z")
        ),
        ("update_event", "$.ends_at"): await client.patch(path, json={"ends_at": "2027-05-01T00:00:00Z"}),
        ("update_event", "$.sale_ends_at"): await client.patch(
            path, json={"sale_starts_at": "2027-05-01T00:00:00Z", "sale_ends_at": "2027-04-01T00:00:00Z"}
        ),
        ("create_event", "$.sale_starts_at"): await client.post("/v1/events", json=event_body(queue=_QUEUE)),
        ("create_event", "$.queue.opens_at"): await client.post(
            "/v1/events", json=event_body(sale_starts_at="2027-04-01T00:00:00Z", queue={**_QUEUE, "opens_at": "2027-04-02T00:00:00Z"})
        ),
        ("update_event", "$.sale_starts_at"): await client.patch(path, json={"queue": _QUEUE}),
        ("update_event", "$.queue.opens_at"): await client.patch(
            path, json={"sale_starts_at": "2027-04-01T00:00:00Z", "queue": {**_QUEUE, "opens_at": "2027-04-02T00:00:00Z"}}
        ),
        # The admin token joining a waiting room without naming the buyer.
        ("join_queue", "$.user_id"): await client.post(f"{path}/queue", json={}),
        # The admin token reserving without naming the buyer.
        ("create_reservation", "$.user_id"): await client.post(f"{path}/reservations", json={"ticket_type": "GA", "quantity": 1}),
        ("create_event", "$.ticket_types[*].capacity"): await client.post(
            "/v1/events", json=event_body(ticket_types=[{"code": "S", "name": "S", "price": 1, "capacity": 5, "seated": True}])
        ),
        ("add_ticket_type", "$.capacity"): await client.post(
            f"{path}/ticket-types", json={"code": "S", "name": "S", "price": 1, "capacity": 5, "seated": True}
        ),
        ("create_reservation", "$.quantity"): await client.post(f"{path}/reservations", json={"ticket_type": "GA", "user_id": "u1"}),
        ("create_reservation", "$.waitlist"): await client.post(
            f"{path}/reservations", json={"ticket_type": "GA", "user_id": "u1", "seats": ["A-1-1"], "waitlist": True}
        ),
        ("create_reservation", "$.seats"): await client.post(
            f"{path}/reservations", json={"ticket_type": "GA", "user_id": "u1", "seats": ["A-1-1"]}
        ),
        ("create_reservation", "$.seats[*]"): await client.post(
            f"{path}/reservations", json={"ticket_type": "GA", "user_id": "u1", "seats": ["A-1-1", "A-1-1"]}
        ),
        **await _seat_rule_breakers(client),
        ("list_events", "cursor"): await client.get("/v1/events", params={"cursor": "0"}),
        ("list_events", "q"): await client.get("/v1/events", params={"q": "?!"}),
        ("list_events", "min_price"): await client.get("/v1/events", params={"min_price": "2", "max_price": "1"}),
        ("event_reservations", "cursor"): await client.get(f"{path}/reservations", params={"cursor": "0"}),
        ("user_reservations", "cursor"): await client.get("/v1/users/u1/reservations", params={"cursor": "0"}),
        # Loopback, which this app does not allow; a type named twice.
        ("create_webhook", "$.url"): await client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/", "types": ["reservation.held"]}),
        ("create_webhook", "$.types"): await client.post(
            "/v1/webhooks", json={"url": "https://example.org/", "types": ["reservation.held", "reservation.held"]}
        ),
        ("webhook_deliveries", "cursor"): await client.get("/v1/webhooks/whk_aaaaaaaaaaaaaaaa/deliveries", params={"cursor": "0"}),
    }
    return answers


async def _seat_rule_breakers(client: Any) -> dict[tuple[str, str], Any]:
    seated = [{"code": "S", "name": "S", "price": 1, "capacity": 0, "seated": True}, {"code": "GA", "name": "GA", "price": 1, "capacity": 5}]
    event = await create_event(client, ticket_types=seated)
    path = f"/v1/events/{event['id']}"
    no_map = await create_event(client, ticket_types=seated)
    row = {"id": "1", "seats": [{"id": "1", "ticket_type": "S"}, {"id": "1", "ticket_type": "S"}]}
    block = {"section": "A", "rows": 1, "seats_per_row": 2, "ticket_type": "S"}
    answers = {
        ("put_seatmap", "$"): await client.put(f"{path}/seatmap", json={}),
        ("put_seatmap", "$.sections[*].rows[*].seats[*]"): await client.put(f"{path}/seatmap", json={"sections": [{"id": "A", "rows": [row]}]}),
        ("put_seatmap", "$.sections[*].rows[*].seats[*].ticket_type"): await client.put(
            f"{path}/seatmap", json={"sections": [{"id": "A", "rows": [{"id": "1", "seats": [{"id": "1", "ticket_type": "GA"}]}]}]}
        ),
        ("put_seatmap", "$.blocks[*]"): await client.put(f"{path}/seatmap", json={"blocks": [block, block]}),
        ("put_seatmap", "$.blocks[*].ticket_type"): await client.put(f"{path}/seatmap", json={"blocks": [{**block, "ticket_type": "X"}]}),
    }
    assert (await client.put(f"{path}/seatmap", json={"blocks": [block]})).status == 200
    for name, body in (("block_seats", {"reason": "x"}), ("unblock_seats", {})):
        verb = name.split("_")[0]
        answers[name, "$.seats"] = await client.post(f"/v1/events/{no_map['id']}/seats/{verb}", json={"seats": ["A-1-1"], **body})
        answers[name, "$.seats[*]"] = await client.post(f"{path}/seats/{verb}", json={"seats": ["A-1-9"], **body})
    answers["get_seats", "section"] = await client.get(f"{path}/seats", params={"section": "Z"})
    answers["seatmap_svg", "section"] = await client.get(f"{path}/seatmap.svg", params={"section": "Z"})
    return answers


async def test_every_documented_rule_is_answered_as_documented(client: Any) -> None:
    document = openapi.build(ROUTES)
    rules = {
        (operation["operationId"], rule["field"]): rule["status"]
        for operations in document["paths"].values()
        for operation in operations.values()
        for rule in operation.get("x-inventoryd-rules", [])
    }
    answers = await _rule_breakers(client)
    # my_reservations needs a user's token; its cursor is decoded as user_reservations' is.
    assert set(rules) - set(answers) == {("my_reservations", "cursor")}
    for (operation, field), response in answers.items():
        problem = await response.json()
        assert response.status == rules[operation, field], (operation, field, problem)
        assert response.content_type == "application/problem+json"
        assert rule_matches(field, problem["field"]), (operation, field, problem)


async def test_integral_numbers_are_integers_and_patterns_end_at_the_end(client: Any) -> None:
    ticket_types = [{"code": "GA", "name": "GA", "price": 1e2, "capacity": 0.0}]
    created = await client.post("/v1/events", json=event_body(ticket_types=ticket_types, hold_seconds=600.0))
    event = await created.json()
    assert created.status == 201, event
    assert event["ticket_types"][0]["price"] == 100 and type(event["ticket_types"][0]["capacity"]) is int
    assert event["hold_seconds"] == 600
    changed = await client.patch(f"/v1/events/{event['id']}/ticket-types/GA", json={"capacity": 5.0})
    assert changed.status == 200 and (await changed.json())["capacity"] == 5
    fraction = await client.post("/v1/events", json=event_body(ticket_types=[{**ticket_types[0], "price": 3.5}]))
    assert fraction.status == 422 and (await fraction.json())["field"] == "$.ticket_types[0].price"
    newline = await client.post("/v1/events", json=event_body(currency="EUR\n"))
    assert newline.status == 422 and (await newline.json())["field"] == "$.currency"
    email = await client.post("/v1/auth/register", json={"email": "a@b.c\n", "password": "long enough 123", "name": "A"})
    assert email.status == 422 and (await email.json())["field"] == "$.email"


async def test_a_logout_with_an_api_token_is_refused_403(client: Any) -> None:
    response = await client.post("/v1/auth/logout")
    problem = await response.json()
    assert response.status == 403 and problem["code"] == "forbidden" and "API token" in problem["detail"]
