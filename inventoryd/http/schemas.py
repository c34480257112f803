"""Request and response bodies. Requests are validated while they are decoded (msgspec names the
failing field, `at $.quantity`); decoders are built once, here. Inside the service, data is valid.

The OpenAPI document is generated from these types (`openapi.py`), so what is declared here is
what the document states: patterns as the server checks them (Python's `re`), which the document
restates in JSON Schema's syntax (`documented_pattern`)."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeAlias, get_args

import msgspec
from msgspec import UNSET, Meta, UnsetType

from inventoryd import limits
from inventoryd.domain import Reservation, ShownEventStatus, TicketStatus
from inventoryd.errors import InvalidRequest

# Patterns end in `\Z`, the very end: Python's `$` also matches before a final newline, which would
# let "GA\n" through as a code. The document writes `$`, which in JSON Schema (ECMA-262) is the end.
END = r"\Z"
# Text PostgreSQL can store: no NUL, no unpaired surrogate. Checked while decoding, so such a request
# is refused with the field named and never reaches the journal (where it would fail the shared
# transaction of every event whose batch was coalesced with it).
SURROGATES = r"\ud800-\udfff"
STORABLE_TEXT = rf"^[^\x00{SURROGATES}]*{END}"
# What Python's `\s` matches (str.isspace), spelled out: ECMA-262's and Rust's `\s` differ from it.
WHITESPACE = r"\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
NO_SURROGATE = "No unpaired surrogate (I-JSON, RFC 7493)."


def documented_pattern(pattern: str) -> tuple[str, bool]:
    r"""A pattern the server checks, as the document states it: `$` for `\Z`, and without the
    surrogate range, which most JSON Schema validators cannot compile (their strings cannot hold a
    lone surrogate); the second value says whether it was dropped (the description says it then)."""
    if pattern.endswith(END):
        pattern = pattern.removesuffix(END) + "$"
    return pattern.replace(SURROGATES, ""), SURROGATES in pattern


def whole_number(low: int, high: int) -> Any:
    """An integer between low and high, also when written 3.0 or 1e2: JSON does not tell these
    apart, and JSON Schema's `integer` takes them, so the server does too (`integral` turns them
    into ints after decoding; the document says `integer`)."""
    return Annotated[int, Meta(ge=low, le=high)] | Annotated[float, Meta(ge=low, le=high, multiple_of=1)]


def integral(value: Any) -> Any:
    return int(value) if type(value) is float else value


def digits_between(low: str, high: str) -> str:
    """A pattern for the numbers from `low` to `high`, both written with as many digits (leading
    zeros kept): `[0-9]`, not `\\d`, which in Python takes any script's digits."""
    if low == high:
        return low
    rest_low, rest_high = low[1:], high[1:]
    if low[0] == high[0]:
        return low[0] + digits_between(rest_low, rest_high)
    zeros, nines = "0" * len(rest_low), "9" * len(rest_low)
    parts = []
    first, last = int(low[0]), int(high[0])
    if rest_low != zeros:
        parts.append(low[0] + digits_between(rest_low, nines))
        first += 1
    if rest_high != nines:
        last -= 1
    if first <= last:
        parts.append((str(first) if first == last else f"[{first}-{last}]") + "[0-9]" * len(rest_low))
    if rest_high != nines:
        parts.append(high[0] + digits_between(zeros, rest_high))
    return parts[0] if len(parts) == 1 else f"(?:{'|'.join(parts)})"


# A time's year as written, at the start of its text (see limits.MOMENT_YEAR_MIN): the document
# states it as a pattern beside `format: date-time`; the server checks the decoded year, the same.
MOMENT_PATTERN = f"^{digits_between(f'{limits.MOMENT_YEAR_MIN:04d}', f'{limits.MOMENT_YEAR_MAX:04d}')}-"
MOMENT_YEARS = f"in the years {limits.MOMENT_YEAR_MIN} to {limits.MOMENT_YEAR_MAX}, as written"


def moment_problem(moment: datetime, name: str) -> str | None:
    """Why `moment`, given as `name`, is refused, or None: its year as written is out of bounds."""
    if limits.MOMENT_YEAR_MIN <= moment.year <= limits.MOMENT_YEAR_MAX:
        return None
    return f"{name} must be {MOMENT_YEARS}, not in {moment.year}"


def _mentions_datetime(kind: Any) -> bool:
    return kind is datetime or any(_mentions_datetime(arg) for arg in get_args(kind))


@functools.cache
def _moment_fields(kind: type[msgspec.Struct]) -> tuple[str, ...]:
    return tuple(field.name for field in msgspec.structs.fields(kind) if _mentions_datetime(field.type))


def check_moments(body: msgspec.Struct) -> None:
    """Every time in a request body within the years PostgreSQL and Python can both hold once it
    is taken to UTC (limits.MOMENT_YEAR_MIN); called by `__post_init__`, so that a decoder refuses
    it with its field named (an InvalidRequest is not turned into a ValidationError by msgspec,
    which would name the struct, not the field)."""
    for name in _moment_fields(type(body)):
        moment = getattr(body, name)
        if isinstance(moment, datetime) and (problem := moment_problem(moment, name)):
            raise InvalidRequest(problem, field=f"$.{name}")


Code = Annotated[str, Meta(min_length=1, max_length=32, pattern=rf"^[A-Za-z0-9][A-Za-z0-9_-]*{END}")]
Name = Annotated[str, Meta(min_length=1, max_length=limits.NAME_CHARS_MAX, pattern=STORABLE_TEXT)]
ShortText = Annotated[str, Meta(max_length=limits.NAME_CHARS_MAX, pattern=STORABLE_TEXT)]
Description = Annotated[str, Meta(max_length=limits.DESCRIPTION_CHARS_MAX, pattern=STORABLE_TEXT)]
Currency = Annotated[str, Meta(pattern=rf"^[A-Z]{{3}}{END}", description="ISO 4217 code")]
# Money in minor units; bounded so that price × capacity stays well inside a 64-bit integer.
if TYPE_CHECKING:  # what the service sees, once `integral` has run
    Price: TypeAlias = int
    Capacity: TypeAlias = int
    Quantity: TypeAlias = int
    PerUserLimit: TypeAlias = int
    HoldSeconds: TypeAlias = int
    AdmitPerMinute: TypeAlias = int
    AdmissionSeconds: TypeAlias = int
    MaxActive: TypeAlias = int
    PowBits: TypeAlias = int
    SeatQuality: TypeAlias = int
    BlockRows: TypeAlias = int
    RowSeats: TypeAlias = int
    FirstNumber: TypeAlias = int
else:
    Price = whole_number(0, limits.PRICE_MAX)
    Capacity = whole_number(0, limits.TICKET_TYPE_CAPACITY_MAX)
    Quantity = whole_number(1, limits.RESERVATION_QUANTITY_MAX)
    PerUserLimit = whole_number(1, limits.TICKET_TYPE_CAPACITY_MAX)
    HoldSeconds = whole_number(limits.HOLD_SECONDS_MIN, limits.HOLD_SECONDS_MAX)
    AdmitPerMinute = whole_number(1, limits.QUEUE_ADMIT_PER_MINUTE_MAX)
    AdmissionSeconds = whole_number(limits.QUEUE_ADMISSION_SECONDS_MIN, limits.QUEUE_ADMISSION_SECONDS_MAX)
    MaxActive = whole_number(1, limits.QUEUE_ENTRIES_MAX)
    PowBits = whole_number(1, limits.QUEUE_POW_BITS_MAX)
    SeatQuality = whole_number(1, limits.SEATMAP_SEATS_MAX)
    BlockRows = whole_number(1, limits.SEATMAP_SEATS_MAX)
    RowSeats = whole_number(1, limits.SEATMAP_ROW_SEATS_MAX)
    FirstNumber = whole_number(0, 10**9)
Moment = Annotated[
    datetime,
    Meta(tz=True, description=f"RFC 3339 with a time zone, {MOMENT_YEARS}", extra_json_schema={"pattern": MOMENT_PATTERN}),
]
# Something @ something . something, none of them with an @, whitespace, a NUL or a lone surrogate.
_EMAIL_PART = rf"[^@{WHITESPACE}\x00{SURROGATES}]+"
Email = Annotated[
    str,
    Meta(
        min_length=3,
        max_length=limits.EMAIL_ADDRESS_CHARS_MAX,
        pattern=rf"^{_EMAIL_PART}@{_EMAIL_PART}\.{_EMAIL_PART}{END}",
        description="an email address",
    ),
]
UserId = Annotated[str, Meta(min_length=1, max_length=limits.USER_ID_CHARS_MAX, pattern=rf"^[A-Za-z0-9_.:@-]+{END}")]
# An event as answers show it ("new", before its creation is committed, is never shown).
EventStatus = ShownEventStatus


class TicketTypeIn(msgspec.Struct, forbid_unknown_fields=True):
    code: Code
    name: Name
    price: Price
    capacity: Capacity
    # Sold by the seat: capacity 0, the seat map (PUT .../seatmap) gives the seats.
    seated: bool = False

    def __post_init__(self) -> None:
        self.price = integral(self.price)
        self.capacity = integral(self.capacity)


class QueueIn(msgspec.Struct, forbid_unknown_fields=True):
    """The event's waiting room (see docs/API.md, "Waiting room")."""

    opens_at: Moment
    admit_per_minute: AdmitPerMinute
    admission_seconds: AdmissionSeconds
    max_active: MaxActive | None = None
    exempt_user_ids: Annotated[list[UserId], Meta(max_length=limits.QUEUE_EXEMPT_USERS_MAX)] = []
    pow_bits: PowBits | None = None

    def __post_init__(self) -> None:
        self.pow_bits = integral(self.pow_bits)
        self.admit_per_minute = integral(self.admit_per_minute)
        self.admission_seconds = integral(self.admission_seconds)
        self.max_active = integral(self.max_active)
        check_moments(self)


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
    queue: QueueIn | None = None

    def __post_init__(self) -> None:
        self.per_user_limit = integral(self.per_user_limit)
        self.hold_seconds = integral(self.hold_seconds)
        check_moments(self)


class EventPatch(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Fields absent are left alone; null clears an optional field. At least one field."""

    # Merged into the document's schema (openapi.py): the server refuses {} (nothing to change).
    json_schema_extra: ClassVar[dict[str, Any]] = {"minProperties": 1}

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
    queue: QueueIn | UnsetType | None = UNSET

    def __post_init__(self) -> None:
        self.per_user_limit = integral(self.per_user_limit)
        self.hold_seconds = integral(self.hold_seconds)
        check_moments(self)


class TicketTypePatch(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Fields absent are left alone ({} changes nothing)."""

    name: Name | UnsetType = UNSET
    price: Price | UnsetType = UNSET
    capacity: Capacity | UnsetType = UNSET

    def __post_init__(self) -> None:
        self.price = integral(self.price)
        self.capacity = integral(self.capacity)


SeatPart = Annotated[
    str, Meta(min_length=1, max_length=limits.SEAT_ID_PART_CHARS_MAX, pattern=rf"^[A-Za-z0-9]+{END}")
]
SeatId = Annotated[
    str,
    Meta(
        max_length=3 * limits.SEAT_ID_PART_CHARS_MAX + 2,
        pattern=rf"^[A-Za-z0-9]+-[A-Za-z0-9]+-[A-Za-z0-9]+{END}",
        description="SECTION-ROW-SEAT",
    ),
]
Coordinate = Annotated[float, Meta(ge=-1e6, le=1e6)]


class ReservationIn(msgspec.Struct, forbid_unknown_fields=True):
    ticket_type: Code
    # How many (general admission, or best available on a seated type); with `seats`, their number.
    quantity: Quantity | UnsetType = UNSET
    user_id: UserId | None = None
    waitlist: bool = False
    # A seated type: these exact seats, all or none.
    seats: Annotated[list[SeatId], Meta(min_length=1, max_length=limits.RESERVATION_QUANTITY_MAX)] | None = None
    # Best available on a seated type: false takes seats apart when no block is left.
    adjacent: bool = True
    # Where the buyer's confirmation email goes (services and admins, for buyers without an
    # account here): kept apart from the log, erasable, never in a webhook.
    email: Email | None = None

    @property
    def count(self) -> int:
        """The tickets asked for (`__post_init__` made sure there is a number)."""
        if isinstance(self.quantity, UnsetType):
            raise InvalidRequest("give quantity, or the seats", field="$.quantity")
        return self.quantity

    def __post_init__(self) -> None:
        if type(self.quantity) is float:
            self.quantity = int(self.quantity)
        seats = self.seats
        if seats is None:
            if self.quantity is UNSET:
                raise InvalidRequest("give quantity, or the seats", field="$.quantity")
            return
        if self.quantity is not UNSET and self.quantity != len(seats):
            raise InvalidRequest(f"quantity {self.quantity} is not the {len(seats)} seats named", field="$.quantity")
        self.quantity = len(seats)
        if self.waitlist:
            raise InvalidRequest("exact seats cannot wait: ask for a quantity to join the waiting list", field="$.waitlist")
        if len(set(seats)) != len(seats):
            index = next(i for i, seat in enumerate(seats) if seat in seats[:i])
            raise InvalidRequest(f"seat {seats[index]} is named twice", field=f"$.seats[{index}]")


class SeatIn(msgspec.Struct, forbid_unknown_fields=True):
    id: SeatPart
    ticket_type: Code | None = None
    # 1 is the best; seats without one rank by distance to the section's focal point.
    quality: SeatQuality | None = None
    x: Coordinate | None = None
    y: Coordinate | None = None

    def __post_init__(self) -> None:
        self.quality = integral(self.quality)


class SeatRowIn(msgspec.Struct, forbid_unknown_fields=True):
    id: SeatPart
    # In the row's order: neighbours in the list are side by side.
    seats: Annotated[list[SeatIn], Meta(min_length=1, max_length=limits.SEATMAP_ROW_SEATS_MAX)]
    ticket_type: Code | None = None


class SeatSectionIn(msgspec.Struct, forbid_unknown_fields=True):
    id: SeatPart
    rows: Annotated[list[SeatRowIn], Meta(max_length=limits.SEATMAP_SEATS_MAX)] = []
    name: Name | None = None
    ticket_type: Code | None = None
    focal_x: Coordinate | None = None
    focal_y: Coordinate | None = None


class SeatBlockIn(msgspec.Struct, forbid_unknown_fields=True):
    section: SeatPart
    rows: BlockRows
    seats_per_row: RowSeats
    ticket_type: Code
    first_row: FirstNumber = 1
    first_seat: FirstNumber = 1

    def __post_init__(self) -> None:
        self.rows = integral(self.rows)
        self.seats_per_row = integral(self.seats_per_row)
        self.first_row = integral(self.first_row)
        self.first_seat = integral(self.first_seat)


class SeatMapIn(msgspec.Struct, forbid_unknown_fields=True):
    """The event's seat map (see docs/API.md, "Reserved seating")."""

    sections: Annotated[list[SeatSectionIn], Meta(max_length=limits.SEATMAP_SEATS_MAX)] = []
    blocks: Annotated[list[SeatBlockIn], Meta(max_length=limits.SEATMAP_SEATS_MAX)] = []


class SeatsBlockIn(msgspec.Struct, forbid_unknown_fields=True):
    seats: Annotated[list[SeatId], Meta(min_length=1, max_length=limits.SEATS_PER_REQUEST_MAX)]
    reason: Name


class SeatsUnblockIn(msgspec.Struct, forbid_unknown_fields=True):
    seats: Annotated[list[SeatId], Meta(min_length=1, max_length=limits.SEATS_PER_REQUEST_MAX)]


# Answers. Every field is sent (none of these omits defaults), so the document marks all required.


class TicketTypeOut(msgspec.Struct):
    code: str
    name: str
    price: int
    capacity: int
    available: int
    held: int
    sold: int
    seated: bool
    blocked: int


class EventOut(msgspec.Struct):
    id: str
    name: str
    status: EventStatus
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
    queue: QueueOut | None = None


class QueueOut(msgspec.Struct):
    opens_at: datetime
    admit_per_minute: int
    admission_seconds: int
    max_active: int | None
    exempt_user_ids: list[str]
    pow_bits: int | None


class PowIn(msgspec.Struct, forbid_unknown_fields=True):
    nonce: Annotated[str, Meta(min_length=1, max_length=128, pattern=rf"^[0-9]+\.[A-Za-z0-9_-]+{END}")]
    solution: Annotated[str, Meta(min_length=1, max_length=limits.QUEUE_POW_SOLUTION_CHARS_MAX, pattern=rf"^[!-~]+{END}")]


class QueueJoinIn(msgspec.Struct, forbid_unknown_fields=True):
    # A service or admin names the user it joins for; an attendee joins for itself.
    user_id: UserId | None = None
    # The proof of work, when the waiting room asks for one (GET .../queue/challenge).
    pow: PowIn | None = None


class PowChallengeOut(msgspec.Struct):
    nonce: str
    bits: int
    expires_at: datetime


class QueueEntryOut(msgspec.Struct):
    id: str
    event_id: str
    user_id: str
    status: Literal["waiting", "admitted", "expired", "left"]
    joined_at: datetime
    # The place in line (1: next), null before the sale starts (the line is shuffled then) and
    # once not waiting; the wait it means at the admission rate.
    position: int | None
    estimated_wait_s: float | None
    admission_token: str | None
    admission_expires_at: datetime | None


class QueueLineOut(msgspec.Struct):
    """The line as the organizer sees it."""

    event_id: str
    shuffled: bool
    joined: int
    waiting: int
    admitted: int
    active: int


class EventPage(msgspec.Struct):
    items: list[EventOut]
    next_cursor: str | None


class EncodedEventPage(msgspec.Struct):
    """An EventPage whose items are already encoded (each an EventOut's JSON): the same answer."""

    items: list[msgspec.Raw]
    next_cursor: str | None


class ReservationPage(msgspec.Struct):
    items: list[Reservation]
    next_cursor: str | None


class TicketOut(msgspec.Struct):
    id: str
    status: TicketStatus
    checked_in_at: datetime | None
    reservation_id: str
    event_id: str
    ticket_type: str
    seat: str | None


class SeatRowOut(msgspec.Struct):
    id: str
    # The row's seats (their own part of the id), in the row's order, and one letter each for
    # their status: f free, h held, s sold, b blocked.
    seats: list[str]
    status: str


class SeatSectionOut(msgspec.Struct):
    id: str
    rows: list[SeatRowOut]


class SeatsOut(msgspec.Struct):
    event_id: str
    sections: list[SeatSectionOut]
    # The seats shown, by status.
    free: int
    held: int
    sold: int
    blocked: int


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
    status: EventStatus
    currency: str
    ticket_types: list[TicketTypeReport]
    total: ReportLine
    # The waiting room's totals, if the event has one.
    queue: QueueLineOut | None


class TicketTypeAvailability(msgspec.Struct):
    available: int
    waitlist: int


class AvailabilityOut(msgspec.Struct):
    event_id: str
    status: EventStatus
    ticket_types: dict[str, TicketTypeAvailability]


class Problem(msgspec.Struct, omit_defaults=True):
    """RFC 9457 problem details. `field` (where the request is wrong), `available` and
    `checked_in_at` are sent only when they apply."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    field: str | None = None
    available: int | None = None
    checked_in_at: datetime | None = None
    # For seats_unavailable: the seats taken (or held, or sold) among those named.
    seats: list[str] | None = None


class CatalogueHealth(msgspec.Struct):
    """The catalogue in memory: whether it is known current, how long it has not been, its size."""

    current: bool
    lag_s: float
    events: int


class Health(msgspec.Struct):
    # Not ready is a 503 problem document, not one of these.
    status: Literal["ok", "ready"]
    detail: str | None = None
    catalogue: CatalogueHealth | None = None


EVENT_DECODER = msgspec.json.Decoder(EventIn)
EVENT_PATCH_DECODER = msgspec.json.Decoder(EventPatch)
TICKET_TYPE_DECODER = msgspec.json.Decoder(TicketTypeIn)
TICKET_TYPE_PATCH_DECODER = msgspec.json.Decoder(TicketTypePatch)
RESERVATION_DECODER = msgspec.json.Decoder(ReservationIn)
QUEUE_JOIN_DECODER = msgspec.json.Decoder(QueueJoinIn)
SEAT_MAP_DECODER = msgspec.json.Decoder(SeatMapIn)
SEATS_BLOCK_DECODER = msgspec.json.Decoder(SeatsBlockIn)
SEATS_UNBLOCK_DECODER = msgspec.json.Decoder(SeatsUnblockIn)
ENCODER = msgspec.json.Encoder()
