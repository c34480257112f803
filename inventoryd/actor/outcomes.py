"""What the actor's callers give it and get back: their Idempotency-Key claim, and the outcome."""

from __future__ import annotations

from dataclasses import dataclass

from inventoryd.domain import EventSummary, QueueEntry, Rejected, Reservation


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    """An Idempotency-Key the caller holds for this request; its answer is stored with the records."""

    scope: str
    key: str
    fingerprint: bytes


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a command came to, once durable: the reservation, waiting-room entry or event it made or
    changed, or why not.

    `stored_answer` is the encoded answer written under the request's Idempotency-Key, if one was.
    """

    result: Reservation | EventSummary | QueueEntry | Rejected | None
    stored_answer: bytes | None = None
    # Accepted, but it changed nothing: it had been done (a repeated confirm, joining again).
    unchanged: bool = False


class ActorRestartRequired(Exception):
    """A batch's outcome is unknown or the state machine hit a bug: rebuild the actor from the log."""
