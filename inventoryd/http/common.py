"""What every handler uses: JSON in and out, finding the actor, idempotent execution, queries."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, overload

import msgspec
from aiohttp import hdrs, web

from inventoryd import domain, limits
from inventoryd.actor import EventActor, IdempotencyClaim, Outcome
from inventoryd.domain import EventSummary, Rejected
from inventoryd.http import keys, schemas
from inventoryd.http.headers import IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED
from inventoryd.http.problems import ProblemError, from_decode_error, invalid, rejection
from inventoryd.http.views import event_out
from inventoryd.idempotency import IdempotencyConflict, Replay, fingerprint
from inventoryd.registry import Registry

JSON = "application/json"
IDEMPOTENCY_KEY_PATTERN = re.compile(rf"[ -~]{{1,{limits.IDEMPOTENCY_KEY_BYTES_MAX}}}")
CURSOR_PATTERN = "^[A-Za-z0-9_-]+$"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")
S = TypeVar("S", bound=str)


@dataclass(frozen=True, slots=True)
class QueryParameter:
    name: str
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})


@dataclass(frozen=True, slots=True)
class Route:
    """One operation of the API: the app, the OpenAPI document and the access matrix are built
    from the table of these in `routes.py`."""

    method: str
    path: str
    handler: Handler
    name: str
    summary: str
    request_body: type | None = None
    response_body: Any = None
    success_status: int = 200
    public: bool = False
    # Accepts an Idempotency-Key header.
    idempotent: bool = False
    # The body may be left out (a default of its type is meant).
    body_optional: bool = False
    query: tuple[QueryParameter, ...] = ()
    # The media type of a successful answer.
    media_type: str = "application/json"


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=schemas.ENCODER.encode(body), content_type=JSON, headers=headers)


# What a browser or a CDN may keep of a public read (the catalogue, an event, its availability):
# PUBLIC_READ_MAX_AGE_S, then it asks again with If-None-Match and gets a 304 while nothing changed.
_PUBLIC_CACHE_CONTROL = f"public, max-age={limits.PUBLIC_READ_MAX_AGE_S}"


def cacheable_json(request: web.Request, body: Any, state: bytes | None = None) -> web.Response:
    """A public read: 200 with an ETag and Cache-Control, or 304 when the request's If-None-Match
    names that ETag. The ETag is a hash of the body, or of `state` when the caller gives what the
    body is made from exactly (a listing: its events' ids and log positions, and its cursor), which
    is shorter; either way every node gives the same one for the same state."""
    if state is None:
        encoded = schemas.ENCODER.encode(body)
        return public_answer(request, etag_of(encoded), encoded)
    return public_answer(request, etag_of(state), lambda: schemas.ENCODER.encode(body))


def etag_of(data: bytes) -> str:
    return f'"{hashlib.blake2b(data, digest_size=12).hexdigest()}"'


def public_answer(request: web.Request, etag: str, body: bytes | Callable[[], bytes]) -> web.Response:
    """A public read's answer (see `cacheable_json`), its body made only if it is sent."""
    headers = {hdrs.ETAG: etag, hdrs.CACHE_CONTROL: _PUBLIC_CACHE_CONTROL}
    if _matches(request.headers.get(hdrs.IF_NONE_MATCH), etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body if isinstance(body, bytes) else body(), content_type=JSON, headers=headers)


def _matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110's weak comparison, as If-None-Match asks: `*`, or any listed tag, W/ or not."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in if_none_match.split(","))


async def read_json(request: web.Request, decoder: msgspec.json.Decoder[Any]) -> Any:
    # The raw header first: the common, exact case skips aiohttp's full media-type parse.
    if request.headers.get(hdrs.CONTENT_TYPE) != JSON and request.content_type not in (JSON, "application/merge-patch+json"):
        raise ProblemError(415, "unsupported_media_type", f"send {JSON}, not {request.content_type!r}")
    body = await request.read()
    if not body:
        raise invalid("the request needs a JSON body", status=400)
    try:
        decoded = decoder.decode(body)
    except msgspec.DecodeError as error:
        raise from_decode_error(error) from None
    except UnicodeDecodeError as error:
        raise invalid(f"the body is not valid UTF-8 (byte {error.start})", status=400) from None
    refuse_duplicate_keys(body)
    return decoded


# The end of a key: its closing quote, JSON's whitespace, the colon.
_KEY_END = re.compile(rb'"[ \t\n\r]*:')
_CONTAINERS = (dict, list)
_GENERIC = msgspec.json.Decoder()


def _keys(value: dict[str, Any] | list[Any]) -> int:
    """How many keys the objects in a decoded JSON value have, at any depth."""
    items: Iterable[Any] = value
    count = 0
    if isinstance(value, dict):
        count = len(value)
        items = value.values()
    for item in items:
        if isinstance(item, _CONTAINERS):
            count += _keys(item)
    return count


class _Members(list[tuple[str, Any]]):
    """One object's members as written, duplicates kept (json's object_pairs_hook)."""


def _first_duplicate(value: Any, path: str) -> str | None:
    """The path of the first key given twice in its object, in the order written, or None."""
    if isinstance(value, _Members):
        seen: set[str] = set()
        for key, item in value:
            at = f"{path}.{key}" if key.isidentifier() else f"{path}[{schemas.ENCODER.encode(key).decode()}]"
            if key in seen:
                return at
            seen.add(key)
            if (found := _first_duplicate(item, at)) is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if (found := _first_duplicate(item, f"{path}[{index}]")) is not None:
                return found
    return None


def refuse_duplicate_keys(body: bytes) -> None:
    """400 if an object in `body` (JSON that decoded) has a key twice, which msgspec would take
    the last of: not valid JSON in I-JSON's terms (RFC 7493), and a way to slip one value past a
    check that reads another. The exact search (the stdlib's parser, which keeps every member) costs
    about four times a decode, so it runs only when the body may have a duplicate: every key ends
    in a match of _KEY_END, so if there are no more matches than keys in the decoded objects (where
    a duplicate counts once), no key is written twice. A string holding `":` only costs the search."""
    written = len(_KEY_END.findall(body))
    if written == 0:
        return
    decoded = _GENERIC.decode(body)
    # The top object's keys alone, first: a flat body (a reservation) is done without a walk.
    if (type(decoded) is dict and written <= len(decoded)) or written <= _keys(decoded):
        return
    path = _first_duplicate(json.loads(body, object_pairs_hook=_Members), "$")
    if path is not None:
        raise invalid(f"the body is not valid JSON: the key {path} is given twice", path, 400)


async def refuse_body(request: web.Request, what: str) -> None:
    """Commands without parameters take no body (an empty JSON object is tolerated)."""
    if request.can_read_body and (await request.read()).strip() not in (b"", b"{}"):
        raise invalid(f"{what} takes no body", "$")


def registry_of(request: web.Request) -> Registry:
    registry = request.app[keys.REGISTRY]
    if not registry.ready:
        raise ProblemError(503, "recovering", "the service is rebuilding its state from the log; retry shortly")
    return registry


async def actor_of(request: web.Request, event_id: str) -> EventActor:
    """The event's actor (rebuilt now if start-up has not come to it yet); 404 if there is none."""
    registry = registry_of(request)
    registry.check_serving(event_id)
    actor = registry.get(event_id) or await registry.actor(event_id)
    if actor is None:
        raise ProblemError(404, "not_found", f"no event {event_id!r}", field="event_id")
    return actor


async def actor_for(request: web.Request, reservation_or_ticket_id: str, kind: str) -> EventActor:
    """The actor of the event a reservation or ticket id names; 404 if there is none."""
    registry = registry_of(request)
    event_id = domain.event_id_of(reservation_or_ticket_id)
    if event_id is not None:
        registry.check_serving(event_id)
    actor = (registry.get(event_id) or await registry.actor(event_id)) if event_id else None
    if actor is None:
        raise ProblemError(404, "not_found", f"no {kind} {reservation_or_ticket_id!r}")
    return actor


def summary_of(actor: EventActor) -> EventSummary:
    summary = actor.view()
    if summary is None:
        raise ProblemError(404, "not_found", f"no event {actor.event_id!r}")
    return summary


class idempotency_key:
    """Carry out a mutating request once per Idempotency-Key; a retry gets the first answer again.

        async with idempotency_key(request, body, user_id=user_id) as key:
            if key.replayed is not None:
                return render(key.replayed_as(Reservation))
            reservation = key.answered(await actor.reserve(..., claim=key.claim))

    The request in canonical form is `canonical` with `changes` (the defaults filled in, the buyer
    named): the same request, however it was spelled, has the same fingerprint. It is made and
    encoded only when a key is given. On leaving, the key is released with what the actor stored
    under it; if the block failed other than by a refusal, as in doubt (the commit's outcome may be
    unknown), so that the next use of the key asks the database.
    """

    __slots__ = ("_canonical", "_changes", "_request", "_stored_answer", "claim", "replayed")

    def __init__(self, request: web.Request, canonical: object, **changes: object) -> None:
        self._request = request
        self._canonical = canonical
        self._changes = changes
        # The claim to hand the actor (None without a key, or on a replay).
        self.claim: IdempotencyClaim | None = None
        # The stored answer of the original request, when this is a retry.
        self.replayed: bytes | None = None
        self._stored_answer: bytes | None = None

    async def __aenter__(self) -> idempotency_key:
        request = self._request
        key = request.headers.get(IDEMPOTENCY_KEY)
        if key is None:
            return self
        if not IDEMPOTENCY_KEY_PATTERN.fullmatch(key):
            raise invalid(
                f"Idempotency-Key must be 1 to {limits.IDEMPOTENCY_KEY_BYTES_MAX} printable ASCII characters",
                "Idempotency-Key",
                400,
            )
        canonical = self._canonical
        if self._changes:
            canonical = msgspec.structs.replace(canonical, **self._changes)  # type: ignore[type-var]
        body = canonical if isinstance(canonical, bytes) else schemas.ENCODER.encode(canonical)
        try:
            claim_or_replay = await request.app[keys.IDEMPOTENCY].begin(
                request[keys.PRINCIPAL].id, key, fingerprint(request.method, request.path, body)
            )
        except IdempotencyConflict:
            raise ProblemError(
                409, "idempotency_conflict", "this Idempotency-Key was used for a different request", field="Idempotency-Key"
            ) from None
        if isinstance(claim_or_replay, Replay):
            self.replayed = claim_or_replay.answer
        else:
            self.claim = claim_or_replay
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, _: object) -> None:
        if self.claim is None:
            return
        store = self._request.app[keys.IDEMPOTENCY]
        # A refusal (before the actor, or by it) leaves nothing in doubt; any other failure may.
        in_doubt = error is not None and not isinstance(error, ProblemError)
        store.finish(self.claim, None if in_doubt else self._stored_answer, in_doubt=in_doubt)

    def replayed_as(self, answer_type: type[T]) -> T:
        """The stored answer of the original request, decoded."""
        if self.replayed is None:
            raise ProblemError(500, "internal_error", "not a replay")
        return msgspec.json.decode(self.replayed, type=answer_type)

    def answered(self, outcome: Outcome) -> Any:
        """Note what the actor stored under the key, and return the outcome's result (a refusal
        raises its problem)."""
        self._stored_answer = outcome.stored_answer
        if isinstance(outcome.result, Rejected):
            raise rejection(outcome.result)
        return outcome.result


def replayed(response: web.Response) -> web.Response:
    """Mark an answer as the replay of a stored one."""
    response.headers[IDEMPOTENT_REPLAYED] = "true"
    return response


def int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """A whole number in ASCII digits, between `low` and `high` (none of these take a negative).
    Not Python's int(), which also takes spaces around, `_` between digits and any script's digits."""
    raw = request.query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()):
        raise invalid(f"{name} must be an integer in ASCII digits", name, 400)
    digits = raw.lstrip("0") or "0"
    # Compared by length first: no int() of thousands of digits.
    if len(digits) > len(str(high)) or not low <= int(digits) <= high:
        raise invalid(f"{name} must be between {low} and {high}", name, 400)
    return int(digits)


def time_query(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        moment = msgspec.json.decode(msgspec.json.encode(raw), type=datetime)
    except msgspec.ValidationError:
        raise invalid(f"{name} must be an RFC 3339 time", name, 400) from None
    if moment.tzinfo is None:
        raise invalid(f"{name} needs a time zone (e.g. Z)", name, 400)
    if problem := schemas.moment_problem(moment, name):
        raise invalid(problem, name, 400)
    return moment


@overload
def choice_query(request: web.Request, name: str, choices: tuple[S, ...], default: S) -> S: ...
@overload
def choice_query(request: web.Request, name: str, choices: tuple[S, ...], default: None) -> S | None: ...
def choice_query(request: web.Request, name: str, choices: tuple[S, ...], default: S | None) -> S | None:
    """The query parameter `name`, one of `choices` (400 otherwise), or `default` when absent."""
    raw = request.query.get(name)
    if raw is None:
        return default
    if raw not in choices:
        raise invalid(f"{name} must be one of {', '.join(choices)}", name, 400)
    return choices[choices.index(raw)]


_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


def storable(value: str, name: str) -> str:
    """A query or path parameter that will reach SQL: 400 if PostgreSQL could not take it."""
    if _UNSTORABLE.search(value):
        raise invalid(f"{name} contains a NUL or an unpaired surrogate", name, 400)
    return value


def text_query(request: web.Request, name: str) -> str | None:
    raw = request.query.get(name)
    if raw is not None and len(raw) > limits.NAME_CHARS_MAX:
        raise invalid(f"{name} is longer than {limits.NAME_CHARS_MAX} characters", name, 400)
    return storable(raw, name) if raw else None


def encode_cursor(values: Any) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(values)).decode().rstrip("=")


def forged_cursor() -> ProblemError:
    return invalid("cursor is not one this service issued", "cursor", 400)


INT64_MAX = 2**63 - 1
# The instants a cursor may hold: a stored time, in UTC (any offset is under a day), or the clock's.
_CURSOR_EARLIEST = datetime(limits.MOMENT_YEAR_MIN, 1, 1, tzinfo=UTC) - timedelta(days=1)
_CURSOR_LATEST = datetime(limits.MOMENT_YEAR_MAX + 1, 1, 1, tzinfo=UTC) + timedelta(days=1)


def _issued(value: Any) -> bool:
    """Whether every part of a decoded cursor is one the service could have put there: text
    PostgreSQL can store, a count within a bigint, never negative, a time with its zone within the
    years a time may have (so that neither asyncpg's conversion to UTC nor the query can fail)."""
    if isinstance(value, str):
        return _UNSTORABLE.search(value) is None
    if isinstance(value, int):
        return 0 <= value <= INT64_MAX
    if isinstance(value, datetime):
        return value.tzinfo is not None and _CURSOR_EARLIEST <= value <= _CURSOR_LATEST
    if isinstance(value, (tuple, list)):
        return all(_issued(part) for part in value)
    return False


def decode_cursor(request: web.Request, shape: Any) -> Any:
    """The query's `cursor`, decoded to `shape` and each part checked, or None; a cursor we did
    not issue is a 400 (also one whose parts could only fail in the database: every route that
    pages gets this check here)."""
    cursor = request.query.get("cursor")
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = msgspec.json.decode(raw, type=shape)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise forged_cursor() from None
    if not _issued(values):
        raise forged_cursor()
    return values


def cursor_moment(text: str) -> datetime:
    """A time a cursor holds as text (RFC 3339, as `encode_cursor` wrote it), checked as
    `decode_cursor` checks its parts."""
    try:
        moment = msgspec.json.decode(msgspec.json.encode(text), type=datetime)
    except msgspec.ValidationError:
        raise forged_cursor() from None
    if not _issued(moment):
        raise forged_cursor()
    return moment


async def event_command(
    request: web.Request, canonical: object, ask: Callable[[IdempotencyClaim | None, str | None], Awaitable[Outcome]]
) -> web.Response:
    """An event-level command under the request's Idempotency-Key (`ask(claim, request_id)` sends it
    to the actor), answered with the event as the command leaves it; a retry gets the first answer."""
    async with idempotency_key(request, canonical) as key:
        if key.replayed is not None:
            return replayed(json_response(event_out(key.replayed_as(EventSummary))))
        summary: EventSummary = key.answered(await ask(key.claim, request.get(keys.REQUEST_ID)))
    return json_response(event_out(summary))
