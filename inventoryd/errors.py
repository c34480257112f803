"""Refusals that the services raise and the edge answers: each kind maps to one HTTP status in
`inventoryd.http.problems`, and nowhere else. Expected outcomes of the state machine (sold out,
hold expired, …) are not these: they are reply values (`domain.Rejected`)."""

from __future__ import annotations

from typing import Literal


class Refusal(Exception):
    """A request refused for a reason its caller can act on."""

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class Unauthenticated(Refusal):
    """No valid credentials (a missing, bad, expired or revoked token; a wrong password)."""


class Forbidden(Refusal):
    """The caller is known, but may not do this."""


class InvalidRequest(Refusal):
    """The request is well-formed but breaks a rule; `field` names the part at fault."""


class Conflict(Refusal):
    """The request clashes with what exists (an email already registered, …)."""


class Unavailable(Refusal):
    """The request was not carried out and may be retried (with the same Idempotency-Key)."""

    def __init__(self, detail: str, *, code: Literal["overloaded", "unavailable"] = "unavailable") -> None:
        super().__init__(detail)
        self.code = code


class NotOwner(Exception):
    """The event is not served by this node: another owns its shard, or nobody does yet (the edge
    forwards the request, or answers 503 until an owner is known). `shard` is None for a request
    that is not an event's (creating one, on a node that holds no shard)."""

    def __init__(self, shard: int | None) -> None:
        super().__init__(f"shard {shard} is not served here")
        self.shard = shard
