"""Phase two: apply. Fold one log record into the state: the same code serves the live path (after
each decision) and recovery (over the log). One function per record kind; each says which ticket
type and which buyer it touched, and the local invariants are checked on those after every record.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TypeVar, assert_never

import msgspec

from inventoryd.domain.apply_queue import purchase_finished, queue_admitted, queue_expired, queue_joined, queue_left, queue_shuffled
from inventoryd.domain.checks import InvariantViolation, invariant, present
from inventoryd.domain.ids import ticket_id_for
from inventoryd.domain.invariants import check_after_apply
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
    SeatMapSet,
    SeatsBlocked,
    SeatsUnblocked,
    TicketCheckedIn,
    TicketTypeAdded,
    TicketTypeChanged,
    WaitlistPromoted,
)
from inventoryd.domain.seatmap import SeatMap
from inventoryd.domain.seats import SeatState
from inventoryd.domain.state import COUNTED_STATUSES, CancelReason, InventoryState, Reservation, Ticket, TicketTypeState

# What a record touched, for the checks after it: a ticket type, a buyer (either may be None).
Touched = tuple[TicketTypeState | None, str | None]
R = TypeVar("R", QueueJoined, QueueShuffled, QueueAdmitted, QueueExpired, QueueLeft)


def apply(inventory: InventoryState, seq: int, record: Record) -> None:
    if seq != inventory.last_seq + 1:
        raise InvariantViolation(f"event {inventory.event_id}: record seq {seq} after {inventory.last_seq}")
    touched: Touched
    match record:
        case EventCreated():
            touched = _event_created(inventory, record)
        case ReservationHeld():
            touched = _reservation_held(inventory, record)
        case ReservationWaitlisted():
            touched = _reservation_waitlisted(inventory, record)
        case WaitlistPromoted():
            touched = _waitlist_promoted(inventory, record)
        case ReservationConfirmed():
            touched = _reservation_confirmed(inventory, record)
        case ReservationCancelled():
            touched = _reservation_cancelled(inventory, record)
        case HoldExpired():
            touched = _hold_expired(inventory, record)
        case TicketCheckedIn():
            touched = _ticket_checked_in(inventory, record)
        case EventUpdated():
            touched = _event_updated(inventory, record)
        case TicketTypeAdded():
            touched = _ticket_type_added(inventory, record)
        case TicketTypeChanged():
            touched = _ticket_type_changed(inventory, record)
        case EventCancelled():
            touched = _event_cancelled(inventory, record)
        case QueueJoined():
            touched = _queue(queue_joined, inventory, record)
        case QueueShuffled():
            touched = _queue(queue_shuffled, inventory, record)
        case QueueAdmitted():
            touched = _queue(queue_admitted, inventory, record)
        case QueueExpired():
            touched = _queue(queue_expired, inventory, record)
        case QueueLeft():
            touched = _queue(queue_left, inventory, record)
        case SeatMapSet():
            touched = _seat_map_set(inventory, record)
        case SeatsBlocked():
            touched = _seats_blocked(inventory, record)
        case SeatsUnblocked():
            touched = _seats_unblocked(inventory, record)
        case _:
            assert_never(record)
    inventory.set_attr(inventory, "last_seq", seq)
    check_after_apply(inventory, *touched)


def _queue(fold: Callable[[InventoryState, R], None], inventory: InventoryState, record: R) -> Touched:
    fold(inventory, record)
    invariant(inventory.queue.active >= 0, "%s: a negative count of admissions", inventory.event_id)
    return None, None


def _event_created(inventory: InventoryState, record: EventCreated) -> Touched:
    invariant(inventory.status == "new", "EventCreated twice")
    invariant(record.event.id == inventory.event_id, "EventCreated for another event")
    inventory.set_attr(inventory, "definition", record.event)
    inventory.set_attr(inventory, "status", "on_sale")
    for ticket_type in record.event.ticket_types:
        inventory.add_ticket_type(ticket_type)
    return None, None


def _new_reservation(inventory: InventoryState, record: ReservationHeld | ReservationWaitlisted) -> Reservation:
    if record.reservation_id in inventory.reservations:
        raise InvariantViolation(f"{record.reservation_id} made twice")
    inventory.set_attr(inventory, "reservations_created", inventory.reservations_created + 1)
    held = isinstance(record, ReservationHeld)
    reservation = Reservation(
        id=record.reservation_id,
        event_id=inventory.event_id,
        ticket_type=record.ticket_type,
        quantity=record.quantity,
        user_id=record.user_id,
        status="held" if held else "waitlisted",
        amount=record.amount,
        created_at=record.at,
        expires_at=record.expires_at if isinstance(record, ReservationHeld) else None,
        seats=record.seats if isinstance(record, ReservationHeld) else (),
        adjacent=record.adjacent if isinstance(record, ReservationWaitlisted) else True,
    )
    inventory.put_reservation(reservation)
    return reservation


def _reservation_held(inventory: InventoryState, record: ReservationHeld) -> Touched:
    _new_reservation(inventory, record)
    _take_seats(inventory, record.ticket_type, record.quantity, record.seats, record.reservation_id)
    inventory.push_expiry((record.expires_at, record.reservation_id))
    return inventory.ticket_types[record.ticket_type], record.user_id


def _take_seats(inventory: InventoryState, code: str, quantity: int, seat_ids: tuple[str, ...], reservation_id: str) -> None:
    """A seated type's reservation takes its seats (exactly `quantity`, of its type, free)."""
    seated = inventory.ticket_types[code].seated
    invariant(seated == bool(seat_ids), "%s: seats %s for a type seated=%s", reservation_id, seat_ids[:3], seated)
    if not seat_ids:
        return
    seats = present(inventory.seats, "%s holds seats of an event without a map", reservation_id)
    invariant(len(seat_ids) == quantity, "%s: %s seats for %s tickets", reservation_id, len(seat_ids), quantity)
    numbers = tuple(seats.map.number[seat_id] for seat_id in seat_ids)
    invariant(all(seats.map.type_of[seat] == code for seat in numbers), "%s: seats of another type", reservation_id)
    seats.take(inventory, numbers, reservation_id)


def _release_seats(inventory: InventoryState, reservation: Reservation) -> None:
    if reservation.seats and reservation.status in ("held", "confirmed"):
        seats = present(inventory.seats, "%s holds seats of an event without a map", reservation.id)
        seats.release(inventory, tuple(seats.map.number[seat_id] for seat_id in reservation.seats), reservation.id)


def _reservation_waitlisted(inventory: InventoryState, record: ReservationWaitlisted) -> Touched:
    _new_reservation(inventory, record)
    ticket_type = inventory.ticket_types[record.ticket_type]
    inventory.append(ticket_type.waitlist, record.reservation_id)
    return ticket_type, record.user_id


def _waitlist_promoted(inventory: InventoryState, record: WaitlistPromoted) -> Touched:
    reservation = _reservation(inventory, record.reservation_id, "waitlisted")
    ticket_type = inventory.ticket_types[reservation.ticket_type]
    _take_seats(inventory, reservation.ticket_type, reservation.quantity, record.seats, reservation.id)
    inventory.replace(reservation, status="held", expires_at=record.expires_at, seats=record.seats)
    inventory.push_expiry((record.expires_at, record.reservation_id))
    _advance_waitlist_head(inventory, ticket_type)
    return ticket_type, None


def _reservation_confirmed(inventory: InventoryState, record: ReservationConfirmed) -> Touched:
    reservation = _reservation(inventory, record.reservation_id, "held")
    seats = reservation.seats or (None,) * reservation.quantity
    tickets = tuple(
        Ticket(ticket_id_for(reservation.id, index), "valid", seat=seat) for index, seat in enumerate(seats, start=1)
    )
    inventory.replace(reservation, status="confirmed", confirmed_at=record.at, tickets=tickets)
    purchase_finished(inventory, reservation.user_id)
    return inventory.ticket_types[reservation.ticket_type], None


def _reservation_cancelled(inventory: InventoryState, record: ReservationCancelled) -> Touched:
    reservation = _reservation(inventory, record.reservation_id, *COUNTED_STATUSES)
    _cancel(inventory, reservation, record.at, refunded=record.refunded, reason=record.reason)
    purchase_finished(inventory, reservation.user_id)
    return inventory.ticket_types[reservation.ticket_type], reservation.user_id


def _hold_expired(inventory: InventoryState, record: HoldExpired) -> Touched:
    reservation = _reservation(inventory, record.reservation_id, "held")
    _release_seats(inventory, reservation)
    inventory.replace(reservation, status="expired")
    return inventory.ticket_types[reservation.ticket_type], reservation.user_id


def _ticket_checked_in(inventory: InventoryState, record: TicketCheckedIn) -> Touched:
    reservation = _reservation(inventory, record.reservation_id, "confirmed")
    invariant(
        any(ticket.id == record.ticket_id and ticket.status == "valid" for ticket in reservation.tickets),
        "check-in of %s, which is not a valid ticket",
        record.ticket_id,
    )
    tickets = tuple(
        msgspec.structs.replace(ticket, status="checked_in", checked_in_at=record.at) if ticket.id == record.ticket_id else ticket
        for ticket in reservation.tickets
    )
    inventory.replace(reservation, tickets=tickets)
    return inventory.ticket_types[reservation.ticket_type], None


def _event_updated(inventory: InventoryState, record: EventUpdated) -> Touched:
    invariant(inventory.status == "on_sale", "EventUpdated on an event not on sale")
    invariant(record.event.id == inventory.event_id, "EventUpdated for another event")
    inventory.set_attr(inventory, "definition", record.event)
    return None, None


def _ticket_type_added(inventory: InventoryState, record: TicketTypeAdded) -> Touched:
    invariant(record.ticket_type.code not in inventory.ticket_types, "ticket type %s added twice", record.ticket_type.code)
    inventory.add_ticket_type(record.ticket_type)
    return inventory.ticket_types[record.ticket_type.code], None


def _ticket_type_changed(inventory: InventoryState, record: TicketTypeChanged) -> Touched:
    ticket_type = inventory.ticket_types[record.code]
    inventory.set_attr(ticket_type, "name", record.name)
    inventory.set_attr(ticket_type, "price", record.price)
    inventory.set_attr(ticket_type, "capacity", record.capacity)
    return ticket_type, None


def _event_cancelled(inventory: InventoryState, record: EventCancelled) -> Touched:
    invariant(inventory.status == "on_sale", "EventCancelled on an event not on sale")
    inventory.set_attr(inventory, "status", "cancelled")
    for reservation in list(inventory.reservations.values()):
        if reservation.status in COUNTED_STATUSES:
            _cancel(inventory, reservation, record.at, refunded=reservation.status == "confirmed")
    for ticket_type in inventory.ticket_types.values():
        invariant(ticket_type.held == 0, "cancelling left %s held seats of %s", ticket_type.held, ticket_type.code)
        invariant(ticket_type.sold == 0, "cancelling left %s sold seats of %s", ticket_type.sold, ticket_type.code)
        invariant(ticket_type.waiting == 0, "cancelling left %s waiting for %s", ticket_type.waiting, ticket_type.code)
        check_after_apply(inventory, ticket_type, None)
    return None, None


def _cancel(
    inventory: InventoryState, reservation: Reservation, at: datetime, *, refunded: bool, reason: CancelReason | None = None
) -> None:
    _release_seats(inventory, reservation)
    # A ticket already used stays checked in: that is history, not a seat.
    tickets = tuple(
        msgspec.structs.replace(ticket, status="cancelled") if ticket.status == "valid" else ticket
        for ticket in reservation.tickets
    )
    inventory.replace(
        reservation, status="cancelled", cancelled_at=at, refunded=refunded, cancel_reason=reason, tickets=tickets
    )
    if reservation.status == "waitlisted":
        _advance_waitlist_head(inventory, inventory.ticket_types[reservation.ticket_type])


def _advance_waitlist_head(inventory: InventoryState, ticket_type: TicketTypeState) -> None:
    """Move the head past entries that have left the list, so it stays short to walk."""
    head = ticket_type.waitlist_head
    while head < len(ticket_type.waitlist) and inventory.reservations[ticket_type.waitlist[head]].status != "waitlisted":
        head += 1
    if head != ticket_type.waitlist_head:
        inventory.set_attr(ticket_type, "waitlist_head", head)


def _seat_map_set(inventory: InventoryState, record: SeatMapSet) -> Touched:
    invariant(inventory.status == "on_sale", "SeatMapSet on an event not on sale")
    seat_map = SeatMap(record.layout)
    old = inventory.seats
    seats = old.carried_to(seat_map) if old is not None else SeatState(seat_map)
    inventory.set_attr(inventory, "seats", seats)
    blocked: dict[str, int] = {}
    for seat in seats.blocked:
        blocked[seat_map.type_of[seat]] = blocked.get(seat_map.type_of[seat], 0) + 1
    for code, ticket_type in inventory.ticket_types.items():
        if ticket_type.seated:
            inventory.set_attr(ticket_type, "capacity", seat_map.seats_of_type(code))
            inventory.set_attr(ticket_type, "blocked", blocked.get(code, 0))
            check_after_apply(inventory, ticket_type, None)
        else:
            invariant(code not in seat_map.type_rows, "the map seats ticket type %s, which is not seated", code)
    return None, None


def _seats_changed_by_type(inventory: InventoryState, seat_ids: tuple[str, ...]) -> tuple[tuple[int, ...], dict[str, int]]:
    seats = present(inventory.seats, "a seat record before the map")
    numbers = tuple(seats.map.number[seat_id] for seat_id in seat_ids)
    by_type: dict[str, int] = {}
    for seat in numbers:
        by_type[seats.map.type_of[seat]] = by_type.get(seats.map.type_of[seat], 0) + 1
    return numbers, by_type


def _seats_blocked(inventory: InventoryState, record: SeatsBlocked) -> Touched:
    numbers, by_type = _seats_changed_by_type(inventory, record.seats)
    seats = present(inventory.seats, "a seat record before the map")
    invariant(not any(seat in seats.blocked for seat in numbers), "seats blocked twice")
    seats.block(inventory, numbers, record.reason)
    return _blocked_counts(inventory, by_type, 1)


def _seats_unblocked(inventory: InventoryState, record: SeatsUnblocked) -> Touched:
    numbers, by_type = _seats_changed_by_type(inventory, record.seats)
    seats = present(inventory.seats, "a seat record before the map")
    invariant(all(seat in seats.blocked for seat in numbers), "seats unblocked that were not blocked")
    seats.unblock(inventory, numbers)
    return _blocked_counts(inventory, by_type, -1)


def _blocked_counts(inventory: InventoryState, by_type: dict[str, int], sign: int) -> Touched:
    for code, count in by_type.items():
        ticket_type = inventory.ticket_types[code]
        inventory.set_attr(ticket_type, "blocked", ticket_type.blocked + sign * count)
        check_after_apply(inventory, ticket_type, None)
    return None, None


def _reservation(inventory: InventoryState, reservation_id: str, *statuses: str) -> Reservation:
    reservation = present(inventory.reservations.get(reservation_id), "record for unknown reservation %s", reservation_id)
    invariant(
        reservation.status in statuses,
        "record for %s in status %s, expected one of %s",
        reservation_id,
        reservation.status,
        statuses,
    )
    return reservation
