"""The event actor: the one owner of an event's inventory.

Callers `await actor.reserve(...)` (or confirm, cancel, …). The actor takes its mailbox's waiting
messages as one batch (at most BATCH_MESSAGES_MAX), decides each against the inventory, applying each
decision's records before the next decision, appends the whole batch's records to the journal in
one transaction, and only then replies to every message of the batch. If the append certainly
failed it rolls the inventory back to its state before the batch and answers every message with a
retryable error; if the outcome is unknown it answers the same and stops, so that its supervisor
rebuilds it from the log, which knows what happened.

Reads never see uncommitted changes: while a batch's append is in flight, `reservation()` answers
from the values the batch replaced, and availability comes from a view published after each commit.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import secrets
from collections.abc import Callable, Sequence
from dataclasses import InitVar, dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn

import msgspec
import structlog

from inventoryd import domain, limits
from inventoryd.actor.batch import Batch, fail
from inventoryd.actor.expiry import HoldTimer
from inventoryd.actor.mailbox import Mailbox, Message
from inventoryd.actor.outcomes import ActorRestartRequired, IdempotencyClaim, Outcome
from inventoryd.actor.snapshots import Snapshots, SnapshotStore
from inventoryd.domain import EventDefinition, EventSummary, Inventory, QueueEntry, Reservation, invariant
from inventoryd.errors import Unavailable
from inventoryd.tasks import TaskSupervisor
from persistence import limits as persistence_limits
from persistence.journal import AppendFailed, AppendFenced, AppendOutcomeUnknown, CatalogueRow, Journal

log = structlog.get_logger("inventoryd.actor")

# How the actor's bounds fit the journal's: a full batch fits one journal transaction (a message
# produces at most two records, a join that makes the shuffle; an expiry message at most
# EXPIRIES_PER_MESSAGE_MAX, and the waiting room's shuffle, admissions and ends), and a request
# whose message was decided always outlives the commit that settles it.
invariant(
    2 * limits.BATCH_MESSAGES_MAX + limits.EXPIRIES_PER_MESSAGE_MAX + 2 <= persistence_limits.JOURNAL_COMMIT_RECORDS_MAX,
    "a full batch must fit one journal transaction",
)
invariant(persistence_limits.DB_TIMEOUT_S < limits.REQUEST_TIMEOUT_S, "a decided request must outlive its commit")

Clock = Callable[[], datetime]
_NEVER = datetime.min.replace(tzinfo=UTC)


class CommittedSeats:
    """The seats as last committed: each seat's status, and each row's as letters (f free, h held,
    s sold, b blocked), made once per view."""

    __slots__ = ("_overlay", "_reservation", "_rows", "answers", "seats", "view")

    def __init__(
        self,
        view: EventSummary | None,
        seats: domain.SeatState,
        overlay: Callable[[], dict[str, tuple[str | None, bool]]],
        reservation: Callable[[str], Reservation | None],
    ) -> None:
        self.view = view
        self.seats = seats
        self._overlay = overlay
        self._reservation = reservation
        self._rows: list[str] | None = None
        # Answers made from this view, kept with it (the HTTP layer's: by section, encoded).
        self.answers: dict[str | None, bytes] = {}

    def status(self, seat: int) -> domain.SeatStatus:
        seats = self.seats
        overlay = self._overlay()  # the batch in flight's, asked each time: it comes and goes
        was = overlay.get(seats.map.ids[seat]) if overlay else None
        holder, blocked = was if was is not None else (seats.holder[seat], seat in seats.blocked)
        if blocked:
            return "blocked"
        if holder is None:
            return "free"
        reservation = self._reservation(holder)
        if reservation is None:  # made by the batch in flight
            return "free"
        return "sold" if reservation.status == "confirmed" else "held"

    def rows(self) -> list[str]:
        """Each row's statuses, one letter a seat, in the row's order."""
        if self._rows is None:
            letters = domain.seats.STATUS_LETTERS
            seat_map = self.seats.map
            self._rows = [
                "".join(letters[self.status(seat)] for seat in seat_map.row_seats(row)) for row in range(len(seat_map.row_keys))
            ]
        return self._rows


def system_clock() -> datetime:
    return datetime.now(UTC)


def _waits(inventory: Inventory, batch: Batch) -> list[float]:
    """How long the buyers `batch` admitted had waited: from joining to the wave."""
    waits = []
    for entry_id, was in batch.before_queue.items():
        entry = inventory.queue.entries.get(entry_id)
        if was is not None and was.status == "waiting" and entry is not None and entry.admitted_at is not None:
            waits.append((entry.admitted_at - entry.joined_at).total_seconds())
    return waits


@dataclass(eq=False)
class EventActor:
    event_id: str
    journal: Journal
    inventory: Inventory
    clock: Clock = system_clock
    # The event's shard, and the epoch at which this node holds it: every append carries both, and
    # the journal's fence refuses it if the shard has moved on (this actor is then dropped).
    shard: int = 0
    epoch: int = 0
    # Told of every committed batch: (messages decided, messages that were waiting when it began).
    on_batch: Callable[[int, int], None] | None = None
    # Told of the catalogue rows of every committed batch that wrote some.
    on_catalogue: Callable[[Sequence[CatalogueRow]], object] | None = None
    # Told (event id, last seq) when a batch's records committed: the outbox's cue to deliver them.
    on_committed: Callable[[str, int], None] | None = None
    # Told, after a committed wave, how long each buyer it let in had waited (seconds).
    on_admitted: Callable[[list[float]], None] | None = None
    # The constructor's view of the snapshots (see `snapshots`): where they are stored, where the
    # writes run (the registry's supervisor; an actor on its own has its own), the latest written.
    write_snapshot: InitVar[SnapshotStore | None] = None
    snapshot_seq: InitVar[int] = 0
    tasks: InitVar[TaskSupervisor | None] = None
    snapshots: Snapshots = field(init=False)
    _mailbox: Mailbox = field(default_factory=lambda: Mailbox(limits.MAILBOX_MESSAGES_MAX))
    _running: bool = False
    # False once a drain begins: new requests are refused, queued ones are still decided.
    _accepting: bool = False
    _processing: bool = False
    # The batch whose append is in flight (reads show what it replaced).
    _in_flight: Batch | None = None
    _view: EventSummary | None = None
    _timer: HoldTimer = field(init=False)
    # Made only while someone waits for a change, so that a commit pays nothing otherwise.
    _next_change: asyncio.Future[None] | None = None
    # True once this actor will never run again here (see `retire`).
    _retired: bool = False
    # The seats as a reader sees them, for the view they were made for (see `seat_view`).
    _seat_view: CommittedSeats | None = None
    # (last seq, the seats changed, None: all) of the latest commits that changed seats.
    _seat_changes: collections.deque[tuple[int, frozenset[str] | None]] = field(
        default_factory=lambda: collections.deque(maxlen=limits.SEAT_CHANGES_KEPT_MAX)
    )

    def __post_init__(self, write_snapshot: SnapshotStore | None, snapshot_seq: int, tasks: TaskSupervisor | None) -> None:
        self.snapshots = Snapshots(self.event_id, write_snapshot, tasks or TaskSupervisor("actor"), snapshot_seq)
        self._timer = HoldTimer(self._mailbox, self.clock)

    # -- the callers' side ----------------------------------------------------------------------

    async def create(self, definition: EventDefinition, *, claim: IdempotencyClaim | None = None) -> Outcome:
        return await self._ask(domain.CreateEvent(definition), claim, None)

    async def reserve(
        self,
        user_id: str,
        ticket_type: str,
        quantity: int,
        *,
        waitlist: bool = False,
        seats: tuple[str, ...] = (),
        adjacent: bool = True,
        claim: IdempotencyClaim | None = None,
        request_id: str | None = None,
    ) -> Outcome:
        return await self._ask(domain.Reserve(user_id, ticket_type, quantity, waitlist, seats, adjacent), claim, request_id)

    async def confirm(
        self, reservation_id: str, *, claim: IdempotencyClaim | None = None, request_id: str | None = None
    ) -> Outcome:
        return await self._ask(domain.Confirm(reservation_id), claim, request_id)

    async def cancel(
        self,
        reservation_id: str,
        *,
        privileged: bool = False,
        claim: IdempotencyClaim | None = None,
        request_id: str | None = None,
    ) -> Outcome:
        return await self._ask(domain.Cancel(reservation_id, privileged), claim, request_id)

    async def check_in(self, ticket_id: str, *, request_id: str | None = None) -> Outcome:
        return await self._ask(domain.CheckIn(ticket_id), None, request_id)

    async def update_event(
        self, changes: dict[str, Any], *, claim: IdempotencyClaim | None = None, request_id: str | None = None
    ) -> Outcome:
        return await self._ask(domain.UpdateEvent(changes), claim, request_id)

    async def add_ticket_type(
        self,
        ticket_type: domain.TicketTypeDefinition,
        *,
        claim: IdempotencyClaim | None = None,
        request_id: str | None = None,
    ) -> Outcome:
        return await self._ask(domain.AddTicketType(ticket_type), claim, request_id)

    async def change_ticket_type(
        self,
        code: str,
        *,
        name: str | None = None,
        price: int | None = None,
        capacity: int | None = None,
        claim: IdempotencyClaim | None = None,
        request_id: str | None = None,
    ) -> Outcome:
        return await self._ask(domain.ChangeTicketType(code, name, price, capacity), claim, request_id)

    async def cancel_event(self, *, claim: IdempotencyClaim | None = None, request_id: str | None = None) -> Outcome:
        return await self._ask(domain.CancelEvent(), claim, request_id)

    async def set_seat_map(
        self, layout: domain.SeatLayout, *, claim: IdempotencyClaim | None = None, request_id: str | None = None
    ) -> Outcome:
        return await self._ask(domain.SetSeatMap(layout), claim, request_id)

    async def block_seats(
        self, seats: tuple[str, ...], reason: str, *, claim: IdempotencyClaim | None = None, request_id: str | None = None
    ) -> Outcome:
        return await self._ask(domain.BlockSeats(seats, reason), claim, request_id)

    async def unblock_seats(
        self, seats: tuple[str, ...], *, claim: IdempotencyClaim | None = None, request_id: str | None = None
    ) -> Outcome:
        return await self._ask(domain.UnblockSeats(seats), claim, request_id)

    def seat_view(self) -> CommittedSeats | None:
        """The seats as last committed (None: no map is), with each row's statuses, made once per
        commit that a reader asks after. Its seat state is the committed one: the live state (with
        the values a batch in flight replaced, looked up as it reads), or, while a batch that puts
        a new map is in flight, the state it replaced, which nothing changes any more."""
        view = self._view
        cached = self._seat_view
        if cached is not None and cached.view is view:
            return cached
        batch = self._in_flight
        seats = self.inventory.seats
        if batch is not None and batch.seat_map_before is not False:
            seats = batch.seat_map_before if isinstance(batch.seat_map_before, domain.SeatState) else None
        if seats is None:
            return None
        self._seat_view = CommittedSeats(view, seats, self._seats_in_flight, self._committed)
        return self._seat_view

    def _seats_in_flight(self) -> dict[str, tuple[str | None, bool]]:
        """What the batch in flight changed of the seats, as committed (its first look at each; it
        stops looking once it puts a new map, after which reads use the map it replaced)."""
        batch = self._in_flight
        return batch.seats_before if batch is not None else {}

    def seat_changes_since(self, seq: int) -> set[str] | None:
        """The seats changed by commits after `seq`, or None when that is not known any more (more
        than SEAT_CHANGES_KEPT_MAX commits ago, or a new map since): every seat may have."""
        changed: set[str] = set()
        oldest = self._seat_changes[0][0] if self._seat_changes else self.inventory.last_seq
        if seq < oldest - 1 and len(self._seat_changes) == self._seat_changes.maxlen:
            return None
        for last_seq, seats in self._seat_changes:
            if last_seq > seq:
                if seats is None:
                    return None
                changed.update(seats)
        return changed

    async def join_queue(self, user_id: str, *, request_id: str | None = None) -> Outcome:
        # A fresh seed: it draws the shuffle if this join is the first thing after the sale starts.
        return await self._ask(domain.JoinQueue(user_id, secrets.randbits(63)), None, request_id)

    async def leave_queue(self, entry_id: str, *, request_id: str | None = None) -> Outcome:
        return await self._ask(domain.LeaveQueue(entry_id), None, request_id)

    def queue_entry(self, entry_id: str) -> QueueEntry | None:
        """The waiting-room entry as last committed, with its place in line if it waits (the place
        counts the line as this actor has it: while a wave is being saved, after it)."""
        batch = self._in_flight
        if batch is not None and entry_id in batch.before_queue:
            entry = batch.before_queue[entry_id]
        else:
            entry = self.inventory.queue.entries.get(entry_id)
        if entry is None or entry.status != "waiting":
            return entry
        return msgspec.structs.replace(entry, position=self.inventory.queue.waiting_ahead(entry_id))

    def reservation(self, reservation_id: str) -> Reservation | None:
        """The reservation as last committed (with its place in line, if it is waiting)."""
        reservation = self._committed(reservation_id)
        if reservation is not None and reservation.status == "waitlisted":
            return msgspec.structs.replace(reservation, position=self._waitlist_position(reservation))
        return reservation

    def _committed(self, reservation_id: str) -> Reservation | None:
        batch = self._in_flight
        if batch is not None and reservation_id in batch.before:
            return batch.before[reservation_id]
        return self.inventory.reservations.get(reservation_id)

    def _waitlist_position(self, reservation: Reservation) -> int:
        # Walk the list as committed: from the committed head, entries in flight as they were.
        ticket_type = self.inventory.ticket_types[reservation.ticket_type]
        head = ticket_type.waitlist_head
        if self._in_flight is not None:
            head = self._in_flight.waitlist_heads.get(reservation.ticket_type, head)
        position = 0
        for reservation_id in ticket_type.waitlist[head:]:
            entry = self._committed(reservation_id)
            if entry is not None and entry.status == "waitlisted":
                position += 1
            if reservation_id == reservation.id:
                return position
        raise domain.InvariantViolation(f"{reservation.id} is waitlisted but not in its list")

    async def wait_changed(self) -> None:
        """Return after the next commit that changed this event (for live availability)."""
        if self._next_change is None:
            self._next_change = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._next_change)

    @property
    def retired(self) -> bool:
        """Will this actor never change again here (its event moved to another node, or it failed
        for good)? Whoever watches it should let go: a fresh look finds where the event is now."""
        return self._retired

    def view(self) -> EventSummary | None:
        """The event as last committed, or None before its creation is."""
        return self._view

    def mailbox_depth(self) -> int:
        return len(self._mailbox)

    @property
    def running(self) -> bool:
        return self._running

    def wake_expiry(self) -> None:
        """Check for due holds now: the timer runs on the loop's clock, holds fall due by the wall
        clock, and the two part when the wall clock jumps (a suspended machine; a test's clock)."""
        if self._running:
            self._timer.fire()

    async def _ask(self, command: domain.Command, claim: IdempotencyClaim | None, request_id: str | None) -> Outcome:
        # No timer per request: the actor refuses a message that waited past REQUEST_TIMEOUT_S when
        # its turn comes, and every wait before that is bounded (a batch's commit by DB_TIMEOUT_S; a
        # stopping actor fails what is queued at once).
        if not self._accepting:
            raise Unavailable("the event's actor is recovering or shutting down; retry shortly")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        if not self._mailbox.put_nowait(Message(command, claim, request_id, future, loop.time())):
            raise Unavailable("too many requests are waiting for this event", code="overloaded")
        return await future

    # -- the actor's side -----------------------------------------------------------------------

    def start(self) -> None:
        """Accept messages: the inventory is recovered (or new)."""
        self.inventory.next_expiry()
        self._publish()
        self._running = True
        self._accepting = True
        self._schedule_expiry()
        if self.inventory.seats is not None and any(t.seated and t.waiting for t in self.inventory.ticket_types.values()):
            self._timer.fire()  # a seated line left with seats free (its promotions were capped)

    def stop_accepting(self) -> None:
        """Begin a drain: refuse new requests; what is queued or in flight is still answered."""
        self._accepting = False

    @property
    def idle(self) -> bool:
        return not self._processing and not self._mailbox

    def stop(self, reason: str) -> None:
        """Stop accepting; answer every waiting message with a retryable error."""
        self._running = False
        self._accepting = False
        self._timer.cancel()
        self._timer.queued = False
        for message in self._mailbox.take_nowait(len(self._mailbox)):
            fail(message, Unavailable(reason))

    def retire(self, reason: str) -> None:
        """Stop for good, and wake whoever waits for a change (`wait_changed`), who finds it retired."""
        self._retired = True
        self.stop(reason)
        if self._next_change is not None:
            self._next_change.set_result(None)
            self._next_change = None

    async def run(self) -> None:
        """Process batches until cancelled; raises ActorRestartRequired when it must be rebuilt.

        Group commit under load: when many buyers are active (those the last batch answered, and
        those who queued while it was committed), the ones just answered are about to come back, so
        the actor waits (at most BATCH_LINGER_S) until that many messages are queued before it takes
        the next batch. Without the wait, the buyers split into two halves whose batches alternate,
        and a busy event pays twice the transactions (and fsyncs) it needs. Buyers who think
        between requests do not come back within the wait: once a wait runs out with fewer than
        half of them back, the next BATCH_LINGER_BACKOFF_BATCHES batches are taken at once, so
        that they pay no latency for it."""
        invariant(self._running, "%s: run() before start()", self.event_id)
        previous = 0
        skip_lingers = 0
        while True:
            await self._mailbox.wait_not_empty()
            if previous < limits.BATCH_LINGER_FROM_MESSAGES:
                pass
            elif skip_lingers:
                skip_lingers -= 1
            elif not await self._mailbox.wait_for(min(previous, limits.BATCH_MESSAGES_MAX), limits.BATCH_LINGER_S):
                skip_lingers = limits.BATCH_LINGER_BACKOFF_BATCHES
            depth = len(self._mailbox)
            messages = self._mailbox.take_nowait(limits.BATCH_MESSAGES_MAX)
            if not messages:  # stopped while lingering: stop() answered what was queued
                continue
            self._processing = True
            try:
                batch = await self._process(messages)
            finally:
                self._processing = False
            if batch.committed and self.on_batch is not None:
                self.on_batch(len(batch.messages), depth)
            # The buyers this event has now: those just answered, and those who queued meanwhile.
            previous = len(batch.messages) + len(self._mailbox)

    async def _process(self, messages: list[Message]) -> Batch:
        """Decide, append, reply: one batch (with the messages that joined it). Unless its append
        failed (rolled back, every message told to retry), it is committed and answered."""
        loop = asyncio.get_running_loop()
        batch = Batch.begin(self.inventory)
        try:
            batch.decide(self.inventory, messages, self.clock(), loop.time() - limits.REQUEST_TIMEOUT_S)
        except Exception as error:  # noqa: BLE001 - a bug in decide or apply: contained to this batch
            self._batch_failed(batch, error)
        if batch.has_writes() and not await self._append(batch):
            return batch
        self.inventory.commit()
        batch.committed = True
        if self.inventory.last_seq != batch.last_seq:  # the log and the state must advance together
            raise domain.InvariantViolation(
                f"{self.event_id}: the batch's records end at {batch.last_seq}, the state at {self.inventory.last_seq}"
            )
        before = self._view
        if batch.seats_before or batch.seat_map_before is not False:
            changed = None if batch.seat_map_before is not False else frozenset(batch.seats_before)
            self._seat_changes.append((batch.last_seq, changed))
        self._publish()
        if batch.catalogue and self.on_catalogue is not None:
            self.on_catalogue(batch.catalogue)
        if batch.bodies and self.on_committed is not None:
            self.on_committed(self.event_id, batch.last_seq)
        for message, outcome in batch.replies:
            if message.future is not None and not message.future.done():
                message.future.set_result(outcome)
        if batch.kinds:
            self._log_domain_events(batch.kinds, before)
            if self.on_admitted is not None and "queue_admitted" in batch.kinds:
                self.on_admitted(_waits(self.inventory, batch))
        self._schedule_expiry(batch)
        if batch.promote_more:  # more of a seated line may fit: look again at once
            self._timer.fire()
        self.snapshots.write_if_due(self.inventory)
        return batch

    async def _append(self, batch: Batch) -> bool:
        """Write `batch` to the journal: True once committed, False if it certainly was not (the
        inventory is rolled back and every message told to retry); raises ActorRestartRequired if
        the outcome is unknown."""
        append = batch.append(self.event_id, self.shard, self.epoch)
        # The one callback of the write path: while the append waits in the journal's queue (behind
        # other events' commit), this event's next buyers queue here; the journal calls this just
        # before it writes the append, so that they join it instead of waiting for this commit and
        # the next. It runs while the actor waits for exactly this append: nothing else touches the
        # inventory meanwhile.
        append.before_write = functools.partial(self._join_queued, batch)
        self._in_flight = batch
        try:
            await self.journal.append(append)
        except AppendFailed as error:
            if batch.error is not None:
                self._batch_failed(batch, batch.error)
            self.inventory.rollback()
            moved = isinstance(error, AppendFenced)
            for message, _ in batch.replies:
                fail(message, Unavailable("the event moved to another node; retry" if moved else "the change could not be saved; retry"))
            log.warning(
                "actor_batch_rolled_back",
                event_id=self.event_id,
                messages=len(batch.replies),
                error=str(error),
                request_ids=[message.request_id for message, _ in batch.replies if message.request_id],
            )
            self._schedule_expiry(batch)
            return False
        except (AppendOutcomeUnknown, asyncio.CancelledError) as error:
            # Unknown: the log knows whether this batch committed; the state here cannot.
            for message, _ in batch.replies:
                fail(message, Unavailable("the outcome is not known yet; retry with the same Idempotency-Key"))
            if isinstance(error, asyncio.CancelledError):
                raise
            raise ActorRestartRequired(str(error)) from error
        finally:
            self._in_flight = None
        return True

    def _join_queued(self, batch: Batch) -> bool:
        """The messages queued since the batch was decided join it (up to BATCH_MESSAGES_MAX in
        all). False withdraws the append: deciding failed (a bug)."""
        if not self._running:
            return True
        joining = self._mailbox.take_nowait(limits.BATCH_MESSAGES_MAX - len(batch.messages))
        if not joining:
            return True
        try:
            batch.decide(self.inventory, joining, self.clock(), asyncio.get_running_loop().time() - limits.REQUEST_TIMEOUT_S)
        except Exception as error:  # noqa: BLE001 - a bug in decide or apply: the batch is withdrawn
            batch.error = error
            return False
        return True

    def _batch_failed(self, batch: Batch, error: Exception) -> NoReturn:
        """A bug in decide or apply (an invariant failed): nothing of this batch is sent."""
        self.inventory.rollback()
        for message in batch.messages:
            fail(message, Unavailable("internal error; retry"))
        log.error(
            "actor_batch_failed",
            event_id=self.event_id,
            error=repr(error),
            request_ids=[message.request_id for message in batch.messages if message.request_id],
        )
        raise ActorRestartRequired(repr(error)) from error

    # -- what is published after a commit ----------------------------------------------------------

    def _publish(self) -> None:
        self._view = self.inventory.summary() if self.inventory.definition is not None else None
        if self._next_change is not None:
            self._next_change.set_result(None)
            self._next_change = None

    def _log_domain_events(self, kinds: list[str], before: EventSummary | None) -> None:
        """What an operator wants to see as its own line, once it is durable. `before` is the event
        as published before this batch (None: the batch created it)."""
        if "event_created" in kinds:
            log.info("event_created", event_id=self.event_id, name=self.inventory.require_definition().name)
        if "event_cancelled" in kinds:
            log.info("event_cancelled", event_id=self.event_id)
        if expired := kinds.count("hold_expired"):
            log.info("holds_expired", event_id=self.event_id, count=expired)
        if promoted := kinds.count("waitlist_promoted"):
            log.info("waitlist_promoted", event_id=self.event_id, count=promoted)
        queue = self.inventory.queue
        if "queue_shuffled" in kinds:  # its seed is in the log's record: replay draws the same order
            log.info("queue_shuffled", event_id=self.event_id, waiting=queue.waiting())
        if "queue_admitted" in kinds:
            log.info("queue_admitted", event_id=self.event_id, admitted=queue.admitted, active=queue.active, waiting=queue.waiting())
        if before is None or self._view is None:
            return
        # Ticket types are only ever added, at the end: the published tuples pair up by position.
        for was, now in zip(before.ticket_types, self._view.ticket_types, strict=False):
            if was.available > 0 and now.available == 0:
                log.info("sold_out", event_id=self.event_id, ticket_type=now.code, capacity=now.capacity)

    def _schedule_expiry(self, batch: Batch | None = None) -> None:
        """After a batch (or at start): the timer wakes the actor when the next hold falls due, or
        when its waiting room next moves (the shuffle, a wave, an admission's end)."""
        if batch is not None and batch.expiry_decided:
            self._timer.queued = False
        self._timer.schedule(self._next_due() if self._running else None)

    def _next_due(self) -> datetime | None:
        due = self.inventory.next_expiry()
        definition = self.inventory.definition
        if definition is None or definition.queue is None or definition.sale_starts_at is None or self.inventory.status != "on_sale":
            return due
        moves = domain.queue.next_due(definition.queue, self.inventory.queue, definition.sale_starts_at)
        return moves if due is None or (moves is not None and moves < due) else due
