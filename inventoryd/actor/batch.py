"""One batch of an actor: the messages it decided, the records they produced, the idempotency
answers and catalogue rows written with them, each message's outcome, and the committed values of
what it changed (what reads show while its append is in flight)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import datetime

import msgspec

from inventoryd import domain, limits
from inventoryd.actor.mailbox import Message
from inventoryd.actor.outcomes import IdempotencyClaim, Outcome
from inventoryd.domain import EventSummary, Inventory, QueueEntry, Rejected, Reservation
from inventoryd.domain.apply import apply
from inventoryd.domain.decide import decide
from inventoryd.domain.seats import SeatState
from inventoryd.errors import Unavailable
from persistence.journal import Append, CatalogueRow, IdempotencyRow

_ENCODER = msgspec.json.Encoder()
# The records that change waiting-room entries (a shuffle changes only the line).
_QUEUE_RECORDS = (domain.QueueJoined, domain.QueueAdmitted, domain.QueueExpired, domain.QueueLeft)
_PROMOTE_SEATED = domain.PromoteSeated()
_CATALOGUE_FIELDS = tuple(column.name for column in dataclasses.fields(CatalogueRow))


_CATALOGUE_OWN_FIELDS = ("event_id", "status", "prices", "catalogue_seq")


def catalogue_row(inventory: Inventory) -> CatalogueRow:
    """The event's catalogue row as `inventory` has it now: each of the row's columns from the
    definition's field of that name, and the ticket types' prices as they are now (a definition
    keeps those it was created with)."""
    definition = inventory.require_definition()
    values = {name: getattr(definition, name) for name in _CATALOGUE_FIELDS if name not in _CATALOGUE_OWN_FIELDS}
    prices = tuple(sorted({ticket_type.price for ticket_type in inventory.ticket_types.values()}))
    return CatalogueRow(event_id=definition.id, status=inventory.status, prices=prices, catalogue_seq=inventory.last_seq, **values)


class Batch:
    # A plain class, not a dataclass: one is made per batch, and a dataclass's generated __init__
    # (a default factory per container) costs twice as much.
    __slots__ = (
        "answers",
        "before",
        "before_queue",
        "bodies",
        "catalogue",
        "committed",
        "error",
        "expiry_decided",
        "first_seq",
        "kinds",
        "messages",
        "promote_more",
        "replies",
        "seat_map_before",
        "seats_before",
        "waitlist_heads",
    )

    def __init__(self, first_seq: int) -> None:
        self.first_seq = first_seq
        self.messages: list[Message] = []
        self.kinds: list[str] = []
        self.bodies: list[bytes] = []
        self.answers: list[IdempotencyRow] = []
        self.catalogue: list[CatalogueRow] = []
        self.replies: list[tuple[Message, Outcome]] = []
        # The reservations this batch changed, as last committed (None: made by this batch), and
        # the waiting-list heads it moved, as committed: what reads show until the batch commits.
        self.before: dict[str, Reservation | None] = {}
        self.waitlist_heads: dict[str, int] = {}
        # The waiting-room entries it changed, as last committed (None: joined in this batch).
        self.before_queue: dict[str, QueueEntry | None] = {}
        # The seats it changed, as last committed (holder, blocked), by id; and, once it puts a new
        # seat map, the seats as last committed (reads show those, whole, until it commits).
        self.seats_before: dict[str, tuple[str | None, bool]] = {}
        self.seat_map_before: SeatState | bool | None = False
        # True when a decision promoted SEAT_PROMOTIONS_PER_DECISION_MAX waiting buyers: more may fit.
        self.promote_more = False
        # True once the batch decided the actor's own expiry message.
        self.expiry_decided = False
        # Set if deciding a message that joined the batch failed (a bug): the batch is withdrawn.
        self.error: Exception | None = None
        # True once its append is committed (and its messages answered).
        self.committed = False

    @classmethod
    def begin(cls, inventory: Inventory) -> Batch:
        inventory.begin()
        return cls(inventory.last_seq + 1)

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.kinds) - 1

    def has_writes(self) -> bool:
        return bool(self.kinds or self.answers)

    def decide(self, inventory: Inventory, messages: list[Message], now: datetime, stale_before: float) -> None:
        """Decide `messages` in order at `now`, applying each decision's records before the next."""
        self.messages.extend(messages)
        for message in messages:
            future = message.future
            if future is not None and (future.done() or message.enqueued_at < stale_before):
                # The caller went away, or waited too long to be answered anything but "retry".
                fail(message, Unavailable("the request waited too long for its event", code="overloaded"))
                continue
            command = message.command
            if isinstance(command, domain.ExpireDue):
                self.expiry_decided = True
            decision = decide(inventory, command, now)
            for record in decision.records:
                self._apply(inventory, record)
            if decision.promote_seated:
                # Seats freed for a seated type's line: picked now that the frees are applied.
                promotions = decide(inventory, _PROMOTE_SEATED, now).records
                for record in promotions:
                    self._apply(inventory, record)
                self.promote_more = self.promote_more or len(promotions) >= limits.SEAT_PROMOTIONS_PER_DECISION_MAX
            outcome = _outcome(inventory, command, decision, message.claim)
            if outcome.stored_answer is not None and message.claim is not None:
                claim = message.claim
                self.answers.append(IdempotencyRow(claim.scope, claim.key, claim.fingerprint, outcome.stored_answer))
            self.replies.append((message, outcome))

    def _apply(self, inventory: Inventory, record: domain.Record) -> None:
        reservation_id = getattr(record, "reservation_id", None)
        if reservation_id is not None and reservation_id not in self.before:
            previous = self.before[reservation_id] = inventory.reservations.get(reservation_id)
            if previous is not None and previous.status == "waitlisted":  # it leaves the line: the head may move
                self.waitlist_heads.setdefault(previous.ticket_type, inventory.ticket_types[previous.ticket_type].waitlist_head)
        elif isinstance(record, domain.EventCancelled):  # every line is emptied
            for code, ticket_type in inventory.ticket_types.items():
                self.waitlist_heads.setdefault(code, ticket_type.waitlist_head)
        if isinstance(record, _QUEUE_RECORDS):
            self._keep_queue_entries(inventory, record)
        if inventory.seats is not None or isinstance(record, domain.SeatMapSet):
            self._keep_seats(inventory, record)
        apply(inventory, inventory.last_seq + 1, record)
        self.kinds.append(domain.record_kind(record))
        self.bodies.append(_ENCODER.encode(record))
        if isinstance(record, domain.CATALOGUE_RECORDS):
            self.catalogue.append(catalogue_row(inventory))

    def _keep_queue_entries(self, inventory: Inventory, record: domain.Record) -> None:
        entries = inventory.queue.entries
        ids = getattr(record, "entry_ids", None) or ((record.entry_id,) if hasattr(record, "entry_id") else ())
        for entry_id in ids:
            if entry_id not in self.before_queue:
                self.before_queue[entry_id] = entries.get(entry_id)

    def _keep_seats(self, inventory: Inventory, record: domain.Record) -> None:
        if self.seat_map_before is not False:  # reads show the committed map, whole
            return
        seats = inventory.seats
        match record:
            case domain.ReservationHeld() | domain.WaitlistPromoted() | domain.SeatsBlocked() | domain.SeatsUnblocked():
                touched: Iterable[str] = record.seats
            case domain.HoldExpired() | domain.ReservationCancelled():
                reservation = inventory.reservations.get(record.reservation_id)
                touched = reservation.seats if reservation is not None else ()
            case domain.SeatMapSet():
                self.seat_map_before = seats
                return
            case domain.EventCancelled() if seats is not None:
                touched = [seats.map.ids[seat] for seat, holder in enumerate(seats.holder) if holder is not None]
            case _:
                return
        if seats is None:
            return
        before, number = self.seats_before, seats.map.number
        for seat_id in touched:
            if seat_id not in before:
                seat = number[seat_id]
                before[seat_id] = (seats.holder[seat], seat in seats.blocked)

    def append(self, event_id: str, shard: int, epoch: int) -> Append:
        return Append(
            event_id, self.first_seq, self.kinds, self.bodies, shard, epoch, idempotency=self.answers, catalogue=self.catalogue
        )


def _outcome(inventory: Inventory, command: domain.Command, decision: domain.Decision, claim: IdempotencyClaim | None) -> Outcome:
    reply = decision.reply
    if isinstance(reply, Rejected):
        return Outcome(reply)
    result: Reservation | EventSummary | QueueEntry | None
    if reply.queue_entry_id is not None:
        result = inventory.queue.entries[reply.queue_entry_id]
    elif reply.reservation_id is not None:
        result = inventory.reservations[reply.reservation_id]
    elif isinstance(command, domain.ExpireDue):
        result = None
    else:
        # An event-level command: the event as this decision leaves it.
        result = inventory.summary()
    # Every accepted answer is remembered under its key, also one that changed nothing (a
    # repeated confirm): its retry must get the same answer even after the state moved on.
    # Refusals (sold out, …) are not: they changed nothing, a retry is decided afresh.
    stored = _ENCODER.encode(result) if claim is not None and result is not None else None
    return Outcome(result, stored, unchanged=reply.unchanged)


def fail(message: Message, error: Exception) -> None:
    """Answer `message` with `error`, unless its caller has its answer or has gone."""
    future = message.future
    if future is not None and not future.done():
        future.set_exception(error)
        # A caller that gave up will never retrieve it; do not warn about that.
        future.exception()
