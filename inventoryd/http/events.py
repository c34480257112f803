"""Events: create, the catalogue, read, manage, cancel, availability (also live), reports."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
from datetime import datetime
from typing import TypeVar

import msgspec
from aiohttp import web

from inventoryd import domain, limits
from inventoryd.actor import EventActor
from inventoryd.catalogue import SORTS, Key, Query, QueryRefused
from inventoryd.domain import (
    RESERVATION_STATUSES,
    EventDefinition,
    EventSummary,
    Reservation,
    TicketTypeDefinition,
    TicketTypeSummary,
)
from inventoryd.http import cluster, keys, schemas, seating
from inventoryd.http.common import (
    actor_of,
    cacheable_json,
    choice_query,
    cursor_moment,
    decode_cursor,
    encode_cursor,
    etag_of,
    event_command,
    forged_cursor,
    idempotency_key,
    int_query,
    json_response,
    public_answer,
    read_json,
    refuse_body,
    registry_of,
    replayed,
    summary_of,
    text_query,
    time_query,
)
from inventoryd.http.headers import IDEMPOTENCY_KEY, add_response_headers
from inventoryd.http.problems import ProblemError, invalid
from inventoryd.http.views import CachedListing, event_out, queue_line_out, ticket_type_out
from inventoryd.ratelimit import address_key
from inventoryd.streams import StreamRefused

T = TypeVar("T")


def _check_event(body: schemas.EventIn) -> None:
    """Rules that span fields; each failure names its field."""
    codes = [ticket_type.code for ticket_type in body.ticket_types]
    for index, code in enumerate(codes):
        if code in codes[:index]:
            raise invalid(f"ticket type code {code!r} appears twice", f"$.ticket_types[{index}].code")
    for index, ticket_type in enumerate(body.ticket_types):
        _check_seated(ticket_type, f"$.ticket_types[{index}].capacity")


def _check_seated(ticket_type: schemas.TicketTypeIn, field: str) -> None:
    if ticket_type.seated and ticket_type.capacity != 0:
        raise invalid(f"ticket type {ticket_type.code!r} is seated: give capacity 0, its seats come from the seat map", field)


def ticket_type_definition(body: schemas.TicketTypeIn) -> TicketTypeDefinition:
    return TicketTypeDefinition(body.code, body.name, body.price, body.capacity, seated=body.seated)


def queue_config(body: schemas.QueueIn | None) -> domain.QueueConfig | None:
    if body is None:
        return None
    return domain.QueueConfig(
        opens_at=body.opens_at,
        admit_per_minute=body.admit_per_minute,
        admission_seconds=body.admission_seconds,
        max_active=body.max_active,
        exempt_user_ids=tuple(body.exempt_user_ids),
        pow_bits=body.pow_bits,
    )


def _definition(body: schemas.EventIn, event_id: str, created_at: datetime, organizer_id: str | None) -> EventDefinition:
    definition = EventDefinition(
        id=event_id,
        name=body.name,
        starts_at=body.starts_at,
        currency=body.currency,
        ticket_types=tuple(ticket_type_definition(t) for t in body.ticket_types),
        created_at=created_at,
        description=body.description,
        venue=body.venue,
        city=body.city,
        category=body.category,
        ends_at=body.ends_at,
        sale_starts_at=body.sale_starts_at,
        sale_ends_at=body.sale_ends_at,
        cancel_until=body.cancel_until,
        per_user_limit=body.per_user_limit,
        hold_seconds=body.hold_seconds,
        organizer_id=organizer_id,
        queue=queue_config(body.queue),
    )
    if problem := domain.definition_problem(definition):
        field, detail = problem
        raise invalid(detail, field)
    return definition


async def create_event(request: web.Request) -> web.Response:
    body: schemas.EventIn = await read_json(request, schemas.EVENT_DECODER)
    _check_event(body)
    principal = request[keys.PRINCIPAL]
    registry = registry_of(request)
    # With an Idempotency-Key the new event's id follows from the key, so that a retry, on any
    # node, is the same event's (forwarded to its shard's owner, which knows the key); without
    # one, an id in a shard this node serves.
    given_key = request.headers.get(IDEMPOTENCY_KEY)
    seed = cluster.forward_token(request.app[keys.FORWARD_KEY], f"{principal.id}\n{given_key}") if given_key else None
    definition = _definition(body, registry.new_event_id(seed), request.app[keys.CLOCK](), principal.user_id)
    principal.check_may_create_events()
    async with idempotency_key(request, body) as key:
        if key.replayed is not None:
            return replayed(_event_created(key.replayed_as(EventSummary)))
        summary: EventSummary = key.answered(await registry.create_event(definition, claim=key.claim))
    return _event_created(summary)


def _event_created(summary: EventSummary) -> web.Response:
    return json_response(event_out(summary), status=201, headers={"Location": f"/v1/events/{summary.definition.id}"})


async def list_events(request: web.Request) -> web.Response:
    """A page of the catalogue in memory (inventoryd/catalogue.py): filtered and ordered there, each
    event's view (its availability) from its actor here or from the node that owns it; answered
    again as it was while nothing it shows changed (views.ListingAnswers)."""
    limit = int_query(request, "limit", limits.PAGE_ITEMS_DEFAULT, 1, limits.PAGE_ITEMS_MAX)
    available = choice_query(request, "available", ("true", "false"), None)
    query = _catalogue_query(request)
    after = _catalogue_cursor(request, query.sort)
    registry = registry_of(request)  # 503 while recovering
    feed = request.app[keys.CATALOGUE]
    if not feed.loaded:
        raise ProblemError(503, "recovering", "the catalogue is being read; retry shortly")
    answers = request.app[keys.LISTING_ANSWERS]
    # With `available`, events left out of the page decide it too: such a page is not kept.
    kept = available is None
    version = feed.catalogue.version
    if kept and (cached := answers.valid(request.query_string, version, registry)) is not None:
        return public_answer(request, cached.etag, cached.body)
    page = await _listing_page(request, query, after, limit, available)
    body = schemas.ENCODER.encode(schemas.EncodedEventPage(page.items, page.next_cursor))
    etag = etag_of(page.state)
    if kept and page.local is not None:
        answers.keep(request.query_string, CachedListing(version, *page.local, body, etag))
    return public_answer(request, etag, body)


@dataclasses.dataclass(slots=True)
class _Page:
    items: list[msgspec.Raw]
    # What the page is made of, exactly (each event's answer is a function of its log position).
    state: bytes
    next_cursor: str | None
    # The actors and views of its events, if every one is served here and none was left out.
    local: tuple[tuple[EventActor, ...], tuple[EventSummary, ...]] | None


async def _listing_page(request: web.Request, query: Query, after: Key | None, limit: int, available: str | None) -> _Page:
    catalogue = request.app[keys.CATALOGUE].catalogue
    registry = request.app[keys.REGISTRY]
    encoded = request.app[keys.ENCODED_EVENTS]
    items: list[msgspec.Raw] = []
    state: list[str] = []
    actors: list[EventActor] | None = []
    views: list[EventSummary] = []
    scanned = 0
    last: str | None = None
    ids = catalogue.page(query, after)
    more = True
    # Availability lives in the actors: filtered here, a chunk of the order at a time, up to a bound
    # (then the cursor continues where the scan stopped).
    while len(items) < limit and more and scanned < limits.CATALOGUE_SCAN_ROWS_MAX:
        chunk = list(itertools.islice(ids, limit - len(items)))
        more = len(chunk) == limit - len(items)
        found = await cluster.summaries(request, chunk)
        for event_id in chunk:
            scanned += 1
            last = event_id
            summary = found.get(event_id)
            actor = registry.get(event_id)
            if actors is not None and (summary is None or actor is None or actor.view() is not summary):
                actors = None  # not all of it is served here (or one was left out)
            if summary is None or (available is not None and _has_seats_to_sell(summary) != (available == "true")):
                continue
            items.append(encoded.encoded(summary))
            state.append(f"{event_id}:{summary.last_seq}")
            if actors is not None and actor is not None:
                actors.append(actor)
                views.append(summary)
    if more:  # is there one after the last looked at?
        more = next(ids, None) is not None
    entry = catalogue.entry(last) if last is not None else None
    next_cursor = None
    if more and entry is not None:
        key, event_id = entry.key(query.sort)
        next_cursor = encode_cursor([query.sort, key, event_id])
    state.append(next_cursor or "")
    local = (tuple(actors), tuple(views)) if actors is not None else None
    return _Page(items, "\n".join(state).encode(), next_cursor, local)


def _catalogue_query(request: web.Request) -> Query:
    query = Query(
        text=text_query(request, "q"),
        category=text_query(request, "category"),
        city=text_query(request, "city"),
        venue=text_query(request, "venue"),
        starts_from=time_query(request, "from"),
        starts_to=time_query(request, "to"),
        min_price=_price_query(request, "min_price"),
        max_price=_price_query(request, "max_price"),
        sort=choice_query(request, "sort", SORTS, "starts_at"),
    )
    try:
        query.check()
    except QueryRefused as refused:
        raise invalid(str(refused), refused.field, 400) from None
    return query


def _price_query(request: web.Request, name: str) -> int | None:
    if name not in request.query:
        return None
    return int_query(request, name, 0, 0, limits.PRICE_MAX)


def _catalogue_cursor(request: web.Request, sort: str) -> Key | None:
    cursor = decode_cursor(request, tuple[str, str, str])
    if cursor is None:
        return None
    cursor_sort, key, event_id = cursor
    if cursor_sort != sort:
        raise invalid("cursor belongs to another sort order", "cursor", 400)
    return (key if sort == "name" else cursor_moment(key), event_id)


def _has_seats_to_sell(summary: EventSummary) -> bool:
    """What `available` filters on: true, on sale with a seat left in some ticket type; false,
    sold out in every ticket type, or cancelled."""
    return summary.status == "on_sale" and any(state.available > 0 for state in summary.ticket_types)


async def get_event(request: web.Request) -> web.Response:
    actor = await actor_of(request, request.match_info["event_id"])
    return cacheable_json(request, request.app[keys.ENCODED_EVENTS].encoded(summary_of(actor)))


async def update_event(request: web.Request) -> web.Response:
    actor = await actor_of(request, request.match_info["event_id"])
    request[keys.PRINCIPAL].check_may_manage(summary_of(actor).definition)
    body: schemas.EventPatch = await read_json(request, schemas.EVENT_PATCH_DECODER)
    changes = {name: value for name, value in msgspec.structs.asdict(body).items() if value is not msgspec.UNSET}
    if "queue" in changes:
        changes["queue"] = queue_config(changes["queue"])
    if not changes:
        raise invalid("name at least one field to change", "$")
    return await event_command(
        request, body, lambda claim, request_id: actor.update_event(changes, claim=claim, request_id=request_id)
    )


def _ticket_type_of(summary: EventSummary, code: str) -> schemas.TicketTypeOut:
    return ticket_type_out(next(state for state in summary.ticket_types if state.code == code))


async def add_ticket_type(request: web.Request) -> web.Response:
    actor = await actor_of(request, request.match_info["event_id"])
    request[keys.PRINCIPAL].check_may_manage(summary_of(actor).definition)
    body: schemas.TicketTypeIn = await read_json(request, schemas.TICKET_TYPE_DECODER)
    _check_seated(body, "$.capacity")
    definition = ticket_type_definition(body)
    headers = {"Location": f"/v1/events/{actor.event_id}/ticket-types/{body.code}"}
    async with idempotency_key(request, body) as key:
        if key.replayed is not None:
            summary: EventSummary = key.replayed_as(EventSummary)
            return replayed(json_response(_ticket_type_of(summary, body.code), status=201, headers=headers))
        outcome = await actor.add_ticket_type(definition, claim=key.claim, request_id=request.get(keys.REQUEST_ID))
        summary = key.answered(outcome)
    return json_response(_ticket_type_of(summary, body.code), status=201, headers=headers)


async def change_ticket_type(request: web.Request) -> web.Response:
    actor = await actor_of(request, request.match_info["event_id"])
    request[keys.PRINCIPAL].check_may_manage(summary_of(actor).definition)
    code = request.match_info["code"]
    body: schemas.TicketTypePatch = await read_json(request, schemas.TICKET_TYPE_PATCH_DECODER)
    async with idempotency_key(request, body) as key:
        if key.replayed is not None:
            return replayed(json_response(_ticket_type_of(key.replayed_as(EventSummary), code)))
        outcome = await actor.change_ticket_type(
            code,
            name=_given(body.name),
            price=_given(body.price),
            capacity=_given(body.capacity),
            claim=key.claim,
            request_id=request.get(keys.REQUEST_ID),
        )
        summary: EventSummary = key.answered(outcome)
    return json_response(_ticket_type_of(summary, code))


def _given(value: T | msgspec.UnsetType) -> T | None:
    return None if isinstance(value, msgspec.UnsetType) else value


async def cancel_event(request: web.Request) -> web.Response:
    actor = await actor_of(request, request.match_info["event_id"])
    request[keys.PRINCIPAL].check_may_manage(summary_of(actor).definition)
    await refuse_body(request, "cancelling an event")
    return await event_command(request, b"", lambda claim, request_id: actor.cancel_event(claim=claim, request_id=request_id))


def availability_out(summary: EventSummary) -> schemas.AvailabilityOut:
    return schemas.AvailabilityOut(
        event_id=summary.definition.id,
        status=summary.status,
        ticket_types={
            state.code: schemas.TicketTypeAvailability(state.available, state.waiting) for state in summary.ticket_types
        },
    )


async def get_availability(request: web.Request) -> web.Response:
    actor = await actor_of(request, request.match_info["event_id"])
    return cacheable_json(request, availability_out(summary_of(actor)))


async def availability_stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the availability now, then each change, at most one per interval.

    Bounded per client address (429: the client's own doing), per event and in all (503: the
    service is full); every refusal says Retry-After. The address is the TCP peer's (an IPv6
    client's /64): behind a proxy, the proxy's; relayed by another node, the client's as that node
    saw it. A stream ends, and its slot frees, within
    STREAM_DISCONNECT_CHECK_S of its client going away or of the service starting to drain
    (inventoryd.streams)."""
    actor = await actor_of(request, request.match_info["event_id"])
    summary_of(actor)
    budget = request.app[keys.STREAMS]
    registry = registry_of(request)

    def should_end() -> bool:
        # The client has gone, or the service drains (clients reconnect, to another node).
        transport = request.transport
        return transport is None or transport.is_closing() or registry.draining

    try:
        lease = budget.open(actor.event_id, address_key(cluster.client_address(request)), should_end)
    except StreamRefused as refused:
        retry = {"Retry-After": str(limits.STREAM_RETRY_AFTER_S)}
        if refused.scope == "address":
            detail = f"{refused.bound} availability streams are open from this client address; close one"
            raise ProblemError(429, "rate_limited", detail, headers=retry) from None
        where = "for this event" if refused.scope == "event" else "already, the most this service serves"
        detail = f"{refused.bound} availability streams are open {where}"
        raise ProblemError(503, "overloaded", detail, headers=retry) from None
    try:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        add_response_headers(request, response)
        await response.prepare(request)
        with contextlib.suppress(ConnectionError, TimeoutError):
            await _stream_availability(actor, response, lease.gone)
        return response
    finally:
        budget.close(lease)


async def _stream_availability(actor: EventActor, response: web.StreamResponse, gone: asyncio.Future[None]) -> None:
    """Until STREAM_DURATION_MAX_S have passed, the client is `gone` or the actor is retired (the
    event moved to another node: the client's reconnection, through any node, reaches the new
    owner); a write the client does not take within STREAM_WRITE_TIMEOUT_S raises TimeoutError."""
    loop = asyncio.get_running_loop()
    closes_at = loop.time() + limits.STREAM_DURATION_MAX_S
    last_sent = b""
    seats_sent_at: int | None = None  # the log position the last `seats` event showed
    while loop.time() < closes_at and not gone.done() and not actor.retired:
        summary = summary_of(actor)
        payload = schemas.ENCODER.encode(availability_out(summary))
        seats = seat_changes(actor, seats_sent_at, summary.last_seq)
        if payload != last_sent or seats is not None:
            async with asyncio.timeout(limits.STREAM_WRITE_TIMEOUT_S):
                if payload != last_sent:
                    await response.write(b"event: availability\ndata: " + payload + b"\n\n")
                if seats is not None:
                    await response.write(seats)
            if actor.seat_view() is not None:
                seats_sent_at = summary.last_seq
            last_sent = payload
            # Changes during the pause are sent together after it: coalescing.
            await asyncio.wait((gone,), timeout=limits.STREAM_UPDATE_INTERVAL_S)
            continue
        changed = asyncio.ensure_future(actor.wait_changed())
        try:
            done, _ = await asyncio.wait((changed, gone), timeout=limits.STREAM_HEARTBEAT_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
        if not done:
            async with asyncio.timeout(limits.STREAM_WRITE_TIMEOUT_S):
                await response.write(b": still here\n\n")


def seat_changes(actor: EventActor, since: int | None, now: int) -> bytes | None:
    """A seated event's seat news for a stream that showed the seats at `since` (None: never): the
    statuses of the seats changed since (`event: seat_changes`, `{"seats": {"A-1-2": "held"}}`),
    or every seat in the compact form of GET .../seats (`event: seats`) when those changes are not
    known (the stream's first, a new map, or more than SEAT_CHANGES_KEPT_MAX commits behind); None
    when nothing changed."""
    seats = actor.seat_view()
    if seats is None or since == now:
        return None
    changed = actor.seat_changes_since(since) if since is not None else None
    if changed is None:
        return b"event: seats\ndata: " + seating.seats_answer(actor.event_id, seats, None) + b"\n\n"
    if not changed:
        return None
    number = seats.seats.map.number
    statuses = {seat_id: seats.status(number[seat_id]) for seat_id in sorted(changed) if seat_id in number}
    return b"event: seat_changes\ndata: " + schemas.ENCODER.encode({"seats": statuses}) + b"\n\n"


def _report_line(states: list[TicketTypeSummary]) -> dict[str, int]:
    return {
        "capacity": sum(state.capacity for state in states),
        "available": sum(state.available for state in states),
        "held": sum(state.held for state in states),
        "sold": sum(state.sold for state in states),
        "checked_in": sum(state.checked_in for state in states),
        "cancelled": sum(state.cancelled for state in states),
        "revenue": sum(state.revenue for state in states),
        "waitlist": sum(state.waiting for state in states),
    }


async def get_report(request: web.Request) -> web.Response:
    actor = await actor_of(request, request.match_info["event_id"])
    summary = summary_of(actor)
    request[keys.PRINCIPAL].check_may_manage(summary.definition)
    return json_response(
        schemas.ReportOut(
            event_id=actor.event_id,
            status=summary.status,
            currency=summary.definition.currency,
            ticket_types=[
                schemas.TicketTypeReport(code=state.code, name=state.name, price=state.price, **_report_line([state]))
                for state in summary.ticket_types
            ],
            total=schemas.ReportLine(**_report_line(list(summary.ticket_types))),
            queue=queue_line_out(actor.event_id, actor.inventory.queue) if summary.definition.queue is not None else None,
        )
    )


async def event_reservations(request: web.Request) -> web.Response:
    actor = await actor_of(request, request.match_info["event_id"])
    request[keys.PRINCIPAL].check_may_manage(summary_of(actor).definition)
    status = choice_query(request, "status", RESERVATION_STATUSES, None)
    limit = int_query(request, "limit", limits.PAGE_ITEMS_DEFAULT, 1, limits.PAGE_ITEMS_MAX)
    after = decode_cursor(request, int) or 0
    # Reservation ids are numbered in the order they were made: walk the numbers after the cursor.
    last_number = actor.inventory.reservations_created
    if after > last_number:
        raise forged_cursor()
    items: list[Reservation] = []
    number = after
    while number < last_number and len(items) < limit and number - after < limits.RESERVATION_SCAN_MAX:
        number += 1
        reservation = actor.reservation(domain.reservation_id_for(actor.event_id, number))
        if reservation is not None and (status is None or reservation.status == status):
            items.append(reservation)
    next_cursor = encode_cursor(number) if number < last_number else None
    return json_response(schemas.ReservationPage(items, next_cursor))
