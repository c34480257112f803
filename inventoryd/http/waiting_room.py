"""The waiting room's routes: join, look, leave, and the organizer's view of the line. The gate
itself (a reserve needs an admission token) is in reservations.py; the tokens in admission.py."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web

from inventoryd import domain, limits
from inventoryd.actor import EventActor
from inventoryd.domain import EventDefinition, QueueEntry, Rejected
from inventoryd.http import admission, keys, schemas
from inventoryd.http.common import actor_for, actor_of, json_response, read_json, summary_of
from inventoryd.http.problems import ProblemError, rejection
from inventoryd.http.views import queue_line_out


def entry_out(request: web.Request, entry: QueueEntry, definition: EventDefinition) -> schemas.QueueEntryOut:
    now = request.app[keys.CLOCK]()
    config = definition.queue
    status = entry.status
    token = None
    if status == "admitted" and entry.expires_at is not None:
        if entry.expires_at <= now:
            status = "expired"  # its window passed; the record saying so is on its way
        else:
            token = admission.sign(request.app[keys.ADMISSION_KEY], entry.event_id, entry.user_id, entry.expires_at)
    wait_s = None
    if entry.position is not None and config is not None:
        wait_s = round(entry.position * 60 / config.admit_per_minute, 1)
    return schemas.QueueEntryOut(
        id=entry.id,
        event_id=entry.event_id,
        user_id=entry.user_id,
        status=status,
        joined_at=entry.joined_at,
        position=entry.position if status == "waiting" else None,
        estimated_wait_s=wait_s if status == "waiting" else None,
        admission_token=token,
        admission_expires_at=entry.expires_at if token is not None else None,
    )


def _poll_after_s(entry: schemas.QueueEntryOut, now: datetime, definition: EventDefinition) -> int:
    """When to look again: soon when near the front or before the start, less often far back."""
    if entry.status != "waiting":
        return limits.QUEUE_POLL_S_MIN
    if entry.estimated_wait_s is None:  # before the sale starts: at the start, at the latest
        starts = definition.sale_starts_at
        until_start = (starts - now).total_seconds() if starts is not None else 0
        return int(min(limits.QUEUE_POLL_S_MAX, max(limits.QUEUE_POLL_S_MIN, until_start)))
    return int(min(limits.QUEUE_POLL_S_MAX, max(limits.QUEUE_POLL_S_MIN, entry.estimated_wait_s / 4)))


def _answer(request: web.Request, actor: EventActor, entry: QueueEntry, status: int = 200) -> web.Response:
    definition = summary_of(actor).definition
    out = entry_out(request, entry, definition)
    headers = {"Retry-After": str(_poll_after_s(out, request.app[keys.CLOCK](), definition)), "Location": f"/v1/queue/{entry.id}"}
    return json_response(out, status=status, headers=headers)


async def join_queue(request: web.Request) -> web.Response:
    actor = await actor_of(request, request.match_info["event_id"])
    body = await read_json(request, schemas.QUEUE_JOIN_DECODER) if request.can_read_body else schemas.QueueJoinIn()
    user_id = request[keys.PRINCIPAL].acting_for(body.user_id)
    _check_work(request, summary_of(actor).definition, user_id, body.pow)
    outcome = await actor.join_queue(user_id, request_id=request.get(keys.REQUEST_ID))
    if isinstance(outcome.result, Rejected):
        raise rejection(outcome.result)
    if not isinstance(outcome.result, QueueEntry):
        raise domain.InvariantViolation(f"a join answered {outcome.result!r}")
    entry = actor.queue_entry(outcome.result.id) or outcome.result
    return _answer(request, actor, entry, 200 if outcome.unchanged else 201)


def _check_work(request: web.Request, definition: EventDefinition, user_id: str, work: schemas.PowIn | None) -> None:
    """A waiting room that asks for proof of work: the join carries one for this user (403)."""
    bits = definition.queue.pow_bits if definition.queue is not None else None
    if bits is None:
        return
    if work is None:
        challenge = f"GET /v1/events/{definition.id}/queue/challenge"
        raise ProblemError(403, "pow_required", f"this waiting room asks for a proof of work: {challenge}", field="$.pow")
    key, now = request.app[keys.ADMISSION_KEY], request.app[keys.CLOCK]()
    problem = admission.check_work(key, definition.id, user_id, work.nonce, work.solution, bits, now)
    if problem is not None:
        raise ProblemError(403, "pow_required", problem, field="$.pow")


async def get_queue_challenge(request: web.Request) -> web.Response:
    actor = await actor_of(request, request.match_info["event_id"])
    definition = summary_of(actor).definition
    if definition.queue is None or definition.queue.pow_bits is None:
        raise ProblemError(409, "no_waiting_room", "this event's waiting room asks for no proof of work")
    nonce, expires_at = admission.challenge(request.app[keys.ADMISSION_KEY], definition.id, request.app[keys.CLOCK]())
    return json_response(schemas.PowChallengeOut(nonce, definition.queue.pow_bits, expires_at))


async def _entry(request: web.Request) -> tuple[EventActor, QueueEntry]:
    entry_id = request.match_info["queue_id"]
    actor = await actor_for(request, entry_id, "waiting-room entry")
    entry = actor.queue_entry(entry_id)
    if entry is None:
        raise ProblemError(404, "not_found", f"no waiting-room entry {entry_id!r}")
    request[keys.PRINCIPAL].check_buyer_access(entry.user_id, summary_of(actor).definition, "place in line")
    return actor, entry


async def get_queue_entry(request: web.Request) -> web.Response:
    actor, entry = await _entry(request)
    return _answer(request, actor, entry)


async def leave_queue(request: web.Request) -> web.Response:
    actor, entry = await _entry(request)
    outcome = await actor.leave_queue(entry.id, request_id=request.get(keys.REQUEST_ID))
    if isinstance(outcome.result, Rejected):
        raise rejection(outcome.result)
    return web.Response(status=204)


async def get_queue_line(request: web.Request) -> web.Response:
    actor = await actor_of(request, request.match_info["event_id"])
    definition = summary_of(actor).definition
    request[keys.PRINCIPAL].check_may_manage(definition)
    if definition.queue is None:
        raise ProblemError(409, "no_waiting_room", "this event has no waiting room")
    return json_response(queue_line_out(definition.id, actor.inventory.queue))
