"""(b) The conventional design, on the same stack: per request one transaction that locks the
ticket type's row (`SELECT … FOR UPDATE`), checks capacity, updates the counter, inserts the
reservation and commits. Every buyer of a hot event waits on one row lock and pays one fsync."""

from __future__ import annotations

import sys
import uuid

import asyncpg
import uvloop
from aiohttp import web

from inventoryd.http.schemas import ENCODER, RESERVATION_DECODER

SCHEMA = """
CREATE TABLE IF NOT EXISTS baseline_inventory (
    event_id text NOT NULL, code text NOT NULL, capacity int NOT NULL, held int NOT NULL DEFAULT 0,
    PRIMARY KEY (event_id, code)
);
CREATE TABLE IF NOT EXISTS baseline_reservations (
    id text PRIMARY KEY, event_id text NOT NULL, code text NOT NULL, user_id text NOT NULL,
    quantity int NOT NULL, created_at timestamptz NOT NULL DEFAULT now()
);
"""
POOL = web.AppKey("pool", asyncpg.Pool)


async def reset_if_interrupted(connection: asyncpg.Connection) -> None:
    """What the pool does to a connection given back. Its default (`Connection.reset`) sends a reset
    query: a round trip and a transaction per request. Every request here ends its transaction and
    sets no session state, so only one cut off mid-transaction has anything to undo."""
    if connection.is_in_transaction():
        await connection.execute("ROLLBACK")


async def reserve(request: web.Request) -> web.Response:
    body = RESERVATION_DECODER.decode(await request.read())
    event_id = request.match_info["event_id"]
    async with request.app[POOL].acquire() as connection, connection.transaction():
        row = await connection.fetchrow(
            "SELECT capacity, held FROM baseline_inventory WHERE event_id = $1 AND code = $2 FOR UPDATE",
            event_id,
            body.ticket_type,
        )
        if row is None:
            return web.json_response({"code": "not_found"}, status=404)
        if row["held"] + body.quantity > row["capacity"]:
            return web.json_response({"code": "sold_out"}, status=409)
        await connection.execute(
            "UPDATE baseline_inventory SET held = held + $3 WHERE event_id = $1 AND code = $2",
            event_id,
            body.ticket_type,
            body.quantity,
        )
        reservation_id = uuid.uuid4().hex
        await connection.execute(
            "INSERT INTO baseline_reservations (id, event_id, code, user_id, quantity) VALUES ($1, $2, $3, $4, $5)",
            reservation_id,
            event_id,
            body.ticket_type,
            body.user_id,
            body.quantity,
        )
    answer = {"id": reservation_id, "event_id": event_id, "quantity": body.quantity, "status": "held"}
    return web.Response(status=201, body=ENCODER.encode(answer), content_type="application/json")


def main() -> None:
    port, database_url = int(sys.argv[1]), sys.argv[2]

    async def lifecycle(app: web.Application):  # type: ignore[no-untyped-def]
        app[POOL] = await asyncpg.create_pool(database_url, min_size=16, max_size=64, reset=reset_if_interrupted)
        yield
        await app[POOL].close()

    app = web.Application()
    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/v1/events/{event_id}/reservations", reserve)
    web.run_app(app, host="127.0.0.1", port=port, loop=uvloop.new_event_loop(), access_log=None, print=None)


if __name__ == "__main__":
    main()
