"""The side-by-side benchmark: one command, one run, one table.

    python -m loadtests.bench [--duration 10] [--connections 64] [--events 1000]

Targets, each a separate process on 127.0.0.1, measured one after the other in the same run:
  (a) noop      aiohttp + msgspec POST that decodes the body and answers 201: the HTTP ceiling
  (b) baseline  the conventional design on the same stack: SELECT … FOR UPDATE, UPDATE, INSERT, COMMIT
  (c) inventoryd, as shipped: a service token, authentication and rate limits on
  (c0) inventoryd-open: the same with INVENTORYD_AUTH=off and INVENTORYD_RATE_LIMITS=off, to price them
  cluster-N (--nodes 1,2,3): N inventoryd nodes on one database behind HAProxy (deploy/haproxy.cfg's
                scheme), and with --through-one-node cluster-N-direct, the load sent to one node
Scenarios: every reservation at one hot event, and spread over --events events (and, when asked
for, mixed: half of them at one event, half spread over --events events). Load comes from wrk
(--connections connections, 2 threads) with loadtests/wrk_reserve.lua. Reported per target: accepted
reservations per second, p50/p99 latency, PostgreSQL transactions and WAL syncs (pg_stat_wal) per
accepted reservation and the time one WAL sync took, the server's CPU per request and how busy it
was (its CPU time over the run's length: below 100% it waited for commits with nothing else to
do); then the ratios c/a and c/b. All traffic stays on loopback, and every run
is bounded by --duration; the processes started here are stopped by their PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg

from persistence import store
from persistence.embedded import EmbeddedPostgres

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WRK_THREADS = 2
WARMUP_S = 2
READY_TIMEOUT_S = 60.0
HUGE_CAPACITY = 10_000_000


@dataclass
class Result:
    scenario: str
    target: str
    requests_per_s: float
    accepted: int
    accepted_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    transactions_per_accepted: float | None
    wal_syncs_per_accepted: float | None
    # The server process's CPU time (user + system) per request: steadier than throughput on a
    # machine whose two cores are shared with wrk and PostgreSQL.
    server_cpu_us_per_request: float
    # That CPU time over the run's length: 1.0 is one core busy all the time. Below 1, the
    # single-threaded server waited (for commits) with nothing else to do.
    server_busy: float
    # Mean time PostgreSQL took per WAL sync (track_wal_io_timing), if it was counted.
    ms_per_wal_sync: float | None
    # Of a cluster's requests, the share a node forwarded to another (None: one node).
    forwarded_share: float | None = None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def scratch_postgres(prefix: str) -> Iterator[tuple[EmbeddedPostgres, Path]]:
    """A throwaway embedded PostgreSQL in a temporary directory (readable by the unprivileged user
    it may run as), and the directory: both gone afterwards."""
    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    scratch.chmod(0o755)
    server = EmbeddedPostgres(scratch / "pgdata")
    try:
        server.start()
        yield server, scratch
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


def with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + database))


def parse_duration_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def run_wrk(url: str, events_file: Path, duration_s: int, connections: int, token: str = "") -> dict[str, float]:
    return wrk("wrk_reserve.lua", url, duration_s, connections, str(events_file), token)


def wrk(script: str, url: str, duration_s: int, connections: int, *arguments: str) -> dict[str, float]:
    """wrk with one of loadtests/'s Lua scripts (its arguments after `--`), as every harness runs it."""
    output = subprocess.run(
        [
            "wrk",
            f"-t{WRK_THREADS}",
            f"-c{connections}",
            f"-d{duration_s}s",
            "--latency",
            "--timeout",
            "10s",
            "-s",
            str(HERE / script),
            url,
            "--",
            *arguments,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=duration_s + 60,
    ).stdout
    return parse_wrk(output)


def parse_wrk(output: str) -> dict[str, float]:
    """wrk's report (with --latency): requests per second (and in all), p50 and p99 in ms, non-2xx/3xx answers."""
    stats = {"requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))}  # type: ignore[union-attr]
    for percentile in ("50", "99"):
        match = re.search(rf"^\s+{percentile}%\s+(\S+)", output, re.MULTILINE)
        stats[f"p{percentile}_ms"] = parse_duration_ms(match.group(1)) if match else float("nan")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    stats["non_2xx"] = float(non_2xx.group(1)) if non_2xx else 0.0
    requests = re.search(r"(\d+) requests in", output)
    stats["requests"] = float(requests.group(1)) if requests else float("nan")
    return stats


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    def __init__(self, argv: list[str], port: int, env: dict[str, str] | None = None) -> None:
        self.port = port
        self.process = subprocess.Popen(
            argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, **(env or {}))
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


async def wait_listening(port: int, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


async def counters(database_url: str) -> tuple[int, store.WalSyncs | None]:
    """This database's committed transactions and the cluster's WAL syncs, so far."""
    connection = await asyncpg.connect(database_url)
    try:
        await asyncio.sleep(0.6)  # let the statistics collector report
        return await store.committed_transactions(connection), await store.wal_syncs(connection)
    finally:
        await connection.close()


def wal_sync_change(before: store.WalSyncs | None, after: store.WalSyncs | None) -> tuple[int, float | None]:
    """WAL syncs between two readings, and the seconds they took (None where not counted)."""
    if before is None or after is None:
        return 0, None
    seconds = None if before.seconds is None or after.seconds is None else after.seconds - before.seconds
    return after.count - before.count, seconds


async def count_rows(database_url: str, query: str) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        return int(await connection.fetchval(query))
    finally:
        await connection.close()


async def create_database(admin_url: str, name: str) -> str:
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return with_database(admin_url, name)


ADMIN_TOKEN = "bench-admin-token-" + os.urandom(12).hex()


def make_service_token(database_url: str) -> str:
    """A service token made the way an operator makes one: `inventoryd token create`."""
    return subprocess.run(
        [sys.executable, "-m", "inventoryd", "token", "create", "--role", "service", "--name", "bench",
         "--database-url", database_url],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()


async def setup_inventoryd(base: str, events: int) -> list[str]:
    ids = []
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as session:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            async with session.get(f"{base}/readyz") as response:
                if response.status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("inventoryd did not become ready")
            await asyncio.sleep(0.1)
        for index in range(events):
            async with session.post(
                f"{base}/v1/events",
                json={
                    "name": f"bench {index}",
                    "starts_at": "2027-06-01T19:00:00Z",
                    "currency": "EUR",
                    "ticket_types": [{"code": "GA", "name": "GA", "price": 1000, "capacity": HUGE_CAPACITY}],
                },
            ) as response:
                assert response.status == 201, await response.text()
                ids.append((await response.json())["id"])
    return ids


async def setup_baseline(database_url: str, events: int) -> list[str]:
    from loadtests.baseline_server import SCHEMA  # noqa: PLC0415

    ids = [f"evt_bench{index}" for index in range(events)]
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(SCHEMA)
        await connection.executemany(
            "INSERT INTO baseline_inventory (event_id, code, capacity) VALUES ($1, 'GA', $2)",
            [(event_id, HUGE_CAPACITY) for event_id in ids],
        )
    finally:
        await connection.close()
    return ids


async def measure(
    target: str, scenario: str, events: int, admin_url: str, args: argparse.Namespace, scratch: Path
) -> Result:
    if target.startswith("cluster-"):
        from loadtests.cluster_bench import measure_cluster  # noqa: PLC0415 - it imports this module

        return await measure_cluster(target, scenario, events, admin_url, args, scratch)
    database_url = await create_database(admin_url, f"bench_{target}_{scenario}")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    python = sys.executable
    if target == "noop":
        server = Server([python, "-m", "loadtests.noop_server", str(port)], port)
    elif target == "baseline":
        server = Server([python, "-m", "loadtests.baseline_server", str(port), database_url], port)
    else:
        env = {
            "INVENTORYD_LOG_FORMAT": "json",
            "INVENTORYD_ACCESS_LOG": "1" if args.access_log else "0",
            "INVENTORYD_ADMIN_TOKEN": ADMIN_TOKEN,
        }
        if target == "inventoryd-open":
            env |= {"INVENTORYD_AUTH": "off", "INVENTORYD_RATE_LIMITS": "off"}
        server = Server([python, "-m", "inventoryd", "serve", "--port", str(port), "--database-url", database_url], port, env)
    token = ""
    try:
        await wait_listening(port)
        if target.startswith("inventoryd"):
            # Both get the same requests, token included (the open server ignores it): wrk's own
            # work, on the same two cores, must not differ between them.
            token = make_service_token(database_url)
            ids = await setup_inventoryd(base, events)
            accepted_query = "SELECT count(*) FROM journal WHERE kind = 'reservation_held'"
        elif target == "baseline":
            ids = await setup_baseline(database_url, events)
            accepted_query = "SELECT count(*) FROM baseline_reservations"
        else:
            ids = [f"evt_noop{index}" for index in range(events)]
            accepted_query = ""
        return await load_and_count(
            base, database_url, ids, token, [server.process.pid], target, scenario, accepted_query, args, scratch
        )
    finally:
        server.stop()


async def load_and_count(
    base: str,
    database_url: str,
    ids: list[str],
    token: str,
    pids: list[int],
    target: str,
    scenario: str,
    accepted_query: str,
    args: argparse.Namespace,
    scratch: Path,
    forwarded: Callable[[], Awaitable[float]] | None = None,
) -> Result:
    """wrk at `base` (warm-up, then --duration), and what it came to: accepted reservations (by the
    log), transactions and WAL syncs per accepted, the servers' CPU (`pids`, summed), and the share
    of requests forwarded (`forwarded` reads the count)."""
    events_file = scratch / f"{target}-{scenario}.txt"
    if scenario == "mixed":  # wrk picks an id at random: half of the picks are the first event
        ids = ids + [ids[0]] * len(ids)
    events_file.write_text("\n".join(ids) + "\n")
    run_wrk(base, events_file, WARMUP_S, args.connections, token)
    before_rows = await count_rows(database_url, accepted_query) if accepted_query else 0
    commits_before, wal_before = await counters(database_url)
    forwarded_before = await forwarded() if forwarded is not None else 0.0
    cpu_before = sum(process_cpu_seconds(pid) for pid in pids)
    stats = run_wrk(base, events_file, args.duration, args.connections, token)
    cpu_seconds = sum(process_cpu_seconds(pid) for pid in pids) - cpu_before
    forwarded_count = (await forwarded() - forwarded_before) if forwarded is not None else None
    commits_after, wal_after = await counters(database_url)
    if accepted_query:
        accepted = await count_rows(database_url, accepted_query) - before_rows
    else:
        accepted = int(stats["requests_per_s"] * args.duration - stats["non_2xx"])

    def per(value: float) -> float | None:
        return value / accepted if accepted else None

    requests = stats["requests_per_s"] * args.duration
    syncs, sync_seconds = wal_sync_change(wal_before, wal_after)
    return Result(
        scenario=scenario,
        target=target,
        requests_per_s=stats["requests_per_s"],
        accepted=accepted,
        accepted_per_s=accepted / args.duration,
        p50_ms=stats["p50_ms"],
        p99_ms=stats["p99_ms"],
        non_2xx=int(stats["non_2xx"]),
        transactions_per_accepted=per(commits_after - commits_before) if accepted_query else None,
        wal_syncs_per_accepted=per(syncs) if accepted_query and wal_after is not None else None,
        server_cpu_us_per_request=cpu_seconds * 1e6 / requests,
        server_busy=cpu_seconds / args.duration,
        ms_per_wal_sync=sync_seconds * 1000 / syncs if accepted_query and syncs and sync_seconds is not None else None,
        forwarded_share=forwarded_count / requests if forwarded_count is not None and requests else None,
    )


def callgrind_totals(out_file: Path) -> int:
    """The instructions a callgrind output file counted."""
    totals = re.search(rb"^totals:\s*(\d+)", out_file.read_bytes(), re.MULTILINE)
    if totals is None:
        raise RuntimeError(f"no totals in {out_file}")
    return int(totals.group(1))


def fmt(value: float | None, digits: int = 4) -> str:
    """A figure for the table, or a dash where it was not measured."""
    return "–" if value is None else f"{value:.{digits}f}"


def table(results: list[Result]) -> str:
    clustered = any(result.forwarded_share is not None for result in results)
    lines = [
        (
            "| scenario | target | accepted/s | p50 ms | p99 ms | non-2xx | transactions / accepted"
            " | WAL syncs / accepted | ms / WAL sync | server CPU µs / request | server busy |"
            + (" forwarded |" if clustered else "")
        ),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if clustered else ""),
    ]
    for result in results:
        forwarded = "–" if result.forwarded_share is None else f"{result.forwarded_share:.1%}"
        lines.append(
            f"| {result.scenario} | {result.target} | {result.accepted_per_s:,.0f} | {result.p50_ms:.2f} | "
            f"{result.p99_ms:.2f} | {result.non_2xx} | {fmt(result.transactions_per_accepted)} | "
            f"{fmt(result.wal_syncs_per_accepted)} | {fmt(result.ms_per_wal_sync, 2)} |"
            f" {result.server_cpu_us_per_request:.0f} | {result.server_busy:.0%} |"
            + (f" {forwarded} |" if clustered else "")
        )
    lines.append("")
    for scenario in dict.fromkeys(result.scenario for result in results):
        by_target = {result.target: result for result in results if result.scenario == scenario}
        if {"noop", "inventoryd"} <= by_target.keys():
            ratio = by_target["inventoryd"].accepted_per_s / by_target["noop"].accepted_per_s
            lines.append(f"- {scenario}: c/a (inventoryd / no-op ceiling) = {ratio:.2f}")
        if {"baseline", "inventoryd"} <= by_target.keys() and by_target["baseline"].accepted_per_s:
            ratio = by_target["inventoryd"].accepted_per_s / by_target["baseline"].accepted_per_s
            lines.append(f"- {scenario}: c/b (inventoryd / FOR UPDATE baseline) = {ratio:.2f}")
        if {"inventoryd-open", "inventoryd"} <= by_target.keys():
            secured, open_ = by_target["inventoryd"], by_target["inventoryd-open"]
            lines.append(
                f"- {scenario}: auth + rate limits cost {1 - secured.accepted_per_s / open_.accepted_per_s:+.1%} of"
                f" throughput, {secured.server_cpu_us_per_request - open_.server_cpu_us_per_request:+.0f} µs CPU per request"
            )
        single = by_target.get("inventoryd")
        for name, result in by_target.items():
            if name.startswith("cluster-") and single is not None and single.accepted_per_s:
                share = "–" if result.forwarded_share is None else f"{result.forwarded_share:.1%}"
                lines.append(f"- {scenario}: {name} / one node = {result.accepted_per_s / single.accepted_per_s:.2f} ({share} forwarded)")
    return "\n".join(lines)


async def run(args: argparse.Namespace, admin_url: str, scratch: Path) -> list[Result]:
    """Every target, --repeat times, interleaved and in alternating order (a b c, c b a, a b c …)
    so that a slow spell of the machine, or PostgreSQL's checkpoint after the previous target's
    writes, hits them alike; the table shows each one's median run."""
    scenarios = {"hot": 1, "spread": args.events, "mixed": args.events}
    results = []
    for scenario in args.scenarios.split(","):
        runs: dict[str, list[Result]] = {target: [] for target in args.targets.split(",")}
        for attempt in range(args.repeat):
            for target in list(runs) if attempt % 2 == 0 else reversed(runs):
                result = await measure(target, scenario, scenarios[scenario], admin_url, args, scratch)
                print(
                    f"{scenario:7} {target:16} run {attempt + 1}: {result.accepted_per_s:8,.0f}/s"
                    f"  {result.server_cpu_us_per_request:5.0f} µs CPU/request  p99 {result.p99_ms:.2f} ms",
                    flush=True,
                )
                runs[target].append(result)
        for measured in runs.values():
            measured.sort(key=lambda result: result.accepted_per_s)
            results.append(measured[len(measured) // 2])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds of measured load per target")
    parser.add_argument("--repeat", type=int, default=1, help="runs per target, interleaved; the median is shown")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--events", type=int, default=1000, help="events in the spread and mixed scenarios")
    parser.add_argument("--scenarios", default="hot,spread", help="hot, spread, mixed (comma-separated)")
    parser.add_argument("--targets", default="noop,baseline,inventoryd-open,inventoryd")
    parser.add_argument(
        "--nodes", default="1",
        help="cluster sizes, e.g. 1,2,3: each N > 1 adds the target cluster-N, N nodes behind HAProxy (needs haproxy)",
    )
    parser.add_argument(
        "--through-one-node", action="store_true",
        help="also cluster-N-direct: the same load sent straight to one of the N nodes ((N-1)/N of it forwarded)",
    )
    parser.add_argument("--no-access-log", dest="access_log", action="store_false", help="inventoryd without access lines")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    assert 1 <= args.duration <= 600 and 1 <= args.connections <= 1024 and 1 <= args.repeat <= 9
    sizes = [int(size) for size in args.nodes.split(",")]
    assert all(1 <= size <= 16 for size in sizes), "--nodes: 1 to 16 each"
    for size in sizes:
        if size > 1:
            args.targets += f",cluster-{size}" + (f",cluster-{size}-direct" if args.through_one_node else "")
    if any(size > 1 for size in sizes) and shutil.which("haproxy", path=f"{os.environ.get('PATH', '')}:/usr/sbin") is None:
        raise SystemExit("haproxy is needed for --nodes: apt-get install haproxy")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    scratch = Path(tempfile.mkdtemp(prefix="inventoryd-bench-"))
    scratch.chmod(0o755)
    embedded = None
    admin_url = os.environ.get("BENCH_DATABASE_URL")
    try:
        if not admin_url:
            embedded = EmbeddedPostgres(scratch / "pgdata")
            embedded.start()
            admin_url = embedded.dsn("postgres")
        results = asyncio.run(run(args, admin_url, scratch))
    finally:
        if embedded is not None:
            embedded.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    print()
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, wrk -t{WRK_THREADS} -c{args.connections}"
        f" -d{args.duration}s, median of {args.repeat} interleaved run(s)"
    )
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps([result.__dict__ for result in results], indent=2))


if __name__ == "__main__":
    main()
