"""The idempotency store's memory of which keys are stored: it follows the retention period, and it
never forgets a key whose answer is still in the database (that retry would change state twice).

Method: the store on the test's PostgreSQL with its clock moved by hand, hour by hour over three
retention periods, answers written as the journal writes them but stamped with a PostgreSQL clock up
to IDEMPOTENCY_CLOCK_SKEW_S off; the maintenance sweep each hour; after each sweep, every key whose
answer is still stored must be replayed (the answers' LRU is switched off, so that the replay comes
from the database and only a known key gets there).
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from inventoryd import limits
from inventoryd.actor import IdempotencyClaim
from inventoryd.idempotency import IdempotencyStore, Replay
from persistence import store

HOUR = timedelta(hours=1)
FINGERPRINT = b"\x01" * 32


@pytest.fixture
async def pool(database_url: str) -> Any:
    pool = await store.create_pool(database_url, max_size=2)
    yield pool
    await pool.close()


async def store_answer(pool: Any, idempotency: IdempotencyStore, key: str, stamped_at: datetime) -> None:
    """A keyed request that changed state: the answer is written with its change, then the claim ends."""
    claim = await idempotency.begin("svc", key, FINGERPRINT)
    assert isinstance(claim, IdempotencyClaim)
    await pool.execute(
        "INSERT INTO idempotency_keys (scope, key, fingerprint, response, created_at) VALUES ($1, $2, $3, $4, $5)",
        "svc", key, FINGERPRINT, b"answer", stamped_at,
    )
    idempotency.finish(claim, b"answer")


async def test_known_keys_follow_the_retention_and_never_miss_a_stored_answer(
    pool: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "IDEMPOTENCY_CACHE_ENTRIES_MAX", 0)
    now = datetime(2027, 1, 1, tzinfo=UTC)
    idempotency = IdempotencyStore(pool, now=lambda: now)
    await idempotency.load()
    skews = itertools.cycle([-1.0, -0.5, 0.0, 0.5, 1.0])  # PostgreSQL's clock against ours, in skew bounds
    keys = []
    most_known = 0
    hours = 3 * limits.IDEMPOTENCY_RETENTION_S // 3600
    for hour in range(hours):
        for index in range(2):
            key = f"k{hour}-{index}"
            await store_answer(pool, idempotency, key, now + next(skews) * timedelta(seconds=limits.IDEMPOTENCY_CLOCK_SKEW_S))
            keys.append(key)
        now += HOUR
        await idempotency.forget_expired()
        known = idempotency.known_keys()
        assert known is not None
        most_known = max(most_known, known)
        stored = {row["key"] for row in await pool.fetch("SELECT key FROM idempotency_keys")}
        assert known >= len(stored)
        for key in stored:
            assert isinstance(await idempotency.begin("svc", key, FINGERPRINT), Replay), (hour, key)
    # Memory holds about a retention period's keys (plus a generation and the skew), not all of them.
    window_hours = (limits.IDEMPOTENCY_RETENTION_S + limits.IDEMPOTENCY_KNOWN_GENERATION_S + limits.IDEMPOTENCY_CLOCK_SKEW_S) // 3600
    assert most_known <= 2 * (window_hours + 2) < len(keys)


async def test_too_many_known_keys_are_dropped_and_every_keyed_request_asks_the_database(
    pool: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "IDEMPOTENCY_CACHE_ENTRIES_MAX", 0)
    monkeypatch.setattr(limits, "IDEMPOTENCY_KNOWN_KEYS_MAX", 3)
    idempotency = IdempotencyStore(pool)
    await idempotency.load()
    for index in range(4):
        await store_answer(pool, idempotency, f"k{index}", datetime.now(UTC))
    assert idempotency.known_keys() is None
    for index in range(4):
        assert isinstance(await idempotency.begin("svc", f"k{index}", FINGERPRINT), Replay)
    claim = await idempotency.begin("svc", "new", FINGERPRINT)
    assert isinstance(claim, IdempotencyClaim)
    idempotency.finish(claim, None)
