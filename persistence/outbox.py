"""The outbox's tables: webhook endpoints, delivery cursors and the delivery log, buyers' contact
addresses, confirmation emails; the log read as a change feed; a person's data erased."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from persistence.checks import present
from persistence.connection import Connection

WEBHOOK_COLUMNS = "webhook_id, url, types, event_id, organizer_id, secret, status, failed_at, created_at"


@dataclass(frozen=True, slots=True)
class WebhookRow:
    webhook_id: str
    url: str
    types: list[str]
    event_id: str | None
    organizer_id: str | None
    secret: str
    status: str
    failed_at: datetime | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ChangeRow:
    seq: int
    body: bytes
    recorded_at: datetime


@dataclass(frozen=True, slots=True)
class DeliveryWrite:
    """A delivery's row as the outbox writes it (its times are the database's)."""

    delivery_id: str
    webhook_id: str
    event_id: str
    seq: int
    type: str
    status: str
    attempts: int
    last_status: int | None
    last_error: str | None
    last_response: str | None
    next_attempt_at: datetime | None


@dataclass(frozen=True, slots=True)
class DeliveryRow(DeliveryWrite):
    """A delivery's row as read back: DELIVERY_COLUMNS, in order."""

    created_at: datetime
    updated_at: datetime


DELIVERY_COLUMNS = (
    "delivery_id, webhook_id, event_id, seq, type, status, attempts, last_status, last_error, last_response,"
    " next_attempt_at, created_at, updated_at"
)


async def read_changes(connection: Connection, event_id: str, after_seq: int, limit: int) -> list[ChangeRow]:
    """The event's log after `after_seq`, in order: committed records only (what a transaction
    wrote is visible once it committed), with the time each was written."""
    rows = await connection.fetch(
        "SELECT seq, body, recorded_at FROM journal WHERE event_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        event_id,
        after_seq,
        limit,
    )
    return [ChangeRow(row[0], row[1], row[2]) for row in rows]


# -- webhooks -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WebhookKey:
    """The Idempotency-Key an endpoint is made with: whose, the key, the request's fingerprint."""

    scope: str
    key: str
    fingerprint: bytes


class WebhookKeyConflict(Exception):
    """The key made an endpoint from another request."""


async def insert_webhook(
    connection: Connection,
    webhook_id: str,
    url: str,
    types: Sequence[str],
    event_id: str | None,
    organizer_id: str | None,
    secret: str,
    key: WebhookKey | None = None,
) -> tuple[WebhookRow, bool]:
    """The endpoint, and its cursor at the end of each existing event's log it hears of: it is told
    of what is committed after it was made. One transaction (a change committed after it shows in
    no cursor, and is delivered). With a key already used for the same request: the endpoint it
    made, and False (nothing made now); for another request: WebhookKeyConflict."""
    async with connection.transaction():
        if key is not None:
            await connection.execute("SELECT pg_advisory_xact_lock(hashtext($1 || chr(31) || $2))", key.scope, key.key)
            made = await connection.fetchrow(
                f"SELECT {WEBHOOK_COLUMNS}, fingerprint FROM webhooks WHERE idempotency_scope = $1 AND idempotency_key = $2",
                key.scope,
                key.key,
            )
            if made is not None:
                if made["fingerprint"] != key.fingerprint:
                    raise WebhookKeyConflict(key.key)
                return WebhookRow(*list(made.values())[:-1]), False
        row = await connection.fetchrow(
            f"INSERT INTO webhooks (webhook_id, url, types, event_id, organizer_id, secret, idempotency_scope, idempotency_key,"
            f" fingerprint) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {WEBHOOK_COLUMNS}",
            webhook_id,
            url,
            list(types),
            event_id,
            organizer_id,
            secret,
            key and key.scope,
            key and key.key,
            key and key.fingerprint,
        )
        await connection.execute(
            """
            INSERT INTO outbox_cursors (sink, event_id, delivered_seq)
            SELECT $1, e.event_id, (SELECT coalesce(max(j.seq), 0) FROM journal j WHERE j.event_id = e.event_id)
            FROM events e
            WHERE ($2::text IS NULL OR e.event_id = $2) AND ($3::text IS NULL OR e.organizer_id = $3)
            """,
            webhook_id,
            event_id,
            organizer_id,
        )
    return WebhookRow(*present(row, "INSERT … RETURNING returned no row")), True


async def start_email_cursors(connection: Connection) -> None:
    """The first time emails are switched on: their cursors at the end of every event's log (the
    confirmations made before are not mailed). Once any exists, nothing (a later start goes on
    from where the emails were: what was confirmed while they were off is sent)."""
    await connection.execute(
        """
        INSERT INTO outbox_cursors (sink, event_id, delivered_seq)
        SELECT 'email', e.event_id, (SELECT coalesce(max(j.seq), 0) FROM journal j WHERE j.event_id = e.event_id)
        FROM events e
        WHERE NOT EXISTS (SELECT 1 FROM outbox_cursors WHERE sink = 'email')
        ON CONFLICT DO NOTHING
        """
    )


async def live_webhooks(connection: Connection) -> list[WebhookRow]:
    rows = await connection.fetch(f"SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE deleted_at IS NULL ORDER BY webhook_id")
    return [WebhookRow(*row) for row in rows]


async def live_webhook_count(connection: Connection) -> int:
    return int(await connection.fetchval("SELECT count(*) FROM webhooks WHERE deleted_at IS NULL"))


async def webhook(connection: Connection, webhook_id: str) -> WebhookRow | None:
    row = await connection.fetchrow(f"SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE webhook_id = $1 AND deleted_at IS NULL", webhook_id)
    return None if row is None else WebhookRow(*row)


async def delete_webhook(connection: Connection, webhook_id: str) -> bool:
    done = await connection.execute(
        "UPDATE webhooks SET deleted_at = now() WHERE webhook_id = $1 AND deleted_at IS NULL", webhook_id
    )
    return done != "UPDATE 0"


async def mark_webhook_failed(connection: Connection, webhook_id: str) -> None:
    await connection.execute(
        "UPDATE webhooks SET status = 'failed', failed_at = now() WHERE webhook_id = $1 AND status = 'active'", webhook_id
    )


async def retry_delivery(connection: Connection, webhook_id: str, delivery_id: str) -> tuple[DeliveryRow, str] | None:
    """Set a delivery going again (and its endpoint, if it had failed), in one transaction; with
    the status it had (a delivered one is to be sent once more; another, tried now)."""
    async with connection.transaction():
        was = await connection.fetchval(
            "SELECT status FROM webhook_deliveries WHERE delivery_id = $1 AND webhook_id = $2 FOR UPDATE", delivery_id, webhook_id
        )
        if was is None:
            return None
        row = await connection.fetchrow(
            f"UPDATE webhook_deliveries SET status = CASE WHEN status = 'failed' THEN 'pending' ELSE status END,"
            f" next_attempt_at = now(), updated_at = now() WHERE delivery_id = $1 RETURNING {DELIVERY_COLUMNS}",
            delivery_id,
        )
        await connection.execute(
            "UPDATE webhooks SET status = 'active', failed_at = NULL WHERE webhook_id = $1 AND status = 'failed'", webhook_id
        )
        # The node that serves the delivery's event hears of it once this commits.
        how = "again" if was == "delivered" else "now"
        await connection.execute("SELECT pg_notify('inventoryd_redeliveries', $1)", f"{how} {delivery_id}")
    return DeliveryRow(*present(row, "UPDATE … RETURNING returned no row")), str(was)


async def deliveries(connection: Connection, webhook_id: str, before: tuple[datetime, str] | None, limit: int) -> list[DeliveryRow]:
    """The endpoint's deliveries, newest first, from before `before` (a page's last)."""
    if before is None:
        rows = await connection.fetch(
            f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook_id = $1 ORDER BY created_at DESC, delivery_id DESC LIMIT $2",
            webhook_id,
            limit,
        )
    else:
        rows = await connection.fetch(
            f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE webhook_id = $1 AND (created_at, delivery_id) < ($2, $3)"
            " ORDER BY created_at DESC, delivery_id DESC LIMIT $4",
            webhook_id,
            before[0],
            before[1],
            limit,
        )
    return [DeliveryRow(*row) for row in rows]


async def delivery(connection: Connection, delivery_id: str) -> DeliveryRow | None:
    row = await connection.fetchrow(f"SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE delivery_id = $1", delivery_id)
    return None if row is None else DeliveryRow(*row)


async def save_progress(
    connection: Connection, writes: Sequence[DeliveryWrite], cursors: Sequence[tuple[str, str, int]]
) -> None:
    """The delivery log's new rows and outcomes, and the cursors that moved: one statement. A
    cursor never moves back (two nodes delivering around a change of owner)."""
    await connection.execute(
        """
        WITH log AS (
            INSERT INTO webhook_deliveries (delivery_id, webhook_id, event_id, seq, type, status, attempts, last_status,
                                            last_error, last_response, next_attempt_at)
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::int[],
                                 $8::int[], $9::text[], $10::text[], $11::timestamptz[])
            ON CONFLICT (delivery_id) DO UPDATE SET
                status = EXCLUDED.status, attempts = greatest(webhook_deliveries.attempts, EXCLUDED.attempts),
                last_status = EXCLUDED.last_status, last_error = EXCLUDED.last_error, last_response = EXCLUDED.last_response,
                next_attempt_at = EXCLUDED.next_attempt_at, updated_at = now()
        )
        INSERT INTO outbox_cursors (sink, event_id, delivered_seq)
        SELECT * FROM unnest($12::text[], $13::text[], $14::bigint[])
        ON CONFLICT (sink, event_id) DO UPDATE SET delivered_seq = greatest(outbox_cursors.delivered_seq, EXCLUDED.delivered_seq)
        """,
        [w.delivery_id for w in writes],
        [w.webhook_id for w in writes],
        [w.event_id for w in writes],
        [w.seq for w in writes],
        [w.type for w in writes],
        [w.status for w in writes],
        [w.attempts for w in writes],
        [w.last_status for w in writes],
        [w.last_error for w in writes],
        [w.last_response for w in writes],
        [w.next_attempt_at for w in writes],
        [cursor[0] for cursor in cursors],
        [cursor[1] for cursor in cursors],
        [cursor[2] for cursor in cursors],
    )


async def cursors(connection: Connection, event_ids: Sequence[str]) -> dict[tuple[str, str], int]:
    rows = await connection.fetch(
        "SELECT sink, event_id, delivered_seq FROM outbox_cursors WHERE event_id = ANY($1::text[])", list(event_ids)
    )
    return {(row[0], row[1]): row[2] for row in rows}


async def forget_old_deliveries(connection: Connection, older_than: datetime) -> int:
    done = await connection.execute(
        "DELETE FROM webhook_deliveries d WHERE d.updated_at < $1"
        " AND (d.status <> 'pending' OR EXISTS (SELECT 1 FROM webhooks w WHERE w.webhook_id = d.webhook_id AND w.deleted_at IS NOT NULL))",
        older_than,
    )
    return int(done.split()[-1])


# -- contacts and confirmation emails --------------------------------------------------------------


async def save_contact(connection: Connection, event_id: str, user_id: str, email: str) -> None:
    await connection.execute(
        "INSERT INTO buyer_contacts (event_id, user_id, email) VALUES ($1, $2, $3)"
        " ON CONFLICT (event_id, user_id) DO UPDATE SET email = EXCLUDED.email, updated_at = now()",
        event_id,
        user_id,
        email,
    )


async def buyer_address(connection: Connection, event_id: str, user_id: str) -> str | None:
    """Where a buyer's confirmation goes: the address a service gave for this event, else the
    registered account's (not an erased one's)."""
    row = await connection.fetchrow(
        "SELECT coalesce((SELECT email FROM buyer_contacts WHERE event_id = $1 AND user_id = $2),"
        " (SELECT email FROM users WHERE user_id = $2 AND erased_at IS NULL))",
        event_id,
        user_id,
    )
    return None if row is None else row[0]


async def claim_email(connection: Connection, event_id: str, seq: int, reservation_id: str, user_id: str) -> bool:
    """True if this confirmation's email is still to be sent (claimed now, or claimed before and
    not sent: a crash between the two); False once it was sent, or found no address."""
    row = await connection.fetchrow(
        """
        INSERT INTO confirmation_emails (event_id, seq, reservation_id, user_id, status, attempts)
        VALUES ($1, $2, $3, $4, 'sending', 1)
        ON CONFLICT (event_id, seq) DO UPDATE SET attempts = confirmation_emails.attempts + 1
            WHERE confirmation_emails.status = 'sending'
        RETURNING status
        """,
        event_id,
        seq,
        reservation_id,
        user_id,
    )
    return row is not None


async def email_done(connection: Connection, event_id: str, seq: int, status: str, error: str | None = None) -> None:
    await connection.execute(
        "UPDATE confirmation_emails SET status = $3, last_error = $4, sent_at = CASE WHEN $3 = 'sent' THEN now() END"
        " WHERE event_id = $1 AND seq = $2",
        event_id,
        seq,
        status,
        error,
    )


async def email_failed(connection: Connection, event_id: str, seq: int, error: str) -> None:
    await connection.execute(
        "UPDATE confirmation_emails SET last_error = $3 WHERE event_id = $1 AND seq = $2", event_id, seq, error
    )


# -- erasure ---------------------------------------------------------------------------------------


async def erase_person(connection: Connection, user_id: str) -> list[str]:
    """A person's personal data gone, in one transaction: the account's email, name and password
    hash (its id and role stay: the log refers to the id), every address a service gave for them,
    and their sessions revoked. Returns the revoked sessions' ids."""
    async with connection.transaction():
        await connection.execute(
            "UPDATE users SET email = 'erased:' || user_id, name = '', password_hash = '', erased_at = coalesce(erased_at, now())"
            " WHERE user_id = $1",
            user_id,
        )
        await connection.execute("DELETE FROM buyer_contacts WHERE user_id = $1", user_id)
        rows = await connection.fetch(
            "UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL RETURNING session_id",
            user_id,
        )
    return sorted({row[0] for row in rows})


async def erase_expired_contacts(connection: Connection, ended_before: datetime) -> int:
    """The addresses services gave for buyers of events that started before `ended_before`."""
    done = await connection.execute(
        "DELETE FROM buyer_contacts c USING events e WHERE e.event_id = c.event_id AND e.starts_at < $1", ended_before
    )
    return int(done.split()[-1])


# -- the report ------------------------------------------------------------------------------------

# Every reservation of an event, folded from its log by PostgreSQL: the record that made it, the
# last record that changed its status (its status is that record's), its tickets checked in, and
# the event's cancellation if it came after (which cancels what was still held, waiting or sold).
# Hash joins and sorts spill to disk for a big event; the rows come through a cursor, a page at a time.
_REPORT = """
WITH changes AS (
    SELECT DISTINCT ON (body ->> 'reservation_id') body ->> 'reservation_id' AS reservation_id, seq, kind, body ->> 'at' AS at
    FROM journal
    WHERE event_id = $1 AND kind IN ('reservation_confirmed', 'reservation_cancelled', 'hold_expired', 'waitlist_promoted')
    ORDER BY body ->> 'reservation_id', seq DESC
), confirmed AS (
    SELECT body ->> 'reservation_id' AS reservation_id, body ->> 'at' AS at
    FROM journal WHERE event_id = $1 AND kind = 'reservation_confirmed'
), checked_in AS (
    SELECT body ->> 'reservation_id' AS reservation_id, count(*) AS tickets
    FROM journal WHERE event_id = $1 AND kind = 'ticket_checked_in' GROUP BY 1
), cancelled AS (
    SELECT seq, body ->> 'at' AS at FROM journal WHERE event_id = $1 AND kind = 'event_cancelled' LIMIT 1
)
SELECT made.body ->> 'reservation_id', made.kind, made.body ->> 'user_id', made.body ->> 'ticket_type',
       (made.body ->> 'quantity')::int, (made.body ->> 'amount')::bigint, made.body -> 'seats', made.body ->> 'at',
       changes.kind, changes.at, confirmed.at, coalesce(checked_in.tickets, 0),
       CASE WHEN cancelled.seq > coalesce(changes.seq, made.seq) THEN cancelled.at END
FROM journal made
LEFT JOIN changes ON changes.reservation_id = made.body ->> 'reservation_id'
LEFT JOIN confirmed ON confirmed.reservation_id = made.body ->> 'reservation_id'
LEFT JOIN checked_in ON checked_in.reservation_id = made.body ->> 'reservation_id'
LEFT JOIN cancelled ON true
WHERE made.event_id = $1 AND made.kind IN ('reservation_held', 'reservation_waitlisted')
ORDER BY made.seq
"""

async def report_rows(connection: Connection, event_id: str, page: int) -> AsyncIterator[Sequence[object]]:
    """The event's reservations (see _REPORT), `page` rows fetched at a time. Must run inside a
    transaction (a cursor lives in one)."""
    cursor = await connection.cursor(_REPORT, event_id)
    while True:
        rows = await cursor.fetch(page)
        for row in rows:
            yield tuple(row)
        if len(rows) < page:
            return
