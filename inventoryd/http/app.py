"""The aiohttp application: middlewares (request id, principal, problems, one access line per
request), the route table, and the lifecycle (database, journal, recovery, maintenance)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import AsyncIterator, Callable

import asyncpg
import structlog
from aiohttp import web

from inventoryd import limits
from inventoryd.actor import Clock, system_clock
from inventoryd.config import Settings
from inventoryd.http import keys
from inventoryd.http.auth import authenticate
from inventoryd.http.problems import ProblemError, problem_response
from inventoryd.http.events import StreamBudget
from inventoryd.http.routes import ROUTES
from inventoryd.idempotency import IdempotencyStore
from inventoryd.registry import Registry
from persistence import store
from persistence.journal import Journal, connect
from persistence.migrate import migrate

log = structlog.get_logger("inventoryd.http")
access_log = structlog.get_logger("inventoryd.access")

IDEMPOTENCY_SWEEP_INTERVAL_S = 3600.0
_REQUEST_ID_CHARS_MAX = 128
# Request ids made here: a random prefix per process and a counter (uuid4 per request costs more).
_REQUEST_ID_PREFIX = os.urandom(6).hex()
_request_numbers = itertools.count(1)

_HTTP_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    431: "header_too_large",
}


@web.middleware
async def request_context(request: web.Request, handler: web.RequestHandler) -> web.StreamResponse:
    """Request id, principal, problem documents for every error, and the access line."""
    started = time.perf_counter()
    request_id = request.headers.get("X-Request-ID", "")
    if not request_id or len(request_id) > _REQUEST_ID_CHARS_MAX or not request_id.isprintable():
        request_id = f"{_REQUEST_ID_PREFIX}-{next(_request_numbers)}"
    request[keys.REQUEST_ID] = request_id
    response: web.StreamResponse
    try:
        request[keys.PRINCIPAL] = authenticate(request.headers.get("Authorization"))
        response = await handler(request)
    except ProblemError as problem:
        response = problem.response()
    except web.HTTPException as error:
        if error.status < 400:
            raise
        code = _HTTP_CODES.get(error.status, "http_error")
        detail = error.text if error.text and not error.text.startswith(f"{error.status}:") else error.reason
        if error.status == 413:
            detail = f"the request body is larger than {limits.REQUEST_BODY_BYTES_MAX} bytes"
        elif error.status == 404:
            detail = f"no route {request.method} {request.path}"
        response = problem_response(error.status, code, detail)
        for header in ("Allow",):
            if header in error.headers:
                response.headers[header] = error.headers[header]
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("request_failed", request_id=request_id, method=request.method, path=request.path)
        response = problem_response(500, "internal_error", "an unexpected error; it has been logged")
    response.headers["X-Request-ID"] = request_id
    if request.app[keys.SETTINGS].access_log:
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else None
        principal = request.get(keys.PRINCIPAL)
        access_log.info(
            "request",
            request_id=request_id,
            method=request.method,
            route=route,
            status=response.status,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
            principal=principal.id if principal is not None else None,
        )
    return response


def create_app(
    settings: Settings,
    *,
    database_url: str,
    clock: Clock = system_clock,
    journal_factory: Callable[[str], Journal] = Journal,
) -> web.Application:
    """The service. `clock` and `journal_factory` are seams for tests (a moved clock, a journal
    that fails on purpose); production uses the defaults."""
    app = web.Application(middlewares=[request_context], client_max_size=limits.REQUEST_BODY_BYTES_MAX)
    app[keys.SETTINGS] = settings
    app[keys.CLOCK] = clock
    app[keys.STREAMS] = StreamBudget()
    for route in ROUTES:
        app.router.add_route(route.method, route.path, route.handler, name=route.name)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        connection = await connect(database_url)
        try:
            applied = await migrate(connection)
        finally:
            await connection.close()
        if applied:
            log.info("migrations_applied", versions=[migration.version for migration in applied])
        pool = await store.create_pool(database_url, max_size=settings.db_pool_size)
        journal = journal_factory(database_url)
        await journal.start()
        idempotency = IdempotencyStore(pool)
        await idempotency.load()
        registry = Registry(journal, pool, clock)
        app[keys.POOL] = pool
        app[keys.JOURNAL] = journal
        app[keys.IDEMPOTENCY] = idempotency
        app[keys.REGISTRY] = registry
        # Recovery runs while the server already answers: /healthz says alive, /readyz says not
        # ready, and inventory routes answer 503 + Retry-After until every actor is rebuilt.
        recovery = asyncio.create_task(registry.start(), name="recovery")
        sweeper = asyncio.create_task(_sweep_idempotency(idempotency), name="idempotency-sweeper")
        try:
            yield
        finally:
            for task in (sweeper, recovery):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await registry.stop()
            await journal.close()
            await pool.close()

    app.cleanup_ctx.append(lifecycle)
    return app


async def _sweep_idempotency(idempotency: IdempotencyStore) -> None:
    while True:
        try:
            forgotten = await idempotency.forget_expired()
            if forgotten:
                log.info("idempotency_keys_forgotten", count=forgotten)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError) as error:
            log.warning("idempotency_sweep_failed", error=repr(error))
        await asyncio.sleep(IDEMPOTENCY_SWEEP_INTERVAL_S)
