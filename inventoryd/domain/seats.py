"""The seats' state: who holds each seat, which are blocked, and the index that makes best
available cost about one row's work, not the venue's.

Per ticket type, its rows are ranked best first (`SeatMap.type_rows`); a tree over them keeps, for
each row, the lengths of its runs of free seats of that type as a bit mask (bit L: a run of L
seats; bit 63: of 63 or more), and each inner node the OR of its two children. "The first row, in
rank order, with a run that fits n seats and leaves no single seat" is then a walk down the tree
(`_first`), and a pick reads only the rows that walk finds.

Every change goes through the inventory's undoable primitives (`set_index`, `set_item`,
`pop_item`), and the index is recomputed for the rows a change touched, live and on rollback.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Callable, Iterable, MutableSequence
from typing import Any, Literal, Protocol

from inventoryd import limits
from inventoryd.domain.checks import invariant
from inventoryd.domain.seatmap import SeatMap

LONG_RUN_BIT = 63
_NOTHING: frozenset[int] = frozenset()
_RUNS = re.compile(rb"\x01+")
# What a seat shows: free, held, sold, blocked.
SeatStatus = Literal["free", "held", "sold", "blocked"]
STATUS_LETTERS: dict[SeatStatus, str] = {"free": "f", "held": "h", "sold": "s", "blocked": "b"}


class Mutations(Protocol):
    """The inventory's undoable writes (see `state.InventoryState`)."""

    def set_index(self, sequence: MutableSequence[Any], index: int, value: Any) -> None: ...
    def set_item(self, mapping: dict[Any, Any], key: Any, value: Any) -> None: ...
    def pop_item(self, mapping: dict[Any, Any], key: Any) -> None: ...
    def on_rollback(self, undo: Callable[[], None]) -> None: ...


def _bit(length: int) -> int:
    return 1 << min(length, LONG_RUN_BIT)


def runs_from(length: int) -> int:
    """The mask of every run length of at least `length`."""
    if length >= LONG_RUN_BIT:
        return 1 << LONG_RUN_BIT
    return ((1 << (LONG_RUN_BIT + 1)) - 1) & ~((1 << length) - 1)


def orphan_free_runs(quantity: int) -> int:
    """The mask of the run lengths a block of `quantity` fits without leaving a single seat: exactly
    `quantity`, or at least two more (with 63 and beyond in one bit, a superset: rows are checked)."""
    return _bit(quantity) | runs_from(quantity + 2)


# A cached best block of a row: (total score, the row's rank, first seat or MARKER, row version).
Entry = tuple[int, int, int, int]
MARKER = -1


class SeatState:
    __slots__ = ("blocked", "free", "heaps", "holder", "map", "sizes", "taken", "trees", "versions")

    def __init__(self, seat_map: SeatMap) -> None:
        self.map = seat_map
        # Per seat: the id of the reservation holding it (held or confirmed), or None.
        self.holder: list[str | None] = [None] * len(seat_map)
        # Blocked seats and why (house seats, a camera position).
        self.blocked: dict[int, str] = {}
        # Per seat 1 if free (neither held nor blocked): what a pick scans, as bytes.
        self.free = bytearray(b"\x01") * len(seat_map)
        # Per ticket type: its seats held or sold (the type's held + sold, checked after each change).
        self.taken: dict[str, int] = {kind: 0 for kind in seat_map.type_rows}
        self.trees: dict[str, list[int]] = {}
        self.sizes: dict[str, int] = {}
        # Best available's cache (see `_best_block`): per row a version, bumped by every change;
        # per (type, quantity, rule) a heap of each row's best block, made at the first pick.
        self.versions: list[int] = [0] * len(seat_map.row_keys)
        self.heaps: dict[str, dict[tuple[int, bool], list[Entry]]] = {kind: {} for kind in seat_map.type_rows}
        for kind, rows in seat_map.type_rows.items():
            size = 1
            while size < len(rows):
                size *= 2
            self.sizes[kind] = size
            self.trees[kind] = [0] * (2 * size)
        self.reindex(range(len(seat_map.row_keys)))

    # -- reading ---------------------------------------------------------------------------------

    def is_free(self, seat: int) -> bool:
        return self.holder[seat] is None and seat not in self.blocked

    def refresh_free(self) -> None:
        """`free` again from the holders and the blocks (after they were set directly)."""
        blocked = self.blocked
        self.free = bytearray(holder is None and seat not in blocked for seat, holder in enumerate(self.holder))

    def row_mask(self, row: int, kind: str, exclude: frozenset[int] | set[int] = frozenset()) -> int:
        if not exclude and self.map.row_kind[row] == kind:
            seats = self.map.row_seats(row)
            found = 0
            for free_run in _RUNS.finditer(self.free, seats.start, seats.stop):
                found |= _bit(free_run.end() - free_run.start())
            return found
        mask = 0
        run = 0
        holder, blocked, type_of = self.holder, self.blocked, self.map.type_of
        for seat in self.map.row_seats(row):
            if type_of[seat] == kind and holder[seat] is None and seat not in blocked and seat not in exclude:
                run += 1
            elif run:
                mask |= _bit(run)
                run = 0
        if run:
            mask |= _bit(run)
        return mask

    def reindex(self, rows: Iterable[int]) -> None:
        """Recompute the index for `rows` (derived from the holders and the blocks alone): their
        free-run masks, and a new version each, whose marker goes into every best-block heap."""
        type_rank = self.map.type_rank
        for row in rows:
            self.versions[row] += 1
            kind_of_row = self.map.row_kind[row]
            kinds = (kind_of_row,) if kind_of_row is not None else {self.map.type_of[seat] for seat in self.map.row_seats(row)}
            for kind in kinds:
                rank = type_rank[kind][row]
                for (quantity, _), heap in self.heaps[kind].items():
                    heapq.heappush(heap, (quantity * self.map.row_best[kind][rank], rank, MARKER, self.versions[row]))
                tree, size = self.trees[kind], self.sizes[kind]
                index = size + type_rank[kind][row]
                mask = self.row_mask(row, kind)
                if tree[index] == mask:
                    continue
                tree[index] = mask
                index >>= 1
                while index:
                    tree[index] = tree[2 * index] | tree[2 * index + 1]
                    index >>= 1

    def first(self, kind: str, start: int, wanted: int) -> int:
        """The first rank at or after `start` whose row has a run in `wanted`, or -1."""
        tree, size = self.trees[kind], self.sizes[kind]
        if start >= len(self.map.type_rows[kind]):
            return -1
        index = start + size
        while True:
            if tree[index] & wanted:
                while index < size:
                    index = 2 * index if tree[2 * index] & wanted else 2 * index + 1
                return index - size
            while index & 1:  # a right child: its right neighbours are its parent's
                index >>= 1
            if index == 0:
                return -1
            index += 1

    # -- changing (undoable) ---------------------------------------------------------------------

    def _changing(self, mutations: Mutations, seats: Iterable[int]) -> set[int]:
        rows = {self.map.row_of[seat] for seat in seats}
        # Undone after the writes that follow (the undo log runs backwards): the index is then
        # recomputed from the holders and blocks as they were restored.
        mutations.on_rollback(lambda: self.reindex(rows))
        return rows

    def take(self, mutations: Mutations, seats: tuple[int, ...], reservation_id: str) -> None:
        rows = self._changing(mutations, seats)
        type_of = self.map.type_of
        for seat in seats:
            invariant(self.is_free(seat), "seat %s taken by %s while not free", self.map.ids[seat], reservation_id)
            mutations.set_index(self.holder, seat, reservation_id)
            mutations.set_index(self.free, seat, 0)
            mutations.set_item(self.taken, type_of[seat], self.taken[type_of[seat]] + 1)
        self.reindex(rows)

    def release(self, mutations: Mutations, seats: tuple[int, ...], reservation_id: str) -> None:
        rows = self._changing(mutations, seats)
        type_of = self.map.type_of
        for seat in seats:
            invariant(self.holder[seat] == reservation_id, "seat %s released by %s, not its holder", self.map.ids[seat], reservation_id)
            mutations.set_index(self.holder, seat, None)
            mutations.set_index(self.free, seat, seat not in self.blocked)
            mutations.set_item(self.taken, type_of[seat], self.taken[type_of[seat]] - 1)
        self.reindex(rows)

    def block(self, mutations: Mutations, seats: tuple[int, ...], reason: str) -> None:
        rows = self._changing(mutations, seats)
        for seat in seats:
            invariant(self.holder[seat] is None, "seat %s blocked while held", self.map.ids[seat])
            mutations.set_item(self.blocked, seat, reason)
            mutations.set_index(self.free, seat, 0)
        self.reindex(rows)

    def unblock(self, mutations: Mutations, seats: tuple[int, ...]) -> None:
        rows = self._changing(mutations, seats)
        for seat in seats:
            mutations.pop_item(self.blocked, seat)
            mutations.set_index(self.free, seat, self.holder[seat] is None)
        self.reindex(rows)

    # -- best available --------------------------------------------------------------------------

    def _row_block(
        self, row: int, kind: str, quantity: int, orphan_free: bool, exclude: set[int] | frozenset[int]
    ) -> tuple[int, int] | None:
        """The best block of `quantity` adjacent free seats in `row`: (its total score, its first
        seat), the lowest total, the first such; None if the row has none (that fits the rule)."""
        if exclude or self.map.row_kind[row] != kind:
            return self._row_block_by_seat(row, kind, quantity, orphan_free, exclude)
        # A row of one type: its runs of free seats found in C, and in each run the lowest of the
        # blocks' totals (kept per quantity by the map) found in C too.
        seats = self.map.row_seats(row)
        window = self.map.window(quantity)
        best: tuple[int, int] | None = None
        for run in _RUNS.finditer(self.free, seats.start, seats.stop):
            start, stop = run.span()
            last = stop - quantity  # the last seat a block in this run can start at
            if last < start:
                continue
            if not orphan_free:
                spans = [(start, last + 1)]
            elif last == start:
                spans = [(start, start + 1)]  # the block fills the run
            elif last == start + 1:
                continue  # either block leaves one seat
            else:  # not one seat in from either end of the run
                spans = [(start, start + 1), (start + 2, last - 1), (last, last + 1)]
            for low, high in spans:
                if low >= high:
                    continue
                total = min(window[low:high])
                found = (total, window.index(total, low, high))
                if best is None or found < best:
                    best = found
        return best

    def _row_block_by_seat(
        self, row: int, kind: str, quantity: int, orphan_free: bool, exclude: set[int] | frozenset[int]
    ) -> tuple[int, int] | None:
        """`_row_block` seat by seat: for a row of several types, or with seats excluded."""
        score, type_of, holder, blocked = self.map.score, self.map.type_of, self.holder, self.blocked
        best: tuple[int, int] | None = None
        seats = self.map.row_seats(row)
        start = -1
        for seat in range(seats.start, seats.stop + 1):
            if seat < seats.stop and type_of[seat] == kind and holder[seat] is None and seat not in blocked and seat not in exclude:
                if start < 0:
                    start = seat
                continue
            if start < 0:
                continue
            length = seat - start
            if length >= quantity:
                total = sum(score[start : start + quantity])
                for offset in range(length - quantity + 1):
                    if offset:
                        total += score[start + offset + quantity - 1] - score[start + offset - 1]
                    if orphan_free and (offset == 1 or length - quantity - offset == 1):
                        continue
                    if best is None or total < best[0]:
                        best = (total, start + offset)
            start = -1
        return best

    def pick_block(self, kind: str, quantity: int, *, orphan_free: bool, exclude: set[int]) -> tuple[int, ...] | None:
        """The best block of `quantity` adjacent seats of `kind` (that leaves no single seat, if
        `orphan_free`): the lowest total score; ties go to the better-ranked row, then the first
        block in it."""
        if exclude or quantity > limits.SEAT_PICK_CACHED_QUANTITY_MAX:
            return self._scan_block(kind, quantity, orphan_free=orphan_free, exclude=exclude)
        return self._best_block(kind, quantity, orphan_free)

    def _heap(self, kind: str, quantity: int, orphan_free: bool) -> list[Entry]:
        """The (type, quantity, rule)'s heap; made, or remade when stale entries have piled up, as
        a marker per row: a marker's key, quantity × the row's best seat, is at most any block of
        its row's, so it comes to the top before any of them could."""
        heaps = self.heaps[kind]
        heap = heaps.get((quantity, orphan_free))
        rows = self.map.type_rows[kind]
        if heap is None or len(heap) > limits.SEAT_PICK_HEAP_ROWS_RATIO * len(rows) + 64:
            bound, versions = self.map.row_best[kind], self.versions
            heap = [(quantity * bound[rank], rank, MARKER, versions[row]) for rank, row in enumerate(rows)]
            heapq.heapify(heap)
            heaps[quantity, orphan_free] = heap
        return heap

    def _best_block(self, kind: str, quantity: int, orphan_free: bool) -> tuple[int, ...] | None:
        """The heap's top, once it is a block computed on its row as the row is now: entries of an
        older version are dropped, a marker is replaced by its row's best block (if it has one).
        Each change pushes its row's marker, so a row whose blocks got better surfaces again."""
        heap = self._heap(kind, quantity, orphan_free)
        rows, versions = self.map.type_rows[kind], self.versions
        while heap:
            _, rank, start, version = heap[0]
            row = rows[rank]
            if version != versions[row]:
                heapq.heappop(heap)
            elif start != MARKER:
                return tuple(range(start, start + quantity))
            else:
                heapq.heappop(heap)
                found = self._row_block(row, kind, quantity, orphan_free, _NOTHING)
                if found is not None:
                    heapq.heappush(heap, (found[0], rank, found[1], version))
        return None

    def _scan_block(self, kind: str, quantity: int, *, orphan_free: bool, exclude: set[int]) -> tuple[int, ...] | None:
        """`pick_block` without the cache (some seats excluded, or a quantity beyond the cached):
        rows best first through the free-run tree, stopping once no later row can beat the best
        found (a row's block scores at least quantity × its best seat), or after
        SEAT_PICK_ROWS_MAX rows past the first that fits. Excluding seats can make a block leave
        no single seat where the whole run would have (the excluded seat was the one left), so then
        every row with a run long enough is looked at."""
        wanted = orphan_free_runs(quantity) if orphan_free and not exclude else runs_from(quantity)
        bound = self.map.row_best[kind]
        rows = self.map.type_rows[kind]
        best: tuple[int, int] | None = None
        looked = 0
        rank = self.first(kind, 0, wanted)
        while rank >= 0:
            if best is not None and (quantity * bound[rank] >= best[0] or looked >= limits.SEAT_PICK_ROWS_MAX):
                break
            found = self._row_block(rows[rank], kind, quantity, orphan_free, exclude)
            if found is not None and (best is None or found[0] < best[0]):
                best = found
            if best is not None:
                looked += 1
            rank = self.first(kind, rank + 1, wanted)
        return None if best is None else tuple(range(best[1], best[1] + quantity))

    def pick_scattered(self, kind: str, quantity: int, exclude: set[int]) -> tuple[int, ...] | None:
        """`quantity` seats of `kind`, not necessarily together: rows best first, each row's best
        free seats first (used only when a buyer said `adjacent: false` and no block exists)."""
        chosen: list[int] = []
        rows = self.map.type_rows[kind]
        score = self.map.score
        rank = self.first(kind, 0, runs_from(1))
        while rank >= 0 and len(chosen) < quantity:
            free = [
                seat
                for seat in self.map.row_seats(rows[rank])
                if self.map.type_of[seat] == kind and self.is_free(seat) and seat not in exclude
            ]
            free.sort(key=lambda seat: (score[seat], seat))
            chosen.extend(free[: quantity - len(chosen)])
            rank = self.first(kind, rank + 1, runs_from(1))
        return tuple(sorted(chosen)) if len(chosen) == quantity else None

    def pick(self, kind: str, quantity: int, *, adjacent: bool, exclude: set[int] | None = None) -> tuple[int, ...] | None:
        """Best available: a block that leaves no single seat; else one that does; else, if the
        buyer allows it, the best seats apart; else None."""
        excluded = exclude if exclude is not None else set()
        block = self.pick_block(kind, quantity, orphan_free=True, exclude=excluded)
        if block is None:
            block = self.pick_block(kind, quantity, orphan_free=False, exclude=excluded)
        if block is None and not adjacent:
            block = self.pick_scattered(kind, quantity, excluded)
        return block

    # -- copying to a new map --------------------------------------------------------------------

    def carried_to(self, seat_map: SeatMap) -> SeatState:
        """A state on `seat_map` with this one's holders and blocks on the seats both maps have
        (the caller has checked that every held or sold seat is on the new map, of its type)."""
        moved = SeatState(seat_map)
        number = seat_map.number
        for seat, holder in enumerate(self.holder):
            if holder is not None:
                target = number[self.map.ids[seat]]
                moved.holder[target] = holder
                moved.taken[seat_map.type_of[target]] += 1
        for seat, reason in self.blocked.items():
            target_or_none = number.get(self.map.ids[seat])
            if target_or_none is not None:
                moved.blocked[target_or_none] = reason
        moved.refresh_free()
        moved.reindex(range(len(seat_map.row_keys)))
        return moved
