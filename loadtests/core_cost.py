"""What inventoryd's core costs per reservation without HTTP, against the HTTP ceiling measured in
the same run: the bounds this puts on c/a (inventoryd / no-op) and c/b (inventoryd / FOR UPDATE
baseline) in the side-by-side benchmark.

    python -m loadtests.core_cost [--duration 8] [--buyers 64] [--events 1000]

1. (a) the no-op server of `loadtests.bench` under wrk, as there: its CPU per request is what
   aiohttp and msgspec cost to receive a reservation and answer it.
2. (b) the FOR UPDATE baseline of `loadtests.bench` under wrk, as there.
3. (core) inventoryd's registry, actors and journal in this process on the same PostgreSQL, with
   --buyers coroutines that each reserve one seat again and again (as wrk's connections do), at one
   hot event and spread over --events events: every reservation decided, appended, committed
   (group commit) and answered, as over HTTP, minus HTTP, authentication and the access line.
Reported: reservations per second, this process's CPU per reservation, PostgreSQL's CPU and WAL
syncs per reservation, and the best ratios the core allows. Even if inventoryd's HTTP work cost no
more than the no-op's whole request, and its server had a core to itself and never waited for a
commit, it would spend noop + core CPU per request: at most noop / (noop + core) of the no-op's
rate (best c/a), and 1 / (noop + core) requests per second against the baseline's measured rate
(best c/b).

With --callgrind, instead: the core's instructions per reservation (hot, and over --events events),
counted by valgrind over two runs of --reservations and a third as many (the difference), to set
beside `loadtests.auth_cost`'s whole server and the no-op's request in the same unit:

    python -m loadtests.core_cost --callgrind [--reservations 30000]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import random
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import structlog
import uvloop

from inventoryd.actor import EventActor
from inventoryd.domain import EventDefinition, TicketTypeDefinition
from inventoryd.registry import Registry, new_event_id
from loadtests import bench
from loadtests.core import local_core
from persistence.journal import connect
from persistence.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent
# One valgrind'd run of the core (a few minutes at the default size) stops here at the latest.
CALLGRIND_RUN_TIMEOUT_S = 1800


def postgres_cpu_seconds(data_dir: Path) -> float:
    """CPU time of the postmaster and every backend it forked (those alive now)."""
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    total = bench.process_cpu_seconds(postmaster)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def _create_events(registry: Registry, events: int) -> list[EventActor]:
    now = datetime.now(UTC)
    actors = []
    for index in range(events):
        definition = EventDefinition(
            id=new_event_id(),
            name=f"core {index}",
            starts_at=datetime(2027, 6, 1, 19, tzinfo=UTC),
            currency="EUR",
            ticket_types=(TicketTypeDefinition("GA", "GA", 1000, bench.HUGE_CAPACITY),),
            created_at=now,
        )
        await registry.create_event(definition)
        actor = registry.get(definition.id)
        assert actor is not None
        actors.append(actor)
    return actors


class Buyers:
    """--buyers coroutines reserving one seat at a time at random events, until a time or a count."""

    def __init__(self, actors: list[EventActor], buyers: int) -> None:
        self._actors = actors
        self._buyers = buyers
        self._numbers = itertools.count()
        self._rng = random.Random(7)
        self.done = 0

    async def run(self, *, until: float = float("inf"), count: int | None = None) -> None:
        left = count if count is not None else -1

        async def buyer() -> None:
            nonlocal left
            while left != 0 and time.perf_counter() < until:
                left -= 1
                actor = self._actors[self._rng.randrange(len(self._actors))]
                outcome = await actor.reserve(f"u{next(self._numbers)}", "GA", 1)
                assert outcome.result is not None
                self.done += 1

        await asyncio.gather(*(buyer() for _ in range(self._buyers)))


async def core(database_url: str, data_dir: Path, events: int, buyers: int, duration_s: float) -> dict[str, float]:
    await _migrate(database_url)
    async with local_core(database_url) as running:
        crowd = Buyers(await _create_events(running.registry, events), buyers)
        await crowd.run(until=time.perf_counter() + bench.WARMUP_S)
        commits_before, wal_before = await bench.counters(database_url)
        pg_before, cpu_before, done_before = postgres_cpu_seconds(data_dir), time.process_time(), crowd.done
        started = time.perf_counter()
        await crowd.run(until=started + duration_s)
        elapsed = time.perf_counter() - started
        cpu, pg = time.process_time() - cpu_before, postgres_cpu_seconds(data_dir) - pg_before
        done = crowd.done - done_before
        commits_after, wal_after = await bench.counters(database_url)
    syncs, _ = bench.wal_sync_change(wal_before, wal_after)
    return {
        "reservations_per_s": done / elapsed,
        "cpu_us": cpu * 1e6 / done,
        "postgres_cpu_us": pg * 1e6 / done,
        "transactions": (commits_after - commits_before) / done,
        "wal_syncs": syncs / done if wal_after is not None else float("nan"),
    }


async def core_once(database_url: str, events: int, buyers: int, reservations: int) -> None:
    """One counted run (under callgrind): start, `reservations` reservations, stop."""
    await _migrate(database_url)
    async with local_core(database_url) as running:
        await Buyers(await _create_events(running.registry, events), buyers).run(count=reservations)


async def _migrate(database_url: str) -> None:
    connection = await connect(database_url)
    try:
        await migrate(connection)
    finally:
        await connection.close()


def core_instructions(admin_url: str, events: int, buyers: int, reservations: int, scratch: Path) -> float:
    """Instructions per reservation of the core, counted by callgrind: the difference of a run of
    `reservations` and one of a third as many, so that start-up and event creation cancel out. The
    process runs ~50x slower under valgrind while PostgreSQL does not: batches come out smaller
    than at full speed, as they do for `loadtests.auth_cost`'s server, which is what this is set
    against."""
    counts = []
    for size in (reservations // 3, reservations):
        database_url = uvloop.run(bench.create_database(admin_url, f"core_cg_{events}_{size}"))
        out = scratch / f"callgrind.core.{events}.{size}.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-m",
                "loadtests.core_cost",
                "--once",
                database_url,
                "--events",
                str(events),
                "--buyers",
                str(buyers),
                "--reservations",
                str(size),
            ],
            cwd=ROOT,
            check=True,
            capture_output=True,
            timeout=CALLGRIND_RUN_TIMEOUT_S,
        )
        counts.append(bench.callgrind_totals(out))
    return (counts[1] - counts[0]) / (reservations - reservations // 3)


async def run(args: argparse.Namespace, admin_url: str, data_dir: Path, scratch: Path) -> None:
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, {args.buyers} buyers / wrk connections, {args.duration} s each")
    print(
        "| scenario | what | per second | CPU µs / reservation (this process) | PostgreSQL CPU µs | transactions"
        " | WAL syncs | best c/a the core allows | best c/b the core allows |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for scenario, events in (("hot", 1), ("spread", args.events)):
        noop = await bench.measure("noop", scenario, events, admin_url, args, scratch)
        baseline = await bench.measure("baseline", scenario, events, admin_url, args, scratch)
        database_url = await bench.create_database(admin_url, f"core_{scenario}")
        measured = await core(database_url, data_dir, events, args.buyers, args.duration)
        a, c = noop.server_cpu_us_per_request, measured["cpu_us"]
        best_per_s = 1e6 / (a + c)
        print(f"| {scenario} | (a) no-op over HTTP | {noop.accepted_per_s:,.0f} | {a:.0f} | – | – | – | | |")
        print(
            f"| {scenario} | (b) FOR UPDATE baseline over HTTP | {baseline.accepted_per_s:,.0f} |"
            f" {baseline.server_cpu_us_per_request:.0f} | – | {bench.fmt(baseline.transactions_per_accepted)} |"
            f" {bench.fmt(baseline.wal_syncs_per_accepted)} | | |"
        )
        print(
            f"| {scenario} | core, no HTTP | {measured['reservations_per_s']:,.0f} | {c:.0f} |"
            f" {measured['postgres_cpu_us']:.0f} | {measured['transactions']:.4f} | {measured['wal_syncs']:.4f} |"
            f" {a / (a + c):.2f} | {best_per_s / baseline.accepted_per_s:.2f} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--buyers", type=int, default=64)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--callgrind", action="store_true", help="count the core's instructions per reservation instead")
    parser.add_argument("--reservations", type=int, default=30_000, help="with --callgrind: the larger run's count")
    parser.add_argument("--once", metavar="DATABASE_URL", help=argparse.SUPPRESS)  # one counted run, under callgrind
    args = parser.parse_args()
    assert 1 <= args.duration <= 120 and 1 <= args.buyers <= 1024 and 1 <= args.events <= 100_000
    assert 3_000 <= args.reservations <= 1_000_000
    if args.once:
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
        uvloop.run(core_once(args.once, args.events, args.buyers, args.reservations))
        return
    if args.callgrind and shutil.which("valgrind") is None:
        raise SystemExit("needs valgrind (apt install valgrind)")
    args.connections, args.access_log = args.buyers, False  # what bench.measure reads
    with bench.scratch_postgres("inventoryd-core-cost-") as (server, scratch):
        if args.callgrind:
            print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {args.buyers} buyers, {args.reservations:,} reservations")
            print("| scenario | core instructions per reservation |")
            print("|---|---:|")
            for scenario, events in (("hot", 1), ("spread", args.events)):
                figure = core_instructions(server.dsn("postgres"), events, args.buyers, args.reservations, scratch)
                print(f"| {scenario} | {figure:,.0f} |", flush=True)
            return
        uvloop.run(run(args, server.dsn("postgres"), scratch / "pgdata", scratch))


if __name__ == "__main__":
    main()
