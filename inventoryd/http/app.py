"""The aiohttp application: the middleware (request id, principal, rate limits, problems, one
access line per request), the route table, and the lifecycle: one cleanup context per resource
(database schema, pool, journal, idempotency store, accounts, registry, background tasks), each
closed, in reverse, even when a later one fails to start."""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import msgspec
import structlog
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from inventoryd import errors, limits, logs
from inventoryd.accounts import Accounts, UnknownApiToken
from inventoryd.actor import Clock, system_clock
from inventoryd.catalogue import CatalogueFeed
from inventoryd.cluster import Membership
from inventoryd.config import Settings
from inventoryd.domain import EventDefinition, Reservation
from inventoryd.http import cluster, keys, openapi, operations
from inventoryd.http.headers import X_REQUEST_ID, add_response_headers, cors_origin
from inventoryd.http.peers import Peers
from inventoryd.http.problems import ProblemError, problem_response, refusal, unauthorized
from inventoryd.http.routes import ROUTES, ROUTES_BY_NAME
from inventoryd.http.views import EncodedEvents, ListingAnswers
from inventoryd.idempotency import IdempotencyStore
from inventoryd.metrics import Metrics
from inventoryd.outbox import Outbox
from inventoryd.principal import ANONYMOUS_OPERATOR, Principal
from inventoryd.ratelimit import REGISTRATIONS_KEY, RateLimits, TokenBuckets, Verdict, address_key
from inventoryd.registry import Registry
from inventoryd.streams import StreamBudget
from inventoryd.tasks import TaskSupervisor
from persistence import store
from persistence.accounts import service_secret
from persistence.errors import CONNECTION_LOST, DATABASE_AWAY
from persistence.journal import Journal, connect
from persistence.migrate import migrate

log = structlog.get_logger("inventoryd.http")

HOT_ROUTES = (
    "create_reservation",
    "get_availability",
    "confirm_reservation",
    "cancel_reservation",
    "get_reservation",
    "get_event",
)
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


def _principal_nowait(request: web.Request, app: web.Application, settings: Settings) -> Principal | None:
    """Who is asking, from memory; raises UnknownApiToken when only a reload can tell."""
    if settings.auth == "off":
        return ANONYMOUS_OPERATOR
    return app[keys.ACCOUNTS].authenticate_nowait(request.headers.get(hdrs.AUTHORIZATION))


def _rate_verdict(
    request: web.Request, app: web.Application, settings: Settings, principal: Principal | None
) -> Verdict | None:
    if not settings.rate_limits:
        return None
    buckets = app[keys.RATE_LIMITS]
    now = time.monotonic()
    if request.path.startswith("/v1/auth/"):
        # Against credential stuffing: by client address, whoever the caller claims to be.
        verdict = buckets.auth_by_address.take(address_key(request.remote), now)
        if request.match_info.route.name == "register" and (verdict is None or verdict.allowed):
            # And registrations from every address together: many addresses, each within its own
            # limit, still may not take every password hash (nor probe emails without bound).
            # Its RateLimit-* headers are sent only with its 429: they describe no one client.
            shared = buckets.registrations.take(REGISTRATIONS_KEY, now)
            if shared is not None and not shared.allowed:
                return shared
        return verdict
    if principal is None or principal.role == "admin":
        return None
    if principal.role != "service" and request.match_info.route.name == "join_queue":
        # A user taking a place: also bounded by client address (many accounts, one script).
        joins = buckets.joins_by_address.take(address_key(request.remote), now)
        if joins is not None and not joins.allowed:
            return joins
    bucket = buckets.services if principal.role == "service" else buckets.users
    return bucket.take(principal.id, now)


async def _admit(request: web.Request, app: web.Application, settings: Settings) -> Principal | None:
    """Who is asking, if they may ask this route, within their rate limit; raises a problem if not."""
    scraping = settings.metrics_token is not None and request.match_info.route.name == "metrics"
    if scraping and operations.presents_metrics_token(request):
        return None  # the metrics token names no principal: the handler accepts it
    try:
        principal = _principal_nowait(request, app, settings)
    except UnknownApiToken:
        # A token made since the last reload, perhaps: reload, then look again.
        principal = await app[keys.ACCOUNTS].authenticate(request.headers.get(hdrs.AUTHORIZATION))
    route = ROUTES_BY_NAME.get(request.match_info.route.name or "")
    if route is not None and not route.public and principal is None:
        raise unauthorized("this route needs a bearer token")
    if principal is not None:
        request[keys.PRINCIPAL] = principal
    # Counted where it is served: a node forwards a request for another node's event before it
    # knows who asks (the owner authenticates it, and counts it here).
    verdict = _rate_verdict(request, app, settings, principal)
    if verdict is not None:
        request[keys.RATE_VERDICT] = verdict
        if not verdict.allowed:
            raise ProblemError(429, "rate_limited", "too many requests; slow down", headers=verdict.headers())
    return principal


def _http_error_response(request: web.Request, error: web.HTTPException) -> web.Response:
    code = _HTTP_CODES.get(error.status, "http_error")
    detail = error.text if error.text and not error.text.startswith(f"{error.status}:") else error.reason
    if error.status == 413:
        detail = f"the request body is larger than {limits.REQUEST_BODY_BYTES_MAX} bytes"
    elif error.status == 404:
        detail = f"no route {request.method} {request.path}"
    response = problem_response(error.status, code, detail)
    if "Allow" in error.headers:
        response.headers["Allow"] = error.headers["Allow"]
    return response


async def _answered_elsewhere(request: web.Request, handler: Handler, moved: errors.NotOwner) -> web.StreamResponse:
    try:
        return await cluster.answer_elsewhere(request, handler, moved)
    except ProblemError as problem:
        return problem.response()


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, who is asking, rate limits, problem documents for every error, one access line."""
    started = time.perf_counter()
    # Looked up once: `request.app` and the app's keys are a few Python calls each.
    app = request.app
    settings = app[keys.SETTINGS]
    request_id = request.headers.get(X_REQUEST_ID, "")
    if not request_id or len(request_id) > limits.REQUEST_ID_CHARS_MAX or not request_id.isprintable():
        request_id = f"{_REQUEST_ID_PREFIX}-{next(_request_numbers)}"
    request[keys.REQUEST_ID] = request_id
    principal: Principal | None = None
    response: web.StreamResponse
    try:
        if request.method == "OPTIONS" and cors_origin(request, settings) is not None:
            response = web.Response(status=204)
        else:
            elsewhere = await cluster.forward_if_elsewhere(request)
            if elsewhere is not None:
                response = elsewhere
            else:
                principal = await _admit(request, app, settings)
                response = await handler(request)
    except ProblemError as problem:
        response = problem.response()
    except errors.Refusal as refused:
        response = refusal(refused).response()
    except errors.NotOwner as moved:
        response = await _answered_elsewhere(request, handler, moved)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        response = _http_error_response(request, error)
    except asyncio.CancelledError:
        raise
    except CONNECTION_LOST as error:
        if isinstance(error, ConnectionResetError) and request.transport is None:
            # The client left mid-request (its body cut off): nobody to answer, nothing wrong here.
            log.info("client_disconnected", request_id=request_id, method=request.method, path=request.path)
            response = web.Response(status=499, reason="Client Closed Request")
        else:
            # The database is unreachable (or slower than DB_TIMEOUT_S): not the caller's fault, and
            # not a bug; retrying later is the right thing to do.
            log.warning("database_unavailable", request_id=request_id, path=request.path, error=repr(error))
            response = problem_response(503, "unavailable", "the database is not answering; retry shortly")
    except Exception:
        log.exception("request_failed", request_id=request_id, method=request.method, path=request.path)
        response = problem_response(500, "internal_error", "an unexpected error; it has been logged")
    elapsed_s = time.perf_counter() - started
    resource = request.match_info.route.resource
    route_template = resource.canonical if resource is not None else "unmatched"
    app[keys.METRICS].observe_request(route_template, request.method, response.status, elapsed_s)
    if settings.access_log:
        logs.access(
            request_id=request_id,
            method=request.method,
            route=route_template,
            status=response.status,
            duration_ms=round(elapsed_s * 1000, 3),
            principal=principal.id if principal is not None else None,
        )
    if not response.prepared:  # a stream sent its headers itself, with add_response_headers
        add_response_headers(request, response, settings)
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
    app[keys.ENCODED_EVENTS] = EncodedEvents()
    app[keys.LISTING_ANSWERS] = ListingAnswers()
    app[keys.RATE_LIMITS] = RateLimits(
        users=TokenBuckets(settings.rate_user_per_s, settings.rate_user_burst),
        services=TokenBuckets(settings.rate_service_per_s, settings.rate_service_burst),
        auth_by_address=TokenBuckets(settings.rate_auth_per_s, settings.rate_auth_burst),
        registrations=TokenBuckets(settings.rate_register_per_s, settings.rate_register_burst),
        joins_by_address=TokenBuckets(settings.rate_join_per_s, settings.rate_join_burst),
    )
    app[keys.METRICS] = Metrics()
    app[keys.OPENAPI] = msgspec.json.encode(openapi.build(ROUTES))
    openapi.add_static(app)
    # aiohttp tries dynamic routes in the order they were added (a regular expression each): the
    # on-sale routes go first, so the hottest request does not pay for every other route.
    for route in sorted(ROUTES, key=lambda route: HOT_ROUTES.index(route.name) if route.name in HOT_ROUTES else len(HOT_ROUTES)):
        app.router.add_route(route.method, route.path, route.handler, name=route.name)
    # Between the nodes only (a forwarding token, no bearer): not part of the API or its document.
    app.router.add_route("POST", cluster.INTERNAL_VIEWS_PATH, cluster.internal_views, name="internal_views")
    for context in _lifecycle(database_url, journal_factory):
        app.cleanup_ctx.append(context)
    return app


Context = Callable[[web.Application], AsyncIterator[None]]


def _lifecycle(database_url: str, journal_factory: Callable[[str], Journal]) -> list[Context]:
    """The service's resources, one cleanup context each, in the order they start (aiohttp closes
    them in the reverse order)."""
    return [
        functools.partial(_schema, database_url),
        functools.partial(_pool, database_url),
        functools.partial(_catalogue, database_url),
        functools.partial(_membership, database_url),
        _forwarder,
        functools.partial(_journal, database_url, journal_factory),
        _idempotency,
        _accounts,
        _registry,
        functools.partial(_outbox, database_url),
        _background,
    ]


async def _schema(database_url: str, app: web.Application) -> AsyncIterator[None]:
    connection = await connect(database_url)
    try:
        applied = await migrate(connection)
    finally:
        await connection.close()
    if applied:
        log.info("migrations_applied", versions=[migration.version for migration in applied])
    yield


async def _pool(database_url: str, app: web.Application) -> AsyncIterator[None]:
    app[keys.POOL] = await store.create_pool(database_url, max_size=app[keys.SETTINGS].db_pool_size)
    try:
        yield
    finally:
        await app[keys.POOL].close()


async def _catalogue(database_url: str, app: web.Application) -> AsyncIterator[None]:
    # Read in the background (with retries, like recovery); /readyz waits for the first read.
    feed = app[keys.CATALOGUE] = CatalogueFeed(database_url, app[keys.POOL])
    feed.start()
    try:
        yield
    finally:
        await feed.close()


async def _membership(database_url: str, app: web.Application) -> AsyncIterator[None]:
    # Joined by the recovery task (Registry.start); here it is made, and left at the end, after
    # the registry has drained (its leases are kept while the last batches commit).
    settings = app[keys.SETTINGS]
    node = Membership(database_url, settings.node_url, lb_server_id=settings.lb_server_id, lb_weight=settings.lb_weight)
    app[keys.CLUSTER] = node
    try:
        yield
    finally:
        await node.stop()


async def _forwarder(app: web.Application) -> AsyncIterator[None]:
    async with app[keys.POOL].acquire() as connection:
        app[keys.FORWARD_KEY] = await service_secret(connection, "cluster_forward_key", os.urandom(32))
        app[keys.ADMISSION_KEY] = await service_secret(connection, "admission_key", os.urandom(32))
    connector = aiohttp.TCPConnector(
        limit=limits.FORWARD_CONNECTIONS_MAX, limit_per_host=limits.FORWARD_CONNECTIONS_PER_NODE_MAX, keepalive_timeout=30
    )
    timeout = aiohttp.ClientTimeout(total=limits.REQUEST_TIMEOUT_S + 1, connect=limits.FORWARD_CONNECT_TIMEOUT_S)
    app[keys.FORWARDS_IN_FLIGHT] = asyncio.Semaphore(limits.FORWARD_IN_FLIGHT_MAX)
    app[keys.PEERS] = peers = Peers()
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
            app[keys.FORWARDER] = session
            yield
    finally:
        peers.close()


async def _journal(database_url: str, journal_factory: Callable[[str], Journal], app: web.Application) -> AsyncIterator[None]:
    journal = journal_factory(database_url)
    journal.on_commit = app[keys.METRICS].observe_commit
    journal.on_wait = app[keys.METRICS].observe_journal_wait
    journal.on_fenced = app[keys.CLUSTER].fenced
    await journal.start()
    app[keys.JOURNAL] = journal
    try:
        yield
    finally:
        await journal.close()


async def _idempotency(app: web.Application) -> AsyncIterator[None]:
    store = IdempotencyStore(app[keys.POOL])
    await store.load()
    app[keys.IDEMPOTENCY] = store
    yield


async def _accounts(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    accounts = Accounts(app[keys.POOL], admin_token=settings.admin_token, jwt_secret=settings.jwt_secret)
    await accounts.start()
    app[keys.ACCOUNTS] = accounts
    try:
        yield
    finally:
        await accounts.stop()


async def _registry(app: web.Application) -> AsyncIterator[None]:
    metrics = app[keys.METRICS]
    registry = Registry(
        app[keys.JOURNAL],
        app[keys.POOL],
        app[keys.CLUSTER],
        app[keys.CLOCK],
        on_batch=metrics.observe_batch,
        on_catalogue=app[keys.CATALOGUE].catalogue.apply,
        on_admitted=metrics.observe_queue_waits,
    )
    registry.shard_owner = _ShardsTaken(registry, app[keys.IDEMPOTENCY])
    metrics.watch(registry, app[keys.JOURNAL], app[keys.IDEMPOTENCY], app[keys.CATALOGUE])
    app[keys.REGISTRY] = registry
    try:
        yield
    finally:
        await registry.stop()


async def _outbox(database_url: str, app: web.Application) -> AsyncIterator[None]:
    """Deliveries of what the events served here commit (webhooks, confirmation emails): started
    before recovery, so that every actor rebuilt tells it where its log ends."""
    registry = app[keys.REGISTRY]

    def serving(event_id: str) -> EventDefinition | None:
        if not registry.cluster.serving(registry.cluster.shard_of(event_id)):
            return None
        actor = registry.get(event_id)
        view = actor.view() if actor is not None else None
        return view.definition if view is not None else None

    def reservation_of(event_id: str, reservation_id: str) -> Reservation | None:
        actor = registry.get(event_id)
        return actor.reservation(reservation_id) if actor is not None else None

    outbox = Outbox(database_url, app[keys.POOL], app[keys.SETTINGS], serving=serving, reservation_of=reservation_of)
    await outbox.start()
    registry.on_committed = outbox.committed
    app[keys.METRICS].watch_outbox(outbox)
    app[keys.OUTBOX] = outbox
    try:
        yield
    finally:
        await outbox.stop()


async def _background(app: web.Application) -> AsyncIterator[None]:
    # Recovery runs while the server already answers: /healthz says alive; until the events
    # are known, /readyz says not ready and inventory routes answer 503 + Retry-After. Then the
    # actors are rebuilt in the background, and on demand for the events requests ask for.
    tasks = app[keys.TASKS] = TaskSupervisor("app")
    tasks.spawn(app[keys.REGISTRY].start(), name="recovery")
    tasks.spawn(_sweep_idempotency(app[keys.IDEMPOTENCY]), name="idempotency-sweeper")
    try:
        yield
    finally:
        await tasks.close()


class _ShardsTaken:
    """What the cluster tells of shards: the registry's business, but a takeover first reads the
    idempotency keys the old owner stored (a retry here must replay their answers)."""

    def __init__(self, registry: Registry, idempotency: IdempotencyStore) -> None:
        self._registry = registry
        self._idempotency = idempotency

    async def shards_acquired(self, acquired: list[tuple[int, int]]) -> None:
        await self._idempotency.load_recent()
        await self._registry.shards_acquired(acquired)

    def shard_lost(self, shard: int) -> None:
        self._registry.shard_lost(shard)

    async def shard_releasing(self, shard: int) -> None:
        await self._registry.shard_releasing(shard)


async def _sweep_idempotency(idempotency: IdempotencyStore) -> None:
    while True:
        try:
            forgotten = await idempotency.forget_expired()
            if forgotten:
                log.info("idempotency_keys_forgotten", count=forgotten)
        except DATABASE_AWAY as error:
            log.warning("idempotency_sweep_failed", error=repr(error))
        await asyncio.sleep(limits.IDEMPOTENCY_SWEEP_INTERVAL_S)
