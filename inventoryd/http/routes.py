"""The route table: every operation of the API, once. The app registers these; the OpenAPI document
and the access-matrix test are generated from them, so a new route cannot be forgotten there."""

from __future__ import annotations

from typing import get_args

from inventoryd import limits
from inventoryd.domain import Reservation, ReservationStatus, SeatLayout
from inventoryd.http import (
    account_routes,
    cluster,
    events,
    openapi,
    operations,
    outbox_routes,
    reservations,
    schemas,
    seating,
    waiting_room,
)
from inventoryd.http.common import QueryParameter, Route
from inventoryd.http.schemas import MOMENT_PATTERN, MOMENT_YEARS, STORABLE_TEXT

_LIMIT = QueryParameter(
    "limit",
    f"items per page (1..{limits.PAGE_ITEMS_MAX}, default {limits.PAGE_ITEMS_DEFAULT})",
    {"type": "integer", "minimum": 1, "maximum": limits.PAGE_ITEMS_MAX},
)
# A cursor is what the service answered (base64url, unpadded); empty is the first page, as absent.
_CURSOR = QueryParameter(
    "cursor", "next_cursor of the previous page", {"type": "string", "pattern": r"^[A-Za-z0-9_-]*\Z"}
)
# Text that reaches SQL: PostgreSQL cannot store a NUL (400, as a text longer than the bound).
_TEXT = {"type": "string", "maxLength": limits.NAME_CHARS_MAX, "pattern": STORABLE_TEXT}
_PRICE = {"type": "integer", "minimum": 0, "maximum": limits.PRICE_MAX}
# A time, as an event's are given: the same years (400 beyond).
_MOMENT = {"type": "string", "format": "date-time", "pattern": MOMENT_PATTERN}
_STATUS = QueryParameter(
    "status",
    "only reservations in this status",
    {"type": "string", "enum": list(get_args(ReservationStatus))},
)
_CATALOGUE_QUERY = (
    QueryParameter(
        "q",
        f"words (at most {limits.CATALOGUE_QUERY_WORDS_MAX}), each the beginning of a word of the name, venue or description"
        " (any case, with or without accents); a q without a word is refused",
        _TEXT,
    ),
    QueryParameter("category", "the category (any case, with or without accents)", _TEXT),
    QueryParameter("city", "the city (any case, with or without accents)", _TEXT),
    QueryParameter("venue", "the venue (any case, with or without accents)", _TEXT),
    QueryParameter("from", f"starts at or after (RFC 3339, {MOMENT_YEARS})", _MOMENT),
    QueryParameter("to", f"starts before (RFC 3339, {MOMENT_YEARS})", _MOMENT),
    QueryParameter("min_price", "a ticket type priced at least this (minor units)", _PRICE),
    QueryParameter("max_price", "a ticket type priced at most this (minor units); not below min_price", _PRICE),
    QueryParameter(
        "available",
        "true: only events with seats to sell (on sale, a seat left in some ticket type); false: only events with"
        " none (sold out in every ticket type, or cancelled); absent: every event",
        {"type": "string", "enum": ["true", "false"]},
    ),
    QueryParameter("sort", "order", {"type": "string", "enum": ["starts_at", "-starts_at", "name"]}),
    _LIMIT,
    _CURSOR,
)
_SECTION = QueryParameter(
    "section", "only this section's seats", {"type": "string", "pattern": r"^[A-Za-z0-9]+\Z"}
)
_AFTER = QueryParameter(
    "after", "the log position to read after (next_after of the previous page; 0, the default: from the start)",
    {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
)
_CHANGES_LIMIT = QueryParameter(
    "limit",
    f"log records to look at (1..{limits.CHANGES_PAGE_MAX}, default {limits.CHANGES_PAGE_DEFAULT})",
    {"type": "integer", "minimum": 1, "maximum": limits.CHANGES_PAGE_MAX},
)
_DELIVERIES_LIMIT = QueryParameter(
    "limit",
    f"items per page (1..{limits.DELIVERIES_PAGE_MAX}, default {limits.PAGE_ITEMS_DEFAULT})",
    {"type": "integer", "minimum": 1, "maximum": limits.DELIVERIES_PAGE_MAX},
)
_HISTORY_QUERY = (
    QueryParameter("event_id", "only this event's", {"type": "string", "pattern": STORABLE_TEXT}),
    _STATUS,
    _LIMIT,
    _CURSOR,
)

ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", operations.healthz, "healthz", "The process is alive", response_body=schemas.Health, public=True),
    Route(
        "GET", "/readyz", operations.readyz, "readyz", "Recovery is done and the database answers",
        response_body=schemas.Health, public=True,
    ),
    Route(
        "GET", "/metrics", operations.metrics, "metrics",
        "Prometheus metrics (public unless INVENTORYD_METRICS_TOKEN is set: then it or an admin token)",
        public=True, media_type="text/plain",
    ),
    Route("GET", "/openapi.json", openapi.openapi_json, "openapi", "This document", public=True),
    Route("GET", "/docs", openapi.docs, "docs", "The API reference (Swagger UI)", public=True, media_type="text/html"),
    Route(
        "GET", "/docs/init.js", openapi.docs_init, "docs_init", "The reference page's script", public=True,
        media_type="text/javascript",
    ),
    Route(
        "GET", "/v1/cluster", cluster.cluster_view, "cluster", "The cluster: nodes, their URLs, shards per node, epochs, leases (admins)",
        response_body=cluster.ClusterOut,
    ),
    # Accounts.
    Route(
        "POST", "/v1/auth/register", account_routes.register, "register", "Create an attendee or organizer account",
        request_body=account_routes.RegisterIn, response_body=account_routes.UserOut, success_status=201, public=True,
    ),
    Route(
        "POST", "/v1/auth/login", account_routes.login, "login", "Exchange email and password for tokens",
        request_body=account_routes.LoginIn, response_body=account_routes.TokensOut, public=True,
    ),
    Route(
        "POST", "/v1/auth/refresh", account_routes.refresh, "refresh",
        "A new token pair for a refresh token (which stops working: rotation)",
        request_body=account_routes.RefreshIn, response_body=account_routes.TokensOut, public=True,
    ),
    Route(
        "POST", "/v1/auth/logout", account_routes.logout, "logout", "End the session: its refresh token is revoked",
        success_status=204,
    ),
    Route("GET", "/v1/users/me", account_routes.me, "me", "The caller's account", response_body=account_routes.UserOut),
    Route(
        "DELETE", "/v1/users/me", outbox_routes.erase_me, "erase_me",
        "Erase the caller's personal data (email, name, password, addresses given for them) and end their sessions;"
        " the inventory log, which holds only their opaque id, is untouched",
        success_status=204,
    ),
    # Events.
    Route(
        "POST", "/v1/events", events.create_event, "create_event", "Create an event with its ticket types",
        request_body=schemas.EventIn, response_body=schemas.EventOut, success_status=201,
        idempotent=True,
    ),
    Route(
        "GET", "/v1/events", events.list_events, "list_events",
        "The catalogue: search (q), filters, sort, cursor pagination", response_body=schemas.EventPage, public=True,
        query=_CATALOGUE_QUERY,
    ),
    Route(
        "GET", "/v1/events/{event_id}", events.get_event, "get_event", "One event with its ticket types and counts",
        response_body=schemas.EventOut, public=True,
    ),
    Route(
        "PATCH", "/v1/events/{event_id}", events.update_event, "update_event",
        "Change descriptive fields, the sale window or limits", request_body=schemas.EventPatch,
        response_body=schemas.EventOut,
        idempotent=True,
    ),
    Route(
        "POST", "/v1/events/{event_id}/ticket-types", events.add_ticket_type, "add_ticket_type", "Add a ticket type",
        request_body=schemas.TicketTypeIn, response_body=schemas.TicketTypeOut, success_status=201,
        idempotent=True,
    ),
    Route(
        "PATCH", "/v1/events/{event_id}/ticket-types/{code}", events.change_ticket_type, "change_ticket_type",
        "Change a ticket type's name, price or capacity (never below held + sold)",
        request_body=schemas.TicketTypePatch, response_body=schemas.TicketTypeOut,
        idempotent=True,
    ),
    Route(
        "POST", "/v1/events/{event_id}/cancel", events.cancel_event, "cancel_event",
        "Cancel the event: holds released, confirmed reservations refunded, waiting lists emptied",
        response_body=schemas.EventOut,
        idempotent=True,
    ),
    Route(
        "GET", "/v1/events/{event_id}/availability", events.get_availability, "get_availability",
        "Seats available and buyers waiting per ticket type (the hot read)",
        response_body=schemas.AvailabilityOut, public=True,
    ),
    Route(
        "GET", "/v1/events/{event_id}/availability/stream", events.availability_stream, "availability_stream",
        "Server-sent events: availability now and on every change, a few updates a second at most",
        public=True, media_type="text/event-stream",
    ),
    Route(
        "GET", "/v1/events/{event_id}/report", events.get_report, "get_report",
        "Per ticket type and in total: capacity, available, held, sold, checked in, cancelled, revenue, waitlist",
        response_body=schemas.ReportOut,
    ),
    Route(
        "GET", "/v1/events/{event_id}/reservations", events.event_reservations, "event_reservations",
        "The event's reservations, oldest first", response_body=schemas.ReservationPage, query=(_STATUS, _LIMIT, _CURSOR),
    ),
    # The waiting room.
    Route(
        "POST", "/v1/events/{event_id}/queue", waiting_room.join_queue, "join_queue",
        "Join the event's waiting room (201; 200 with the same entry when already in it); Retry-After says when to look again",
        request_body=schemas.QueueJoinIn, response_body=schemas.QueueEntryOut, success_status=201, body_optional=True,
    ),
    Route(
        "GET", "/v1/events/{event_id}/queue/challenge", waiting_room.get_queue_challenge, "get_queue_challenge",
        "A proof-of-work challenge for joining (when the waiting room asks for one)", response_body=schemas.PowChallengeOut,
    ),
    Route(
        "GET", "/v1/queue/{queue_id}", waiting_room.get_queue_entry, "get_queue_entry",
        "A place in a waiting room: its position, and the admission token once admitted", response_body=schemas.QueueEntryOut,
    ),
    Route(
        "DELETE", "/v1/queue/{queue_id}", waiting_room.leave_queue, "leave_queue", "Leave the waiting room", success_status=204,
    ),
    Route(
        "GET", "/v1/events/{event_id}/queue", waiting_room.get_queue_line, "get_queue_line",
        "The waiting room's line (the event's organizer, admins)", response_body=schemas.QueueLineOut,
    ),
    # Reserved seating.
    Route(
        "PUT", "/v1/events/{event_id}/seatmap", seating.put_seatmap, "put_seatmap",
        "Put the event's seat map (sections, rows, seats, or blocks of them); seats held or sold must stay, of their type",
        request_body=schemas.SeatMapIn, response_body=schemas.EventOut, idempotent=True,
    ),
    Route(
        "GET", "/v1/events/{event_id}/seatmap", seating.get_seatmap, "get_seatmap", "The event's seat map, as put",
        response_body=SeatLayout, public=True,
    ),
    Route(
        "GET", "/v1/events/{event_id}/seats", seating.get_seats, "get_seats",
        "Every seat's status, a letter a seat per row (f free, h held, s sold, b blocked)", response_body=schemas.SeatsOut,
        public=True, query=(_SECTION,),
    ),
    Route(
        "GET", "/v1/events/{event_id}/seatmap.svg", seating.seatmap_svg, "seatmap_svg", "The seat map drawn, coloured by status",
        public=True, media_type="image/svg+xml", query=(_SECTION,),
    ),
    Route(
        "POST", "/v1/events/{event_id}/seats/block", seating.block_seats, "block_seats",
        "Block seats (house seats, camera positions): never sold or picked; held or sold seats cannot be",
        request_body=schemas.SeatsBlockIn, response_body=schemas.EventOut, idempotent=True,
    ),
    Route(
        "POST", "/v1/events/{event_id}/seats/unblock", seating.unblock_seats, "unblock_seats", "Unblock seats: they are for sale again",
        request_body=schemas.SeatsUnblockIn, response_body=schemas.EventOut, idempotent=True,
    ),
    # What happened: the change feed, webhooks, the reservations report.
    Route(
        "GET", "/v1/events/{event_id}/changes", outbox_routes.get_changes, "get_changes",
        "The event's committed changes after a log position, in log order (the organizer, services, admins)",
        response_body=outbox_routes.ChangePage, query=(_AFTER, _CHANGES_LIMIT),
    ),
    Route(
        "GET", "/v1/events/{event_id}/report.csv", outbox_routes.report_csv, "report_csv",
        "Every reservation of the event with its status, type, quantity, amount and times, as CSV, streamed",
        media_type="text/csv",
    ),
    Route(
        "POST", "/v1/webhooks", outbox_routes.create_webhook, "create_webhook",
        "Subscribe an endpoint to change types (admins: any event; organizers: their events); its signing secret is shown"
        " in this answer only",
        request_body=outbox_routes.WebhookIn, response_body=outbox_routes.WebhookOut, success_status=201, idempotent=True,
    ),
    Route(
        "GET", "/v1/webhooks", outbox_routes.list_webhooks, "list_webhooks", "The caller's webhook endpoints (admins: all)",
        response_body=outbox_routes.WebhookPage,
    ),
    Route(
        "GET", "/v1/webhooks/{webhook_id}", outbox_routes.get_webhook, "get_webhook", "One webhook endpoint",
        response_body=outbox_routes.WebhookOut,
    ),
    Route(
        "DELETE", "/v1/webhooks/{webhook_id}", outbox_routes.delete_webhook, "delete_webhook",
        "Delete a webhook endpoint: nothing more is sent to it", success_status=204,
    ),
    Route(
        "GET", "/v1/webhooks/{webhook_id}/deliveries", outbox_routes.webhook_deliveries, "webhook_deliveries",
        "The endpoint's deliveries, newest first: status, attempts, the last answer", response_body=outbox_routes.DeliveryPage,
        query=(_DELIVERIES_LIMIT, _CURSOR),
    ),
    Route(
        "POST", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry", outbox_routes.retry_delivery, "retry_delivery",
        "Send a delivery again (202): a failed one sets its endpoint going again from there, in order",
        response_body=outbox_routes.DeliveryOut, success_status=202,
    ),
    # Reservations and tickets.
    Route(
        "POST", "/v1/events/{event_id}/reservations", reservations.create_reservation, "create_reservation",
        "Hold tickets or seats (201): a quantity, best available on a seated type, or exact seats; or join the waiting list"
        " when sold out and asked to (202)",
        request_body=schemas.ReservationIn, response_body=Reservation, success_status=201,
        idempotent=True,
    ),
    Route(
        "POST", "/v1/reservations/{reservation_id}/confirm", reservations.confirm_reservation, "confirm_reservation",
        "Confirm a held reservation: its tickets are issued", response_body=Reservation,
        idempotent=True,
    ),
    Route(
        "POST", "/v1/reservations/{reservation_id}/cancel", reservations.cancel_reservation, "cancel_reservation",
        "Cancel a reservation; its seats return to the pool", response_body=Reservation,
        idempotent=True,
    ),
    Route(
        "GET", "/v1/reservations/{reservation_id}", reservations.get_reservation, "get_reservation",
        "One reservation", response_body=Reservation,
    ),
    Route(
        "GET", "/v1/tickets/{ticket_id}", reservations.get_ticket, "get_ticket", "One ticket",
        response_body=schemas.TicketOut,
    ),
    Route(
        "POST", "/v1/tickets/{ticket_id}/check-in", reservations.check_in_ticket, "check_in_ticket",
        "Check a ticket in at the door (once)", response_body=schemas.TicketOut,
    ),
    Route(
        "GET", "/v1/users/me/reservations", reservations.my_reservations, "my_reservations",
        "The caller's reservations across events, newest first", response_body=schemas.ReservationPage,
        query=_HISTORY_QUERY,
    ),
    Route(
        "GET", "/v1/users/{user_id}/reservations", reservations.user_reservations, "user_reservations",
        "A user's reservations across events, newest first (services, admins)",
        response_body=schemas.ReservationPage, query=_HISTORY_QUERY,
    ),
)

ROUTES_BY_NAME = {route.name: route for route in ROUTES}
if len(ROUTES_BY_NAME) != len(ROUTES):
    raise ImportError("route names must be unique")
