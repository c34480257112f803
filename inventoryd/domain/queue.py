"""The waiting room's state, beside the inventory's: its entries, the line they wait in, and the
rules both phases read (the shuffle's order, a position, when the next admission is due).

The line is `line[head:]` in admission order: the shuffled pre-queue, then later arrivals in the
order they came. Entries leave it from the front (admitted, in order) or anywhere (they left);
those that left are skipped, and a position counts only the waiting entries ahead.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, Literal

import msgspec

from inventoryd import limits
from inventoryd.domain.records import QueueConfig

QueueStatus = Literal["waiting", "admitted", "expired", "left"]
_MASK: Final = (1 << 64) - 1


class QueueEntry(msgspec.Struct, frozen=True, gc=False):
    id: str
    event_id: str
    user_id: str
    status: QueueStatus
    joined_at: datetime
    admitted_at: datetime | None = None
    expires_at: datetime | None = None
    # Admitted, and the buyer's reservation was since confirmed or cancelled: the slot is free.
    finished: bool = False
    # Set by the reader while it waits after the shuffle (1: next); never stored.
    position: int | None = None


@dataclass(slots=True)
class QueueState:
    entries: dict[str, QueueEntry] = field(default_factory=dict)
    # Each user's latest entry.
    of_user: dict[str, str] = field(default_factory=dict)
    # Joined before the shuffle, in the order they came (their order does not count).
    pre: list[str] = field(default_factory=list)
    line: list[str] = field(default_factory=list)
    head: int = 0
    # Each entry's index in `line`, and the indexes of those that left it, ascending.
    index: dict[str, int] = field(default_factory=dict)
    gone: list[int] = field(default_factory=list)
    shuffled: bool = False
    joined: int = 0
    admitted: int = 0
    # Admitted, neither expired nor finished nor left: what `max_active` bounds.
    active: int = 0
    # The admitted entries in the order they were let in, and how many of them have expired.
    admitted_order: list[str] = field(default_factory=list)
    expired_head: int = 0
    # The admission clock (see `admissions_due`), and when the last wave was let in.
    last_wave_at: datetime | None = None
    wave_at: datetime | None = None

    def waiting_ahead(self, entry_id: str) -> int | None:
        """The entry's place in line (1: next), or None before the shuffle or if it is not waiting."""
        at = self.index.get(entry_id)
        entry = self.entries.get(entry_id)
        if at is None or entry is None or entry.status != "waiting":
            return None
        gone = bisect.bisect_left(self.gone, at) - bisect.bisect_left(self.gone, self.head)
        return at - self.head + 1 - gone

    def next_waiting(self, count: int) -> list[str]:
        """The first `count` waiting entries of the line, in order."""
        found: list[str] = []
        at = self.head
        while at < len(self.line) and len(found) < count:
            entry_id = self.line[at]
            if self.entries[entry_id].status == "waiting":
                found.append(entry_id)
            at += 1
        return found

    def waiting(self) -> int:
        """Entries waiting in line (after the shuffle). Admissions take the first waiting entries
        and the head then moves past every entry that no longer waits, so after the head only
        those that left do not wait."""
        return len(self.line) - self.head - (len(self.gone) - bisect.bisect_left(self.gone, self.head))


def shuffled(entry_ids: list[str], seed: int) -> list[str]:
    """`entry_ids` in a uniformly random order drawn from `seed`: Fisher–Yates on SplitMix64, written
    out here so that the order never depends on a library's version (replay must draw the same)."""
    order = list(entry_ids)
    state = seed & _MASK
    for last in range(len(order) - 1, 0, -1):
        state = (state + 0x9E3779B97F4A7C15) & _MASK
        mixed = state
        mixed = ((mixed ^ (mixed >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        mixed = ((mixed ^ (mixed >> 27)) * 0x94D049BB133111EB) & _MASK
        mixed ^= mixed >> 31
        # Lemire's reduction to [0, last]: unbiased to within 2^-64 × (last + 1).
        pick = (mixed * (last + 1)) >> 64
        order[last], order[pick] = order[pick], order[last]
    return order


def interval(config: QueueConfig) -> timedelta:
    """The time between two admissions, in whole microseconds (rounded up): the clock's arithmetic
    is then exact, so the time `next_due` gives is one at which an admission is due, at any rate."""
    return timedelta(microseconds=math.ceil(60_000_000 / config.admit_per_minute))


def admissions_due(config: QueueConfig, state: QueueState, sale_starts_at: datetime, now: datetime) -> tuple[int, datetime]:
    """How many may be let in at `now`, and where the admission clock then stands. One at the sale's
    start, then `admit_per_minute` evenly: the clock advances by one interval per admission, so the
    rate holds exactly; but no more than one wave's worth is ever owed (a line that ran dry, a timer
    that fired late), so the outflow stays a rate, never a burst."""
    step = interval(config)
    wave_max = max(1, math.ceil(timedelta(seconds=limits.QUEUE_WAVE_INTERVAL_S) / step))
    clock = state.last_wave_at
    if clock is None:
        return (1, now) if now >= sale_starts_at else (0, sale_starts_at)
    due = (now - clock) // step if now > clock else 0
    if due <= 0:
        return 0, clock
    if due > wave_max:
        return wave_max, now
    return due, clock + due * step


def next_due(config: QueueConfig, state: QueueState, sale_starts_at: datetime) -> datetime | None:
    """When the waiting room next needs its actor: the shuffle, the next admission (while anyone
    waits and a slot is free), or the next admission's end."""
    if not state.shuffled:
        return sale_starts_at
    times: list[datetime] = []
    if state.waiting() > 0 and (config.max_active is None or state.active < config.max_active):
        if state.last_wave_at is None:
            times.append(sale_starts_at)
        else:
            after_clock = state.last_wave_at + interval(config)
            after_wave = (state.wave_at or after_clock) + timedelta(seconds=limits.QUEUE_WAVE_INTERVAL_S)
            times.append(max(after_clock, after_wave))
    for entry_id in state.admitted_order[state.expired_head :]:
        entry = state.entries[entry_id]
        if entry.status == "admitted" and entry.expires_at is not None:
            times.append(entry.expires_at)
            break
    return min(times) if times else None
