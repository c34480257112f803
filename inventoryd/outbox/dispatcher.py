"""The outbox: every committed change of the events this node owns, delivered to each sink that
wants it (every webhook endpoint; the buyers' confirmation emails), at least once and in log order
per event per sink.

Nothing here is on the reserve path. An actor tells the outbox only "event E's log now ends at
seq S" (a dict write and a set add per sink) after its batch committed; the outbox reads the
records from the journal itself, as the change feed does, so it delivers exactly what is committed.
Each (sink, event) pair is a *stream* with a cursor: the stream delivers its event's changes one
after the other, and moves its cursor only past what was delivered (or is not wanted). The cursors
are written to PostgreSQL every OUTBOX_SAVE_INTERVAL_S with the delivery log: a crash delivers the
last moments again (with the same delivery ids), never skips. A failed delivery holds only its own
stream, which tries again after an exponential back-off with jitter; a sink delivers at most
WEBHOOK_STREAMS_IN_FLIGHT_MAX streams at once, each sink on its own task, so one slow or dead
endpoint delays no other endpoint, and no other event of its own beyond its share.

Deliveries follow the event's owner: a node delivers only events it serves; a stream whose event
moved is dropped, and its next owner reads the cursor from the database. Around a change of owner
both may deliver a change: at least once, the same delivery id.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import aiohttp
import aiosmtplib
import asyncpg
import msgspec
import structlog

from inventoryd import limits
from inventoryd.config import Settings
from inventoryd.domain import EventDefinition, Reservation
from inventoryd.histogram import Histogram
from inventoryd.outbox.changes import Change, change_of
from inventoryd.outbox.email import Mailer, PermanentFailure, Template
from inventoryd.outbox.webhooks import DELIVERY_HEADER, SIGNATURE_HEADER, PublicResolver, delivery_id_for, signature
from inventoryd.tasks import TaskSupervisor
from persistence import outbox as store
from persistence.errors import DATABASE_AWAY
from persistence.journal import connect

log = structlog.get_logger("inventoryd.outbox")

WEBHOOKS_CHANNEL = "inventoryd_webhooks"
REDELIVERIES_CHANNEL = "inventoryd_redeliveries"
EMAIL_SINK = "email"
LAG_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)

# Where an event's committed state is read: its definition if this node serves it now (else None),
# and one of its reservations as committed.
Serving = Callable[[str], EventDefinition | None]
ReservationOf = Callable[[str, str], Reservation | None]


@dataclass(frozen=True, slots=True)
class Attempt:
    ok: bool
    status: int | None = None
    error: str | None = None
    response: str | None = None
    # Refused for good (a mail server's 5xx): counted as failed, and the stream moves on.
    permanent: bool = False


class Sink(Protocol):
    id: str
    # Whether it writes the delivery log (webhooks) or keeps its own (emails).
    logged: bool

    @property
    def active(self) -> bool: ...

    def wants_event(self, definition: EventDefinition) -> bool: ...

    def wants(self, change: Change) -> bool: ...

    async def deliver(self, event_id: str, change: Change, delivery_id: str) -> Attempt: ...


class WebhookSink:
    logged = True

    def __init__(self, row: store.WebhookRow, session: aiohttp.ClientSession, timeout_s: float) -> None:
        self.row = row
        self.id = row.webhook_id
        self._types = frozenset(row.types)
        self._session = session
        self._timeout_s = timeout_s

    @property
    def active(self) -> bool:
        return self.row.status == "active"

    def wants_event(self, definition: EventDefinition) -> bool:
        if self.row.event_id is not None and self.row.event_id != definition.id:
            return False
        return self.row.organizer_id is None or self.row.organizer_id == definition.organizer_id

    def wants(self, change: Change) -> bool:
        return change.type in self._types

    async def deliver(self, event_id: str, change: Change, delivery_id: str) -> Attempt:
        body = msgspec.json.encode(
            {"id": delivery_id, "type": change.type, "seq": change.seq, "event_id": event_id, "at": change.at, "data": change.data}
        )
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "inventoryd-webhooks/1",
            DELIVERY_HEADER: delivery_id,
            SIGNATURE_HEADER: signature(self.row.secret, body),
        }
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self._session.post(self.row.url, data=body, headers=headers, allow_redirects=False) as response:
                    answer = await response.content.read(limits.WEBHOOK_RESPONSE_BYTES_MAX)
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            return Attempt(False, error=f"{type(error).__name__}: {error}"[: limits.WEBHOOK_ERROR_KEPT_CHARS])
        text = answer.decode("utf-8", "replace")[: limits.WEBHOOK_RESPONSE_KEPT_CHARS]
        if 200 <= response.status < 300:
            return Attempt(True, response.status, response=text)
        return Attempt(False, response.status, f"HTTP {response.status}", text)


class EmailSink:
    """The buyer of each confirmed reservation gets one email. The claim in `confirmation_emails`
    is taken before sending and marked sent after: a confirmation already sent is never sent again
    (a crash between the send and the mark sends it again, with the same Message-ID)."""

    id = EMAIL_SINK
    logged = False
    active = True

    def __init__(self, pool: asyncpg.Pool, mailer: Mailer, template: Template, reservation_of: ReservationOf, serving: Serving) -> None:
        self._pool = pool
        self._mailer = mailer
        self._template = template
        self._reservation_of = reservation_of
        self._serving = serving
        self.sent = 0
        self.failed = 0

    def wants_event(self, definition: EventDefinition) -> bool:
        return True

    def wants(self, change: Change) -> bool:
        return change.type == "reservation.confirmed"

    async def deliver(self, event_id: str, change: Change, delivery_id: str) -> Attempt:
        reservation_id = str(change.data["reservation_id"])
        reservation = self._reservation_of(event_id, reservation_id)
        definition = self._serving(event_id)
        if reservation is None or definition is None:
            return Attempt(False, error="the event is not served here now")
        async with self._pool.acquire() as connection:
            if not await store.claim_email(connection, event_id, change.seq, reservation_id, reservation.user_id):
                return Attempt(True)  # sent already
            address = await store.buyer_address(connection, event_id, reservation.user_id)
            # Cancelled since (a delayed email must not announce tickets no longer valid), or nowhere to send it.
            skipped = "skipped" if reservation.status != "confirmed" else "no_address" if address is None else None
            if skipped is not None:
                await store.email_done(connection, event_id, change.seq, skipped)
                return Attempt(True)
        try:
            await self._mailer.send(self._template.message(self._mailer.sender, str(address), definition, reservation))
        except PermanentFailure as error:
            self.failed += 1
            await self._note(event_id, change.seq, "failed", str(error))
            return Attempt(False, error=str(error), permanent=True)
        except (OSError, TimeoutError, aiosmtplib.SMTPException) as error:
            self.failed += 1
            async with self._pool.acquire() as connection:
                await store.email_failed(connection, event_id, change.seq, repr(error)[: limits.WEBHOOK_ERROR_KEPT_CHARS])
            return Attempt(False, error=repr(error))
        self.sent += 1
        await self._note(event_id, change.seq, "sent")
        return Attempt(True)

    async def _note(self, event_id: str, seq: int, status: str, error: str | None = None) -> None:
        async with self._pool.acquire() as connection:
            await store.email_done(connection, event_id, seq, status, error and error[: limits.WEBHOOK_ERROR_KEPT_CHARS])


class Pace:
    """How fast deliveries may start: at will while the event loop keeps time, at most
    OUTBOX_BUSY_DELIVERIES_PER_S while it runs late (the reserve path has the node's CPU)."""

    def __init__(self) -> None:
        self.lag_s = 0.0
        self._next = 0.0

    @property
    def busy(self) -> bool:
        return self.lag_s > limits.OUTBOX_BUSY_LAG_S

    async def probe_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(limits.OUTBOX_LAG_PROBE_S)
            late = loop.time() - started - limits.OUTBOX_LAG_PROBE_S
            self.lag_s = 0.7 * self.lag_s + 0.3 * max(0.0, late)

    async def turn(self) -> None:
        """Return when the next delivery may start (each caller takes the next free slot)."""
        if not self.busy:
            return
        now = asyncio.get_running_loop().time()
        start = max(now, self._next)
        self._next = start + 1.0 / limits.OUTBOX_BUSY_DELIVERIES_PER_S
        if start > now:
            await asyncio.sleep(start - now)


class Stream:
    """One sink's delivery of one event's log."""

    __slots__ = ("attempts", "busy", "cursor", "event_id", "not_before")

    def __init__(self, event_id: str) -> None:
        self.event_id = event_id
        # Delivered up to here (None: not read from the database yet).
        self.cursor: int | None = None
        # Failed attempts at the change after the cursor, and when the next may be made (loop time).
        self.attempts = 0
        self.not_before = 0.0
        self.busy = False


@dataclass(eq=False)
class SinkState:
    sink: Sink
    streams: dict[str, Stream] = field(default_factory=dict)
    # Events with changes this sink may not have delivered yet; events it never wants (another
    # organizer's, or not its one event): not marked again at each of their commits.
    dirty: set[str] = field(default_factory=set)
    unwanted: set[str] = field(default_factory=set)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    running: int = 0
    task: asyncio.Task[None] | None = None
    # When the soonest stream backing off may go again (one timer, however often it is woken).
    timer: asyncio.TimerHandle | None = None


@dataclass
class OutboxStats:
    # Delivery attempts by sink kind ("webhook", "email") and outcome ("delivered", "retrying",
    # "failed"); how long after its commit each change was delivered.
    deliveries: Counter[tuple[str, str]] = field(default_factory=Counter)
    lag: Histogram = field(default_factory=lambda: Histogram(LAG_BUCKETS_S))


class Outbox:
    def __init__(
        self, database_url: str, pool: asyncpg.Pool, settings: Settings, *, serving: Serving, reservation_of: ReservationOf
    ) -> None:
        self._database_url = database_url
        self._pool = pool
        self._settings = settings
        self._serving = serving
        self._reservation_of = reservation_of
        self.stats = OutboxStats()
        self.pace = Pace()
        self.tasks = TaskSupervisor("outbox")
        # The last committed seq of every event served here (as its actor said).
        self._heads: dict[str, int] = {}
        self._sinks: dict[str, SinkState] = {}
        # Sinks for every event, and those for one event (by its id): who hears of a commit.
        self._for_all: list[SinkState] = []
        self._for_event: dict[str, list[SinkState]] = {}
        self.email: EmailSink | None = None
        # Waiting to be written: the delivery log's rows (the last of each delivery) and the
        # cursors that moved.
        self._writes: dict[str, store.DeliveryWrite] = {}
        self._moved: dict[tuple[str, str], int] = {}
        self._reload = asyncio.Event()
        self._redeliveries: asyncio.Queue[str] = asyncio.Queue(maxsize=limits.WEBHOOKS_MAX)
        self._session: aiohttp.ClientSession | None = None
        self._listener: asyncpg.Connection | None = None

    # -- what the actors say ------------------------------------------------------------------

    def committed(self, event_id: str, seq: int) -> None:
        """Event `event_id`'s log now ends at `seq` (committed). The one call on the write path."""
        # (Also when the head is known: an actor rebuilt after its shard came back may have
        # changes its streams here, dropped with the shard, have not delivered.)
        if seq > self._heads.get(event_id, 0):
            self._heads[event_id] = seq
        for state in self._for_all:
            if event_id not in state.unwanted:
                state.dirty.add(event_id)
                state.wake.set()
        for state in self._for_event.get(event_id, ()):
            state.dirty.add(event_id)
            state.wake.set()

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        settings = self._settings
        connector = aiohttp.TCPConnector(
            resolver=PublicResolver(allow_private=settings.webhooks_allow_private),
            limit=limits.WEBHOOKS_MAX,
            limit_per_host=limits.WEBHOOK_CONNECTIONS_PER_ENDPOINT_MAX,
        )
        self._session = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False, auto_decompress=False
        )
        if settings.smtp_url is not None:
            mailer = Mailer.from_url(settings.smtp_url, settings.smtp_from)
            self.email = EmailSink(self._pool, mailer, Template.load(settings.email_template), self._reservation_of, self._serving)
            async with self._pool.acquire() as connection:
                await store.start_email_cursors(connection)
            self._add(self.email, None)
        self.tasks.spawn(self.pace.probe_forever(), name="outbox-pace")
        self.tasks.spawn(self._keep_endpoints(), name="outbox-endpoints")
        self.tasks.spawn(self._save_forever(), name="outbox-save")
        self.tasks.spawn(self._redeliver_forever(), name="outbox-redeliver")
        self.tasks.spawn(self._sweep_forever(), name="outbox-sweep")

    async def stop(self) -> None:
        await self.tasks.close()
        try:
            await self._save()
        except DATABASE_AWAY as error:  # delivered again after the restart: at least once
            log.warning("outbox_progress_not_saved", error=repr(error))
        if self._session is not None:
            await self._session.close()
        if self._listener is not None and not self._listener.is_closed():
            await self._listener.close()

    def _add(self, sink: Sink, event_id: str | None) -> SinkState:
        state = self._sinks[sink.id] = SinkState(sink)
        if event_id is None:
            self._for_all.append(state)
            state.dirty.update(self._heads)
        else:
            self._for_event.setdefault(event_id, []).append(state)
            if event_id in self._heads:
                state.dirty.add(event_id)
        state.wake.set()
        state.task = self.tasks.spawn(self._run(state), name=f"outbox:{sink.id}")
        return state

    def _remove(self, sink_id: str) -> None:
        state = self._sinks.pop(sink_id)
        if isinstance(state.sink, WebhookSink):  # its streams still running stop after their delivery
            state.sink.row = dataclasses.replace(state.sink.row, status="deleted")
        if state in self._for_all:
            self._for_all.remove(state)
        for states in self._for_event.values():
            if state in states:
                states.remove(state)
        if state.task is not None:
            state.task.cancel()

    # -- the endpoints, as the database has them ------------------------------------------------

    async def _keep_endpoints(self) -> None:
        """Read every endpoint now, at every notification, and every OUTBOX_RELOAD_INTERVAL_S."""
        while True:
            try:
                await self._listen()
                async with self._pool.acquire() as connection:
                    rows = await store.live_webhooks(connection)
                self._endpoints(rows)
            except DATABASE_AWAY as error:
                log.warning("outbox_endpoints_unread", error=repr(error))
            self._reload.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reload.wait(), limits.OUTBOX_RELOAD_INTERVAL_S)

    async def _listen(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        listener = self._listener = await connect(self._database_url)
        await listener.add_listener(WEBHOOKS_CHANNEL, lambda *_: self._reload.set())
        await listener.add_listener(REDELIVERIES_CHANNEL, self._heard_redelivery)

    def _heard_redelivery(self, _connection: object, _pid: int, _channel: str, payload: object) -> None:
        try:
            self._redeliveries.put_nowait(str(payload))
        except asyncio.QueueFull:
            log.warning("outbox_redelivery_dropped", delivery_id=payload)

    def _endpoints(self, rows: list[store.WebhookRow]) -> None:
        session = self._session
        if session is None:
            return
        live = {row.webhook_id: row for row in rows}
        for sink_id in [sink_id for sink_id, state in self._sinks.items() if isinstance(state.sink, WebhookSink) and sink_id not in live]:
            self._remove(sink_id)
        for webhook_id, row in live.items():
            state = self._sinks.get(webhook_id)
            if state is None:
                self._add(WebhookSink(row, session, self._settings.webhook_timeout_s), row.event_id)
                continue
            sink = state.sink
            if isinstance(sink, WebhookSink) and sink.row != row:
                was_active, sink.row = sink.active, row
                if sink.active and not was_active:  # set going again by hand: every stream from its cursor
                    for stream in state.streams.values():
                        stream.attempts, stream.not_before = 0, 0.0
                    state.dirty.update(state.streams)
                    state.wake.set()

    # -- delivering -----------------------------------------------------------------------------

    async def _run(self, state: SinkState) -> None:
        """Start the streams of this sink that have something to deliver, at most
        WEBHOOK_STREAMS_IN_FLIGHT_MAX at once; a stream backing off is started when it may."""
        loop = asyncio.get_running_loop()
        while True:
            await state.wake.wait()
            state.wake.clear()
            if not state.sink.active:
                continue
            now, soonest = loop.time(), None
            for event_id in list(state.dirty):
                if state.running >= limits.WEBHOOK_STREAMS_IN_FLIGHT_MAX:
                    break
                stream = state.streams.get(event_id) or self._stream(state, event_id)
                if stream is None or stream.busy:
                    state.dirty.discard(event_id)  # a busy stream looks again when it is done
                    continue
                if stream.not_before > now:
                    soonest = min(soonest or stream.not_before, stream.not_before)
                    continue
                state.dirty.discard(event_id)
                stream.busy = True
                state.running += 1
                self.tasks.spawn(self._drain(state, stream), name=f"outbox:{state.sink.id}:{event_id}")
            timer = state.timer
            if soonest is not None and (timer is None or timer.cancelled() or timer.when() > soonest or timer.when() < now):
                if timer is not None:
                    timer.cancel()
                state.timer = loop.call_at(soonest, state.wake.set)

    def _stream(self, state: SinkState, event_id: str) -> Stream | None:
        definition = self._serving(event_id)
        if definition is None:
            return None
        if not state.sink.wants_event(definition):  # (an event's organizer and id never change)
            state.unwanted.add(event_id)
            return None
        stream = state.streams[event_id] = Stream(event_id)
        return stream

    async def _drain(self, state: SinkState, stream: Stream) -> None:
        """Deliver the stream's event's changes after its cursor, in order, until it is done, a
        delivery fails (it backs off), or the event is no longer served here."""
        sink, event_id = state.sink, stream.event_id
        try:
            while sink.active:
                if self._serving(event_id) is None:
                    state.streams.pop(event_id, None)  # its next owner reads the cursor again
                    return
                if stream.cursor is None:
                    async with self._pool.acquire() as connection:
                        stream.cursor = (await store.cursors(connection, [event_id])).get((sink.id, event_id), 0)
                if stream.cursor >= self._heads.get(event_id, 0):
                    return
                async with self._pool.acquire() as connection:
                    rows = await store.read_changes(connection, event_id, stream.cursor, limits.OUTBOX_READ_RECORDS_MAX)
                if not rows:  # (the head is committed, so this does not happen: look again later)
                    stream.not_before = asyncio.get_running_loop().time() + limits.OUTBOX_RELOAD_INTERVAL_S
                    return
                if not await self._deliver_rows(state, stream, rows):
                    return
        except DATABASE_AWAY as error:
            log.warning("outbox_read_failed", sink=sink.id, event_id=event_id, error=repr(error))
            stream.not_before = asyncio.get_running_loop().time() + limits.OUTBOX_RELOAD_INTERVAL_S
        finally:
            stream.busy = False
            state.running -= 1
            if stream.cursor is None or stream.cursor < self._heads.get(event_id, 0):
                state.dirty.add(event_id)
            state.wake.set()

    async def _deliver_rows(self, state: SinkState, stream: Stream, rows: list[store.ChangeRow]) -> bool:
        """True if every row was delivered (or is not wanted): the cursor is past them."""
        sink = state.sink
        for row in rows:
            change = change_of(row.seq, row.body, row.recorded_at)
            if change is not None and sink.wants(change) and not await self._deliver(state, stream, change):
                return False
            stream.cursor = row.seq
            self._moved[(sink.id, stream.event_id)] = row.seq
        return True

    async def _deliver(self, state: SinkState, stream: Stream, change: Change) -> bool:
        """One attempt at one change: True if the stream may go on past it."""
        sink, event_id = state.sink, stream.event_id
        delivery_id = delivery_id_for(sink.id, event_id, change.seq)
        kind = "webhook" if sink.logged else "email"
        await self.pace.turn()
        attempt = await sink.deliver(event_id, change, delivery_id)
        stream.attempts += 1
        if attempt.ok or attempt.permanent:
            self.stats.deliveries[kind, "delivered" if attempt.ok else "failed"] += 1
            self.stats.lag.observe(max(0.0, time.time() - change.at.timestamp()))
            self._log(sink, event_id, change, delivery_id, stream.attempts, attempt, "delivered" if attempt.ok else "failed", None)
            stream.attempts = 0
            return True
        if stream.attempts >= self._settings.webhook_attempts_max:
            self.stats.deliveries[kind, "failed"] += 1
            self._log(sink, event_id, change, delivery_id, stream.attempts, attempt, "failed", None)
            log.error("delivery_failed", sink=sink.id, event_id=event_id, seq=change.seq, attempts=stream.attempts, error=attempt.error)
            if not isinstance(sink, WebhookSink):
                stream.attempts = 0
                return True  # an email that could not be sent in all that time: the next buyers' go
            await self._give_up(state, sink)
            return False
        self.stats.deliveries[kind, "retrying"] += 1
        backoff = min(limits.WEBHOOK_RETRY_CAP_S, self._settings.webhook_retry_base_s * 2 ** (stream.attempts - 1))
        backoff *= random.uniform(0.5, 1.0)
        stream.not_before = asyncio.get_running_loop().time() + backoff
        retry_at = datetime.now(UTC) + timedelta(seconds=backoff)
        self._log(sink, event_id, change, delivery_id, stream.attempts, attempt, "pending", retry_at)
        log.info("delivery_retrying", sink=sink.id, event_id=event_id, seq=change.seq, attempts=stream.attempts, error=attempt.error)
        return False

    async def _give_up(self, state: SinkState, sink: WebhookSink) -> None:
        """A delivery ran out of attempts: its endpoint is failed (nothing more is sent to it, and
        nothing is skipped) until a delivery is retried by hand."""
        await self._save()
        async with self._pool.acquire() as connection:
            await store.mark_webhook_failed(connection, sink.id)
        # Only now here: a reading of the endpoints in between still sees it active (and must not
        # take it for one set going again by hand).
        sink.row = dataclasses.replace(sink.row, status="failed")
        for stream in state.streams.values():
            stream.attempts = 0

    def _log(
        self, sink: Sink, event_id: str, change: Change, delivery_id: str, attempts: int, attempt: Attempt, status: str,
        retry_at: datetime | None,
    ) -> None:
        if not sink.logged:
            return
        self._writes[delivery_id] = store.DeliveryWrite(
            delivery_id, sink.id, event_id, change.seq, change.type, status, attempts, attempt.status, attempt.error,
            attempt.response, retry_at,
        )

    # -- saving, redelivering, sweeping ---------------------------------------------------------

    async def _save(self) -> None:
        if not self._writes and not self._moved:
            return
        writes, moved = list(self._writes.values()), [(sink, event, seq) for (sink, event), seq in self._moved.items()]
        self._writes, self._moved = {}, {}
        try:
            async with self._pool.acquire() as connection:
                await store.save_progress(connection, writes, moved)
        except BaseException:
            for write in writes:  # kept for the next save (unless a newer outcome came meanwhile)
                self._writes.setdefault(write.delivery_id, write)
            for sink, event, seq in moved:
                self._moved[sink, event] = max(seq, self._moved.get((sink, event), 0))
            raise

    async def _save_forever(self) -> None:
        while True:
            await asyncio.sleep(limits.OUTBOX_SAVE_INTERVAL_S)
            try:
                await self._save()
            except DATABASE_AWAY as error:
                log.warning("outbox_progress_not_saved", error=repr(error))

    async def _redeliver_forever(self) -> None:
        while True:
            payload = await self._redeliveries.get()
            try:
                await self._redeliver(payload)
            except DATABASE_AWAY as error:
                log.warning("redelivery_failed", payload=payload, error=repr(error))

    async def _redeliver(self, payload: str) -> None:
        """A delivery retried by hand ("again <id>": it had been delivered; "now <id>": it had
        not), on the node that serves its event: a delivered one is sent once more; another is
        tried now (a failed endpoint's streams start again when its row says active, `_endpoints`)."""
        how, _, delivery_id = payload.partition(" ")
        async with self._pool.acquire() as connection:
            row = await store.delivery(connection, delivery_id)
        state = self._sinks.get(row.webhook_id) if row is not None else None
        if row is None or state is None or self._serving(row.event_id) is None:
            return
        if how != "again":
            stream = state.streams.get(row.event_id)
            if stream is not None:
                stream.attempts, stream.not_before = 0, 0.0
            state.dirty.add(row.event_id)
            state.wake.set()
            return
        async with self._pool.acquire() as connection:
            rows = await store.read_changes(connection, row.event_id, row.seq - 1, 1)
        change = change_of(rows[0].seq, rows[0].body, rows[0].recorded_at) if rows else None
        if change is None:
            return
        attempt = await state.sink.deliver(row.event_id, change, delivery_id)
        self.stats.deliveries["webhook", "delivered" if attempt.ok else "retrying"] += 1
        self._log(state.sink, row.event_id, change, delivery_id, row.attempts + 1, attempt, "delivered" if attempt.ok else "failed", None)

    async def _sweep_forever(self) -> None:
        while True:
            try:
                async with self._pool.acquire() as connection:
                    forgotten = await store.forget_old_deliveries(
                        connection, datetime.now(UTC) - timedelta(seconds=limits.WEBHOOK_DELIVERIES_KEPT_S)
                    )
                    erased = 0
                    if self._settings.retention_days:
                        erased = await store.erase_expired_contacts(
                            connection, datetime.now(UTC) - timedelta(days=self._settings.retention_days)
                        )
                if forgotten or erased:
                    log.info("outbox_swept", deliveries_forgotten=forgotten, contacts_erased=erased)
            except DATABASE_AWAY as error:
                log.warning("outbox_sweep_failed", error=repr(error))
            await asyncio.sleep(limits.OUTBOX_SWEEP_INTERVAL_S)

    # -- what the metrics read ------------------------------------------------------------------

    def endpoints(self) -> tuple[int, int]:
        """(endpoints, of which failed)."""
        webhooks = [state.sink for state in self._sinks.values() if isinstance(state.sink, WebhookSink)]
        return len(webhooks), sum(1 for sink in webhooks if not sink.active)

    def backlog(self) -> int:
        """Changes committed here that some active sink has not delivered yet (of streams it has read)."""
        return sum(
            max(0, self._heads.get(event_id, 0) - (stream.cursor or 0))
            for state in self._sinks.values()
            if state.sink.active
            for event_id, stream in state.streams.items()
        )

