"""Versioned, idempotent schema migrations: `NNNN_name.sql` files applied once each, in order."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

from persistence.checks import invariant

# Any constant works; it keeps two processes that start at once from migrating concurrently.
_MIGRATION_LOCK_ID = 0x1A7E_0001
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    found = []
    for entry in resources.files("persistence.migrations").iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in found]
    invariant(versions == list(range(1, len(found) + 1)), "migrations must be numbered 1..n without gaps: %s", versions)
    return found


async def migrate(connection: asyncpg.Connection) -> list[Migration]:
    """Apply every migration not yet applied; returns those applied now. Safe to run concurrently."""
    applied_now = []
    await connection.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK_ID)
    try:
        await connection.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    integer     PRIMARY KEY,
                   name       text        NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now()
               )"""
        )
        done = {row["version"] for row in await connection.fetch("SELECT version FROM schema_migrations")}
        for migration in available_migrations():
            if migration.version in done:
                continue
            async with connection.transaction():
                await connection.execute(migration.sql)
                await connection.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", migration.version, migration.name
                )
            applied_now.append(migration)
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK_ID)
    return applied_now
