"""Phase four: snapshots and replay. A snapshot holds what cannot be derived of an inventory at
`last_seq`; counters, per-user seats and the expiry heap are derived again on restore (by the one
counting rule, `state.counted`), and then checked. `replay` is "state is a fold of the log"."""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from datetime import datetime
from typing import TypeVar

import msgspec

from inventoryd.domain.apply import apply
from inventoryd.domain.checks import invariant, present
from inventoryd.domain.invariants import check_all, tally
from inventoryd.domain.queue import QueueEntry, QueueState
from inventoryd.domain.records import EventDefinition, Record
from inventoryd.domain.seatmap import SeatLayout, SeatMap
from inventoryd.domain.seats import SeatState
from inventoryd.domain.state import InventoryState, Reservation, TicketTypeState


class TicketTypeSnapshot(msgspec.Struct, frozen=True, gc=False, array_like=True):
    code: str
    name: str
    price: int
    capacity: int
    # Ids still waiting, first in line first.
    waiting: tuple[str, ...]
    seated: bool = False


class QueueSnapshot(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """The waiting room: what cannot be derived (who is where in line, the admission clock); each
    user's entry, the line's index, those who left it and the active count are derived again."""

    entries: tuple[QueueEntry, ...]
    pre: tuple[str, ...]
    line: tuple[str, ...]
    head: int
    shuffled: bool
    joined: int
    admitted: int
    admitted_order: tuple[str, ...]
    expired_head: int
    last_wave_at: datetime | None
    wave_at: datetime | None


class SeatsSnapshot(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """The seat map as put and the blocked seats (with why); who holds which seat is derived again
    from the live reservations, the counts and the index from those."""

    layout: SeatLayout
    blocked: tuple[tuple[str, str], ...]


class InventorySnapshot(msgspec.Struct, frozen=True, gc=False, array_like=True):
    definition: EventDefinition
    status: str
    ticket_types: tuple[TicketTypeSnapshot, ...]
    reservations: tuple[Reservation, ...]
    reservations_created: int
    last_seq: int
    # Added with the waiting room: a snapshot written before it has none (and no waiting room).
    queue: QueueSnapshot | None = None
    # Added with reserved seating.
    seats: SeatsSnapshot | None = None


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
                TicketTypeSnapshot(t.code, t.name, t.price, t.capacity, tuple(inventory.waiting_list(t.code)), t.seated)
                for t in inventory.ticket_types.values()
            ),
            reservations=tuple(inventory.reservations.values()),
            reservations_created=inventory.reservations_created,
            last_seq=inventory.last_seq,
            queue=_queue_snapshot(inventory.queue) if inventory.queue.joined else None,
            seats=_seats_snapshot(inventory.seats) if inventory.seats is not None else None,
        )
    )


def _seats_snapshot(seats: SeatState) -> SeatsSnapshot:
    ids = seats.map.ids
    return SeatsSnapshot(seats.map.layout, tuple((ids[seat], reason) for seat, reason in seats.blocked.items()))


def _restore_seats(inventory: InventoryState, saved: SeatsSnapshot) -> None:
    seats = SeatState(SeatMap(saved.layout))
    number, type_of = seats.map.number, seats.map.type_of
    for reservation in inventory.reservations.values():
        if reservation.seats and reservation.status in ("held", "confirmed"):
            for seat_id in reservation.seats:
                seat = number[seat_id]
                invariant(seats.holder[seat] is None, "restored seat %s is in two reservations", seat_id)
                seats.holder[seat] = reservation.id
                seats.taken[type_of[seat]] += 1
    for seat_id, reason in saved.blocked:
        seats.blocked[number[seat_id]] = reason
        inventory.ticket_types[type_of[number[seat_id]]].blocked += 1
    seats.refresh_free()
    seats.reindex(range(len(seats.map.row_keys)))
    inventory.seats = seats


def _queue_snapshot(queue: QueueState) -> QueueSnapshot:
    return QueueSnapshot(
        entries=tuple(queue.entries.values()),
        pre=tuple(queue.pre),
        line=tuple(queue.line),
        head=queue.head,
        shuffled=queue.shuffled,
        joined=queue.joined,
        admitted=queue.admitted,
        admitted_order=tuple(queue.admitted_order),
        expired_head=queue.expired_head,
        last_wave_at=queue.last_wave_at,
        wave_at=queue.wave_at,
    )


def _restore_queue(saved: QueueSnapshot) -> QueueState:
    queue = QueueState(
        pre=list(saved.pre),
        line=list(saved.line),
        head=saved.head,
        shuffled=saved.shuffled,
        joined=saved.joined,
        admitted=saved.admitted,
        admitted_order=list(saved.admitted_order),
        expired_head=saved.expired_head,
        last_wave_at=saved.last_wave_at,
        wave_at=saved.wave_at,
    )
    for entry in saved.entries:  # in the order they joined: each user's latest comes last
        queue.entries[entry.id] = entry
        queue.of_user[entry.user_id] = entry.id
        queue.active += entry.status == "admitted" and not entry.finished
    queue.index = {entry_id: at for at, entry_id in enumerate(queue.line)}
    queue.gone = [at for at, entry_id in enumerate(queue.line) if queue.entries[entry_id].status == "left"]
    return queue


def restore(kind: type[State], event_id: str, state: bytes) -> State:
    saved = SNAPSHOT_DECODER.decode(state)
    invariant(saved.definition.id == event_id, "snapshot of %s restored as %s", saved.definition.id, event_id)
    invariant(saved.status in ("on_sale", "cancelled"), "snapshot of %s in status %s", event_id, saved.status)
    inventory = kind(event_id)
    inventory.definition = saved.definition
    inventory.status = "on_sale" if saved.status == "on_sale" else "cancelled"
    inventory.reservations_created = saved.reservations_created
    inventory.last_seq = saved.last_seq
    if saved.queue is not None:
        inventory.queue = _restore_queue(saved.queue)
    for saved_type in saved.ticket_types:
        inventory.ticket_types[saved_type.code] = TicketTypeState(
            saved_type.code,
            saved_type.name,
            saved_type.price,
            saved_type.capacity,
            waitlist=list(saved_type.waiting),
            seated=saved_type.seated,
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
    if saved.seats is not None:
        _restore_seats(inventory, saved.seats)
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
