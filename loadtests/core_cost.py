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
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import time
from datetime import UTC, datetime
from pathlib import Path

import uvloop

from inventoryd.domain import EventDefinition, TicketTypeDefinition
from inventoryd.registry import Registry, new_event_id
from loadtests import bench
from persistence import store
from persistence.journal import Journal
from persistence.migrate import migrate


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


async def core(database_url: str, data_dir: Path, events: int, buyers: int, duration_s: float) -> dict[str, float]:
    connection = await store.create_pool(database_url, max_size=4)
    async with connection.acquire() as raw:
        await migrate(raw)
    journal = Journal(database_url)
    await journal.start()
    registry = Registry(journal, connection)
    await registry.start()
    now = datetime.now(UTC)
    ids = []
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
        ids.append(definition.id)
    actors = [registry.get(event_id) for event_id in ids]
    numbers = itertools.count()
    rng = random.Random(7)
    stop_at = 0.0
    done = 0

    async def buyer() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            actor = actors[rng.randrange(len(actors))]
            outcome = await actor.reserve(f"u{next(numbers)}", "GA", 1)  # type: ignore[union-attr]
            assert outcome.result is not None
            done += 1

    try:
        stop_at = time.perf_counter() + bench.WARMUP_S
        await asyncio.gather(*(buyer() for _ in range(buyers)))
        commits_before, wal_before = await bench.counters(database_url)
        pg_before, cpu_before, done = postgres_cpu_seconds(data_dir), time.process_time(), 0
        started = time.perf_counter()
        stop_at = started + duration_s
        await asyncio.gather(*(buyer() for _ in range(buyers)))
        elapsed = time.perf_counter() - started
        cpu, pg = time.process_time() - cpu_before, postgres_cpu_seconds(data_dir) - pg_before
        commits_after, wal_after = await bench.counters(database_url)
    finally:
        await registry.stop()
        await journal.close()
        await connection.close()
    syncs, _ = bench.wal_sync_change(wal_before, wal_after)
    return {
        "reservations_per_s": done / elapsed,
        "cpu_us": cpu * 1e6 / done,
        "postgres_cpu_us": pg * 1e6 / done,
        "transactions": (commits_after - commits_before) / done,
        "wal_syncs": syncs / done if wal_after is not None else float("nan"),
    }


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
    args = parser.parse_args()
    assert 1 <= args.duration <= 120 and 1 <= args.buyers <= 1024 and 1 <= args.events <= 100_000
    args.connections, args.access_log = args.buyers, False  # what bench.measure reads
    with bench.scratch_postgres("inventoryd-core-cost-") as (server, scratch):
        uvloop.run(run(args, server.dsn("postgres"), scratch / "pgdata", scratch))


if __name__ == "__main__":
    main()
