"""The catalogue in memory: the same answers as a query of PostgreSQL, only committed changes, every
node current within its bound.

Method: (1) a seeded random catalogue written to the real `events` table and read into a
`Catalogue` as the service reads it; random queries (every filter, each sort, random page sizes)
walked page by page through cursors, with events added and changed between pages (in the table
and through `apply`, as the two sources do), each page compared with the same page asked of
PostgreSQL by a reference query written here (the filters' meaning in SQL: folded text compared
with translate() and lower(), words by regexp_split_to_array, prices by unnest). CATALOGUE_CASES
sets the number of queries (CI: 150; try 5000). (2) Over HTTP: accent- and case-insensitive word
search, the price filter following a ticket type's change, refusals that name their parameter, a
batch whose append failed never listed. (3) Two real `inventoryd serve` processes: an event created
through one is listed by the other within the bound, and after the notification connection is cut
(pg_terminate_backend), the other says it is not current until it has read the table again, and
then lists what changed meanwhile.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from inventoryd import limits
from inventoryd.catalogue import SORTS, Catalogue, Key, Query, words
from inventoryd.http import keys
from persistence.catalogue import LISTENER_APPLICATION_NAME, catalogue_rows
from persistence.journal import CatalogueRow, connect
from tests.helpers import ADMIN, FaultyJournal, cluster_event_body, cluster_of, create_event, metric, wait_node_ready

CASES = int(os.environ.get("CATALOGUE_CASES", "150"))
# What a test machine under CI load is given on top of the bound before the test fails; the
# harness reports the measured delay (BENCHMARKS.md).
FRESH_SLACK_S = 1.0

# Words with accents and in both cases, which the folded comparisons must treat alike.
_VOCABULARY = [
    "Zürich",
    "zurich",
    "ROCK",
    "rockabilly",
    "Café",
    "cafe",
    "Jazz",
    "jazzy",
    "Ópera",
    "opera",
    "night",
    "Nightclub",
    "Beethoven",
    "élan",
    "Elan",
    "12",
    "a",
]
_PLACES = ["Zürich", "zurich", "Bern", "BERN", "Genève", "geneve", None]
_CATEGORIES = ["Music", "music", "Theatre", "Sport", None]
_BASE = datetime(2027, 3, 1, tzinfo=UTC)
# What SQL needs to fold the test's text as `inventoryd.catalogue.fold` does.
_FOLD = "lower(translate({0}, 'ÜüÉéÓóèÈ', 'UuEeOoeE'))"
_COLUMNS = "event_id, name, description, venue, city, category, starts_at, organizer_id, status, created_at, prices, catalogue_seq"


def _random_row(rng: random.Random, event_id: str, seq: int) -> CatalogueRow:
    def text(count: int) -> str:
        return rng.choice([" ", "-", ", "]).join(rng.choice(_VOCABULARY) for _ in range(count))

    return CatalogueRow(
        event_id=event_id,
        name=text(rng.randint(1, 3)),
        description=text(rng.randint(0, 12)) or None,
        venue=rng.choice(_PLACES),
        city=rng.choice(_PLACES),
        category=rng.choice(_CATEGORIES),
        # Few distinct times: ties are ordered by the event id.
        starts_at=_BASE + timedelta(days=rng.randint(0, 20)),
        organizer_id=None,
        status=rng.choice(["on_sale", "on_sale", "cancelled"]),
        created_at=_BASE,
        prices=tuple(sorted({rng.choice([0, 500, 1000, 2500, 9000]) for _ in range(rng.randint(1, 3))})),
        catalogue_seq=seq,
    )


def _random_query(rng: random.Random) -> Query:
    def maybe(values: list[Any]) -> Any:
        return rng.choice(values) if rng.random() < 0.3 else None

    low = maybe([0, 500, 1000])
    return Query(
        text=maybe(["zur", "ROCK", "café", "opéra night", "jaz", "e", "beethoven élan", "12"]),
        category=maybe(["MUSIC", "theatre", "sport", "none"]),
        city=maybe(["zurich", "ZÜRICH", "geneve", "bern"]),
        venue=maybe(["Zürich", "genève"]),
        starts_from=maybe([_BASE + timedelta(days=day) for day in (0, 3, 10)]),
        starts_to=maybe([_BASE + timedelta(days=day) for day in (5, 15, 30)]),
        min_price=low,
        max_price=maybe([x for x in (500, 2500, 9000) if low is None or x >= low]),
        sort=rng.choice(SORTS),
    )


async def _write_rows(connection: asyncpg.Connection, rows: list[CatalogueRow]) -> None:
    await connection.executemany(
        f"INSERT INTO events ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        " ON CONFLICT (event_id) DO UPDATE SET name = EXCLUDED.name, description = EXCLUDED.description,"
        " venue = EXCLUDED.venue, city = EXCLUDED.city, category = EXCLUDED.category, starts_at = EXCLUDED.starts_at,"
        " status = EXCLUDED.status, prices = EXCLUDED.prices, catalogue_seq = EXCLUDED.catalogue_seq",
        [tuple(getattr(row, name.strip()) for name in _COLUMNS.split(",")) for row in rows],
    )


async def _reference_page(connection: asyncpg.Connection, query: Query, after: Key | None, limit: int) -> list[str]:
    """The page as PostgreSQL answers it: the filters' meaning, written in SQL."""
    conditions: list[str] = []
    arguments: list[Any] = []

    def argument(value: Any) -> str:
        arguments.append(value)
        return f"${len(arguments)}"

    if query.text is not None:
        searched = _FOLD.format("coalesce(name, '') || ' ' || coalesce(venue, '') || ' ' || coalesce(description, '')")
        for word in words(query.text):
            conditions.append(
                f"EXISTS (SELECT 1 FROM unnest(regexp_split_to_array({searched}, '[^a-z0-9_]+')) AS w (word)"
                f" WHERE w.word <> '' AND left(w.word, {limits.CATALOGUE_WORD_CHARS_MAX}) LIKE {argument(word)} || '%')"
            )
    for name in ("category", "city", "venue"):
        value = getattr(query, name)
        if value is not None:
            conditions.append(f"{_FOLD.format(name)} = {_FOLD.format(argument(value) + '::text')}")
    if query.starts_from is not None:
        conditions.append(f"starts_at >= {argument(query.starts_from)}")
    if query.starts_to is not None:
        conditions.append(f"starts_at < {argument(query.starts_to)}")
    if query.min_price is not None or query.max_price is not None:
        low, high = argument(query.min_price or 0), argument(query.max_price if query.max_price is not None else 2**62)
        conditions.append(f"EXISTS (SELECT 1 FROM unnest(prices) AS p (price) WHERE p.price BETWEEN {low} AND {high})")
    column = "name" if query.sort == "name" else "starts_at"
    direction, comparison = ("DESC", "<") if query.sort == "-starts_at" else ("ASC", ">")
    collated = f'{column} COLLATE "C"' if column == "name" else column
    if after is not None:
        key = argument(after[0])
        conditions.append(f'({collated}, event_id COLLATE "C") {comparison} ({key}, {argument(after[1])} COLLATE "C")')
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    sql = f'SELECT event_id FROM events {where} ORDER BY {collated} {direction}, event_id COLLATE "C" {direction} LIMIT {argument(limit)}'
    return [row[0] for row in await connection.fetch(sql, *arguments)]


async def test_the_catalogue_answers_as_postgresql_does(db: asyncpg.Connection) -> None:
    rng = random.Random(20261201)
    numbers = itertools.count(1)
    rows = [_random_row(rng, f"evt_{next(numbers):05d}", 1) for _ in range(300)]
    await _write_rows(db, rows)
    catalogue = Catalogue()
    catalogue.apply(await catalogue_rows(db))
    catalogue.check()
    assert len(catalogue) == 300
    for case in range(CASES):
        query = _random_query(rng)
        after: Key | None = None
        seen: list[str] = []
        for _ in range(400):  # pages; every walk ends well before
            limit = rng.randint(1, 25)
            expected = await _reference_page(db, query, after, limit)
            got = list(itertools.islice(catalogue.page(query, after), limit))
            assert got == expected, (case, query, after, seen[-3:])
            if len(got) < limit:
                break
            seen += got
            entry = catalogue.entry(got[-1])
            assert entry is not None
            after = entry.key(query.sort)
            if rng.random() < 0.3:
                # Between pages: a new event, and a change of an old one (a newer row), in the
                # table and through apply; and a stale row, which apply must ignore.
                changed = rng.choice(rows)
                fresh = [_random_row(rng, f"evt_{next(numbers):05d}", 1), _random_row(rng, changed.event_id, changed.catalogue_seq + 1)]
                await _write_rows(db, fresh)
                assert catalogue.apply(fresh) == 2
                assert catalogue.apply([_random_row(rng, changed.event_id, changed.catalogue_seq)]) == 0
                rows = [row for row in rows if row.event_id != changed.event_id] + fresh
        else:
            raise AssertionError(f"the walk of {query} did not end")
    catalogue.check()


async def test_a_word_longer_than_the_bound_is_found_by_its_beginning(db: asyncpg.Connection) -> None:
    long_word = "x" * (limits.CATALOGUE_WORD_CHARS_MAX + 20)
    many = " ".join(f"w{index}" for index in range(limits.CATALOGUE_WORDS_PER_EVENT_MAX + 50))
    row = CatalogueRow("evt_long", long_word, many, None, None, None, _BASE, None, "on_sale", _BASE, (100,), 1)
    catalogue = Catalogue()
    catalogue.apply([row])
    entry = catalogue.entry("evt_long")
    assert entry is not None and len(entry.words) == limits.CATALOGUE_WORDS_PER_EVENT_MAX
    assert list(catalogue.page(Query(text=long_word + "yyy"), None)) == ["evt_long"]  # compared by its first characters
    assert list(catalogue.page(Query(text="w0 w10"), None)) == ["evt_long"]
    last = f"w{limits.CATALOGUE_WORDS_PER_EVENT_MAX + 10}"
    assert list(catalogue.page(Query(text=last), None)) == []  # past the bound: not indexed


async def _names(client: Any, **params: str) -> list[str]:
    response = await client.get("/v1/events", params=params)
    assert response.status == 200, await response.text()
    return [item["name"] for item in (await response.json())["items"]]


async def test_search_finds_words_whatever_their_case_and_accents(client: Any) -> None:
    await create_event(client, name="Opéra de Zürich", city="Zürich", venue="Opernhaus", starts_at="2027-03-01T19:00:00Z")
    await create_event(client, name="Rockabilly night", city="Bern", category="Music", starts_at="2027-03-02T19:00:00Z")
    assert await _names(client, q="opera zurich") == ["Opéra de Zürich"]
    assert await _names(client, q="ROCK") == ["Rockabilly night"]  # a word's beginning
    assert await _names(client, q="abilly") == []  # not the middle of one
    assert await _names(client, city="zurich") == ["Opéra de Zürich"]
    assert await _names(client, category="MUSIC", sort="name") == ["Rockabilly night"]
    for params, field in (
        ({"q": "!!"}, "q"),
        ({"q": " ".join("abcdefghij")}, "q"),
        ({"min_price": "9", "max_price": "1"}, "min_price"),
        ({"max_price": "-1"}, "max_price"),
    ):
        response = await client.get("/v1/events", params=params)
        assert response.status == 400, params
        assert (await response.json())["field"] == field


async def test_the_price_filter_follows_a_ticket_type_change(client: Any) -> None:
    event = await create_event(client, name="Priced")
    price = event["ticket_types"][0]["price"]
    assert await _names(client, min_price=str(price), max_price=str(price)) == ["Priced"]
    changed = await client.patch(f"/v1/events/{event['id']}/ticket-types/GA", json={"price": price + 1000})
    assert changed.status == 200, await changed.text()
    assert await _names(client, min_price=str(price), max_price=str(price)) == []
    assert await _names(client, min_price=str(price + 1000)) == ["Priced"]
    added = await client.post(f"/v1/events/{event['id']}/ticket-types", json={"code": "CHEAP", "name": "Cheap", "price": 1, "capacity": 5})
    assert added.status == 201, await added.text()
    assert await _names(client, max_price="1") == ["Priced"]


async def test_a_batch_that_was_not_saved_is_never_listed(faulty: tuple[Any, FaultyJournal]) -> None:
    client, journal = faulty
    await create_event(client, name="Kept")
    journal.faults.append("fail")
    response = await client.post("/v1/events", json={**_event_json("Lost")})
    assert response.status == 503, await response.text()
    assert await _names(client) == ["Kept"]
    assert len(client.app[keys.CATALOGUE].catalogue) == 1


def _event_json(name: str) -> dict[str, Any]:
    return {**cluster_event_body(name), "starts_at": "2027-04-01T19:00:00Z"}


async def test_a_change_on_one_node_is_listed_on_the_other_within_the_bound(database_url: str, tmp_path: Path) -> None:
    async with aiohttp.ClientSession(headers=ADMIN) as session:
        with cluster_of(database_url, tmp_path) as cluster:
            first, second = cluster.start("first"), cluster.start("second")
            await wait_node_ready(session, first)
            await wait_node_ready(session, second)
            delays = []
            for index in range(5):
                async with session.post(f"{first.base}/v1/events", json=_event_json(f"fresh {index}")) as response:
                    assert response.status == 201, await response.text()
                    event_id = (await response.json())["id"]
                delays.append(await _listed_after(session, second, event_id))
            assert max(delays) <= limits.CATALOGUE_FRESH_S + FRESH_SLACK_S, delays
            # The same state has the same ETag whichever node answers (a CDN may ask any).
            tags = set()
            for node in (first, second):
                async with session.get(f"{node.base}/v1/events?limit=200") as response:
                    tags.add(response.headers["ETag"])
            assert len(tags) == 1, tags
            # The notification connection is cut: the node says so until it has read the table
            # again, and then lists what changed meanwhile.
            reads_before = await metric(session, second, "inventoryd_catalogue_reads_total")
            await _cut_listeners(database_url)
            stale = await _readiness_until(session, second, lambda body: not body["catalogue"]["current"])
            assert stale["catalogue"]["lag_s"] >= 0 and stale["detail"]
            async with session.post(f"{first.base}/v1/events", json=_event_json("while cut")) as response:
                assert response.status == 201
                cut_id = (await response.json())["id"]
            await _readiness_until(session, second, lambda body: body["catalogue"]["current"])
            assert await metric(session, second, "inventoryd_catalogue_reads_total") > reads_before
            await _listed_after(session, second, cut_id)


async def _listed_after(session: aiohttp.ClientSession, node: Any, event_id: str) -> float:
    """Seconds until `node` lists `event_id` (polled; at most the bound and its slack, else fail)."""
    started = time.perf_counter()
    while time.perf_counter() - started < limits.CATALOGUE_FRESH_S + FRESH_SLACK_S:
        async with session.get(f"{node.base}/v1/events?limit=200") as response:
            if event_id in {item["id"] for item in (await response.json())["items"]}:
                return time.perf_counter() - started
        await asyncio.sleep(0.005)
    raise AssertionError(f"{event_id} was not listed by {node.name}")


async def _cut_listeners(database_url: str) -> None:
    connection = await connect(database_url)
    try:
        cut = await connection.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()",
            LISTENER_APPLICATION_NAME,
        )
    finally:
        await connection.close()
    assert cut == 2  # one per node


async def _readiness_until(session: aiohttp.ClientSession, node: Any, condition: Any) -> dict[str, Any]:
    deadline = time.perf_counter() + 10
    while time.perf_counter() < deadline:
        async with session.get(f"{node.base}/readyz") as response:
            body: dict[str, Any] = await response.json()
        if response.status == 200 and condition(body):
            return body
        await asyncio.sleep(0.002)
    raise AssertionError(f"readiness never met the condition: {body}")


async def test_public_reads_carry_an_etag_and_answer_304_while_nothing_changed(client: Any) -> None:
    event = await create_event(client, name="Cached")
    paths = ["/v1/events?limit=5", f"/v1/events/{event['id']}", f"/v1/events/{event['id']}/availability"]
    tags = {}
    for path in paths:
        first = await client.get(path)
        assert first.status == 200
        assert first.headers["Cache-Control"] == f"public, max-age={limits.PUBLIC_READ_MAX_AGE_S}"
        tags[path] = first.headers["ETag"]
        again = await client.get(path, headers={"If-None-Match": f'W/"other", {tags[path]}'})
        assert again.status == 304 and await again.read() == b"" and again.headers["ETag"] == tags[path]
        assert (await client.get(path, headers={"If-None-Match": "*"})).status == 304
        assert (await client.get(path, headers={"If-None-Match": '"stale"'})).status == 200
    reserved = await client.post(f"/v1/events/{event['id']}/reservations", json={"ticket_type": "GA", "quantity": 1, "user_id": "u1"})
    assert reserved.status == 201
    for path in paths:  # the availability moved: every one of them changed
        changed = await client.get(path, headers={"If-None-Match": tags[path]})
        assert changed.status == 200 and changed.headers["ETag"] != tags[path]
    # A listing answered again as it was changes with the catalogue too: a new event is in it.
    await create_event(client, name="Added later")
    assert "Added later" in await _names(client, limit="5")
    # Anything else is never kept by a cache: a reservation, and every change.
    assert (await client.get(f"/v1/reservations/{(await reserved.json())['id']}")).headers["Cache-Control"] == "no-store"
    assert reserved.headers["Cache-Control"] == "no-store"
