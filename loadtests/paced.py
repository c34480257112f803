"""Latency as buyers feel it: reserves at a steady rate (half the peak, by default), not a flood.

    python -m loadtests.paced [--duration 15] [--events 1000] [--scenarios hot,spread] [--rate R]
                              [--share 0.5]

Per scenario (every reservation at one hot event, or spread over --events events), one
`inventoryd serve` as shipped (a service token, authentication and rate limits on) on a throwaway
embedded PostgreSQL:

1. the peak: wrk with 64 connections for PEAK_S seconds (loadtests/wrk_reserve.lua), unless --rate;
2. the paced run: reservations sent open-loop at --share of that peak for --duration seconds.
   Request i is due at start + i/rate whether or not earlier ones have been answered, and its
   latency is counted from when it was due, not from when it could be sent: a server that stalls
   is charged for every buyer who would have arrived meanwhile (no coordinated omission).

Reported: the rate asked and the rate answered, p50 / p99 / p99.9 / max of the latency, answers
other than 201, WAL syncs per accepted reservation (pg_stat_wal), the server's CPU busy, and how
late this client itself was in sending (its lag: if that is large, the client, not the server, is
the bottleneck, and the run says so). The client is one Python process with uvloop on the same
two cores as the server and PostgreSQL: at a few thousand requests a second it takes a share of
them, which the server's busy figure shows. All on 127.0.0.1, bounded by --duration and the
requests' timeout; the server is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import uvloop

from inventoryd.http.peers import PeerLost, Peers, PeerUnreachable
from inventoryd.limits import PEER_CONNECTIONS_PER_NODE_MAX
from loadtests.bench import (
    ADMIN_TOKEN,
    Server,
    counters,
    create_database,
    free_port,
    make_service_token,
    process_cpu_seconds,
    run_wrk,
    scratch_postgres,
    setup_inventoryd,
    wait_listening,
    wal_sync_change,
)

PEAK_S = 5
PEAK_CONNECTIONS = 64
WARMUP_S = 2.0
REQUEST_TIMEOUT_S = 10.0
# The scheduler wakes this often and sends every request due by then.
TICK_S = 0.001
# A run whose client was later than this in sending (p99 of its lag) says its figures are the client's.
CLIENT_LAG_WARNING_MS = 2.0


@dataclass
class Paced:
    scenario: str
    peak_per_s: float
    rate_per_s: float
    answered_per_s: float
    latencies_ms: list[float]
    statuses: dict[int, int]
    wal_syncs_per_accepted: float | None
    server_busy: float
    client_lag_p99_ms: float

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return math.nan
        return ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)]


async def paced_load(
    base: str, ids: list[str], token: str, rate_per_s: float, duration_s: float, first: int
) -> tuple[list[float], dict[int, int], list[float]]:
    """Open-loop reserves at `rate_per_s` for `duration_s`: (latencies from each request's due
    time, in ms; answers by status, 0 for no answer; the client's lag in sending, in ms).

    The client is the nodes' own (inventoryd.http.peers: one write per request on pooled
    keep-alive connections, at most PEER_CONNECTIONS_PER_NODE_MAX), which costs this process a
    fraction of what aiohttp's client would on the cores it shares with the server."""
    latencies: list[float] = []
    lags: list[float] = []
    statuses: dict[int, int] = {}
    rng = random.Random(first)
    host = base.partition("://")[2]
    prefix = f"Host: {host}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n".encode()
    peers = Peers()

    async def reserve(number: int, due: float) -> None:
        lags.append((time.perf_counter() - due) * 1000)
        body = b'{"ticket_type":"GA","quantity":1,"user_id":"p%d"}' % number
        head = b"POST /v1/events/%s/reservations HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n" % (
            rng.choice(ids).encode(), prefix, len(body)
        )
        status = 0
        with contextlib.suppress(PeerUnreachable, PeerLost):
            status = (await peers.request(base, head, body)).status
        statuses[status] = statuses.get(status, 0) + 1
        if status == 201:
            latencies.append((time.perf_counter() - due) * 1000)

    tasks: set[asyncio.Task[None]] = set()
    # perf_counter, not loop.time(): uvloop's clock moves in whole milliseconds.
    started = time.perf_counter()
    total = int(rate_per_s * duration_s)
    numbers = itertools.count(first)
    sent = 0
    try:
        while sent < total:
            due_count = min(total, int((time.perf_counter() - started) * rate_per_s) + 1)
            while sent < due_count:
                task = asyncio.create_task(reserve(next(numbers), started + sent / rate_per_s))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
            await asyncio.sleep(TICK_S)
        if tasks:
            await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT_S + 2)
    finally:
        peers.close()
    return latencies, statuses, lags


async def measure(scenario: str, admin_url: str, args: argparse.Namespace, scratch: Path) -> Paced:
    events = 1 if scenario == "hot" else args.events
    database_url = await create_database(admin_url, f"paced_{scenario}")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"INVENTORYD_LOG_FORMAT": "json", "INVENTORYD_ACCESS_LOG": "0", "INVENTORYD_ADMIN_TOKEN": ADMIN_TOKEN}
    server = Server([sys.executable, "-m", "inventoryd", "serve", "--port", str(port), "--database-url", database_url], port, env)
    try:
        await wait_listening(port)
        token = make_service_token(database_url)
        ids = await setup_inventoryd(base, events)
        events_file = scratch / f"paced-{scenario}.txt"
        events_file.write_text("\n".join(ids) + "\n")
        if args.rate is None:
            peak = run_wrk(base, events_file, PEAK_S, PEAK_CONNECTIONS, token)["requests_per_s"]
        else:
            peak = args.rate / args.share
        rate = peak * args.share
        await paced_load(base, ids, token, rate, WARMUP_S, 10_000_000)
        _, wal_before = await counters(database_url)
        cpu_before = process_cpu_seconds(server.process.pid)
        began = time.monotonic()
        latencies, statuses, lags = await paced_load(base, ids, token, rate, args.duration, 0)
        elapsed = time.monotonic() - began
        cpu = process_cpu_seconds(server.process.pid) - cpu_before
        _, wal_after = await counters(database_url)
    finally:
        server.stop()
    syncs, _ = wal_sync_change(wal_before, wal_after)
    accepted = statuses.get(201, 0)
    lags.sort()
    return Paced(
        scenario=scenario,
        peak_per_s=peak,
        rate_per_s=rate,
        answered_per_s=sum(statuses.values()) / elapsed,
        latencies_ms=latencies,
        statuses=statuses,
        wal_syncs_per_accepted=syncs / accepted if accepted and wal_after is not None else None,
        server_busy=cpu / elapsed,
        client_lag_p99_ms=lags[min(len(lags) - 1, math.ceil(0.99 * len(lags)) - 1)] if lags else math.nan,
    )


def report(results: list[Paced], args: argparse.Namespace) -> str:
    lines = [
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, open-loop reserves at {args.share:.0%} of the peak for {args.duration:.0f} s,"
        f" {PEER_CONNECTIONS_PER_NODE_MAX} connections at most",
        "| scenario | peak/s (wrk) | asked/s | answered/s | p50 ms | p99 ms | p99.9 ms | max ms | not 201 |"
        " WAL syncs / accepted | server busy | client lag p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        refused = {status: count for status, count in result.statuses.items() if status != 201}
        wal = "–" if result.wal_syncs_per_accepted is None else f"{result.wal_syncs_per_accepted:.4f}"
        lines.append(
            f"| {result.scenario} | {result.peak_per_s:,.0f} | {result.rate_per_s:,.0f} | {result.answered_per_s:,.0f}"
            f" | {result.percentile(0.5):.2f} | {result.percentile(0.99):.2f} | {result.percentile(0.999):.2f}"
            f" | {max(result.latencies_ms, default=math.nan):.2f} | {refused or 0} | {wal} | {result.server_busy:.0%}"
            f" | {result.client_lag_p99_ms:.2f} |"
        )
    for result in results:
        if result.client_lag_p99_ms > CLIENT_LAG_WARNING_MS:
            lines.append(
                f"- {result.scenario}: this client sent late (p99 {result.client_lag_p99_ms:.1f} ms):"
                " part of that latency is the client's, not the server's"
            )
        if result.latencies_ms:
            mean = statistics.fmean(result.latencies_ms)
            lines.append(f"- {result.scenario}: mean {mean:.2f} ms over {len(result.latencies_ms):,} reservations")
    return "\n".join(lines)


async def run(args: argparse.Namespace, admin_url: str, scratch: Path) -> None:
    results = []
    for scenario in args.scenarios.split(","):
        result = await measure(scenario, admin_url, args, scratch)
        print(
            f"{scenario:7} asked {result.rate_per_s:,.0f}/s: p50 {result.percentile(0.5):.2f} ms,"
            f" p99 {result.percentile(0.99):.2f} ms, p99.9 {result.percentile(0.999):.2f} ms",
            flush=True,
        )
        results.append(result)
    print()
    print(report(results, args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--events", type=int, default=1000, help="events in the spread scenario")
    parser.add_argument("--scenarios", default="hot,spread")
    parser.add_argument("--share", type=float, default=0.5, help="of the peak, the rate asked")
    parser.add_argument("--rate", type=float, help="reserves a second asked (instead of a share of a measured peak)")
    args = parser.parse_args()
    if not 0 < args.share <= 1:
        parser.error("--share must be in (0, 1]")
    with scratch_postgres("inventoryd-paced-") as (embedded, scratch):
        uvloop.run(run(args, embedded.dsn("postgres"), scratch))


if __name__ == "__main__":
    main()
