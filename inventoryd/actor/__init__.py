"""The event actor: the one owner of an event's inventory (`actor.py`), its mailbox (`mailbox.py`),
one batch of its work (`batch.py`), and what callers give it and get back (`outcomes.py`).

Callers use `await actor.reserve(...)` and its siblings; the mailbox's message format never leaks
out of this package."""

from inventoryd.actor.actor import Clock, CommittedSeats, EventActor, system_clock
from inventoryd.actor.outcomes import ActorRestartRequired, IdempotencyClaim, Outcome
from inventoryd.errors import Unavailable

__all__ = ["ActorRestartRequired", "Clock", "CommittedSeats", "EventActor", "IdempotencyClaim", "Outcome", "Unavailable", "system_clock"]
