"""The answers made from an actor's views (its committed EventSummary): an event as the API shows
it, and each event's answer kept encoded for the readers of listings and event pages."""

from __future__ import annotations

import msgspec

from inventoryd import limits
from inventoryd.domain import EventSummary, TicketTypeSummary
from inventoryd.http import schemas


def event_out(summary: EventSummary) -> schemas.EventOut:
    definition = summary.definition
    return schemas.EventOut(
        id=definition.id,
        name=definition.name,
        status=summary.status,
        starts_at=definition.starts_at,
        currency=definition.currency,
        ticket_types=[ticket_type_out(state) for state in summary.ticket_types],
        created_at=definition.created_at,
        hold_seconds=definition.hold_seconds,
        description=definition.description,
        venue=definition.venue,
        city=definition.city,
        category=definition.category,
        ends_at=definition.ends_at,
        sale_starts_at=definition.sale_starts_at,
        sale_ends_at=definition.sale_ends_at,
        cancel_until=definition.cancel_until,
        per_user_limit=definition.per_user_limit,
    )


class EncodedEvents:
    """Each event's answer (its EventOut as JSON), encoded once per view the actor publishes: a
    listing of twenty events joins twenty encoded answers instead of building and encoding them
    again for every reader. Keeps the latest of at most `entries_max` events (the oldest goes)."""

    __slots__ = ("_bodies", "_entries_max")

    def __init__(self, entries_max: int = limits.ENCODED_EVENTS_MAX) -> None:
        self._bodies: dict[str, tuple[EventSummary, msgspec.Raw]] = {}
        self._entries_max = entries_max

    def __len__(self) -> int:
        return len(self._bodies)

    def encoded(self, summary: EventSummary) -> msgspec.Raw:
        event_id = summary.definition.id
        held = self._bodies.get(event_id)
        if held is not None and held[0] is summary:  # a view is immutable: the same one, the same answer
            return held[1]
        body = msgspec.Raw(schemas.ENCODER.encode(event_out(summary)))
        if held is None and len(self._bodies) >= self._entries_max:
            del self._bodies[next(iter(self._bodies))]
        self._bodies[event_id] = (summary, body)
        return body


def ticket_type_out(state: TicketTypeSummary) -> schemas.TicketTypeOut:
    return schemas.TicketTypeOut(
        code=state.code,
        name=state.name,
        price=state.price,
        capacity=state.capacity,
        available=state.available,
        held=state.held,
        sold=state.sold,
    )
