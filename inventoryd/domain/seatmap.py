"""A seat map: the layout an organizer puts (durable, as given) and the static map built from it.

A layout is sections of rows of seats, each seat with its ticket type (or its row's, or its
section's), an optional quality rank and x/y; or blocks, `{section, rows, seats_per_row,
ticket_type, first_row, first_seat}`, which make a stadium a small document. A seat's id joins its
section, row and seat (`A-12-5`). Seats in a row are adjacent in the order given.

`SeatMap` numbers the seats row by row (a row's seats are one range of numbers) and ranks each
ticket type's rows by their best seat: the order in which best available looks at them. A seat's
score (lower is better) is its quality rank × 1000 when given, else its distance to the section's
focal point in thousandths (the focal point as given, else the middle of the front row); scores
are integers, so that every comparison of two blocks is exact.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterator

import msgspec

from inventoryd import limits

SCORE_PER_RANK = 1000


class LayoutSeat(msgspec.Struct, frozen=True, gc=False, omit_defaults=True, forbid_unknown_fields=True):
    id: str
    ticket_type: str | None = None
    # 1 is the best seat; a higher rank is a worse one.
    quality: int | None = None
    x: float | None = None
    y: float | None = None


class LayoutRow(msgspec.Struct, frozen=True, gc=False, omit_defaults=True, forbid_unknown_fields=True):
    id: str
    seats: tuple[LayoutSeat, ...]
    ticket_type: str | None = None


class LayoutSection(msgspec.Struct, frozen=True, gc=False, omit_defaults=True, forbid_unknown_fields=True):
    id: str
    rows: tuple[LayoutRow, ...] = ()
    name: str | None = None
    ticket_type: str | None = None
    # Where the best seats look at (the stage's middle); absent: the middle of the front row.
    focal_x: float | None = None
    focal_y: float | None = None


class LayoutBlock(msgspec.Struct, frozen=True, gc=False, omit_defaults=True, forbid_unknown_fields=True):
    """`rows` rows of `seats_per_row` seats, numbered from `first_row` and `first_seat`: seat x is
    its number, y its row's."""

    section: str
    rows: int
    seats_per_row: int
    ticket_type: str
    first_row: int = 1
    first_seat: int = 1


class SeatLayout(msgspec.Struct, frozen=True, gc=False, omit_defaults=True, forbid_unknown_fields=True):
    sections: tuple[LayoutSection, ...] = ()
    blocks: tuple[LayoutBlock, ...] = ()


def _part_problem(part: str) -> str | None:
    if not 1 <= len(part) <= limits.SEAT_ID_PART_CHARS_MAX or not part.isascii() or not part.isalnum():
        return f"{part!r} is not 1 to {limits.SEAT_ID_PART_CHARS_MAX} letters and digits"
    return None


# One seat as the layout gives it: (section, row, seat id, ticket type, quality, x, y, where in the document).
_Seat = tuple[str, str, str, str | None, int | None, float | None, float | None, str]


def _seats(layout: SeatLayout) -> Iterator[_Seat]:
    for s, section in enumerate(layout.sections):
        for r, row in enumerate(section.rows):
            for p, seat in enumerate(row.seats):
                kind = seat.ticket_type or row.ticket_type or section.ticket_type
                where = f"$.sections[{s}].rows[{r}].seats[{p}]"
                yield section.id, row.id, seat.id, kind, seat.quality, seat.x, seat.y, where
    for b, block in enumerate(layout.blocks):
        for row_number in range(block.first_row, block.first_row + block.rows):
            for seat_number in range(block.first_seat, block.first_seat + block.seats_per_row):
                where = f"$.blocks[{b}]"
                yield block.section, str(row_number), str(seat_number), block.ticket_type, None, seat_number, row_number, where


def seat_types(layout: SeatLayout) -> dict[str, str]:
    """Each seat's ticket type, by the seat's id (of a layout `layout_problem` passed)."""
    return {f"{seat[0]}-{seat[1]}-{seat[2]}": seat[3] or "" for seat in _seats(layout)}


def layout_problem(layout: SeatLayout, seated_types: set[str], all_types: set[str]) -> tuple[str, str] | None:
    """Why `layout` cannot be an event's map (the field at fault, why), or None."""
    if not layout.sections and not layout.blocks:
        return "$", "a seat map has at least one section or block"
    for s, section in enumerate(layout.sections):
        if problem := _part_problem(section.id):
            return f"$.sections[{s}].id", f"a section id: {problem}"
        for r, row in enumerate(section.rows):
            if problem := _part_problem(row.id):
                return f"$.sections[{s}].rows[{r}].id", f"a row id: {problem}"
            if len(row.seats) > limits.SEATMAP_ROW_SEATS_MAX:
                return f"$.sections[{s}].rows[{r}].seats", f"a row has at most {limits.SEATMAP_ROW_SEATS_MAX} seats"
    total = 0
    for b, block in enumerate(layout.blocks):
        if problem := _part_problem(block.section):
            return f"$.blocks[{b}].section", f"a section id: {problem}"
        if block.seats_per_row > limits.SEATMAP_ROW_SEATS_MAX:
            return f"$.blocks[{b}].seats_per_row", f"a row has at most {limits.SEATMAP_ROW_SEATS_MAX} seats"
        total += block.rows * block.seats_per_row
        if total > limits.SEATMAP_SEATS_MAX:
            return f"$.blocks[{b}]", f"a seat map has at most {limits.SEATMAP_SEATS_MAX:,} seats"
    seen: set[str] = set()
    rows: set[tuple[str, str]] = set()
    row_sources: dict[tuple[str, str], str] = {}
    for section_id, row_id, seat_id, kind, _quality, _x, _y, where in _seats(layout):
        if problem := _part_problem(seat_id):
            return f"{where}.id", f"a seat id: {problem}"
        full = f"{section_id}-{row_id}-{seat_id}"
        if full in seen:
            return where, f"seat {full} appears twice"
        seen.add(full)
        if len(seen) > limits.SEATMAP_SEATS_MAX:
            return where, f"a seat map has at most {limits.SEATMAP_SEATS_MAX:,} seats"
        source = where.rpartition(".seats[")[0] if ".seats[" in where else where
        key = (section_id, row_id)
        if row_sources.setdefault(key, source) != source:
            return where, f"row {section_id}-{row_id} is given twice: a row is one list of adjacent seats"
        rows.add(key)
        if kind is None:
            return f"{where}.ticket_type", f"seat {full} has no ticket type (give it on the seat, its row or its section)"
        if kind not in all_types:
            return f"{where}.ticket_type", f"the event has no ticket type {kind!r}"
        if kind not in seated_types:
            return f"{where}.ticket_type", f'ticket type {kind!r} is not seated (create it with "seated": true)'
    return None


class SeatMap:
    """The static map: every seat's id, ticket type, row and score, numbered row by row. Built once
    per layout put; never changed after (the seats' statuses are `seats.SeatState`'s)."""

    __slots__ = (
        "ids",
        "layout",
        "number",
        "prefix",
        "row_best",
        "row_keys",
        "row_kind",
        "row_of",
        "row_start",
        "score",
        "type_of",
        "type_rank",
        "type_rows",
        "x",
        "y",
    )

    def __init__(self, layout: SeatLayout) -> None:
        self.layout = layout
        self.ids: list[str] = []
        self.number: dict[str, int] = {}
        self.type_of: list[str] = []
        self.row_of = array("i")
        self.score = array("q")
        self.x = array("d")
        self.y = array("d")
        # Row r's seats are row_start[r] .. row_start[r + 1] - 1; row_keys[r] is (section, row).
        self.row_start = array("i")
        self.row_keys: list[tuple[str, str]] = []
        rows: dict[tuple[str, str], list[_Seat]] = {}
        for seat in _seats(layout):
            rows.setdefault((seat[0], seat[1]), []).append(seat)
        focal = self._focal_points(layout, rows)
        # A row's place in its section (1 the front): its y on the grid when none is given.
        placed: dict[str, int] = {}
        for key, seats in rows.items():
            row_y = placed[key[0]] = placed.get(key[0], 0) + 1
            row = len(self.row_keys)
            self.row_keys.append(key)
            self.row_start.append(len(self.ids))
            focal_x, focal_y = focal[key[0]]
            for position, (section_id, row_id, seat_id, kind, quality, x, y, _) in enumerate(seats):
                full = f"{section_id}-{row_id}-{seat_id}"
                self.number[full] = len(self.ids)
                self.ids.append(full)
                self.type_of.append(kind or "")
                self.row_of.append(row)
                grid_x = float(position + 1) if x is None else x
                grid_y = float(row_y) if y is None else y
                self.x.append(grid_x)
                self.y.append(grid_y)
                if quality is not None:
                    self.score.append(quality * SCORE_PER_RANK)
                else:
                    self.score.append(round(math.hypot(grid_x - focal_x, grid_y - focal_y) * 1000))
        self.row_start.append(len(self.ids))
        # Running sums of the scores (a block's total is a difference of two), and each row's one
        # ticket type (None for a row of several).
        self.prefix = array("q", [0])
        for score in self.score:
            self.prefix.append(self.prefix[-1] + score)
        self.row_kind: list[str | None] = []
        for row in range(len(self.row_keys)):
            kinds = {self.type_of[seat] for seat in self.row_seats(row)}
            self.row_kind.append(kinds.pop() if len(kinds) == 1 else None)
        # Each ticket type's rows, best first (by the row's best seat of that type, then in order),
        # and their best scores: a block in row k scores at least quantity × row_best[k].
        best: dict[str, dict[int, int]] = {}
        for number, kind in enumerate(self.type_of):
            row = self.row_of[number]
            of_type = best.setdefault(kind, {})
            score = self.score[number]
            if row not in of_type or score < of_type[row]:
                of_type[row] = score
        self.type_rows: dict[str, list[int]] = {}
        self.row_best: dict[str, list[int]] = {}
        self.type_rank: dict[str, dict[int, int]] = {}
        for kind, of_type in best.items():
            order = sorted(of_type, key=lambda row: (of_type[row], row))
            self.type_rows[kind] = order
            self.row_best[kind] = [of_type[row] for row in order]
            self.type_rank[kind] = {row: rank for rank, row in enumerate(order)}

    @staticmethod
    def _focal_points(layout: SeatLayout, rows: dict[tuple[str, str], list[_Seat]]) -> dict[str, tuple[float, float]]:
        """Each section's focal point: as given, else the middle of its front row, a row ahead."""
        given = {section.id: (section.focal_x, section.focal_y) for section in layout.sections}
        spans: dict[str, list[float]] = {}
        index: dict[str, int] = {}
        for (section_id, _), seats in rows.items():
            row_y = index[section_id] = index.get(section_id, 0) + 1
            for position, seat in enumerate(seats):
                x = float(position + 1) if seat[5] is None else seat[5]
                y = float(row_y) if seat[6] is None else seat[6]
                span = spans.setdefault(section_id, [x, x, y])
                span[0], span[1], span[2] = min(span[0], x), max(span[1], x), min(span[2], y)
        focal: dict[str, tuple[float, float]] = {}
        for section_id, (low_x, high_x, front_y) in spans.items():
            focal_x, focal_y = given.get(section_id, (None, None))
            focal[section_id] = (
                (low_x + high_x) / 2 if focal_x is None else focal_x,
                front_y - 1 if focal_y is None else focal_y,
            )
        return focal

    def __len__(self) -> int:
        return len(self.ids)

    def row_seats(self, row: int) -> range:
        return range(self.row_start[row], self.row_start[row + 1])

    def seats_of_type(self, kind: str) -> int:
        return sum(1 for seat_kind in self.type_of if seat_kind == kind)
