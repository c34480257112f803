"""An actor's snapshots: when one is due, encoding it between batches (so it is committed state), and
writing it in a task the registry's supervisor owns, so that the next batch does not wait for it.

A snapshot costs O(state), so one is due once the records since the last reach SNAPSHOT_TAIL_RATIO
of the reservations (and at least SNAPSHOT_EVERY_RECORDS): a small constant per record, amortised.
One that cannot be written is tried again only after as many records again (a write that keeps
failing, a snapshot too large for DB_TIMEOUT_S say, is not encoded and sent after every batch). A
failure costs only a longer recovery: it is logged, never raised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from inventoryd import limits
from inventoryd.domain import Inventory
from inventoryd.tasks import TaskSupervisor
from persistence.errors import DATABASE_AWAY

log = structlog.get_logger("inventoryd.actor")

# Stores a snapshot: (event id, the log position it covers, the state).
SnapshotStore = Callable[[str, int, bytes], Awaitable[None]]


class Snapshots:
    __slots__ = ("_task", "event_id", "failed_seq", "store", "tasks", "written_seq")

    def __init__(self, event_id: str, store: SnapshotStore | None, tasks: TaskSupervisor, written_seq: int = 0) -> None:
        self.event_id = event_id
        self.store = store
        self.tasks = tasks
        # The log positions of the latest snapshot written, and of the latest that could not be.
        self.written_seq = written_seq
        self.failed_seq = 0
        self._task: asyncio.Task[None] | None = None

    def due(self, inventory: Inventory) -> bool:
        tail = inventory.last_seq - max(self.written_seq, self.failed_seq)
        return tail >= max(limits.SNAPSHOT_EVERY_RECORDS, limits.SNAPSHOT_TAIL_RATIO * len(inventory.reservations))

    def write_if_due(self, inventory: Inventory) -> None:
        """After a commit: start writing a snapshot if one is due and none is being written."""
        if self.store is None or not self.due(inventory):
            return
        if self._task is not None and not self._task.done():
            return
        state = inventory.snapshot()
        self._task = self.tasks.spawn(self._write(inventory.last_seq, state), name=f"snapshot:{self.event_id}")

    async def write_now(self, inventory: Inventory) -> None:
        """Write a snapshot of the committed state (call between batches)."""
        if inventory.definition is not None:
            await self._write(inventory.last_seq, inventory.snapshot())

    async def _write(self, seq: int, state: bytes) -> None:
        if self.store is None:
            return
        try:
            await self.store(self.event_id, seq, state)
        except DATABASE_AWAY as error:
            log.warning("snapshot_failed", event_id=self.event_id, seq=seq, error=repr(error))
            self.failed_seq = max(self.failed_seq, seq)
            return
        self.written_seq = max(self.written_seq, seq)

    async def wait_written(self) -> None:
        """Until the snapshot being written (if any) is stored or has failed."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
