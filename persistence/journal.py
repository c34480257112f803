"""The journal: batched, group-committed appends to the log.

Any number of actors call `append()` concurrently. One writer task takes every append waiting at the
moment it is free (up to JOURNAL_COMMIT_RECORDS_MAX records) and writes them all in ONE statement:
a single implicit transaction that inserts the log rows, the idempotency answers and the catalogue
rows with `unnest` (multi-row inserts, never a statement per record). While that commit is in flight
new appends pile up and become the next one, so the number of commits (fsyncs) per record falls as
load rises.

Outcomes are never guessed:
- `AppendFailed`: the transaction certainly did not commit (the server refused it, or it was never
  sent). The caller may roll back and say "retry".
- `AppendOutcomeUnknown`: the connection broke or timed out after the statement was sent, and the
  journal could not settle the question. Before giving up it tries: it terminates the old backend,
  waits until it is gone, and looks for the batch's first record in the log.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime

import asyncpg
import structlog

from persistence import limits
from persistence.checks import PersistenceInvariantViolation, invariant
from persistence.errors import CONNECTION_LOST, DATABASE_AWAY
from persistence.linger import Busy

log = structlog.get_logger("persistence.journal")


class AppendFailed(Exception):
    """The append was certainly not committed."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        # The server answered "no" to the statement (rather than being unreachable): something in
        # the data, which retrying each append of a coalesced transaction alone will isolate.
        self.refused = refused


class AppendWithdrawn(AppendFailed):
    """The append's owner took it back before it was written (its `before_write` said so)."""


class AppendOutcomeUnknown(Exception):
    """The append may or may not have been committed; the log must be read to know."""


class AppendFenced(AppendFailed):
    """The shard this append writes is no longer held at its epoch (another node took it over, or
    this one released it): the database refused it, and nothing of it was written."""

    def __init__(self, shard: int, epoch: int) -> None:
        super().__init__(f"shard {shard} is no longer held at epoch {epoch}")
        self.shard = shard
        self.epoch = epoch


class LogAhead(AppendOutcomeUnknown):
    """The log already holds records at the positions appended to: this writer's state is behind
    the log (or another writer owns the event). Nothing was written; rebuild from the log."""


@dataclass(slots=True)
class IdempotencyRow:
    scope: str
    key: str
    fingerprint: bytes
    response: bytes


@dataclass(slots=True)
class CatalogueRow:
    event_id: str
    name: str
    description: str | None
    venue: str | None
    city: str | None
    category: str | None
    starts_at: datetime
    organizer_id: str | None
    status: str
    created_at: datetime
    # Each ticket type's price, ascending (the catalogue filters on them).
    prices: tuple[int, ...]
    # The log position of the record that made this row: of two rows of an event, the newer.
    catalogue_seq: int


@dataclass(slots=True)
class Append:
    """Consecutive records of one event, starting at `first_seq`, plus what is written with them."""

    event_id: str
    first_seq: int
    kinds: Sequence[str]
    bodies: Sequence[bytes]
    # The event's shard, and the epoch its writer holds it at: the transaction commits only if the
    # shard is still held at that epoch (the fence).
    shard: int
    epoch: int
    idempotency: Sequence[IdempotencyRow] = ()
    catalogue: Sequence[CatalogueRow] = ()
    # Called by the writer just before it takes the append into a transaction: the owner may add
    # to its lists what it decided meanwhile (the append is still its own until then), or answer
    # False to withdraw it (AppendWithdrawn).
    before_write: Callable[[], bool] | None = field(default=None, repr=False)
    future: asyncio.Future[None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if len(self.kinds) != len(self.bodies) or self.first_seq < 1 or not (self.kinds or self.idempotency):
            invariant(len(self.kinds) == len(self.bodies), "%s: %s kinds for %s bodies", self.event_id, len(self.kinds), len(self.bodies))
            invariant(self.first_seq >= 1, "%s: an append from seq %s", self.event_id, self.first_seq)
            invariant(False, "%s: an append writes records, idempotency answers, or both", self.event_id)


@dataclass(slots=True)
class JournalStats:
    commits: int = 0
    appends: int = 0
    records: int = 0
    failures: int = 0
    settled_committed: int = 0
    settled_failed: int = 0
    # Transactions the fence refused (a shard no longer held at its epoch): nothing was written.
    fenced: int = 0


def _catalogue_sql() -> tuple[str, str, str, str]:
    """The catalogue's part of the write, from CatalogueRow's fields: its columns, their unnest
    arguments, the values selected from them (an array column travels as its text form: PostgreSQL
    has no arrays of arrays), and what an update of an existing row sets (the event's id, organizer
    and creation never change)."""
    columns = [column.name for column in fields(CatalogueRow)]
    first = _LOG_AND_ANSWER_ARGUMENTS + 1
    arrays = ", ".join(f"${first + index}::{_CATALOGUE_TYPES.get(name, 'text')}[]" for index, name in enumerate(columns))
    values = ", ".join(f"{name}::{_CATALOGUE_ARRAY_COLUMNS[name]}" if name in _CATALOGUE_ARRAY_COLUMNS else name for name in columns)
    updates = ", ".join(f"{name} = EXCLUDED.{name}" for name in columns if name not in _CATALOGUE_FIXED)
    return ", ".join(columns), f"unnest({arrays}) AS c ({', '.join(columns)})", values, updates


# The arguments: the fence's two arrays (distinct shard and epoch pairs, in shard order), the log's
# five columns, the idempotency answers' four, then the catalogue's.
_FENCE_ARGUMENTS = 2
_LOG_AND_ANSWER_ARGUMENTS = _FENCE_ARGUMENTS + 9
_CATALOGUE_TYPES = {"starts_at": "timestamptz", "created_at": "timestamptz", "catalogue_seq": "bigint"}
_CATALOGUE_ARRAY_COLUMNS = {"prices": "bigint[]"}
_CATALOGUE_FIXED = ("event_id", "organizer_id", "created_at")
_CATALOGUE_COLUMNS, _CATALOGUE_SOURCE, _CATALOGUE_VALUES, _CATALOGUE_UPDATES = _catalogue_sql()
# Other nodes hear of the events a transaction wrote catalogue rows for (their ids, comma-separated)
# on this channel; PostgreSQL delivers a notification only once its transaction commits. A payload
# over CATALOGUE_NOTIFY_BYTES_MAX (PostgreSQL's bound is 8,000 bytes) is sent as "*": read them all.
CATALOGUE_CHANNEL = "inventoryd_catalogue"
CATALOGUE_NOTIFY_BYTES_MAX = 7_900
CATALOGUE_NOTIFY_ALL = "*"
# The last argument: the notification's payload ('' when the transaction writes no catalogue row).
_NOTIFY_ARGUMENT = _LOG_AND_ANSWER_ARGUMENTS + len(fields(CatalogueRow)) + 1
# The fence: every (shard, epoch) the transaction writes is locked FOR KEY SHARE (a change of owner
# changes the epoch, a key column, so it waits for this write, and this write for it), and nothing
# is inserted unless all of them still match. Under READ COMMITTED a write that waited for a
# takeover re-reads the newest row, where the epoch has moved: admitted is false, nothing is written.
# The statement returns the pairs still held; fewer than were sent means it wrote nothing. One
# statement, so that a paused or cut-off client can never hold the locks open.
_WRITE = f"""
WITH fence AS MATERIALIZED (
    SELECT coalesce(array_agg(shard_id), '{{}}') AS shards, coalesce(array_agg(epoch), '{{}}') AS epochs
    FROM (SELECT s.shard_id, s.epoch
          FROM unnest($1::int[], $2::bigint[]) AS f (shard_id, epoch)
          JOIN shards s ON s.shard_id = f.shard_id AND s.epoch = f.epoch AND s.owner_node IS NOT NULL
          ORDER BY s.shard_id
          FOR KEY SHARE OF s) AS locked
), admitted AS (
    SELECT cardinality(shards) = cardinality($1::int[]) AS ok FROM fence
), log AS (
    INSERT INTO journal (event_id, seq, epoch, kind, body)
    SELECT * FROM unnest($3::text[], $4::bigint[], $5::bigint[], $6::text[], $7::json[])
    WHERE (SELECT ok FROM admitted)
), answers AS (
    INSERT INTO idempotency_keys (scope, key, fingerprint, response)
    SELECT * FROM unnest($8::text[], $9::text[], $10::bytea[], $11::bytea[])
    WHERE (SELECT ok FROM admitted)
    ON CONFLICT (scope, key) DO NOTHING
), catalogue AS (
    INSERT INTO events ({_CATALOGUE_COLUMNS})
    SELECT {_CATALOGUE_VALUES} FROM {_CATALOGUE_SOURCE}
    WHERE (SELECT ok FROM admitted)
    ON CONFLICT (event_id) DO UPDATE SET {_CATALOGUE_UPDATES}, updated_at = now()
), notified AS (
    SELECT pg_notify('{CATALOGUE_CHANNEL}', ${_NOTIFY_ARGUMENT}::text)
    WHERE ${_NOTIFY_ARGUMENT}::text <> '' AND (SELECT ok FROM admitted)
)
SELECT shards, epochs, (SELECT count(*) FROM notified) AS notified FROM fence
"""


async def init_connection(connection: asyncpg.Connection) -> None:
    """JSON travels as raw bytes both ways: the service encodes and decodes it with msgspec."""
    await connection.set_type_codec(
        "json", schema="pg_catalog", encoder=bytes, decoder=bytes, format="binary"
    )
    await connection.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=lambda data: b"\x01" + data,  # binary jsonb: a version byte, then the text
        decoder=lambda data: data[1:],
        format="binary",
    )


async def connect(dsn: str, timeout_s: float = limits.DB_TIMEOUT_S) -> asyncpg.Connection:
    connection = await asyncpg.connect(dsn, timeout=timeout_s)
    await init_connection(connection)
    return connection


class Journal:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._pending: deque[Append] = deque()
        self._wakeup = asyncio.Event()
        # Pending appends that wake the writer (more than one while it lingers for a group commit).
        self._wanted = 1
        self._connection: asyncpg.Connection | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self.stats = JournalStats()
        # Told of every commit: (seconds, records, appends coalesced); metrics hook in here.
        self.on_commit: Callable[[float, int, int], None] | None = None
        # Told how long each group-commit wait lasted (seconds).
        self.on_wait: Callable[[float], None] | None = None
        # Told of the (shard, epoch) pairs the fence refused: their shards are lost to this node.
        self.on_fenced: Callable[[set[tuple[int, int]]], None] | None = None

    async def start(self) -> None:
        invariant(self._writer is None, "the journal was started twice")
        self._connection = await connect(self._dsn)
        self._writer = asyncio.create_task(self._write_loop(), name="journal-writer")

    async def close(self) -> None:
        """Write what is pending, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._writer is not None:
            await self._writer
            self._writer = None
        if self._connection is not None:
            await self._connection.close(timeout=limits.DB_TIMEOUT_S)
            self._connection = None

    def pending_appends(self) -> int:
        return len(self._pending)

    async def append(self, batch: Append) -> None:
        """Make `batch` durable. Returns once committed; raises AppendFailed or AppendOutcomeUnknown."""
        if self._closing or self._writer is None:
            raise AppendFailed("the journal is closed")
        if len(self._pending) >= limits.JOURNAL_PENDING_APPENDS_MAX:
            raise AppendFailed("the journal has too many appends waiting")
        batch.future = asyncio.get_running_loop().create_future()
        self._pending.append(batch)
        if len(self._pending) >= self._wanted:
            self._wakeup.set()
        await batch.future

    # -- the writer -----------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        # Appenders active around the last commit: those it answered, and those who queued meanwhile.
        active = 0
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if active >= limits.JOURNAL_LINGER_FROM_APPENDS and len(self._pending) < active and not self._closing:
                started = time.perf_counter()
                await self._linger(active)
                if self.on_wait is not None:
                    self.on_wait(time.perf_counter() - started)
            taken = self._take()
            if not taken:  # every pending append was withdrawn
                continue
            try:
                await self._write(taken)
            except _Fenced as fenced:
                self._fenced(taken, fenced.lost)
            except AppendFailed as error:
                self.stats.failures += 1
                if error.refused and len(taken) > 1:
                    # One append's data made the server refuse the whole transaction: write each
                    # on its own, so that it fails alone and its neighbours commit.
                    await self._write_one_by_one(taken)
                else:
                    _settle(taken, error)
            except AppendOutcomeUnknown as error:
                self.stats.failures += 1
                _settle(taken, error)
            except BaseException as error:  # cancellation: nothing may be left waiting forever
                _settle(taken, AppendOutcomeUnknown(f"journal writer stopped: {error!r}"))
                raise
            else:
                _settle(taken, None)
            active = len(taken) + len(self._pending)

    async def _linger(self, appends: int) -> None:
        """Group commit across events: many actors append one batch each; those just answered come
        back with their next ones within a few round trips. Wait for as many appends, so that they
        share one transaction instead of alternating.

        A busy server answers a whole commit's buyers before it reads their next requests, so
        their appends come back as one burst. The wait lasts until half of them are pending (at
        most JOURNAL_LINGER_S; if that runs out with fewer, at most JOURNAL_LINGER_MAX_S: the burst
        is late, not missing), then while more keep coming: a pause of JOURNAL_LINGER_QUIET_S ends
        it. Otherwise the few that come first, or the few that come a commit late (an event's
        second buyer waits for its first buyer's commit), would get a sync of their own, or hold
        the burst's commit back. And the wait ends as soon as the process idles through it
        (persistence.linger): buyers arriving at their own pace are not a burst coming back."""
        wanted = min(appends, limits.JOURNAL_PENDING_APPENDS_MAX)
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + limits.JOURNAL_LINGER_S
        extended = False
        busy = Busy()  # the wait ends early if this process idles: nobody is coming back at once
        try:
            while (pending := len(self._pending)) < wanted and not self._closing and not busy.idle():
                if 2 * pending >= wanted:
                    # Half are back: the rest of their burst comes right behind them, if at all.
                    self._wanted = wanted
                    woken = await self._woken_before(min(deadline, loop.time() + limits.JOURNAL_LINGER_QUIET_S))
                    if not woken and (len(self._pending) == pending or loop.time() >= deadline):
                        return
                else:
                    self._wanted = (wanted + 1) // 2
                    if not await self._woken_before(min(deadline, loop.time() + limits.LINGER_CHECK_S)):
                        if loop.time() < deadline:
                            continue  # a look at how busy the process is, not the deadline
                        if extended:
                            return
                        extended = True
                        deadline = started + limits.JOURNAL_LINGER_MAX_S
        finally:
            self._wanted = 1

    async def _woken_before(self, deadline: float) -> bool:
        """Wait until `append` wakes the writer (self._wanted appends are pending) or the journal
        closes: True; or until `deadline` (the event loop's clock): False."""
        self._wakeup.clear()
        if len(self._pending) >= self._wanted or self._closing:
            return True
        try:
            async with asyncio.timeout_at(deadline):
                await self._wakeup.wait()
        except TimeoutError:
            return False
        return True

    def _fenced(self, batches: list[Append], lost: set[tuple[int, int]]) -> None:
        """A transaction the fence refused wrote nothing: the appends of lost shards fail (their
        owners are told), the others go first into the next transaction."""
        self.stats.fenced += 1
        for batch in batches:
            if (batch.shard, batch.epoch) in lost:
                _settle([batch], AppendFenced(batch.shard, batch.epoch))
        self._pending.extendleft(reversed([batch for batch in batches if (batch.shard, batch.epoch) not in lost]))
        log.warning("append_fenced", shards=sorted(lost), appends=sum((b.shard, b.epoch) in lost for b in batches))
        if self.on_fenced is not None:
            self.on_fenced(lost)

    async def _write_one_by_one(self, batches: list[Append]) -> None:
        for batch in batches:
            try:
                await self._write([batch])
            except _Fenced as fenced:
                self._fenced([batch], fenced.lost)
            except (AppendFailed, AppendOutcomeUnknown) as error:
                self.stats.failures += 1
                _settle([batch], error)
            else:
                _settle([batch], None)

    def _take(self) -> list[Append]:
        taken: list[Append] = []
        records = 0
        while self._pending:
            batch = self._pending[0]
            if batch.before_write is not None and not batch.before_write():
                self._pending.popleft()
                _settle([batch], AppendWithdrawn("withdrawn by its owner before it was written"))
                continue
            if taken and records + len(batch.kinds) > limits.JOURNAL_COMMIT_RECORDS_MAX:
                break
            self._pending.popleft()
            records += len(batch.kinds)
            taken.append(batch)
        return taken

    async def _write(self, batches: list[Append]) -> None:
        arguments, notification = _arguments(batches)
        try:
            connection = await self._ensure_connection()
        except DATABASE_AWAY as error:
            raise AppendFailed(f"database unreachable: {error!r}") from error
        server_pid = connection.get_server_pid()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(limits.DB_TIMEOUT_S):
                held = await connection.fetchrow(_WRITE, *arguments, notification)
        except asyncpg.UniqueViolationError as error:
            if error.constraint_name == "journal_pkey":
                raise LogAhead(f"the log already has records where this append goes: {error!r}") from error
            raise AppendFailed(f"the database refused the append: {error!r}", refused=True) from error
        except CONNECTION_LOST as error:  # cut or terminated mid-statement: it may have committed first
            # Sent, but no answer: it may have committed.
            self._drop_connection()
            log.warning("journal_commit_in_doubt", error=repr(error), batches=len(batches))
            if await self._settle_in_doubt(server_pid, batches):
                self.stats.settled_committed += 1
            else:
                self.stats.settled_failed += 1
                raise AppendFailed(f"the commit was cut off and did not happen: {error!r}") from error
        except asyncpg.PostgresError as error:
            # The server answered with an error: the single-statement transaction rolled back.
            if connection.is_closed():
                self._drop_connection()
            raise AppendFailed(f"the database refused the append: {error!r}", refused=True) from error
        fence = {(batch.shard, batch.epoch) for batch in batches}
        if held is not None and len(held["shards"]) != len(fence):
            # Fenced: the statement wrote nothing (every insert waits on the fence).
            raise _Fenced(fence - set(zip(held["shards"], held["epochs"], strict=True)))
        elapsed = time.perf_counter() - started
        records = len(arguments[_FENCE_ARGUMENTS])
        self.stats.commits += 1
        self.stats.appends += len(batches)
        self.stats.records += records
        if self.on_commit is not None:
            self.on_commit(elapsed, records, len(batches))

    async def _ensure_connection(self) -> asyncpg.Connection:
        if self._connection is None or self._connection.is_closed():
            self._connection = await connect(self._dsn)
        return self._connection

    def _drop_connection(self) -> None:
        if self._connection is not None:
            self._connection.terminate()
            self._connection = None

    async def _settle_in_doubt(self, server_pid: int, batches: list[Append]) -> bool:
        """Did the cut-off transaction commit? True or False from the log, else AppendOutcomeUnknown.

        One row the transaction wrote answers for all of it: a log record if it had any, else an
        idempotency answer (a transaction can carry only those)."""
        with_record = next((batch for batch in batches if batch.kinds), None)
        with_answer = next((batch for batch in batches if batch.idempotency), None)
        try:
            async with asyncio.timeout(limits.DB_TIMEOUT_S):
                connection = await connect(self._dsn)
                try:
                    # The old backend might still be about to commit: end it and wait until it is
                    # gone, so that what the log says now is final.
                    await connection.execute("SELECT pg_terminate_backend($1)", server_pid)
                    # Polling the server: there is no event to wait on.
                    while await connection.fetchval("SELECT 1 FROM pg_stat_activity WHERE pid = $1", server_pid):  # noqa: ASYNC110
                        await asyncio.sleep(0.01)
                    if with_record is not None:
                        found = await connection.fetchval(
                            "SELECT 1 FROM journal WHERE event_id = $1 AND seq = $2",
                            with_record.event_id,
                            with_record.first_seq,
                        )
                    elif with_answer is not None:
                        answer = with_answer.idempotency[0]
                        found = await connection.fetchval(
                            "SELECT 1 FROM idempotency_keys WHERE scope = $1 AND key = $2 AND fingerprint = $3",
                            answer.scope,
                            answer.key,
                            answer.fingerprint,
                        )
                    else:
                        invariant(False, "an in-doubt transaction with neither records nor answers")
                finally:
                    await connection.close()
        except DATABASE_AWAY as error:
            raise AppendOutcomeUnknown(f"could not settle an in-doubt commit: {error!r}") from error
        log.info("journal_commit_settled", committed=bool(found), batches=len(batches))
        return bool(found)


class _Fenced(Exception):
    def __init__(self, lost: set[tuple[int, int]]) -> None:
        super().__init__(f"fenced: {sorted(lost)}")
        self.lost = lost


def _settle(batches: list[Append], error: BaseException | None) -> None:
    for batch in batches:
        future = batch.future
        if future is None:
            raise PersistenceInvariantViolation(f"{batch.event_id}: settled an append that was never queued")
        if future.done():
            continue
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


def _arguments(batches: list[Append]) -> tuple[tuple[list[object], ...], str]:
    """The statement's arrays, and the notification's payload (see CATALOGUE_CHANNEL)."""
    event_ids: list[object] = []
    seqs: list[object] = []
    epochs: list[object] = []
    kinds: list[object] = []
    bodies: list[object] = []
    answers: tuple[list[object], ...] = ([], [], [], [])
    # One catalogue row per event, the last one written: a transaction may carry several changes
    # of one event (INSERT … ON CONFLICT may not touch a row twice).
    catalogue: dict[str, CatalogueRow] = {}
    for batch in batches:
        count = len(batch.kinds)
        event_ids.extend([batch.event_id] * count)
        seqs.extend(range(batch.first_seq, batch.first_seq + count))
        epochs.extend([batch.epoch] * count)
        kinds.extend(batch.kinds)
        bodies.extend(batch.bodies)
        for row in batch.idempotency:
            for column, value in zip(answers, (row.scope, row.key, row.fingerprint, row.response), strict=True):
                column.append(value)
        for event in batch.catalogue:
            catalogue.pop(event.event_id, None)
            catalogue[event.event_id] = event
    catalogue_columns = tuple([_column_value(event, column.name) for event in catalogue.values()] for column in fields(CatalogueRow))
    fence = sorted({(batch.shard, batch.epoch) for batch in batches})
    shards: list[object] = [shard for shard, _ in fence]
    fence_epochs: list[object] = [epoch for _, epoch in fence]
    arrays = (shards, fence_epochs, event_ids, seqs, epochs, kinds, bodies, *answers, *catalogue_columns)
    return arrays, _notification(catalogue)


def _column_value(row: CatalogueRow, name: str) -> object:
    value = getattr(row, name)
    return "{" + ",".join(map(str, value)) + "}" if name in _CATALOGUE_ARRAY_COLUMNS else value


def _notification(catalogue: dict[str, CatalogueRow]) -> str:
    payload = ",".join(catalogue)
    return payload if len(payload) <= CATALOGUE_NOTIFY_BYTES_MAX else CATALOGUE_NOTIFY_ALL
