"""Identifiers. Reservation and ticket ids carry their event's key, so a request for a reservation or
a ticket is routed to its event's actor (and, in a cluster, its node) without a lookup."""

from __future__ import annotations

EVENT_PREFIX = "evt_"
RESERVATION_PREFIX = "rsv_"
TICKET_PREFIX = "tkt_"
QUEUE_PREFIX = "que_"


def event_key(event_id: str) -> str:
    return event_id.removeprefix(EVENT_PREFIX)


def reservation_id_for(event_id: str, number: int) -> str:
    return f"{RESERVATION_PREFIX}{event_key(event_id)}_{number}"


def ticket_id_for(reservation_id: str, index: int) -> str:
    return f"{TICKET_PREFIX}{reservation_id.removeprefix(RESERVATION_PREFIX)}_{index}"


def queue_id_for(event_id: str, number: int) -> str:
    return f"{QUEUE_PREFIX}{event_key(event_id)}_{number}"


def event_id_of(reservation_or_ticket_id: str) -> str | None:
    """The event a reservation, ticket or waiting-room entry id belongs to, or None if the id is not
    one of ours."""
    for prefix in (RESERVATION_PREFIX, TICKET_PREFIX, QUEUE_PREFIX):
        if reservation_or_ticket_id.startswith(prefix):
            key, _, _ = reservation_or_ticket_id.removeprefix(prefix).partition("_")
            return EVENT_PREFIX + key if key.isalnum() else None
    return None


def reservation_id_of_ticket(ticket_id: str) -> str | None:
    if not ticket_id.startswith(TICKET_PREFIX):
        return None
    rest, _, index = ticket_id.removeprefix(TICKET_PREFIX).rpartition("_")
    return RESERVATION_PREFIX + rest if index.isdigit() and rest else None
