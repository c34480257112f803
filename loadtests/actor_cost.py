"""What an event actor costs per reservation, with the database taken out: the actors' own work.

    python -m loadtests.actor_cost [--events 1000] [--buyers 64] [--reservations 30000] [--callgrind]

--buyers coroutines reserve one seat at a time, at one hot event and spread over --events events,
through real `EventActor`s (decide, apply with the undo log, invariants, records encoded, replies,
view, expiry timer, snapshot check) whose journal is a stand-in that takes every waiting append
once per loop turn, as the real journal's writer does, and commits nothing: what is left is the
actor's work and the asyncio hand-offs around it. Printed: CPU µs per reservation; with
--callgrind, instructions per reservation, counted by valgrind over two runs of different sizes
(the difference, so that start-up and event creation cancel out): repeatable to a fraction of a
percent where CPU time on this shared machine is not.

Over many events every batch holds one reservation, so the difference between the two scenarios
is what a batch costs beyond its messages.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import structlog
import uvloop

from inventoryd.actor import EventActor
from inventoryd.domain import EventDefinition, Inventory, TicketTypeDefinition
from inventoryd.registry import new_event_id
from loadtests import bench
from persistence.journal import Append

ROOT = Path(__file__).resolve().parent.parent


class StandInJournal:
    """Takes the appends waiting at each turn of the loop (calling `before_write`, as the writer
    does) and answers them all at the next; stores nothing."""

    def __init__(self) -> None:
        self._pending: list[Append] = []
        self._wakeup: asyncio.Future[None] | None = None

    async def append(self, batch: Append) -> None:
        batch.future = asyncio.get_running_loop().create_future()
        self._pending.append(batch)
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)
        await batch.future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wakeup = loop.create_future()
                await self._wakeup
                continue
            await asyncio.sleep(0)  # the "commit": one turn of the loop
            taken, self._pending = self._pending, []
            for batch in taken:
                if batch.before_write is not None:
                    batch.before_write()
            for batch in taken:
                assert batch.future is not None
                batch.future.set_result(None)


async def _no_snapshot_store(event_id: str, seq: int, state: bytes) -> None:
    """Snapshots are encoded as in service (that is the actor's work) but not stored."""


async def measure(events: int, buyers: int, reservations: int) -> float:
    """CPU µs per reservation."""
    journal = StandInJournal()
    tasks = [asyncio.create_task(journal.run())]
    actors = []
    for index in range(events):
        event_id = new_event_id()
        actor = EventActor(event_id, journal, Inventory(event_id), write_snapshot=_no_snapshot_store)  # type: ignore[arg-type]
        actor.start()
        tasks.append(asyncio.create_task(actor.run()))
        await actor.create(
            EventDefinition(
                id=event_id,
                name=f"actor cost {index}",
                starts_at=datetime(2027, 6, 1, 19, tzinfo=UTC),
                currency="EUR",
                ticket_types=(TicketTypeDefinition("GA", "GA", 1000, 10 * reservations),),
                created_at=datetime.now(UTC),
            )
        )
        actors.append(actor)
    numbers = itertools.count()
    rng = random.Random(7)
    left = reservations

    async def buyer() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            outcome = await actors[rng.randrange(events)].reserve(f"u{next(numbers)}", "GA", 1)
            assert outcome.result is not None

    cpu_before = time.process_time()
    await asyncio.gather(*(buyer() for _ in range(buyers)))
    cpu = time.process_time() - cpu_before
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return cpu * 1e6 / reservations


def instructions(events: int, buyers: int, reservations: int) -> int:
    """Instructions this measurement executes, counted by callgrind (the whole process)."""
    with tempfile.TemporaryDirectory(prefix="inventoryd-actor-cost-") as scratch:
        out = Path(scratch) / "callgrind.out"
        subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m", "loadtests.actor_cost",
             "--events", str(events), "--buyers", str(buyers), "--reservations", str(reservations), "--once"],
            cwd=ROOT, check=True, capture_output=True, timeout=3600,
        )
        return bench.callgrind_totals(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--buyers", type=int, default=64)
    parser.add_argument("--reservations", type=int, default=30_000)
    parser.add_argument("--callgrind", action="store_true", help="count instructions with valgrind instead of timing")
    parser.add_argument("--once", action="store_true", help=argparse.SUPPRESS)  # one measurement, under callgrind
    args = parser.parse_args()
    assert 1 <= args.events <= 100_000 and 1 <= args.buyers <= 1024 and 1_000 <= args.reservations <= 10_000_000
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if args.once:
        uvloop.run(measure(args.events, args.buyers, args.reservations))
        return
    if args.callgrind and shutil.which("valgrind") is None:
        raise SystemExit("needs valgrind (apt install valgrind)")
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {args.buyers} buyers, {args.reservations:,} reservations, stand-in journal")
    unit = "instructions" if args.callgrind else "CPU µs"
    print(f"| scenario | {unit} per reservation |")
    print("|---|---:|")
    for scenario, events in (("hot", 1), ("spread", args.events)):
        if args.callgrind:
            small = instructions(events, args.buyers, args.reservations // 3)
            large = instructions(events, args.buyers, args.reservations)
            figure = f"{(large - small) / (args.reservations - args.reservations // 3):,.0f}"
        else:
            figure = f"{uvloop.run(measure(events, args.buyers, args.reservations)):.1f}"
        print(f"| {scenario} | {figure} |", flush=True)


if __name__ == "__main__":
    main()
