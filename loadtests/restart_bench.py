"""Restart and memory benchmark: how long recovery takes, and what the actors cost in memory.

    python -m loadtests.restart_bench [--events 1000] [--records-per-event 1000] [--idle-events 100000]

1. A log of events × records-per-event records (event_created, then reservation_held records) is
   written straight into PostgreSQL with SQL (generating it through the API would take minutes), in
   exactly the encoding the service writes. Then the registry recovers it twice, in-process: first
   from the log alone (a full replay; it writes snapshots as it finishes), then from the snapshots.
   Reported for each: seconds to ready (the events are known: requests are served from then on),
   how long a request then waits for the event the background rebuild comes to last, and seconds
   until every actor is rebuilt; and the process's RSS (after recovery, collected and frozen as
   `inventoryd serve` does).
2. Memory: --idle-events events with a handful of records each, recovered; RSS per event.
Runs on its own embedded PostgreSQL in a temporary directory, which it removes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import msgspec

from inventoryd.cli import freeze_after_recovery
from inventoryd.domain import EventCreated, EventDefinition, TicketTypeDefinition
from loadtests import bench
from loadtests.core import local_core
from persistence.journal import connect
from persistence.migrate import migrate


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def write_log(url: str, events: int, records_per_event: int, prefix: str) -> list[str]:
    """Write the log; returns the event ids, in order."""
    connection = await connect(url)
    try:
        await migrate(connection)
        created = datetime(2026, 1, 1, tzinfo=UTC)
        rows = []
        for index in range(events):
            key = f"{prefix}{index:07d}"
            definition = EventDefinition(
                id=f"evt_{key}",
                name=f"Bench {index}",
                starts_at=datetime(2027, 6, 1, 19, tzinfo=UTC),
                currency="EUR",
                ticket_types=(TicketTypeDefinition("GA", "GA", 100, records_per_event * 2),),
                created_at=created,
            )
            rows.append((definition.id, key, msgspec.json.encode(EventCreated(definition))))
        await connection.executemany(
            "INSERT INTO journal (event_id, seq, kind, body) VALUES ($1, 1, 'event_created', $2)",
            [(event_id, body) for event_id, _, body in rows],
        )
        await connection.executemany(
            "INSERT INTO events (event_id, name, starts_at, status, created_at) VALUES ($1, $2, '2027-06-01T19:00:00Z', 'on_sale', now())",
            [(event_id, f"Bench {event_id}") for event_id, _, _ in rows],
        )
        if records_per_event > 1:
            # The same JSON the service writes for ReservationHeld (msgspec's field order).
            await connection.execute(
                """
                INSERT INTO journal (event_id, seq, kind, body)
                SELECT 'evt_' || k.key, g, 'reservation_held',
                       ('{"type":"reservation_held","reservation_id":"rsv_' || k.key || '_' || (g - 1)
                        || '","user_id":"u' || g || '","ticket_type":"GA","quantity":1,"amount":100,'
                        || '"at":"2026-06-01T00:00:00Z","expires_at":"2099-01-01T00:00:00Z"}')::json
                FROM unnest($1::text[]) AS k(key), generate_series(2, $2::int) AS g
                """,
                [key for _, key, _ in rows],
                records_per_event,
            )
        await connection.execute("VACUUM ANALYZE journal")
        return [event_id for event_id, _, _ in rows]
    finally:
        await connection.close()


@dataclass(frozen=True)
class Restart:
    ready_s: float  # until the service answers (it knows every event)
    first_request_s: float  # then, until the actor of the event the background reaches last is served
    all_rebuilt_s: float  # until every actor is rebuilt
    records: int  # log records replayed (after snapshots)
    actors: int

    def line(self) -> str:
        return (
            f"ready in {self.ready_s:.2f} s; the last event's actor on demand {self.first_request_s * 1000:.0f} ms"
            f" later; every actor rebuilt in {self.all_rebuilt_s:.2f} s; replayed {self.records:,} records,"
            f" {self.actors:,} actors"
        )


async def recover(url: str, last_event: str) -> Restart:
    """Start a registry on the log as `serve` does, and as soon as it is ready, ask for the actor
    of `last_event`, which its background rebuild comes to last (an event not yet rebuilt)."""
    async with local_core(url, pool_size=10, start=False) as running:
        registry = running.registry
        started = time.perf_counter()
        recovery = asyncio.create_task(registry.start())
        try:
            while not registry.ready:
                await asyncio.sleep(0.0005)
            ready_s = time.perf_counter() - started
            asked = time.perf_counter()
            assert await registry.actor(last_event) is not None
            first_request_s = time.perf_counter() - asked
            await recovery
            return Restart(
                ready_s, first_request_s, registry.stats.recovery_seconds, registry.stats.recovered_records, len(registry.actors())
            )
        finally:
            recovery.cancel()


async def serve_restart(url: str, last_event: str) -> str:
    """What an operator sees: `inventoryd serve` started on the log (as a process, on loopback),
    until /readyz says 200, and until `last_event`, which the background reaches last, answers."""
    port = bench.free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"INVENTORYD_AUTH": "off", "INVENTORYD_RATE_LIMITS": "off", "INVENTORYD_LOG_FORMAT": "json"}
    started = time.perf_counter()
    server = bench.Server([sys.executable, "-m", "inventoryd", "serve", "--port", str(port), "--database-url", url], port, env)
    try:
        async with aiohttp.ClientSession() as session:
            while True:
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with session.get(f"{base}/readyz") as response:
                        if response.status == 200:
                            break
                if time.perf_counter() - started > bench.READY_TIMEOUT_S:
                    raise RuntimeError("inventoryd did not become ready")
                await asyncio.sleep(0.005)
            ready_s = time.perf_counter() - started
            async with session.get(f"{base}/v1/events/{last_event}/availability") as response:
                assert response.status == 200, await response.text()
            answered_s = time.perf_counter() - started
    finally:
        server.stop()
    return f"/readyz 200 {ready_s:.2f} s after the process started; the last event's availability answered at {answered_s:.2f} s"


async def main(arguments: argparse.Namespace, url_of: dict[str, str]) -> None:
    started = time.perf_counter()
    last_event = (await write_log(url_of["restart"], arguments.events, arguments.records_per_event, "r"))[-1]
    total = arguments.events * arguments.records_per_event
    print(f"wrote {total:,} records over {arguments.events:,} events in {time.perf_counter() - started:.1f} s", flush=True)
    first = await recover(url_of["restart"], last_event)
    print(f"first start (no snapshots, then snapshots written): {first.line()}, RSS {rss_mib():.0f} MiB", flush=True)
    second = await recover(url_of["restart"], last_event)
    print(f"second start (from snapshots): {second.line()}", flush=True)
    print(f"`inventoryd serve` on that log: {await serve_restart(url_of['restart'], last_event)}", flush=True)
    if arguments.idle_events:
        await write_log(url_of["memory"], arguments.idle_events, 3, "m")
        before = rss_mib()
        async with local_core(url_of["memory"], pool_size=10) as running:
            registry = running.registry
            freeze_after_recovery()
            after = rss_mib()
            print(
                f"{arguments.idle_events:,} events: ready in {registry.stats.ready_seconds:.2f} s, every actor rebuilt in"
                f" {registry.stats.recovery_seconds:.2f} s: RSS {after:.0f} MiB"
                f" ({(after - before) * 1024 / arguments.idle_events:.1f} KiB per event)",
                flush=True,
            )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--records-per-event", type=int, default=1000)
    parser.add_argument("--idle-events", type=int, default=100_000)
    arguments = parser.parse_args()
    with bench.scratch_postgres("inventoryd-restart-bench-") as (server, _):
        admin = server.dsn("postgres")

        async def databases() -> dict[str, str]:
            connection = await connect(admin)
            try:
                for name in ("restart", "memory"):
                    await connection.execute(f'CREATE DATABASE "bench_{name}"')
            finally:
                await connection.close()
            return {name: server.dsn(f"bench_{name}") for name in ("restart", "memory")}

        urls = asyncio.run(databases())
        import uvloop  # noqa: PLC0415 - the benchmark's own loop, imported where it is used

        uvloop.run(main(arguments, urls))


if __name__ == "__main__":
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores")
    cli()
