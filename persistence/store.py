"""Reads of the durable log and of what is written beside it: recovery, idempotency, catalogue."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from persistence import limits
from persistence.checks import PersistenceInvariantViolation, invariant, present
from persistence.connection import Connection
from persistence.journal import init_connection

LogRows = list[tuple[int, bytes]]


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=init_connection,
        timeout=limits.DB_TIMEOUT_S,
        command_timeout=limits.DB_TIMEOUT_S,
    )
    invariant(pool is not None, "create_pool returned no pool")
    return pool


async def read_event_log(connection: Connection, event_id: str, after_seq: int = 0) -> LogRows:
    rows = await connection.fetch(
        "SELECT seq, body FROM journal WHERE event_id = $1 AND seq > $2 ORDER BY seq", event_id, after_seq
    )
    return [(row[0], row[1]) for row in rows]


async def logged_event_ids(connection: Connection) -> list[str]:
    """Every event that has a log, in order. A loose index scan of the journal's primary key: one
    probe per event, not a read of every record."""
    rows = await connection.fetch(
        """
        WITH RECURSIVE ids (event_id) AS (
            (SELECT event_id FROM journal ORDER BY event_id LIMIT 1)
            UNION ALL
            SELECT (SELECT j.event_id FROM journal j WHERE j.event_id > ids.event_id ORDER BY j.event_id LIMIT 1)
            FROM ids WHERE ids.event_id IS NOT NULL
        )
        SELECT event_id FROM ids WHERE event_id IS NOT NULL"""
    )
    return [row[0] for row in rows]


def stream_all_logs(connection: Connection) -> AsyncIterator[tuple[str, LogRows]]:
    """Every event's whole log, one event at a time, in one pass over the journal's primary key.
    Must run inside a transaction (see `recovery_snapshot`)."""
    return _stream_by_event(connection, "SELECT event_id, seq, body FROM journal ORDER BY event_id, seq")


def stream_tails(connection: Connection, events: list[str]) -> AsyncIterator[tuple[str, LogRows]]:
    """The records after each of `events`' latest snapshot, one event at a time, in id order
    (events whose log ends at their snapshot are not yielded). An index range scan per event, from
    its snapshot on: the records a snapshot covers are never read (a join would read them all, then
    drop them). Must run inside a transaction (see `recovery_snapshot`)."""
    query = """
        SELECT e.event_id, j.seq, j.body
        FROM unnest($1::text[]) AS e (event_id)
        CROSS JOIN LATERAL (
            SELECT j.seq, j.body FROM journal j
            WHERE j.event_id = e.event_id
              AND j.seq > coalesce((SELECT max(s.seq) FROM snapshots s WHERE s.event_id = e.event_id), 0)
            ORDER BY j.seq
        ) j
        ORDER BY e.event_id, j.seq"""
    return _stream_by_event(connection, query, events)


async def _stream_by_event(
    connection: Connection, query: str, *arguments: object
) -> AsyncIterator[tuple[str, LogRows]]:
    """The (event_id, seq, body) rows of `query`, ordered by event, grouped into one list per event."""
    current: str | None = None
    rows: LogRows = []
    async with contextlib.AsyncExitStack() as stack:
        if not connection.is_in_transaction():
            await stack.enter_async_context(connection.transaction(isolation="repeatable_read", readonly=True))
        # Chunks, not `async for` row by row: a coroutine step per row would cost as much as
        # decoding and applying the record.
        cursor = await connection.cursor(query, *arguments)
        while chunk := await cursor.fetch(limits.RECOVERY_FETCH_ROWS):
            for event_id, seq, body in chunk:
                if event_id != current:
                    if current is not None:
                        yield current, rows
                    current, rows = event_id, []
                rows.append((seq, body))
        if current is not None:
            yield current, rows


def recovery_snapshot(connection: Connection) -> Any:
    """One consistent view of snapshots and log for a recovery (repeatable read, read only)."""
    return connection.transaction(isolation="repeatable_read", readonly=True)


async def latest_snapshots(
    connection: Connection, *, events: list[str] | None = None
) -> dict[str, tuple[int, bytes]]:
    """The latest snapshot of every event (or of these `events`) that has one."""
    in_events = "" if events is None else "WHERE event_id = ANY($1::text[])"
    rows = await connection.fetch(
        f"SELECT DISTINCT ON (event_id) event_id, seq, state FROM snapshots {in_events} ORDER BY event_id, seq DESC",
        *(() if events is None else (events,)),
    )
    return {row[0]: (row[1], row[2]) for row in rows}


async def latest_snapshot(connection: Connection, event_id: str) -> tuple[int, bytes] | None:
    row = await connection.fetchrow(
        "SELECT seq, state FROM snapshots WHERE event_id = $1 ORDER BY seq DESC LIMIT 1", event_id
    )
    return None if row is None else (row[0], row[1])


async def write_snapshot(connection: Connection, event_id: str, seq: int, state: bytes) -> None:
    """Store a snapshot and drop the older ones of the event (the log keeps everything)."""
    async with connection.transaction():
        await connection.execute(
            "INSERT INTO snapshots (event_id, seq, state) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING", event_id, seq, state
        )
        await connection.execute("DELETE FROM snapshots WHERE event_id = $1 AND seq < $2", event_id, seq)


async def database_now(connection: Connection) -> datetime:
    """The database's clock (the transaction's start)."""
    value = await connection.fetchval("SELECT now()")
    if not isinstance(value, datetime):
        raise PersistenceInvariantViolation(f"now() answered {value!r}")
    return value


async def find_idempotency(connection: Connection, scope: str, key: str) -> tuple[bytes, bytes] | None:
    row = await connection.fetchrow(
        "SELECT fingerprint, response FROM idempotency_keys WHERE scope = $1 AND key = $2", scope, key
    )
    return None if row is None else (row[0], row[1])


async def idempotency_keys_since(connection: Connection, since: datetime, limit: int) -> list[tuple[str, str]]:
    rows = await connection.fetch(
        "SELECT scope, key FROM idempotency_keys WHERE created_at >= $1 LIMIT $2", since, limit
    )
    return [(row[0], row[1]) for row in rows]


async def forget_idempotency_before(connection: Connection, before: datetime) -> int:
    result = await connection.execute("DELETE FROM idempotency_keys WHERE created_at < $1", before)
    return int(result.split()[-1])


HistoryKey = tuple[datetime, str, int]


async def user_reservations(
    connection: Connection, user_id: str, *, event_id: str | None, before: HistoryKey | None, limit: int
) -> tuple[list[tuple[str, str, HistoryKey]], bool]:
    """The reservations a user made, newest first: (event_id, reservation_id, key) and whether more."""
    conditions = ["kind IN ('reservation_held', 'reservation_waitlisted')", "(body ->> 'user_id') = $1"]
    arguments: list[object] = [user_id]
    if event_id is not None:
        arguments.append(event_id)
        conditions.append(f"event_id = ${len(arguments)}")
    if before is not None:
        arguments.extend(before)
        count = len(arguments)
        conditions.append(f"(recorded_at, event_id, seq) < (${count - 2}, ${count - 1}, ${count})")
    arguments.append(limit + 1)
    rows = await connection.fetch(
        f"SELECT event_id, body ->> 'reservation_id', recorded_at, seq FROM journal WHERE {' AND '.join(conditions)}"
        f" ORDER BY recorded_at DESC, event_id DESC, seq DESC LIMIT ${len(arguments)}",
        *arguments,
    )
    found = [(row[0], row[1], (row[2], row[0], row[3])) for row in rows[:limit]]
    return found, len(rows) > limit


async def committed_transactions(connection: Connection) -> int:
    """This database's committed transactions so far (pg_stat_database; flushed by the stats system)."""
    await connection.execute("SELECT pg_stat_clear_snapshot()")
    value = await connection.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
    return int(value)


@dataclass(frozen=True, slots=True)
class WalSyncs:
    """The cluster's WAL syncs so far (pg_stat_wal), and the time they took: that time is counted
    only while `track_wal_io_timing` is on, else `seconds` is None."""

    count: int
    seconds: float | None


async def wal_syncs(connection: Connection) -> WalSyncs | None:
    """WAL syncs so far (PostgreSQL 14+), or None where pg_stat_wal does not exist."""
    try:
        await connection.execute("SELECT pg_stat_clear_snapshot()")
        row = await connection.fetchrow(
            "SELECT wal_sync, wal_sync_time, current_setting('track_wal_io_timing')::bool AS timed FROM pg_stat_wal"
        )
    except asyncpg.UndefinedTableError:
        return None
    row = present(row, "pg_stat_wal has no row")
    return WalSyncs(int(row["wal_sync"]), row["wal_sync_time"] / 1000 if row["timed"] else None)
