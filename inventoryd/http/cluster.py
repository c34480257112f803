"""The edge in a cluster: a request for an event another node owns is forwarded to it; the views a
listing needs of other nodes' events are asked of them; `GET /v1/cluster` shows the cluster.

Any node answers any request. One that does not serve the event's shard (`NotOwner`) forwards the
request (method, path, body, Authorization, Idempotency-Key, X-Request-ID and the rest of its
end-to-end headers) to the owner over pooled keep-alive connections, and relays the answer as it is
(a full mailbox there is still a 503 with Retry-After). A forwarded request carries
`Inventoryd-Forwarded-By` and a token only nodes can make (an HMAC of the forwarding node's id,
keyed by a secret the nodes share through the database): a node never forwards such a request
again, but answers 421 if it does not own the event (any more), and the forwarding node, having
refreshed its shard map, retries once. While a shard has no known owner (its lease ran out, or it
is being handed over) a request waits up to SHARD_OWNER_WAIT_S for one, then gets 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import time
from typing import NoReturn

import aiohttp
import msgspec
import structlog
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict, istr

from inventoryd import domain, limits
from inventoryd.actor import EventActor
from inventoryd.cluster import Membership
from inventoryd.domain import EventSummary, Reservation
from inventoryd.errors import NotOwner
from inventoryd.http import keys, schemas
from inventoryd.http.headers import X_REQUEST_ID, add_response_headers
from inventoryd.http.peers import PeerLost, PeerUnreachable
from inventoryd.http.problems import ProblemError, problem_response
from inventoryd.registry import Registry

log = structlog.get_logger("inventoryd.http")

FORWARDED_BY = istr("Inventoryd-Forwarded-By")
FORWARD_TOKEN = istr("Inventoryd-Forward-Token")
# The client's address, as the forwarding node saw it (believed only with a valid token).
FORWARDED_FOR = istr("Inventoryd-Forwarded-For")
# On an answer relayed from another node: which (operators, and the tests, tell hops apart by it).
FORWARDED_TO = istr("Inventoryd-Forwarded-To")
# Not passed on either way (RFC 9110 7.6.1), and what the client library sets itself.
_HOP_BY_HOP = frozenset(
    istr(name)
    for name in (
        "Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
        "Transfer-Encoding", "Upgrade", "Expect", "Host", "Content-Length", "Inventoryd-Forwarded-By",
        "Inventoryd-Forward-Token", "Inventoryd-Forwarded-For", "Inventoryd-Forwarded-To",
    )
)
# Of an answer relayed: what aiohttp sets itself on the response it sends on.
_NOT_RELAYED = _HOP_BY_HOP | {istr("Date"), istr("Server")}
INTERNAL_VIEWS_PATH = "/internal/v1/views"


class ViewsIn(msgspec.Struct, forbid_unknown_fields=True):
    event_ids: list[str] = []
    reservation_ids: list[str] = []


class ViewsOut(msgspec.Struct):
    events: dict[str, EventSummary]
    reservations: dict[str, Reservation]


_VIEWS_IN = msgspec.json.Decoder(ViewsIn)
_VIEWS_OUT = msgspec.json.Decoder(ViewsOut)


@functools.lru_cache(maxsize=limits.FORWARD_TOKENS_CACHED)
def forward_token(key: bytes, node_id: str) -> str:
    """The token a node with this id sends (an HMAC: the same for every request, so kept)."""
    return hmac.new(key, node_id.encode(), hashlib.sha256).hexdigest()


def forwarded_by_a_node(request: web.Request) -> str | None:
    """The node that forwarded this request, if a node did (its token checks out)."""
    node_id = request.headers.get(FORWARDED_BY)
    token = request.headers.get(FORWARD_TOKEN)
    if node_id is None or token is None or len(node_id) > limits.NODE_ID_CHARS_MAX:
        return None
    return node_id if hmac.compare_digest(forward_token(request.app[keys.FORWARD_KEY], node_id), token) else None


def client_address(request: web.Request) -> str | None:
    """The address of the client: for a request another node forwarded, the one it says."""
    forwarded_for = request.headers.get(FORWARDED_FOR)
    if forwarded_for is not None and forwarded_by_a_node(request) is not None:
        return forwarded_for
    return request.remote


def shard_asked(request: web.Request) -> int | None:
    """The shard of the event the request's path names (by its id, or a reservation's or ticket's,
    which carry their event's key); None if it names none."""
    info = request.match_info
    event_id = info.get("event_id")
    if event_id is None:
        other = info.get("reservation_id") or info.get("ticket_id") or info.get("queue_id")
        event_id = domain.event_id_of(other) if other else None
    return request.app[keys.CLUSTER].shard_of(event_id) if event_id else None


# -- forwarding -----------------------------------------------------------------------------------


async def forward_if_elsewhere(request: web.Request) -> web.StreamResponse | None:
    """A request whose path names an event this node does not serve: the owner's answer, forwarded
    before this node authenticates, limits or decodes anything (the owner does all of it, once).
    None: this node serves it (or it names no event)."""
    shard = shard_asked(request)
    if shard is None or request.app[keys.CLUSTER].serving(shard):
        return None
    return await _to_owner(request, shard)


async def answer_elsewhere(request: web.Request, handler: Handler, moved: NotOwner) -> web.StreamResponse:
    """A handler found its event is not this node's (an event whose id the request does not name:
    a keyed create): the owner's answer, or this node's if the shard came here meanwhile."""
    response = await _to_owner(request, moved.shard)
    return response if response is not None else await handler(request)


async def _to_owner(request: web.Request, shard: int | None) -> web.StreamResponse | None:
    """Forward to the shard's owner (once more after a 421); None if the shard came to this node
    meanwhile; 503 if no owner answers for it."""
    cluster = request.app[keys.CLUSTER]
    if forwarded_by_a_node(request) is not None:
        # Never forwarded twice: the node that sent it will look again and retry.
        return problem_response(421, "owner_changed", "this node does not own the event (any more)")
    tried: str | None = None
    for _ in range(2):
        url = _owner_url(cluster, shard)
        if url is None or url == tried:
            await cluster.wait_map_changed(limits.SHARD_OWNER_WAIT_S)
            if shard is not None and cluster.serving(shard):
                return None
            url = _owner_url(cluster, shard)
        if url is None or url == tried:
            break
        response = await forward(request, url)
        if response.status != 421:
            return response
        tried = url
    raise ProblemError(503, "owner_changed", "the event's owner is changing; retry shortly")


def _owner_url(cluster: Membership, shard: int | None) -> str | None:
    return cluster.some_owner_url() if shard is None else cluster.owner_url(shard)


async def forward(request: web.Request, url: str) -> web.StreamResponse:
    """Send the request to the node at `url` and relay its answer (a stream as a stream)."""
    app = request.app
    in_flight = app[keys.FORWARDS_IN_FLIGHT]
    if in_flight.locked():
        raise ProblemError(503, "overloaded", "too many requests are being forwarded; retry shortly")
    metrics = app[keys.METRICS]
    started = time.perf_counter()
    async with in_flight:
        # Streams (availability, and the CSV report of an event of any size) are relayed as they come.
        if request.headers.get(hdrs.ACCEPT) == "text/event-stream" or request.path.endswith(("/stream", ".csv")):
            return await _forward_stream(request, url)
        head = _request_head(request, url)
        body = await request.read() if request.body_exists else b""  # read() keeps what a handler read
        try:
            answer = await app[keys.PEERS].request(url, head + b"Content-Length: %d\r\n\r\n" % len(body), body)
        except (PeerUnreachable, PeerLost) as error:
            metrics.observe_forward("unreachable", time.perf_counter() - started)
            log.warning("forward_failed", url=url, path=request.path, error=repr(error))
            _refuse_unreachable(request, sent=isinstance(error, PeerLost))
    metrics.observe_forward("relayed" if answer.status != 421 else "misdirected", time.perf_counter() - started)
    headers = CIMultiDict([(name, value) for name, value in answer.headers if name not in _NOT_RELAYED])
    headers[FORWARDED_TO] = url
    return web.Response(status=answer.status, body=answer.body, headers=headers)


def _request_head(request: web.Request, url: str) -> bytes:
    """The forwarded request's line and headers, up to its Content-Length (added by the caller)."""
    cluster = request.app[keys.CLUSTER]
    lines = [f"{request.method} {request.raw_path} HTTP/1.1", f"Host: {url.partition('://')[2]}"]
    lines += [f"{name}: {value}" for name, value in request.headers.items() if name not in _HOP_BY_HOP]
    lines.append(f"{X_REQUEST_ID}: {request.get(keys.REQUEST_ID, '')}")
    lines.append(f"{FORWARDED_BY}: {cluster.node_id}")
    lines.append(f"{FORWARD_TOKEN}: {forward_token(request.app[keys.FORWARD_KEY], cluster.node_id)}")
    lines.append(f"{FORWARDED_FOR}: {client_address(request) or ''}")
    # aiohttp decoded the client's header bytes as UTF-8 with surrogateescape: the same bytes go on.
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")


def _refuse_unreachable(request: web.Request, *, sent: bool) -> NoReturn:
    if not sent or request.method == "GET":
        raise ProblemError(503, "owner_changed", "the event's node does not answer; retry shortly") from None
    raise ProblemError(503, "unavailable", "the outcome is not known; retry with the same Idempotency-Key") from None


async def _forward_stream(request: web.Request, url: str) -> web.StreamResponse:
    """A stream, through aiohttp's client, which reads it as it comes."""
    cluster = request.app[keys.CLUSTER]
    headers = CIMultiDict((name, value) for name, value in request.headers.items() if name not in _HOP_BY_HOP)
    headers[X_REQUEST_ID] = request.get(keys.REQUEST_ID, "")
    headers[FORWARDED_BY] = cluster.node_id
    headers[FORWARD_TOKEN] = forward_token(request.app[keys.FORWARD_KEY], cluster.node_id)
    headers[FORWARDED_FOR] = client_address(request) or ""
    try:
        upstream = await request.app[keys.FORWARDER].get(url + request.raw_path, headers=headers, allow_redirects=False)
    except (aiohttp.ClientConnectionError, TimeoutError) as error:
        log.warning("forward_failed", url=url, path=request.path, error=repr(error))
        _refuse_unreachable(request, sent=not isinstance(error, aiohttp.ClientConnectorError))
    try:
        if upstream.content_type in ("text/event-stream", "text/csv"):
            return await _relay_stream(request, upstream)
        answer = await upstream.read()
    finally:
        upstream.release()
    response = web.Response(status=upstream.status, body=answer)
    for name, value in upstream.headers.items():
        if name not in _HOP_BY_HOP:
            response.headers.add(name, value)
    response.headers[FORWARDED_TO] = url
    return response


async def _relay_stream(request: web.Request, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
    """Relay a stream as it comes, until either side ends it. The client going away is noticed
    within STREAM_DISCONNECT_CHECK_S (not at the next heartbeat): the upstream connection is closed
    then, so that the owner frees the stream's slot as soon as it would for a direct client."""
    response = web.StreamResponse(status=upstream.status)
    for name, value in upstream.headers.items():
        if name not in _HOP_BY_HOP:
            response.headers[name] = value
    response.headers[FORWARDED_TO] = str(upstream.url.origin())
    add_response_headers(request, response)
    await response.prepare(request)

    async def pump() -> None:
        with contextlib.suppress(aiohttp.ClientError, ConnectionError):  # either side went away
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)

    pumping = asyncio.ensure_future(pump())
    try:
        while not pumping.done():
            await asyncio.wait((pumping,), timeout=limits.STREAM_DISCONNECT_CHECK_S)
            transport = request.transport
            if transport is None or transport.is_closing() or request.app[keys.REGISTRY].draining:
                break
    finally:
        pumping.cancel()
        upstream.close()  # not back to the pool: the owner sees the stream end
    return response


# -- views of other nodes' events (listings, a user's history) -------------------------------------


async def summaries(request: web.Request, event_ids: list[str]) -> dict[str, EventSummary]:
    """The committed views of these events: from the actors of those this node serves, from their
    owners for the others (one request per owner). Events that cannot be shown now are left out."""
    registry = request.app[keys.REGISTRY]
    found: dict[str, EventSummary] = {}
    elsewhere = []
    cluster = registry.cluster
    for event_id in event_ids:
        actor = registry.get(event_id)
        if actor is not None and cluster.serving(actor.shard):  # the common case, without hashing the id
            view = actor.view()
        elif cluster.serving(cluster.shard_of(event_id)):
            view = await _served_view(registry, event_id)
        else:
            elsewhere.append(event_id)
            continue
        if view is not None:
            found[event_id] = view
    if elsewhere:
        remote, _ = await views_elsewhere(request, elsewhere, [])
        found.update(remote)
    return found


async def reservations(request: web.Request, reservation_ids: list[str]) -> dict[str, Reservation]:
    """The committed reservations with these ids (as `summaries` does for events)."""
    registry = request.app[keys.REGISTRY]
    found: dict[str, Reservation] = {}
    elsewhere = []
    for reservation_id in reservation_ids:
        event_id = domain.event_id_of(reservation_id)
        if event_id is None:
            continue
        if registry.cluster.serving(registry.cluster.shard_of(event_id)):
            actor = await _served_actor(registry, event_id)
            reservation = actor.reservation(reservation_id) if actor is not None else None
            if reservation is not None:
                found[reservation_id] = reservation
        else:
            elsewhere.append(reservation_id)
    if elsewhere:
        _, remote = await views_elsewhere(request, [], elsewhere)
        found.update(remote)
    return found


async def views_elsewhere(
    request: web.Request, event_ids: list[str], reservation_ids: list[str]
) -> tuple[dict[str, EventSummary], dict[str, Reservation]]:
    """The committed views of events and reservations this node does not serve, from their owners
    (one request per owner); those whose owner is unknown or does not answer are left out."""
    cluster = request.app[keys.CLUSTER]
    wanted: dict[str, ViewsIn] = {}
    for event_id in event_ids:
        url = cluster.owner_url(cluster.shard_of(event_id))
        if url is not None:
            wanted.setdefault(url, ViewsIn()).event_ids.append(event_id)
    for reservation_id in reservation_ids:
        owner_event = domain.event_id_of(reservation_id)
        url = cluster.owner_url(cluster.shard_of(owner_event)) if owner_event else None
        if url is not None:
            wanted.setdefault(url, ViewsIn()).reservation_ids.append(reservation_id)
    answers = await asyncio.gather(*(_ask_views(request, url, views) for url, views in wanted.items()))
    events: dict[str, EventSummary] = {}
    reservations: dict[str, Reservation] = {}
    for answer in answers:
        if answer is not None:
            events.update(answer.events)
            reservations.update(answer.reservations)
    return events, reservations


async def _ask_views(request: web.Request, url: str, views: ViewsIn) -> ViewsOut | None:
    app = request.app
    cluster = app[keys.CLUSTER]
    headers = {
        FORWARDED_BY: cluster.node_id,
        FORWARD_TOKEN: forward_token(app[keys.FORWARD_KEY], cluster.node_id),
        hdrs.CONTENT_TYPE: "application/json",
        X_REQUEST_ID: request.get(keys.REQUEST_ID, ""),
    }
    try:
        async with app[keys.FORWARDER].post(url + INTERNAL_VIEWS_PATH, data=schemas.ENCODER.encode(views), headers=headers) as answer:
            if answer.status != 200:
                return None
            return _VIEWS_OUT.decode(await answer.read())
    except (aiohttp.ClientError, TimeoutError, msgspec.DecodeError) as error:
        log.warning("views_unavailable", url=url, error=repr(error))
        return None


async def internal_views(request: web.Request) -> web.Response:
    """POST /internal/v1/views (nodes only): the committed views of the events and reservations
    this node serves, of those asked for."""
    if forwarded_by_a_node(request) is None:
        raise ProblemError(403, "forbidden", "only the cluster's nodes ask for views")
    asked = _VIEWS_IN.decode(await request.read())
    if len(asked.event_ids) + len(asked.reservation_ids) > 2 * limits.PAGE_ITEMS_MAX:
        raise ProblemError(413, "payload_too_large", f"at most {2 * limits.PAGE_ITEMS_MAX} views at once")
    registry = request.app[keys.REGISTRY]
    events: dict[str, EventSummary] = {}
    reservations: dict[str, Reservation] = {}
    for event_id in asked.event_ids:
        view = await _served_view(registry, event_id)
        if view is not None:
            events[event_id] = view
    for reservation_id in asked.reservation_ids:
        owner_event = domain.event_id_of(reservation_id)
        actor = await _served_actor(registry, owner_event) if owner_event else None
        reservation = actor.reservation(reservation_id) if actor is not None else None
        if reservation is not None:
            reservations[reservation_id] = reservation
    return web.Response(body=schemas.ENCODER.encode(ViewsOut(events, reservations)), content_type="application/json")


async def _served_actor(registry: Registry, event_id: str) -> EventActor | None:
    try:
        registry.check_serving(event_id)
        return registry.get(event_id) or await registry.actor(event_id)
    except (NotOwner, ProblemError):
        return None
    except Exception as error:  # noqa: BLE001 - Unavailable and the like: this view is left out
        log.info("view_left_out", event_id=event_id, error=repr(error))
        return None


async def _served_view(registry: Registry, event_id: str) -> EventSummary | None:
    actor = await _served_actor(registry, event_id)
    return actor.view() if actor is not None else None


# -- GET /v1/cluster --------------------------------------------------------------------------------


class ClusterNodeOut(msgspec.Struct):
    node_id: str
    url: str
    lb_server_id: int | None
    heartbeat_age_s: float
    draining: bool
    live: bool
    shards: int
    target_shards: int


class ClusterShardOut(msgspec.Struct):
    shard: int
    # The owning node (None: free, or its lease ran out) and the shard's epoch (fencing token).
    owner: str | None
    epoch: int
    # Seconds the lease has left by the database's clock, as of the last map read (negative: ran
    # out; None: free); and, on the node that holds it, by that node's own, shorter, reckoning.
    lease_left_s: float | None
    local_lease_left_s: float | None


class ClusterOut(msgspec.Struct):
    node_id: str
    url: str
    shard_count: int
    draining: bool
    nodes: list[ClusterNodeOut]
    shards: list[ClusterShardOut]
    # How old this node's reading of the shard map is (seconds; it is read every renewal).
    map_age_s: float


async def cluster_view(request: web.Request) -> web.Response:
    principal = request[keys.PRINCIPAL]
    if principal.role != "admin":
        raise ProblemError(403, "forbidden", "only admins see the cluster")
    view = msgspec.convert(request.app[keys.CLUSTER].view(), ClusterOut)
    return web.Response(body=schemas.ENCODER.encode(view), content_type="application/json")
