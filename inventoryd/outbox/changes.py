"""The change feed's public shape: each log record an outsider may hear of, as `{seq, type, at,
data}`. The record kinds are the log's own business and may change; these types and their data are
the API (docs/API.md, "Change feed"), kept stable. Pure: no I/O."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, Literal, get_args

import msgspec

from inventoryd.domain import RECORD_DECODER, Record, SeatMapSet, record_kind

ChangeType = Literal[
    "event.created", "event.updated", "ticket_type.added", "ticket_type.changed", "event.cancelled",
    "reservation.held", "reservation.confirmed", "reservation.cancelled", "reservation.expired", "reservation.waitlisted",
    "reservation.promoted", "ticket.checked_in", "seatmap.set", "seats.blocked", "seats.unblocked",
    "queue.joined", "queue.admitted", "queue.expired", "queue.left",
]
# Each public type, from the record kind it is made of. The waiting room's shuffle (its seed) stays
# inside: it is how the line was made fair, not something that happened to anyone.
PUBLIC_TYPES: Final[dict[str, ChangeType]] = {
    "event_created": "event.created",
    "event_updated": "event.updated",
    "ticket_type_added": "ticket_type.added",
    "ticket_type_changed": "ticket_type.changed",
    "event_cancelled": "event.cancelled",
    "reservation_held": "reservation.held",
    "reservation_confirmed": "reservation.confirmed",
    "reservation_cancelled": "reservation.cancelled",
    "hold_expired": "reservation.expired",
    "reservation_waitlisted": "reservation.waitlisted",
    "waitlist_promoted": "reservation.promoted",
    "ticket_checked_in": "ticket.checked_in",
    "seat_map_set": "seatmap.set",
    "seats_blocked": "seats.blocked",
    "seats_unblocked": "seats.unblocked",
    "queue_joined": "queue.joined",
    "queue_admitted": "queue.admitted",
    "queue_expired": "queue.expired",
    "queue_left": "queue.left",
}
CHANGE_TYPES: Final[tuple[ChangeType, ...]] = get_args(ChangeType)
if set(CHANGE_TYPES) != set(PUBLIC_TYPES.values()) or len(CHANGE_TYPES) != len(PUBLIC_TYPES):
    raise ImportError("every public change type is made of one record kind")


class Change(msgspec.Struct, frozen=True):
    seq: int
    type: ChangeType
    at: datetime
    data: dict[str, Any]


def change_of(seq: int, body: bytes, recorded_at: datetime) -> Change | None:
    """The public change a log record is, or None for one that stays inside."""
    record = RECORD_DECODER.decode(body)
    kind = record_kind(record)
    public = PUBLIC_TYPES.get(kind)
    if public is None:
        return None
    return Change(seq, public, getattr(record, "at", None) or recorded_at, _data(record))


def _data(record: Record) -> dict[str, Any]:
    if isinstance(record, SeatMapSet):
        # A stadium's layout is megabytes: the change says how many seats; GET …/seatmap has them.
        layout = record.layout
        listed = sum(len(row.seats) for section in layout.sections for row in section.rows)
        return {"seats": listed + sum(block.rows * block.seats_per_row for block in layout.blocks)}
    data: dict[str, Any] = msgspec.to_builtins(record)
    # The record's tag is the type; its time is `at`; a wave's clock is the waiting room's own.
    for inside in ("type", "at", "clock"):
        data.pop(inside, None)
    return data
