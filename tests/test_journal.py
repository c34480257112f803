"""Group commit across events: the journal's wait for the appends that shared its last commit.

Method: the real app on a real PostgreSQL with `FaultyJournal`, whose gate holds appends at the
door; ten events' actors are made to share one commit, then their next appends are sent back on a
schedule (together, half of them, as a late burst, or one alone) and the commits are counted.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from inventoryd.cluster import new_node_id
from inventoryd.http import keys
from persistence import cluster as cluster_store
from persistence import limits as journal_limits
from persistence.journal import Append, AppendFenced, Journal
from tests.helpers import FaultyJournal, create_event, hold_a_shard, wait_until


async def ten_events_that_shared_a_commit(
    faulty: Any, monkeypatch: pytest.MonkeyPatch, **bounds: float
) -> tuple[FaultyJournal, list[Any], int]:
    """The journal's `bounds` set, then ten events whose actors' appends shared the last commit:
    the writer now waits for ten. Returns the journal, the actors and the commits so far.

    The appends come back on a schedule of sleeps, so this process idles while the writer waits:
    unless `bounds` says otherwise, the wait's end on idling is off (LINGER_BUSY_SHARE_MIN 0), as
    if a busy server were receiving them."""
    bounds = {"LINGER_BUSY_SHARE_MIN": 0.0, **bounds}
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


async def test_an_idle_server_does_not_wait_for_appends_that_are_not_coming(
    faulty: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ten were active, one comes back, and the process has nothing else to do: the buyers are not
    # coming back at once (open loop), so the writer commits the one within a few LINGER_CHECK_S,
    # not after the wait's bounds (30 s here).
    journal, actors, commits = await ten_events_that_shared_a_commit(
        faulty, monkeypatch, JOURNAL_LINGER_S=30.0, JOURNAL_LINGER_MAX_S=30.0, LINGER_BUSY_SHARE_MIN=0.75
    )
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(actors[0].reserve("b", "GA", 1), timeout=5)
    assert asyncio.get_running_loop().time() - started < 1.0
    assert journal.stats.commits == commits + 1


# -- the fence: a journal transaction commits only if its shards are still held at its epochs -----


async def test_a_stale_epoch_commits_nothing(database_url: str, db: Any) -> None:
    # The zombie at database level: node A holds shard 0 at epoch e and appends; B takes the shard
    # over (e + 1) once A's lease ran out; A's next append at e is refused whole (AppendFenced), its
    # owner told, and nothing of it is in the log. B's append at e + 1 commits.
    journal = Journal(database_url)
    fenced: list[set[tuple[int, int]]] = []
    journal.on_fenced = fenced.append
    await journal.start()
    try:
        shard, epoch = await hold_a_shard(database_url)
        await journal.append(Append("evt_fence", 1, ["kind"], [b"{}"], shard, epoch))
        await db.execute("UPDATE shards SET lease_expires_at = now() - interval '1 second' WHERE shard_id = $1", shard)
        taken = await take_over(db, shard)
        assert taken == epoch + 1
        with pytest.raises(AppendFenced):
            await journal.append(Append("evt_fence", 2, ["kind"], [b"{}"], shard, epoch))
        assert fenced == [{(shard, epoch)}]
        assert await db.fetchval("SELECT max(seq) FROM journal WHERE event_id = 'evt_fence'") == 1
        await journal.append(Append("evt_fence", 2, ["kind"], [b"{}"], shard, taken))
        assert await db.fetchval("SELECT epoch FROM journal WHERE event_id = 'evt_fence' AND seq = 2") == taken
    finally:
        await journal.close()


async def test_a_fenced_append_does_not_cost_its_neighbours(database_url: str, db: Any) -> None:
    # Two events' appends share a transaction; one's shard was lost: it fails alone, the other
    # commits in the next transaction.
    journal = Journal(database_url)
    await journal.start()
    try:
        lost_shard, lost_epoch = await hold_a_shard(database_url, shard=1)
        kept_shard, kept_epoch = await hold_a_shard(database_url, shard=2)
        await db.execute("UPDATE shards SET lease_expires_at = now() - interval '1 second' WHERE shard_id = $1", lost_shard)
        await take_over(db, lost_shard)
        lost = Append("evt_lost", 1, ["kind"], [b"{}"], lost_shard, lost_epoch)
        kept = Append("evt_kept", 1, ["kind"], [b"{}"], kept_shard, kept_epoch)
        outcomes = await asyncio.gather(journal.append(lost), journal.append(kept), return_exceptions=True)
        assert isinstance(outcomes[0], AppendFenced) and outcomes[1] is None
        assert await db.fetchval("SELECT count(*) FROM journal WHERE event_id = 'evt_kept'") == 1
        assert await db.fetchval("SELECT count(*) FROM journal WHERE event_id = 'evt_lost'") == 0
    finally:
        await journal.close()


async def take_over(db: Any, shard: int) -> int:
    """Another node takes the (expired) shard, as Membership does: its new epoch."""
    node_id = new_node_id()
    await cluster_store.register_node(db, node_id, "http://127.0.0.1:10", None, 16)
    [(_, epoch)] = await cluster_store.take(db, node_id, [shard], 3600.0)
    return epoch
