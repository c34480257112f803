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


class TicketTypeDefinition(msgspec.Struct, frozen=True):
    code: str
    name: str
    price: int
    capacity: int


class EventDefinition(msgspec.Struct, frozen=True):
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


class EventCreated(msgspec.Struct, frozen=True, tag="event_created"):
    event: EventDefinition


class ReservationHeld(msgspec.Struct, frozen=True, tag="reservation_held"):
    reservation_id: str
    user_id: str
    ticket_type: str
    quantity: int
    amount: int
    at: datetime
    expires_at: datetime


class ReservationConfirmed(msgspec.Struct, frozen=True, tag="reservation_confirmed"):
    reservation_id: str
    at: datetime


class ReservationCancelled(msgspec.Struct, frozen=True, tag="reservation_cancelled"):
    reservation_id: str
    at: datetime
    refunded: bool


class HoldExpired(msgspec.Struct, frozen=True, tag="hold_expired"):
    reservation_id: str
    at: datetime


Record = EventCreated | ReservationHeld | ReservationConfirmed | ReservationCancelled | HoldExpired

# ---------------------------------------------------------------------------------------------
# State.

ReservationStatus = Literal["held", "confirmed", "cancelled", "expired"]
TicketStatus = Literal["valid", "cancelled"]


class Ticket(msgspec.Struct, frozen=True):
    id: str
    status: TicketStatus


class Reservation(msgspec.Struct, frozen=True):
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


@dataclass(slots=True)
class TicketTypeState:
    code: str
    name: str
    price: int
    capacity: int
    held: int = 0
    sold: int = 0

    @property
    def available(self) -> int:
        return self.capacity - self.held - self.sold


# ---------------------------------------------------------------------------------------------
# Commands and replies.


class CreateEvent(msgspec.Struct, frozen=True, tag="create_event"):
    event: EventDefinition


class Reserve(msgspec.Struct, frozen=True, tag="reserve"):
    user_id: str
    ticket_type: str
    quantity: int
    now: datetime


class Confirm(msgspec.Struct, frozen=True, tag="confirm"):
    reservation_id: str
    now: datetime


class Cancel(msgspec.Struct, frozen=True, tag="cancel"):
    reservation_id: str
    now: datetime
    # Organizers and admins may cancel after the event's cancel_until; buyers may not.
    privileged: bool = False


class ExpireDue(msgspec.Struct, frozen=True, tag="expire_due"):
    now: datetime


Command = CreateEvent | Reserve | Confirm | Cancel | ExpireDue

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
]


class Accepted(msgspec.Struct, frozen=True, tag="accepted"):
    """The command succeeded. `reservation_id` names the reservation it made or changed (None for
    event-level commands); the caller reads its state once the decision's records are applied."""

    reservation_id: str | None = None
    # True when the command changed nothing because it had already been done (a repeated confirm).
    unchanged: bool = False


class Rejected(msgspec.Struct, frozen=True, tag="rejected"):
    code: RejectionCode
    detail: str
    # For insufficient_tickets: how many are left.
    available: int | None = None


Reply = Accepted | Rejected


@dataclass(slots=True)
class Decision:
    records: list[Record]
    reply: Reply


class InvariantViolation(AssertionError):
    """A state that must never exist. Not an outcome: a bug, or a corrupt log."""


def invariant(condition: bool, message: str) -> None:
    # Not `assert`: these checks must survive `python -O`.
    if not condition:
        raise InvariantViolation(message)


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
                return self._decide_cancel(command)
            case ExpireDue():
                return self._decide_expire(command)
            case _:
                assert_never(command)

    def _decide_create(self, command: CreateEvent) -> Decision:
        if self.status != "new":
            return Decision([], Rejected("conflict", "the event already exists"))
        invariant(command.event.id == self.event_id, "CreateEvent for another event")
        return Decision([EventCreated(command.event)], Accepted())

    def _decide_reserve(self, command: Reserve) -> Decision:
        if self.status == "new":
            return Decision([], Rejected("not_found", "no such event"))
        assert self.definition is not None
        if self.status == "cancelled":
            return Decision([], Rejected("event_cancelled", "the event has been cancelled"))
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
        available = ticket_type.available
        if available == 0:
            return Decision([], Rejected("sold_out", f"ticket type {ticket_type.code!r} is sold out", available=0))
        if command.quantity > available:
            return Decision(
                [],
                Rejected(
                    "insufficient_tickets",
                    f"only {available} tickets of type {ticket_type.code!r} are left",
                    available=available,
                ),
            )
        record = ReservationHeld(
            reservation_id=reservation_id_for(self.event_id, self.reservations_created + 1),
            user_id=command.user_id,
            ticket_type=ticket_type.code,
            quantity=command.quantity,
            amount=ticket_type.price * command.quantity,
            at=command.now,
            expires_at=command.now + timedelta(seconds=definition.hold_seconds),
        )
        return Decision([record], Accepted(record.reservation_id))

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
            case "held":
                assert reservation.expires_at is not None
                if command.now >= reservation.expires_at:
                    # The timer has not run yet; the hold is over all the same. Expire it now, so
                    # the log says what happened, and refuse the confirmation.
                    expired = HoldExpired(reservation.id, at=command.now)
                    return Decision([expired], Rejected("hold_expired", "the hold expired before it was confirmed"))
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
            case "held":
                record = ReservationCancelled(reservation.id, at=command.now, refunded=False)
                return Decision([record], Accepted(reservation.id))
            case "confirmed":
                cancel_until = self.definition.cancel_until
                if cancel_until is not None and command.now > cancel_until and not command.privileged:
                    return Decision(
                        [],
                        Rejected("cancellation_closed", f"cancellation closed at {_rfc3339(cancel_until)}"),
                    )
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

    # -- apply ----------------------------------------------------------------------------------

    def apply(self, seq: int, record: Record) -> None:
        invariant(seq == self.last_seq + 1, f"event {self.event_id}: record seq {seq} after {self.last_seq}")
        touched_type: TicketTypeState | None = None
        touched_user: str | None = None
        match record:
            case EventCreated(event=definition):
                invariant(self.status == "new", "EventCreated twice")
                invariant(definition.id == self.event_id, "EventCreated for another event")
                self._set_attr(self, "definition", definition)
                self._set_attr(self, "status", "on_sale")
                for ticket_type in definition.ticket_types:
                    self._set_item(
                        self.ticket_types,
                        ticket_type.code,
                        TicketTypeState(ticket_type.code, ticket_type.name, ticket_type.price, ticket_type.capacity),
                    )
            case ReservationHeld():
                invariant(record.reservation_id not in self.reservations, f"{record.reservation_id} held twice")
                touched_type = self.ticket_types[record.ticket_type]
                touched_user = record.user_id
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
                        status="held",
                        amount=record.amount,
                        created_at=record.at,
                        expires_at=record.expires_at,
                    ),
                )
                self._set_attr(touched_type, "held", touched_type.held + record.quantity)
                self._add_user_seats(record.user_id, record.quantity)
                self._heap_push((record.expires_at, record.reservation_id))
            case ReservationConfirmed():
                reservation = self._reservation(record.reservation_id, "held")
                touched_type = self.ticket_types[reservation.ticket_type]
                self._set_attr(touched_type, "held", touched_type.held - reservation.quantity)
                self._set_attr(touched_type, "sold", touched_type.sold + reservation.quantity)
                tickets = tuple(
                    Ticket(ticket_id_for(reservation.id, index), "valid") for index in range(1, reservation.quantity + 1)
                )
                self._replace(reservation, status="confirmed", confirmed_at=record.at, tickets=tickets)
            case ReservationCancelled():
                reservation = self._reservation(record.reservation_id, "held", "confirmed")
                touched_type = self.ticket_types[reservation.ticket_type]
                touched_user = reservation.user_id
                if reservation.status == "held":
                    self._set_attr(touched_type, "held", touched_type.held - reservation.quantity)
                else:
                    self._set_attr(touched_type, "sold", touched_type.sold - reservation.quantity)
                self._add_user_seats(reservation.user_id, -reservation.quantity)
                tickets = tuple(msgspec.structs.replace(ticket, status="cancelled") for ticket in reservation.tickets)
                self._replace(
                    reservation, status="cancelled", cancelled_at=record.at, refunded=record.refunded, tickets=tickets
                )
            case HoldExpired():
                reservation = self._reservation(record.reservation_id, "held")
                touched_type = self.ticket_types[reservation.ticket_type]
                touched_user = reservation.user_id
                self._set_attr(touched_type, "held", touched_type.held - reservation.quantity)
                self._add_user_seats(reservation.user_id, -reservation.quantity)
                self._replace(reservation, status="expired")
            case _:
                assert_never(record)
        self._set_attr(self, "last_seq", seq)
        self._check_local(touched_type, touched_user)

    def _reservation(self, reservation_id: str, *statuses: str) -> Reservation:
        reservation = self.reservations.get(reservation_id)
        invariant(reservation is not None, f"record for unknown reservation {reservation_id}")
        assert reservation is not None
        invariant(
            reservation.status in statuses,
            f"record for {reservation_id} in status {reservation.status}, expected one of {statuses}",
        )
        return reservation

    def _replace(self, reservation: Reservation, **changes: Any) -> None:
        self._set_item(self.reservations, reservation.id, msgspec.structs.replace(reservation, **changes))

    def _add_user_seats(self, user_id: str, delta: int) -> None:
        seats = self.seats_by_user.get(user_id, 0) + delta
        invariant(seats >= 0, f"user {user_id} would hold {seats} seats")
        self._set_item(self.seats_by_user, user_id, seats)

    # -- invariants -----------------------------------------------------------------------------

    def _check_local(self, ticket_type: TicketTypeState | None, user_id: str | None) -> None:
        """The invariants a single record can break, checked after every apply in O(1)."""
        if ticket_type is not None:
            invariant(
                0 <= ticket_type.held and 0 <= ticket_type.sold and ticket_type.held + ticket_type.sold <= ticket_type.capacity,
                f"event {self.event_id} type {ticket_type.code}: held {ticket_type.held} + sold {ticket_type.sold}"
                f" exceeds capacity {ticket_type.capacity}",
            )
        if user_id is not None and self.definition is not None and self.definition.per_user_limit is not None:
            seats = self.seats_by_user.get(user_id, 0)
            invariant(
                seats <= self.definition.per_user_limit,
                f"event {self.event_id}: user {user_id} holds {seats} > limit {self.definition.per_user_limit}",
            )

    def check_invariants(self) -> None:
        """Recompute every counter from the reservations and compare: run after replay and in audits."""
        held: dict[str, int] = {code: 0 for code in self.ticket_types}
        sold: dict[str, int] = {code: 0 for code in self.ticket_types}
        seats: dict[str, int] = {}
        for reservation in self.reservations.values():
            invariant(reservation.ticket_type in self.ticket_types, f"{reservation.id}: unknown ticket type")
            if reservation.status == "held":
                held[reservation.ticket_type] += reservation.quantity
            elif reservation.status == "confirmed":
                sold[reservation.ticket_type] += reservation.quantity
                invariant(len(reservation.tickets) == reservation.quantity, f"{reservation.id}: ticket count")
            if reservation.status in ("held", "confirmed"):
                seats[reservation.user_id] = seats.get(reservation.user_id, 0) + reservation.quantity
        for code, ticket_type in self.ticket_types.items():
            invariant(ticket_type.held == held[code], f"{self.event_id}/{code}: held {ticket_type.held} != {held[code]}")
            invariant(ticket_type.sold == sold[code], f"{self.event_id}/{code}: sold {ticket_type.sold} != {sold[code]}")
            invariant(
                ticket_type.held + ticket_type.sold <= ticket_type.capacity, f"{self.event_id}/{code}: oversold"
            )
        nonzero = {user: count for user, count in self.seats_by_user.items() if count}
        invariant(nonzero == seats, f"{self.event_id}: per-user seat counts disagree with reservations")
        if self.definition is not None and self.definition.per_user_limit is not None:
            limit = self.definition.per_user_limit
            invariant(all(count <= limit for count in seats.values()), f"{self.event_id}: per-user limit exceeded")
        invariant(self.reservations_created == len(self.reservations), f"{self.event_id}: reservation numbering")

    # -- replay ---------------------------------------------------------------------------------

    @classmethod
    def replay(cls, event_id: str, records: Iterable[tuple[int, Record]]) -> Inventory:
        inventory = cls(event_id)
        for seq, record in records:
            inventory.apply(seq, record)
        inventory.check_invariants()
        return inventory


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


RECORD_DECODER = msgspec.json.Decoder(Record)
RECORD_ENCODER = msgspec.json.Encoder()


def record_kind(record: Record) -> str:
    kind = type(record).__struct_config__.tag
    assert isinstance(kind, str)
    return kind
