"""Phase one: decide. Look at the state and a command; return the records it produces and the
reply it earns. Nothing here changes the state: the actor applies a decision's records (`apply`)
before it decides the next command, so the decisions of one batch see each other.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import assert_never

import msgspec

from inventoryd import limits
from inventoryd.domain.checks import invariant, present
from inventoryd.domain.commands import (
    EVENT_FIELDS_UPDATABLE,
    Accepted,
    AddTicketType,
    Cancel,
    CancelEvent,
    ChangeTicketType,
    CheckIn,
    Command,
    Confirm,
    CreateEvent,
    Decision,
    ExpireDue,
    JoinQueue,
    LeaveQueue,
    Rejected,
    RejectionCode,
    Reserve,
    UpdateEvent,
)
from inventoryd.domain.ids import queue_id_for, reservation_id_for, reservation_id_of_ticket
from inventoryd.domain.queue import QueueEntry, admissions_due
from inventoryd.domain.records import (
    EventCancelled,
    EventCreated,
    EventUpdated,
    HoldExpired,
    QueueAdmitted,
    QueueExpired,
    QueueJoined,
    QueueLeft,
    QueueShuffled,
    Record,
    ReservationCancelled,
    ReservationConfirmed,
    ReservationHeld,
    ReservationWaitlisted,
    TicketCheckedIn,
    TicketTypeAdded,
    TicketTypeChanged,
    WaitlistPromoted,
    definition_problem,
)
from inventoryd.domain.state import InventoryState


def decide(inventory: InventoryState, command: Command, now: datetime) -> Decision:
    match command:
        case CreateEvent():
            return _create(inventory, command)
        case Reserve():
            return _reserve(inventory, command, now)
        case Confirm():
            return _confirm(inventory, command, now)
        case Cancel():
            decision = _cancel(inventory, command, now)
        case ExpireDue():
            decision = _expire(inventory, now)
            decision.records.extend(_queue_moves(inventory, command.seed, now))
        case CheckIn():
            return _check_in(inventory, command, now)
        case UpdateEvent():
            return _update(inventory, command)
        case AddTicketType():
            return _add_ticket_type(inventory, command)
        case ChangeTicketType():
            decision = _change_ticket_type(inventory, command, now)
        case CancelEvent():
            return _cancel_event(inventory, now)
        case JoinQueue():
            return _join_queue(inventory, command, now)
        case LeaveQueue():
            return _leave_queue(inventory, command, now)
        case _:
            assert_never(command)
    # Seats freed, capacity raised, or a waiting entry left: the waiting lists may move.
    decision.records.extend(_promotions(inventory, decision.records, now))
    return decision


def _refused(
    code: RejectionCode,
    detail: str,
    *,
    available: int | None = None,
    checked_in_at: datetime | None = None,
    field: str | None = None,
) -> Decision:
    return Decision([], Rejected(code, detail, available=available, checked_in_at=checked_in_at, field=field))


def _create(inventory: InventoryState, command: CreateEvent) -> Decision:
    if inventory.status != "new":
        return _refused("conflict", "the event already exists")
    invariant(command.event.id == inventory.event_id, "CreateEvent for another event")
    return Decision([EventCreated(command.event)], Accepted())


def _refusal_unless_on_sale(inventory: InventoryState) -> Decision | None:
    if inventory.status == "new":
        return _refused("not_found", "no such event")
    if inventory.status == "cancelled":
        return _refused("event_cancelled", "the event has been cancelled")
    return None


def _reserve(inventory: InventoryState, command: Reserve, now: datetime) -> Decision:
    if refusal := _refusal_unless_on_sale(inventory):
        return refusal
    definition = inventory.require_definition()
    if definition.sale_starts_at is not None and now < definition.sale_starts_at:
        return _refused("sale_not_open", f"the sale opens at {rfc3339(definition.sale_starts_at)}")
    if definition.sale_ends_at is not None and now >= definition.sale_ends_at:
        return _refused("sale_not_open", f"the sale closed at {rfc3339(definition.sale_ends_at)}")
    ticket_type = inventory.ticket_types.get(command.ticket_type)
    if ticket_type is None:
        return _refused("not_found", f"the event has no ticket type {command.ticket_type!r}")
    limit = definition.per_user_limit
    if limit is not None:
        seats = inventory.seats_by_user.get(command.user_id, 0)
        if seats + command.quantity > limit:
            return _refused("limit_exceeded", f"at most {limit} tickets per user for this event; this user has {seats}")
    reservation_id = reservation_id_for(inventory.event_id, inventory.reservations_created + 1)
    amount = ticket_type.price * command.quantity
    available = ticket_type.available
    if command.quantity <= available:
        expires_at = now + timedelta(seconds=definition.hold_seconds)
        held = ReservationHeld(reservation_id, command.user_id, ticket_type.code, command.quantity, amount, now, expires_at)
        return Decision([held], Accepted(reservation_id))
    if command.waitlist and command.quantity <= ticket_type.capacity:
        waiting = ReservationWaitlisted(reservation_id, command.user_id, ticket_type.code, command.quantity, amount, now)
        return Decision([waiting], Accepted(reservation_id))
    if available == 0:
        line = f" ({ticket_type.waiting} waiting: the seats that free up are theirs first)" if ticket_type.waiting else ""
        return _refused("sold_out", f"ticket type {ticket_type.code!r} is sold out{line}", available=0)
    return _refused(
        "insufficient_tickets", f"only {available} tickets of type {ticket_type.code!r} are left", available=available
    )


def _confirm(inventory: InventoryState, command: Confirm, now: datetime) -> Decision:
    reservation = inventory.reservations.get(command.reservation_id)
    if reservation is None:
        return _refused("not_found", "no such reservation")
    match reservation.status:
        case "confirmed":
            return Decision([], Accepted(reservation.id, unchanged=True))
        case "expired":
            return _refused("hold_expired", "the hold expired before it was confirmed")
        case "cancelled":
            return _refused("conflict", "the reservation was cancelled")
        case "waitlisted":
            return _refused("conflict", "the reservation is still on the waiting list")
        case "held":
            if now >= present(reservation.expires_at, "%s is held without an expiry", reservation.id):
                # The timer has not run yet; the hold is over all the same. Expire it now, so the
                # log says what happened, and refuse the confirmation.
                expired: list[Record] = [HoldExpired(reservation.id, at=now)]
                expired.extend(_promotions(inventory, expired, now))
                return Decision(expired, Rejected("hold_expired", "the hold expired before it was confirmed"))
            return Decision([ReservationConfirmed(reservation.id, at=now)], Accepted(reservation.id))
        case _:
            assert_never(reservation.status)


def _cancel(inventory: InventoryState, command: Cancel, now: datetime) -> Decision:
    reservation = inventory.reservations.get(command.reservation_id)
    if reservation is None:
        return _refused("not_found", "no such reservation")
    definition = inventory.require_definition()
    match reservation.status:
        case "cancelled":
            return Decision([], Accepted(reservation.id, unchanged=True))
        case "expired":
            return _refused("conflict", "the hold already expired")
        case "held" | "waitlisted":
            return Decision([ReservationCancelled(reservation.id, at=now, refunded=False)], Accepted(reservation.id))
        case "confirmed":
            cancel_until = definition.cancel_until
            if cancel_until is not None and now > cancel_until and not command.privileged:
                return _refused("cancellation_closed", f"cancellation closed at {rfc3339(cancel_until)}")
            if any(ticket.status == "checked_in" for ticket in reservation.tickets):
                return _refused("conflict", "a ticket of this reservation was already checked in")
            return Decision([ReservationCancelled(reservation.id, at=now, refunded=True)], Accepted(reservation.id))
        case _:
            assert_never(reservation.status)


def _expire(inventory: InventoryState, now: datetime) -> Decision:
    # Popping due entries goes through the undo log, so a rolled-back batch gets them back. A
    # rolled-back hold can leave an entry that a later hold with the same id and expiry duplicates
    # (ids are reused after a rollback), hence the set.
    records: list[Record] = []
    expiring: set[str] = set()
    while len(records) < limits.EXPIRIES_PER_MESSAGE_MAX:
        expires_at = inventory.next_expiry()
        if expires_at is None or expires_at > now:
            break
        _, reservation_id = inventory.pop_expiry()
        if reservation_id not in expiring:
            expiring.add(reservation_id)
            records.append(HoldExpired(reservation_id, at=now))
    return Decision(records, Accepted())


# -- the waiting room ------------------------------------------------------------------------------


def _join_queue(inventory: InventoryState, command: JoinQueue, now: datetime) -> Decision:
    if refusal := _refusal_unless_on_sale(inventory):
        return refusal
    definition = inventory.require_definition()
    config = definition.queue
    if config is None:
        return _refused("no_waiting_room", "this event has no waiting room: reserve directly")
    if now < config.opens_at:
        return _refused("queue_not_open", f"the waiting room opens at {rfc3339(config.opens_at)}")
    if definition.sale_ends_at is not None and now >= definition.sale_ends_at:
        return _refused("sale_not_open", f"the sale closed at {rfc3339(definition.sale_ends_at)}")
    queue = inventory.queue
    existing = queue.of_user.get(command.user_id)
    if existing is not None and _holds_a_place(queue.entries[existing], now):
        return Decision([], Accepted(queue_entry_id=existing, unchanged=True))
    if queue.joined >= limits.QUEUE_ENTRIES_MAX:
        return _refused("queue_full", f"the waiting room holds at most {limits.QUEUE_ENTRIES_MAX:,} entries")
    records: list[Record] = _shuffle_if_due(inventory, command.seed, now)
    entry_id = queue_id_for(inventory.event_id, queue.joined + 1)
    records.append(QueueJoined(entry_id, command.user_id, now))
    return Decision(records, Accepted(queue_entry_id=entry_id))


def _holds_a_place(entry: QueueEntry, now: datetime) -> bool:
    """Waiting, or admitted and within its window: joining again gives this entry back."""
    if entry.status == "waiting":
        return True
    return entry.status == "admitted" and entry.expires_at is not None and now < entry.expires_at


def _leave_queue(inventory: InventoryState, command: LeaveQueue, now: datetime) -> Decision:
    entry = inventory.queue.entries.get(command.entry_id)
    if entry is None:
        return _refused("not_found", "no such waiting-room entry")
    if entry.status in ("left", "expired"):
        return Decision([], Accepted(queue_entry_id=entry.id, unchanged=True))
    return Decision([QueueLeft(entry.id, now)], Accepted(queue_entry_id=entry.id))


def _shuffle_if_due(inventory: InventoryState, seed: int, now: datetime) -> list[Record]:
    definition = inventory.require_definition()
    sale_starts_at = definition.sale_starts_at
    if definition.queue is None or inventory.queue.shuffled or sale_starts_at is None or now < sale_starts_at:
        return []
    return [QueueShuffled(seed, now)]


def _queue_moves(inventory: InventoryState, seed: int, now: datetime) -> list[Record]:
    """The waiting room's due moves: the shuffle at the sale's start (admissions follow at the
    next look, once the line is built), admissions whose window passed, and the next wave."""
    definition = inventory.definition
    if definition is None or definition.queue is None or inventory.status != "on_sale":
        return []
    if shuffle := _shuffle_if_due(inventory, seed, now):
        return shuffle
    queue, config = inventory.queue, definition.queue
    if not queue.shuffled:
        return []
    records: list[Record] = []
    ended: list[str] = []
    freed = 0
    for entry_id in queue.admitted_order[queue.expired_head :]:
        entry = queue.entries[entry_id]
        if entry.status != "admitted":
            continue
        if entry.expires_at is None or entry.expires_at > now or len(ended) >= limits.QUEUE_WAVE_ENTRIES_MAX:
            break
        ended.append(entry_id)
        freed += 0 if entry.finished else 1
    if ended:
        records.append(QueueExpired(tuple(ended), now))
    due, clock = admissions_due(config, queue, present(definition.sale_starts_at, "a queue without a sale start"), now)
    slots = due if config.max_active is None else min(due, config.max_active - (queue.active - freed))
    admitted = queue.next_waiting(min(slots, limits.QUEUE_WAVE_ENTRIES_MAX)) if slots > 0 else []
    if admitted:
        expires_at = now + timedelta(seconds=config.admission_seconds)
        records.append(QueueAdmitted(tuple(admitted), now, expires_at, clock if len(admitted) == due else now))
    return records


def _check_in(inventory: InventoryState, command: CheckIn, now: datetime) -> Decision:
    reservation_id = reservation_id_of_ticket(command.ticket_id)
    reservation = inventory.reservations.get(reservation_id) if reservation_id else None
    ticket = next((t for t in reservation.tickets if t.id == command.ticket_id), None) if reservation else None
    if reservation is None or ticket is None:
        return _refused("not_found", "no such ticket")
    match ticket.status:
        case "checked_in":
            checked_in_at = present(ticket.checked_in_at, "%s is checked in without a time", ticket.id)
            return _refused(
                "already_checked_in", f"the ticket was checked in at {rfc3339(checked_in_at)}", checked_in_at=checked_in_at
            )
        case "cancelled":
            return _refused("conflict", "the ticket was cancelled")
        case "valid":
            return Decision([TicketCheckedIn(ticket.id, reservation.id, now)], Accepted(reservation.id))
        case _:
            assert_never(ticket.status)


def _update(inventory: InventoryState, command: UpdateEvent) -> Decision:
    if refusal := _refusal_unless_on_sale(inventory):
        return refusal
    definition = inventory.require_definition()
    invariant(set(command.changes) <= EVENT_FIELDS_UPDATABLE, "not updatable: %s", set(command.changes))
    updated = msgspec.structs.replace(definition, **command.changes)
    if problem := definition_problem(updated):
        field, detail = problem
        return _refused("invalid_request", detail, field=field)
    if updated.per_user_limit is not None:
        most = max(inventory.seats_by_user.values(), default=0)
        if most > updated.per_user_limit:
            return _refused(
                "conflict",
                f"a buyer already has {most} tickets; per_user_limit may not fall below that",
                field="$.per_user_limit",
            )
    if updated == definition:
        return Decision([], Accepted(unchanged=True))
    return Decision([EventUpdated(updated)], Accepted())


def _add_ticket_type(inventory: InventoryState, command: AddTicketType) -> Decision:
    if refusal := _refusal_unless_on_sale(inventory):
        return refusal
    if command.ticket_type.code in inventory.ticket_types:
        return _refused("conflict", f"ticket type {command.ticket_type.code!r} exists", field="$.code")
    if len(inventory.ticket_types) >= limits.TICKET_TYPES_PER_EVENT_MAX:
        return _refused("conflict", f"at most {limits.TICKET_TYPES_PER_EVENT_MAX} ticket types")
    return Decision([TicketTypeAdded(command.ticket_type)], Accepted())


def _change_ticket_type(inventory: InventoryState, command: ChangeTicketType, now: datetime) -> Decision:
    if refusal := _refusal_unless_on_sale(inventory):
        return refusal
    ticket_type = inventory.ticket_types.get(command.code)
    if ticket_type is None:
        return _refused("not_found", f"the event has no ticket type {command.code!r}")
    capacity = ticket_type.capacity if command.capacity is None else command.capacity
    reserved = ticket_type.held + ticket_type.sold
    if capacity < reserved:
        return _refused(
            "capacity_below_reserved", f"capacity may not fall below the {reserved} tickets held or sold", field="$.capacity"
        )
    record = TicketTypeChanged(
        code=ticket_type.code,
        name=ticket_type.name if command.name is None else command.name,
        price=ticket_type.price if command.price is None else command.price,
        capacity=capacity,
    )
    if (record.name, record.price, record.capacity) == (ticket_type.name, ticket_type.price, ticket_type.capacity):
        return Decision([], Accepted(unchanged=True))
    records: list[Record] = [record]
    # A waiting entry for more than the new capacity could never be served: it leaves the line
    # (cancelled, with its reason) instead of blocking everyone behind it.
    records.extend(
        ReservationCancelled(reservation_id, at=now, refunded=False, reason="capacity_lowered")
        for reservation_id in inventory.waiting_list(ticket_type.code)
        if inventory.reservations[reservation_id].quantity > capacity
    )
    return Decision(records, Accepted())


def _cancel_event(inventory: InventoryState, now: datetime) -> Decision:
    if inventory.status == "new":
        return _refused("not_found", "no such event")
    if inventory.status == "cancelled":
        return Decision([], Accepted(unchanged=True))
    return Decision([EventCancelled(now)], Accepted())


def _promotions(inventory: InventoryState, records: list[Record], now: datetime) -> list[Record]:
    """The waiting-list promotions that `records` make possible, strictly first in, first out: the
    head of a type's list is promoted when its whole quantity is free; nobody behind it goes first
    (and no newcomer: while anyone waits, a type shows nothing available). Computed from the state
    before `records` plus what they change."""
    freed: dict[str, int] = {}
    leaving: set[str] = set()
    for record in records:
        match record:
            case ReservationCancelled() | HoldExpired():
                reservation = inventory.reservations[record.reservation_id]
                if reservation.status == "waitlisted":
                    leaving.add(reservation.id)
                    freed.setdefault(reservation.ticket_type, 0)
                else:
                    freed[reservation.ticket_type] = freed.get(reservation.ticket_type, 0) + reservation.quantity
            case TicketTypeChanged():
                delta = record.capacity - inventory.ticket_types[record.code].capacity
                freed[record.code] = freed.get(record.code, 0) + delta
    if not freed or inventory.definition is None:
        return []
    hold = timedelta(seconds=inventory.definition.hold_seconds)
    promotions: list[Record] = []
    for code, extra in freed.items():
        ticket_type = inventory.ticket_types[code]
        free = ticket_type.free + extra
        for reservation_id in ticket_type.waitlist[ticket_type.waitlist_head :]:
            reservation = inventory.reservations[reservation_id]
            if reservation.status != "waitlisted" or reservation_id in leaving:
                continue
            if reservation.quantity > free:
                break
            free -= reservation.quantity
            promotions.append(WaitlistPromoted(reservation_id, at=now, expires_at=now + hold))
    return promotions


def rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
