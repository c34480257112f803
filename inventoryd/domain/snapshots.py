"""Phase four: snapshots and replay. A snapshot holds what cannot be derived of an inventory at
`last_seq`; counters, per-user seats and the expiry heap are derived again on restore (by the one
counting rule, `state.counted`), and then checked. `replay` is "state is a fold of the log"."""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import TypeVar

import msgspec

from inventoryd.domain.apply import apply
from inventoryd.domain.checks import invariant, present
from inventoryd.domain.invariants import check_all, tally
from inventoryd.domain.records import EventDefinition, Record
from inventoryd.domain.state import InventoryState, Reservation, TicketTypeState


class TicketTypeSnapshot(msgspec.Struct, frozen=True, gc=False, array_like=True):
    code: str
    name: str
    price: int
    capacity: int
    # Ids still waiting, first in line first.
    waiting: tuple[str, ...]


class InventorySnapshot(msgspec.Struct, frozen=True, gc=False, array_like=True):
    definition: EventDefinition
    status: str
    ticket_types: tuple[TicketTypeSnapshot, ...]
    reservations: tuple[Reservation, ...]
    reservations_created: int
    last_seq: int


SNAPSHOT_ENCODER = msgspec.msgpack.Encoder()
SNAPSHOT_DECODER = msgspec.msgpack.Decoder(InventorySnapshot)
State = TypeVar("State", bound=InventoryState)


def snapshot(inventory: InventoryState) -> bytes:
    invariant(not inventory.in_batch, "snapshot inside a batch: it would hold uncommitted changes")
    return SNAPSHOT_ENCODER.encode(
        InventorySnapshot(
            definition=present(inventory.definition, "snapshot of %s before its creation", inventory.event_id),
            status=inventory.status,
            ticket_types=tuple(
                TicketTypeSnapshot(t.code, t.name, t.price, t.capacity, tuple(inventory.waiting_list(t.code)))
                for t in inventory.ticket_types.values()
            ),
            reservations=tuple(inventory.reservations.values()),
            reservations_created=inventory.reservations_created,
            last_seq=inventory.last_seq,
        )
    )


def restore(kind: type[State], event_id: str, state: bytes) -> State:
    saved = SNAPSHOT_DECODER.decode(state)
    invariant(saved.definition.id == event_id, "snapshot of %s restored as %s", saved.definition.id, event_id)
    invariant(saved.status in ("on_sale", "cancelled"), "snapshot of %s in status %s", event_id, saved.status)
    inventory = kind(event_id)
    inventory.definition = saved.definition
    inventory.status = "on_sale" if saved.status == "on_sale" else "cancelled"
    inventory.reservations_created = saved.reservations_created
    inventory.last_seq = saved.last_seq
    for saved_type in saved.ticket_types:
        inventory.ticket_types[saved_type.code] = TicketTypeState(
            saved_type.code,
            saved_type.name,
            saved_type.price,
            saved_type.capacity,
            waitlist=list(saved_type.waiting),
        )
    reservations = inventory.reservations
    heap = inventory.expiry_heap
    for reservation in saved.reservations:
        reservations[reservation.id] = reservation
        if reservation.status == "held" and reservation.expires_at is not None:
            heap.append((reservation.expires_at, reservation.id))
    heapq.heapify(heap)
    counts, seats = tally(inventory)
    for code, ticket_type in inventory.ticket_types.items():
        (ticket_type.held, ticket_type.sold, ticket_type.revenue, ticket_type.waiting, ticket_type.cancelled,
         ticket_type.checked_in) = counts[code]
    inventory.seats_by_user.update(seats)
    # The counters were just derived from the reservations, so recounting them would prove
    # nothing; what derivation cannot guarantee is checked.
    check_all(inventory, counters=False)
    return inventory


def replay(kind: type[State], event_id: str, records: Iterable[tuple[int, Record]], *, snapshot: bytes | None) -> State:
    """The state the log describes: from the snapshot if one is given, then the records after it."""
    inventory = restore(kind, event_id, snapshot) if snapshot is not None else kind(event_id)
    applied = False
    for seq, record in records:
        apply(inventory, seq, record)
        applied = True
    if applied or snapshot is None:  # a snapshot alone was checked by `restore`
        check_all(inventory)
    return inventory
