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
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
import structlog

from inventoryd import domain, limits
from inventoryd.actor import ActorRestartRequired, Clock, EventActor, IdempotencyClaim, Outcome, Unavailable, system_clock
from inventoryd.domain import EventDefinition, EventSummary, Inventory, Record
from persistence import store
from persistence.journal import Journal

log = structlog.get_logger("inventoryd.registry")

_RECORD_DECODER = domain.RECORD_DECODER
# How long a shutdown waits for the actors to finish what they hold.
DRAIN_ACTORS_S = 10.0


def new_event_id() -> str:
    # 80 random bits, lowercase base32: opaque, URL-safe, alphanumeric (reservation ids embed it).
    return domain.EVENT_PREFIX + base64.b32encode(os.urandom(10)).decode().lower()


def decode_log(rows: store.LogRows) -> list[tuple[int, Record]]:
    return [(seq, _RECORD_DECODER.decode(body)) for seq, body in rows]


@dataclass(slots=True)
class RegistryStats:
    actors_restarted: int = 0
    actors_failed: int = 0
    recovery_seconds: float = 0.0
    recovered_records: int = 0


@dataclass(eq=False)
class Registry:
    journal: Journal
    pool: asyncpg.Pool
    clock: Clock = system_clock
    on_batch: Callable[[int, int], None] | None = None
    stats: RegistryStats = field(default_factory=RegistryStats)
    _actors: dict[str, EventActor] = field(default_factory=dict)
    _supervisors: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    ready: bool = False
    # Set once, when recovery has rebuilt every actor.
    recovered: asyncio.Event = field(default_factory=asyncio.Event)
    # Set when a shutdown begins: /readyz answers 503 so that traffic goes elsewhere.
    draining: bool = False
    recovery_error: str | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Rebuild every event's actor from the log and start it; then the registry is ready.

        While the database is unreachable it waits and tries again (the service stays not ready);
        a log that breaks an invariant stops recovery loudly: serving from it would be wrong.
        """
        started = time.perf_counter()
        backoff_s = 0.05
        while True:
            try:
                records = await self._recover_all()
                break
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError) as error:
                log.warning("recovery_waiting", error=repr(error), retry_in_s=backoff_s)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, limits.ACTOR_RESTART_BACKOFF_MAX_S)
            except Exception as error:
                self.recovery_error = repr(error)
                log.critical("recovery_failed", error=repr(error))
                raise
        self.stats.recovery_seconds = time.perf_counter() - started
        self.stats.recovered_records = records
        self.ready = True
        self.recovered.set()
        log.info(
            "recovery_done",
            events=len(self._actors),
            records=records,
            duration_s=round(self.stats.recovery_seconds, 3),
        )
        snapshots = await self.snapshot_long_tails()
        if snapshots:
            log.info("snapshots_after_recovery", events=snapshots)

    async def _recover_all(self) -> int:
        """Every event from its latest snapshot and the log after it, in one consistent read."""
        for event_id in list(self._actors):
            self._discard(event_id)  # a failed earlier attempt's partial work
        records = 0
        async with self.pool.acquire() as connection, store.recovery_snapshot(connection):
            snapshots = await store.latest_snapshots(connection)
            async for event_id, rows in store.stream_all_logs(connection, after_snapshots=True):
                snapshot = snapshots.pop(event_id, None)
                inventory = Inventory.replay(event_id, decode_log(rows), snapshot=snapshot[1] if snapshot else None)
                records += len(rows)
                self._launch(self._actor(event_id, inventory, snapshot[0] if snapshot else 0))
            for event_id, (seq, state) in snapshots.items():  # nothing logged since the snapshot
                self._launch(self._actor(event_id, Inventory.restore(event_id, state), seq))
        return records

    def _actor(self, event_id: str, inventory: Inventory, snapshot_seq: int) -> EventActor:
        return EventActor(
            event_id,
            self.journal,
            inventory,
            self.clock,
            on_batch=self.on_batch,
            write_snapshot=self._write_snapshot,
            snapshot_seq=snapshot_seq,
        )

    async def _write_snapshot(self, event_id: str, seq: int, state: bytes) -> None:
        async with self.pool.acquire() as connection:
            await store.write_snapshot(connection, event_id, seq, state)

    async def snapshot_long_tails(self) -> int:
        """After recovery: snapshot every event whose replayed tail was long, so that the next
        start is quick even if nothing is written in between."""
        written = 0
        for actor in list(self._actors.values()):
            if actor.running and actor.snapshot_due():
                await actor.snapshot_now()
                written += 1
        return written

    async def stop(self) -> None:
        """Drain, then stop: no new requests, every queued and in-flight batch decided, committed
        and answered (for at most DRAIN_ACTORS_S), then the actors' tasks end."""
        self.ready = False
        self.draining = True
        for actor in self._actors.values():
            actor.stop_accepting()
        deadline = asyncio.get_running_loop().time() + DRAIN_ACTORS_S
        while not all(actor.idle for actor in self._actors.values()):
            if asyncio.get_running_loop().time() > deadline:
                log.warning("drain_timed_out", busy=sum(not actor.idle for actor in self._actors.values()))
                break
            await asyncio.sleep(0.01)
        supervisors = list(self._supervisors.values())
        for task in supervisors:
            task.cancel()
        await asyncio.gather(*supervisors, return_exceptions=True)
        # Snapshot writes in flight finish (they are bounded by DB_TIMEOUT_S).
        await asyncio.gather(*(actor.wait_snapshot_written() for actor in self._actors.values()))
        self._supervisors.clear()
        for actor in self._actors.values():
            actor.stop("the service is shutting down")

    # -- lookups --------------------------------------------------------------------------------

    def get(self, event_id: str) -> EventActor | None:
        actor = self._actors.get(event_id)
        if actor is None or actor.inventory.status == "new":
            return None
        return actor

    def actors(self) -> list[EventActor]:
        return list(self._actors.values())

    def actors_running(self) -> int:
        return sum(1 for actor in self._actors.values() if actor.running)

    # -- creating events ------------------------------------------------------------------------

    async def create_event(self, definition: EventDefinition, *, claim: IdempotencyClaim | None = None) -> Outcome:
        """Create the event's actor and its first record; the event exists once that is committed."""
        assert definition.id not in self._actors
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

    def _discard(self, event_id: str) -> None:
        actor = self._actors.pop(event_id, None)
        task = self._supervisors.pop(event_id, None)
        if task is not None:
            task.cancel()
        if actor is not None:
            actor.stop("the event was not created")

    # -- supervision ----------------------------------------------------------------------------

    def _launch(self, actor: EventActor) -> None:
        self._actors[actor.event_id] = actor
        actor.start()
        self._supervisors[actor.event_id] = asyncio.create_task(
            self._supervise(actor), name=f"supervisor:{actor.event_id}"
        )

    async def _supervise(self, actor: EventActor) -> None:
        restarts: deque[float] = deque()
        while True:
            try:
                await actor.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as error:  # ActorRestartRequired, or any bug: contain it to this actor
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
                    return
                log.warning(
                    "actor_restarting",
                    event_id=actor.event_id,
                    error=repr(error),
                    expected=isinstance(error, ActorRestartRequired),
                )
                actor.inventory, actor.snapshot_seq = await self._recover(actor.event_id)
                actor.start()
                self.stats.actors_restarted += 1
                log.info("actor_restarted", event_id=actor.event_id, last_seq=actor.inventory.last_seq)

    async def _recover(self, event_id: str) -> tuple[Inventory, int]:
        """The event's inventory (and its snapshot's seq) from its latest snapshot and the log after
        it, waiting (with backoff) while the database is away."""
        backoff_s = 0.05
        while True:
            try:
                async with self.pool.acquire() as connection, store.recovery_snapshot(connection):
                    snapshot = await store.latest_snapshot(connection, event_id)
                    after = snapshot[0] if snapshot else 0
                    rows = await store.read_event_log(connection, event_id, after_seq=after)
                return Inventory.replay(event_id, decode_log(rows), snapshot=snapshot[1] if snapshot else None), after
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError) as error:
                log.warning("actor_recovery_waiting", event_id=event_id, error=repr(error), retry_in_s=backoff_s)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, limits.ACTOR_RESTART_BACKOFF_MAX_S)
