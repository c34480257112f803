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
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NoReturn

import asyncpg
import msgspec
import structlog

from inventoryd import domain, limits
from inventoryd.domain import Accepted, EventDefinition, EventSummary, Inventory, Rejected, Reservation
from persistence import limits as persistence_limits
from persistence.journal import Append, AppendFailed, AppendOutcomeUnknown, CatalogueRow, IdempotencyRow, Journal

log = structlog.get_logger("inventoryd.actor")

# How the actor's bounds fit the journal's: a full batch fits one journal transaction (a message
# produces at most one record, an expiry message at most EXPIRIES_PER_MESSAGE_MAX), and a request
# whose message was decided always outlives the commit that settles it.
assert limits.BATCH_MESSAGES_MAX + limits.EXPIRIES_PER_MESSAGE_MAX <= persistence_limits.JOURNAL_COMMIT_RECORDS_MAX
assert persistence_limits.DB_TIMEOUT_S < limits.REQUEST_TIMEOUT_S

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


class Unavailable(Exception):
    """The request was not carried out and may be retried (with the same Idempotency-Key)."""

    def __init__(self, detail: str, *, code: Literal["overloaded", "unavailable"] = "unavailable") -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code


class ActorRestartRequired(Exception):
    """A batch's outcome is unknown or the state machine hit a bug: rebuild the actor from the log."""


@dataclass(frozen=True, slots=True)
class IdempotencyClaim:
    """An Idempotency-Key the caller holds for this request; its answer is stored with the records."""

    scope: str
    key: str
    fingerprint: bytes


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a command came to, once durable: the reservation (or event) it made or changed, or why not.

    `stored_answer` is the encoded answer written under the request's Idempotency-Key, if one was.
    """

    result: Reservation | EventSummary | Rejected | None
    stored_answer: bytes | None = None


@dataclass(slots=True)
class _Work:
    """What a batch has decided so far: its records (from `first_seq`), idempotency answers,
    catalogue rows and replies; `error` if deciding a message that joined it failed."""

    first_seq: int
    kinds: list[str] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    answers: list[IdempotencyRow] = field(default_factory=list)
    catalogue: list[CatalogueRow] = field(default_factory=list)
    replies: list[tuple[_Message, Outcome]] = field(default_factory=list)
    error: Exception | None = None


@dataclass(slots=True, eq=False)
class _Message:
    build: Callable[[datetime], domain.Command]
    claim: IdempotencyClaim | None
    request_id: str | None
    future: asyncio.Future[Outcome] | None
    # The loop's clock when the message was queued.
    enqueued_at: float = 0.0


class _Mailbox:
    """A bounded FIFO with one waiting consumer."""

    __slots__ = ("_messages", "_capacity", "_waiter", "_wanted")

    def __init__(self, capacity: int) -> None:
        self._messages: deque[_Message] = deque()
        self._capacity = capacity
        self._waiter: asyncio.Future[None] | None = None
        # How many queued messages wake the waiter.
        self._wanted = 1

    def __len__(self) -> int:
        return len(self._messages)

    def put_nowait(self, message: _Message, *, bounded: bool = True) -> bool:
        if bounded and len(self._messages) >= self._capacity:
            return False
        self._messages.append(message)
        if self._waiter is not None and len(self._messages) >= self._wanted and not self._waiter.done():
            self._waiter.set_result(None)
        return True

    async def wait_not_empty(self) -> None:
        while not self._messages:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def wait_for(self, count: int, timeout_s: float) -> bool:
        """Wait until `count` messages are queued, or for `timeout_s`; True if at least half came."""
        if len(self._messages) >= count:
            return True
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        self._wanted = count
        timer = loop.call_later(timeout_s, _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
            self._wanted = 1
        return 2 * len(self._messages) >= count

    def take_nowait(self, count_max: int) -> list[_Message]:
        taken = []
        while self._messages and len(taken) < count_max:
            taken.append(self._messages.popleft())
        return taken


_ENCODER = msgspec.json.Encoder()
# Records that change the event's row in the catalogue.
_CATALOGUE_RECORDS = (domain.EventCreated, domain.EventUpdated, domain.EventCancelled)


@dataclass(eq=False)
class EventActor:
    event_id: str
    journal: Journal
    inventory: Inventory
    clock: Clock = system_clock
    epoch: int = 0
    # Told of every committed batch: (messages decided, messages that were waiting when it began).
    on_batch: Callable[[int, int], None] | None = None
    _mailbox: _Mailbox = field(default_factory=lambda: _Mailbox(limits.MAILBOX_MESSAGES_MAX))
    _running: bool = False
    # False once a drain begins: new requests are refused, queued ones are still decided.
    _accepting: bool = False
    _processing: bool = False
    # While a batch's append is in flight: the reservations it touched, as they were before it.
    _in_flight_previous: dict[str, Reservation | None] = field(default_factory=dict)
    _view: EventSummary | None = None
    _expiry_timer: asyncio.TimerHandle | None = None
    _expiry_timer_due: datetime = datetime.min.replace(tzinfo=UTC)
    _expiry_queued: bool = False
    # Made only while someone waits for a change, so that a commit pays nothing otherwise.
    _next_change: asyncio.Future[None] | None = None
    # Stores a snapshot (event id, seq, state); the log position of the latest one written.
    write_snapshot: Callable[[str, int, bytes], Awaitable[None]] | None = None
    snapshot_seq: int = 0
    # The log position of the latest snapshot that could not be written: the next try waits for
    # as many records again, so that a write that keeps failing (a snapshot too large for
    # DB_TIMEOUT_S, say) is not encoded and sent again after every batch.
    snapshot_failed_seq: int = 0
    _snapshot_task: asyncio.Task[None] | None = None

    # -- the callers' side ----------------------------------------------------------------------

    async def create(self, definition: EventDefinition, *, claim: IdempotencyClaim | None = None) -> Outcome:
        return await self._ask(lambda now: domain.CreateEvent(definition), claim, None)

    async def reserve(
        self,
        user_id: str,
        ticket_type: str,
        quantity: int,
        *,
        waitlist: bool = False,
        claim: IdempotencyClaim | None = None,
        request_id: str | None = None,
    ) -> Outcome:
        return await self._ask(
            lambda now: domain.Reserve(user_id, ticket_type, quantity, now, waitlist), claim, request_id
        )

    async def confirm(
        self, reservation_id: str, *, claim: IdempotencyClaim | None = None, request_id: str | None = None
    ) -> Outcome:
        return await self._ask(lambda now: domain.Confirm(reservation_id, now), claim, request_id)

    async def cancel(
        self,
        reservation_id: str,
        *,
        privileged: bool = False,
        claim: IdempotencyClaim | None = None,
        request_id: str | None = None,
    ) -> Outcome:
        return await self._ask(lambda now: domain.Cancel(reservation_id, now, privileged), claim, request_id)

    async def check_in(self, ticket_id: str, *, request_id: str | None = None) -> Outcome:
        return await self._ask(lambda now: domain.CheckIn(ticket_id, now), None, request_id)

    async def update_event(
        self, changes: dict[str, Any], *, claim: IdempotencyClaim | None = None, request_id: str | None = None
    ) -> Outcome:
        return await self._ask(lambda now: domain.UpdateEvent(changes), claim, request_id)

    async def add_ticket_type(
        self,
        ticket_type: domain.TicketTypeDefinition,
        *,
        claim: IdempotencyClaim | None = None,
        request_id: str | None = None,
    ) -> Outcome:
        return await self._ask(lambda now: domain.AddTicketType(ticket_type), claim, request_id)

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
        return await self._ask(
            lambda now: domain.ChangeTicketType(code, now, name=name, price=price, capacity=capacity), claim, request_id
        )

    async def cancel_event(self, *, claim: IdempotencyClaim | None = None, request_id: str | None = None) -> Outcome:
        return await self._ask(lambda now: domain.CancelEvent(now), claim, request_id)

    def reservation(self, reservation_id: str) -> Reservation | None:
        """The reservation as last committed (with its place in line, if it is waiting)."""
        reservation = self._committed(reservation_id)
        if reservation is not None and reservation.status == "waitlisted":
            return msgspec.structs.replace(reservation, position=self._waitlist_position(reservation))
        return reservation

    def _committed(self, reservation_id: str) -> Reservation | None:
        previous = self._in_flight_previous.get(reservation_id, _NOT_IN_FLIGHT)
        if previous is not _NOT_IN_FLIGHT:
            return previous  # type: ignore[no-any-return]
        return self.inventory.reservations.get(reservation_id)

    def _waitlist_position(self, reservation: Reservation) -> int:
        # Walk the list as committed: entries whose change is in flight count as they were.
        ticket_type = self.inventory.ticket_types[reservation.ticket_type]
        position = 0
        for reservation_id in ticket_type.waitlist[ticket_type.waitlist_head :]:
            entry = self._committed(reservation_id)
            if entry is not None and entry.status == "waitlisted":
                position += 1
            if reservation_id == reservation.id:
                return position
        raise AssertionError(f"{reservation.id} is waitlisted but not in its list")

    async def wait_changed(self) -> None:
        """Return after the next commit that changed this event (for live availability)."""
        if self._next_change is None:
            self._next_change = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._next_change)

    def view(self) -> EventSummary | None:
        """The event as last committed, or None before its creation is."""
        return self._view

    def mailbox_depth(self) -> int:
        return len(self._mailbox)

    @property
    def running(self) -> bool:
        return self._running

    def wake_expiry(self) -> None:
        """Check for due holds now (the clock may have been moved: tests, or a suspended machine)."""
        self._enqueue_expiry()

    async def _ask(
        self, build: Callable[[datetime], domain.Command], claim: IdempotencyClaim | None, request_id: str | None
    ) -> Outcome:
        # No timer per request: the actor refuses a message that waited past REQUEST_TIMEOUT_S when
        # its turn comes, and every wait before that is bounded (a batch's commit by DB_TIMEOUT_S; a
        # stopping actor fails what is queued at once).
        if not self._accepting:
            raise Unavailable("the event's actor is recovering or shutting down; retry shortly")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        if not self._mailbox.put_nowait(_Message(build, claim, request_id, future, loop.time())):
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
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        self._expiry_queued = False
        for message in self._mailbox.take_nowait(len(self._mailbox)):
            _fail(message, Unavailable(reason))

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
        assert self._running
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
            batch = self._mailbox.take_nowait(limits.BATCH_MESSAGES_MAX)
            if not batch:  # stopped while lingering: stop() answered what was queued
                continue
            self._processing = True
            try:
                await self._process(batch, depth)
            finally:
                self._processing = False
            # The buyers this event has now: those just answered, and those who queued meanwhile.
            previous = len(batch) + len(self._mailbox)

    async def _process(self, batch: list[_Message], depth: int) -> None:
        inventory = self.inventory
        work = _Work(first_seq=inventory.last_seq + 1)
        inventory.begin()
        try:
            self._decide(batch, work)
        except Exception as error:
            self._batch_failed(batch, error)
        if work.kinds or work.answers:
            append = Append(
                self.event_id,
                work.first_seq,
                work.kinds,
                work.bodies,
                epoch=self.epoch,
                idempotency=work.answers,
                catalogue=work.catalogue,
            )
            # Messages that come while the append waits for the journal (this event's next buyers,
            # who would otherwise wait for this commit and the next) join it before it is written.
            append.before_write = lambda: self._join_queued(batch, work)
            try:
                await self.journal.append(append)
            except AppendFailed as error:
                if work.error is not None:
                    self._batch_failed(batch, work.error)
                inventory.rollback()
                self._in_flight_previous.clear()
                for message, _ in work.replies:
                    _fail(message, Unavailable("the change could not be saved; retry"))
                log.warning(
                    "actor_batch_rolled_back",
                    event_id=self.event_id,
                    messages=len(work.replies),
                    error=str(error),
                    request_ids=[message.request_id for message, _ in work.replies if message.request_id],
                )
                self._schedule_expiry()
                return
            except (AppendOutcomeUnknown, asyncio.CancelledError) as error:
                # Unknown: the log knows whether this batch committed; the state here cannot.
                for message, _ in work.replies:
                    _fail(message, Unavailable("the outcome is not known yet; retry with the same Idempotency-Key"))
                self._in_flight_previous.clear()
                if isinstance(error, asyncio.CancelledError):
                    raise
                raise ActorRestartRequired(str(error)) from error
        inventory.commit()
        self._in_flight_previous.clear()
        before = self._view
        self._publish()
        for message, outcome in work.replies:
            if message.future is not None and not message.future.done():
                message.future.set_result(outcome)
        if self.on_batch is not None:
            self.on_batch(len(batch), depth)
        if work.kinds:
            self._log_domain_events(work.kinds, before)
        self._schedule_expiry()
        if self.snapshot_due() and (self._snapshot_task is None or self._snapshot_task.done()):
            # Encoded now, between batches (so it is committed state), written by a task the
            # actor owns: the next batch does not wait for PostgreSQL to store it.
            self._snapshot_task = asyncio.create_task(
                self._store_snapshot(self.inventory.last_seq, self.inventory.snapshot()), name=f"snapshot:{self.event_id}"
            )

    def _decide(self, messages: list[_Message], work: _Work) -> None:
        """Decide and apply `messages` in order, adding their records and answers to `work`."""
        inventory = self.inventory
        now = self.clock()
        stale_before = asyncio.get_running_loop().time() - limits.REQUEST_TIMEOUT_S
        for message in messages:
            if message.future is not None and (message.future.done() or message.enqueued_at < stale_before):
                # The caller went away, or waited too long to be answered anything but "retry".
                _fail(message, Unavailable("the request waited too long for its event", code="overloaded"))
                continue
            command = message.build(now)
            decision = inventory.decide(command)
            for record in decision.records:
                reservation_id = getattr(record, "reservation_id", None)
                if reservation_id is not None and reservation_id not in self._in_flight_previous:
                    self._in_flight_previous[reservation_id] = inventory.reservations.get(reservation_id)
                inventory.apply(inventory.last_seq + 1, record)
                work.kinds.append(domain.record_kind(record))
                work.bodies.append(_ENCODER.encode(record))
                if isinstance(record, _CATALOGUE_RECORDS):
                    assert inventory.definition is not None
                    work.catalogue.append(_catalogue_row(inventory.definition, inventory.status))
            outcome = self._outcome(command, decision, message.claim)
            if outcome.stored_answer is not None:
                assert message.claim is not None
                work.answers.append(
                    IdempotencyRow(message.claim.scope, message.claim.key, message.claim.fingerprint, outcome.stored_answer)
                )
            work.replies.append((message, outcome))

    def _join_queued(self, batch: list[_Message], work: _Work) -> bool:
        """The journal is about to write this batch's append: the messages queued meanwhile join it
        (up to BATCH_MESSAGES_MAX in all). Runs while the actor waits for exactly this append, so
        nothing else touches the inventory. False withdraws the append: deciding failed (a bug)."""
        if not self._running:
            return True
        joining = self._mailbox.take_nowait(limits.BATCH_MESSAGES_MAX - len(batch))
        if not joining:
            return True
        batch.extend(joining)
        try:
            self._decide(joining, work)
        except Exception as error:
            work.error = error
            return False
        return True

    def _batch_failed(self, batch: list[_Message], error: Exception) -> NoReturn:
        """A bug in decide or apply (an invariant failed): nothing of this batch is sent."""
        self.inventory.rollback()
        self._in_flight_previous.clear()
        for message in batch:
            _fail(message, Unavailable("internal error; retry"))
        log.error(
            "actor_batch_failed",
            event_id=self.event_id,
            error=repr(error),
            request_ids=[message.request_id for message in batch if message.request_id],
        )
        raise ActorRestartRequired(repr(error)) from error

    def snapshot_due(self) -> bool:
        tail = self.inventory.last_seq - max(self.snapshot_seq, self.snapshot_failed_seq)
        return tail >= max(limits.SNAPSHOT_EVERY_RECORDS, limits.SNAPSHOT_TAIL_RATIO * len(self.inventory.reservations))

    async def snapshot_now(self) -> None:
        """Write a snapshot of the committed state (call between batches)."""
        if self.inventory.definition is not None:
            await self._store_snapshot(self.inventory.last_seq, self.inventory.snapshot())

    async def _store_snapshot(self, seq: int, state: bytes) -> None:
        # A failure costs only a longer recovery: logged, never raised.
        if self.write_snapshot is None:
            return
        try:
            await self.write_snapshot(self.event_id, seq, state)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError) as error:
            log.warning("snapshot_failed", event_id=self.event_id, seq=seq, error=repr(error))
            self.snapshot_failed_seq = max(self.snapshot_failed_seq, seq)
            return
        self.snapshot_seq = max(self.snapshot_seq, seq)

    async def wait_snapshot_written(self) -> None:
        if self._snapshot_task is not None:
            await asyncio.gather(self._snapshot_task, return_exceptions=True)

    def _log_domain_events(self, kinds: list[str], before: EventSummary | None) -> None:
        """What an operator wants to see as its own line, once it is durable. `before` is the event
        as published before this batch (None: the batch created it)."""
        if "event_created" in kinds:
            assert self.inventory.definition is not None
            log.info("event_created", event_id=self.event_id, name=self.inventory.definition.name)
        if "event_cancelled" in kinds:
            log.info("event_cancelled", event_id=self.event_id)
        if expired := kinds.count("hold_expired"):
            log.info("holds_expired", event_id=self.event_id, count=expired)
        if promoted := kinds.count("waitlist_promoted"):
            log.info("waitlist_promoted", event_id=self.event_id, count=promoted)
        if before is None or self._view is None:
            return
        # Ticket types are only ever added, at the end: the published tuples pair up by position.
        for was, now in zip(before.ticket_types, self._view.ticket_types, strict=False):
            if was.available > 0 and now.available == 0:
                log.info("sold_out", event_id=self.event_id, ticket_type=now.code, capacity=now.capacity)

    def _outcome(
        self, command: domain.Command, decision: domain.Decision, claim: IdempotencyClaim | None
    ) -> Outcome:
        reply = decision.reply
        if isinstance(reply, Rejected):
            return Outcome(reply)
        assert isinstance(reply, Accepted)
        result: Reservation | EventSummary | None
        if reply.reservation_id is not None:
            result = self.inventory.reservations[reply.reservation_id]
        elif isinstance(command, domain.ExpireDue):
            result = None
        else:
            # An event-level command: the event as this decision leaves it.
            result = self.inventory.summary()
        # Every accepted answer is remembered under its key, also one that changed nothing (a
        # repeated confirm): its retry must get the same answer even after the state moved on.
        # Refusals (sold out, …) are not: they changed nothing, a retry is decided afresh.
        stored = _ENCODER.encode(result) if claim is not None and result is not None else None
        return Outcome(result, stored)

    def _publish(self) -> None:
        self._view = self.inventory.summary() if self.inventory.definition is not None else None
        if self._next_change is not None:
            self._next_change.set_result(None)
            self._next_change = None

    # -- hold expiry: a message the actor sends itself --------------------------------------------

    def _schedule_expiry(self) -> None:
        """After every batch: make sure a timer wakes the actor when the next hold falls due. A timer
        already set for no later than that is kept (on a busy event the earliest hold rarely
        changes, and re-arming per batch costs a timer each time); one that fires early finds
        nothing due, and sets the next."""
        due = self.inventory.next_expiry() if self._running and not self._expiry_queued else None
        if due is not None and self._expiry_timer is not None and self._expiry_timer_due <= due:
            return
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        if due is None:
            return
        delay_s = max(0.0, (due - self.clock()).total_seconds())
        self._expiry_timer = asyncio.get_running_loop().call_later(delay_s, self._enqueue_expiry)
        self._expiry_timer_due = due

    def _enqueue_expiry(self) -> None:
        self._expiry_timer = None
        if not self._running or self._expiry_queued:
            return
        self._expiry_queued = True

        def build(now: datetime) -> domain.Command:
            self._expiry_queued = False
            return domain.ExpireDue(now)

        # The timer's message is not bounded by the mailbox: there is at most one in it.
        self._mailbox.put_nowait(_Message(build, None, None, None), bounded=False)


_NOT_IN_FLIGHT: Any = object()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _fail(message: _Message, error: Exception) -> None:
    if message.future is not None and not message.future.done():
        message.future.set_exception(error)
        # A caller that gave up will never retrieve it; do not warn about that.
        message.future.exception()


def _catalogue_row(definition: EventDefinition, status: str) -> CatalogueRow:
    return CatalogueRow(
        event_id=definition.id,
        name=definition.name,
        description=definition.description,
        venue=definition.venue,
        city=definition.city,
        category=definition.category,
        starts_at=definition.starts_at,
        organizer_id=definition.organizer_id,
        status=status,
        created_at=definition.created_at,
    )
