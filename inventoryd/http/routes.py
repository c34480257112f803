"""The HTTP API's handlers and its route table (the one list the app, and later the OpenAPI
document and the authorisation matrix, are built from). Handlers decode, ask the actor, and map the
outcome to HTTP; the rules themselves live in the domain."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from aiohttp import web

from inventoryd import domain, limits
from inventoryd.actor import CommittedView, EventActor, IdempotencyClaim, Outcome, TicketTypeView, Unavailable
from inventoryd.domain import EventDefinition, Rejected, Reservation, TicketTypeDefinition
from inventoryd.http import keys, schemas
from inventoryd.http.problems import ProblemError, from_decode_error, invalid, problem_response, rejection
from inventoryd.idempotency import IdempotencyConflict, Replay, fingerprint
from inventoryd.registry import Registry, new_event_id
from persistence import store

JSON = "application/json"
_RESERVATION_DECODER = msgspec.json.Decoder(Reservation)
_DEFINITION_DECODER = msgspec.json.Decoder(EventDefinition)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    name: str
    summary: str
    request_body: type | None = None
    response_body: Any = None
    success_status: int = 200
    public: bool = False


# ---------------------------------------------------------------------------------------------
# Helpers.


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=schemas.ENCODER.encode(body), content_type=JSON, headers=headers)


async def read_json(request: web.Request, decoder: msgspec.json.Decoder[Any]) -> Any:
    # The raw header first: the common, exact case skips aiohttp's full media-type parse.
    if request.headers.get("Content-Type") != JSON and request.content_type not in (JSON, "application/merge-patch+json"):
        raise ProblemError(415, "unsupported_media_type", f"send {JSON}, not {request.content_type!r}")
    body = await request.read()
    if not body:
        raise invalid("the request needs a JSON body", status=400)
    try:
        return decoder.decode(body)
    except msgspec.DecodeError as error:
        raise from_decode_error(error) from None
    except UnicodeDecodeError as error:
        raise invalid(f"the body is not valid UTF-8 (byte {error.start})", status=400) from None


def _registry(request: web.Request) -> Registry:
    registry = request.app[keys.REGISTRY]
    if not registry.ready:
        raise ProblemError(503, "recovering", "the service is rebuilding its state from the log; retry shortly")
    return registry


def _actor(request: web.Request, event_id: str) -> EventActor:
    actor = _registry(request).get(event_id)
    if actor is None:
        raise ProblemError(404, "not_found", f"no event {event_id!r}", field="event_id")
    return actor


def _actor_for(request: web.Request, reservation_or_ticket_id: str, kind: str) -> EventActor:
    event_id = domain.event_id_of(reservation_or_ticket_id)
    actor = _registry(request).get(event_id) if event_id else None
    if actor is None:
        raise ProblemError(404, "not_found", f"no {kind} {reservation_or_ticket_id!r}")
    return actor


def _committed_view(actor: EventActor) -> CommittedView:
    view = actor.view()
    if view is None:
        raise ProblemError(404, "not_found", f"no event {actor.event_id!r}")
    return view


def event_out(view: CommittedView) -> schemas.EventOut:
    definition = view.definition
    return schemas.EventOut(
        id=definition.id,
        name=definition.name,
        status=view.status,
        starts_at=definition.starts_at,
        currency=definition.currency,
        ticket_types=[
            schemas.TicketTypeOut(
                code=state.code,
                name=state.name,
                price=state.price,
                capacity=state.capacity,
                available=state.available,
                held=state.held,
                sold=state.sold,
            )
            for state in view.ticket_types
        ],
        created_at=definition.created_at,
        hold_seconds=definition.hold_seconds,
        description=definition.description,
        venue=definition.venue,
        city=definition.city,
        category=definition.category,
        ends_at=definition.ends_at,
        sale_starts_at=definition.sale_starts_at,
        sale_ends_at=definition.sale_ends_at,
        cancel_until=definition.cancel_until,
        per_user_limit=definition.per_user_limit,
    )


def _new_event_out(definition: EventDefinition) -> schemas.EventOut:
    """The event as it is at creation, every seat available: the same answer on a replay."""
    ticket_types = tuple(
        TicketTypeView(t.code, t.name, t.price, t.capacity, available=t.capacity, held=0, sold=0)
        for t in definition.ticket_types
    )
    return event_out(CommittedView(definition, "on_sale", ticket_types, last_seq=1))


async def run_idempotent(
    request: web.Request,
    canonical_body: Callable[[], bytes],
    perform: Callable[[IdempotencyClaim | None], Awaitable[Outcome]],
    render: Callable[[Any], web.Response],
    decode_answer: Callable[[bytes], Any],
) -> web.Response:
    """Carry out a mutating request once per Idempotency-Key; a retry gets the first answer again.

    `canonical_body` gives the request in canonical form (decoded, then encoded with the defaults
    filled in): the same request, however it was spelled, has the same fingerprint. It is called
    only when a key is given.
    """
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return _render_outcome(await _perform(perform, None), render)
    if not key or len(key.encode()) > limits.IDEMPOTENCY_KEY_BYTES_MAX or not key.isprintable():
        raise invalid(
            f"Idempotency-Key must be 1 to {limits.IDEMPOTENCY_KEY_BYTES_MAX} printable bytes", "Idempotency-Key", 400
        )
    principal = request[keys.PRINCIPAL]
    idempotency = request.app[keys.IDEMPOTENCY]
    try:
        claim_or_replay = await idempotency.begin(
            principal.id, key, fingerprint(request.method, request.path, canonical_body())
        )
    except IdempotencyConflict:
        raise ProblemError(
            409, "idempotency_conflict", "this Idempotency-Key was used for a different request", field="Idempotency-Key"
        ) from None
    if isinstance(claim_or_replay, Replay):
        response = render(decode_answer(claim_or_replay.answer))
        response.headers["Idempotent-Replayed"] = "true"
        return response
    claim = claim_or_replay
    try:
        outcome = await _perform(perform, claim)
    except BaseException:
        idempotency.finish(claim, None, in_doubt=True)
        raise
    idempotency.finish(claim, outcome.stored_answer)
    return _render_outcome(outcome, render)


async def _perform(
    perform: Callable[[IdempotencyClaim | None], Awaitable[Outcome]], claim: IdempotencyClaim | None
) -> Outcome:
    try:
        return await perform(claim)
    except Unavailable as error:
        raise ProblemError(503, error.code, error.detail) from None


def _render_outcome(outcome: Outcome, render: Callable[[Any], web.Response]) -> web.Response:
    if isinstance(outcome.result, Rejected):
        raise rejection(outcome.result)
    return render(outcome.result)


def _reservation_response(reservation: Reservation, created: bool = False) -> web.Response:
    return json_response(reservation, status=201 if created else 200)


def _int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid(f"{name} must be an integer", name, 400) from None
    if not low <= value <= high:
        raise invalid(f"{name} must be between {low} and {high}", name)
    return value


def _encode_cursor(after: tuple[datetime, str]) -> str:
    raw = msgspec.json.encode([after[0], after[1]])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        starts_at, event_id = msgspec.json.decode(raw, type=tuple[datetime, str])
        return starts_at, event_id
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise invalid("cursor is not one this service issued", "cursor", 400) from None


# ---------------------------------------------------------------------------------------------
# Operations.


async def healthz(request: web.Request) -> web.Response:
    return json_response(schemas.Health("ok"))


async def readyz(request: web.Request) -> web.Response:
    registry = request.app[keys.REGISTRY]
    if registry.recovery_error is not None:
        return problem_response(503, "not_ready", f"recovery failed: {registry.recovery_error}")
    if not registry.ready:
        return problem_response(503, "not_ready", "recovery has not finished")
    try:
        async with request.app[keys.POOL].acquire(timeout=1.0) as connection:
            await connection.fetchval("SELECT 1", timeout=1.0)
    except Exception as error:  # noqa: BLE001 - any failure to reach the database means "not ready"
        return problem_response(503, "not_ready", f"the database does not answer: {type(error).__name__}")
    return json_response(schemas.Health("ready"))


# ---------------------------------------------------------------------------------------------
# Events.


def _check_event(body: schemas.EventIn) -> None:
    """Rules that span fields; each failure names its field."""
    codes = [ticket_type.code for ticket_type in body.ticket_types]
    for index, code in enumerate(codes):
        if code in codes[:index]:
            raise invalid(f"ticket type code {code!r} appears twice", f"$.ticket_types[{index}].code")
    if body.ends_at is not None and body.ends_at < body.starts_at:
        raise invalid("ends_at is before starts_at", "$.ends_at")
    if body.sale_starts_at is not None and body.sale_ends_at is not None and body.sale_ends_at <= body.sale_starts_at:
        raise invalid("sale_ends_at must be after sale_starts_at", "$.sale_ends_at")


async def create_event(request: web.Request) -> web.Response:
    body: schemas.EventIn = await read_json(request, schemas.EVENT_DECODER)
    _check_event(body)
    registry = _registry(request)
    principal = request[keys.PRINCIPAL]
    now = request.app[keys.CLOCK]()

    async def perform(claim: IdempotencyClaim | None) -> Outcome:
        definition = EventDefinition(
            id=new_event_id(),
            name=body.name,
            starts_at=body.starts_at,
            currency=body.currency,
            ticket_types=tuple(TicketTypeDefinition(t.code, t.name, t.price, t.capacity) for t in body.ticket_types),
            created_at=now,
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
            organizer_id=principal.user_id,
        )
        return await registry.create_event(definition, claim=claim)

    def render(definition: EventDefinition) -> web.Response:
        return json_response(_new_event_out(definition), status=201, headers={"Location": f"/v1/events/{definition.id}"})

    return await run_idempotent(
        request, lambda: schemas.ENCODER.encode(body), perform, render, _DEFINITION_DECODER.decode
    )


async def list_events(request: web.Request) -> web.Response:
    limit = _int_query(request, "limit", limits.PAGE_ITEMS_DEFAULT, 1, limits.PAGE_ITEMS_MAX)
    cursor = request.query.get("cursor")
    after = _decode_cursor(cursor) if cursor else None
    registry = _registry(request)
    async with request.app[keys.POOL].acquire() as connection:
        page = await store.catalogue_page(connection, after=after, limit=limit)
    items = []
    for event_id in page.event_ids:
        actor = registry.get(event_id)
        view = actor.view() if actor is not None else None
        if view is not None:
            items.append(event_out(view))
    next_cursor = _encode_cursor(page.next_after) if page.next_after else None
    return json_response(schemas.EventPage(items, next_cursor))


async def get_event(request: web.Request) -> web.Response:
    actor = _actor(request, request.match_info["event_id"])
    return json_response(event_out(_committed_view(actor)))


async def get_availability(request: web.Request) -> web.Response:
    actor = _actor(request, request.match_info["event_id"])
    view = _committed_view(actor)
    return json_response(
        schemas.AvailabilityOut(
            event_id=actor.event_id,
            status=view.status,
            ticket_types={state.code: schemas.TicketTypeAvailability(state.available, 0) for state in view.ticket_types},
        )
    )


# ---------------------------------------------------------------------------------------------
# Reservations.


async def create_reservation(request: web.Request) -> web.Response:
    actor = _actor(request, request.match_info["event_id"])
    body: schemas.ReservationIn = await read_json(request, schemas.RESERVATION_DECODER)
    principal = request[keys.PRINCIPAL]
    user_id = principal.acting_for(body.user_id)
    if body.waitlist:
        raise invalid("the waiting list is not available yet", "$.waitlist")
    request_id = request.get(keys.REQUEST_ID)

    async def perform(claim: IdempotencyClaim | None) -> Outcome:
        return await actor.reserve(user_id, body.ticket_type, body.quantity, claim=claim, request_id=request_id)

    return await run_idempotent(
        request,
        lambda: schemas.ENCODER.encode(msgspec.structs.replace(body, user_id=user_id)),
        perform,
        lambda reservation: _reservation_response(reservation, created=True),
        _RESERVATION_DECODER.decode,
    )


async def _reservation_command(request: web.Request, command: str) -> web.Response:
    reservation_id = request.match_info["reservation_id"]
    actor = _actor_for(request, reservation_id, "reservation")
    if request.can_read_body and await request.read() not in (b"", b"{}"):
        raise invalid(f"{command} takes no body", "$", 422)
    reservation = actor.reservation(reservation_id)
    if reservation is None:
        raise ProblemError(404, "not_found", f"no reservation {reservation_id!r}")
    principal = request[keys.PRINCIPAL]
    principal.check_reservation_access(reservation)
    request_id = request.get(keys.REQUEST_ID)

    async def perform(claim: IdempotencyClaim | None) -> Outcome:
        if command == "confirm":
            return await actor.confirm(reservation_id, claim=claim, request_id=request_id)
        return await actor.cancel(
            reservation_id, privileged=principal.may_cancel_late(), claim=claim, request_id=request_id
        )

    return await run_idempotent(request, lambda: b"", perform, _reservation_response, _RESERVATION_DECODER.decode)


async def confirm_reservation(request: web.Request) -> web.Response:
    return await _reservation_command(request, "confirm")


async def cancel_reservation(request: web.Request) -> web.Response:
    return await _reservation_command(request, "cancel")


async def get_reservation(request: web.Request) -> web.Response:
    reservation_id = request.match_info["reservation_id"]
    actor = _actor_for(request, reservation_id, "reservation")
    reservation = actor.reservation(reservation_id)
    if reservation is None:
        raise ProblemError(404, "not_found", f"no reservation {reservation_id!r}")
    request[keys.PRINCIPAL].check_reservation_access(reservation)
    return json_response(reservation)


ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", healthz, "healthz", "The process is alive", response_body=schemas.Health, public=True),
    Route("GET", "/readyz", readyz, "readyz", "Recovery is done and the database answers", schemas.Health, public=True),
    Route(
        "POST",
        "/v1/events",
        create_event,
        "create_event",
        "Create an event with its ticket types",
        request_body=schemas.EventIn,
        response_body=schemas.EventOut,
        success_status=201,
    ),
    Route("GET", "/v1/events", list_events, "list_events", "The event catalogue", None, schemas.EventPage, public=True),
    Route("GET", "/v1/events/{event_id}", get_event, "get_event", "One event", None, schemas.EventOut, public=True),
    Route(
        "GET",
        "/v1/events/{event_id}/availability",
        get_availability,
        "get_availability",
        "Seats available per ticket type (the hot read)",
        None,
        schemas.AvailabilityOut,
        public=True,
    ),
    Route(
        "POST",
        "/v1/events/{event_id}/reservations",
        create_reservation,
        "create_reservation",
        "Hold seats",
        request_body=schemas.ReservationIn,
        response_body=schemas.ReservationOut,
        success_status=201,
    ),
    Route(
        "POST",
        "/v1/reservations/{reservation_id}/confirm",
        confirm_reservation,
        "confirm_reservation",
        "Confirm a held reservation: its tickets are issued",
        response_body=schemas.ReservationOut,
    ),
    Route(
        "POST",
        "/v1/reservations/{reservation_id}/cancel",
        cancel_reservation,
        "cancel_reservation",
        "Cancel a reservation; its seats return to the pool",
        response_body=schemas.ReservationOut,
    ),
    Route(
        "GET",
        "/v1/reservations/{reservation_id}",
        get_reservation,
        "get_reservation",
        "One reservation",
        response_body=schemas.ReservationOut,
    ),
)
