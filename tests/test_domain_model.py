"""The pure state machine against a tiny reference model, driven by seeded random commands.

Method: a seeded generator issues reserve / confirm / cancel / expire commands and clock moves in
batches; each batch is decided and applied by `Inventory` exactly as the actor does it, and then
either "commits" or, at random, "fails" and is rolled back, as a failed journal append would be.
The reference model (a list of reservations and a few lines of rules written from API.md) decides
the same commands. After every batch the replies and the whole observable state must agree, and the
committed records replayed into a fresh inventory must give the same state. A failure prints its
seed; INVENTORYD_MODEL_SEED=<seed> replays it, INVENTORYD_MODEL_STEPS raises the step count.
"""

from __future__ import annotations

import copy
import os
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from inventoryd import domain
from inventoryd.domain import (
    Accepted,
    AddTicketType,
    Cancel,
    CancelEvent,
    ChangeTicketType,
    CheckIn,
    Confirm,
    CreateEvent,
    EventDefinition,
    ExpireDue,
    Inventory,
    Rejected,
    Reserve,
    TicketTypeDefinition,
    UpdateEvent,
)

STEPS_PER_SEED = int(os.environ.get("INVENTORYD_MODEL_STEPS", "600"))
SEEDS = [int(os.environ["INVENTORYD_MODEL_SEED"])] if "INVENTORYD_MODEL_SEED" in os.environ else list(range(20))
EVENT_ID = "evt_model"
START = datetime(2027, 1, 1, tzinfo=UTC)


# -- the reference model ------------------------------------------------------------------------


@dataclass
class ModelReservation:
    id: str
    user: str
    ticket_type: str
    quantity: int
    status: str
    expires_at: datetime | None
    amount: int
    checked_in: set[int] = field(default_factory=set)
    confirmed_ever: bool = False


@dataclass
class Model:
    capacity: dict[str, int]
    price: dict[str, int]
    per_user_limit: int | None
    hold: timedelta
    sale_starts_at: datetime | None
    sale_ends_at: datetime | None
    cancel_until: datetime | None
    cancelled: bool = False
    reservations: list[ModelReservation] = field(default_factory=list)
    # The moment the command being handled is decided at.
    now: datetime = START

    def seats(self, status: str, ticket_type: str) -> int:
        return sum(r.quantity for r in self.reservations if r.status == status and r.ticket_type == ticket_type)

    def free(self, ticket_type: str) -> int:
        return self.capacity[ticket_type] - self.seats("held", ticket_type) - self.seats("confirmed", ticket_type)

    def available(self, ticket_type: str) -> int:
        """What a newcomer may take: nothing while anyone waits (the freed seats are the line's)."""
        return 0 if self.waiting(ticket_type) else self.free(ticket_type)

    def user_seats(self, user: str) -> int:
        return sum(r.quantity for r in self.reservations if r.user == user and r.status in ("held", "confirmed", "waitlisted"))

    def find(self, reservation_id: str) -> ModelReservation | None:
        return next((r for r in self.reservations if r.id == reservation_id), None)

    def waiting(self, ticket_type: str) -> list[str]:
        # Creation order is joining order.
        return [r.id for r in self.reservations if r.status == "waitlisted" and r.ticket_type == ticket_type]

    def promote(self, ticket_type: str, now: datetime) -> None:
        """Strict FIFO: the head goes when its whole quantity fits; nobody overtakes it."""
        for reservation_id in self.waiting(ticket_type):
            reservation = self.find(reservation_id)
            assert reservation is not None
            if reservation.quantity > self.free(ticket_type):
                return
            reservation.status = "held"
            reservation.expires_at = now + self.hold

    def reserve(self, command: Reserve) -> tuple[str, str | None]:
        if self.cancelled:
            return "event_cancelled", None
        if self.sale_starts_at and self.now < self.sale_starts_at:
            return "sale_not_open", None
        if self.sale_ends_at and self.now >= self.sale_ends_at:
            return "sale_not_open", None
        if command.ticket_type not in self.capacity:
            return "not_found", None
        if self.per_user_limit is not None and self.user_seats(command.user_id) + command.quantity > self.per_user_limit:
            return "limit_exceeded", None
        reservation_id = domain.reservation_id_for(EVENT_ID, len(self.reservations) + 1)
        available = self.available(command.ticket_type)
        amount = self.price[command.ticket_type] * command.quantity
        if command.quantity <= available:
            status, expires_at = "held", self.now + self.hold
        elif command.waitlist and command.quantity <= self.capacity[command.ticket_type]:
            status, expires_at = "waitlisted", None
        elif available == 0:
            return "sold_out", None
        else:
            return "insufficient_tickets", None
        self.reservations.append(
            ModelReservation(reservation_id, command.user_id, command.ticket_type, command.quantity, status, expires_at, amount)
        )
        return "accepted", reservation_id

    def confirm(self, command: Confirm) -> tuple[str, str | None]:
        reservation = self.find(command.reservation_id)
        if reservation is None:
            return "not_found", None
        if reservation.status == "held" and reservation.expires_at is not None and self.now >= reservation.expires_at:
            reservation.status = "expired"
            self.promote(reservation.ticket_type, self.now)
            return "hold_expired", None
        if reservation.status == "expired":
            return "hold_expired", None
        if reservation.status in ("cancelled", "waitlisted"):
            return "conflict", None
        reservation.status = "confirmed"
        reservation.confirmed_ever = True
        return "accepted", reservation.id

    def cancel(self, command: Cancel) -> tuple[str, str | None]:
        reservation = self.find(command.reservation_id)
        if reservation is None:
            return "not_found", None
        if reservation.status == "cancelled":
            return "accepted", reservation.id
        if reservation.status == "expired":
            return "conflict", None
        if reservation.status == "confirmed":
            if self.cancel_until is not None and self.now > self.cancel_until and not command.privileged:
                return "cancellation_closed", None
            if reservation.checked_in:
                return "conflict", None
        reservation.status = "cancelled"
        self.promote(reservation.ticket_type, self.now)
        return "accepted", reservation.id

    def expire(self, command: ExpireDue) -> tuple[str, str | None]:
        touched = set()
        for reservation in self.reservations:
            if reservation.status == "held" and reservation.expires_at is not None and reservation.expires_at <= self.now:
                reservation.status = "expired"
                touched.add(reservation.ticket_type)
        for ticket_type in sorted(touched):
            self.promote(ticket_type, self.now)
        return "accepted", None

    def check_in(self, command: CheckIn) -> tuple[str, str | None]:
        reservation_id = domain.reservation_id_of_ticket(command.ticket_id)
        reservation = self.find(reservation_id or "")
        index = int(command.ticket_id.rpartition("_")[2])
        if reservation is None or not reservation.confirmed_ever or not 1 <= index <= reservation.quantity:
            return "not_found", None
        if index in reservation.checked_in:
            return "already_checked_in", None
        if reservation.status == "cancelled":
            return "conflict", None
        reservation.checked_in.add(index)
        return "accepted", reservation.id

    def update(self, command: UpdateEvent) -> tuple[str, str | None]:
        if self.cancelled:
            return "event_cancelled", None
        limit = command.changes.get("per_user_limit", self.per_user_limit)
        users = {r.user for r in self.reservations}
        if limit is not None and any(self.user_seats(user) > limit for user in users):
            return "conflict", None
        self.per_user_limit = limit
        if "hold_seconds" in command.changes:
            self.hold = timedelta(seconds=command.changes["hold_seconds"])
        return "accepted", None

    def add_type(self, command: AddTicketType) -> tuple[str, str | None]:
        if self.cancelled:
            return "event_cancelled", None
        if command.ticket_type.code in self.capacity:
            return "conflict", None
        self.capacity[command.ticket_type.code] = command.ticket_type.capacity
        self.price[command.ticket_type.code] = command.ticket_type.price
        return "accepted", None

    def change_type(self, command: ChangeTicketType) -> tuple[str, str | None]:
        if self.cancelled:
            return "event_cancelled", None
        if command.code not in self.capacity:
            return "not_found", None
        assert command.capacity is not None
        if command.capacity < self.seats("held", command.code) + self.seats("confirmed", command.code):
            return "capacity_below_reserved", None
        self.capacity[command.code] = command.capacity
        # An entry waiting for more than the type now holds can never be served: it is cancelled.
        for reservation in self.reservations:
            if reservation.status == "waitlisted" and reservation.ticket_type == command.code and reservation.quantity > command.capacity:
                reservation.status = "cancelled"
        self.promote(command.code, self.now)
        return "accepted", None

    def cancel_event(self, command: CancelEvent) -> tuple[str, str | None]:
        if not self.cancelled:
            self.cancelled = True
            for reservation in self.reservations:
                if reservation.status in ("held", "confirmed", "waitlisted"):
                    reservation.status = "cancelled"
        return "accepted", None

    def handle(self, command: domain.Command, now: datetime) -> tuple[str, str | None]:
        self.now = now
        handlers = {
            Reserve: self.reserve,
            Confirm: self.confirm,
            Cancel: self.cancel,
            ExpireDue: self.expire,
            CheckIn: self.check_in,
            UpdateEvent: self.update,
            AddTicketType: self.add_type,
            ChangeTicketType: self.change_type,
            CancelEvent: self.cancel_event,
        }
        return handlers[type(command)](command)  # type: ignore[operator]


def observe(inventory: Inventory) -> dict[str, object]:
    return {
        "available": {code: ticket_type.available for code, ticket_type in inventory.ticket_types.items()},
        "reservations": {
            r.id: (r.user_id, r.ticket_type, r.quantity, r.status, r.expires_at if r.status == "held" else None)
            for r in inventory.reservations.values()
        },
        "checked_in": {
            r.id: {int(t.id.rpartition("_")[2]) for t in r.tickets if t.status == "checked_in"}
            for r in inventory.reservations.values()
            if r.tickets
        },
        "waiting": {code: inventory.waiting_list(code) for code in inventory.ticket_types},
        "revenue": {code: t.revenue for code, t in inventory.ticket_types.items()},
        "cancelled": inventory.status == "cancelled",
    }


def observe_model(model: Model) -> dict[str, object]:
    return {
        "available": {code: model.available(code) for code in model.capacity},
        "reservations": {
            r.id: (r.user, r.ticket_type, r.quantity, r.status, r.expires_at if r.status == "held" else None)
            for r in model.reservations
        },
        "checked_in": {r.id: set(r.checked_in) for r in model.reservations if r.confirmed_ever},
        "waiting": {code: model.waiting(code) for code in model.capacity},
        "revenue": {
            code: sum(r.amount for r in model.reservations if r.status == "confirmed" and r.ticket_type == code)
            for code in model.capacity
        },
        "cancelled": model.cancelled,
    }


# -- the driver ---------------------------------------------------------------------------------


def random_event(rng: random.Random) -> EventDefinition:
    types = tuple(
        TicketTypeDefinition(code, code, rng.randint(0, 5000), rng.randint(0, 12)) for code in ("GA", "VIP")[: rng.randint(1, 2)]
    )
    sale_starts_at = START + timedelta(seconds=rng.choice([0, 0, 300])) if rng.random() < 0.3 else None
    sale_ends_at = START + timedelta(hours=rng.randint(2, 6)) if rng.random() < 0.3 else None
    return EventDefinition(
        id=EVENT_ID,
        name="model",
        starts_at=START + timedelta(days=30),
        currency="EUR",
        ticket_types=types,
        created_at=START,
        sale_starts_at=sale_starts_at,
        sale_ends_at=sale_ends_at,
        cancel_until=START + timedelta(hours=rng.randint(1, 4)) if rng.random() < 0.5 else None,
        per_user_limit=rng.choice([None, 2, 4, 6]),
        hold_seconds=rng.choice([60, 300, 600]),
    )


def random_command(rng: random.Random, now: datetime, model: Model) -> domain.Command:
    known = [r.id for r in model.reservations]
    missing = domain.reservation_id_for(EVENT_ID, 999)
    pick = rng.random()
    if pick < 0.40:
        return Reserve(
            f"user{rng.randint(1, 6)}",
            rng.choice(["GA", "GA", "VIP", "NOPE"]),
            rng.randint(1, 4),
            waitlist=rng.random() < 0.4,
        )
    if pick < 0.55:
        return Confirm(rng.choice(known) if known and rng.random() < 0.9 else missing)
    if pick < 0.70:
        return Cancel(rng.choice(known) if known and rng.random() < 0.9 else missing, privileged=rng.random() < 0.3)
    if pick < 0.78:
        return ExpireDue()
    if pick < 0.88:
        confirmed = [r for r in model.reservations if r.confirmed_ever]
        if confirmed and rng.random() < 0.9:
            reservation = rng.choice(confirmed)
            return CheckIn(domain.ticket_id_for(reservation.id, rng.randint(1, reservation.quantity)))
        return CheckIn(domain.ticket_id_for(missing, 1))
    if pick < 0.92:
        return ChangeTicketType(rng.choice(["GA", "VIP", "NOPE"]), capacity=rng.randint(0, 15))
    if pick < 0.95:
        changes = rng.choice([{"per_user_limit": rng.choice([None, 2, 4, 6, 8])}, {"hold_seconds": rng.choice([60, 300])}])
        return UpdateEvent(changes)
    if pick < 0.98:
        code = rng.choice(["GA", "VIP", "BALCONY"])
        return AddTicketType(TicketTypeDefinition(code, code, rng.randint(0, 900), rng.randint(0, 8)))
    if pick < 0.981:
        return CancelEvent()
    return ExpireDue()


def run_seed(seed: int, steps: int) -> None:
    rng = random.Random(seed)
    definition = random_event(rng)
    inventory = Inventory(EVENT_ID)
    decision = inventory.decide(CreateEvent(definition), START)
    committed: list[tuple[int, domain.Record]] = []
    for record in decision.records:
        inventory.apply(inventory.last_seq + 1, record)
        committed.append((inventory.last_seq, record))
    model = Model(
        capacity={t.code: t.capacity for t in definition.ticket_types},
        price={t.code: t.price for t in definition.ticket_types},
        per_user_limit=definition.per_user_limit,
        hold=timedelta(seconds=definition.hold_seconds),
        sale_starts_at=definition.sale_starts_at,
        sale_ends_at=definition.sale_ends_at,
        cancel_until=definition.cancel_until,
    )
    now = START
    step = 0
    while step < steps:
        now += timedelta(seconds=rng.choice([0, 0, 1, 5, 30, 120]))
        batch = [random_command(rng, now, model) for _ in range(rng.randint(1, 8))]
        step += len(batch)
        fails = rng.random() < 0.15
        model_before = copy.deepcopy(model)
        inventory.begin()
        batch_records: list[tuple[int, domain.Record]] = []
        for command in batch:
            decision = inventory.decide(command, now)
            for record in decision.records:
                inventory.apply(inventory.last_seq + 1, record)
                batch_records.append((inventory.last_seq, msgspec.json.decode(msgspec.json.encode(record), type=domain.Record)))
            expected = model.handle(command, now)
            reply = decision.reply
            actual = (reply.code, None) if isinstance(reply, Rejected) else ("accepted", reply.reservation_id)
            assert isinstance(reply, Accepted | Rejected)
            assert actual == expected, f"step {step}: {command!r}: inventory {actual} != model {expected}"
        if fails:
            inventory.rollback()
            model = model_before
        else:
            inventory.commit()
            committed.extend(batch_records)
        assert observe(inventory) == observe_model(model), f"step {step}: state differs from the model"
        inventory.check_invariants()
    replayed = Inventory.replay(EVENT_ID, committed)
    assert observe(replayed) == observe(inventory)
    # From a snapshot taken halfway, plus the records after it: the same state again.
    halfway = len(committed) // 2
    middle = Inventory.replay(EVENT_ID, committed[:halfway])
    resumed = Inventory.replay(EVENT_ID, committed[halfway:], snapshot=middle.snapshot())
    assert observe(resumed) == observe(inventory)
    def nonzero(seats: dict[str, int]) -> dict[str, int]:
        return {user: count for user, count in seats.items() if count}

    assert nonzero(resumed.seats_by_user) == nonzero(inventory.seats_by_user)
    assert resumed.last_seq == inventory.last_seq and resumed.next_expiry() == inventory.next_expiry()
    assert replayed.last_seq == inventory.last_seq
    assert replayed.seats_by_user == inventory.seats_by_user


@pytest.mark.parametrize("seed", SEEDS)
def test_inventory_agrees_with_the_reference_model(seed: int) -> None:
    try:
        run_seed(seed, STEPS_PER_SEED)
    except AssertionError as error:
        raise AssertionError(f"{error}\nreplay with INVENTORYD_MODEL_SEED={seed}") from error


def test_apply_refuses_an_impossible_record() -> None:
    inventory = Inventory(EVENT_ID)
    definition = random_event(random.Random(1))
    inventory.apply(1, domain.EventCreated(definition))
    code = definition.ticket_types[0].code
    capacity = definition.ticket_types[0].capacity
    oversell = domain.ReservationHeld("rsv_model_1", "u", code, capacity + 1, 0, START, START)
    with pytest.raises(domain.InvariantViolation):
        inventory.apply(2, oversell)
    with pytest.raises(domain.InvariantViolation):
        inventory.apply(5, domain.HoldExpired("rsv_model_1", START))  # a gap in the sequence


def test_ids_route_to_their_event() -> None:
    reservation_id = domain.reservation_id_for("evt_abc123", 7)
    ticket_id = domain.ticket_id_for(reservation_id, 2)
    assert domain.event_id_of(reservation_id) == "evt_abc123"
    assert domain.event_id_of(ticket_id) == "evt_abc123"
    assert domain.reservation_id_of_ticket(ticket_id) == reservation_id
    assert domain.event_id_of("garbage") is None
    assert domain.event_id_of("rsv_../etc_1") is None


def test_the_inventory_state_is_invisible_to_the_cyclic_collector() -> None:
    # A full collection during an on-sale must not walk every reservation: the domain's values are
    # immutable and untracked (gc=False); only the inventory's containers are tracked.
    import gc

    inventory = Inventory(EVENT_ID)
    definition = msgspec.structs.replace(
        random_event(random.Random(2)), ticket_types=(TicketTypeDefinition("GA", "GA", 1000, 10),)
    )
    inventory.apply(1, domain.EventCreated(definition))
    code = "GA"
    inventory.apply(2, domain.ReservationHeld("rsv_model_1", "u", code, 2, 0, START, START))
    inventory.apply(3, domain.ReservationConfirmed("rsv_model_1", START))
    reservation = inventory.reservations["rsv_model_1"]
    assert len(reservation.tickets) == 2
    assert not gc.is_tracked(reservation)
    assert not gc.is_tracked(definition)
    assert not gc.is_tracked(domain.ReservationHeld("rsv_model_2", "u", code, 1, 0, START, START))
