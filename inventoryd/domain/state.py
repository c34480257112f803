"""The state of one event's inventory, the values it holds, and the one rule for its counters.

Every mutation goes through the few primitives of `InventoryState` (`set_attr`, `set_item`,
`append`, `insort`, `pop_expiry`, `put_reservation`), which write an undo log while a batch is open, so that
the actor can roll a whole batch back if its journal append fails.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, MutableSequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal, get_args

import msgspec

from inventoryd.domain.checks import InvariantViolation, invariant
from inventoryd.domain.queue import QueueState
from inventoryd.domain.records import EventDefinition, TicketTypeDefinition
from inventoryd.domain.seats import SeatState

ReservationStatus = Literal["held", "confirmed", "cancelled", "expired", "waitlisted"]
RESERVATION_STATUSES: Final[tuple[ReservationStatus, ...]] = get_args(ReservationStatus)
TicketStatus = Literal["valid", "checked_in", "cancelled"]
TICKET_STATUSES: Final[tuple[TicketStatus, ...]] = get_args(TicketStatus)
# "new" until the event's creation is applied; only the others are ever shown.
ShownEventStatus = Literal["on_sale", "cancelled"]
EventStatus = Literal["new"] | ShownEventStatus
# Why the service itself cancelled a reservation (a buyer's or organizer's cancel has no reason).
CancelReason = Literal["capacity_lowered"]
# Statuses whose seats count against the per-user limit.
COUNTED_STATUSES: Final[tuple[ReservationStatus, ...]] = ("held", "confirmed", "waitlisted")


class Ticket(msgspec.Struct, frozen=True, gc=False):
    id: str
    status: TicketStatus
    checked_in_at: datetime | None = None
    # Its seat, for a seated ticket type.
    seat: str | None = None


class Reservation(msgspec.Struct, frozen=True, gc=False):
    """One reservation as the API shows it. Immutable: a change replaces it, which keeps the
    committed copy the actor publishes safe from the next batch's uncommitted changes."""

    id: str
    event_id: str
    ticket_type: str
    quantity: int
    user_id: str
    status: ReservationStatus
    amount: int
    created_at: datetime
    expires_at: datetime | None
    confirmed_at: datetime | None = None
    cancelled_at: datetime | None = None
    refunded: bool = False
    # Set when the service cancelled it on its own: the ticket type's capacity fell below what it
    # waited for, so it could never be served (the line does not wait behind it).
    cancel_reason: CancelReason | None = None
    tickets: tuple[Ticket, ...] = ()
    # For a seated ticket type: its seats (ticket i has seat i), and whether they must be side by
    # side when the service picks them (best available, also when promoted from the waiting list).
    seats: tuple[str, ...] = ()
    adjacent: bool = True
    # Set while waitlisted, by the reader (it changes as the list moves); never stored.
    position: int | None = None


# -- the counters: how a reservation's status moves them -------------------------------------------

# A ticket type's counters, in the order `counted` gives them.
COUNTERS: Final = ("held", "sold", "revenue", "waiting", "cancelled", "checked_in")
Counts = tuple[int, int, int, int, int, int]
NOTHING: Final[Counts] = (0, 0, 0, 0, 0, 0)


def counted(reservation: Reservation) -> Counts:
    """What one reservation adds to its ticket type's counters (see COUNTERS): the only place that
    says how a status moves them. Held seats are held, confirmed ones sold (and their amount is
    revenue), a waiting entry is one waiting, cancelled seats are counted as cancelled, expired
    ones nowhere; a ticket checked in stays counted, whatever happens to its reservation after."""
    checked_in = sum(1 for ticket in reservation.tickets if ticket.status == "checked_in") if reservation.tickets else 0
    quantity = reservation.quantity
    match reservation.status:
        case "held":
            return (quantity, 0, 0, 0, 0, checked_in)
        case "confirmed":
            return (0, quantity, reservation.amount, 0, 0, checked_in)
        case "waitlisted":
            return (0, 0, 0, 1, 0, checked_in)
        case "cancelled":
            return (0, 0, 0, 0, quantity, checked_in)
        case "expired":
            return (0, 0, 0, 0, 0, checked_in)
    raise InvariantViolation(f"{reservation.id}: unknown status {reservation.status!r}")


def seats_counted(reservation: Reservation) -> int:
    """The seats a reservation counts against its buyer's per-user limit."""
    return reservation.quantity if reservation.status in COUNTED_STATUSES else 0


@dataclass(slots=True)
class TicketTypeState:
    code: str
    name: str
    price: int
    capacity: int
    held: int = 0
    sold: int = 0
    checked_in: int = 0
    # Seats of reservations that were cancelled (held, confirmed or waitlisted ones).
    cancelled: int = 0
    # Sum of the amounts of confirmed reservations (refunded ones leave it again).
    revenue: int = 0
    # Reservation ids in the order they joined the waiting list; entries before `waitlist_head`
    # have left it, and entries after it that are no longer waitlisted are skipped.
    waitlist: list[str] = field(default_factory=list)
    waitlist_head: int = 0
    waiting: int = 0
    # A seated type's capacity is its seat count on the map; blocked seats are never sold.
    seated: bool = False
    blocked: int = 0

    @property
    def free(self) -> int:
        """Seats neither held, sold nor blocked."""
        return self.capacity - self.held - self.sold - self.blocked

    @property
    def available(self) -> int:
        """What a newcomer can hold now: the free seats, unless buyers wait for them. While anyone
        waits, freed seats go to the line (first in, first out), never to a newcomer."""
        return 0 if self.waiting else self.capacity - self.held - self.sold - self.blocked

    def counts(self) -> Counts:
        return (self.held, self.sold, self.revenue, self.waiting, self.cancelled, self.checked_in)


class TicketTypeSummary(msgspec.Struct, frozen=True, gc=False):
    code: str
    name: str
    price: int
    capacity: int
    available: int
    held: int
    sold: int
    waiting: int
    checked_in: int
    cancelled: int
    revenue: int
    seated: bool = False
    blocked: int = 0


class EventSummary(msgspec.Struct, frozen=True, gc=False):
    """The event and its counters at one moment: what the actor publishes after every commit, and
    the answer to event-level commands (so that an idempotent replay shows the same)."""

    definition: EventDefinition
    status: ShownEventStatus
    ticket_types: tuple[TicketTypeSummary, ...]
    last_seq: int


# -- the undo log ----------------------------------------------------------------------------------

_MISSING: Any = object()


class _Undo:
    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: list[tuple[Any, ...]] = []

    def rollback(self) -> None:
        for entry in reversed(self.entries):
            match entry:
                case ("attr", target, name, old):
                    setattr(target, name, old)
                case ("item", mapping, key, old):
                    if old is _MISSING:
                        del mapping[key]
                    else:
                        mapping[key] = old
                case ("heappush", heap, item):
                    heapq.heappush(heap, item)
                case ("truncate", sequence, length):
                    del sequence[length:]
                case ("delete", sequence, index):
                    del sequence[index]
                case ("call", undo):
                    undo()
                case _:
                    raise InvariantViolation(f"unknown undo entry {entry!r}")
        self.entries.clear()


@dataclass(slots=True)
class InventoryState:
    event_id: str
    definition: EventDefinition | None = None
    status: EventStatus = "new"
    ticket_types: dict[str, TicketTypeState] = field(default_factory=dict)
    reservations: dict[str, Reservation] = field(default_factory=dict)
    # Held + confirmed + waiting seats per user: what the per-user limit counts.
    seats_by_user: dict[str, int] = field(default_factory=dict)
    # (expires_at, reservation_id) of holds; entries whose hold has ended are skipped lazily.
    expiry_heap: list[tuple[datetime, str]] = field(default_factory=list)
    reservations_created: int = 0
    last_seq: int = 0
    # The waiting room (empty unless the event has one).
    queue: QueueState = field(default_factory=QueueState)
    # The seats, once a seat map is put (reserved seating).
    seats: SeatState | None = None
    _undo: _Undo | None = None

    # -- batches ---------------------------------------------------------------------------------

    def begin(self) -> None:
        invariant(self._undo is None, "begin() inside a batch")
        self._undo = _Undo()

    def commit(self) -> None:
        invariant(self._undo is not None, "commit() outside a batch")
        self._undo = None

    def rollback(self) -> None:
        undo = self._undo
        if undo is None:
            raise InvariantViolation("rollback() outside a batch")
        undo.rollback()
        self._undo = None

    @property
    def in_batch(self) -> bool:
        return self._undo is not None

    # -- mutations, all undoable -----------------------------------------------------------------

    def set_attr(self, target: Any, name: str, value: Any) -> None:
        if self._undo is not None:
            self._undo.entries.append(("attr", target, name, getattr(target, name)))
        setattr(target, name, value)

    def set_item(self, mapping: dict[Any, Any], key: Any, value: Any) -> None:
        if self._undo is not None:
            self._undo.entries.append(("item", mapping, key, mapping.get(key, _MISSING)))
        mapping[key] = value

    def set_index(self, sequence: MutableSequence[Any], index: int, value: Any) -> None:
        if self._undo is not None:
            self._undo.entries.append(("item", sequence, index, sequence[index]))
        sequence[index] = value

    def pop_item(self, mapping: dict[Any, Any], key: Any) -> None:
        """Remove `key` from `mapping` (it must be there)."""
        old = mapping.pop(key)
        if self._undo is not None:
            self._undo.entries.append(("item", mapping, key, old))

    def on_rollback(self, undo: Callable[[], None]) -> None:
        """Call `undo` if the batch is rolled back, after undoing what is written after this."""
        if self._undo is not None:
            self._undo.entries.append(("call", undo))

    def append(self, sequence: list[str], item: str) -> None:
        if self._undo is not None:
            self._undo.entries.append(("truncate", sequence, len(sequence)))
        sequence.append(item)

    def insort(self, sequence: list[int], item: int) -> None:
        """Insert `item` into the ascending `sequence`, keeping it sorted."""
        index = bisect.bisect_right(sequence, item)
        if self._undo is not None:
            self._undo.entries.append(("delete", sequence, index))
        sequence.insert(index, item)

    def push_expiry(self, item: tuple[datetime, str]) -> None:
        # Undoing a push would need a removal; instead the entry stays and is skipped lazily,
        # because the reservation it names no longer exists or is no longer held.
        heapq.heappush(self.expiry_heap, item)

    def pop_expiry(self) -> tuple[datetime, str]:
        item = heapq.heappop(self.expiry_heap)
        if self._undo is not None:
            self._undo.entries.append(("heappush", self.expiry_heap, item))
        return item

    def put_reservation(self, reservation: Reservation) -> None:
        """Store `reservation` (new, or replacing the one with its id) and move its ticket type's
        counters and its buyer's seats from what the old one counted to what this one counts."""
        previous = self.reservations.get(reservation.id)
        after = counted(reservation)
        if previous is None:
            before, seats = NOTHING, seats_counted(reservation)
        else:
            before, seats = counted(previous), seats_counted(reservation) - seats_counted(previous)
        if before != after:
            # Each counter by what `after` counts more than `before` (in COUNTERS' order; written
            # out, not looped: this runs for every record).
            ticket_type = self.ticket_types[reservation.ticket_type]
            held, sold, revenue, waiting, cancelled, checked_in = after
            was_held, was_sold, was_revenue, was_waiting, was_cancelled, was_checked_in = before
            if held != was_held:
                self.set_attr(ticket_type, "held", ticket_type.held + held - was_held)
            if sold != was_sold:
                self.set_attr(ticket_type, "sold", ticket_type.sold + sold - was_sold)
            if revenue != was_revenue:
                self.set_attr(ticket_type, "revenue", ticket_type.revenue + revenue - was_revenue)
            if waiting != was_waiting:
                self.set_attr(ticket_type, "waiting", ticket_type.waiting + waiting - was_waiting)
            if cancelled != was_cancelled:
                self.set_attr(ticket_type, "cancelled", ticket_type.cancelled + cancelled - was_cancelled)
            if checked_in != was_checked_in:
                self.set_attr(ticket_type, "checked_in", ticket_type.checked_in + checked_in - was_checked_in)
        if seats:
            user_seats = self.seats_by_user.get(reservation.user_id, 0) + seats
            if user_seats < 0:
                raise InvariantViolation(f"user {reservation.user_id} would hold {user_seats} seats")
            self.set_item(self.seats_by_user, reservation.user_id, user_seats)
        self.set_item(self.reservations, reservation.id, reservation)

    def replace(self, reservation: Reservation, **changes: Any) -> Reservation:
        """`put_reservation` of `reservation` with `changes`; returns the new value."""
        changed = msgspec.structs.replace(reservation, **changes)
        self.put_reservation(changed)
        return changed

    def add_ticket_type(self, definition: TicketTypeDefinition) -> None:
        self.set_item(
            self.ticket_types,
            definition.code,
            TicketTypeState(definition.code, definition.name, definition.price, definition.capacity, seated=definition.seated),
        )

    # -- queries ---------------------------------------------------------------------------------

    def require_definition(self) -> EventDefinition:
        """The event's definition, which every state but "new" has."""
        definition = self.definition
        if definition is None:
            raise InvariantViolation(f"{self.event_id}: no definition in status {self.status}")
        return definition

    def next_expiry(self) -> datetime | None:
        """When the earliest live hold falls due (stale heap entries are dropped on the way)."""
        while self.expiry_heap:
            expires_at, reservation_id = self.expiry_heap[0]
            reservation = self.reservations.get(reservation_id)
            if reservation is not None and reservation.status == "held" and reservation.expires_at == expires_at:
                return expires_at
            self.pop_expiry()
        return None

    def summary(self) -> EventSummary:
        status = self.status
        if status == "new":
            raise InvariantViolation(f"{self.event_id}: a summary before the event's creation")
        return EventSummary(
            definition=self.require_definition(),
            status=status,
            ticket_types=tuple(
                TicketTypeSummary(
                    code=state.code,
                    name=state.name,
                    price=state.price,
                    capacity=state.capacity,
                    available=0 if status == "cancelled" else state.available,
                    held=state.held,
                    sold=state.sold,
                    waiting=state.waiting,
                    checked_in=state.checked_in,
                    cancelled=state.cancelled,
                    revenue=state.revenue,
                    seated=state.seated,
                    blocked=state.blocked,
                )
                for state in self.ticket_types.values()
            ),
            last_seq=self.last_seq,
        )

    def waiting_list(self, code: str) -> list[str]:
        """The ids waiting for a ticket type, first in line first."""
        ticket_type = self.ticket_types[code]
        return [
            reservation_id
            for reservation_id in ticket_type.waitlist[ticket_type.waitlist_head :]
            if self.reservations[reservation_id].status == "waitlisted"
        ]
