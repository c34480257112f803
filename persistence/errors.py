"""What the database being away looks like, named once: a reason to wait and retry (or answer
503), not a bug."""

from __future__ import annotations

import asyncio

import asyncpg

# Unreachable, refusing, or slower than DB_TIMEOUT_S.
DATABASE_AWAY: tuple[type[Exception], ...] = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError)
# The connection itself failed (rather than the server refusing a statement): what a request
# handler sees when the database goes away under it.
CONNECTION_LOST: tuple[type[Exception], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
)
