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
from collections.abc import Iterator, Sequence

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
            if not row.seats:
                return f"$.sections[{s}].rows[{r}].seats", "a row has at least one seat"
            if len(row.seats) > limits.SEATMAP_ROW_SEATS_MAX:
                return f"$.sections[{s}].rows[{r}].seats", f"a row has at most {limits.SEATMAP_ROW_SEATS_MAX} seats"
    total = 0
    for b, block in enumerate(layout.blocks):
        if problem := _part_problem(block.section):
            return f"$.blocks[{b}].section", f"a section id: {problem}"
        if block.rows < 1 or block.seats_per_row < 1:
            return f"$.blocks[{b}]", "a block has at least one row of at least one seat"
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


class _Row:
    """One row as the layout gives it: its seats' labels (or, for a block's row, the first seat's
    number: the labels are the numbers from it), ticket types, qualities and coordinates."""

    __slots__ = ("count", "first", "kinds", "labels", "quality", "row_id", "section", "xs", "ys")

    def __init__(self, section: str, row_id: str, count: int) -> None:
        self.section, self.row_id, self.count = section, row_id, count
        self.labels: list[str] | None = None
        self.first = 0
        self.kinds: list[str] = []
        self.quality: list[int | None] | None = None
        self.xs: list[float | None] | None = None
        self.ys: list[float | None] | None = None


def _rows(layout: SeatLayout) -> list[_Row]:
    rows: list[_Row] = []
    for section in layout.sections:
        for given in section.rows:
            row = _Row(section.id, given.id, len(given.seats))
            row.labels = [seat.id for seat in given.seats]
            row.kinds = [seat.ticket_type or given.ticket_type or section.ticket_type or "" for seat in given.seats]
            row.quality = [seat.quality for seat in given.seats]
            row.xs = [seat.x for seat in given.seats]
            row.ys = [seat.y for seat in given.seats]
            rows.append(row)
    for block in layout.blocks:
        for number in range(block.first_row, block.first_row + block.rows):
            row = _Row(block.section, str(number), block.seats_per_row)
            row.first = block.first_seat
            row.kinds = [block.ticket_type] * block.seats_per_row
            row.xs = [float(block.first_seat + place) for place in range(block.seats_per_row)]
            row.ys = [float(number)] * block.seats_per_row
            rows.append(row)
    return rows


class SeatIds(Sequence[str]):
    """Each seat's id (`A-12-5`), made when asked: a stadium's 50,000 strings are not kept."""

    __slots__ = ("_map",)

    def __init__(self, seat_map: SeatMap) -> None:
        self._map = seat_map

    def __len__(self) -> int:
        return len(self._map)

    def __getitem__(self, seat: int) -> str:  # type: ignore[override]  # no slices
        seat_map = self._map
        row = seat_map.row_of[seat]
        section, row_id = seat_map.row_keys[row]
        return f"{section}-{row_id}-{seat_map.label(seat)}"

    def __iter__(self) -> Iterator[str]:
        return (self[seat] for seat in range(len(self._map)))


class SeatNumbers:
    """Each seat's number by its id, found from the id's parts (a row's index, then the seat's
    place in it: its number less the first's in a block's row, a lookup in a row given seat by seat)."""

    __slots__ = ("_map",)

    def __init__(self, seat_map: SeatMap) -> None:
        self._map = seat_map

    def get(self, seat_id: str) -> int | None:
        section, _, rest = seat_id.partition("-")
        row_id, _, label = rest.partition("-")
        seat_map = self._map
        row = seat_map.row_index.get((section, row_id))
        if row is None or not label:
            return None
        places = seat_map.row_places[row]
        if places is not None:
            place = places.get(label)
        elif label.isascii() and label.isdigit() and str(int(label)) == label:
            place = int(label) - seat_map.row_first[row]
        else:
            return None
        start = seat_map.row_start[row]
        if place is None or not 0 <= place < seat_map.row_start[row + 1] - start:
            return None
        return start + place

    def __getitem__(self, seat_id: str) -> int:
        seat = self.get(seat_id)
        if seat is None:
            raise KeyError(seat_id)
        return seat

    def __contains__(self, seat_id: object) -> bool:
        return isinstance(seat_id, str) and self.get(seat_id) is not None


class SeatMap:
    """The static map: every seat's ticket type, row and score, numbered row by row (ids are made
    from the rows when asked). Built once per layout put; never changed after (the seats'
    statuses are `seats.SeatState`'s)."""

    __slots__ = (
        "ids",
        "layout",
        "number",
        "prefix",
        "row_best",
        "row_first",
        "row_index",
        "row_keys",
        "row_kind",
        "row_labels",
        "row_of",
        "row_places",
        "row_start",
        "score",
        "type_of",
        "type_rank",
        "type_rows",
        "windows",
        "x",
        "y",
    )

    def __init__(self, layout: SeatLayout) -> None:
        self.layout = layout
        self.ids = SeatIds(self)
        self.number = SeatNumbers(self)
        self.type_of: list[str] = []
        self.row_of = array("i")
        self.score = array("q")
        self.x = array("d")
        self.y = array("d")
        # Row r's seats are row_start[r] .. row_start[r + 1] - 1; row_keys[r] is (section, row).
        self.row_start = array("i")
        self.row_keys: list[tuple[str, str]] = []
        self.row_index: dict[tuple[str, str], int] = {}
        # A row given seat by seat: its labels, and each label's place; a block's: its first number.
        self.row_labels: list[list[str] | None] = []
        self.row_places: list[dict[str, int] | None] = []
        self.row_first = array("i")
        rows = _rows(layout)
        focal = self._focal_points(layout, rows)
        # A row's place in its section (1 the front): its y on the grid when none is given.
        placed: dict[str, int] = {}
        for row_number, row in enumerate(rows):
            row_y = placed[row.section] = placed.get(row.section, 0) + 1
            key = (row.section, row.row_id)
            self.row_index[key] = row_number
            self.row_keys.append(key)
            self.row_start.append(len(self.type_of))
            self.row_labels.append(row.labels)
            self.row_places.append({label: place for place, label in enumerate(row.labels)} if row.labels is not None else None)
            self.row_first.append(row.first)
            self.type_of.extend(row.kinds)
            self.row_of.extend([row_number] * row.count)
            focal_x, focal_y = focal[row.section]
            xs = row.xs or [None] * row.count
            ys = row.ys or [None] * row.count
            quality = row.quality or [None] * row.count
            for place in range(row.count):
                x, y, rank = xs[place], ys[place], quality[place]
                grid_x = float(place + 1) if x is None else x
                grid_y = float(row_y) if y is None else y
                self.x.append(grid_x)
                self.y.append(grid_y)
                if rank is not None:
                    self.score.append(rank * SCORE_PER_RANK)
                else:
                    self.score.append(round(math.hypot(grid_x - focal_x, grid_y - focal_y) * 1000))
        self.row_start.append(len(self.type_of))
        self._derive()

    def _derive(self) -> None:
        """What picks read, derived from the seats: the scores' running sums, each row's one type,
        and each ticket type's rows best first."""
        # Running sums of the scores (a block's total is a difference of two), and each row's one
        # ticket type (None for a row of several).
        self.prefix = array("q", [0])
        for score in self.score:
            self.prefix.append(self.prefix[-1] + score)
        self.windows: dict[int, array[int]] = {}
        self.row_kind: list[str | None] = []
        for row_number in range(len(self.row_keys)):
            kinds = set(self.type_of[self.row_start[row_number] : self.row_start[row_number + 1]])
            self.row_kind.append(kinds.pop() if len(kinds) == 1 else None)
        # Each ticket type's rows, best first (by the row's best seat of that type, then in order),
        # and their best scores: a block in row k scores at least quantity × row_best[k].
        best: dict[str, dict[int, int]] = {}
        for number, kind in enumerate(self.type_of):
            row_number = self.row_of[number]
            of_type = best.setdefault(kind, {})
            score = self.score[number]
            if row_number not in of_type or score < of_type[row_number]:
                of_type[row_number] = score
        self.type_rows: dict[str, list[int]] = {}
        self.row_best: dict[str, list[int]] = {}
        self.type_rank: dict[str, dict[int, int]] = {}
        for kind, of_type in best.items():
            order = sorted(of_type, key=lambda row: (of_type[row], row))
            self.type_rows[kind] = order
            self.row_best[kind] = [of_type[row] for row in order]
            self.type_rank[kind] = {row: rank for rank, row in enumerate(order)}

    def window(self, quantity: int) -> array[int]:
        """Per seat, the total score of the `quantity` seats from it on (in seat order; a block
        never crosses a row, so the totals that would are never read): made when first asked."""
        window = self.windows.get(quantity)
        if window is None:
            prefix = self.prefix
            window = self.windows[quantity] = array("q", (prefix[seat + quantity] - prefix[seat] for seat in range(len(prefix) - quantity)))
        return window

    def label(self, seat: int) -> str:
        """The seat's own part of its id (its label in its row)."""
        row = self.row_of[seat]
        labels = self.row_labels[row]
        place = seat - self.row_start[row]
        return labels[place] if labels is not None else str(self.row_first[row] + place)

    @staticmethod
    def _focal_points(layout: SeatLayout, rows: list[_Row]) -> dict[str, tuple[float, float]]:
        """Each section's focal point: as given, else the middle of its front row, a row ahead."""
        given = {section.id: (section.focal_x, section.focal_y) for section in layout.sections}
        spans: dict[str, list[float]] = {}
        index: dict[str, int] = {}
        for row in rows:
            row_y = index[row.section] = index.get(row.section, 0) + 1
            xs = [float(place + 1) if x is None else x for place, x in enumerate(row.xs or [None] * row.count)]
            ys = [float(row_y) if y is None else y for y in (row.ys or [None] * row.count)]
            span = spans.setdefault(row.section, [xs[0], xs[0], ys[0]])
            span[0], span[1], span[2] = min(span[0], *xs), max(span[1], *xs), min(span[2], *ys)
        focal: dict[str, tuple[float, float]] = {}
        for section_id, (low_x, high_x, front_y) in spans.items():
            focal_x, focal_y = given.get(section_id, (None, None))
            focal[section_id] = (
                (low_x + high_x) / 2 if focal_x is None else focal_x,
                front_y - 1 if focal_y is None else focal_y,
            )
        return focal

    def __len__(self) -> int:
        return len(self.type_of)

    def row_seats(self, row: int) -> range:
        return range(self.row_start[row], self.row_start[row + 1])

    def seats_of_type(self, kind: str) -> int:
        return self.type_of.count(kind)
