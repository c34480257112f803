"""Accounts, tokens, roles and abuse limits, against a real PostgreSQL.

Method: real accounts are registered and logged in over HTTP; API tokens are made and revoked with
the real CLI; then every route is called as every kind of principal (anonymous, the buyer, another
buyer, the event's organizer, another organizer, a service, an admin). That matrix is generated
from the route table: a route added without an expectation here fails the test.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
import structlog

from inventoryd import limits
from inventoryd.http.routes import ROUTES
from tests.helpers import create_event, event_body, make_api_token, token_command

PASSWORD = "correct horse battery staple"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def register(client: Any, email: str, role: str = "attendee", password: str = PASSWORD) -> dict[str, Any]:
    response = await client.post(
        "/v1/auth/register", json={"email": email, "password": password, "name": email.split("@", maxsplit=1)[0], "role": role}
    )
    assert response.status == 201, await response.text()
    return await response.json()


async def login(client: Any, email: str, password: str = PASSWORD) -> dict[str, Any]:
    response = await client.post("/v1/auth/login", json={"email": email, "password": password})
    assert response.status == 200, await response.text()
    return await response.json()


async def test_register_login_me(client: Any) -> None:
    user = await register(client, "Ada@Example.org")
    assert set(user) == {"id", "email", "name", "role", "created_at"} and user["role"] == "attendee"
    duplicate = await client.post(
        "/v1/auth/register", json={"email": "ada@example.ORG", "password": PASSWORD, "name": "Other"}
    )
    assert duplicate.status == 409 and (await duplicate.json())["field"] == "$.email"
    tokens = await login(client, "ada@example.org")
    assert tokens["token_type"] == "bearer" and tokens["expires_in"] == limits.ACCESS_TOKEN_TTL_S
    me = await client.get("/v1/users/me", headers=bearer(tokens["access_token"]))
    assert me.status == 200 and (await me.json())["id"] == user["id"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "not-an-email", "password": PASSWORD, "name": "x"}, "$.email"),
        ({"email": "a@b.co", "password": "short", "name": "x"}, "$.password"),
        ({"email": "a@b.co", "password": PASSWORD, "name": "x", "role": "admin"}, "$.role"),
        ({"email": "a@b.co", "password": PASSWORD, "name": "x", "is_admin": True}, "$.is_admin"),
    ],
)
async def test_bad_registrations(client: Any, body: dict[str, Any], field: str) -> None:
    response = await client.post("/v1/auth/register", json=body)
    assert response.status == 422 and (await response.json())["field"] == field


async def test_failed_login_does_not_say_whether_the_email_exists(client: Any) -> None:
    await register(client, "known@example.org")
    wrong_password = await client.post("/v1/auth/login", json={"email": "known@example.org", "password": "nope-nope-nope"})
    unknown_email = await client.post("/v1/auth/login", json={"email": "unknown@example.org", "password": "nope-nope-nope"})
    assert wrong_password.status == unknown_email.status == 401
    first, second = await wrong_password.json(), await unknown_email.json()
    assert first["detail"] == second["detail"] and first["code"] == second["code"] == "unauthorized"


async def test_bad_and_missing_tokens_are_401(start: Any, db: Any) -> None:
    client = await start(headers=None)
    missing = await client.get("/v1/users/me")
    assert missing.status == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
    for header in ("Bearer nonsense", "Basic dXNlcjpwYXNz", "Bearer ivd_00000000_forged", "Bearer"):
        response = await client.get("/v1/users/me", headers={"Authorization": header})
        assert response.status == 401, header
    user = await register(client, "late@example.org")
    key = bytes(await db.fetchval("SELECT value FROM service_secrets WHERE name = 'jwt_signing_key'"))
    now = int(time.time())
    claims = {"iss": "inventoryd", "sub": user["id"], "role": "attendee", "sid": "ses_x", "iat": now - 1000, "exp": now - 10}
    expired = jwt.encode(claims, key, algorithm="HS256")
    response = await client.get("/v1/users/me", headers=bearer(expired))
    assert response.status == 401 and "expired" in (await response.json())["detail"]
    forged = jwt.encode(claims | {"exp": now + 600}, b"x" * 32, algorithm="HS256")
    assert (await client.get("/v1/users/me", headers=bearer(forged))).status == 401
    unsigned = jwt.encode(claims | {"exp": now + 600}, None, algorithm="none")
    assert (await client.get("/v1/users/me", headers=bearer(unsigned))).status == 401


async def test_refresh_rotates_and_reuse_ends_the_session(client: Any) -> None:
    await register(client, "rota@example.org")
    first = await login(client, "rota@example.org")
    second = await (await client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})).json()
    assert second["refresh_token"] != first["refresh_token"]
    assert (await client.get("/v1/users/me", headers=bearer(second["access_token"]))).status == 200
    # The spent token again: somebody has a copy. The whole session ends.
    reuse = await client.post("/v1/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert reuse.status == 401
    assert (await client.post("/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})).status == 401
    assert (await client.get("/v1/users/me", headers=bearer(second["access_token"]))).status == 401


async def test_logout_revokes_the_session(client: Any) -> None:
    await register(client, "bye@example.org")
    tokens = await login(client, "bye@example.org")
    assert (await client.post("/v1/auth/logout", headers=bearer(tokens["access_token"]))).status == 204
    assert (await client.get("/v1/users/me", headers=bearer(tokens["access_token"]))).status == 401
    assert (await client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})).status == 401


async def test_a_session_ended_on_one_node_is_ended_on_the_others(start: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two apps on one database (two nodes): a logout through one is honoured by the other within
    # its reload interval, because ended sessions are read back from the database.
    monkeypatch.setattr(limits, "API_TOKENS_RELOAD_S", 0.05)
    first = await start(headers=None, settings={"rate_limits": False})
    second = await start(headers=None, settings={"rate_limits": False})
    await register(first, "roams@example.org")
    tokens = await login(first, "roams@example.org")
    assert (await second.get("/v1/users/me", headers=bearer(tokens["access_token"]))).status == 200
    assert (await first.post("/v1/auth/logout", headers=bearer(tokens["access_token"]))).status == 204
    deadline = time.monotonic() + 5
    while (await second.get("/v1/users/me", headers=bearer(tokens["access_token"]))).status != 401:
        assert time.monotonic() < deadline, "the other node still accepts the ended session's token"
        await asyncio.sleep(0.05)


async def test_service_tokens_act_for_any_user_and_can_be_revoked(
    start: Any, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "API_TOKENS_RELOAD_S", 0.05)
    token = await make_api_token(database_url, "service", "storefront")
    client = await start()
    event = await create_event(client)
    service = bearer(token)
    reserved = await client.post(
        f"/v1/events/{event['id']}/reservations", json={"ticket_type": "GA", "quantity": 1, "user_id": "buyer-7"}, headers=service
    )
    assert reserved.status == 201 and (await reserved.json())["user_id"] == "buyer-7"
    no_user = await client.post(f"/v1/events/{event['id']}/reservations", json={"ticket_type": "GA", "quantity": 1}, headers=service)
    assert no_user.status == 422 and (await no_user.json())["field"] == "$.user_id"
    assert (await client.post("/v1/events", json=event_body(), headers=service)).status == 403
    assert await token_command(database_url, "revoke", "storefront") == (0, "revoked 1 token(s)")
    code, listing = await token_command(database_url, "list")
    assert code == 0 and "storefront" in listing and "revoked" in listing and token not in listing
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if (await client.get("/v1/users/buyer-7/reservations", headers=service)).status == 401:
            break
    else:
        raise AssertionError("the revoked token still works")


async def test_attendees_act_only_for_themselves(client: Any) -> None:
    event = await create_event(client)
    alice = await register(client, "alice@example.org")
    await register(client, "bob@example.org")
    alice_headers = bearer((await login(client, "alice@example.org"))["access_token"])
    bob_headers = bearer((await login(client, "bob@example.org"))["access_token"])
    path = f"/v1/events/{event['id']}/reservations"
    mine = await client.post(path, json={"ticket_type": "GA", "quantity": 2}, headers=alice_headers)
    assert mine.status == 201
    held = await mine.json()
    assert held["user_id"] == alice["id"]
    for_bob = await client.post(path, json={"ticket_type": "GA", "quantity": 1, "user_id": "someone"}, headers=alice_headers)
    assert for_bob.status == 403
    assert (await client.get(f"/v1/reservations/{held['id']}", headers=bob_headers)).status == 403
    assert (await client.post(f"/v1/reservations/{held['id']}/confirm", headers=bob_headers)).status == 403
    assert (await client.post(f"/v1/reservations/{held['id']}/confirm", headers=alice_headers)).status == 200
    history = await (await client.get("/v1/users/me/reservations", headers=alice_headers)).json()
    assert [item["id"] for item in history["items"]] == [held["id"]]


async def test_cancellation_closes_for_buyers_but_not_for_organizers(start: Any) -> None:
    from tests.helpers import FakeClock

    clock = FakeClock()
    client = await start(clock=clock)
    await register(client, "org@example.org", "organizer")
    await register(client, "buyer@example.org")
    organizer = bearer((await login(client, "org@example.org"))["access_token"])
    buyer = bearer((await login(client, "buyer@example.org"))["access_token"])
    created = await client.post("/v1/events", json=event_body(cancel_until="2027-01-01T13:00:00Z"), headers=organizer)
    event = await created.json()
    reservations = []
    for _ in range(2):
        held = await (await client.post(f"/v1/events/{event['id']}/reservations", json={"ticket_type": "GA", "quantity": 1}, headers=buyer)).json()
        await client.post(f"/v1/reservations/{held['id']}/confirm", headers=buyer)
        reservations.append(held)
    clock.advance(2 * 3600)
    late = await client.post(f"/v1/reservations/{reservations[0]['id']}/cancel", headers=buyer)
    assert late.status == 409 and (await late.json())["code"] == "cancellation_closed"
    by_organizer = await client.post(f"/v1/reservations/{reservations[1]['id']}/cancel", headers=organizer)
    assert by_organizer.status == 200 and (await by_organizer.json())["refunded"] is True


async def test_rate_limits_per_principal_and_per_address(start: Any) -> None:
    client = await start(settings={"rate_user_per_s": 0.01, "rate_user_burst": 3, "rate_auth_per_s": 0.01, "rate_auth_burst": 4})
    await register(client, "quick@example.org")
    tokens = await login(client, "quick@example.org")
    headers = bearer(tokens["access_token"])
    statuses = [(await client.get("/v1/users/me", headers=headers)) for _ in range(4)]
    assert [response.status for response in statuses] == [200, 200, 200, 429]
    limited = statuses[-1]
    problem = await limited.json()
    assert problem["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.headers["RateLimit-Limit"] == "3" and limited.headers["RateLimit-Remaining"] == "0"
    # The headers come as the bucket runs low (below half), not on every answer.
    assert "RateLimit-Remaining" not in statuses[0].headers
    assert statuses[1].headers["RateLimit-Remaining"] == "1" and statuses[2].headers["RateLimit-Remaining"] == "0"
    # The auth routes count by address: two were spent above (register, login), two more pass.
    attempts = [
        (await client.post("/v1/auth/login", json={"email": "quick@example.org", "password": "wrong-wrong-wrong"})).status
        for _ in range(3)
    ]
    assert attempts == [401, 401, 429]
    # Admins are not limited.
    assert [(await client.get("/v1/events")).status for _ in range(10)] == [200] * 10


async def test_security_headers_and_cors(start: Any) -> None:
    closed = await start()
    response = await closed.get("/v1/events", headers={"Origin": "https://shop.example"})
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Server"] == "inventoryd"  # no versions for scanners
    assert "Access-Control-Allow-Origin" not in response.headers
    # Errors too: a problem document from the middleware, and aiohttp's own 404 for no route.
    for path in ("/v1/events/evt_missing", "/nowhere"):
        missing = await closed.get(path, headers={"X-Request-ID": "req-404"})
        assert missing.status == 404 and missing.headers["X-Content-Type-Options"] == "nosniff"
        assert missing.headers["X-Request-ID"] == "req-404"
    assert (await closed.options("/v1/events", headers={"Origin": "https://shop.example"})).status == 405
    opened = await start(settings={"cors_origins": ("https://shop.example",)})
    preflight = await opened.options(
        "/v1/events", headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    assert "Idempotency-Key" in preflight.headers["Access-Control-Allow-Headers"]
    # Every method a route takes may be asked for across origins (PUT came with the seat map).
    allowed = {method.strip() for method in preflight.headers["Access-Control-Allow-Methods"].split(",")}
    assert {route.method for route in ROUTES} <= allowed
    other = await opened.get("/v1/events", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


async def test_no_secrets_in_logs(start: Any) -> None:
    client = await start(access_log=True)
    with structlog.testing.capture_logs() as logs:
        await register(client, "secret@example.org")
        tokens = await login(client, "secret@example.org")
        await client.get("/v1/users/me", headers=bearer(tokens["access_token"]))
        await client.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    text = repr(logs)
    assert logs, "the requests were logged"
    for secret in (PASSWORD, tokens["access_token"], tokens["refresh_token"], "test-admin-token"):
        assert secret not in text


# -- the access matrix, generated from the route table ---------------------------------------------

ROLES = ("anonymous", "buyer", "other_buyer", "organizer", "other_organizer", "service", "admin")
EVERYONE = set(ROLES)
SIGNED_IN = EVERYONE - {"anonymous"}
# Who may call each route (on the fixtures below: the organizer owns the event, the buyer owns the
# reservation and its ticket). Public routes list everyone.
MAY: dict[str, set[str]] = {
    "healthz": EVERYONE,
    "readyz": EVERYONE,
    "metrics": EVERYONE,
    "cluster": {"admin"},
    "openapi": EVERYONE,
    "docs": EVERYONE,
    "docs_init": EVERYONE,
    "list_events": EVERYONE,
    "get_event": EVERYONE,
    "get_availability": EVERYONE,
    "availability_stream": EVERYONE,
    "register": EVERYONE,
    "login": EVERYONE,
    "refresh": EVERYONE,
    # A session to end: API tokens (service, admin) have none (403).
    "logout": {"buyer", "other_buyer", "organizer", "other_organizer"},
    "me": {"buyer", "other_buyer", "organizer", "other_organizer"},
    "create_event": {"organizer", "other_organizer", "admin"},
    "update_event": {"organizer", "admin"},
    "add_ticket_type": {"organizer", "admin"},
    "change_ticket_type": {"organizer", "admin"},
    "cancel_event": {"organizer", "admin"},
    "get_report": {"organizer", "admin"},
    "event_reservations": {"organizer", "admin"},
    "create_reservation": SIGNED_IN,
    "confirm_reservation": {"buyer", "organizer", "service", "admin"},
    "cancel_reservation": {"buyer", "organizer", "service", "admin"},
    "get_reservation": {"buyer", "organizer", "service", "admin"},
    "get_ticket": {"buyer", "organizer", "service", "admin"},
    "check_in_ticket": {"organizer", "service", "admin"},
    "my_reservations": {"buyer", "other_buyer", "organizer", "other_organizer"},
    "user_reservations": {"buyer", "service", "admin"},
    # The waiting room (the matrix's event has none: joining it is 409 for those who may ask).
    "join_queue": SIGNED_IN,
    "get_queue_entry": {"buyer", "organizer", "service", "admin"},
    "leave_queue": {"buyer", "organizer", "service", "admin"},
    "get_queue_line": {"organizer", "admin"},
    "get_queue_challenge": SIGNED_IN,
    # Reserved seating (the matrix's event has no map: reading it is 404 for everyone).
    "put_seatmap": {"organizer", "admin"},
    "get_seatmap": EVERYONE,
    "get_seats": EVERYONE,
    "seatmap_svg": EVERYONE,
    "block_seats": {"organizer", "admin"},
    "unblock_seats": {"organizer", "admin"},
    # What happened: the organizer's event, and a webhook endpoint the organizer made.
    "erase_me": {"buyer", "other_buyer", "organizer", "other_organizer"},
    "get_changes": {"organizer", "service", "admin"},
    "report_csv": {"organizer", "admin"},
    "create_webhook": {"organizer", "other_organizer", "admin"},
    "list_webhooks": {"organizer", "other_organizer", "admin"},
    "get_webhook": {"organizer", "admin"},
    "delete_webhook": {"organizer", "admin"},
    "webhook_deliveries": {"organizer", "admin"},
    "retry_delivery": {"organizer", "admin"},
}
# Routes whose answer to a caller who may call them can itself be 401 (wrong password, spent token).
ANSWERS_401_ON_ITS_OWN = {"login", "refresh"}


def test_every_route_has_an_expectation() -> None:
    assert {route.name for route in ROUTES} == set(MAY), "add the new route to MAY"
    for route in ROUTES:
        assert route.public == (MAY[route.name] == EVERYONE), f"{route.name}: public flag and MAY disagree"


async def test_the_access_matrix(start: Any, database_url: str) -> None:
    # Webhooks to loopback (port 9: nothing listens, every delivery fails and is tried again).
    client = await start(headers=None, settings={"rate_limits": False, "webhooks_allow_private": True})
    admin = bearer("test-admin-token-0123456789abcdef")
    identities = {"anonymous": {}, "admin": admin, "service": bearer(await make_api_token(database_url, "service", "matrix"))}
    users: dict[str, str] = {}
    for role, kind in (("buyer", "attendee"), ("other_buyer", "attendee"), ("organizer", "organizer"), ("other_organizer", "organizer")):
        user = await register(client, f"{role}@example.org", kind)
        users[role] = user["id"]
        identities[role] = bearer((await login(client, f"{role}@example.org"))["access_token"])

    async def new_webhook() -> str:
        hook = {"url": "http://127.0.0.1:9/hook", "types": ["reservation.held"]}
        made = await client.post("/v1/webhooks", json=hook, headers=identities["organizer"])
        assert made.status == 201, await made.text()
        return str((await made.json())["id"])

    # One endpoint with a delivery (failing) in its log, for the routes that read or retry one.
    webhook_id = await new_webhook()
    first = await (await client.post("/v1/events", json=event_body(), headers=identities["organizer"])).json()
    await client.post(f"/v1/events/{first['id']}/reservations", json={"ticket_type": "GA", "quantity": 1}, headers=identities["buyer"])
    deliveries: list[dict[str, Any]] = []
    for _ in range(200):
        deliveries = (await (await client.get(f"/v1/webhooks/{webhook_id}/deliveries", headers=admin)).json())["items"]
        if deliveries:
            break
        await asyncio.sleep(0.02)

    async def fixtures() -> dict[str, str]:
        event = await (await client.post("/v1/events", json=event_body(), headers=identities["organizer"])).json()
        held = await (await client.post(
            f"/v1/events/{event['id']}/reservations", json={"ticket_type": "GA", "quantity": 2}, headers=identities["buyer"]
        )).json()
        confirmed = await (await client.post(f"/v1/reservations/{held['id']}/confirm", headers=identities["buyer"])).json()
        second = await (await client.post(
            f"/v1/events/{event['id']}/reservations", json={"ticket_type": "GA", "quantity": 1}, headers=identities["buyer"]
        )).json()
        now = datetime.now(UTC)
        room = event_body(
            sale_starts_at=(now + timedelta(hours=1)).isoformat(),
            queue={"opens_at": (now - timedelta(hours=1)).isoformat(), "admit_per_minute": 60, "admission_seconds": 60},
        )
        with_room = await (await client.post("/v1/events", json=room, headers=identities["organizer"])).json()
        place = await (await client.post(f"/v1/events/{with_room['id']}/queue", headers=identities["buyer"])).json()
        return {
            "event_id": event["id"],
            "queue_id": place["id"],
            "reservation_id": second["id"],
            "ticket_id": confirmed["tickets"][0]["id"],
            "code": "GA",
            "user_id": users["buyer"],
            "webhook_id": webhook_id,
            "delivery_id": deliveries[0]["id"],
        }

    def body_for(route_name: str, role: str) -> Any:
        match route_name:
            case "create_event":
                return event_body()
            case "update_event":
                return {"name": "Renamed"}
            case "add_ticket_type":
                return {"code": "EXTRA", "name": "Extra", "price": 1, "capacity": 1}
            case "change_ticket_type":
                return {"price": 4600}
            case "create_reservation":
                base = {"ticket_type": "GA", "quantity": 1}
                return base | {"user_id": users["buyer"]} if role in ("service", "admin") else base
            case "put_seatmap":
                return {"blocks": [{"section": "A", "rows": 1, "seats_per_row": 4, "ticket_type": "GA"}]}
            case "block_seats":
                return {"seats": ["A-1-1"], "reason": "camera"}
            case "unblock_seats":
                return {"seats": ["A-1-1"]}
            case "create_webhook":
                return {"url": "http://127.0.0.1:9/hook", "types": ["reservation.held"]}
            case "join_queue":
                return {"user_id": users["buyer"]} if role in ("service", "admin") else None
            case "register":
                return {"email": f"new-{time.monotonic_ns()}@example.org", "password": PASSWORD, "name": "New"}
            case "login":
                return {"email": "buyer@example.org", "password": PASSWORD}
            case "refresh":
                return {"refresh_token": "ivr_not_a_real_one"}
            case _:
                return None

    failures = []
    for route in ROUTES:
        for role in ROLES:
            values = await fixtures()
            path = route.path.format(**values) if "{" in route.path else route.path
            headers = dict(identities[role])
            if route.name == "logout" and role in ("buyer", "other_buyer", "organizer", "other_organizer"):
                # Logging out ends the session: use a fresh one.
                email = f"{role}@example.org"
                headers = bearer((await login(client, email))["access_token"])
            if route.name == "delete_webhook":
                values["webhook_id"] = await new_webhook()
                path = route.path.format(**values)
            if route.name == "erase_me" and role in ("buyer", "other_buyer", "organizer", "other_organizer"):
                # Erasing ends the person: a person of this role made for it.
                email = f"erase-{role}-{time.monotonic_ns()}@example.org"
                await register(client, email, "organizer" if "organizer" in role else "attendee")
                headers = bearer((await login(client, email))["access_token"])
            body = body_for(route.name, role)
            if route.name == "availability_stream":
                async with client.get(path, headers=headers) as response:
                    status = response.status
            else:
                response = await client.request(route.method, path, json=body, headers=headers)
                status = response.status
            allowed = role in MAY[route.name]
            refused = status == 403 if route.name in ANSWERS_401_ON_ITS_OWN else status in (401, 403)
            if allowed == refused or status >= 500:
                failures.append(f"{route.method} {route.path} as {role}: {status}")
            if not allowed:
                expected = 401 if role == "anonymous" else 403
                if status != expected:
                    failures.append(f"{route.method} {route.path} as {role}: {status}, expected {expected}")
    assert not failures, "\n".join(failures)
