"""`inventoryd audit` passes a healthy log and catches a corrupt one.

Method: build real history over HTTP, run the audit command (as the CLI does), then damage the log
and the catalogue directly in PostgreSQL, the way a bug or a bad manual fix would, and run it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from typing import Any

import asyncpg
import msgspec

from inventoryd import cli
from tests.helpers import create_event


async def run_audit(database_url: str, *extra: str) -> tuple[int, str]:
    arguments = cli._parser().parse_args(["audit", "--database-url", database_url, *extra])
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = await asyncio.to_thread(cli.audit, cli._settings(arguments), arguments.event)
    return code, out.getvalue()


async def test_audit_passes_a_healthy_log_and_catches_corruption(client: Any, db: Any, database_url: str) -> None:
    event = await create_event(client, ticket_types=[{"code": "GA", "name": "GA", "price": 100, "capacity": 3}])
    other = await create_event(client, name="Other")
    for user in ("a", "b", "c"):
        held = await (await client.post(f"/v1/events/{event['id']}/reservations", json={"ticket_type": "GA", "quantity": 1, "user_id": user})).json()
        await client.post(f"/v1/reservations/{held['id']}/confirm")
    await client.post(f"/v1/events/{event['id']}/reservations", json={"ticket_type": "GA", "quantity": 1, "user_id": "d", "waitlist": True})
    await client.post(f"/v1/events/{other['id']}/cancel")

    code, report = await run_audit(database_url)
    assert code == 0, report
    assert "audited 2 event(s)" in report and "0 with violations" in report
    assert f"{event['id']}" in report and "GA 0+3/3 (waiting 1)" in report

    # An oversold seat slipped into the log (as a bug outside the actor would write it).
    seq = await db.fetchval("SELECT max(seq) FROM journal WHERE event_id = $1", event["id"])
    body = msgspec.json.encode(
        {"type": "reservation_held", "reservation_id": f"rsv_{event['id'][4:]}_5", "user_id": "mallory", "ticket_type": "GA",
         "quantity": 1, "amount": 100, "at": "2027-01-01T00:00:00Z", "expires_at": "2027-01-01T00:10:00Z"}
    )
    await db.execute("INSERT INTO journal (event_id, seq, kind, body) VALUES ($1, $2, 'reservation_held', $3)", event["id"], seq + 1, body)
    # And the catalogue disagrees with the other event's log.
    await db.execute("UPDATE events SET status = 'on_sale', prices = '{1}' WHERE event_id = $1", other["id"])

    code, report = await run_audit(database_url)
    assert code == 1
    assert "2 with violations" in report
    bad = next(line for line in report.splitlines() if line.startswith(event["id"]))
    assert "VIOLATION" in bad and "exceeds capacity" in bad
    mismatch = next(line for line in report.splitlines() if line.startswith(other["id"]))
    assert "catalogue says on_sale, the log says cancelled" in mismatch
    assert "catalogue prices [1], the log says [" in mismatch

    code, report = await run_audit(database_url, "--event", other["id"])
    assert code == 1 and "audited 1 event(s)" in report
    code, _ = await run_audit(database_url, "--event", "evt_nosuch")
    assert code == 2


async def test_audit_of_a_database_with_no_log_says_so(database_server: Any) -> None:
    # A data directory or URL that is not the server's: one line and exit 2, not a traceback and 1.
    name = "audit_empty"
    admin = await asyncpg.connect(database_server.admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.execute(f'CREATE DATABASE "{name}"')
        code, _ = await run_audit(database_server.url(name))
        assert code == 2
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.close()
