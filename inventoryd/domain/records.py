"""The event's definition (as created) and the log records: the durable schema. Add fields with
defaults, never change the meaning of an existing one.

These value types, like the reservations and replies of the other modules, are immutable and hold
only immutables, so they can never be part of a reference cycle: `gc=False` keeps them out of the
cyclic collector, whose full passes would otherwise walk every reservation an on-sale creates.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, get_args

import msgspec

from inventoryd import limits
from inventoryd.domain.seatmap import SeatLayout


class TicketTypeDefinition(msgspec.Struct, frozen=True, gc=False):
    code: str
    name: str
    price: int
    capacity: int
    # Sold by the seat: its capacity is its seats on the event's map (0 until one is put).
    seated: bool = False


class QueueConfig(msgspec.Struct, frozen=True, gc=False):
    """The event's waiting room: joins open at `opens_at`; whoever joined before the sale starts is
    put in a random order when it does, later arrivals behind them in order; `admit_per_minute`
    are let in, evenly, never more than `max_active` at once; each for `admission_seconds`.
    `exempt_user_ids` reserve without an admission (the organizer's named guests)."""

    opens_at: datetime
    admit_per_minute: int
    admission_seconds: int
    max_active: int | None = None
    exempt_user_ids: tuple[str, ...] = ()
    # A join must carry a proof of work of this many leading zero bits (None: none asked).
    pow_bits: int | None = None


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
    queue: QueueConfig | None = None


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
    # A seated type's seats, by id (as many as `quantity`).
    seats: tuple[str, ...] = ()


class ReservationConfirmed(msgspec.Struct, frozen=True, gc=False, tag="reservation_confirmed"):
    reservation_id: str
    at: datetime


class ReservationCancelled(msgspec.Struct, frozen=True, gc=False, tag="reservation_cancelled"):
    reservation_id: str
    at: datetime
    refunded: bool
    # Set when the service cancelled it (a waiting entry the lowered capacity can never serve).
    reason: Literal["capacity_lowered"] | None = None


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
    # A seated type: whether the seats it gets must be side by side.
    adjacent: bool = True


class WaitlistPromoted(msgspec.Struct, frozen=True, gc=False, tag="waitlist_promoted"):
    """The head of a ticket type's waiting list got its seats: it is now held, with a fresh hold."""

    reservation_id: str
    at: datetime
    expires_at: datetime
    # A seated type's seats, picked as best available when it was promoted.
    seats: tuple[str, ...] = ()


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


class QueueJoined(msgspec.Struct, frozen=True, gc=False, tag="queue_joined"):
    entry_id: str
    user_id: str
    at: datetime


class QueueShuffled(msgspec.Struct, frozen=True, gc=False, tag="queue_shuffled"):
    """The sale started: those who joined before it are put in the order `seed` draws (see
    `domain.queue.shuffled`), so that replay puts them in exactly the same order."""

    seed: int
    at: datetime


class QueueAdmitted(msgspec.Struct, frozen=True, gc=False, tag="queue_admitted"):
    """A wave: these entries, the next in line, may reserve until `expires_at`; the admission clock
    now stands at `clock` (see `domain.queue.admissions_due`)."""

    entry_ids: tuple[str, ...]
    at: datetime
    expires_at: datetime
    clock: datetime


class QueueExpired(msgspec.Struct, frozen=True, gc=False, tag="queue_expired"):
    """These admissions' windows passed."""

    entry_ids: tuple[str, ...]
    at: datetime


class QueueLeft(msgspec.Struct, frozen=True, gc=False, tag="queue_left"):
    entry_id: str
    at: datetime


class SeatMapSet(msgspec.Struct, frozen=True, gc=False, tag="seat_map_set"):
    """The event's seat map, as the organizer put it (the seated types' capacities follow it)."""

    layout: SeatLayout
    at: datetime


class SeatsBlocked(msgspec.Struct, frozen=True, gc=False, tag="seats_blocked"):
    seats: tuple[str, ...]
    reason: str
    at: datetime


class SeatsUnblocked(msgspec.Struct, frozen=True, gc=False, tag="seats_unblocked"):
    seats: tuple[str, ...]
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
    | QueueJoined
    | QueueShuffled
    | QueueAdmitted
    | QueueExpired
    | QueueLeft
    | SeatMapSet
    | SeatsBlocked
    | SeatsUnblocked
)
# Records that change the event's row in the catalogue (its prices among them).
CATALOGUE_RECORDS = (EventCreated, EventUpdated, TicketTypeAdded, TicketTypeChanged, EventCancelled)

RECORD_DECODER = msgspec.json.Decoder(Record)
# Each record type's tag: the `kind` column of its journal row.
RECORD_KINDS: dict[type, str] = {kind: str(kind.__struct_config__.tag) for kind in get_args(Record)}


def record_kind(record: Record) -> str:
    return RECORD_KINDS[type(record)]


def definition_problem(definition: EventDefinition) -> tuple[str, str] | None:
    """The rules between an event's dates, in one place: (the field at fault, why), or None. The
    edge checks a new event with it before anything else; updates are decided against it."""
    if definition.ends_at is not None and definition.ends_at < definition.starts_at:
        return "$.ends_at", "ends_at is before starts_at"
    if (
        definition.sale_starts_at is not None
        and definition.sale_ends_at is not None
        and definition.sale_ends_at <= definition.sale_starts_at
    ):
        return "$.sale_ends_at", "sale_ends_at must be after sale_starts_at"
    queue = definition.queue
    if queue is not None:
        if definition.sale_starts_at is None:
            return "$.sale_starts_at", "a waiting room needs sale_starts_at (its line is shuffled then)"
        if queue.opens_at > definition.sale_starts_at:
            return "$.queue.opens_at", "the waiting room opens at or before sale_starts_at"
        if queue.max_active is not None and queue.max_active < 1:
            return "$.queue.max_active", "max_active is at least 1"
    return None
