"""Deterministic simulation: the real EventActor against a journal that fails according to a seed.

Method: the simulated journal keeps the log in memory and, by the seed, delays an append (yields to
the loop), takes it (the messages queued meanwhile join it, as with the real journal), refuses it
(AppendFailed), loses it (AppendOutcomeUnknown, nothing written), or writes it and then loses the
answer (AppendOutcomeUnknown, written). Concurrent groups of seeded commands go to
the actor through its public API while a small supervisor, as the registry does, rebuilds it from
the simulated log whenever it must restart. After every group, with the actor idle: its state equals
a replay of the log, every invariant holds, and every acknowledged outcome is in the log, never
"behind" what was acknowledged. Everything runs on the event loop with a fake clock, so a failure
replays exactly from its printed seed: INVENTORYD_SIM_SEED=<seed>. INVENTORYD_SIM_MESSAGES sets the
messages per seed (CI runs 10 seeds of 1,200: 12,000 steps).
"""

from __future__ import annotations

import asyncio
import os
import random
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from inventoryd import domain
from inventoryd.actor import ActorRestartRequired, EventActor, Unavailable
from inventoryd.domain import EventDefinition, Inventory, Rejected, Reservation, TicketTypeDefinition
from persistence.journal import Append, AppendFailed, AppendOutcomeUnknown, AppendWithdrawn, LogAhead
from tests.helpers import FakeClock

SEEDS = [int(os.environ["INVENTORYD_SIM_SEED"])] if "INVENTORYD_SIM_SEED" in os.environ else list(range(10))
MESSAGES = int(os.environ.get("INVENTORYD_SIM_MESSAGES", "1200"))
EVENT_ID = "evt_simulated"
STEP = {"held": 0, "waitlisted": 0, "confirmed": 1, "expired": 2, "cancelled": 2}


class SimulatedJournal:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.log: list[tuple[int, bytes]] = []
        self.faults = {"refused": 0, "lost": 0, "written_then_lost": 0, "committed": 0}

    async def append(self, batch: Append) -> None:
        for _ in range(self.rng.randrange(3)):
            await asyncio.sleep(0)  # waiting to be taken: other callers run meanwhile
        if batch.before_write is not None and not batch.before_write():  # taken: what queued joins it
            raise AppendWithdrawn("simulated: withdrawn")
        for _ in range(self.rng.randrange(3)):
            await asyncio.sleep(0)  # a slow commit: other callers run meanwhile
        roll = self.rng.random()
        if roll < 0.07:
            self.faults["refused"] += 1
            raise AppendFailed("simulated: refused")
        if roll < 0.11:
            self.faults["lost"] += 1
            raise AppendOutcomeUnknown("simulated: lost on the way")
        last = self.log[-1][0] if self.log else 0
        if batch.kinds and batch.first_seq != last + 1:
            raise LogAhead(f"simulated: append at {batch.first_seq} after {last}")
        self.log.extend(zip(range(batch.first_seq, batch.first_seq + len(batch.kinds)), batch.bodies, strict=True))
        if roll < 0.15:
            self.faults["written_then_lost"] += 1
            raise AppendOutcomeUnknown("simulated: committed, the answer lost")
        self.faults["committed"] += 1

    def replay(self) -> Inventory:
        return Inventory.replay(EVENT_ID, [(seq, domain.RECORD_DECODER.decode(body)) for seq, body in self.log])


async def supervise(actor: EventActor, journal: SimulatedJournal, restarts: list[int]) -> None:
    """What the registry does: on a restart request, rebuild from the log and carry on."""
    while True:
        try:
            await actor.run()
        except ActorRestartRequired:
            actor.stop("restarting")
            actor.inventory = journal.replay()
            actor.start()
            restarts.append(1)


def definition(rng: random.Random, now: datetime) -> EventDefinition:
    return EventDefinition(
        id=EVENT_ID,
        name="simulated",
        starts_at=now + timedelta(days=30),
        currency="EUR",
        ticket_types=(
            TicketTypeDefinition("GA", "GA", 100, rng.randint(5, 30)),
            TicketTypeDefinition("VIP", "VIP", 900, rng.randint(0, 5)),
        ),
        created_at=now,
        per_user_limit=rng.choice([None, 3, 5]),
        hold_seconds=120,
    )


async def run_seed(seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    clock = FakeClock(datetime(2027, 1, 1, tzinfo=UTC))
    journal = SimulatedJournal(rng)
    actor = EventActor(EVENT_ID, journal, Inventory(EVENT_ID), clock)  # type: ignore[arg-type]
    actor.start()
    restarts: list[int] = []
    supervisor = asyncio.create_task(supervise(actor, journal, restarts))
    acknowledged: dict[str, str] = {}
    try:
        event = definition(rng, clock())
        while actor.view() is None:
            try:
                await actor.create(event)
            except Unavailable:
                await asyncio.sleep(0)
        sent = 0
        while sent < MESSAGES:
            group = rng.randint(1, 20)
            sent += group
            known = list(acknowledged)
            calls = []
            for _ in range(group):
                roll = rng.random()
                if roll < 0.5 or not known:
                    calls.append(
                        actor.reserve(
                            f"user{rng.randrange(8)}", rng.choice(["GA", "GA", "VIP"]), rng.randint(1, 3), waitlist=rng.random() < 0.3
                        )
                    )
                elif roll < 0.8:
                    calls.append(actor.confirm(rng.choice(known)))
                else:
                    calls.append(actor.cancel(rng.choice(known), privileged=True))
            if rng.random() < 0.1:
                clock.advance(rng.choice([30, 90, 150]))
                actor.wake_expiry()
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, Unavailable):
                    continue  # not acknowledged: it may or may not have happened
                assert not isinstance(outcome, BaseException), repr(outcome)
                result = outcome.result
                if isinstance(result, Reservation):
                    previous = acknowledged.get(result.id)
                    if previous is None or STEP[result.status] >= STEP[previous]:
                        acknowledged[result.id] = result.status
                else:
                    assert isinstance(result, Rejected), result
            while not actor.idle or not actor.running:
                await asyncio.sleep(0)
            check(actor, journal, acknowledged)
        return {"restarts": len(restarts), **journal.faults}
    finally:
        supervisor.cancel()
        await asyncio.gather(supervisor, return_exceptions=True)


def check(actor: EventActor, journal: SimulatedJournal, acknowledged: dict[str, str]) -> None:
    replayed = journal.replay()
    live = actor.inventory
    assert live.last_seq == replayed.last_seq, "memory and log disagree on the log's end"
    assert live.reservations == replayed.reservations, "memory and log disagree"
    assert {c: (t.held, t.sold, t.waiting, t.revenue) for c, t in live.ticket_types.items()} == {
        c: (t.held, t.sold, t.waiting, t.revenue) for c, t in replayed.ticket_types.items()
    }
    live.check_invariants()
    for reservation_id, status in acknowledged.items():
        logged = replayed.reservations.get(reservation_id)
        assert logged is not None, f"acknowledged {reservation_id} is not in the log"
        assert STEP[logged.status] >= STEP[status], f"{reservation_id}: acknowledged {status}, the log says {logged.status}"


SEEN_FAULTS: dict[str, int] = {}


@pytest.mark.parametrize("seed", SEEDS)
async def test_actor_under_a_failing_journal(seed: int) -> None:
    try:
        stats = await asyncio.wait_for(run_seed(seed), timeout=120)
    except AssertionError as error:
        raise AssertionError(f"{error}\nreplay with INVENTORYD_SIM_SEED={seed}") from error
    assert stats["refused"] and stats["restarts"], stats
    for name, count in stats.items():
        SEEN_FAULTS[name] = SEEN_FAULTS.get(name, 0) + count


def test_the_seeds_exercised_every_path() -> None:
    """Across the seeds, every kind of fault happened (or the simulation proves less than it says)."""
    if len(SEEDS) == 1:
        pytest.skip("one seed replayed by hand")
    assert SEEN_FAULTS, "runs after the seeds' tests"
    assert all(SEEN_FAULTS[name] for name in ("refused", "lost", "written_then_lost", "restarts", "committed")), SEEN_FAULTS


def test_simulation_is_deterministic() -> None:
    first = asyncio.run(run_seed(7))
    second = asyncio.run(run_seed(7))
    assert first == second
    assert msgspec.json.encode(first) == msgspec.json.encode(second)
