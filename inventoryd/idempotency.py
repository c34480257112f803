"""Idempotency-Key handling: a retried request gets the original answer and changes nothing twice.

The answer to a keyed request that changed state is written by the actor in the same transaction as
the change's records, so a key is remembered exactly when its change is durable; that holds across
crashes and restarts. Requests that changed nothing (a refusal such as sold_out, or a failure) are
not remembered: their retry is decided afresh, which is still at most one change.

In memory, per process:
- requests in flight, so a concurrent duplicate waits for the first instead of racing it;
- an LRU of recent answers (IDEMPOTENCY_CACHE_ENTRIES_MAX);
- the keys known to be stored (loaded at start, IDEMPOTENCY_KNOWN_KEYS_MAX), so that a new key,
  the common case, never costs a database read. Past that bound they are dropped and every keyed
  request asks PostgreSQL: slower, never wrong. They are kept as hashes (a collision only costs a
  database read), in generations of IDEMPOTENCY_KNOWN_GENERATION_S: a generation is forgotten once
  the sweep has deleted every answer it can hold, so memory follows the retention period, not the
  process's uptime.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
import structlog

from inventoryd import limits
from inventoryd.actor import IdempotencyClaim
from persistence import limits as persistence_limits
from persistence import store

log = structlog.get_logger("inventoryd.idempotency")


class IdempotencyConflict(Exception):
    """The key was used before for a different request."""


@dataclass(frozen=True, slots=True)
class Replay:
    answer: bytes


def fingerprint(method: str, path: str, canonical_body: bytes) -> bytes:
    digest = hashlib.sha256()
    digest.update(f"{method} {path}\n".encode())
    digest.update(canonical_body)
    return digest.digest()


_NEVER = datetime.min.replace(tzinfo=UTC)


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class _Generation:
    """Hashes of the keys stored from `started_at` until the next generation started."""

    started_at: datetime
    keys: set[int] = field(default_factory=set)


def _count(generations: deque[_Generation]) -> int:
    return sum(len(generation.keys) for generation in generations)


@dataclass(eq=False)
class IdempotencyStore:
    pool: asyncpg.Pool
    # The wall clock the retention is measured by (PostgreSQL's `now()` stamps the answers).
    now: Callable[[], datetime] = _utc_now
    _in_flight: dict[tuple[str, str], asyncio.Future[None]] = field(default_factory=dict)
    _answers: OrderedDict[tuple[str, str], tuple[bytes, bytes]] = field(default_factory=OrderedDict)
    # Oldest first; None once there were more than IDEMPOTENCY_KNOWN_KEYS_MAX.
    _known: deque[_Generation] | None = None
    # The database's clock when the known keys were last read.
    _loaded_through: datetime = _NEVER

    async def load(self) -> None:
        started_at = self.now()
        since = started_at - timedelta(seconds=limits.IDEMPOTENCY_RETENTION_S)
        async with self.pool.acquire() as connection:
            self._loaded_through = await store.database_now(connection)
            keys = await store.idempotency_keys_since(connection, since, limits.IDEMPOTENCY_KNOWN_KEYS_MAX + 1)
        if len(keys) > limits.IDEMPOTENCY_KNOWN_KEYS_MAX:
            self._forget_known()
        else:
            self._known = deque([_Generation(started_at, {hash(scoped) for scoped in keys})])

    async def load_recent(self) -> None:
        """The keys other nodes stored since the last load: a node that takes a shard over must know
        the keys its old owner answered, or a retry there would be carried out again. Read by the
        database's clock, from a DB_TIMEOUT_S before the last read (a transaction is stamped when it
        starts, and commits within that)."""
        if self._known is None:
            return
        since = self._loaded_through - timedelta(seconds=persistence_limits.DB_TIMEOUT_S + 1)
        async with self.pool.acquire() as connection:
            loaded_through = await store.database_now(connection)
            keys = await store.idempotency_keys_since(connection, since, limits.IDEMPOTENCY_KNOWN_KEYS_MAX + 1)
        self._loaded_through = loaded_through
        for scoped in keys:
            self._add_known(scoped)

    def known_keys(self) -> int | None:
        """How many key hashes are in memory (None: too many were, every keyed request asks the database)."""
        return None if self._known is None else _count(self._known)

    def _maybe_stored(self, scoped: tuple[str, str]) -> bool:
        if self._known is None:
            return True
        hashed = hash(scoped)
        return any(hashed in generation.keys for generation in self._known)

    def _add_known(self, scoped: tuple[str, str]) -> None:
        if self._known is None:
            return
        if _count(self._known) >= limits.IDEMPOTENCY_KNOWN_KEYS_MAX:
            self._forget_known()
            return
        self._known[-1].keys.add(hash(scoped))

    def _forget_known(self) -> None:
        self._known = None
        log.warning("idempotency_known_keys_overflow", limit=limits.IDEMPOTENCY_KNOWN_KEYS_MAX)

    async def begin(self, scope: str, key: str, request_fingerprint: bytes) -> IdempotencyClaim | Replay:
        """Claim the key for this request, or return the stored answer to replay.

        Raises IdempotencyConflict if the key was used for a different request. A claim must be
        ended with `finish()`, whatever happens to the request.
        """
        scoped = (scope, key)
        while (pending := self._in_flight.get(scoped)) is not None:
            # The same key is being processed right now: wait for that request, then look again.
            await asyncio.shield(pending)
        stored = self._answers.get(scoped)
        if stored is None and self._maybe_stored(scoped):
            async with self.pool.acquire() as connection:
                stored = await store.find_idempotency(connection, scope, key)
        if stored is not None:
            self._remember(scoped, stored)
            stored_fingerprint, answer = stored
            if stored_fingerprint != request_fingerprint:
                raise IdempotencyConflict(key)
            return Replay(answer)
        self._in_flight[scoped] = asyncio.get_running_loop().create_future()
        return IdempotencyClaim(scope, key, request_fingerprint)

    def finish(self, claim: IdempotencyClaim, stored_answer: bytes | None, *, in_doubt: bool = False) -> None:
        """End a claim. `stored_answer` is what the actor stored under the key (None if nothing);
        `in_doubt` says the request failed in a way that may have stored one all the same (a commit
        whose outcome was unknown), so the next use of the key must ask the database."""
        scoped = (claim.scope, claim.key)
        if stored_answer is not None:
            self._remember(scoped, (claim.fingerprint, stored_answer))
        if stored_answer is not None or in_doubt:
            self._add_known(scoped)
        pending = self._in_flight.pop(scoped, None)
        if pending is not None and not pending.done():
            pending.set_result(None)

    def _remember(self, scoped: tuple[str, str], stored: tuple[bytes, bytes]) -> None:
        self._answers[scoped] = stored
        self._answers.move_to_end(scoped)
        while len(self._answers) > limits.IDEMPOTENCY_CACHE_ENTRIES_MAX:
            self._answers.popitem(last=False)

    async def forget_expired(self) -> int:
        """Delete stored answers past the retention period (a maintenance task calls this), and
        forget the generations of known keys whose answers are all gone with them."""
        now = self.now()
        before = now - timedelta(seconds=limits.IDEMPOTENCY_RETENTION_S)
        async with self.pool.acquire() as connection:
            deleted = await store.forget_idempotency_before(connection, before)
        if self._known is not None:
            # A key's answer is stamped (by PostgreSQL's clock) no later than the key joined its
            # generation here, give or take IDEMPOTENCY_CLOCK_SKEW_S: a generation that ended
            # that long before the cutoff holds only deleted answers. The newest one never goes.
            generations = self._known
            while len(generations) > 1 and generations[1].started_at + timedelta(seconds=limits.IDEMPOTENCY_CLOCK_SKEW_S) <= before:
                generations.popleft()
            if now - generations[-1].started_at >= timedelta(seconds=limits.IDEMPOTENCY_KNOWN_GENERATION_S):
                generations.append(_Generation(now))
        return deleted
