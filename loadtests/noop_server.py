"""(a) The HTTP ceiling: a POST on the same stack (aiohttp on uvloop, msgspec) that decodes the same
reservation body, validates it the same way, and answers 201 without touching any state."""

from __future__ import annotations

import sys

import uvloop
from aiohttp import web

from inventoryd.http.schemas import ENCODER, RESERVATION_DECODER


async def reserve(request: web.Request) -> web.Response:
    body = RESERVATION_DECODER.decode(await request.read())
    answer = {"event_id": request.match_info["event_id"], "ticket_type": body.ticket_type, "quantity": body.quantity}
    return web.Response(status=201, body=ENCODER.encode(answer), content_type="application/json")


def main() -> None:
    port = int(sys.argv[1])
    app = web.Application()
    app.router.add_post("/v1/events/{event_id}/reservations", reserve)
    web.run_app(app, host="127.0.0.1", port=port, loop=uvloop.new_event_loop(), access_log=None, print=None)


if __name__ == "__main__":
    main()
