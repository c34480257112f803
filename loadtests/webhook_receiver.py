"""A webhook receiver for the outbox benchmark: `POST /hook/{n}` answers 200 and counts what
endpoint n got; `GET /counts` answers the counts. A process of its own, on loopback.

    python -m loadtests.webhook_receiver PORT
"""

from __future__ import annotations

import sys
from collections import Counter

import uvloop
from aiohttp import web

received: Counter[str] = Counter()


async def hook(request: web.Request) -> web.Response:
    await request.read()
    received[request.match_info["n"]] += 1
    return web.Response(text="ok")


async def counts(_: web.Request) -> web.Response:
    return web.json_response(dict(received))


def main() -> None:
    app = web.Application()
    app.router.add_post("/hook/{n}", hook)
    app.router.add_get("/counts", counts)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), loop=uvloop.new_event_loop(), access_log=None, print=None)


if __name__ == "__main__":
    main()
