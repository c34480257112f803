"""The answers made from an actor's views (its committed EventSummary): an event as the API shows
it, and each event's answer kept encoded for the readers of listings and event pages."""

from __future__ import annotations

import msgspec

from inventoryd import limits
from inventoryd.actor import EventActor
from inventoryd.domain import EventSummary, QueueConfig, TicketTypeSummary
from inventoryd.domain.queue import QueueState
from inventoryd.http import schemas
from inventoryd.registry import Registry


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
        queue=_queue_out(definition.queue),
    )


def queue_line_out(event_id: str, queue: QueueState) -> schemas.QueueLineOut:
    """The line's totals (the organizer's view, and the report's)."""
    return schemas.QueueLineOut(
        event_id=event_id,
        shuffled=queue.shuffled,
        joined=queue.joined,
        waiting=queue.waiting() if queue.shuffled else len(queue.pre),
        admitted=queue.admitted,
        active=queue.active,
    )


def _queue_out(config: QueueConfig | None) -> schemas.QueueOut | None:
    if config is None:
        return None
    return schemas.QueueOut(
        opens_at=config.opens_at,
        admit_per_minute=config.admit_per_minute,
        admission_seconds=config.admission_seconds,
        max_active=config.max_active,
        exempt_user_ids=list(config.exempt_user_ids),
        pow_bits=config.pow_bits,
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
        seated=state.seated,
        blocked=state.blocked,
    )


class CachedListing:
    """A listing's answer, and what it was made from: valid while the catalogue is at `version` and
    each event still has the same actor here, serving, with the same view."""

    __slots__ = ("actors", "body", "etag", "version", "views")

    def __init__(self, version: int, actors: tuple[EventActor, ...], views: tuple[EventSummary, ...], body: bytes, etag: str) -> None:
        self.version = version
        self.actors = actors
        self.views = views
        self.body = body
        self.etag = etag


class ListingAnswers:
    """Listings answered again as they were while nothing they show changed (the same page asked
    by a crowd of refreshing browsers): keyed by the query string, at most `entries_max` (the
    oldest goes). Only pages whose events are all served here, none left out, are kept."""

    __slots__ = ("_answers", "_entries_max")

    def __init__(self, entries_max: int = limits.LISTING_ANSWERS_MAX) -> None:
        self._answers: dict[str, CachedListing] = {}
        self._entries_max = entries_max

    def __len__(self) -> int:
        return len(self._answers)

    def valid(self, key: str, version: int, registry: Registry) -> CachedListing | None:
        cached = self._answers.get(key)
        if cached is None or cached.version != version:
            return None
        serving = registry.cluster.serving
        for actor, view in zip(cached.actors, cached.views, strict=True):
            if actor.view() is not view or actor.retired or not serving(actor.shard) or registry.get(actor.event_id) is not actor:
                return None
        return cached

    def keep(self, key: str, listing: CachedListing) -> None:
        if key not in self._answers and len(self._answers) >= self._entries_max:
            del self._answers[next(iter(self._answers))]
        self._answers[key] = listing
