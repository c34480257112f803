"""The inventory of one event as a pure state machine.

`Inventory.decide(command)` looks at the state and returns the log records the command produces and
the reply it earns; `Inventory.apply(seq, record)` folds one record into the state. Neither does I/O
or knows asyncio: the actor calls them live, recovery calls `apply` over the log, and the property
tests call both against a reference model. Expected outcomes (`sold_out`, `hold_expired`, …) are
reply values; states that must never exist are `invariant` failures, checked after every apply.

Decisions within one batch see each other (the actor applies each decision's records before the next
decision), and an undo log lets the actor roll the whole batch back if its journal append fails.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, assert_never

import msgspec

from inventoryd import limits

# ---------------------------------------------------------------------------------------------
# Identifiers. Reservation and ticket ids carry their event's key, so a request for a reservation
# is routed to its actor without a lookup.

EVENT_PREFIX = "evt_"
RESERVATION_PREFIX = "rsv_"
TICKET_PREFIX = "tkt_"


def event_key(event_id: str) -> str:
    return event_id.removeprefix(EVENT_PREFIX)


def reservation_id_for(event_id: str, number: int) -> str:
    return f"{RESERVATION_PREFIX}{event_key(event_id)}_{number}"


def ticket_id_for(reservation_id: str, index: int) -> str:
    return f"{TICKET_PREFIX}{reservation_id.removeprefix(RESERVATION_PREFIX)}_{index}"


def event_id_of(reservation_or_ticket_id: str) -> str | None:
    """The event a reservation or ticket id belongs to, or None if the id is not one of ours."""
    for prefix in (RESERVATION_PREFIX, TICKET_PREFIX):
        if reservation_or_ticket_id.startswith(prefix):
            key, _, _ = reservation_or_ticket_id.removeprefix(prefix).partition("_")
            return EVENT_PREFIX + key if key.isalnum() else None
    return None


def reservation_id_of_ticket(ticket_id: str) -> str | None:
    if not ticket_id.startswith(TICKET_PREFIX):
        return None
    rest, _, index = ticket_id.removeprefix(TICKET_PREFIX).rpartition("_")
    return RESERVATION_PREFIX + rest if index.isdigit() and rest else None


# ---------------------------------------------------------------------------------------------
# The event's definition (as created) and the log records. Records are the durable schema: add
# fields with defaults, never change the meaning of an existing one.
#
# These value types, like the reservations and replies below, are immutable and hold only
# immutables, so they can never be part of a reference cycle: `gc=False` keeps them out of the
# cyclic collector, whose full passes would otherwise walk every reservation an on-sale creates.


class TicketTypeDefinition(msgspec.Struct, frozen=True, gc=False):
    code: str
    name: str
    price: int
    capacity: int


class EventDefinition(msgspec.Struct, frozen=True, gc=False):
    id: str
    name: str
    starts_at: datetime
    currency: str
    ticket_types: tuple[TicketTypeDefinition, ...]
    created_at: datetime
    description: str | None = None
    venue: str | None = None
    city: str | None = None
    category: str | None = None
    ends_at: datetime | None = None
    sale_starts_at: datetime | None = None
    sale_ends_at: datetime | None = None
    cancel_until: datetime | None = None
    per_user_limit: int | None = None
    hold_seconds: int = limits.HOLD_SECONDS_DEFAULT
    organizer_id: str | None = None


class EventCreated(msgspec.Struct, frozen=True, gc=False, tag="event_created"):
    event: EventDefinition


class ReservationHeld(msgspec.Struct, frozen=True, gc=False, tag="reservation_held"):
    reservation_id: str
    user_id: str
    ticket_type: str
    quantity: int
    amount: int
    at: datetime
    expires_at: datetime


class ReservationConfirmed(msgspec.Struct, frozen=True, gc=False, tag="reservation_confirmed"):
    reservation_id: str
    at: datetime


class ReservationCancelled(msgspec.Struct, frozen=True, gc=False, tag="reservation_cancelled"):
    reservation_id: str
    at: datetime
    refunded: bool


class HoldExpired(msgspec.Struct, frozen=True, gc=False, tag="hold_expired"):
    reservation_id: str
    at: datetime


class ReservationWaitlisted(msgspec.Struct, frozen=True, gc=False, tag="reservation_waitlisted"):
    reservation_id: str
    user_id: str
    ticket_type: str
    quantity: int
    amount: int
    at: datetime


class WaitlistPromoted(msgspec.Struct, frozen=True, gc=False, tag="waitlist_promoted"):
    """The head of a ticket type's waiting list got its seats: it is now held, with a fresh hold."""

    reservation_id: str
    at: datetime
    expires_at: datetime


class TicketCheckedIn(msgspec.Struct, frozen=True, gc=False, tag="ticket_checked_in"):
    ticket_id: str
    reservation_id: str
    at: datetime


class EventUpdated(msgspec.Struct, frozen=True, gc=False, tag="event_updated"):
    """The event's descriptive fields, sale window or limits changed: `event` is the new whole."""

    event: EventDefinition


class TicketTypeAdded(msgspec.Struct, frozen=True, gc=False, tag="ticket_type_added"):
    ticket_type: TicketTypeDefinition


class TicketTypeChanged(msgspec.Struct, frozen=True, gc=False, tag="ticket_type_changed"):
    code: str
    name: str
    price: int
    capacity: int


class EventCancelled(msgspec.Struct, frozen=True, gc=False, tag="event_cancelled"):
    """The organizer cancelled the event: holds released, confirmed reservations refunded, the
    waiting lists emptied, all in this one record."""

    at: datetime


Record = (
    EventCreated
    | ReservationHeld
    | ReservationConfirmed
    | ReservationCancelled
    | HoldExpired
    | ReservationWaitlisted
    | WaitlistPromoted
    | TicketCheckedIn
    | EventUpdated
    | TicketTypeAdded
    | TicketTypeChanged
    | EventCancelled
)

# ---------------------------------------------------------------------------------------------
# State.

ReservationStatus = Literal["held", "confirmed", "cancelled", "expired", "waitlisted"]
TicketStatus = Literal["valid", "checked_in", "cancelled"]
# Statuses whose seats count against the per-user limit.
COUNTED_STATUSES = ("held", "confirmed", "waitlisted")


class Ticket(msgspec.Struct, frozen=True, gc=False):
    id: str
    status: TicketStatus
    checked_in_at: datetime | None = None


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
    tickets: tuple[Ticket, ...] = ()
    # Set while waitlisted, by the reader (it changes as the list moves); never stored.
    position: int | None = None


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

    @property
    def available(self) -> int:
        return self.capacity - self.held - self.sold


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


class EventSummary(msgspec.Struct, frozen=True, gc=False):
    """The event and its counters at one moment: what the actor publishes after every commit, and
    the answer to event-level commands (so that an idempotent replay shows the same)."""

    definition: EventDefinition
    status: str
    ticket_types: tuple[TicketTypeSummary, ...]
    last_seq: int


class TicketTypeSnapshot(msgspec.Struct, frozen=True, gc=False, array_like=True):
    code: str
    name: str
    price: int
    capacity: int
    # Ids still waiting, first in line first.
    waiting: tuple[str, ...]


class InventorySnapshot(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """What cannot be derived of an inventory at `last_seq`: counters, per-user seats and the
    expiry heap are rebuilt from the reservations on restore (and then checked)."""

    definition: EventDefinition
    status: str
    ticket_types: tuple[TicketTypeSnapshot, ...]
    reservations: tuple[Reservation, ...]
    reservations_created: int
    last_seq: int


SNAPSHOT_ENCODER = msgspec.msgpack.Encoder()
SNAPSHOT_DECODER = msgspec.msgpack.Decoder(InventorySnapshot)


# ---------------------------------------------------------------------------------------------
# Commands and replies.


class CreateEvent(msgspec.Struct, frozen=True, gc=False, tag="create_event"):
    event: EventDefinition


class Reserve(msgspec.Struct, frozen=True, gc=False, tag="reserve"):
    user_id: str
    ticket_type: str
    quantity: int
    now: datetime
    # Join the waiting list when the seats are not there.
    waitlist: bool = False


class Confirm(msgspec.Struct, frozen=True, gc=False, tag="confirm"):
    reservation_id: str
    now: datetime


class Cancel(msgspec.Struct, frozen=True, gc=False, tag="cancel"):
    reservation_id: str
    now: datetime
    # Organizers and admins may cancel after the event's cancel_until; buyers may not.
    privileged: bool = False


class ExpireDue(msgspec.Struct, frozen=True, gc=False, tag="expire_due"):
    now: datetime


class CheckIn(msgspec.Struct, frozen=True, gc=False, tag="check_in"):
    ticket_id: str
    now: datetime


EVENT_FIELDS_UPDATABLE = frozenset(
    {
        "name",
        "description",
        "venue",
        "city",
        "category",
        "starts_at",
        "ends_at",
        "sale_starts_at",
        "sale_ends_at",
        "cancel_until",
        "per_user_limit",
        "hold_seconds",
    }
)


class UpdateEvent(msgspec.Struct, frozen=True, tag="update_event"):
    """Set these fields of the event (a field absent is left alone; None clears an optional one).
    The changes, not a whole new definition, so that concurrent updates do not undo each other."""

    changes: dict[str, Any]


class AddTicketType(msgspec.Struct, frozen=True, gc=False, tag="add_ticket_type"):
    ticket_type: TicketTypeDefinition


class ChangeTicketType(msgspec.Struct, frozen=True, gc=False, tag="change_ticket_type"):
    code: str
    # Raised capacity may promote waiting buyers, whose holds start now.
    now: datetime
    name: str | None = None
    price: int | None = None
    capacity: int | None = None


class CancelEvent(msgspec.Struct, frozen=True, gc=False, tag="cancel_event"):
    now: datetime


Command = (
    CreateEvent | Reserve | Confirm | Cancel | ExpireDue | CheckIn | UpdateEvent | AddTicketType | ChangeTicketType | CancelEvent
)

RejectionCode = Literal[
    "sold_out",
    "insufficient_tickets",
    "limit_exceeded",
    "sale_not_open",
    "event_cancelled",
    "not_found",
    "hold_expired",
    "conflict",
    "cancellation_closed",
    "already_checked_in",
    "capacity_below_reserved",
    "invalid_request",
]


class Accepted(msgspec.Struct, frozen=True, gc=False, tag="accepted"):
    """The command succeeded. `reservation_id` names the reservation it made or changed (None for
    event-level commands); the caller reads its state once the decision's records are applied."""

    reservation_id: str | None = None
    # True when the command changed nothing because it had already been done (a repeated confirm).
    unchanged: bool = False


class Rejected(msgspec.Struct, frozen=True, gc=False, tag="rejected"):
    code: RejectionCode
    detail: str
    # For insufficient_tickets: how many are left.
    available: int | None = None
    # For already_checked_in: when.
    checked_in_at: datetime | None = None
    # For invalid_request: the field at fault.
    field: str | None = None


Reply = Accepted | Rejected


@dataclass(slots=True)
class Decision:
    records: list[Record]
    reply: Reply


class InvariantViolation(AssertionError):
    """A state that must never exist. Not an outcome: a bug, or a corrupt log."""


def invariant(condition: bool, message: str, *arguments: object) -> None:
    """Raise InvariantViolation unless `condition`. Not `assert`: it must survive `python -O`.
    The message is %-formatted with `arguments` only on failure: these run on every apply."""
    if not condition:
        raise InvariantViolation(message % arguments if arguments else message)


# ---------------------------------------------------------------------------------------------
# The undo log: every mutation of an Inventory goes through it, so a batch can be rolled back.

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
                case _:
                    raise InvariantViolation(f"unknown undo entry {entry!r}")
        self.entries.clear()


@dataclass(slots=True)
class Inventory:
    event_id: str
    definition: EventDefinition | None = None
    status: Literal["new", "on_sale", "cancelled"] = "new"
    ticket_types: dict[str, TicketTypeState] = field(default_factory=dict)
    reservations: dict[str, Reservation] = field(default_factory=dict)
    # Held + confirmed seats per user: what the per-user limit counts.
    seats_by_user: dict[str, int] = field(default_factory=dict)
    # (expires_at, reservation_id) of holds; entries whose hold has ended are skipped lazily.
    expiry_heap: list[tuple[datetime, str]] = field(default_factory=list)
    reservations_created: int = 0
    last_seq: int = 0
    _undo: _Undo | None = None

    # -- batches --------------------------------------------------------------------------------

    def begin(self) -> None:
        invariant(self._undo is None, "begin() inside a batch")
        self._undo = _Undo()

    def commit(self) -> None:
        invariant(self._undo is not None, "commit() outside a batch")
        self._undo = None

    def rollback(self) -> None:
        invariant(self._undo is not None, "rollback() outside a batch")
        assert self._undo is not None
        self._undo.rollback()
        self._undo = None

    def _set_attr(self, target: Any, name: str, value: Any) -> None:
        if self._undo is not None:
            self._undo.entries.append(("attr", target, name, getattr(target, name)))
        setattr(target, name, value)

    def _set_item(self, mapping: dict[Any, Any], key: Any, value: Any) -> None:
        if self._undo is not None:
            self._undo.entries.append(("item", mapping, key, mapping.get(key, _MISSING)))
        mapping[key] = value

    def _heap_push(self, item: tuple[datetime, str]) -> None:
        # Undoing a push would need a removal; instead the entry stays and is skipped lazily,
        # because the reservation it names no longer exists or is no longer held.
        heapq.heappush(self.expiry_heap, item)

    def _heap_pop(self) -> tuple[datetime, str]:
        item = heapq.heappop(self.expiry_heap)
        if self._undo is not None:
            self._undo.entries.append(("heappush", self.expiry_heap, item))
        return item

    # -- queries --------------------------------------------------------------------------------

    def next_expiry(self) -> datetime | None:
        """When the earliest live hold falls due (stale heap entries are dropped on the way)."""
        while self.expiry_heap:
            expires_at, reservation_id = self.expiry_heap[0]
            reservation = self.reservations.get(reservation_id)
            if reservation is not None and reservation.status == "held" and reservation.expires_at == expires_at:
                return expires_at
            self._heap_pop()
        return None

    def availability(self) -> dict[str, int]:
        return {code: ticket_type.available for code, ticket_type in self.ticket_types.items()}

    def summary(self) -> EventSummary:
        assert self.definition is not None
        return EventSummary(
            definition=self.definition,
            status=self.status,
            ticket_types=tuple(
                TicketTypeSummary(
                    code=state.code,
                    name=state.name,
                    price=state.price,
                    capacity=state.capacity,
                    available=state.available,
                    held=state.held,
                    sold=state.sold,
                    waiting=state.waiting,
                    checked_in=state.checked_in,
                    cancelled=state.cancelled,
                    revenue=state.revenue,
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

    # -- decide ---------------------------------------------------------------------------------

    def decide(self, command: Command) -> Decision:
        match command:
            case CreateEvent():
                return self._decide_create(command)
            case Reserve():
                return self._decide_reserve(command)
            case Confirm():
                return self._decide_confirm(command)
            case Cancel():
                decision = self._decide_cancel(command)
            case ExpireDue():
                decision = self._decide_expire(command)
            case CheckIn():
                return self._decide_check_in(command)
            case UpdateEvent():
                return self._decide_update(command)
            case AddTicketType():
                return self._decide_add_ticket_type(command)
            case ChangeTicketType():
                decision = self._decide_change_ticket_type(command)
            case CancelEvent():
                return self._decide_cancel_event(command)
            case _:
                assert_never(command)
        # Seats freed, capacity raised, or a waiting entry left: the waiting lists may move.
        decision.records.extend(self._promotions(decision.records, command.now))
        return decision

    def _decide_create(self, command: CreateEvent) -> Decision:
        if self.status != "new":
            return Decision([], Rejected("conflict", "the event already exists"))
        invariant(command.event.id == self.event_id, "CreateEvent for another event")
        return Decision([EventCreated(command.event)], Accepted())

    def _refuse_unless_on_sale(self) -> Rejected | None:
        if self.status == "new":
            return Rejected("not_found", "no such event")
        if self.status == "cancelled":
            return Rejected("event_cancelled", "the event has been cancelled")
        return None

    def _decide_reserve(self, command: Reserve) -> Decision:
        if refusal := self._refuse_unless_on_sale():
            return Decision([], refusal)
        assert self.definition is not None
        definition = self.definition
        if definition.sale_starts_at is not None and command.now < definition.sale_starts_at:
            return Decision([], Rejected("sale_not_open", f"the sale opens at {_rfc3339(definition.sale_starts_at)}"))
        if definition.sale_ends_at is not None and command.now >= definition.sale_ends_at:
            return Decision([], Rejected("sale_not_open", f"the sale closed at {_rfc3339(definition.sale_ends_at)}"))
        ticket_type = self.ticket_types.get(command.ticket_type)
        if ticket_type is None:
            return Decision([], Rejected("not_found", f"the event has no ticket type {command.ticket_type!r}"))
        limit = definition.per_user_limit
        if limit is not None:
            seats = self.seats_by_user.get(command.user_id, 0)
            if seats + command.quantity > limit:
                return Decision(
                    [],
                    Rejected(
                        "limit_exceeded",
                        f"at most {limit} tickets per user for this event; this user has {seats}",
                    ),
                )
        reservation_id = reservation_id_for(self.event_id, self.reservations_created + 1)
        amount = ticket_type.price * command.quantity
        available = ticket_type.available
        if command.quantity <= available:
            record: Record = ReservationHeld(
                reservation_id=reservation_id,
                user_id=command.user_id,
                ticket_type=ticket_type.code,
                quantity=command.quantity,
                amount=amount,
                at=command.now,
                expires_at=command.now + timedelta(seconds=definition.hold_seconds),
            )
            return Decision([record], Accepted(reservation_id))
        if command.waitlist and command.quantity <= ticket_type.capacity:
            record = ReservationWaitlisted(
                reservation_id, command.user_id, ticket_type.code, command.quantity, amount, command.now
            )
            return Decision([record], Accepted(reservation_id))
        if available == 0:
            return Decision([], Rejected("sold_out", f"ticket type {ticket_type.code!r} is sold out", available=0))
        return Decision(
            [],
            Rejected(
                "insufficient_tickets",
                f"only {available} tickets of type {ticket_type.code!r} are left",
                available=available,
            ),
        )

    def _decide_confirm(self, command: Confirm) -> Decision:
        reservation = self.reservations.get(command.reservation_id)
        if reservation is None:
            return Decision([], Rejected("not_found", "no such reservation"))
        match reservation.status:
            case "confirmed":
                return Decision([], Accepted(reservation.id, unchanged=True))
            case "expired":
                return Decision([], Rejected("hold_expired", "the hold expired before it was confirmed"))
            case "cancelled":
                return Decision([], Rejected("conflict", "the reservation was cancelled"))
            case "waitlisted":
                return Decision([], Rejected("conflict", "the reservation is still on the waiting list"))
            case "held":
                assert reservation.expires_at is not None
                if command.now >= reservation.expires_at:
                    # The timer has not run yet; the hold is over all the same. Expire it now, so
                    # the log says what happened, and refuse the confirmation.
                    expired: list[Record] = [HoldExpired(reservation.id, at=command.now)]
                    expired.extend(self._promotions(expired, command.now))
                    return Decision(expired, Rejected("hold_expired", "the hold expired before it was confirmed"))
                record = ReservationConfirmed(reservation.id, at=command.now)
                return Decision([record], Accepted(reservation.id))
            case _:
                assert_never(reservation.status)

    def _decide_cancel(self, command: Cancel) -> Decision:
        reservation = self.reservations.get(command.reservation_id)
        if reservation is None:
            return Decision([], Rejected("not_found", "no such reservation"))
        assert self.definition is not None
        match reservation.status:
            case "cancelled":
                return Decision([], Accepted(reservation.id, unchanged=True))
            case "expired":
                return Decision([], Rejected("conflict", "the hold already expired"))
            case "held" | "waitlisted":
                record = ReservationCancelled(reservation.id, at=command.now, refunded=False)
                return Decision([record], Accepted(reservation.id))
            case "confirmed":
                cancel_until = self.definition.cancel_until
                if cancel_until is not None and command.now > cancel_until and not command.privileged:
                    return Decision(
                        [],
                        Rejected("cancellation_closed", f"cancellation closed at {_rfc3339(cancel_until)}"),
                    )
                if any(ticket.status == "checked_in" for ticket in reservation.tickets):
                    return Decision([], Rejected("conflict", "a ticket of this reservation was already checked in"))
                record = ReservationCancelled(reservation.id, at=command.now, refunded=True)
                return Decision([record], Accepted(reservation.id))
            case _:
                assert_never(reservation.status)

    def _decide_expire(self, command: ExpireDue) -> Decision:
        # Popping due entries goes through the undo log, so a rolled-back batch gets them back.
        # A rolled-back hold can leave an entry that a later hold with the same id and expiry
        # duplicates (ids are reused after a rollback), hence the set.
        records: list[Record] = []
        expiring: set[str] = set()
        while len(records) < limits.EXPIRIES_PER_MESSAGE_MAX:
            expires_at = self.next_expiry()
            if expires_at is None or expires_at > command.now:
                break
            _, reservation_id = self._heap_pop()
            if reservation_id not in expiring:
                expiring.add(reservation_id)
                records.append(HoldExpired(reservation_id, at=command.now))
        return Decision(records, Accepted())

    def _decide_check_in(self, command: CheckIn) -> Decision:
        reservation_id = reservation_id_of_ticket(command.ticket_id)
        reservation = self.reservations.get(reservation_id) if reservation_id else None
        ticket = next((t for t in reservation.tickets if t.id == command.ticket_id), None) if reservation else None
        if reservation is None or ticket is None:
            return Decision([], Rejected("not_found", "no such ticket"))
        match ticket.status:
            case "checked_in":
                assert ticket.checked_in_at is not None
                return Decision(
                    [],
                    Rejected(
                        "already_checked_in",
                        f"the ticket was checked in at {_rfc3339(ticket.checked_in_at)}",
                        checked_in_at=ticket.checked_in_at,
                    ),
                )
            case "cancelled":
                return Decision([], Rejected("conflict", "the ticket was cancelled"))
            case "valid":
                return Decision([TicketCheckedIn(ticket.id, reservation.id, command.now)], Accepted(reservation.id))
            case _:
                assert_never(ticket.status)

    def _decide_update(self, command: UpdateEvent) -> Decision:
        if refusal := self._refuse_unless_on_sale():
            return Decision([], refusal)
        assert self.definition is not None
        invariant(set(command.changes) <= EVENT_FIELDS_UPDATABLE, f"not updatable: {set(command.changes)}")
        updated = msgspec.structs.replace(self.definition, **command.changes)
        if updated.ends_at is not None and updated.ends_at < updated.starts_at:
            return Decision([], Rejected("invalid_request", "ends_at is before starts_at", field="$.ends_at"))
        if (
            updated.sale_starts_at is not None
            and updated.sale_ends_at is not None
            and updated.sale_ends_at <= updated.sale_starts_at
        ):
            return Decision([], Rejected("invalid_request", "sale_ends_at must be after sale_starts_at", field="$.sale_ends_at"))
        if updated.per_user_limit is not None:
            most = max(self.seats_by_user.values(), default=0)
            if most > updated.per_user_limit:
                return Decision(
                    [],
                    Rejected(
                        "conflict",
                        f"a buyer already has {most} tickets; per_user_limit may not fall below that",
                        field="$.per_user_limit",
                    ),
                )
        if updated == self.definition:
            return Decision([], Accepted(unchanged=True))
        return Decision([EventUpdated(updated)], Accepted())

    def _decide_add_ticket_type(self, command: AddTicketType) -> Decision:
        if refusal := self._refuse_unless_on_sale():
            return Decision([], refusal)
        if command.ticket_type.code in self.ticket_types:
            return Decision([], Rejected("conflict", f"ticket type {command.ticket_type.code!r} exists", field="$.code"))
        if len(self.ticket_types) >= limits.TICKET_TYPES_PER_EVENT_MAX:
            return Decision([], Rejected("conflict", f"at most {limits.TICKET_TYPES_PER_EVENT_MAX} ticket types"))
        return Decision([TicketTypeAdded(command.ticket_type)], Accepted())

    def _decide_change_ticket_type(self, command: ChangeTicketType) -> Decision:
        if refusal := self._refuse_unless_on_sale():
            return Decision([], refusal)
        ticket_type = self.ticket_types.get(command.code)
        if ticket_type is None:
            return Decision([], Rejected("not_found", f"the event has no ticket type {command.code!r}"))
        capacity = ticket_type.capacity if command.capacity is None else command.capacity
        reserved = ticket_type.held + ticket_type.sold
        if capacity < reserved:
            return Decision(
                [],
                Rejected(
                    "capacity_below_reserved",
                    f"capacity may not fall below the {reserved} tickets held or sold",
                    field="$.capacity",
                ),
            )
        record = TicketTypeChanged(
            code=ticket_type.code,
            name=ticket_type.name if command.name is None else command.name,
            price=ticket_type.price if command.price is None else command.price,
            capacity=capacity,
        )
        if (record.name, record.price, record.capacity) == (ticket_type.name, ticket_type.price, ticket_type.capacity):
            return Decision([], Accepted(unchanged=True))
        return Decision([record], Accepted())

    def _decide_cancel_event(self, command: CancelEvent) -> Decision:
        if self.status == "new":
            return Decision([], Rejected("not_found", "no such event"))
        if self.status == "cancelled":
            return Decision([], Accepted(unchanged=True))
        return Decision([EventCancelled(command.now)], Accepted())

    def _promotions(self, records: list[Record], now: datetime) -> list[Record]:
        """The waiting-list promotions that `records` make possible, strictly first in, first out:
        the head of a type's list is promoted when its whole quantity is free; nobody behind it
        goes first. Computed from the state before `records` plus what they change."""
        freed: dict[str, int] = {}
        leaving: set[str] = set()
        for record in records:
            match record:
                case ReservationCancelled() | HoldExpired():
                    reservation = self.reservations[record.reservation_id]
                    if reservation.status == "waitlisted":
                        leaving.add(reservation.id)
                        freed.setdefault(reservation.ticket_type, 0)
                    else:
                        freed[reservation.ticket_type] = freed.get(reservation.ticket_type, 0) + reservation.quantity
                case TicketTypeChanged():
                    delta = record.capacity - self.ticket_types[record.code].capacity
                    freed[record.code] = freed.get(record.code, 0) + delta
        if not freed or self.definition is None:
            return []
        hold = timedelta(seconds=self.definition.hold_seconds)
        promotions: list[Record] = []
        for code, extra in freed.items():
            ticket_type = self.ticket_types[code]
            available = ticket_type.available + extra
            for reservation_id in ticket_type.waitlist[ticket_type.waitlist_head :]:
                reservation = self.reservations[reservation_id]
                if reservation.status != "waitlisted" or reservation_id in leaving:
                    continue
                if reservation.quantity > available:
                    break
                available -= reservation.quantity
                promotions.append(WaitlistPromoted(reservation_id, at=now, expires_at=now + hold))
        return promotions

    # -- apply ----------------------------------------------------------------------------------

    def apply(self, seq: int, record: Record) -> None:
        invariant(seq == self.last_seq + 1, "event %s: record seq %s after %s", self.event_id, seq, self.last_seq)
        touched_type: TicketTypeState | None = None
        touched_user: str | None = None
        match record:
            case EventCreated(event=definition):
                invariant(self.status == "new", "EventCreated twice")
                invariant(definition.id == self.event_id, "EventCreated for another event")
                self._set_attr(self, "definition", definition)
                self._set_attr(self, "status", "on_sale")
                for ticket_type in definition.ticket_types:
                    self._add_ticket_type(ticket_type)
            case ReservationHeld() | ReservationWaitlisted():
                invariant(record.reservation_id not in self.reservations, "%s made twice", record.reservation_id)
                touched_type = self.ticket_types[record.ticket_type]
                touched_user = record.user_id
                held = isinstance(record, ReservationHeld)
                self._set_attr(self, "reservations_created", self.reservations_created + 1)
                self._set_item(
                    self.reservations,
                    record.reservation_id,
                    Reservation(
                        id=record.reservation_id,
                        event_id=self.event_id,
                        ticket_type=record.ticket_type,
                        quantity=record.quantity,
                        user_id=record.user_id,
                        status="held" if held else "waitlisted",
                        amount=record.amount,
                        created_at=record.at,
                        expires_at=record.expires_at if isinstance(record, ReservationHeld) else None,
                    ),
                )
                self._add_user_seats(record.user_id, record.quantity)
                if isinstance(record, ReservationHeld):
                    self._set_attr(touched_type, "held", touched_type.held + record.quantity)
                    self._heap_push((record.expires_at, record.reservation_id))
                else:
                    self._append(touched_type.waitlist, record.reservation_id)
                    self._set_attr(touched_type, "waiting", touched_type.waiting + 1)
            case WaitlistPromoted():
                reservation = self._reservation(record.reservation_id, "waitlisted")
                touched_type = self.ticket_types[reservation.ticket_type]
                self._set_attr(touched_type, "held", touched_type.held + reservation.quantity)
                self._set_attr(touched_type, "waiting", touched_type.waiting - 1)
                self._replace(reservation, status="held", expires_at=record.expires_at)
                self._heap_push((record.expires_at, record.reservation_id))
                self._advance_waitlist_head(touched_type)
            case ReservationConfirmed():
                reservation = self._reservation(record.reservation_id, "held")
                touched_type = self.ticket_types[reservation.ticket_type]
                self._set_attr(touched_type, "held", touched_type.held - reservation.quantity)
                self._set_attr(touched_type, "sold", touched_type.sold + reservation.quantity)
                self._set_attr(touched_type, "revenue", touched_type.revenue + reservation.amount)
                tickets = tuple(
                    Ticket(ticket_id_for(reservation.id, index), "valid") for index in range(1, reservation.quantity + 1)
                )
                self._replace(reservation, status="confirmed", confirmed_at=record.at, tickets=tickets)
            case ReservationCancelled():
                reservation = self._reservation(record.reservation_id, *COUNTED_STATUSES)
                touched_type = self.ticket_types[reservation.ticket_type]
                touched_user = reservation.user_id
                self._cancel(reservation, record.at, record.refunded)
            case HoldExpired():
                reservation = self._reservation(record.reservation_id, "held")
                touched_type = self.ticket_types[reservation.ticket_type]
                touched_user = reservation.user_id
                self._set_attr(touched_type, "held", touched_type.held - reservation.quantity)
                self._add_user_seats(reservation.user_id, -reservation.quantity)
                self._replace(reservation, status="expired")
            case TicketCheckedIn():
                reservation = self._reservation(record.reservation_id, "confirmed")
                touched_type = self.ticket_types[reservation.ticket_type]
                tickets = tuple(
                    msgspec.structs.replace(ticket, status="checked_in", checked_in_at=record.at)
                    if ticket.id == record.ticket_id
                    else ticket
                    for ticket in reservation.tickets
                )
                invariant(
                    any(ticket.id == record.ticket_id and ticket.status == "valid" for ticket in reservation.tickets),
                    f"check-in of {record.ticket_id}, which is not a valid ticket",
                )
                self._set_attr(touched_type, "checked_in", touched_type.checked_in + 1)
                self._replace(reservation, tickets=tickets)
            case EventUpdated(event=definition):
                invariant(self.status == "on_sale", "EventUpdated on an event not on sale")
                invariant(definition.id == self.event_id, "EventUpdated for another event")
                self._set_attr(self, "definition", definition)
            case TicketTypeAdded(ticket_type=definition):
                invariant(definition.code not in self.ticket_types, f"ticket type {definition.code} added twice")
                self._add_ticket_type(definition)
                touched_type = self.ticket_types[definition.code]
            case TicketTypeChanged():
                touched_type = self.ticket_types[record.code]
                self._set_attr(touched_type, "name", record.name)
                self._set_attr(touched_type, "price", record.price)
                self._set_attr(touched_type, "capacity", record.capacity)
            case EventCancelled():
                invariant(self.status == "on_sale", "EventCancelled on an event not on sale")
                self._set_attr(self, "status", "cancelled")
                for reservation in list(self.reservations.values()):
                    if reservation.status in COUNTED_STATUSES:
                        self._cancel(reservation, record.at, refunded=reservation.status == "confirmed")
                for ticket_type in self.ticket_types.values():
                    invariant(ticket_type.held == ticket_type.sold == ticket_type.waiting == 0, "cancel left seats")
                    self._check_local(ticket_type, None)
            case _:
                assert_never(record)
        self._set_attr(self, "last_seq", seq)
        self._check_local(touched_type, touched_user)

    def _add_ticket_type(self, definition: TicketTypeDefinition) -> None:
        self._set_item(
            self.ticket_types,
            definition.code,
            TicketTypeState(definition.code, definition.name, definition.price, definition.capacity),
        )

    def _cancel(self, reservation: Reservation, at: datetime, refunded: bool) -> None:
        ticket_type = self.ticket_types[reservation.ticket_type]
        match reservation.status:
            case "held":
                self._set_attr(ticket_type, "held", ticket_type.held - reservation.quantity)
            case "confirmed":
                self._set_attr(ticket_type, "sold", ticket_type.sold - reservation.quantity)
                self._set_attr(ticket_type, "revenue", ticket_type.revenue - reservation.amount)
            case "waitlisted":
                self._set_attr(ticket_type, "waiting", ticket_type.waiting - 1)
            case _:
                raise InvariantViolation(f"cancel of {reservation.id} in status {reservation.status}")
        self._set_attr(ticket_type, "cancelled", ticket_type.cancelled + reservation.quantity)
        self._add_user_seats(reservation.user_id, -reservation.quantity)
        # A ticket already used stays checked in: that is history, not a seat.
        tickets = tuple(
            msgspec.structs.replace(ticket, status="cancelled") if ticket.status == "valid" else ticket
            for ticket in reservation.tickets
        )
        self._replace(reservation, status="cancelled", cancelled_at=at, refunded=refunded, tickets=tickets)
        if reservation.status == "waitlisted":
            self._advance_waitlist_head(ticket_type)

    def _append(self, sequence: list[str], item: str) -> None:
        if self._undo is not None:
            self._undo.entries.append(("truncate", sequence, len(sequence)))
        sequence.append(item)

    def _advance_waitlist_head(self, ticket_type: TicketTypeState) -> None:
        """Move the head past entries that have left the list, so it stays short to walk."""
        head = ticket_type.waitlist_head
        while head < len(ticket_type.waitlist) and self.reservations[ticket_type.waitlist[head]].status != "waitlisted":
            head += 1
        if head != ticket_type.waitlist_head:
            self._set_attr(ticket_type, "waitlist_head", head)

    def _reservation(self, reservation_id: str, *statuses: str) -> Reservation:
        reservation = self.reservations.get(reservation_id)
        invariant(reservation is not None, "record for unknown reservation %s", reservation_id)
        assert reservation is not None
        invariant(
            reservation.status in statuses,
            "record for %s in status %s, expected one of %s",
            reservation_id,
            reservation.status,
            statuses,
        )
        return reservation

    def _replace(self, reservation: Reservation, **changes: Any) -> None:
        self._set_item(self.reservations, reservation.id, msgspec.structs.replace(reservation, **changes))

    def _add_user_seats(self, user_id: str, delta: int) -> None:
        seats = self.seats_by_user.get(user_id, 0) + delta
        invariant(seats >= 0, "user %s would hold %s seats", user_id, seats)
        self._set_item(self.seats_by_user, user_id, seats)

    # -- invariants -----------------------------------------------------------------------------

    def _check_local(self, ticket_type: TicketTypeState | None, user_id: str | None) -> None:
        """The invariants a single record can break, checked after every apply in O(1)."""
        if ticket_type is not None:
            invariant(
                0 <= ticket_type.held
                and 0 <= ticket_type.sold
                and ticket_type.held + ticket_type.sold <= ticket_type.capacity,
                "event %s type %s: held %s + sold %s exceeds capacity %s",
                self.event_id,
                ticket_type.code,
                ticket_type.held,
                ticket_type.sold,
                ticket_type.capacity,
            )
            invariant(
                0 <= ticket_type.checked_in
                and (ticket_type.checked_in <= ticket_type.sold or self.status == "cancelled")
                and ticket_type.waiting >= 0
                and ticket_type.revenue >= 0,
                "event %s type %s: counters out of range",
                self.event_id,
                ticket_type.code,
            )
        if user_id is not None and self.definition is not None and self.definition.per_user_limit is not None:
            seats = self.seats_by_user.get(user_id, 0)
            invariant(
                seats <= self.definition.per_user_limit,
                "event %s: user %s holds %s > limit %s",
                self.event_id,
                user_id,
                seats,
                self.definition.per_user_limit,
            )

    def check_invariants(self, *, counters: bool = True) -> None:
        """Recompute every counter from the reservations and compare: run after replay and in audits.
        Without `counters`, only capacity, per-user limits, waiting lists and numbering (O(types + users))."""
        if not counters:
            self._check_without_counters()
            return
        totals: dict[str, dict[str, int]] = {
            code: {"held": 0, "sold": 0, "checked_in": 0, "cancelled": 0, "revenue": 0, "waiting": 0}
            for code in self.ticket_types
        }
        seats: dict[str, int] = {}
        for reservation in self.reservations.values():
            invariant(reservation.ticket_type in self.ticket_types, "%s: unknown ticket type", reservation.id)
            counts = totals[reservation.ticket_type]
            match reservation.status:
                case "held":
                    counts["held"] += reservation.quantity
                case "confirmed":
                    counts["sold"] += reservation.quantity
                    counts["revenue"] += reservation.amount
                    invariant(len(reservation.tickets) == reservation.quantity, "%s: ticket count", reservation.id)
                case "waitlisted":
                    counts["waiting"] += 1
                case "cancelled":
                    counts["cancelled"] += reservation.quantity
            counts["checked_in"] += sum(1 for ticket in reservation.tickets if ticket.status == "checked_in")
            if reservation.status in COUNTED_STATUSES:
                seats[reservation.user_id] = seats.get(reservation.user_id, 0) + reservation.quantity
        for code, ticket_type in self.ticket_types.items():
            actual = {name: getattr(ticket_type, name) for name in totals[code]}
            invariant(actual == totals[code], f"{self.event_id}/{code}: counters {actual} != {totals[code]}")
            invariant(
                ticket_type.held + ticket_type.sold <= ticket_type.capacity, f"{self.event_id}/{code}: oversold"
            )
            waiting = self.waiting_list(code)
            invariant(len(waiting) == ticket_type.waiting, f"{self.event_id}/{code}: waiting list length")
        nonzero = {user: count for user, count in self.seats_by_user.items() if count}
        invariant(nonzero == seats, f"{self.event_id}: per-user seat counts disagree with reservations")
        if self.definition is not None and self.definition.per_user_limit is not None:
            limit = self.definition.per_user_limit
            invariant(all(count <= limit for count in seats.values()), f"{self.event_id}: per-user limit exceeded")
        invariant(self.reservations_created == len(self.reservations), f"{self.event_id}: reservation numbering")
        if self.status == "cancelled":
            invariant(not any(r.status in COUNTED_STATUSES for r in self.reservations.values()), "cancelled event has seats")

    def _check_without_counters(self) -> None:
        for code, ticket_type in self.ticket_types.items():
            self._check_local(ticket_type, None)
            invariant(len(self.waiting_list(code)) == ticket_type.waiting, "%s/%s: waiting list", self.event_id, code)
        limit = self.definition.per_user_limit if self.definition is not None else None
        if limit is not None:
            invariant(all(count <= limit for count in self.seats_by_user.values()), "%s: per-user limit", self.event_id)
        invariant(self.reservations_created == len(self.reservations), "%s: reservation numbering", self.event_id)

    # -- snapshots ------------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        invariant(self._undo is None, "snapshot inside a batch: it would hold uncommitted changes")
        assert self.definition is not None
        return SNAPSHOT_ENCODER.encode(
            InventorySnapshot(
                definition=self.definition,
                status=self.status,
                ticket_types=tuple(
                    TicketTypeSnapshot(t.code, t.name, t.price, t.capacity, tuple(self.waiting_list(t.code)))
                    for t in self.ticket_types.values()
                ),
                reservations=tuple(self.reservations.values()),
                reservations_created=self.reservations_created,
                last_seq=self.last_seq,
            )
        )

    @classmethod
    def restore(cls, event_id: str, state: bytes) -> Inventory:
        snapshot = SNAPSHOT_DECODER.decode(state)
        invariant(snapshot.definition.id == event_id, f"snapshot of {snapshot.definition.id} restored as {event_id}")
        inventory = cls(event_id)
        inventory.definition = snapshot.definition
        inventory.status = snapshot.status  # type: ignore[assignment]
        inventory.reservations_created = snapshot.reservations_created
        inventory.last_seq = snapshot.last_seq
        for saved in snapshot.ticket_types:
            inventory.ticket_types[saved.code] = TicketTypeState(
                saved.code, saved.name, saved.price, saved.capacity, waitlist=list(saved.waiting), waiting=len(saved.waiting)
            )
        reservations = inventory.reservations
        seats = inventory.seats_by_user
        types = inventory.ticket_types
        heap = inventory.expiry_heap
        for reservation in snapshot.reservations:
            reservations[reservation.id] = reservation
            state = types[reservation.ticket_type]
            status = reservation.status
            if status == "held":
                state.held += reservation.quantity
                heap.append((reservation.expires_at, reservation.id))  # type: ignore[arg-type]
            elif status == "confirmed":
                state.sold += reservation.quantity
                state.revenue += reservation.amount
                for ticket in reservation.tickets:
                    if ticket.status == "checked_in":
                        state.checked_in += 1
            elif status == "cancelled":
                state.cancelled += reservation.quantity
                for ticket in reservation.tickets:
                    if ticket.status == "checked_in":
                        state.checked_in += 1
            if status == "held" or status == "confirmed" or status == "waitlisted":
                seats[reservation.user_id] = seats.get(reservation.user_id, 0) + reservation.quantity
        heapq.heapify(inventory.expiry_heap)
        # The counters were just derived from the reservations, so recounting them would prove
        # nothing; what derivation cannot guarantee is checked.
        inventory.check_invariants(counters=False)
        return inventory

    # -- replay ---------------------------------------------------------------------------------

    @classmethod
    def replay(
        cls, event_id: str, records: Iterable[tuple[int, Record]], *, snapshot: bytes | None = None
    ) -> Inventory:
        """The state the log describes: from the snapshot if one is given, then the records after it."""
        inventory = cls.restore(event_id, snapshot) if snapshot is not None else cls(event_id)
        applied = False
        for seq, record in records:
            inventory.apply(seq, record)
            applied = True
        if applied or snapshot is None:  # a snapshot alone was checked by `restore`
            inventory.check_invariants()
        return inventory


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


RECORD_DECODER = msgspec.json.Decoder(Record)


def record_kind(record: Record) -> str:
    kind = type(record).__struct_config__.tag
    assert isinstance(kind, str)
    return kind
