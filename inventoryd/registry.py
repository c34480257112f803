"""The registry: owns every event actor, rebuilds them from the log, and restarts those that crash.

Each actor runs under a supervisor task that the registry owns (never a fire-and-forget task). When
an actor's batch fails in a way that leaves its state in doubt, or its state machine hits a bug, the
supervisor answers what was waiting with a retryable error, rebuilds the inventory from the log, and
starts it again; an actor that crashes more than ACTOR_RESTARTS_MAX times within
ACTOR_RESTART_WINDOW_S stays down (its requests get 503) instead of looping, and the others run on.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import asyncpg
import structlog

from inventoryd import domain, limits
from inventoryd.actor import ActorRestartRequired, Clock, EventActor, IdempotencyClaim, Outcome, system_clock
from inventoryd.cluster import Membership, ShardOwner
from inventoryd.domain import EventDefinition, EventSummary, Inventory, Record, invariant
from inventoryd.errors import NotOwner, Unavailable
from inventoryd.tasks import TaskSupervisor
from persistence import store
from persistence.errors import DATABASE_AWAY
from persistence.journal import CatalogueRow, Journal

log = structlog.get_logger("inventoryd.registry")
T = TypeVar("T")


async def _let_requests_in(since: float) -> float:
    """Between two events' rebuilds: give the loop to requests if the rebuild has held it for
    RECOVERY_SLICE_S; returns when the current slice began."""
    now = time.perf_counter()
    if now - since < limits.RECOVERY_SLICE_S:
        return since
    await asyncio.sleep(0)
    return time.perf_counter()

_RECORD_DECODER = domain.RECORD_DECODER


async def _drained(actors: list[EventActor], timeout_s: float) -> bool:
    """Stop the actors taking new requests, and wait (at most `timeout_s`) until what they hold is
    decided, committed and answered; False if some are still busy then."""
    for actor in actors:
        actor.stop_accepting()
    deadline = asyncio.get_running_loop().time() + timeout_s
    # Polled: an actor goes idle between two of its batches, with nothing to await for it.
    while not all(actor.idle for actor in actors):
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


def new_event_id() -> str:
    # 80 random bits, lowercase base32: opaque, URL-safe, alphanumeric (reservation ids embed it).
    return domain.EVENT_PREFIX + base64.b32encode(os.urandom(10)).decode().lower()


def decode_log(rows: store.LogRows) -> list[tuple[int, Record]]:
    return [(seq, _RECORD_DECODER.decode(body)) for seq, body in rows]


def _replay(event_id: str, rows: store.LogRows, snapshot: tuple[int, bytes] | None) -> Inventory:
    return Inventory.replay(event_id, decode_log(rows), snapshot=snapshot[1] if snapshot else None)


@dataclass(slots=True)
class RegistryStats:
    actors_restarted: int = 0
    actors_failed: int = 0
    # Start-up: until ready (the events are known), and until every actor is rebuilt.
    ready_seconds: float = 0.0
    recovery_seconds: float = 0.0
    recovered_records: int = 0
    snapshots_written: int = 0
    snapshots_failed: int = 0


@dataclass(eq=False)
class Registry:
    journal: Journal
    pool: asyncpg.Pool
    # This node's leases: only events of shards it holds are served here (the others are forwarded).
    cluster: Membership
    clock: Clock = system_clock
    on_batch: Callable[[int, int], None] | None = None
    # Told of the catalogue rows of every committed batch that wrote some (the catalogue in memory).
    on_catalogue: Callable[[Sequence[CatalogueRow]], object] | None = None
    # Told (event id, last seq) of every committed batch, and of every actor rebuilt here (the
    # outbox delivers what the events served here commit).
    on_committed: Callable[[str, int], None] | None = None
    # Told how long the buyers of each committed admission wave had waited.
    on_admitted: Callable[[list[float]], None] | None = None
    stats: RegistryStats = field(default_factory=RegistryStats)
    # Every task the registry starts: actors' supervisors, on-demand rebuilds, snapshot writes.
    tasks: TaskSupervisor = field(default_factory=lambda: TaskSupervisor("registry"))
    _actors: dict[str, EventActor] = field(default_factory=dict)
    # Each actor's supervising task (owned by `tasks`), to stop one actor alone.
    _supervisors: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    ready: bool = False
    # Set once, when recovery has rebuilt every actor.
    recovered: asyncio.Event = field(default_factory=asyncio.Event)
    # Events in the log whose actors start-up has not rebuilt yet; those being rebuilt because a
    # request asked (their requests wait for the task); those whose log failed recovery (and why).
    _cold: set[str] = field(default_factory=set)
    # The events of each held shard here (rebuilt or cold), to drop them with their shard.
    _by_shard: dict[int, set[str]] = field(default_factory=dict)
    _on_demand: dict[str, asyncio.Task[EventActor | None]] = field(default_factory=dict)
    _failed: dict[str, str] = field(default_factory=dict)
    # What the cluster tells of shards taken, lost and handed over (the registry, unless the app
    # puts something around it: the idempotency store reloads its keys on a takeover).
    shard_owner: ShardOwner | None = None
    # Set when a shutdown begins: /readyz answers 503 so that traffic goes elsewhere.
    draining: bool = False
    recovery_error: str | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Join the cluster and find the events of the shards this node takes: then the registry
        is ready. Then rebuild their actors in the background, a batch of events per consistent read
        of their latest snapshots and the records after them (about RECOVERY_BATCH_BYTES a read); an
        event that a request asks for meanwhile is rebuilt at once, by itself (see `actor`). So the
        time to ready does not grow with the state, and a hot event is served again in the time its
        own state takes to load. Shards taken later are rebuilt the same way (`shards_acquired`).

        While the database is unreachable it waits and tries again (the service stays not ready).
        An event whose log breaks an invariant is not served (its requests get 503) and readiness
        turns 503, loudly: serving from a broken log would be wrong.
        """
        started = time.perf_counter()
        await self._retrying("recovery_waiting", functools.partial(self.cluster.start, self.shard_owner or self))
        event_ids = sorted(self._cold)
        self.stats.ready_seconds = time.perf_counter() - started
        self.ready = True
        self.tasks.spawn(self._watch_wall_clock(), name="wall-clock-watch")
        log.info(
            "ready", events=len(event_ids), shards=len(self.cluster.held()), duration_s=round(self.stats.ready_seconds, 3)
        )
        try:
            await self._rebuild_all(event_ids)
        except Exception as error:  # a bug: say so loudly, as a broken log would be
            self.recovery_error = repr(error)
            log.critical("recovery_failed", error=repr(error))
            raise
        self.stats.recovery_seconds = time.perf_counter() - started
        self.recovered.set()
        log.info(
            "recovery_done",
            events=len(self._actors),
            records=self.stats.recovered_records,
            duration_s=round(self.stats.recovery_seconds, 3),
        )
        snapshots = await self.snapshot_long_tails()
        if snapshots:
            log.info("snapshots_after_recovery", events=snapshots)

    async def _watch_wall_clock(self) -> None:
        """Hold timers run on the loop's clock; holds fall due by the wall clock. When the wall
        clock leaps ahead of the loop's (a machine resumed from suspend, a clock stepped forward,
        a test's clock moved), every actor looks for due holds at once, not when its timer fires."""
        loop = asyncio.get_running_loop()
        wall, monotonic = self.clock(), loop.time()
        while True:
            await asyncio.sleep(limits.CLOCK_JUMP_CHECK_S)
            wall_now, monotonic_now = self.clock(), loop.time()
            leap_s = (wall_now - wall).total_seconds() - (monotonic_now - monotonic)
            wall, monotonic = wall_now, monotonic_now
            if leap_s > limits.CLOCK_JUMP_TOLERANCE_S:
                log.info("wall_clock_jumped", seconds=round(leap_s, 3), actors=len(self._actors))
                for actor in self._actors.values():
                    if actor.running:
                        actor.wake_expiry()

    async def _rebuild_all(self, event_ids: list[str]) -> None:
        """The background: every event not yet rebuilt, in batches of about RECOVERY_BATCH_BYTES."""
        index, size = 0, limits.RECOVERY_BATCH_EVENTS_MIN
        while index < len(event_ids):
            batch = [event_id for event_id in event_ids[index : index + size] if event_id in self._cold]
            index += size
            if batch:
                rebuild = functools.partial(self._rebuild_batch, batch)
                read = await self._retrying("recovery_waiting", rebuild, events=f"{batch[0]}..")
                per_event = max(read // len(batch), 1)
                size = limits.RECOVERY_BATCH_BYTES // per_event
                size = min(max(size, limits.RECOVERY_BATCH_EVENTS_MIN), limits.RECOVERY_BATCH_EVENTS_MAX)

    async def _logged_event_ids(self) -> list[str]:
        async with self.pool.acquire() as connection:
            return await store.logged_event_ids(connection)

    # -- shards: taken, lost, handed over (Membership calls these, through the ShardOwner) ------

    async def shards_acquired(self, acquired: list[tuple[int, int]]) -> None:
        """The events of these shards are this node's now: known (cold) at once, rebuilt in the
        background (and on demand before that)."""
        shards = {shard for shard, _ in acquired}
        event_ids = [
            event_id for event_id in await self._logged_event_ids() if self.cluster.shard_of(event_id) in shards
        ]
        for shard in shards:
            self._by_shard.setdefault(shard, set())
        for event_id in event_ids:
            if event_id not in self._actors:
                self._cold.add(event_id)
                self._by_shard[self.cluster.shard_of(event_id)].add(event_id)
        if self.ready and event_ids:
            self.tasks.spawn(self._rebuild_all(sorted(event_ids)), name=f"rebuild-shards:{min(shards)}..")

    def shard_lost(self, shard: int) -> None:
        """The shard is not this node's any more: its actors stop at once (what they hold is
        answered "retry"), and nothing of it is served from here."""
        for event_id in self._by_shard.pop(shard, set()):
            self._cold.discard(event_id)
            rebuilding = self._on_demand.pop(event_id, None)
            if rebuilding is not None:
                rebuilding.cancel()
            self._discard(event_id, "the event moved to another node; retry")

    async def shard_releasing(self, shard: int) -> None:
        """The shard is about to be handed over: its actors take no new request, and those queued
        or in flight are decided, committed and answered (for at most SHARD_HANDOFF_DRAIN_S)."""
        actors = [self._actors[event_id] for event_id in self._by_shard.get(shard, ()) if event_id in self._actors]
        if not await _drained(actors, limits.SHARD_HANDOFF_DRAIN_S):
            log.warning("handoff_drain_timed_out", shard=shard, busy=sum(not actor.idle for actor in actors))
        self.shard_lost(shard)

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[T]], **context: str) -> T:
        """`attempt()`, again and again (with backoff) while the database is away."""
        backoff_s = 0.05
        while True:
            try:
                return await attempt()
            except DATABASE_AWAY as error:
                log.warning(what, error=repr(error), retry_in_s=backoff_s, **context)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, limits.ACTOR_RESTART_BACKOFF_MAX_S)

    async def _rebuild_batch(self, batch: list[str]) -> int:
        """Rebuild the actors of `batch` (event ids in order) from one consistent read, skipping
        those rebuilt on demand meanwhile; returns the bytes read. A cold event has no actor, so
        nothing writes its log: the background and an on-demand read see the same records, and
        whichever is first starts it."""
        batch = [event_id for event_id in batch if event_id in self._cold]
        if not batch:
            return 0
        async with self.pool.acquire() as connection, store.recovery_snapshot(connection):
            snapshots = await store.latest_snapshots(connection, events=batch)
            read = sum(len(state) for _, state in snapshots.values())
            yielded = time.perf_counter()
            async for event_id, rows in store.stream_tails(connection, batch):
                read += sum(len(body) for _, body in rows)
                self._rebuild(event_id, rows, snapshots.pop(event_id, None))
                yielded = await _let_requests_in(yielded)
            for event_id, snapshot in snapshots.items():  # nothing logged since the snapshot
                self._rebuild(event_id, [], snapshot)
                yielded = await _let_requests_in(yielded)
        return read

    def _rebuild(self, event_id: str, rows: store.LogRows, snapshot: tuple[int, bytes] | None) -> EventActor | None:
        """Rebuild one event's actor from its snapshot and the records after it, and start it
        (unless that is done, or being done on demand). An event whose log fails the invariants
        stays down, and readiness with it."""
        if event_id not in self._cold:
            return self._actors.get(event_id)
        self._cold.discard(event_id)
        try:
            inventory = _replay(event_id, rows, snapshot)
        except Exception as error:  # noqa: BLE001 - InvariantViolation, or a record this version cannot read
            self._failed[event_id] = repr(error)
            self.recovery_error = f"{event_id}: {error!r}"
            self.stats.actors_failed += 1
            log.critical("recovery_failed", event_id=event_id, error=repr(error))
            return None
        self.stats.recovered_records += len(rows)
        actor = self._actor(event_id, inventory, snapshot[0] if snapshot else 0)
        self._launch(actor)
        return actor

    def _actor(self, event_id: str, inventory: Inventory, snapshot_seq: int) -> EventActor:
        shard = self.cluster.shard_of(event_id)
        return EventActor(
            event_id,
            self.journal,
            inventory,
            self.clock,
            shard=shard,
            epoch=self.cluster.epoch(shard),
            on_batch=self.on_batch,
            on_catalogue=self.on_catalogue,
            on_committed=self.on_committed,
            on_admitted=self.on_admitted,
            write_snapshot=self._write_snapshot,
            snapshot_seq=snapshot_seq,
            tasks=self.tasks,
        )

    async def _write_snapshot(self, event_id: str, seq: int, state: bytes) -> None:
        try:
            async with self.pool.acquire() as connection:
                await store.write_snapshot(connection, event_id, seq, state)
        except Exception:  # not a cancellation (shutdown): that is not a failed snapshot
            self.stats.snapshots_failed += 1
            raise
        self.stats.snapshots_written += 1

    async def snapshot_long_tails(self) -> int:
        """After recovery: snapshot every event whose replayed tail was long, so that the next
        start is quick even if nothing is written in between."""
        written = 0
        for actor in list(self._actors.values()):
            if actor.running and actor.snapshots.due(actor.inventory):
                await actor.snapshots.write_now(actor.inventory)
                written += 1
        return written

    async def stop(self) -> None:
        """Drain, then stop: no new requests, every queued and in-flight batch decided, committed
        and answered (for at most DRAIN_ACTORS_S), then the actors' tasks end."""
        self.ready = False
        self.draining = True
        for task in list(self._on_demand.values()):
            task.cancel()
        await asyncio.gather(*self._on_demand.values(), return_exceptions=True)
        actors = list(self._actors.values())
        if not await _drained(actors, limits.DRAIN_ACTORS_S):
            log.warning("drain_timed_out", busy=sum(not actor.idle for actor in actors))
        supervisors = list(self._supervisors.values())
        for task in supervisors:
            task.cancel()
        await asyncio.gather(*supervisors, return_exceptions=True)
        # Snapshot writes in flight finish (they are bounded by DB_TIMEOUT_S).
        await asyncio.gather(*(actor.snapshots.wait_written() for actor in self._actors.values()))
        self._supervisors.clear()
        for actor in self._actors.values():
            actor.stop("the service is shutting down")
        await self.tasks.close()

    # -- lookups --------------------------------------------------------------------------------

    def check_serving(self, event_id: str) -> None:
        """NotOwner unless this node serves the event now (it holds the shard, within its lease)."""
        shard = self.cluster.shard_of(event_id)
        if not self.cluster.serving(shard):
            raise NotOwner(shard)

    def get(self, event_id: str) -> EventActor | None:
        """The event's actor if it is rebuilt here (see `actor` for one that may not be yet); whether
        this node may answer for it now is `check_serving`'s."""
        actor = self._actors.get(event_id)
        if actor is None or actor.inventory.status == "new":
            return None
        return actor

    async def actor(self, event_id: str) -> EventActor | None:
        """The event's actor, rebuilt now if start-up has not come to it yet; None if there is no
        such event. Raises Unavailable if it cannot be served (yet), NotOwner if not by this node."""
        shard = self.cluster.shard_of(event_id)
        if not self.cluster.serving(shard):
            raise NotOwner(shard)
        actor = self._actors.get(event_id)
        if actor is None:
            if event_id in self._failed:
                raise Unavailable("this event's log failed its recovery checks; an operator has been alerted")
            rebuilt = self._on_demand.get(event_id)
            if rebuilt is None:
                if event_id not in self._cold:
                    return None
                rebuilt = self.tasks.spawn(self._rebuild_one(event_id), name=f"recover:{event_id}", expected=(Unavailable,))
                self._on_demand[event_id] = rebuilt
                rebuilt.add_done_callback(lambda _: self._on_demand.pop(event_id, None))
            try:
                actor = await asyncio.wait_for(asyncio.shield(rebuilt), limits.COLD_ACTOR_WAIT_S)
            except TimeoutError:
                raise Unavailable("the event's actor is still being rebuilt from the log; retry shortly") from None
            except asyncio.CancelledError:
                if rebuilt.cancelled():  # the service is shutting down, not this request
                    raise Unavailable("the service is shutting down") from None
                raise
            if actor is None:
                raise Unavailable("this event's log failed its recovery checks; an operator has been alerted")
        return None if actor.inventory.status == "new" else actor

    async def _rebuild_one(self, event_id: str) -> EventActor | None:
        """Rebuild one event's actor ahead of the background: a request is waiting for it."""
        try:
            rows, snapshot = await self._read_event(event_id)
        except DATABASE_AWAY as error:
            # Its requests are answered at once, as on an outage; the next one tries again (and
            # the background keeps trying on its own).
            log.warning("actor_recovery_waiting", event_id=event_id, error=repr(error))
            raise Unavailable("the database is not answering; retry shortly") from error
        return self._rebuild(event_id, rows, snapshot)

    @property
    def cold(self) -> int:
        """Events in the log whose actor is not rebuilt yet."""
        return len(self._cold)

    def actors(self) -> list[EventActor]:
        return list(self._actors.values())

    def actors_running(self) -> int:
        return sum(1 for actor in self._actors.values() if actor.running)

    # -- creating events ------------------------------------------------------------------------

    def new_event_id(self, seed: str | None = None) -> str:
        """An id for a new event: from `seed` if given (the same seed, the same id: NotOwner unless
        this node serves its shard), else one in a shard this node serves (so that its creation
        needs no hop; NotOwner if it serves none)."""
        if seed is not None:
            event_id = domain.EVENT_PREFIX + base64.b32encode(hashlib.blake2b(seed.encode(), digest_size=10).digest()).decode().lower()
            self.check_serving(event_id)
            return event_id
        if not self.cluster.held():
            raise NotOwner(None)
        for _ in range(limits.NEW_EVENT_ID_TRIES_MAX):
            event_id = new_event_id()
            if self.cluster.serving(self.cluster.shard_of(event_id)):
                return event_id
        raise NotOwner(None)

    async def create_event(self, definition: EventDefinition, *, claim: IdempotencyClaim | None = None) -> Outcome:
        """Create the event's actor and its first record; the event exists once that is committed."""
        invariant(definition.id not in self._actors, "event %s created twice", definition.id)
        shard = self.cluster.shard_of(definition.id)
        if not self.cluster.serving(shard):
            raise NotOwner(shard)
        actor = self._actor(definition.id, Inventory(definition.id), 0)
        self._launch(actor)
        try:
            outcome = await actor.create(definition, claim=claim)
        except Unavailable:
            self._discard(definition.id)
            raise
        if not isinstance(outcome.result, EventSummary):
            self._discard(definition.id)
        return outcome

    def _discard(self, event_id: str, reason: str = "the event was not created") -> None:
        actor = self._actors.pop(event_id, None)
        task = self._supervisors.pop(event_id, None)
        if task is not None:
            task.cancel()
        if actor is not None:
            actor.retire(reason)

    # -- supervision ----------------------------------------------------------------------------

    def _launch(self, actor: EventActor) -> None:
        self._actors[actor.event_id] = actor
        self._by_shard.setdefault(actor.shard, set()).add(actor.event_id)
        actor.start()
        if self.on_committed is not None and actor.inventory.last_seq:
            self.on_committed(actor.event_id, actor.inventory.last_seq)
        self._supervisors[actor.event_id] = self.tasks.spawn(self._supervise(actor), name=f"supervisor:{actor.event_id}")

    async def _supervise(self, actor: EventActor) -> None:
        restarts: deque[float] = deque()
        while True:
            try:
                await actor.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - ActorRestartRequired, or any bug: contained to this actor
                actor.stop("the event's actor is restarting; retry shortly")
                now = time.monotonic()
                restarts.append(now)
                while restarts and now - restarts[0] > limits.ACTOR_RESTART_WINDOW_S:
                    restarts.popleft()
                if len(restarts) > limits.ACTOR_RESTARTS_MAX:
                    self.stats.actors_failed += 1
                    log.error(
                        "actor_failed",
                        event_id=actor.event_id,
                        restarts=len(restarts),
                        window_s=limits.ACTOR_RESTART_WINDOW_S,
                        error=repr(error),
                    )
                    actor.retire("the event's actor failed; retry later")
                    return
                log.warning(
                    "actor_restarting",
                    event_id=actor.event_id,
                    error=repr(error),
                    expected=isinstance(error, ActorRestartRequired),
                )
                actor.inventory, actor.snapshots.written_seq = await self._recover(actor.event_id)
                actor.start()
                self.stats.actors_restarted += 1
                log.info("actor_restarted", event_id=actor.event_id, last_seq=actor.inventory.last_seq)

    async def _recover(self, event_id: str) -> tuple[Inventory, int]:
        """The event's inventory (and its snapshot's seq) from its latest snapshot and the log after
        it, waiting (with backoff) while the database is away."""
        read = functools.partial(self._read_event, event_id)
        rows, snapshot = await self._retrying("actor_recovery_waiting", read, event_id=event_id)
        return _replay(event_id, rows, snapshot), snapshot[0] if snapshot else 0

    async def _read_event(self, event_id: str) -> tuple[store.LogRows, tuple[int, bytes] | None]:
        """The event's latest snapshot, and the records after it, in one consistent read."""
        async with self.pool.acquire() as connection, store.recovery_snapshot(connection):
            snapshot = await store.latest_snapshot(connection, event_id)
            rows = await store.read_event_log(connection, event_id, after_seq=snapshot[0] if snapshot else 0)
        return rows, snapshot
