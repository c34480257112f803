"""Who is asking, and what they may do.

Accounts, bearer tokens and roles arrive with the accounts issue; until then every caller is the
anonymous *service* principal, which may act for any `user_id` (as an on-sale client or storefront
does). Handlers already ask the principal every question the roles will answer, so those checks slot
in here without touching the handlers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from inventoryd.domain import Reservation
from inventoryd.http.problems import ProblemError, invalid

Role = Literal["attendee", "organizer", "service", "admin"]


@dataclass(frozen=True, slots=True)
class Principal:
    id: str
    role: Role
    # The account behind the principal (attendees, organizers); None for service and admin tokens.
    user_id: str | None = None

    def acting_for(self, requested_user_id: str | None) -> str:
        """The user a reservation is made for: oneself, or anyone for service and admin."""
        if self.role in ("service", "admin"):
            if requested_user_id is None:
                raise invalid("user_id is required when a service reserves for a buyer", "$.user_id")
            return requested_user_id
        assert self.user_id is not None
        if requested_user_id is not None and requested_user_id != self.user_id:
            raise ProblemError(403, "forbidden", "you may reserve only for yourself", field="$.user_id")
        return self.user_id

    def check_reservation_access(self, reservation: Reservation) -> None:
        if self.role in ("service", "admin"):
            return
        if reservation.user_id != self.user_id:
            raise ProblemError(403, "forbidden", "this reservation is someone else's")

    def may_cancel_late(self) -> bool:
        """Organizers and admins may cancel a confirmed reservation after the event's cancel_until."""
        return self.role in ("organizer", "admin")


ANONYMOUS_SERVICE = Principal(id="service:anonymous", role="service")


def authenticate(authorization: str | None) -> Principal:
    return ANONYMOUS_SERVICE
