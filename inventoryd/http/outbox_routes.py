"""What happened, told: the change feed, webhook endpoints and their deliveries, the reservations
report as CSV, and erasing a person's data."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import datetime
from typing import Annotated, Any

import msgspec
from aiohttp import web
from msgspec import UNSET, Meta, UnsetType

from inventoryd import limits
from inventoryd.http import keys
from inventoryd.http.common import (
    IDEMPOTENCY_KEY_PATTERN,
    actor_of,
    decode_cursor,
    encode_cursor,
    int_query,
    json_response,
    read_json,
    refuse_body,
    replayed,
    summary_of,
)
from inventoryd.http.headers import IDEMPOTENCY_KEY, add_response_headers
from inventoryd.http.problems import ProblemError, invalid
from inventoryd.http.schemas import STORABLE_TEXT
from inventoryd.idempotency import fingerprint
from inventoryd.outbox import CHANGE_TYPES, Change, ChangeType, change_of
from inventoryd.outbox.webhooks import check_reachable, new_secret, new_webhook_id
from persistence import outbox as store

_SEQ_MAX = 2**63 - 1


class ChangePage(msgspec.Struct):
    items: list[Change]
    # Where the next page starts (`after`): the last log position this page looked at.
    next_after: int


class WebhookIn(msgspec.Struct, forbid_unknown_fields=True):
    url: Annotated[str, Meta(min_length=1, max_length=limits.WEBHOOK_URL_CHARS_MAX, pattern=STORABLE_TEXT)]
    types: Annotated[list[ChangeType], Meta(min_length=1, max_length=len(CHANGE_TYPES))]
    event_id: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+\Z")] | None = None


class WebhookOut(msgspec.Struct, omit_defaults=True):
    id: str
    url: str
    types: list[str]
    event_id: str | None
    # active, or failed: a delivery ran out of attempts; nothing is sent until one is retried.
    status: str
    created_at: datetime
    failed_at: datetime | None = None
    # Only in the answer that made the endpoint: it signs every delivery, and is not shown again.
    secret: str | UnsetType = UNSET


class WebhookPage(msgspec.Struct):
    items: list[WebhookOut]


class DeliveryOut(msgspec.Struct):
    id: str
    webhook_id: str
    event_id: str
    seq: int
    type: str
    # pending (being tried; next_attempt_at says when again), delivered, failed.
    status: str
    attempts: int
    last_status: int | None
    last_error: str | None
    last_response: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    updated_at: datetime


class DeliveryPage(msgspec.Struct):
    items: list[DeliveryOut]
    next_cursor: str | None


WEBHOOK_DECODER = msgspec.json.Decoder(WebhookIn)


def _webhook_out(row: store.WebhookRow, *, secret: bool = False) -> WebhookOut:
    return WebhookOut(
        row.webhook_id, row.url, list(row.types), row.event_id, row.status, row.created_at, row.failed_at,
        row.secret if secret else UNSET,
    )


def _delivery_out(row: store.DeliveryRow) -> DeliveryOut:
    return DeliveryOut(
        row.delivery_id, row.webhook_id, row.event_id, row.seq, row.type, row.status, row.attempts, row.last_status,
        row.last_error, row.last_response, row.next_attempt_at, row.created_at, row.updated_at,
    )


# -- the change feed ------------------------------------------------------------------------------


async def get_changes(request: web.Request) -> web.Response:
    """The event's committed changes after `after`, in log order (from the event's owner, whose
    log it is; read from the database, so only what committed)."""
    actor = await actor_of(request, request.match_info["event_id"])
    request[keys.PRINCIPAL].check_may_read_changes(summary_of(actor).definition)
    after = int_query(request, "after", 0, 0, _SEQ_MAX)
    limit = int_query(request, "limit", limits.CHANGES_PAGE_DEFAULT, 1, limits.CHANGES_PAGE_MAX)
    async with request.app[keys.POOL].acquire() as connection:
        rows = await store.read_changes(connection, actor.event_id, after, limit)
    items = [change for row in rows if (change := change_of(row.seq, row.body, row.recorded_at)) is not None]
    return json_response(ChangePage(items, rows[-1].seq if rows else after))


# -- webhooks -------------------------------------------------------------------------------------


async def create_webhook(request: web.Request) -> web.Response:
    principal = request[keys.PRINCIPAL]
    organizer_id = principal.webhook_owner()
    body: WebhookIn = await read_json(request, WEBHOOK_DECODER)
    if len(set(body.types)) != len(body.types):
        raise invalid("a change type is named twice", "$.types")
    if body.event_id is not None:
        actor = await actor_of(request, body.event_id)
        principal.check_may_manage(summary_of(actor).definition)
    key = _webhook_key(request, body)
    await check_reachable(body.url, allow_private=request.app[keys.SETTINGS].webhooks_allow_private)
    async with request.app[keys.POOL].acquire() as connection:
        if await store.live_webhook_count(connection) >= limits.WEBHOOKS_MAX:
            raise ProblemError(409, "conflict", f"there are {limits.WEBHOOKS_MAX} webhook endpoints already; delete one first")
        try:
            row, made = await store.insert_webhook(
                connection, new_webhook_id(), body.url, sorted(body.types), body.event_id, organizer_id, new_secret(), key
            )
        except store.WebhookKeyConflict:
            raise ProblemError(
                409, "idempotency_conflict", "this Idempotency-Key was used for a different request", field="Idempotency-Key"
            ) from None
    response = json_response(_webhook_out(row, secret=True), status=201)
    return response if made else replayed(response)


def _webhook_key(request: web.Request, body: WebhookIn) -> store.WebhookKey | None:
    """The request's Idempotency-Key, if it has one (the same request, however spelled, has the
    same fingerprint: its fields in canonical form)."""
    key = request.headers.get(IDEMPOTENCY_KEY)
    if key is None:
        return None
    if not IDEMPOTENCY_KEY_PATTERN.fullmatch(key):
        raise invalid(f"Idempotency-Key must be 1 to {limits.IDEMPOTENCY_KEY_BYTES_MAX} printable ASCII characters", "Idempotency-Key", 400)
    canonical = msgspec.json.encode(WebhookIn(body.url, sorted(body.types), body.event_id))
    return store.WebhookKey(request[keys.PRINCIPAL].id, key, fingerprint(request.method, request.path, canonical))


async def _own_webhook(request: web.Request) -> store.WebhookRow:
    """The webhook the path names, if the caller may manage it (another organizer's: 403)."""
    owner = request[keys.PRINCIPAL].webhook_owner()
    webhook_id = request.match_info["webhook_id"]
    async with request.app[keys.POOL].acquire() as connection:
        row = await store.webhook(connection, webhook_id)
    if row is None:
        raise ProblemError(404, "not_found", f"no webhook {webhook_id!r}")
    if owner is not None and row.organizer_id != owner:
        raise ProblemError(403, "forbidden", "this webhook is another organizer's")
    return row


async def list_webhooks(request: web.Request) -> web.Response:
    owner = request[keys.PRINCIPAL].webhook_owner()
    async with request.app[keys.POOL].acquire() as connection:
        rows = await store.live_webhooks(connection)
    return json_response(WebhookPage([_webhook_out(row) for row in rows if owner is None or row.organizer_id == owner]))


async def get_webhook(request: web.Request) -> web.Response:
    return json_response(_webhook_out(await _own_webhook(request)))


async def delete_webhook(request: web.Request) -> web.Response:
    row = await _own_webhook(request)
    async with request.app[keys.POOL].acquire() as connection:
        await store.delete_webhook(connection, row.webhook_id)
    return web.Response(status=204)


async def webhook_deliveries(request: web.Request) -> web.Response:
    limit = int_query(request, "limit", limits.PAGE_ITEMS_DEFAULT, 1, limits.DELIVERIES_PAGE_MAX)
    before = decode_cursor(request, tuple[datetime, str])
    row = await _own_webhook(request)
    async with request.app[keys.POOL].acquire() as connection:
        rows = await store.deliveries(connection, row.webhook_id, before, limit + 1)
    page = rows[:limit]
    next_cursor = encode_cursor((page[-1].created_at, page[-1].delivery_id)) if len(rows) > limit else None
    return json_response(DeliveryPage([_delivery_out(delivery) for delivery in page], next_cursor))


async def retry_delivery(request: web.Request) -> web.Response:
    """Send a delivery again: a failed one (its endpoint goes back to active and delivers from
    there, in order), one waiting for its back-off (now), or a delivered one (once more)."""
    row = await _own_webhook(request)
    await refuse_body(request, "retry")
    delivery_id = request.match_info["delivery_id"]
    async with request.app[keys.POOL].acquire() as connection:
        retried = await store.retry_delivery(connection, row.webhook_id, delivery_id)
    if retried is None:
        raise ProblemError(404, "not_found", f"no delivery {delivery_id!r} of webhook {row.webhook_id!r}")
    return json_response(_delivery_out(retried[0]), status=202)


# -- the report -----------------------------------------------------------------------------------

REPORT_COLUMNS = (
    "reservation_id", "status", "ticket_type", "quantity", "amount", "seats", "user_id", "created_at", "confirmed_at",
    "ended_at", "tickets_checked_in",
)
_STATUS_AFTER = {
    "reservation_confirmed": "confirmed",
    "reservation_cancelled": "cancelled",
    "hold_expired": "expired",
    "waitlist_promoted": "held",
}
_reports_running = 0


def report_line(row: Any) -> list[object]:
    """A CSV row from a report row (persistence.outbox._REPORT): the status is the last change's."""
    (reservation_id, made, user_id, ticket_type, quantity, amount, seats, created_at, last_kind, last_at, confirmed_at, checked,
     event_cancelled_at) = row
    status = _STATUS_AFTER.get(last_kind, "held" if made == "reservation_held" else "waitlisted")
    ended_at = last_at if status in ("cancelled", "expired") else None
    if event_cancelled_at is not None and status in ("held", "confirmed", "waitlisted"):
        status, ended_at = "cancelled", event_cancelled_at
    seat_list = " ".join(msgspec.json.decode(seats)) if seats else ""
    return [
        reservation_id, status, ticket_type, quantity, amount, seat_list, user_id, created_at, confirmed_at or "", ended_at or "", checked,
    ]


async def report_csv(request: web.Request) -> web.StreamResponse:
    """Every reservation of the event, streamed as CSV: PostgreSQL folds the log, the rows come a
    page at a time, so memory here is the same for an event of any size."""
    global _reports_running  # noqa: PLW0603 - a count of this process's running reports
    actor = await actor_of(request, request.match_info["event_id"])
    request[keys.PRINCIPAL].check_may_manage(summary_of(actor).definition)
    if _reports_running >= limits.REPORTS_RUNNING_MAX:
        raise ProblemError(503, "overloaded", "reports are being made; retry shortly", headers={"Retry-After": str(limits.RETRY_AFTER_S)})
    _reports_running += 1
    try:
        response = web.StreamResponse(headers={"Content-Type": "text/csv; charset=utf-8"})
        response.headers["Content-Disposition"] = f'attachment; filename="{actor.event_id}-reservations.csv"'
        add_response_headers(request, response)
        await response.prepare(request)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(REPORT_COLUMNS)
        async with request.app[keys.POOL].acquire() as connection, connection.transaction(readonly=True):
            async for row in store.report_rows(connection, actor.event_id, limits.REPORT_PAGE_ROWS):
                writer.writerow(report_line(row))
                if buffer.tell() >= 64 * 1024:
                    await _write(response, buffer)
        await _write(response, buffer)
        await response.write_eof()
        return response
    finally:
        _reports_running -= 1


async def _write(response: web.StreamResponse, buffer: io.StringIO) -> None:
    data = buffer.getvalue().encode()
    buffer.seek(0)
    buffer.truncate()
    if data:
        async with asyncio.timeout(limits.STREAM_WRITE_TIMEOUT_S):
            await response.write(data)


# -- erasure --------------------------------------------------------------------------------------


async def erase_me(request: web.Request) -> web.Response:
    """The caller's personal data erased and every session of theirs ended; the inventory log
    (which holds only their opaque id) is untouched."""
    principal = request[keys.PRINCIPAL]
    if principal.user_id is None:
        raise ProblemError(403, "forbidden", "this token belongs to no user account")
    await request.app[keys.ACCOUNTS].erase(principal.user_id)
    return web.Response(status=204)
