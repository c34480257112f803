"""Reserved seating's routes: put and read the seat map, block and unblock seats, the seats'
statuses (compact, for a storefront to render) and the map drawn as SVG, coloured by status. The
seated reserve itself is the reservation route's (reservations.py)."""

from __future__ import annotations

from html import escape

import msgspec
from aiohttp import web

from inventoryd.actor import CommittedSeats, EventActor
from inventoryd.domain import SeatLayout
from inventoryd.domain.seats import STATUS_LETTERS
from inventoryd.http import keys, schemas
from inventoryd.http.common import (
    actor_of,
    cacheable_json,
    etag_of,
    event_command,
    public_answer,
    read_json,
    summary_of,
)
from inventoryd.http.problems import ProblemError, invalid


def _layout(body: schemas.SeatMapIn) -> SeatLayout:
    return msgspec.convert(body, SeatLayout, from_attributes=True)


async def put_seatmap(request: web.Request) -> web.Response:
    actor = await actor_of(request, request.match_info["event_id"])
    request[keys.PRINCIPAL].check_may_manage(summary_of(actor).definition)
    body: schemas.SeatMapIn = await read_json(request, schemas.SEAT_MAP_DECODER)
    layout = _layout(body)
    return await event_command(request, body, lambda claim, request_id: actor.set_seat_map(layout, claim=claim, request_id=request_id))


def _seats_of(actor: EventActor) -> CommittedSeats:
    summary_of(actor)  # 404 for an event not (yet) created
    seats = actor.seat_view()
    if seats is None:
        raise ProblemError(404, "not_found", "the event has no seat map: PUT one to /v1/events/{event_id}/seatmap")
    return seats


async def get_seatmap(request: web.Request) -> web.Response:
    actor = await actor_of(request, request.match_info["event_id"])
    return cacheable_json(request, _seats_of(actor).seats.map.layout)


async def _seat_command(request: web.Request, block: bool) -> web.Response:
    actor = await actor_of(request, request.match_info["event_id"])
    request[keys.PRINCIPAL].check_may_manage(summary_of(actor).definition)
    body: schemas.SeatsBlockIn | schemas.SeatsUnblockIn = await read_json(
        request, schemas.SEATS_BLOCK_DECODER if block else schemas.SEATS_UNBLOCK_DECODER
    )
    seats = tuple(body.seats)
    if isinstance(body, schemas.SeatsBlockIn):
        reason = body.reason
        return await event_command(
            request, body, lambda claim, request_id: actor.block_seats(seats, reason, claim=claim, request_id=request_id)
        )
    return await event_command(request, body, lambda claim, request_id: actor.unblock_seats(seats, claim=claim, request_id=request_id))


async def block_seats(request: web.Request) -> web.Response:
    return await _seat_command(request, block=True)


async def unblock_seats(request: web.Request) -> web.Response:
    return await _seat_command(request, block=False)


# Each status letter's status (f free, h held, s sold, b blocked).
_STATUS_OF = {letter: status for status, letter in STATUS_LETTERS.items()}


def _section_query(request: web.Request, seats: CommittedSeats) -> str | None:
    section = request.query.get("section") or None
    if section is not None and not any(key[0] == section for key in seats.seats.map.row_keys):
        raise invalid(f"the map has no section {section!r}", "section", 400)
    return section


def seats_out(event_id: str, seats: CommittedSeats, section: str | None) -> schemas.SeatsOut:
    seat_map = seats.seats.map
    rows = seats.rows()
    sections: dict[str, list[schemas.SeatRowOut]] = {}
    counts = dict.fromkeys(_STATUS_OF, 0)
    for row, (section_id, row_id) in enumerate(seat_map.row_keys):
        if section is not None and section_id != section:
            continue
        labels = [seat_map.label(seat) for seat in seat_map.row_seats(row)]
        sections.setdefault(section_id, []).append(schemas.SeatRowOut(row_id, labels, rows[row]))
        for letter in _STATUS_OF:
            counts[letter] += rows[row].count(letter)
    return schemas.SeatsOut(
        event_id=event_id,
        sections=[schemas.SeatSectionOut(section_id, section_rows) for section_id, section_rows in sections.items()],
        free=counts["f"],
        held=counts["h"],
        sold=counts["s"],
        blocked=counts["b"],
    )


def seats_answer(event_id: str, seats: CommittedSeats, section: str | None) -> bytes:
    """`seats_out` encoded, made once per committed view and section (a crowd of storefronts
    asking for a stadium's seats gets the same bytes until the next commit)."""
    answer = seats.answers.get(section)
    if answer is None:
        answer = seats.answers[section] = schemas.ENCODER.encode(seats_out(event_id, seats, section))
    return answer


async def get_seats(request: web.Request) -> web.Response:
    actor = await actor_of(request, request.match_info["event_id"])
    seats = _seats_of(actor)
    answer = seats_answer(actor.event_id, seats, _section_query(request, seats))
    return public_answer(request, etag_of(answer), answer)


# The map's colours by status letter, and the seat's drawn size (in the map's units).
_FILL = {"f": "#2e9d4a", "h": "#f2b233", "s": "#c9473c", "b": "#7a7a7a"}
_SEAT_SIZE = 0.8


def seatmap_svg_of(seats: CommittedSeats, section: str | None) -> bytes:
    """The map drawn: one square a seat at its x/y (or its place on the grid), coloured by status,
    each with its id and status as a tooltip; a legend below."""
    seat_map = seats.seats.map
    rows = seats.rows()
    shown = [row for row, key in enumerate(seat_map.row_keys) if section is None or key[0] == section]
    ys = [seat_map.y[seat] for row in shown for seat in seat_map.row_seats(row)]
    # Sections side by side when their grids overlap: each drawn at an offset of its own.
    offsets: dict[str, float] = {}
    left = 0.0
    spans: dict[str, tuple[float, float]] = {}
    for row in shown:
        section_id = seat_map.row_keys[row][0]
        for seat in seat_map.row_seats(row):
            low, high = spans.get(section_id, (seat_map.x[seat], seat_map.x[seat]))
            spans[section_id] = (min(low, seat_map.x[seat]), max(high, seat_map.x[seat]))
    for section_id, (low, high) in spans.items():
        offsets[section_id] = left - low
        left += high - low + 3
    top = min(ys, default=0.0) - 1
    height = max(ys, default=0.0) - top + 3
    width = max(left, 1.0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="-1 {top:g} {width + 1:g} {height + 1:g}" font-family="sans-serif">',
        "<style>rect{stroke:none}</style>",
    ]
    statuses = _STATUS_OF
    for row in shown:
        section_id = seat_map.row_keys[row][0]
        offset = offsets[section_id]
        letters = rows[row]
        for place, seat in enumerate(seat_map.row_seats(row)):
            letter = letters[place]
            parts.append(
                f'<rect x="{seat_map.x[seat] + offset - _SEAT_SIZE / 2:g}" y="{seat_map.y[seat] - _SEAT_SIZE / 2:g}"'
                f' width="{_SEAT_SIZE}" height="{_SEAT_SIZE}" fill="{_FILL[letter]}" data-status="{statuses[letter]}">'
                f"<title>{escape(seat_map.ids[seat])} {statuses[letter]}</title></rect>"
            )
    for section_id, offset in offsets.items():
        low, _ = spans[section_id]
        parts.append(f'<text x="{low + offset:g}" y="{top + 0.5:g}" font-size="0.8">{escape(section_id)}</text>')
    legend_y = top + height - 0.5
    for index, (letter, name) in enumerate(statuses.items()):
        x = index * 6
        parts.append(f'<rect x="{x:g}" y="{legend_y - 0.6:g}" width="0.8" height="0.8" fill="{_FILL[letter]}"/>')
        parts.append(f'<text x="{x + 1:g}" y="{legend_y + 0.1:g}" font-size="0.8">{name}</text>')
    parts.append("</svg>")
    return "\n".join(parts).encode()


async def seatmap_svg(request: web.Request) -> web.Response:
    actor = await actor_of(request, request.match_info["event_id"])
    seats = _seats_of(actor)
    section = _section_query(request, seats)
    view = actor.view()
    etag = etag_of(f"{actor.event_id}/{section}/{view.last_seq if view is not None else 0}".encode())
    response = public_answer(request, etag, lambda: seatmap_svg_of(seats, section))
    response.content_type = "image/svg+xml"
    return response
