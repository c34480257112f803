"""`inventoryd audit`: replay the log of one event or all of them and check every invariant.

For each event it folds the log from the first record (every apply checks its local invariants,
the end checks all of them: no oversell, counters equal to what the reservations say, per-user
limits, waiting lists), then compares the result with the catalogue row written beside the log.
It reads only; it changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg
import msgspec

from inventoryd.domain import InvariantViolation, Inventory
from inventoryd.registry import decode_log
from persistence import store


@dataclass
class EventAudit:
    event_id: str
    records: int
    problems: list[str] = field(default_factory=list)
    inventory: Inventory | None = None

    def line(self) -> str:
        if self.inventory is None or self.inventory.definition is None:
            summary = "no state"
        else:
            types = ", ".join(
                f"{t.code} {t.held}+{t.sold}/{t.capacity} (waiting {t.waiting})" for t in self.inventory.ticket_types.values()
            )
            summary = f"{self.inventory.status}, {len(self.inventory.reservations)} reservations, held+sold/capacity: {types}"
        verdict = "ok" if not self.problems else "VIOLATION: " + "; ".join(self.problems)
        return f"{self.event_id}  {self.records} records  {summary}  {verdict}"


async def audit(connection: asyncpg.Connection, event_id: str | None = None) -> list[EventAudit]:
    catalogue = {
        row["event_id"]: row
        for row in await connection.fetch("SELECT event_id, name, status, prices FROM events")
        if event_id is None or row["event_id"] == event_id
    }
    results: list[EventAudit] = []
    seen: set[str] = set()
    logs = store.stream_all_logs(connection) if event_id is None else _one(connection, event_id)
    snapshots = await store.latest_snapshots(connection)
    async for logged_event_id, rows in logs:
        seen.add(logged_event_id)
        result = EventAudit(logged_event_id, len(rows))
        results.append(result)
        snapshot = snapshots.get(logged_event_id)
        try:
            inventory = Inventory(logged_event_id)
            for seq, record in decode_log(rows):
                inventory.apply(seq, record)
                if snapshot is not None and seq == snapshot[0] and inventory.snapshot() != snapshot[1]:
                    result.problems.append(f"the snapshot at seq {seq} differs from the log's state there")
            inventory.check_invariants()
            result.inventory = inventory
            if snapshot is not None and snapshot[0] > inventory.last_seq:
                result.problems.append(f"a snapshot at seq {snapshot[0]} is past the log's end ({inventory.last_seq})")
        except InvariantViolation as violation:
            result.problems.append(str(violation))
            continue
        except (msgspec.DecodeError, KeyError) as error:
            result.problems.append(f"a record cannot be read: {error}")
            continue
        row = catalogue.get(logged_event_id)
        definition = result.inventory.definition
        if row is None:
            result.problems.append("no catalogue row")
        elif definition is not None:
            if row["status"] != result.inventory.status:
                result.problems.append(f"catalogue says {row['status']}, the log says {result.inventory.status}")
            if row["name"] != definition.name:
                result.problems.append(f"catalogue name {row['name']!r}, the log says {definition.name!r}")
            prices = sorted({ticket_type.price for ticket_type in result.inventory.ticket_types.values()})
            if list(row["prices"]) != prices:
                result.problems.append(f"catalogue prices {list(row['prices'])}, the log says {prices}")
    for missing in sorted(set(catalogue) - seen):
        results.append(EventAudit(missing, 0, ["in the catalogue, but the log has no records"]))
    return results


async def _one(connection: asyncpg.Connection, event_id: str):  # type: ignore[no-untyped-def]
    rows = await store.read_event_log(connection, event_id)
    if rows:
        yield event_id, rows
