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
    BlockSeats,
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
    PromoteSeated,
    Rejected,
    RejectionCode,
    Reserve,
    SetSeatMap,
    UnblockSeats,
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
    SeatMapSet,
    SeatsBlocked,
    SeatsUnblocked,
    TicketCheckedIn,
    TicketTypeAdded,
    TicketTypeChanged,
    WaitlistPromoted,
    definition_problem,
)
from inventoryd.domain.seatmap import SeatMap, layout_problem
from inventoryd.domain.seats import SeatState
from inventoryd.domain.state import InventoryState, TicketTypeState


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
        case SetSeatMap():
            decision = _set_seat_map(inventory, command, now)
        case BlockSeats():
            return _block_seats(inventory, command, now)
        case UnblockSeats():
            decision = _unblock_seats(inventory, command, now)
        case PromoteSeated():
            return Decision(_seated_promotions(inventory, now), Accepted())
        case _:
            assert_never(command)
    # Seats freed, capacity raised, or a waiting entry left: the waiting lists may move.
    decision.records.extend(_promotions(inventory, decision.records, now))
    # (The timer's look also looks again at the lines a decision left, if it promoted its most.)
    decision.promote_seated = (bool(decision.records) or isinstance(command, ExpireDue)) and _seated_waiting(inventory)
    return decision


def _seated_waiting(inventory: InventoryState) -> bool:
    return inventory.seats is not None and any(t.seated and t.waiting for t in inventory.ticket_types.values())


def _refused(
    code: RejectionCode,
    detail: str,
    *,
    available: int | None = None,
    checked_in_at: datetime | None = None,
    field: str | None = None,
    seats: tuple[str, ...] | None = None,
) -> Decision:
    return Decision([], Rejected(code, detail, available=available, checked_in_at=checked_in_at, field=field, seats=seats))


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
    expires_at = now + timedelta(seconds=definition.hold_seconds)
    if command.seats:
        return _reserve_exact(inventory, command, ticket_type, reservation_id, amount, now, expires_at)
    available = ticket_type.available
    if command.quantity <= available:
        chosen: tuple[str, ...] = ()
        if ticket_type.seated:  # best available (a seated type has seats only once a map is put)
            seat_state = present(inventory.seats, "a seated type with seats available and no map")
            picked = seat_state.pick(ticket_type.code, command.quantity, adjacent=command.adjacent)
            if picked is None:
                return _refused(
                    "no_adjacent_seats",
                    f"no {command.quantity} seats of type {ticket_type.code!r} are left side by side ({available} apart):"
                    " ask with adjacent false to take them",
                    available=available,
                )
            chosen = tuple(seat_state.map.ids[number] for number in picked)
        held = ReservationHeld(reservation_id, command.user_id, ticket_type.code, command.quantity, amount, now, expires_at, chosen)
        return Decision([held], Accepted(reservation_id))
    if command.waitlist and command.quantity <= ticket_type.capacity:
        adjacent = command.adjacent or not ticket_type.seated
        waiting = ReservationWaitlisted(reservation_id, command.user_id, ticket_type.code, command.quantity, amount, now, adjacent)
        return Decision([waiting], Accepted(reservation_id))
    if available == 0:
        line = f" ({ticket_type.waiting} waiting: the seats that free up are theirs first)" if ticket_type.waiting else ""
        return _refused("sold_out", f"ticket type {ticket_type.code!r} is sold out{line}", available=0)
    return _refused(
        "insufficient_tickets", f"only {available} tickets of type {ticket_type.code!r} are left", available=available
    )


def _reserve_exact(
    inventory: InventoryState,
    command: Reserve,
    ticket_type: TicketTypeState,
    reservation_id: str,
    amount: int,
    now: datetime,
    expires_at: datetime,
) -> Decision:
    """Exact seats of a seated type: all of them or none."""
    code = ticket_type.code
    if not ticket_type.seated:
        return _refused("invalid_request", f"ticket type {code!r} is not seated: ask for a quantity", field="$.seats")
    named = _named_seats(inventory, command.seats)
    if isinstance(named, Decision):
        return named
    seats, numbers = named
    for index, number in enumerate(numbers):
        if seats.map.type_of[number] != code:
            detail = f"seat {command.seats[index]} is of ticket type {seats.map.type_of[number]!r}, not {code!r}"
            return _refused("invalid_request", detail, field=f"$.seats[{index}]")
    invariant(len(numbers) == command.quantity, "an exact-seat reserve whose quantity is not its seats")
    taken = [command.seats[index] for index, number in enumerate(numbers) if not seats.is_free(number)]
    if taken:
        return _refused("seats_unavailable", f"{len(taken)} of the seats asked for are taken: {_listed(taken)}", seats=tuple(taken))
    if ticket_type.waiting:
        return _refused("sold_out", f"{ticket_type.waiting} buyers wait for {code!r}: the seats that free up are theirs first", available=0)
    chosen = tuple(seats.map.ids[number] for number in sorted(numbers))
    held = ReservationHeld(reservation_id, command.user_id, code, command.quantity, amount, now, expires_at, chosen)
    return Decision([held], Accepted(reservation_id))


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
                return Decision(
                    expired, Rejected("hold_expired", "the hold expired before it was confirmed"), _seated_waiting(inventory)
                )
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
    if ticket_type.seated and command.capacity is not None and command.capacity != ticket_type.capacity:
        return _refused(
            "conflict", f"ticket type {ticket_type.code!r} is seated: its capacity is its seats on the map", field="$.capacity"
        )
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
    # A seated type's line moves by PromoteSeated, decided once these records are applied.
    seated = {code for code, ticket_type in inventory.ticket_types.items() if ticket_type.seated}
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
        if code in seated:
            continue
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


# -- reserved seating ------------------------------------------------------------------------------


def _set_seat_map(inventory: InventoryState, command: SetSeatMap, now: datetime) -> Decision:
    if refusal := _refusal_unless_on_sale(inventory):
        return refusal
    types = inventory.ticket_types
    seated = {code for code, ticket_type in types.items() if ticket_type.seated}
    if problem := layout_problem(command.layout, seated, set(types)):
        field, detail = problem
        return _refused("invalid_request", detail, field=field)
    seats = inventory.seats
    if seats is not None and seats.map.layout == command.layout:
        return Decision([], Accepted(unchanged=True))
    new_map = SeatMap(command.layout)
    if seats is not None:
        # A seat held or sold stays where it is: on the new map, of its type.
        in_use = []
        for seat, holder in enumerate(seats.holder):
            if holder is not None:
                seat_id = seats.map.ids[seat]
                target = new_map.number.get(seat_id)
                if target is None or new_map.type_of[target] != seats.map.type_of[seat]:
                    in_use.append(seat_id)
        if in_use:
            return _refused(
                "seats_unavailable",
                f"{len(in_use)} seats held or sold would leave the map or change type: {_listed(in_use)}",
                seats=tuple(in_use[: limits.SEATS_PER_REQUEST_MAX]),
            )
    records: list[Record] = [SeatMapSet(command.layout, now)]
    capacity = {code: new_map.seats_of_type(code) for code in seated}
    for code in sorted(seated):
        # As when a capacity is lowered: a waiting entry the new map can never seat leaves the line.
        records.extend(
            ReservationCancelled(reservation_id, at=now, refunded=False, reason="capacity_lowered")
            for reservation_id in inventory.waiting_list(code)
            if inventory.reservations[reservation_id].quantity > capacity.get(code, 0)
        )
    return Decision(records, Accepted())


def _listed(seat_ids: list[str]) -> str:
    """Seats named in a refusal's detail: the first ten."""
    return ", ".join(seat_ids[:10]) + (" …" if len(seat_ids) > 10 else "")


def _named_seats(inventory: InventoryState, seat_ids: tuple[str, ...]) -> tuple[SeatState, tuple[int, ...]] | Decision:
    """The event's seats and the numbers of those named, or the refusal naming the first unknown
    or repeated one."""
    seats = inventory.seats
    if seats is None:
        return _refused("invalid_request", "the event has no seat map yet", field="$.seats")
    numbers: list[int] = []
    for index, seat_id in enumerate(seat_ids):
        number = seats.map.number.get(seat_id)
        if number is None:
            return _refused("invalid_request", f"there is no seat {seat_id!r} on the event's map", field=f"$.seats[{index}]")
        if number in numbers:
            return _refused("invalid_request", f"seat {seat_id} is named twice", field=f"$.seats[{index}]")
        numbers.append(number)
    return seats, tuple(numbers)


def _block_seats(inventory: InventoryState, command: BlockSeats, now: datetime) -> Decision:
    if refusal := _refusal_unless_on_sale(inventory):
        return refusal
    named = _named_seats(inventory, command.seats)
    if isinstance(named, Decision):
        return named
    seats, numbers = named
    held = [seats.map.ids[seat] for seat in numbers if seats.holder[seat] is not None]
    if held:
        return _refused("seats_unavailable", f"{len(held)} of the seats are held or sold: {_listed(held)}", seats=tuple(held))
    new = tuple(seats.map.ids[seat] for seat in numbers if seat not in seats.blocked)
    if not new:
        return Decision([], Accepted(unchanged=True))
    return Decision([SeatsBlocked(new, command.reason, now)], Accepted())


def _unblock_seats(inventory: InventoryState, command: UnblockSeats, now: datetime) -> Decision:
    if refusal := _refusal_unless_on_sale(inventory):
        return refusal
    named = _named_seats(inventory, command.seats)
    if isinstance(named, Decision):
        return named
    seats, numbers = named
    freed = tuple(seats.map.ids[seat] for seat in numbers if seat in seats.blocked)
    if not freed:
        return Decision([], Accepted(unchanged=True))
    return Decision([SeatsUnblocked(freed, now)], Accepted())


def _seated_promotions(inventory: InventoryState, now: datetime) -> list[Record]:
    """Each seated type's line, first in first out: the head is promoted with best available when
    its quantity is free and a pick finds seats for it (side by side, unless it allowed apart);
    else it keeps its place and nobody behind it goes first."""
    seats, definition = inventory.seats, inventory.definition
    if seats is None or definition is None or inventory.status != "on_sale":
        return []
    hold = timedelta(seconds=definition.hold_seconds)
    promotions: list[Record] = []
    chosen: set[int] = set()
    for code, ticket_type in inventory.ticket_types.items():
        if not ticket_type.seated or not ticket_type.waiting:
            continue
        free = ticket_type.free
        for reservation_id in inventory.waiting_list(code):
            reservation = inventory.reservations[reservation_id]
            if reservation.quantity > free:
                break
            picked = seats.pick(code, reservation.quantity, adjacent=reservation.adjacent, exclude=chosen)
            if picked is None or len(promotions) >= limits.SEAT_PROMOTIONS_PER_DECISION_MAX:
                break
            chosen.update(picked)
            free -= reservation.quantity
            seat_ids = tuple(seats.map.ids[seat] for seat in picked)
            promotions.append(WaitlistPromoted(reservation_id, at=now, expires_at=now + hold, seats=seat_ids))
    return promotions


def rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
