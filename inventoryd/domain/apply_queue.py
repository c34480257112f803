"""Phase two, for the waiting room: folding its records into `InventoryState.queue`, through the
undo log like every other change (a rolled-back batch takes its joins and waves back)."""

from __future__ import annotations

import msgspec

from inventoryd.domain.checks import invariant
from inventoryd.domain.queue import QueueEntry, shuffled
from inventoryd.domain.records import QueueAdmitted, QueueExpired, QueueJoined, QueueLeft, QueueShuffled
from inventoryd.domain.state import InventoryState


def _put(inventory: InventoryState, entry: QueueEntry) -> None:
    inventory.set_item(inventory.queue.entries, entry.id, entry)


def _into_line(inventory: InventoryState, entry_id: str) -> None:
    queue = inventory.queue
    inventory.set_item(queue.index, entry_id, len(queue.line))
    inventory.append(queue.line, entry_id)


def queue_joined(inventory: InventoryState, record: QueueJoined) -> None:
    queue = inventory.queue
    invariant(record.entry_id not in queue.entries, "queue entry %s joined twice", record.entry_id)
    _put(inventory, QueueEntry(record.entry_id, inventory.event_id, record.user_id, "waiting", record.at))
    inventory.set_item(queue.of_user, record.user_id, record.entry_id)
    inventory.set_attr(queue, "joined", queue.joined + 1)
    if queue.shuffled:
        _into_line(inventory, record.entry_id)
    else:
        inventory.append(queue.pre, record.entry_id)


def queue_shuffled(inventory: InventoryState, record: QueueShuffled) -> None:
    queue = inventory.queue
    invariant(not queue.shuffled, "the waiting room of %s shuffled twice", inventory.event_id)
    for entry_id in shuffled([entry_id for entry_id in queue.pre if queue.entries[entry_id].status == "waiting"], record.seed):
        _into_line(inventory, entry_id)
    inventory.set_attr(queue, "pre", [])
    inventory.set_attr(queue, "shuffled", True)


def queue_admitted(inventory: InventoryState, record: QueueAdmitted) -> None:
    queue = inventory.queue
    for entry_id in record.entry_ids:
        entry = queue.entries[entry_id]
        invariant(entry.status == "waiting", "admitting %s, which is %s", entry_id, entry.status)
        _put(inventory, msgspec.structs.replace(entry, status="admitted", admitted_at=record.at, expires_at=record.expires_at))
        inventory.append(queue.admitted_order, entry_id)
    inventory.set_attr(queue, "admitted", queue.admitted + len(record.entry_ids))
    inventory.set_attr(queue, "active", queue.active + len(record.entry_ids))
    inventory.set_attr(queue, "last_wave_at", record.clock)
    inventory.set_attr(queue, "wave_at", record.at)
    _advance_head(inventory)
    config = inventory.require_definition().queue
    invariant(config is not None, "%s: an admission without a waiting room", inventory.event_id)
    if config is not None and config.max_active is not None:
        invariant(queue.active <= config.max_active, "%s: %s admitted at once, over max_active", inventory.event_id, queue.active)


def queue_expired(inventory: InventoryState, record: QueueExpired) -> None:
    queue = inventory.queue
    for entry_id in record.entry_ids:
        entry = queue.entries[entry_id]
        invariant(entry.status == "admitted", "ending the admission of %s, which is %s", entry_id, entry.status)
        _put(inventory, msgspec.structs.replace(entry, status="expired"))
        if not entry.finished:
            inventory.set_attr(queue, "active", queue.active - 1)
    head = queue.expired_head
    while head < len(queue.admitted_order) and queue.entries[queue.admitted_order[head]].status != "admitted":
        head += 1
    inventory.set_attr(queue, "expired_head", head)


def queue_left(inventory: InventoryState, record: QueueLeft) -> None:
    queue = inventory.queue
    entry = queue.entries[record.entry_id]
    invariant(entry.status in ("waiting", "admitted"), "%s leaves, but it is %s", entry.id, entry.status)
    _put(inventory, msgspec.structs.replace(entry, status="left"))
    if entry.status == "admitted" and not entry.finished:
        inventory.set_attr(queue, "active", queue.active - 1)
    at = queue.index.get(entry.id)
    if entry.status == "waiting" and at is not None:
        inventory.insort(queue.gone, at)
        _advance_head(inventory)


def purchase_finished(inventory: InventoryState, user_id: str) -> None:
    """The buyer's reservation was confirmed or cancelled: an admission it holds frees its slot."""
    queue = inventory.queue
    entry_id = queue.of_user.get(user_id)
    entry = queue.entries.get(entry_id) if entry_id is not None else None
    if entry is not None and entry.status == "admitted" and not entry.finished:
        _put(inventory, msgspec.structs.replace(entry, finished=True))
        inventory.set_attr(queue, "active", queue.active - 1)


def _advance_head(inventory: InventoryState) -> None:
    """Past every entry at the front of the line that no longer waits."""
    queue = inventory.queue
    head = queue.head
    while head < len(queue.line) and queue.entries[queue.line[head]].status != "waiting":
        head += 1
    if head != queue.head:
        inventory.set_attr(queue, "head", head)
