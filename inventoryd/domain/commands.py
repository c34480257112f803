"""What the actor asks of the state machine (commands) and what it answers (replies).

A command says what a caller wants; the moment it is decided at (`now`) is the actor's to give, so
every command of a batch is decided at the same instant, read once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import msgspec

from inventoryd.domain.records import EventDefinition, Record, TicketTypeDefinition
from inventoryd.domain.seatmap import SeatLayout


class CreateEvent(msgspec.Struct, frozen=True, gc=False, tag="create_event"):
    event: EventDefinition


class Reserve(msgspec.Struct, frozen=True, gc=False, tag="reserve"):
    user_id: str
    ticket_type: str
    quantity: int
    # Join the waiting list when the seats are not there.
    waitlist: bool = False
    # A seated type: these exact seats (all or none; `quantity` is their number), or, when empty,
    # the best available, side by side unless `adjacent` is false.
    seats: tuple[str, ...] = ()
    adjacent: bool = True


class Confirm(msgspec.Struct, frozen=True, gc=False, tag="confirm"):
    reservation_id: str


class Cancel(msgspec.Struct, frozen=True, gc=False, tag="cancel"):
    reservation_id: str
    # Organizers and admins may cancel after the event's cancel_until; buyers may not.
    privileged: bool = False


class ExpireDue(msgspec.Struct, frozen=True, gc=False, tag="expire_due"):
    """Expire the holds that are due, and move the waiting room on (shuffle at the sale's start,
    admissions due, admissions ended): the actor's timer sends it. `seed` draws the shuffle, if
    this is the message that makes it (a fresh random number each time)."""

    seed: int = 0


class JoinQueue(msgspec.Struct, frozen=True, gc=False, tag="join_queue"):
    user_id: str
    # Draws the shuffle if this join is the first thing decided after the sale started.
    seed: int = 0


class LeaveQueue(msgspec.Struct, frozen=True, gc=False, tag="leave_queue"):
    entry_id: str


class CheckIn(msgspec.Struct, frozen=True, gc=False, tag="check_in"):
    ticket_id: str


class SetSeatMap(msgspec.Struct, frozen=True, gc=False, tag="set_seat_map"):
    layout: SeatLayout


class BlockSeats(msgspec.Struct, frozen=True, gc=False, tag="block_seats"):
    seats: tuple[str, ...]
    reason: str


class UnblockSeats(msgspec.Struct, frozen=True, gc=False, tag="unblock_seats"):
    seats: tuple[str, ...]


class PromoteSeated(msgspec.Struct, frozen=True, gc=False, tag="promote_seated"):
    """Promote the heads of the seated types' waiting lists that the seats now free can serve,
    with best available. Decided right after a decision that freed seats (`Decision.promote_seated`),
    once its records are applied: a pick needs the seats as they are then."""


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
        "queue",
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
    name: str | None = None
    price: int | None = None
    capacity: int | None = None


class CancelEvent(msgspec.Struct, frozen=True, gc=False, tag="cancel_event"):
    pass


Command = (
    CreateEvent
    | Reserve
    | Confirm
    | Cancel
    | ExpireDue
    | CheckIn
    | UpdateEvent
    | AddTicketType
    | ChangeTicketType
    | CancelEvent
    | JoinQueue
    | LeaveQueue
    | SetSeatMap
    | BlockSeats
    | UnblockSeats
    | PromoteSeated
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
    "no_waiting_room",
    "queue_not_open",
    "queue_full",
    "seats_unavailable",
    "no_adjacent_seats",
]


class Accepted(msgspec.Struct, frozen=True, gc=False, tag="accepted"):
    """The command succeeded. `reservation_id` names the reservation it made or changed (None for
    event-level commands); the caller reads its state once the decision's records are applied."""

    reservation_id: str | None = None
    # True when the command changed nothing because it had already been done (a repeated confirm).
    unchanged: bool = False
    # The waiting-room entry it made or changed (a join, a leave).
    queue_entry_id: str | None = None


class Rejected(msgspec.Struct, frozen=True, gc=False, tag="rejected"):
    code: RejectionCode
    detail: str
    # For insufficient_tickets: how many are left.
    available: int | None = None
    # For already_checked_in: when.
    checked_in_at: datetime | None = None
    # For invalid_request: the field at fault.
    field: str | None = None
    # For seats_unavailable: the seats at fault.
    seats: tuple[str, ...] | None = None


Reply = Accepted | Rejected


@dataclass(slots=True)
class Decision:
    records: list[Record]
    reply: Reply
    # Seats of a seated type with buyers waiting may have freed up: once these records are
    # applied, decide PromoteSeated (in the same batch).
    promote_seated: bool = False
