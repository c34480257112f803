"""`Inventory`: one event's state with its phases as methods, the object the actor, recovery, the
audit and the tests hold. Each method is one line into its phase's module."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from inventoryd.domain.apply import apply as apply_record
from inventoryd.domain.commands import Command, Decision
from inventoryd.domain.decide import decide as decide_command
from inventoryd.domain.invariants import check_all
from inventoryd.domain.records import Record
from inventoryd.domain.snapshots import replay, restore, snapshot
from inventoryd.domain.state import InventoryState


@dataclass(slots=True)
class Inventory(InventoryState):
    def decide(self, command: Command, now: datetime) -> Decision:
        """The records `command` produces at `now`, and its reply; changes nothing."""
        return decide_command(self, command, now)

    def apply(self, seq: int, record: Record) -> None:
        """Fold the record at log position `seq` into the state, then check what it touched."""
        apply_record(self, seq, record)

    def check_invariants(self, *, counters: bool = True) -> None:
        check_all(self, counters=counters)

    def snapshot(self) -> bytes:
        return snapshot(self)

    @classmethod
    def restore(cls, event_id: str, state: bytes) -> Inventory:
        return restore(cls, event_id, state)

    @classmethod
    def replay(cls, event_id: str, records: Iterable[tuple[int, Record]], *, snapshot: bytes | None = None) -> Inventory:
        """The state the log describes: from the snapshot if one is given, then the records after it."""
        return replay(cls, event_id, records, snapshot=snapshot)
