"""(a) The HTTP ceiling: a POST on the same stack (aiohttp on uvloop, msgspec) that decodes the same
reservation body, validates it the same way, and answers 201 without touching any state. And
`GET /bytes/{size}`: an answer of that many bytes, made once (the ceiling of a read of that size,
for `loadtests.catalogue_bench`)."""

from __future__ import annotations

import sys

import uvloop
from aiohttp import web

from inventoryd.http.schemas import ENCODER, RESERVATION_DECODER


async def reserve(request: web.Request) -> web.Response:
    body = RESERVATION_DECODER.decode(await request.read())
    answer = {"event_id": request.match_info["event_id"], "ticket_type": body.ticket_type, "quantity": body.quantity}
    return web.Response(status=201, body=ENCODER.encode(answer), content_type="application/json")


_BODIES: dict[int, bytes] = {}
# The largest answer /bytes/ makes.
BYTES_MAX = 1_000_000


async def sized(request: web.Request) -> web.Response:
    size = min(int(request.match_info["size"]), BYTES_MAX)
    body = _BODIES.get(size)
    if body is None:
        body = _BODIES[size] = b'"' + b"x" * max(0, size - 2) + b'"'
    return web.Response(body=body, content_type="application/json")


def main() -> None:
    port = int(sys.argv[1])
    app = web.Application()
    app.router.add_post("/v1/events/{event_id}/reservations", reserve)
    app.router.add_get("/bytes/{size:[0-9]{1,7}}", sized)
    web.run_app(app, host="127.0.0.1", port=port, loop=uvloop.new_event_loop(), access_log=None, print=None)


if __name__ == "__main__":
    main()
