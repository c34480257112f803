"""RFC 9457 problem details: every error inventoryd answers is one of these."""

from __future__ import annotations

import re
from datetime import datetime
from http import HTTPStatus

import msgspec
from aiohttp import web

from inventoryd import errors, limits
from inventoryd.domain import Rejected, RejectionCode
from inventoryd.http.schemas import ENCODER, Problem

CONTENT_TYPE = "application/problem+json"
_NAMED_FIELD = re.compile(r"(?:unknown|missing required) field `([^`]+)`")

# Where a domain refusal maps to HTTP: the only place that knows.
_REJECTION_STATUS: dict[RejectionCode, int] = {
    "sold_out": 409,
    "insufficient_tickets": 409,
    "limit_exceeded": 409,
    "sale_not_open": 409,
    "event_cancelled": 409,
    "not_found": 404,
    "hold_expired": 409,
    "conflict": 409,
    "cancellation_closed": 409,
    "already_checked_in": 409,
    "capacity_below_reserved": 409,
    "no_waiting_room": 409,
    "queue_not_open": 409,
    "queue_full": 409,
    "invalid_request": 422,
    "seats_unavailable": 409,
    "no_adjacent_seats": 409,
}


class ProblemError(Exception):
    """Raise anywhere in a handler to answer with a problem document."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        field: str | None = None,
        available: int | None = None,
        checked_in_at: datetime | None = None,
        seats: tuple[str, ...] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.body = Problem(
            type=f"urn:inventoryd:problem:{code}",
            title=HTTPStatus(status).phrase,
            status=status,
            detail=detail,
            code=code,
            field=field,
            available=available,
            checked_in_at=checked_in_at,
            seats=list(seats) if seats is not None else None,
        )
        self.headers = dict(headers or {})
        if status in (429, 503) and "Retry-After" not in self.headers:
            self.headers["Retry-After"] = str(limits.RETRY_AFTER_S)

    def response(self) -> web.Response:
        return web.Response(
            status=self.status, body=ENCODER.encode(self.body), content_type=CONTENT_TYPE, headers=self.headers
        )


def problem_response(status: int, code: str, detail: str) -> web.Response:
    """A problem document where there is nothing to raise through (middleware, probes)."""
    return ProblemError(status, code, detail).response()


def rejection(rejected: Rejected) -> ProblemError:
    return ProblemError(
        _REJECTION_STATUS[rejected.code],
        rejected.code,
        rejected.detail,
        field=rejected.field,
        available=rejected.available,
        checked_in_at=rejected.checked_in_at,
        seats=rejected.seats,
    )


# Where a service's refusal maps to HTTP, beside the domain's: status and code by kind.
_REFUSAL_STATUS: dict[type[errors.Refusal], tuple[int, str]] = {
    errors.Unauthenticated: (401, "unauthorized"),
    errors.Forbidden: (403, "forbidden"),
    errors.InvalidRequest: (422, "invalid_request"),
    errors.Conflict: (409, "conflict"),
}
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="inventoryd"'}


def refusal(error: errors.Refusal) -> ProblemError:
    if isinstance(error, errors.Unavailable):
        return ProblemError(503, error.code, error.detail)
    status, code = _REFUSAL_STATUS[type(error)]
    return ProblemError(status, code, error.detail, field=error.field, headers=_CHALLENGE if status == 401 else None)


def unauthorized(detail: str) -> ProblemError:
    return refusal(errors.Unauthenticated(detail))


def invalid(detail: str, field: str | None = None, status: int = 422) -> ProblemError:
    return ProblemError(status, "invalid_request", detail, field=field)


def from_decode_error(error: msgspec.DecodeError) -> ProblemError:
    """A msgspec error as a problem: 400 for malformed JSON, 422 for a well-formed but invalid body."""
    message = str(error)
    field = None
    if " - at `" in message:
        message, _, location = message.rpartition(" - at `")
        field = location.rstrip("`")
    # "Object contains unknown field `x`" / "Object missing required field `x`": name x itself.
    named = _NAMED_FIELD.search(message)
    if named is not None:
        field = f"{field or '$'}.{named.group(1)}"
    if isinstance(error, msgspec.ValidationError):
        field = field or "$"
        return invalid(f"{message} (at {field})", field)
    return invalid(f"the body is not valid JSON: {message}", field, status=400)
