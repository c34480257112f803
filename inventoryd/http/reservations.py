"""Reservations and tickets: hold (or wait), confirm, cancel, read, check in, a user's history."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from aiohttp import web

from inventoryd import domain, limits
from inventoryd.actor import EventActor
from inventoryd.domain import RESERVATION_STATUSES, Rejected, Reservation, Ticket
from inventoryd.errors import Unavailable
from inventoryd.http import admission, cluster, keys, schemas
from inventoryd.http.admission import ADMISSION_TOKEN
from inventoryd.http.common import (
    actor_for,
    actor_of,
    choice_query,
    decode_cursor,
    encode_cursor,
    idempotency_key,
    int_query,
    json_response,
    read_json,
    refuse_body,
    registry_of,
    replayed,
    storable,
    summary_of,
)
from inventoryd.http.problems import ProblemError, rejection
from persistence import outbox as outbox_store
from persistence import store
from persistence.errors import DATABASE_AWAY


def reservation_response(reservation: Reservation, *, created: bool = False) -> web.Response:
    if created:
        return json_response(reservation, status=202 if reservation.status == "waitlisted" else 201)
    return json_response(reservation)


def _created(actor: EventActor, reservation: Reservation) -> web.Response:
    if reservation.status == "waitlisted" and reservation.position is None:
        # The answer as stored has no position (it moves); give the one it has now.
        reservation = actor.reservation(reservation.id) or reservation
    return reservation_response(reservation, created=True)


def _check_admission(request: web.Request, actor: EventActor, user_id: str) -> None:
    """The waiting room's gate: while the event's sale is on, a reserve needs the buyer's admission
    token (403 otherwise), unless an admin asks or the organizer exempted the buyer. A retry of a
    reserve already answered (its Idempotency-Key) is replayed before this, whatever the token."""
    definition = summary_of(actor).definition
    config = definition.queue
    if config is None or request[keys.PRINCIPAL].role == "admin" or user_id in config.exempt_user_ids:
        return
    now = request.app[keys.CLOCK]()
    if definition.sale_starts_at is not None and now < definition.sale_starts_at:
        return  # the sale is not open: the actor says so
    code = admission.check(request.app[keys.ADMISSION_KEY], request.headers.get(ADMISSION_TOKEN), definition.id, user_id, now)
    if code is None:
        return
    request.app[keys.METRICS].count_reservation(code)
    if code == "admission_expired":
        raise ProblemError(403, "admission_expired", "the admission's window has passed: join the waiting room again")
    raise ProblemError(403, "admission_required", f"this event has a waiting room: send the {ADMISSION_TOKEN} of your admission")


async def create_reservation(request: web.Request) -> web.Response:
    actor = await actor_of(request, request.match_info["event_id"])
    body: schemas.ReservationIn = await read_json(request, schemas.RESERVATION_DECODER)
    user_id = request[keys.PRINCIPAL].acting_for(body.user_id)
    metrics = request.app[keys.METRICS]
    async with idempotency_key(request, body, user_id=user_id) as key:
        if key.replayed is not None:
            return replayed(_created(actor, key.replayed_as(Reservation)))
        _check_admission(request, actor, user_id)
        if body.email is not None:
            await _save_contact(request, actor.event_id, user_id, body.email)
        try:
            outcome = await actor.reserve(
                user_id,
                body.ticket_type,
                body.count,
                waitlist=body.waitlist,
                seats=tuple(body.seats) if body.seats is not None else (),
                adjacent=body.adjacent,
                claim=key.claim,
                request_id=request.get(keys.REQUEST_ID),
            )
        except Unavailable as error:
            metrics.count_reservation(error.code)
            raise
        result = outcome.result
        metrics.count_reservation(result.code if isinstance(result, Rejected) else result.status)  # type: ignore[union-attr]
        reservation: Reservation = key.answered(outcome)
    return _created(actor, reservation)


async def _save_contact(request: web.Request, event_id: str, user_id: str, email: str) -> None:
    """The address a service gave for this buyer's confirmation email: written before the
    reservation, so that it is there when the confirmation is mailed (outside the log: erasable)."""
    if request[keys.PRINCIPAL].role not in ("service", "admin"):
        raise ProblemError(403, "forbidden", "only services and admins give a buyer's email; yours is your account's", field="$.email")
    try:
        async with request.app[keys.POOL].acquire() as connection:
            await outbox_store.save_contact(connection, event_id, user_id, email)
    except DATABASE_AWAY:
        raise Unavailable("the buyer's email could not be saved; retry") from None


async def _reservation_command(request: web.Request, command: Literal["confirm", "cancel"]) -> web.Response:
    reservation_id = request.match_info["reservation_id"]
    actor = await actor_for(request, reservation_id, "reservation")
    await refuse_body(request, command)
    reservation = actor.reservation(reservation_id)
    if reservation is None:
        raise ProblemError(404, "not_found", f"no reservation {reservation_id!r}")
    principal = request[keys.PRINCIPAL]
    definition = summary_of(actor).definition
    principal.check_reservation_access(reservation, definition)
    request_id = request.get(keys.REQUEST_ID)
    async with idempotency_key(request, b"") as key:
        if key.replayed is not None:
            return replayed(reservation_response(key.replayed_as(Reservation)))
        if command == "confirm":
            outcome = await actor.confirm(reservation_id, claim=key.claim, request_id=request_id)
        else:
            privileged = principal.may_cancel_late(definition)
            outcome = await actor.cancel(reservation_id, privileged=privileged, claim=key.claim, request_id=request_id)
        changed: Reservation = key.answered(outcome)
    return reservation_response(changed)


async def confirm_reservation(request: web.Request) -> web.Response:
    return await _reservation_command(request, "confirm")


async def cancel_reservation(request: web.Request) -> web.Response:
    return await _reservation_command(request, "cancel")


async def get_reservation(request: web.Request) -> web.Response:
    reservation_id = request.match_info["reservation_id"]
    actor = await actor_for(request, reservation_id, "reservation")
    reservation = actor.reservation(reservation_id)
    if reservation is None:
        raise ProblemError(404, "not_found", f"no reservation {reservation_id!r}")
    request[keys.PRINCIPAL].check_reservation_access(reservation, summary_of(actor).definition)
    return json_response(reservation)


def ticket_out(reservation: Reservation, ticket: Ticket) -> schemas.TicketOut:
    return schemas.TicketOut(
        id=ticket.id,
        status=ticket.status,
        checked_in_at=ticket.checked_in_at,
        reservation_id=reservation.id,
        event_id=reservation.event_id,
        ticket_type=reservation.ticket_type,
        seat=ticket.seat,
    )


def _ticket(reservation: Reservation | None, ticket_id: str) -> Ticket:
    ticket = next((t for t in reservation.tickets if t.id == ticket_id), None) if reservation else None
    if ticket is None:
        raise ProblemError(404, "not_found", f"no ticket {ticket_id!r}")
    return ticket


async def get_ticket(request: web.Request) -> web.Response:
    ticket_id = request.match_info["ticket_id"]
    actor = await actor_for(request, ticket_id, "ticket")
    reservation_id = domain.reservation_id_of_ticket(ticket_id)
    reservation = actor.reservation(reservation_id) if reservation_id else None
    if reservation is None:
        raise ProblemError(404, "not_found", f"no ticket {ticket_id!r}")
    ticket = _ticket(reservation, ticket_id)
    request[keys.PRINCIPAL].check_reservation_access(reservation, summary_of(actor).definition)
    return json_response(ticket_out(reservation, ticket))


async def check_in_ticket(request: web.Request) -> web.Response:
    """A scan at the door. Not idempotent by key: a second scan must say it was already used."""
    ticket_id = request.match_info["ticket_id"]
    actor = await actor_for(request, ticket_id, "ticket")
    await refuse_body(request, "check-in")
    reservation_id = domain.reservation_id_of_ticket(ticket_id)
    _ticket(actor.reservation(reservation_id) if reservation_id else None, ticket_id)
    request[keys.PRINCIPAL].check_may_check_in(summary_of(actor).definition)
    outcome = await actor.check_in(ticket_id, request_id=request.get(keys.REQUEST_ID))
    if isinstance(outcome.result, Rejected):
        raise rejection(outcome.result)
    reservation = outcome.result
    if not isinstance(reservation, Reservation):
        raise ProblemError(500, "internal_error", "a check-in answered no reservation")
    return json_response(ticket_out(reservation, _ticket(reservation, ticket_id)))


async def _user_reservations(request: web.Request, user_id: str) -> web.Response:
    registry_of(request)  # 503 while recovering
    status = choice_query(request, "status", RESERVATION_STATUSES, None)
    event_id = request.query.get("event_id") or None
    if event_id is not None:
        storable(event_id, "event_id")
    limit = int_query(request, "limit", limits.PAGE_ITEMS_DEFAULT, 1, limits.PAGE_ITEMS_MAX)
    before = decode_cursor(request, tuple[datetime, str, int])
    items: list[Reservation] = []
    scanned = 0
    more = True
    async with request.app[keys.POOL].acquire() as connection:
        # The log says which reservations the user made; their state now comes from their actors.
        while len(items) < limit and more and scanned < limits.HISTORY_SCAN_ROWS_MAX:
            rows, more = await store.user_reservations(
                connection, user_id, event_id=event_id, before=before, limit=limit - len(items)
            )
            # Their state from their actors: here, or on the nodes that own them.
            found = await cluster.reservations(request, [reservation_id for _, reservation_id, _ in rows])
            for _, reservation_id, key in rows:
                scanned += 1
                before = key
                reservation = found.get(reservation_id)
                if reservation is not None and (status is None or reservation.status == status):
                    items.append(reservation)
    next_cursor = encode_cursor(list(before)) if more and before is not None else None
    return json_response(schemas.ReservationPage(items, next_cursor))


async def my_reservations(request: web.Request) -> web.Response:
    principal = request[keys.PRINCIPAL]
    if principal.user_id is None:
        raise ProblemError(403, "forbidden", "this token belongs to no user; ask for /v1/users/{user_id}/reservations")
    return await _user_reservations(request, principal.user_id)


async def user_reservations(request: web.Request) -> web.Response:
    user_id = storable(request.match_info["user_id"], "user_id")
    request[keys.PRINCIPAL].check_may_read_user(user_id)
    return await _user_reservations(request, user_id)
