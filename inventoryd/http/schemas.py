"""Request and response bodies. Requests are validated while they are decoded (msgspec names the
failing field, `at $.quantity`); decoders are built once, here. Inside the service, data is valid."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from inventoryd import limits
from inventoryd.domain import Reservation

# Text PostgreSQL can store: no NUL, no unpaired surrogate. Checked while decoding, so such a request
# is refused with the field named and never reaches the journal (where it would fail the shared
# transaction of every event whose batch was coalesced with it).
STORABLE_TEXT = r"^[^\x00\ud800-\udfff]*$"
Code = Annotated[str, Meta(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")]
Name = Annotated[str, Meta(min_length=1, max_length=limits.NAME_CHARS_MAX, pattern=STORABLE_TEXT)]
ShortText = Annotated[str, Meta(max_length=limits.NAME_CHARS_MAX, pattern=STORABLE_TEXT)]
Description = Annotated[str, Meta(max_length=limits.DESCRIPTION_CHARS_MAX, pattern=STORABLE_TEXT)]
Currency = Annotated[str, Meta(pattern=r"^[A-Z]{3}$", description="ISO 4217 code")]
# Money in minor units; bounded so that price × capacity stays well inside a 64-bit integer.
Price = Annotated[int, Meta(ge=0, le=100_000_000_000)]
Capacity = Annotated[int, Meta(ge=0, le=limits.TICKET_TYPE_CAPACITY_MAX)]
Quantity = Annotated[int, Meta(ge=1, le=limits.RESERVATION_QUANTITY_MAX)]
PerUserLimit = Annotated[int, Meta(ge=1, le=limits.TICKET_TYPE_CAPACITY_MAX)]
HoldSeconds = Annotated[int, Meta(ge=limits.HOLD_SECONDS_MIN, le=limits.HOLD_SECONDS_MAX)]
Moment = Annotated[datetime, Meta(tz=True, description="RFC 3339 with a time zone")]
UserId = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@-]+$")]


class TicketTypeIn(msgspec.Struct, forbid_unknown_fields=True):
    code: Code
    name: Name
    price: Price
    capacity: Capacity


class EventIn(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    starts_at: Moment
    currency: Currency
    ticket_types: Annotated[list[TicketTypeIn], Meta(min_length=1, max_length=limits.TICKET_TYPES_PER_EVENT_MAX)]
    description: Description | None = None
    venue: ShortText | None = None
    city: ShortText | None = None
    category: ShortText | None = None
    ends_at: Moment | None = None
    sale_starts_at: Moment | None = None
    sale_ends_at: Moment | None = None
    cancel_until: Moment | None = None
    per_user_limit: PerUserLimit | None = None
    hold_seconds: HoldSeconds = limits.HOLD_SECONDS_DEFAULT


class EventPatch(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Fields absent are left alone; null clears an optional field."""

    name: Name | UnsetType = UNSET
    description: Description | UnsetType | None = UNSET
    venue: ShortText | UnsetType | None = UNSET
    city: ShortText | UnsetType | None = UNSET
    category: ShortText | UnsetType | None = UNSET
    starts_at: Moment | UnsetType = UNSET
    ends_at: Moment | UnsetType | None = UNSET
    sale_starts_at: Moment | UnsetType | None = UNSET
    sale_ends_at: Moment | UnsetType | None = UNSET
    cancel_until: Moment | UnsetType | None = UNSET
    per_user_limit: PerUserLimit | UnsetType | None = UNSET
    hold_seconds: HoldSeconds | UnsetType = UNSET


class TicketTypePatch(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    name: Name | UnsetType = UNSET
    price: Price | UnsetType = UNSET
    capacity: Capacity | UnsetType = UNSET


class ReservationIn(msgspec.Struct, forbid_unknown_fields=True):
    ticket_type: Code
    quantity: Quantity
    user_id: UserId | None = None
    waitlist: bool = False


class TicketTypeOut(msgspec.Struct):
    code: str
    name: str
    price: int
    capacity: int
    available: int
    held: int
    sold: int


class EventOut(msgspec.Struct):
    id: str
    name: str
    status: str
    starts_at: datetime
    currency: str
    ticket_types: list[TicketTypeOut]
    created_at: datetime
    hold_seconds: int
    description: str | None = None
    venue: str | None = None
    city: str | None = None
    category: str | None = None
    ends_at: datetime | None = None
    sale_starts_at: datetime | None = None
    sale_ends_at: datetime | None = None
    cancel_until: datetime | None = None
    per_user_limit: int | None = None


class EventPage(msgspec.Struct):
    items: list[EventOut]
    next_cursor: str | None


class ReservationPage(msgspec.Struct):
    items: list[Reservation]
    next_cursor: str | None


class TicketOut(msgspec.Struct):
    id: str
    status: str
    checked_in_at: datetime | None
    reservation_id: str
    event_id: str
    ticket_type: str


class ReportLine(msgspec.Struct):
    capacity: int
    available: int
    held: int
    sold: int
    checked_in: int
    cancelled: int
    revenue: int
    waitlist: int


class TicketTypeReport(ReportLine):
    code: str = ""
    name: str = ""
    price: int = 0


class ReportOut(msgspec.Struct):
    event_id: str
    status: str
    currency: str
    ticket_types: list[TicketTypeReport]
    total: ReportLine


class TicketTypeAvailability(msgspec.Struct):
    available: int
    waitlist: int


class AvailabilityOut(msgspec.Struct):
    event_id: str
    status: str
    ticket_types: dict[str, TicketTypeAvailability]


class Problem(msgspec.Struct, omit_defaults=True):
    type: str
    title: str
    status: int
    detail: str
    code: str
    field: str | None = None
    available: int | None = None
    checked_in_at: datetime | None = None


class Health(msgspec.Struct):
    status: Literal["ok", "ready", "not_ready"]
    detail: str | None = None


EVENT_DECODER = msgspec.json.Decoder(EventIn)
EVENT_PATCH_DECODER = msgspec.json.Decoder(EventPatch)
TICKET_TYPE_DECODER = msgspec.json.Decoder(TicketTypeIn)
TICKET_TYPE_PATCH_DECODER = msgspec.json.Decoder(TicketTypePatch)
RESERVATION_DECODER = msgspec.json.Decoder(ReservationIn)
ENCODER = msgspec.json.Encoder()
