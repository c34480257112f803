"""Reads of the durable log and of what is written beside it: recovery, idempotency, catalogue."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from persistence import limits
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
    assert pool is not None
    return pool


async def read_event_log(connection: asyncpg.Connection, event_id: str, after_seq: int = 0) -> LogRows:
    rows = await connection.fetch(
        "SELECT seq, body FROM journal WHERE event_id = $1 AND seq > $2 ORDER BY seq", event_id, after_seq
    )
    return [(row[0], row[1]) for row in rows]


async def stream_all_logs(connection: asyncpg.Connection) -> AsyncIterator[tuple[str, LogRows]]:
    """Every event's log, one event at a time, in one pass over the journal's primary key."""
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        current: str | None = None
        rows: LogRows = []
        cursor = connection.cursor(
            "SELECT event_id, seq, body FROM journal ORDER BY event_id, seq", prefetch=limits.RECOVERY_FETCH_ROWS
        )
        async for event_id, seq, body in cursor:
            if event_id != current:
                if current is not None:
                    yield current, rows
                current, rows = event_id, []
            rows.append((seq, body))
        if current is not None:
            yield current, rows


async def find_idempotency(connection: asyncpg.Connection, scope: str, key: str) -> tuple[bytes, bytes] | None:
    row = await connection.fetchrow(
        "SELECT fingerprint, response FROM idempotency_keys WHERE scope = $1 AND key = $2", scope, key
    )
    return None if row is None else (row[0], row[1])


async def idempotency_keys_since(connection: asyncpg.Connection, since: datetime, limit: int) -> list[tuple[str, str]]:
    rows = await connection.fetch(
        "SELECT scope, key FROM idempotency_keys WHERE created_at >= $1 LIMIT $2", since, limit
    )
    return [(row[0], row[1]) for row in rows]


async def forget_idempotency_before(connection: asyncpg.Connection, before: datetime) -> int:
    result = await connection.execute("DELETE FROM idempotency_keys WHERE created_at < $1", before)
    return int(result.split()[-1])


@dataclass(frozen=True, slots=True)
class CataloguePage:
    event_ids: list[str]
    next_after: tuple[datetime, str] | None


async def catalogue_page(
    connection: asyncpg.Connection, *, after: tuple[datetime, str] | None, limit: int
) -> CataloguePage:
    """Events by (starts_at, event_id): keyset pagination stays correct while events are added."""
    if after is None:
        rows = await connection.fetch(
            "SELECT event_id, starts_at FROM events ORDER BY starts_at, event_id LIMIT $1", limit + 1
        )
    else:
        rows = await connection.fetch(
            "SELECT event_id, starts_at FROM events WHERE (starts_at, event_id) > ($1, $2)"
            " ORDER BY starts_at, event_id LIMIT $3",
            after[0],
            after[1],
            limit + 1,
        )
    more = len(rows) > limit
    rows = rows[:limit]
    next_after = (rows[-1][1], rows[-1][0]) if more and rows else None
    return CataloguePage([row[0] for row in rows], next_after)


async def committed_transactions(connection: asyncpg.Connection) -> int:
    """This database's committed transactions so far (pg_stat_database; flushed by the stats system)."""
    await connection.execute("SELECT pg_stat_clear_snapshot()")
    value = await connection.fetchval("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
    return int(value)


async def wal_syncs(connection: asyncpg.Connection) -> int | None:
    """WAL syncs so far (pg_stat_wal, PostgreSQL 14+), or None where the view does not exist."""
    try:
        await connection.execute("SELECT pg_stat_clear_snapshot()")
        return int(await connection.fetchval("SELECT wal_sync FROM pg_stat_wal"))
    except asyncpg.UndefinedTableError:
        return None
