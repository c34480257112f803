"""The waiting room under a crowd: joins per second, what a join flood costs the event's reserves,
the memory of its waiting users, and the gate's cost.

    python -m loadtests.queue_bench [--duration 8] [--connections 64]

One `inventoryd serve` as shipped (authentication and rate limits on, no access lines) on a
scratch PostgreSQL, one event with a waiting room whose sale has started (joins go to the back of
the line, admissions run at 600 a minute). Measured with wrk, `--duration` each, in one run:
1. joins: `POST /v1/events/{id}/queue` for a new user each time (a service token);
2. reserves on the same event (an admin token, which the gate lets through: the actor's work, not
   the gate's), alone and then with the join flood running beside them on half the connections;
3. the server's resident memory before the joins and after (per waiting user).
And the gate's own cost: one admission token checked, counted in instructions by callgrind (the
difference of two runs of a loop of checks).
Everything stays on 127.0.0.1; the server is stopped by its PID.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from loadtests import bench
from loadtests.catalogue_bench import Serve, _ready

HERE = Path(__file__).resolve().parent
GATE_CHECKS = (20_000, 60_000)


async def _event(base: str) -> str:
    now = datetime.now(UTC)
    body: dict[str, Any] = {
        "name": "queue bench",
        "starts_at": (now + timedelta(days=30)).isoformat(),
        "currency": "EUR",
        "sale_starts_at": (now - timedelta(minutes=1)).isoformat(),
        "ticket_types": [{"code": "GA", "name": "GA", "price": 1000, "capacity": bench.HUGE_CAPACITY}],
        "queue": {"opens_at": (now - timedelta(hours=1)).isoformat(), "admit_per_minute": 600, "admission_seconds": 600},
    }
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {bench.ADMIN_TOKEN}"}) as session:
        await _ready(session, base)
        async with session.post(f"{base}/v1/events", json=body) as response:
            assert response.status == 201, await response.text()
            event_id: str = (await response.json())["id"]
    return event_id


def _row(what: str, stats: dict[str, float]) -> None:
    rate, p50, p99 = stats["requests_per_s"], stats["p50_ms"], stats["p99_ms"]
    print(f"| {what} | {rate:,.0f} | {p50:.2f} | {p99:.2f} | {stats['non_2xx']:.0f} |", flush=True)


async def run(args: argparse.Namespace, admin_url: str, scratch: Path) -> None:
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, wrk -c{args.connections} {args.duration} s each")
    database_url = await bench.create_database(admin_url, "queue_bench")
    server = Serve(HERE.parent, bench.free_port(), database_url)
    try:
        event_id = await _event(server.base)
        token = bench.make_service_token(database_url)
        events_file = scratch / "events.txt"
        events_file.write_text(event_id + "\n")
        print("| requests | per second | p50 ms | p99 ms | non-2xx |")
        print("|---|---:|---:|---:|---:|")
        alone = bench.wrk("wrk_reserve.lua", server.base, args.duration, args.connections, str(events_file), bench.ADMIN_TOKEN)
        _row("reserves alone", alone)
        rss_before = server.rss_mib()
        joins = bench.wrk("wrk_join.lua", server.base, args.duration, args.connections, event_id, token)
        _row("joins", joins)
        rss_after = server.rss_mib()
        flood: dict[str, dict[str, float]] = {}
        half = max(1, args.connections // 2)
        thread = threading.Thread(
            target=lambda: flood.update(joins=bench.wrk("wrk_join.lua", server.base, args.duration, half, event_id, token))
        )
        thread.start()
        beside = bench.wrk("wrk_reserve.lua", server.base, args.duration, half, str(events_file), bench.ADMIN_TOKEN)
        thread.join()
        _row(f"reserves beside a join flood ({half} + {half} connections)", beside)
        _row("  the join flood beside them", flood["joins"])
        admin = {"Authorization": f"Bearer {bench.ADMIN_TOKEN}"}
        async with aiohttp.ClientSession(headers=admin) as session, session.get(f"{server.base}/v1/events/{event_id}/queue") as response:
            line = await response.json()
        first_joins = max(1.0, joins["requests_per_s"] * args.duration)
        ratio = beside["requests_per_s"] / alone["requests_per_s"]
        print(f"reserves with the flood beside them: {ratio:.2f} of alone (on half the connections)")
        per_user = (rss_after - rss_before) * 1024 * 1024 / first_joins
        print(f"RSS {rss_before:.0f} -> {rss_after:.0f} MiB over the first ~{first_joins:,.0f} joins"
              f" ({per_user:,.0f} bytes per waiting user); {line['joined']:,} joined in all")  # fmt: skip
    finally:
        server.stop()
    print(f"the gate: {gate_instructions():,.0f} instructions per token checked (callgrind)")


_GATE_LOOP = """
import sys
from datetime import UTC, datetime, timedelta
from inventoryd.http import admission
key = b"k" * 32
now = datetime.now(UTC)
token = admission.sign(key, "evt_abcdefghijklmnop", "user-123", now + timedelta(minutes=10))
for _ in range(int(sys.argv[1])):
    assert admission.check(key, token, "evt_abcdefghijklmnop", "user-123", now) is None
"""


def gate_instructions() -> float:
    counts = []
    with tempfile.TemporaryDirectory() as scratch:
        for checks in GATE_CHECKS:
            out = Path(scratch) / f"gate.{checks}.out"
            subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-c", _GATE_LOOP, str(checks)],
                cwd=HERE.parent, check=True, capture_output=True, timeout=1800,
            )  # fmt: skip
            counts.append(bench.callgrind_totals(out))
    return (counts[1] - counts[0]) / (GATE_CHECKS[1] - GATE_CHECKS[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    assert 1 <= args.duration <= 120 and 2 <= args.connections <= 1024
    started = time.perf_counter()
    with bench.scratch_postgres("inventoryd-queue-bench-") as (server, scratch):
        uvloop.run(run(args, server.dsn("postgres"), scratch))
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
