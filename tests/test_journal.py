"""Group commit across events: the journal's wait for the appends that shared its last commit.

Method: the real app on a real PostgreSQL with `FaultyJournal`, whose gate holds appends at the
door; ten events' actors are made to share one commit, then their next appends are sent back on a
schedule (together, half of them, as a late burst, or one alone) and the commits are counted.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from inventoryd.http import keys
from persistence import limits as journal_limits
from tests.helpers import FaultyJournal, create_event, wait_until


async def ten_events_that_shared_a_commit(
    faulty: Any, monkeypatch: pytest.MonkeyPatch, **bounds: float
) -> tuple[FaultyJournal, list[Any], int]:
    """The journal's `bounds` set, then ten events whose actors' appends shared the last commit:
    the writer now waits for ten. Returns the journal, the actors and the commits so far."""
    for name, value in bounds.items():
        monkeypatch.setattr(journal_limits, name, value)
    client, journal = faulty
    actors = []
    for _ in range(10):
        event = await create_event(client, ticket_types=[{"code": "GA", "name": "GA", "price": 1, "capacity": 10}])
        actors.append(client.app[keys.REGISTRY].get(event["id"]))
    journal.gate = asyncio.Event()
    first = [asyncio.create_task(actor.reserve("a", "GA", 1)) for actor in actors]
    await wait_until(lambda: journal.waiting_at_gate == 10)
    commits = journal.stats.commits
    journal.gate.set()
    await asyncio.gather(*first)
    assert journal.stats.commits == commits + 1
    return journal, actors, journal.stats.commits


async def test_the_journal_waits_for_many_events_to_share_one_commit(
    faulty: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Group commit across events: ten actors' appends shared the last commit, so the writer waits
    # for ten before the next one, and their next appends share one transaction again.
    journal, actors, commits = await ten_events_that_shared_a_commit(faulty, monkeypatch, JOURNAL_LINGER_S=30.0)
    second = [asyncio.create_task(actors[0].reserve("b", "GA", 1))]
    await wait_until(lambda: journal._wanted == 5)  # lingering for half of them, with one pending
    second += [asyncio.create_task(actor.reserve("b", "GA", 1)) for actor in actors[1:]]
    await asyncio.wait_for(asyncio.gather(*second), timeout=5)
    assert journal.stats.commits == commits + 1
    waits = faulty[0].app[keys.METRICS].journal_wait_seconds
    assert sum(waits.counts) == 1 and 0 < waits.sum < 5  # the wait is in the metrics


async def test_once_half_are_back_a_pause_ends_the_wait(faulty: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Ten were active; six come back, four do not (their buyers think): the six share one commit,
    # made once no append came for JOURNAL_LINGER_QUIET_S, not at the end of the wait (30 s here).
    journal, actors, commits = await ten_events_that_shared_a_commit(faulty, monkeypatch, JOURNAL_LINGER_S=30.0)
    back = [asyncio.create_task(actor.reserve("b", "GA", 1)) for actor in actors[:6]]
    await asyncio.wait_for(asyncio.gather(*back), timeout=10)
    assert journal.stats.commits == commits + 1


async def test_the_journal_waits_longer_for_appends_that_come_back_as_one_late_burst(
    faulty: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ten were active; one append comes back within JOURNAL_LINGER_S, the other nine later, one
    # after another (a busy server answers a whole commit's buyers before it reads their next
    # requests). Fewer than half had come, so the writer waited on for them (JOURNAL_LINGER_MAX_S),
    # and once half had come, while more kept coming: all ten share one commit.
    journal, actors, commits = await ten_events_that_shared_a_commit(
        faulty, monkeypatch, JOURNAL_LINGER_S=0.2, JOURNAL_LINGER_MAX_S=30.0, JOURNAL_LINGER_QUIET_S=1.0
    )
    back = [asyncio.create_task(actors[0].reserve("b", "GA", 1))]
    await wait_until(lambda: journal._wanted == 5)  # lingering for half of them, with one pending
    await asyncio.sleep(0.5)  # past JOURNAL_LINGER_S
    back += [asyncio.create_task(actor.reserve("b", "GA", 1)) for actor in actors[1:6]]
    await wait_until(lambda: journal._wanted == 10)  # half are back: waiting while more come
    for actor in actors[6:]:
        await asyncio.sleep(0.1)
        back.append(asyncio.create_task(actor.reserve("b", "GA", 1)))
    await asyncio.wait_for(asyncio.gather(*back), timeout=10)
    assert journal.stats.commits == commits + 1


async def test_the_journal_waits_at_most_its_bound_for_buyers_who_do_not_come_back(
    faulty: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ten were active and one comes back: the writer waits for half of them up to
    # JOURNAL_LINGER_MAX_S, then commits the one on its own.
    journal, actors, commits = await ten_events_that_shared_a_commit(
        faulty, monkeypatch, JOURNAL_LINGER_S=0.1, JOURNAL_LINGER_MAX_S=0.3
    )
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(actors[0].reserve("b", "GA", 1), timeout=5)
    assert asyncio.get_running_loop().time() - started >= 0.3
    assert journal.stats.commits == commits + 1
