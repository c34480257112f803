"""Phase three: the invariants. `check_after_apply` runs after every record in O(1) on what it
touched; `check_all` recounts everything from the reservations (after replay, in audits). One
condition per check, so that its message says which one broke."""

from __future__ import annotations

from inventoryd.domain.checks import InvariantViolation, invariant, present
from inventoryd.domain.seats import SeatState
from inventoryd.domain.state import (
    COUNTED_STATUSES,
    COUNTERS,
    Counts,
    InventoryState,
    Reservation,
    TicketTypeState,
    counted,
    seats_counted,
)


def check_after_apply(inventory: InventoryState, ticket_type: TicketTypeState | None, user_id: str | None) -> None:
    """The invariants a single record can break. They run after every record, so all are tried
    in one expression first; only when it fails are they checked one by one, for the message."""
    if ticket_type is not None:
        held, sold, checked_in = ticket_type.held, ticket_type.sold, ticket_type.checked_in
        if not (
            held >= 0
            and sold >= 0
            and held + sold <= ticket_type.capacity
            and checked_in >= 0
            and (checked_in <= sold or inventory.status == "cancelled")
            and ticket_type.waiting >= 0
            and ticket_type.revenue >= 0
            and ticket_type.blocked >= 0
            and held + sold + ticket_type.blocked <= ticket_type.capacity
        ):
            _check_ticket_type(inventory, ticket_type)
        if ticket_type.seated:
            seat_state = inventory.seats
            taken = seat_state.taken.get(ticket_type.code, 0) if seat_state is not None else 0
            invariant(
                taken == held + sold,
                "event %s type %s: %s seats taken, %s held + sold",
                inventory.event_id,
                ticket_type.code,
                taken,
                held + sold,
            )
    definition = inventory.definition
    if user_id is not None and definition is not None and definition.per_user_limit is not None:
        seats = inventory.seats_by_user.get(user_id, 0)
        limit = definition.per_user_limit
        invariant(seats <= limit, "event %s: user %s holds %s > limit %s", inventory.event_id, user_id, seats, limit)


def _check_ticket_type(inventory: InventoryState, ticket_type: TicketTypeState) -> None:
    """The ticket type's invariants, one condition each (the same as check_after_apply's combined one)."""
    event_id, code = inventory.event_id, ticket_type.code
    invariant(ticket_type.held >= 0, "event %s type %s: held %s < 0", event_id, code, ticket_type.held)
    invariant(ticket_type.sold >= 0, "event %s type %s: sold %s < 0", event_id, code, ticket_type.sold)
    invariant(
        ticket_type.held + ticket_type.sold <= ticket_type.capacity,
        "event %s type %s: held %s + sold %s exceeds capacity %s",
        event_id,
        code,
        ticket_type.held,
        ticket_type.sold,
        ticket_type.capacity,
    )
    invariant(ticket_type.checked_in >= 0, "event %s type %s: checked in < 0", event_id, code)
    invariant(
        ticket_type.checked_in <= ticket_type.sold or inventory.status == "cancelled",
        "event %s type %s: checked in %s > sold %s",
        event_id,
        code,
        ticket_type.checked_in,
        ticket_type.sold,
    )
    invariant(ticket_type.waiting >= 0, "event %s type %s: waiting < 0", event_id, code)
    invariant(ticket_type.revenue >= 0, "event %s type %s: revenue < 0", event_id, code)
    invariant(ticket_type.blocked >= 0, "event %s type %s: blocked < 0", event_id, code)
    invariant(
        ticket_type.held + ticket_type.sold + ticket_type.blocked <= ticket_type.capacity,
        "event %s type %s: held + sold + blocked %s exceeds capacity %s",
        event_id,
        code,
        ticket_type.held + ticket_type.sold + ticket_type.blocked,
        ticket_type.capacity,
    )
    # The fast path in check_after_apply failed, so one of the above must have: the two lists agree.
    raise InvariantViolation(f"event {event_id} type {code}: the combined check and the split checks disagree")


def tally(inventory: InventoryState) -> tuple[dict[str, Counts], dict[str, int]]:
    """Every ticket type's counters and every buyer's seats, counted from the reservations alone."""
    counts = {code: [0, 0, 0, 0, 0, 0] for code in inventory.ticket_types}
    seats: dict[str, int] = {}
    for reservation in inventory.reservations.values():
        invariant(reservation.ticket_type in counts, "%s: unknown ticket type %s", reservation.id, reservation.ticket_type)
        total = counts[reservation.ticket_type]
        held, sold, revenue, waiting, cancelled, checked_in = counted(reservation)
        total[0] += held
        total[1] += sold
        total[2] += revenue
        total[3] += waiting
        total[4] += cancelled
        total[5] += checked_in
        if user_seats := seats_counted(reservation):
            seats[reservation.user_id] = seats.get(reservation.user_id, 0) + user_seats
    return {code: (t[0], t[1], t[2], t[3], t[4], t[5]) for code, t in counts.items()}, seats


def check_all(inventory: InventoryState, *, counters: bool = True) -> None:
    """Recompute every counter from the reservations and compare. Without `counters` (the counters
    were just derived from the reservations, as `restore` does), only what derivation cannot
    guarantee: capacity, per-user limits, waiting lists and numbering (O(types + users))."""
    event_id = inventory.event_id
    if counters:
        counts, seats = tally(inventory)
        for code, ticket_type in inventory.ticket_types.items():
            actual = dict(zip(COUNTERS, ticket_type.counts(), strict=True))
            expected = dict(zip(COUNTERS, counts[code], strict=True))
            invariant(actual == expected, "%s/%s: counters %s != %s", event_id, code, actual, expected)
        nonzero = {user: count for user, count in inventory.seats_by_user.items() if count}
        invariant(nonzero == seats, "%s: per-user seat counts disagree with reservations", event_id)
        for reservation in inventory.reservations.values():
            _check_reservation(inventory, reservation)
    for code, ticket_type in inventory.ticket_types.items():
        check_after_apply(inventory, ticket_type, None)
        waiting = len(inventory.waiting_list(code))
        invariant(waiting == ticket_type.waiting, "%s/%s: waiting list length %s != %s", event_id, code, waiting, ticket_type.waiting)
    limit = inventory.definition.per_user_limit if inventory.definition is not None else None
    if limit is not None:
        over = [user for user, count in inventory.seats_by_user.items() if count > limit]
        invariant(not over, "%s: per-user limit %s exceeded by %s", event_id, limit, over[:3])
    invariant(
        inventory.reservations_created == len(inventory.reservations),
        "%s: %s reservations numbered, %s exist",
        event_id,
        inventory.reservations_created,
        len(inventory.reservations),
    )
    check_queue(inventory)
    check_seats(inventory)


def check_seats(inventory: InventoryState) -> None:
    """No seat in two live reservations; every held or sold seat held by its reservation and every
    live seated reservation on its seats; counts equal the seats; the index equals its recount."""
    event_id, seats = inventory.event_id, inventory.seats
    if seats is None:
        for ticket_type in inventory.ticket_types.values():
            code = ticket_type.code
            invariant(not ticket_type.seated or ticket_type.capacity == 0, "%s/%s: seated capacity without a map", event_id, code)
        invariant(not any(r.seats for r in inventory.reservations.values()), "%s: seats without a map", event_id)
        return
    seat_map = seats.map
    holders: dict[int, str] = {}
    for reservation in inventory.reservations.values():
        if not reservation.seats or reservation.status not in ("held", "confirmed"):
            continue
        count, quantity = len(reservation.seats), reservation.quantity
        invariant(count == quantity, "%s: %s seats for %s tickets", reservation.id, count, quantity)
        for seat_id in reservation.seats:
            seat = present(seat_map.number.get(seat_id), "%s holds %s, which is not on the map", reservation.id, seat_id)
            invariant(seat not in holders, "seat %s is in two live reservations: %s and %s", seat_id, holders.get(seat), reservation.id)
            holders[seat] = reservation.id
            invariant(seat_map.type_of[seat] == reservation.ticket_type, "%s holds %s of another type", reservation.id, seat_id)
        if reservation.status == "confirmed":
            invariant(tuple(t.seat for t in reservation.tickets) == reservation.seats, "%s: tickets' seats differ", reservation.id)
    actual = {seat: holder for seat, holder in enumerate(seats.holder) if holder is not None}
    invariant(actual == holders, "%s: %s seats held on the map, %s by live reservations", event_id, len(actual), len(holders))
    invariant(not set(seats.blocked) & set(actual), "%s: a blocked seat is held", event_id)
    taken: dict[str, int] = dict.fromkeys(seat_map.type_rows, 0)
    blocked: dict[str, int] = {}
    for seat in actual:
        taken[seat_map.type_of[seat]] += 1
    for seat in seats.blocked:
        blocked[seat_map.type_of[seat]] = blocked.get(seat_map.type_of[seat], 0) + 1
    invariant(taken == seats.taken, "%s: seats taken per type %s, the count says %s", event_id, taken, seats.taken)
    for code, ticket_type in inventory.ticket_types.items():
        if not ticket_type.seated:
            invariant(code not in seat_map.type_rows, "%s: seats of %s, which is not seated", event_id, code)
            continue
        invariant(ticket_type.capacity == seat_map.seats_of_type(code), "%s/%s: capacity is not the seat count", event_id, code)
        invariant(ticket_type.blocked == blocked.get(code, 0), "%s/%s: blocked count", event_id, code)
        invariant(ticket_type.held + ticket_type.sold == taken.get(code, 0), "%s/%s: held + sold is not the seats taken", event_id, code)
    fresh = SeatState(seat_map)
    fresh.holder = list(seats.holder)
    fresh.blocked = dict(seats.blocked)
    fresh.refresh_free()
    fresh.reindex(range(len(seat_map.row_keys)))
    invariant(fresh.free == seats.free, "%s: the free seats differ from their recount", event_id)
    invariant(fresh.trees == seats.trees, "%s: the free-run index differs from its recount", event_id)


def check_queue(inventory: InventoryState) -> None:
    """The waiting room's derived values agree with its entries; each entry is in line once."""
    queue, event_id = inventory.queue, inventory.event_id
    active = sum(1 for entry in queue.entries.values() if entry.status == "admitted" and not entry.finished)
    invariant(active == queue.active, "%s: %s admissions active, the count says %s", event_id, active, queue.active)
    invariant(queue.joined == len(queue.entries), "%s: %s joins numbered, %s entries", event_id, queue.joined, len(queue.entries))
    invariant(0 <= queue.head <= len(queue.line), "%s: the line's head %s is outside it", event_id, queue.head)
    invariant(len(set(queue.line)) == len(queue.line), "%s: an entry is in line twice", event_id)
    behind = [entry_id for entry_id in queue.line[: queue.head] if queue.entries[entry_id].status == "waiting"]
    invariant(not behind, "%s: %s waiting behind the head", event_id, behind[:3])
    invariant(not (queue.shuffled and queue.pre), "%s: entries left in the pre-queue after the shuffle", event_id)
    for user_id, entry_id in queue.of_user.items():
        invariant(queue.entries[entry_id].user_id == user_id, "%s: %s is not %s's entry", event_id, entry_id, user_id)


def _check_reservation(inventory: InventoryState, reservation: Reservation) -> None:
    if reservation.status == "confirmed":
        invariant(len(reservation.tickets) == reservation.quantity, "%s: ticket count", reservation.id)
    if inventory.status == "cancelled":
        invariant(reservation.status not in COUNTED_STATUSES, "cancelled event has a %s reservation", reservation.status)
