"""Webhooks against the reserve path (issue 22): hot-event reserve throughput with 0, 1 and 10
webhook endpoints subscribed to every change type, in the same run, and how far behind the
deliveries were while the load ran.

    python -m loadtests.outbox_bench [--duration 10] [--connections 64] [--endpoints 0,1,10] [--repeat 3]

Each run: a fresh database on one embedded PostgreSQL, `inventoryd serve` (a service token, auth
and rate limits on, INVENTORYD_WEBHOOKS_ALLOW_PRIVATE=1 as the receiver is on loopback), one hot
event, N endpoints on one receiver process (loadtests/webhook_receiver.py), then wrk as
loadtests.bench runs it (warm-up, then --duration). Reported per N (the median run by accepted/s):
accepted reservations per second and its ratio to N = 0, p99, WAL syncs per accepted reservation
(the outbox's own writes included), deliveries per second during the load, the delivery lag
(commit to delivered) p50/p99 of what was delivered during the load (bucket bounds of
inventoryd_outbox_delivery_lag_seconds), the backlog when the load stopped, and how long it took
to deliver the rest. Runs are interleaved (0 1 10, 10 1 0, …); every process is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from loadtests.bench import (
    ADMIN_TOKEN,
    WARMUP_S,
    WRK_THREADS,
    Server,
    count_rows,
    counters,
    create_database,
    free_port,
    make_service_token,
    run_wrk,
    setup_inventoryd,
    wait_listening,
    wal_sync_change,
)
from persistence.embedded import EmbeddedPostgres

TYPES = [
    "reservation.held", "reservation.confirmed", "reservation.cancelled", "reservation.expired", "event.updated",
    "event.cancelled", "ticket.checked_in",
]
CATCH_UP_S_MAX = 300.0
LAG_METRIC = "inventoryd_outbox_delivery_lag_seconds_bucket"


@dataclass
class Run:
    endpoints: int
    accepted_per_s: float
    p99_ms: float
    wal_syncs_per_accepted: float | None
    deliveries_per_s: float
    lag_p50_s: float | None
    lag_p99_s: float | None
    backlog_at_end: int
    catch_up_s: float | None


async def scrape(session: aiohttp.ClientSession, base: str) -> dict[str, float]:
    async with session.get(f"{base}/metrics") as response:
        text = await response.text()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("inventoryd_outbox") and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def lag_quantile(before: dict[str, float], after: dict[str, float], quantile: float) -> float | None:
    """The upper bound of the bucket holding `quantile` of the lags observed between two scrapes."""
    buckets = sorted(
        ((float("inf") if 'le="+Inf"' in name else float(name.split('le="')[1].split('"')[0]), after[name] - before.get(name, 0.0))
         for name in after if name.startswith(LAG_METRIC)),
    )
    total = buckets[-1][1] if buckets else 0.0
    if not total:
        return None
    return next(bound for bound, count in buckets if count >= quantile * total)


def delivered(values: dict[str, float]) -> float:
    return sum(value for name, value in values.items() if name.startswith("inventoryd_outbox_deliveries_total") and "delivered" in name)


async def measure(endpoints: int, admin_url: str, args: argparse.Namespace, scratch: Path, attempt: int) -> Run:
    database_url = await create_database(admin_url, f"outbox_{endpoints}_{attempt}")
    port, receiver_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    receiver = Server([sys.executable, "-m", "loadtests.webhook_receiver", str(receiver_port)], receiver_port)
    env = {
        "INVENTORYD_LOG_FORMAT": "json", "INVENTORYD_ACCESS_LOG": "0", "INVENTORYD_ADMIN_TOKEN": ADMIN_TOKEN,
        "INVENTORYD_WEBHOOKS_ALLOW_PRIVATE": "1",
    }
    server = Server([sys.executable, "-m", "inventoryd", "serve", "--port", str(port), "--database-url", database_url], port, env)
    try:
        await wait_listening(receiver_port)
        await wait_listening(port)
        token = make_service_token(database_url)
        ids = await setup_inventoryd(base, 1)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as session:
            for index in range(endpoints):
                hook = {"url": f"http://127.0.0.1:{receiver_port}/hook/{index}", "types": TYPES}
                async with session.post(f"{base}/v1/webhooks", json=hook) as response:
                    assert response.status == 201, await response.text()
            events_file = scratch / f"events-{endpoints}-{attempt}.txt"
            events_file.write_text("\n".join(ids) + "\n")
            run_wrk(base, events_file, WARMUP_S, args.connections, token)
            accepted_query = "SELECT count(*) FROM journal WHERE kind = 'reservation_held'"
            rows_before = await count_rows(database_url, accepted_query)
            _, wal_before = await counters(database_url)
            metrics_before = await scrape(session, base)
            stats = run_wrk(base, events_file, args.duration, args.connections, token)
            metrics_after = await scrape(session, base)
            _, wal_after = await counters(database_url)
            accepted = await count_rows(database_url, accepted_query) - rows_before
            backlog = int(metrics_after.get("inventoryd_outbox_backlog", 0))
            started, catch_up = time.monotonic(), None
            while endpoints and time.monotonic() - started < CATCH_UP_S_MAX:
                if (await scrape(session, base)).get("inventoryd_outbox_backlog", 0) == 0:
                    catch_up = time.monotonic() - started
                    break
                await asyncio.sleep(0.25)
        syncs, _ = wal_sync_change(wal_before, wal_after)
        return Run(
            endpoints=endpoints,
            accepted_per_s=accepted / args.duration,
            p99_ms=stats["p99_ms"],
            wal_syncs_per_accepted=syncs / accepted if accepted and wal_after is not None else None,
            deliveries_per_s=(delivered(metrics_after) - delivered(metrics_before)) / args.duration,
            lag_p50_s=lag_quantile(metrics_before, metrics_after, 0.5),
            lag_p99_s=lag_quantile(metrics_before, metrics_after, 0.99),
            backlog_at_end=backlog,
            catch_up_s=catch_up,
        )
    finally:
        server.stop()
        receiver.stop()


def table(runs: list[Run]) -> str:
    base = next((run.accepted_per_s for run in runs if run.endpoints == 0), None)

    def fmt(value: float | None, spec: str) -> str:
        return "—" if value is None else format(value, spec)

    lines = [
        "| endpoints | accepted/s | vs none | p99 ms | WAL syncs/accepted | deliveries/s during load | lag p50 | lag p99"
        " | backlog at end | catch-up s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        ratio = run.accepted_per_s / base if base else None
        lines.append(
            f"| {run.endpoints} | {run.accepted_per_s:,.0f} | {fmt(ratio, '.2f')} | {run.p99_ms:.1f}"
            f" | {fmt(run.wal_syncs_per_accepted, '.4f')}"
            f" | {run.deliveries_per_s:,.0f} | ≤ {fmt(run.lag_p50_s, 'g')} s | ≤ {fmt(run.lag_p99_s, 'g')} s | {run.backlog_at_end:,}"
            f" | {fmt(run.catch_up_s, '.1f')} |"
        )
    return "\n".join(lines)


async def run_all(args: argparse.Namespace, admin_url: str, scratch: Path) -> list[Run]:
    counts = [int(count) for count in args.endpoints.split(",")]
    runs: dict[int, list[Run]] = {count: [] for count in counts}
    for attempt in range(args.repeat):
        for count in counts if attempt % 2 == 0 else reversed(counts):
            run = await measure(count, admin_url, args, scratch, attempt)
            print(
                f"{count:3} endpoints run {attempt + 1}: {run.accepted_per_s:8,.0f}/s, {run.deliveries_per_s:8,.0f} deliveries/s,"
                f" lag p99 ≤ {run.lag_p99_s} s, backlog {run.backlog_at_end:,}, caught up in {run.catch_up_s} s",
                flush=True,
            )
            runs[count].append(run)
    return [sorted(measured, key=lambda run: run.accepted_per_s)[len(measured) // 2] for measured in runs.values()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--endpoints", default="0,1,10", help="endpoint counts, comma-separated")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    assert 1 <= args.duration <= 600 and 1 <= args.connections <= 1024 and 1 <= args.repeat <= 9
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    scratch = Path(tempfile.mkdtemp(prefix="inventoryd-outbox-bench-"))
    scratch.chmod(0o755)
    embedded = EmbeddedPostgres(scratch / "pgdata")
    try:
        embedded.start()
        runs = asyncio.run(run_all(args, embedded.dsn("postgres"), scratch))
    finally:
        embedded.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    print()
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, wrk -t{WRK_THREADS} -c{args.connections} -d{args.duration}s,"
          f" hot event, median of {args.repeat} interleaved run(s)")
    print(table(runs))


if __name__ == "__main__":
    main()
