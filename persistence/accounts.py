"""Accounts, sessions and API tokens in PostgreSQL. Only hashes of secrets are stored."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from persistence.checks import present
from persistence.connection import Connection


@dataclass(frozen=True, slots=True)
class UserRow:
    user_id: str
    email: str
    password_hash: str
    name: str
    role: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApiTokenRow:
    token_id: str
    name: str
    role: str
    token_hash: bytes
    created_at: datetime
    revoked_at: datetime | None


class EmailTaken(Exception):
    pass


class TokenNameTaken(Exception):
    """A live API token already has this name (names are unique among live tokens)."""


async def insert_user(
    connection: Connection, user_id: str, email: str, password_hash: str, name: str, role: str
) -> UserRow:
    try:
        row = await connection.fetchrow(
            "INSERT INTO users (user_id, email, password_hash, name, role) VALUES ($1, $2, $3, $4, $5)"
            " RETURNING user_id, email, password_hash, name, role, created_at",
            user_id,
            email,
            password_hash,
            name,
            role,
        )
    except asyncpg.UniqueViolationError:
        raise EmailTaken(email) from None
    return UserRow(*present(row, "INSERT … RETURNING returned no row"))


async def user_by_email(connection: Connection, email: str) -> UserRow | None:
    row = await connection.fetchrow(
        "SELECT user_id, email, password_hash, name, role, created_at FROM users WHERE lower(email) = lower($1)", email
    )
    return None if row is None else UserRow(*row)


async def user_by_id(connection: Connection, user_id: str) -> UserRow | None:
    row = await connection.fetchrow(
        "SELECT user_id, email, password_hash, name, role, created_at FROM users WHERE user_id = $1", user_id
    )
    return None if row is None else UserRow(*row)


async def update_password_hash(connection: Connection, user_id: str, password_hash: str) -> None:
    await connection.execute("UPDATE users SET password_hash = $2 WHERE user_id = $1", user_id, password_hash)


async def insert_refresh_token(
    connection: Connection, token_hash: bytes, session_id: str, user_id: str, expires_at: datetime
) -> None:
    await connection.execute(
        "INSERT INTO refresh_tokens (token_hash, session_id, user_id, expires_at) VALUES ($1, $2, $3, $4)",
        token_hash,
        session_id,
        user_id,
        expires_at,
    )


@dataclass(frozen=True, slots=True)
class RefreshOutcome:
    """What presenting a refresh token came to: a session to continue, or why not."""

    session_id: str | None
    user_id: str | None
    problem: str | None  # "unknown", "expired", "reused", "revoked"


async def rotate_refresh_token(
    connection: Connection, token_hash: bytes, new_hash: bytes, now: datetime, expires_at: datetime
) -> RefreshOutcome:
    """Spend a refresh token and store its successor, atomically. A token that was already spent
    revokes its whole session: someone else has a copy."""
    async with connection.transaction():
        row = await connection.fetchrow(
            "SELECT session_id, user_id, expires_at, rotated_at, revoked_at FROM refresh_tokens"
            " WHERE token_hash = $1 FOR UPDATE",
            token_hash,
        )
        if row is None:
            return RefreshOutcome(None, None, "unknown")
        session_id, user_id, token_expires_at, rotated_at, revoked_at = row
        if revoked_at is not None:
            return RefreshOutcome(session_id, user_id, "revoked")
        if rotated_at is not None:
            await connection.execute(
                "UPDATE refresh_tokens SET revoked_at = $2 WHERE session_id = $1 AND revoked_at IS NULL", session_id, now
            )
            return RefreshOutcome(session_id, user_id, "reused")
        if token_expires_at <= now:
            return RefreshOutcome(session_id, user_id, "expired")
        await connection.execute("UPDATE refresh_tokens SET rotated_at = $2 WHERE token_hash = $1", token_hash, now)
        await connection.execute(
            "INSERT INTO refresh_tokens (token_hash, session_id, user_id, expires_at) VALUES ($1, $2, $3, $4)",
            new_hash,
            session_id,
            user_id,
            expires_at,
        )
        return RefreshOutcome(session_id, user_id, None)


async def revoke_session(connection: Connection, session_id: str, now: datetime) -> int:
    result = await connection.execute(
        "UPDATE refresh_tokens SET revoked_at = $2 WHERE session_id = $1 AND revoked_at IS NULL", session_id, now
    )
    return int(result.split()[-1])


async def sessions_revoked_since(connection: Connection, since: datetime) -> list[tuple[str, datetime]]:
    """The sessions ended (logged out, or revoked for a reused refresh token) since `since`, with when."""
    rows = await connection.fetch(
        "SELECT session_id, max(revoked_at) FROM refresh_tokens WHERE revoked_at >= $1 GROUP BY session_id", since
    )
    return [(row[0], row[1]) for row in rows]


async def insert_api_token(connection: Connection, token_id: str, name: str, role: str, token_hash: bytes) -> None:
    try:
        await connection.execute(
            "INSERT INTO api_tokens (token_id, name, role, token_hash) VALUES ($1, $2, $3, $4)", token_id, name, role, token_hash
        )
    except asyncpg.UniqueViolationError:
        raise TokenNameTaken(name) from None


async def api_tokens(connection: Connection) -> list[ApiTokenRow]:
    rows = await connection.fetch(
        "SELECT token_id, name, role, token_hash, created_at, revoked_at FROM api_tokens ORDER BY created_at"
    )
    return [ApiTokenRow(*row) for row in rows]


async def revoke_api_token(connection: Connection, name_or_id: str) -> int:
    result = await connection.execute(
        "UPDATE api_tokens SET revoked_at = now() WHERE (name = $1 OR token_id = $1) AND revoked_at IS NULL", name_or_id
    )
    return int(result.split()[-1])


async def service_secret(connection: Connection, name: str, make: bytes) -> bytes:
    """The stored secret called `name`, storing `make` first if there is none (races are settled
    by the primary key: every process ends up with the same value)."""
    await connection.execute(
        "INSERT INTO service_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING", name, make
    )
    value = await connection.fetchval("SELECT value FROM service_secrets WHERE name = $1", name)
    return bytes(value)
