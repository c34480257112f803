"""Who is asking, and what they may do (API.md, "Who may do what").

Every handler asks the principal before acting; the rules for each role are here and nowhere else,
and a refusal is an `inventoryd.errors` refusal that the edge maps to 403 (or 422). Who the
principal is (tokens, sessions) is `inventoryd.accounts`' business.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, get_args

from inventoryd.domain import EventDefinition, InvariantViolation, Reservation
from inventoryd.errors import Forbidden, InvalidRequest

# The roles of accounts (users who register and log in); services and admins are API tokens.
AccountRole = Literal["attendee", "organizer"]
ACCOUNT_ROLES: Final[tuple[AccountRole, ...]] = get_args(AccountRole)
Role = AccountRole | Literal["service", "admin"]


def account_role(stored: str) -> AccountRole:
    """A role as the database stores it (its CHECK constraint allows only these)."""
    for role in ACCOUNT_ROLES:
        if stored == role:
            return role
    raise InvariantViolation(f"an account with the role {stored!r}")


@dataclass(frozen=True, slots=True)
class Principal:
    id: str
    role: Role
    # The account behind the principal (attendees, organizers); None for service and admin tokens.
    user_id: str | None = None
    # The login session an access token belongs to (what logout ends).
    session_id: str | None = None

    def _owns(self, definition: EventDefinition) -> bool:
        return self.role == "organizer" and self.user_id is not None and definition.organizer_id == self.user_id

    def acting_for(self, requested_user_id: str | None) -> str:
        """The user a reservation is made for: oneself, or anyone for service and admin."""
        if self.role in ("service", "admin"):
            if requested_user_id is None:
                raise InvalidRequest("user_id is required when a service reserves for a buyer", field="$.user_id")
            return requested_user_id
        if self.user_id is None or (requested_user_id is not None and requested_user_id != self.user_id):
            raise Forbidden("you may reserve only for yourself", field="$.user_id")
        return self.user_id

    def check_may_create_events(self) -> None:
        if self.role not in ("organizer", "admin"):
            raise Forbidden("only organizers and admins create events")

    def check_may_manage(self, definition: EventDefinition) -> None:
        """Update, cancel, add or change ticket types, read reports and reservations of an event."""
        if self.role != "admin" and not self._owns(definition):
            raise Forbidden("only the event's organizer and admins may do this")

    def check_may_read_changes(self, definition: EventDefinition) -> None:
        """The change feed: the event's organizer, services (storefronts, CRMs) and admins."""
        if self.role not in ("service", "admin") and not self._owns(definition):
            raise Forbidden("only the event's organizer, services and admins read its changes")

    def webhook_owner(self) -> str | None:
        """Whose a webhook made by this principal is: None for an admin's (any event), the
        organizer's id for an organizer's (their events only); Forbidden for anyone else."""
        if self.role == "admin":
            return None
        if self.role == "organizer" and self.user_id is not None:
            return self.user_id
        raise Forbidden("only organizers (for their events) and admins manage webhooks")

    def check_may_check_in(self, definition: EventDefinition) -> None:
        if self.role not in ("service", "admin") and not self._owns(definition):
            raise Forbidden("only the event's organizer, services and admins check tickets in")

    def check_reservation_access(self, reservation: Reservation, definition: EventDefinition) -> None:
        self.check_buyer_access(reservation.user_id, definition, "reservation")

    def check_buyer_access(self, user_id: str, definition: EventDefinition, what: str) -> None:
        """A buyer's own thing (a reservation, a place in a waiting room): theirs, the event's
        organizer's, a service's or an admin's to see and change."""
        if self.role in ("service", "admin") or self._owns(definition):
            return
        if user_id != self.user_id:
            raise Forbidden(f"this {what} is someone else's")

    def may_cancel_late(self, definition: EventDefinition) -> bool:
        """Organizers (of the event) and admins may cancel a confirmed reservation after cancel_until."""
        return self.role == "admin" or self._owns(definition)

    def check_may_read_user(self, user_id: str) -> None:
        if self.role not in ("service", "admin") and self.user_id != user_id:
            raise Forbidden("only services and admins read other users' reservations")


# When authentication is switched off (INVENTORYD_AUTH=off, allowed on loopback only): everyone.
ANONYMOUS_OPERATOR = Principal(id="anonymous", role="admin")
