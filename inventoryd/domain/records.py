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
    return None
