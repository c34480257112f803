"""Generated client: a Python client generated from the served /openapi.json runs the README's flow
through its typed API, and the service's errors parse as its Problem model.

Method: openapi-python-client (a test dependency) generates a package from the document the app
serves into the test's temporary directory, offline (from a file, no post-generation hooks, and
proxies pointed at a closed loopback port so that any network access would fail), bounded in time;
the package is imported from there and its async functions call the app on its loopback port: create
an event with the admin token, reserve with an Idempotency-Key (and again: the same reservation,
marked replayed), confirm, read availability, cancel; then a sold-out refusal, which must come back
as a Problem, and an account's register, log in, who am I and log out.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ADMIN_TOKEN

GENERATION_TIMEOUT_S = 180
PACKAGE = "inventoryd_client"
# The generator reads no image type; the SVG map is bytes to it.
_CONFIG = (
    f"project_name_override: inventoryd-client\npackage_name_override: {PACKAGE}\npost_hooks: []\n"
    "content_type_overrides:\n  image/svg+xml: application/octet-stream\n"
)
# Any request would go here, and fail: port 9 (discard) is not listened on.
_NO_NETWORK = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "ALL_PROXY": "http://127.0.0.1:9"}


def generate(document: dict[str, Any], directory: Path) -> Any:
    generator = shutil.which("openapi-python-client", path=str(Path(sys.executable).parent)) or shutil.which(
        "openapi-python-client"
    )
    if generator is None:
        pytest.fail("openapi-python-client is a test dependency")
    (directory / "openapi.json").write_text(json.dumps(document))
    (directory / "config.yaml").write_text(_CONFIG)
    result = subprocess.run(
        [
            generator, "generate", "--path", "openapi.json", "--config", "config.yaml",
            "--output-path", PACKAGE, "--meta", "none", "--fail-on-warning",
        ],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=GENERATION_TIMEOUT_S,
        env={"PATH": str(Path(sys.executable).parent), **_NO_NETWORK},
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    sys.path.insert(0, str(directory))
    try:
        importlib.invalidate_caches()
        return importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(directory))


def _unload() -> None:
    for name in [name for name in sys.modules if name == PACKAGE or name.startswith(PACKAGE + ".")]:
        del sys.modules[name]


async def test_the_readme_flow_through_a_generated_client(start: Any, tmp_path: Path) -> None:
    app = await start(headers=None)
    document = await (await app.get("/openapi.json")).json()
    _unload()
    # Off the loop: the app under test shares it, and a loop blocked for the generator's seconds
    # lets the node's shard leases run out (every request then 503 owner_changed until it takes them back).
    await asyncio.to_thread(generate, document, tmp_path)
    try:
        await _readme_flow(str(app.make_url("")).rstrip("/"))
    finally:
        _unload()


async def _readme_flow(base_url: str) -> None:
    from inventoryd_client import AuthenticatedClient, Client  # type: ignore[import-not-found]
    from inventoryd_client.api.accounts import login, logout, me, register  # type: ignore[import-not-found]
    from inventoryd_client.api.events import create_event, get_availability  # type: ignore[import-not-found]
    from inventoryd_client.api.reservations import (  # type: ignore[import-not-found]
        cancel_reservation,
        confirm_reservation,
        create_reservation,
    )
    from inventoryd_client.models import (  # type: ignore[import-not-found]
        AvailabilityOut,
        EventIn,
        EventOut,
        EventOutStatus,
        LoginIn,
        Problem,
        RegisterIn,
        Reservation,
        ReservationIn,
        ReservationStatus,
        TicketTypeIn,
        TokensOut,
        UserOut,
        UserOutRole,
    )

    admin = AuthenticatedClient(base_url=base_url, token=ADMIN_TOKEN, raise_on_unexpected_status=True)
    async with admin:
        created = await create_event.asyncio_detailed(
            client=admin,
            body=EventIn(
                name="Midsummer concert",
                starts_at=datetime(2027, 6, 21, 19, tzinfo=UTC),
                currency="EUR",
                per_user_limit=4,
                ticket_types=[TicketTypeIn(code="GA", name="General admission", price=4500, capacity=500)],
            ),
        )
        event = created.parsed
        assert created.status_code == 201 and isinstance(event, EventOut), created.content
        assert event.status is EventOutStatus.ON_SALE and event.ticket_types[0].available == 500
        assert created.headers["Location"] == f"/v1/events/{event.id}" and created.headers["X-Request-ID"]

        order = ReservationIn(ticket_type="GA", quantity=2, user_id="alice")
        held = await create_reservation.asyncio_detailed(event.id, client=admin, body=order, idempotency_key="order-1001")
        reservation = held.parsed
        assert held.status_code == 201 and isinstance(reservation, Reservation), held.content
        assert reservation.status is ReservationStatus.HELD and reservation.amount == 9000
        assert reservation.tickets == [] and reservation.expires_at is not None
        retried = await create_reservation.asyncio_detailed(event.id, client=admin, body=order, idempotency_key="order-1001")
        assert retried.parsed.id == reservation.id and retried.headers["Idempotent-Replayed"] == "true"

        confirmed = await confirm_reservation.asyncio(reservation.id, client=admin)
        assert isinstance(confirmed, Reservation) and confirmed.status is ReservationStatus.CONFIRMED
        assert len(confirmed.tickets) == 2 and isinstance(confirmed.confirmed_at, datetime)

        availability = await get_availability.asyncio(event.id, client=Client(base_url=base_url))
        assert isinstance(availability, AvailabilityOut)
        assert availability.ticket_types["GA"].available == 498 and availability.ticket_types["GA"].waitlist == 0

        cancelled = await cancel_reservation.asyncio(reservation.id, client=admin)
        assert isinstance(cancelled, Reservation) and cancelled.status is ReservationStatus.CANCELLED and cancelled.refunded

        # An error is a Problem: sell the last seat, then ask for another.
        small = await create_event.asyncio(
            client=admin,
            body=EventIn(
                name="Small room",
                starts_at=datetime(2027, 6, 22, 19, tzinfo=UTC),
                currency="EUR",
                ticket_types=[TicketTypeIn(code="GA", name="GA", price=100, capacity=1)],
            ),
        )
        assert isinstance(small, EventOut)
        first = await create_reservation.asyncio(small.id, client=admin, body=ReservationIn(ticket_type="GA", quantity=1, user_id="bo"))
        assert isinstance(first, Reservation)
        refused = await create_reservation.asyncio_detailed(
            small.id, client=admin, body=ReservationIn(ticket_type="GA", quantity=1, user_id="cy")
        )
        problem = refused.parsed
        assert refused.status_code == 409 and isinstance(problem, Problem), refused.content
        assert problem.code == "sold_out" and problem.status == 409 and problem.available == 0
        assert refused.headers["Content-Type"] == "application/problem+json"

    # An account: register, log in, who am I, log out (the session ends: who am I is 401 then).
    async with Client(base_url=base_url, raise_on_unexpected_status=True) as anonymous:
        user = await register.asyncio(
            client=anonymous, body=RegisterIn(email="ada@example.org", password="correct horse battery", name="Ada")
        )
        assert isinstance(user, UserOut) and user.role is UserOutRole.ATTENDEE
        tokens = await login.asyncio(client=anonymous, body=LoginIn(email="ada@example.org", password="correct horse battery"))
        assert isinstance(tokens, TokensOut)
    async with AuthenticatedClient(base_url=base_url, token=tokens.access_token, raise_on_unexpected_status=True) as ada:
        myself = await me.asyncio(client=ada)
        assert isinstance(myself, UserOut) and myself.id == user.id and isinstance(myself.created_at, datetime)
        assert (await logout.asyncio_detailed(client=ada)).status_code == 204
        after = await me.asyncio_detailed(client=ada)
        assert after.status_code == 401 and isinstance(after.parsed, Problem)
