"""The catalogue's rows as the journal writes them (the `events` table), and the connection that
hears of other nodes' changes to them (LISTEN on CATALOGUE_CHANNEL)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields

import asyncpg

from persistence import limits
from persistence.journal import CATALOGUE_CHANNEL, CatalogueRow, connect

_COLUMNS = ", ".join(column.name for column in fields(CatalogueRow))
# The application name the notification connection shows in pg_stat_activity (and tests cut).
LISTENER_APPLICATION_NAME = "inventoryd-catalogue"


async def catalogue_rows(connection: asyncpg.Connection, event_ids: Sequence[str] | None = None) -> list[CatalogueRow]:
    """Every event's row, or those of `event_ids` (an id without a row is left out)."""
    if event_ids is None:
        rows = await connection.fetch(f"SELECT {_COLUMNS} FROM events", timeout=limits.DB_TIMEOUT_S)
    else:
        rows = await connection.fetch(
            f"SELECT {_COLUMNS} FROM events WHERE event_id = any($1::text[])", list(event_ids), timeout=limits.DB_TIMEOUT_S
        )
    return [CatalogueRow(*row.values()) for row in rows]


async def listening_connection(dsn: str, on_notified: Callable[[str], None], on_terminated: Callable[[], None]) -> asyncpg.Connection:
    """A connection that listens on CATALOGUE_CHANNEL: `on_notified(payload)` for each notification,
    `on_terminated()` once, when the connection is closed (by either side, or cut)."""
    connection = await connect(dsn)
    try:
        await connection.execute(f"SET application_name = '{LISTENER_APPLICATION_NAME}'", timeout=limits.DB_TIMEOUT_S)
        connection.add_termination_listener(lambda _connection: on_terminated())
        await connection.add_listener(CATALOGUE_CHANNEL, lambda _connection, _pid, _channel, payload: on_notified(payload))
    except BaseException:
        connection.terminate()
        raise
    return connection
