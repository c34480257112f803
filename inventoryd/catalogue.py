"""The catalogue in memory: every event's listing fields, indexed, kept current from committed
changes only, so that listing and search cost about a page of work and no database query.

Two sources feed it, both committed state: this node's actors, right after each commit that wrote a
catalogue row (`apply`), and other nodes' commits, heard through PostgreSQL's LISTEN/NOTIFY (the
journal's transaction notifies the events it wrote rows for; PostgreSQL delivers that only once it
commits) and then read from the `events` table (`CatalogueFeed`). Each row carries the log position
of the change that made it: a row older than the one held is ignored, so the two sources may race.
A lost notification connection makes the feed say so (`current` false, a lag) until it has read
the whole table again.

Filters and their meaning:
- `q`: every word of it begins a word of the event's name, venue or description, compared folded
  (case, and accents: "Zurich" finds "Zürich"; see `fold`), through an index of words.
- `category`, `city`, `venue`: equal to the event's, folded alike.
- `from`, `to`: `from <= starts_at < to`.
- `min_price`, `max_price`: some ticket type's price lies within them.
Order: `starts_at` (then event id), `-starts_at` (the reverse), `name` (by code point, then event id);
pages continue after a cursor's (key, event id), so an event added before it never shifts them.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import re
import time
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import asyncpg
import msgspec
import structlog

from inventoryd import limits
from inventoryd.domain import InvariantViolation, invariant
from inventoryd.tasks import TaskSupervisor
from persistence import catalogue as store
from persistence.errors import DATABASE_AWAY
from persistence.journal import CATALOGUE_NOTIFY_ALL, CatalogueRow

log = structlog.get_logger("inventoryd.catalogue")

Sort = Literal["starts_at", "-starts_at", "name"]
SORTS: tuple[Sort, ...] = ("starts_at", "-starts_at", "name")
# A place in an order: the sort column's value, then the event id.
Key = tuple[datetime | str, str]

_WORD = re.compile(r"\w+")


def fold(text: str) -> str:
    """`text` as compared: case folded, accents taken off (compatibility decomposition, without
    its combining marks)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(character for character in decomposed if not unicodedata.combining(character)).casefold()


def words(text: str) -> list[str]:
    """The words of `text`, folded, each cut to CATALOGUE_WORD_CHARS_MAX characters."""
    return [word[: limits.CATALOGUE_WORD_CHARS_MAX] for word in _WORD.findall(fold(text))]


class Entry(msgspec.Struct, frozen=True, gc=False):
    """One event as the catalogue lists it."""

    event_id: str
    name: str
    starts_at: datetime
    status: str
    prices: tuple[int, ...]
    seq: int
    # Folded, for the filters that compare them.
    category: str | None
    city: str | None
    venue: str | None
    words: tuple[str, ...]

    @classmethod
    def of(cls, row: CatalogueRow) -> Entry:
        found: dict[str, None] = {}
        for text in (row.name, row.venue, row.description):
            for word in words(text or ""):
                if len(found) >= limits.CATALOGUE_WORDS_PER_EVENT_MAX:
                    break
                found[word] = None
        return cls(
            event_id=row.event_id,
            name=row.name,
            starts_at=row.starts_at,
            status=row.status,
            prices=tuple(row.prices),
            seq=row.catalogue_seq,
            category=fold(row.category) if row.category is not None else None,
            city=fold(row.city) if row.city is not None else None,
            venue=fold(row.venue) if row.venue is not None else None,
            words=tuple(found),
        )

    def key(self, sort: Sort) -> Key:
        return (self.name, self.event_id) if sort == "name" else (self.starts_at, self.event_id)


@dataclass(frozen=True, slots=True)
class Query:
    text: str | None = None
    category: str | None = None
    city: str | None = None
    venue: str | None = None
    starts_from: datetime | None = None
    starts_to: datetime | None = None
    min_price: int | None = None
    max_price: int | None = None
    sort: Sort = "starts_at"

    def check(self) -> None:
        """QueryRefused if the catalogue will not run this query."""
        if self.text is not None:
            wanted = words(self.text)
            if not wanted:
                raise QueryRefused("q", "q has no word to search for")
            if len(wanted) > limits.CATALOGUE_QUERY_WORDS_MAX:
                raise QueryRefused("q", f"q has more than {limits.CATALOGUE_QUERY_WORDS_MAX} words")
        if self.min_price is not None and self.max_price is not None and self.min_price > self.max_price:
            raise QueryRefused("min_price", "min_price is above max_price")

    def narrows(self) -> bool:
        """Does anything but the dates narrow the listing?"""
        return any(value is not None for value in (self.text, self.category, self.city, self.venue, self.min_price, self.max_price))


class QueryRefused(ValueError):
    """A query the catalogue will not run: `field` is the parameter at fault."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail)
        self.field = field


class Catalogue:
    """The index. Not thread-safe; one loop owns it. Every change bumps `version`, which ends the
    reuse of the filtered orders computed before it."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        # Each order, ascending, as keys.
        self._orders: dict[Literal["starts_at", "name"], list[Key]] = {"starts_at": [], "name": []}
        # Folded word -> events; the words in order, for prefixes.
        self._by_word: dict[str, set[str]] = {}
        self._vocabulary: list[str] = []
        self._by_field: dict[str, dict[str, set[str]]] = {"category": {}, "city": {}, "venue": {}}
        self.version = 0
        # Filtered orders: (query, version) -> keys; oldest first.
        self._cached: dict[Query, list[Key]] = {}
        self._cached_version = 0
        self._cached_keys = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, event_id: str) -> bool:
        return event_id in self._entries

    def entry(self, event_id: str) -> Entry | None:
        return self._entries.get(event_id)

    # -- changes --------------------------------------------------------------------------------

    def apply(self, rows: Sequence[CatalogueRow]) -> int:
        """Take `rows` (committed), each unless a newer row of its event is held; how many were taken."""
        taken = 0
        for row in rows:
            held = self._entries.get(row.event_id)
            if held is not None and held.seq >= row.catalogue_seq:
                continue
            entry = Entry.of(row)
            if held is not None:
                self._remove(held)
            self._add(entry)
            taken += 1
        if taken:
            self.version += 1
        return taken

    def _add(self, entry: Entry) -> None:
        self._entries[entry.event_id] = entry
        for sort, order in self._orders.items():
            bisect.insort(order, entry.key(sort))
        for word in entry.words:
            events = self._by_word.get(word)
            if events is None:
                events = self._by_word[word] = set()
                bisect.insort(self._vocabulary, word)
            events.add(entry.event_id)
        for name, index in self._by_field.items():
            value: str | None = getattr(entry, name)
            if value is not None:
                index.setdefault(value, set()).add(entry.event_id)

    def _remove(self, entry: Entry) -> None:
        del self._entries[entry.event_id]
        for sort, order in self._orders.items():
            key = entry.key(sort)
            at = bisect.bisect_left(order, key)
            invariant(at < len(order) and order[at] == key, "catalogue: %s missing from the %s order", entry.event_id, sort)
            del order[at]
        for word in entry.words:
            events = self._by_word[word]
            events.discard(entry.event_id)
            if not events:
                del self._by_word[word]
                del self._vocabulary[bisect.bisect_left(self._vocabulary, word)]
        for name, index in self._by_field.items():
            value: str | None = getattr(entry, name)
            if value is not None:
                index[value].discard(entry.event_id)
                if not index[value]:
                    del index[value]

    def check(self) -> None:
        """The invariants between the entries and their indexes (after a full load, and in tests)."""
        for sort, order in self._orders.items():
            invariant(
                len(order) == len(self._entries), "catalogue: the %s order has %s keys for %s events", sort, len(order), len(self._entries)
            )
            invariant(all(order[i] < order[i + 1] for i in range(len(order) - 1)), "catalogue: the %s order is out of order", sort)
        invariant(self._vocabulary == sorted(self._by_word), "catalogue: the vocabulary and the word index differ")

    # -- reading --------------------------------------------------------------------------------

    def keys(self, query: Query) -> tuple[Sequence[Key], int, int]:
        """The events matching `query` as keys ascending in its order, and the range of them that
        matches (a filtered list is all of it; an unfiltered order is sliced by its dates)."""
        column: Literal["starts_at", "name"] = "name" if query.sort == "name" else "starts_at"
        if not query.narrows() and (column == "starts_at" or (query.starts_from is None and query.starts_to is None)):
            order = self._orders[column]
            if column == "name":
                return order, 0, len(order)
            low = 0 if query.starts_from is None else bisect.bisect_left(order, (query.starts_from, ""))
            high = len(order) if query.starts_to is None else bisect.bisect_left(order, (query.starts_to, ""))
            return order, low, max(low, high)
        found = self._filtered(query, column)
        return found, 0, len(found)

    def page(self, query: Query, after: Key | None) -> Iterator[str]:
        """The ids of the events matching `query`, in its order, after `after` (a cursor's key)."""
        keys, low, high = self.keys(query)
        if query.sort == "-starts_at":
            start = high if after is None else min(high, bisect.bisect_left(keys, after, low, high))
            for at in range(start - 1, low - 1, -1):
                yield keys[at][1]
        else:
            start = low if after is None else max(low, bisect.bisect_right(keys, after, low, high))
            for at in range(start, high):
                yield keys[at][1]

    def _filtered(self, query: Query, column: Literal["starts_at", "name"]) -> list[Key]:
        cache_key = dataclasses.replace(query, sort=column)
        if self._cached_version != self.version:
            self._cached.clear()
            self._cached_version = self.version
            self._cached_keys = 0
        found = self._cached.get(cache_key)
        if found is not None:
            return found
        candidates = self._candidates(query)
        keys = sorted(self._entries[event_id].key(column) for event_id in candidates)
        if len(keys) <= limits.CATALOGUE_CACHED_KEYS_MAX:
            while self._cached and (
                len(self._cached) >= limits.CATALOGUE_CACHED_LISTINGS_MAX
                or self._cached_keys + len(keys) > limits.CATALOGUE_CACHED_KEYS_MAX
            ):
                oldest = next(iter(self._cached))
                self._cached_keys -= len(self._cached.pop(oldest))
            self._cached[cache_key] = keys
            self._cached_keys += len(keys)
        return keys

    def _candidates(self, query: Query) -> Iterator[str]:
        """The ids matching every filter: the smallest index set first, the others tested."""
        sets: list[set[str]] = []
        if query.text is not None:
            query.check()
            sets.extend(self._prefixed(word) for word in words(query.text))
        for name, value in (("category", query.category), ("city", query.city), ("venue", query.venue)):
            if value is not None:
                sets.append(self._by_field[name].get(fold(value), set()))
        sets.sort(key=len)
        pool: Iterator[str] = iter(sets[0]) if sets else iter(self._entries)
        for event_id in pool:
            if all(event_id in other for other in sets[1:]) and self._within(self._entries[event_id], query):
                yield event_id

    def _prefixed(self, prefix: str) -> set[str]:
        """The events with a word that begins with `prefix`."""
        vocabulary = self._vocabulary
        at = bisect.bisect_left(vocabulary, prefix)
        if at < len(vocabulary) and vocabulary[at] == prefix and (at + 1 == len(vocabulary) or not vocabulary[at + 1].startswith(prefix)):
            return self._by_word[prefix]
        found: set[str] = set()
        while at < len(vocabulary) and vocabulary[at].startswith(prefix):
            found |= self._by_word[vocabulary[at]]
            at += 1
        return found

    @staticmethod
    def _within(entry: Entry, query: Query) -> bool:
        if query.starts_from is not None and entry.starts_at < query.starts_from:
            return False
        if query.starts_to is not None and entry.starts_at >= query.starts_to:
            return False
        if query.min_price is None and query.max_price is None:
            return True
        low = query.min_price if query.min_price is not None else 0
        high = query.max_price if query.max_price is not None else float("inf")
        return any(low <= price <= high for price in entry.prices)


# -- kept current from the database -----------------------------------------------------------------


@dataclass(eq=False)
class CatalogueFeed:
    """Reads the whole catalogue, then keeps it current from other nodes' notifications; says
    whether it is current, and since when it is not."""

    dsn: str
    pool: asyncpg.Pool
    catalogue: Catalogue = field(default_factory=Catalogue)
    # The loop's clock when the catalogue stopped being known current (None: it is).
    stale_since: float | None = field(default_factory=time.monotonic)
    loaded: bool = False
    resyncs: int = 0
    # Told of every change the feed applied (rows taken), for tests and metrics.
    on_applied: Callable[[int], None] | None = None
    _connection: asyncpg.Connection | None = None
    _pending: set[str] = field(default_factory=set)
    _pending_all: bool = False
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _lost: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: TaskSupervisor = field(default_factory=lambda: TaskSupervisor("catalogue"))

    @property
    def current(self) -> bool:
        return self.stale_since is None

    def lag_s(self) -> float:
        """0 while current; otherwise how long it has not been known current."""
        return 0.0 if self.stale_since is None else time.monotonic() - self.stale_since

    def start(self) -> None:
        self._tasks.spawn(self._run(), name="catalogue-feed")

    async def close(self) -> None:
        await self._tasks.close()
        await self._disconnect()

    async def _run(self) -> None:
        while True:
            try:
                await self._connect_and_load()
                await self._follow()
            except DATABASE_AWAY as error:
                log.warning("catalogue_feed_lost", error=repr(error), events=len(self.catalogue))
            if self.stale_since is None:
                self.stale_since = time.monotonic()
            await self._disconnect()
            await asyncio.sleep(limits.CATALOGUE_RECONNECT_S)

    async def _connect_and_load(self) -> None:
        """Listen first, then read everything: a change committed in between is read twice, never missed."""
        self._lost.clear()
        self._connection = connection = await store.listening_connection(self.dsn, self._notified, self._terminated)
        self._pending.clear()
        self._pending_all = False
        rows = await store.catalogue_rows(connection)
        taken = self.catalogue.apply(rows)
        self.catalogue.check()
        self.loaded = True
        was_stale_s = self.lag_s()
        self.stale_since = None
        self.resyncs += 1
        log.info("catalogue_loaded", events=len(self.catalogue), taken=taken, stale_s=round(was_stale_s, 3))

    async def _follow(self) -> None:
        """Read what the notifications name, until the connection is lost or fails its check."""
        connection = self._connection
        if connection is None:
            raise InvariantViolation("catalogue: following without a connection")
        while not self._lost.is_set():
            try:
                async with asyncio.timeout(limits.CATALOGUE_CHECK_S):
                    await self._wake.wait()
            except TimeoutError:
                async with asyncio.timeout(limits.CATALOGUE_CHECK_S):
                    await connection.fetchval("SELECT 1")
                continue
            self._wake.clear()
            if self._lost.is_set():
                break
            everything, self._pending_all = self._pending_all, False
            wanted, self._pending = self._pending, set()
            rows = await store.catalogue_rows(connection, None if everything else sorted(wanted))
            taken = self.catalogue.apply(rows)
            if self.on_applied is not None:
                self.on_applied(taken)
        raise ConnectionResetError("the catalogue's notification connection was closed")

    def _notified(self, payload: str) -> None:
        if payload == CATALOGUE_NOTIFY_ALL:
            self._pending_all = True
        else:
            self._pending.update(payload.split(","))
        self._wake.set()

    def _terminated(self) -> None:
        self._lost.set()
        self._wake.set()

    async def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            connection.terminate()
