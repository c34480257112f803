"""What authentication and rate limits cost on the hot path, counted in instructions.

    python -m loadtests.auth_cost [--requests 3000] [--concurrency 32] [--events 1]

`inventoryd serve` runs under valgrind's callgrind twice on one embedded PostgreSQL: open
(INVENTORYD_AUTH=off, INVENTORYD_RATE_LIMITS=off) and as shipped, called with a service token.
The same client sends the same number of reservations to one hot event (or spread over
--events events); callgrind counts only
the measured window (instrumentation is switched on and off with `callgrind_control`). Printed: instructions the
server executed per reservation, each way, as counted and less its idle work (lease renewals, the
shard map, sweepers: counted alone for IDLE_WINDOW_S before the load, at so much a second, and
taken out for the window's length, which valgrind stretches ~50x), and the difference.

Why instructions: throughput with wrk on this 2-core machine, shared by wrk, the server and
PostgreSQL, varies by ±15% between identical runs, more than the few percent to be measured.
An instruction count is repeatable to a fraction of a percent. Valgrind makes the server ~50x
slower, so both runs are equally saturated by the client, and batches form alike.
Everything stays on 127.0.0.1 and the servers are stopped by their PID.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from loadtests.bench import (
    ADMIN_TOKEN,
    ROOT,
    callgrind_totals,
    create_database,
    free_port,
    make_service_token,
    scratch_postgres,
    setup_inventoryd,
)

# Python's imports alone take ~30 s under valgrind.
VALGRIND_READY_TIMEOUT_S = 300.0
WARMUP_REQUESTS = 200
# How long a server's idle work (lease renewals, the shard map, the sweepers) is counted alone.
IDLE_WINDOW_S = 5.0


@dataclass(frozen=True)
class Window:
    """What callgrind counted while `created` reservations were made over `seconds`, and the
    server's idle rate just before: under valgrind a window lasts ~50x longer than it would, and
    idle work paid by the second would count ~50x what it weighs in service."""

    instructions: int
    created: int
    seconds: float
    idle_per_s: float

    @property
    def per_reservation(self) -> float:
        return self.instructions / self.created

    @property
    def per_reservation_less_idle(self) -> float:
        return (self.instructions - self.idle_per_s * self.seconds) / self.created


async def counted_window(pid: int, out_file: Path, load: Callable[[], Awaitable[int]]) -> Window:
    """Idle for IDLE_WINDOW_S, then `load()` (returns the reservations it made), counted apart by
    the callgrind of process `pid` writing `out_file` (started with --instr-atstart=no)."""
    callgrind_control("--instr=on", str(pid))
    began = time.monotonic()
    await asyncio.sleep(IDLE_WINDOW_S)
    callgrind_control("--dump", str(pid))
    idle_per_s = callgrind_totals(out_file_of_dump(out_file)) / (time.monotonic() - began)
    callgrind_control("--zero", str(pid))
    began = time.monotonic()
    created = await load()
    seconds = time.monotonic() - began
    callgrind_control("--dump", str(pid))
    callgrind_control("--instr=off", str(pid))
    return Window(callgrind_totals(out_file_of_dump(out_file)), created, seconds, idle_per_s)


def out_file_of_dump(out_file: Path) -> Path:
    """The file `callgrind_control --dump` wrote last beside `out_file` (callgrind numbers each dump)."""
    dumps = sorted(out_file.parent.glob(out_file.name + ".*"), key=lambda path: path.stat().st_mtime)
    if not dumps:
        raise RuntimeError(f"no dump beside {out_file}")
    return dumps[-1]


async def drive(base: str, event_ids: list[str], token: str, requests: int, concurrency: int, offset: int) -> int:
    """`requests` reservations from `concurrency` buyers; returns how many were answered 201."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    created = 0
    numbers = iter(range(offset, offset + requests))

    async def buyer(session: aiohttp.ClientSession) -> None:
        nonlocal created
        for number in numbers:
            body = {"ticket_type": "GA", "quantity": 1, "user_id": f"u{number}"}
            event_id = event_ids[number % len(event_ids)]
            async with session.post(f"{base}/v1/events/{event_id}/reservations", json=body, headers=headers) as response:
                await response.read()
                created += response.status == 201

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        await asyncio.gather(*(buyer(session) for _ in range(concurrency)))
    return created


def callgrind_control(*arguments: str) -> None:
    subprocess.run(["callgrind_control", *arguments], check=True, capture_output=True, timeout=120)


async def measure(mode: str, admin_url: str, scratch: Path, args: argparse.Namespace) -> Window:
    """What one server's measured window counted."""
    database_url = await create_database(admin_url, f"auth_cost_{mode}")
    port = free_port()
    out_file = scratch / f"callgrind.{mode}.out"
    env = {
        **os.environ,
        "INVENTORYD_LOG_FORMAT": "json",
        "INVENTORYD_ADMIN_TOKEN": ADMIN_TOKEN,
        "INVENTORYD_DRAIN_GRACE_S": "0",
    }
    if mode == "open":
        env |= {"INVENTORYD_AUTH": "off", "INVENTORYD_RATE_LIMITS": "off"}
    token = make_service_token(database_url) if mode == "secured" else ""
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out_file}",
         sys.executable, "-m", "inventoryd", "serve", "--port", str(port), "--database-url", database_url],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + VALGRIND_READY_TIMEOUT_S
        while True:
            try:
                event_ids = await setup_inventoryd(base, args.events)
                break
            except aiohttp.ClientConnectionError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"inventoryd under valgrind did not start ({mode})") from None
                await asyncio.sleep(1)
        await drive(base, event_ids, token, WARMUP_REQUESTS, args.concurrency, 0)
        return await counted_window(
            server.pid, out_file, lambda: drive(base, event_ids, token, args.requests, args.concurrency, WARMUP_REQUESTS)
        )
    finally:
        server.terminate()
        server.wait(timeout=120)


async def run(args: argparse.Namespace, admin_url: str, scratch: Path) -> None:
    results = {}
    for mode in ("open", "secured"):
        window = await measure(mode, admin_url, scratch, args)
        if window.created != args.requests:
            raise RuntimeError(f"{mode}: {window.created} of {args.requests} reservations were created")
        results[mode] = window.per_reservation_less_idle
        print(
            f"{mode:8} {window.created:,} reservations, {window.instructions:,} instructions:"
            f" {window.per_reservation:,.0f} per reservation as counted, {results[mode]:,.0f} less idle"
            f" ({window.idle_per_s:,.0f}/s over {window.seconds:.1f} s)",
            flush=True,
        )
    extra = results["secured"] - results["open"]
    print(
        f"authentication + rate limits: {extra:+,.0f} instructions per reservation (less idle), "
        f"{100 * extra / results['open']:+.1f}% of the open server's"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--events", type=int, default=1)
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("needs valgrind (apt install valgrind)")
    with scratch_postgres("inventoryd-auth-cost-") as (embedded, scratch):
        asyncio.run(run(args, embedded.dsn("postgres"), scratch))


if __name__ == "__main__":
    main()
