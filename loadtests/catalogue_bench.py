"""The catalogue under a crowd of readers: listings and search against an event's availability, in
one run, on one server; and the memory 100,000 events take.

    python -m loadtests.catalogue_bench [--events 10000] [--duration 8] [--connections 64]
                                        [--rss-events 100000] [--tree PATH]
    python -m loadtests.catalogue_bench --fresh 50

One `inventoryd serve` (as shipped: authentication and rate limits on, no access lines) on a scratch
PostgreSQL, with --events events made through its API (names, cities, categories and prices drawn
from small vocabularies, so that filters match a share of them). Then wrk (--connections, the
duration each) GETs, at random among a fixed set of paths of each kind:
- availability: `GET /v1/events/{id}/availability` of random events (the hot read, from the actor);
- listing: the first page (limit 20) of each sort, and of a few cities and categories;
- search: `q` (one or two words) with and without a city, limit 20.
Printed: requests per second, p50 and p99, and each kind's rate against availability's in the
same run; then the no-op server (`loadtests.noop_server`) answering bodies of the mean sizes of an
availability and of a listing, under the same wrk: the ratio that answer size alone allows. With
--rss-events, a second server is given that many events and its resident memory is read before
and after (per event: the actor and its catalogue entry together).

--fresh N instead starts two nodes on one database (`loadtests.cluster_bench`'s, as the cluster
benchmarks do), makes N events through the first and times, from each 201, until the second lists
it (a search for the event's key, polled every 2 ms).

--tree runs the server from another checkout (a worktree at an older commit: the before of a
before/after, with this harness). Everything stays on 127.0.0.1; servers are stopped by their PID.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from loadtests import bench

HERE = Path(__file__).resolve().parent
# Events are made this many requests at a time.
SETUP_CONCURRENCY = 32
CREATE_ATTEMPTS_MAX = 10
FRESH_POLL_S = 0.002
FRESH_GIVE_UP_S = 5.0
CITIES = ["Zürich", "Bern", "Basel", "Genève", "Lausanne", "Luzern", "Lugano", "St. Gallen"]
CATEGORIES = ["music", "theatre", "sport", "comedy", "family"]
WORDS = ["rock", "jazz", "opera", "night", "festival", "quartet", "symphony", "tour", "live", "classic", "open", "air"]


def _event(rng: random.Random, index: int) -> dict[str, Any]:
    name = " ".join(rng.sample(WORDS, 2)).title() + f" {index}"
    return {
        "name": name,
        "description": " ".join(rng.choices(WORDS, k=12)),
        "venue": f"{rng.choice(['Hall', 'Arena', 'Club', 'Theater'])} {rng.randint(1, 50)}",
        "city": rng.choice(CITIES),
        "category": rng.choice(CATEGORIES),
        "starts_at": f"2027-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(10, 22)}:00:00Z",
        "currency": "CHF",
        "ticket_types": [
            {"code": "GA", "name": "GA", "price": rng.choice([2500, 4900, 8900]), "capacity": 1000},
            {"code": "VIP", "name": "VIP", "price": rng.choice([12000, 19900]), "capacity": 50},
        ],
    }


class Serve:
    """`inventoryd serve` from `tree`, on `port`, stopped by its PID."""

    def __init__(self, tree: Path, port: int, database_url: str) -> None:
        env = dict(
            os.environ,
            PYTHONPATH=str(tree),
            INVENTORYD_LOG_FORMAT="json",
            INVENTORYD_ACCESS_LOG="0",
            INVENTORYD_ADMIN_TOKEN=bench.ADMIN_TOKEN,
        )
        argv = [sys.executable, "-m", "inventoryd", "serve", "--port", str(port), "--database-url", database_url]
        self.process = subprocess.Popen(argv, cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        self.base = f"http://127.0.0.1:{port}"

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


async def _ready(session: aiohttp.ClientSession, base: str) -> None:
    deadline = time.monotonic() + bench.READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            async with session.get(f"{base}/readyz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("inventoryd did not become ready")


async def make_events(base: str, count: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    bodies = [_event(rng, index) for index in range(count)]
    ids: list[str] = []
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {bench.ADMIN_TOKEN}"}) as session:
        await _ready(session, base)

        async def create(body: dict[str, Any]) -> str:
            # A 503 (a shard changing hands, the lease not yet renewed on a loaded machine) is
            # retried after its Retry-After, as a client would, a bounded number of times.
            for _ in range(CREATE_ATTEMPTS_MAX):
                async with session.post(f"{base}/v1/events", json=body) as response:
                    if response.status == 503:
                        await asyncio.sleep(float(response.headers.get("Retry-After", "1")))
                        continue
                    assert response.status == 201, await response.text()
                    event_id: str = (await response.json())["id"]
                    return event_id
            raise RuntimeError(f"no event made in {CREATE_ATTEMPTS_MAX} attempts")

        for start in range(0, count, SETUP_CONCURRENCY):
            ids += await asyncio.gather(*(create(body) for body in bodies[start : start + SETUP_CONCURRENCY]))
    return ids


def _paths(ids: list[str]) -> dict[str, list[str]]:
    rng = random.Random(11)
    listing = [f"/v1/events?limit=20&sort={sort}" for sort in ("starts_at", "-starts_at", "name")]
    listing += [f"/v1/events?limit=20&city={city}" for city in ("Bern", "Basel", "Luzern")]
    listing += [f"/v1/events?limit=20&category={category}" for category in CATEGORIES]
    search = [f"/v1/events?limit=20&q={word}" for word in WORDS[:6]]
    search += [f"/v1/events?limit=20&q={a}+{b}&city=Bern" for a, b in zip(WORDS[:6], WORDS[6:], strict=True)]
    return {
        "availability": [f"/v1/events/{event_id}/availability" for event_id in rng.sample(ids, min(len(ids), 500))],
        "listing": listing,
        "search": search,
    }


def _wrk(base: str, paths: list[str], duration_s: int, connections: int, scratch: Path) -> dict[str, float]:
    paths_file = scratch / "paths.txt"
    paths_file.write_text("\n".join(paths) + "\n")
    return bench.wrk("wrk_paths.lua", base, duration_s, connections, str(paths_file))


def _row(kind: str, stats: dict[str, float], availability: dict[str, float]) -> None:
    ratio = stats["requests_per_s"] / availability["requests_per_s"]
    print(
        f"| {kind} | {stats['requests_per_s']:,.0f} | {stats['p50_ms']:.2f} | {stats['p99_ms']:.2f} |"
        f" {stats['non_2xx']:.0f} | {ratio:.2f} |",
        flush=True,
    )


async def _mean_size(base: str, paths: list[str]) -> int:
    """The mean size of these paths' answers (their bodies)."""
    total = 0
    async with aiohttp.ClientSession() as session:
        for path in paths[:20]:
            async with session.get(base + path) as response:
                total += len(await response.read())
    return round(total / min(len(paths), 20))


async def run(args: argparse.Namespace, admin_url: str, scratch: Path) -> None:
    tree = args.tree
    commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, tree {tree} at {commit.stdout.strip()},"
          f" {args.events:,} events, wrk -c{args.connections} {args.duration} s each")  # fmt: skip
    database_url = await bench.create_database(admin_url, "catalogue_bench")
    server = Serve(tree, bench.free_port(), database_url)
    try:
        ids = await make_events(server.base, args.events)
        print("| reads | per second | p50 ms | p99 ms | non-2xx | against availability |")
        print("|---|---:|---:|---:|---:|---:|")
        measured: dict[str, dict[str, float]] = {}
        paths_of = _paths(ids)
        for kind, paths in paths_of.items():
            stats = measured[kind] = _wrk(server.base, paths, args.duration, args.connections, scratch)
            _row(kind, stats, measured["availability"])
        sizes = {kind: await _mean_size(server.base, paths) for kind, paths in paths_of.items()}
    finally:
        server.stop()
    # The ceiling for answers of these sizes: the no-op server, the same bytes, the same wrk.
    noop_port = bench.free_port()
    noop = subprocess.Popen([sys.executable, "-m", "loadtests.noop_server", str(noop_port)], cwd=HERE.parent,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        await bench.wait_listening(noop_port)
        ceiling: dict[str, float] = {}
        for kind in ("availability", "listing"):
            stats = _wrk(f"http://127.0.0.1:{noop_port}", [f"/bytes/{sizes[kind]}"], args.duration, args.connections, scratch)
            ceiling[kind] = stats["requests_per_s"]
            _row(f"no-op, {sizes[kind]:,} bytes (as {kind})", stats, measured["availability"])
        print(f"the ceiling's own ratio, listing-sized to availability-sized answers: {ceiling['listing'] / ceiling['availability']:.2f}")
    finally:
        noop.terminate()
        noop.wait(timeout=30)
    if args.rss_events:
        database_url = await bench.create_database(admin_url, "catalogue_rss")
        server = Serve(tree, bench.free_port(), database_url)
        try:
            async with aiohttp.ClientSession() as session:
                await _ready(session, server.base)
            before = server.rss_mib()
            started = time.perf_counter()
            await make_events(server.base, args.rss_events)
            after = server.rss_mib()
            print(
                f"{args.rss_events:,} events made in {time.perf_counter() - started:.0f} s: RSS {before:.0f} -> {after:.0f} MiB,"
                f" {(after - before) * 1024 / args.rss_events:.1f} KiB per event (its actor and its catalogue entry)",
                flush=True,
            )
        finally:
            server.stop()


async def freshness(admin_url: str, scratch: Path, trials: int) -> None:
    """Two nodes on one database: from each 201 of an event made through one, until the other
    lists it (polled every FRESH_POLL_S), `trials` times."""
    from loadtests.cluster_bench import ADMIN, nodes_on, wait_balanced  # noqa: PLC0415 - it imports bench, as this does
    from loadtests.nodes import wait_node_ready  # noqa: PLC0415

    database_url = await bench.create_database(admin_url, "catalogue_fresh")
    rng = random.Random(3)
    delays = []
    async with aiohttp.ClientSession(headers=ADMIN) as session:
        with nodes_on(database_url, scratch) as nodes:
            first, second = nodes.start("first"), nodes.start("second")
            await wait_node_ready(session, first)
            await wait_node_ready(session, second)
            await wait_balanced(session, first, 2)
            for index in range(trials):
                word = f"fresh{index}z{rng.randrange(10**9)}"  # a word no other event has
                async with session.post(f"{first.base}/v1/events", json={**_event(rng, index), "name": word}) as response:
                    assert response.status == 201, await response.text()
                    event_id = (await response.json())["id"]
                started = time.perf_counter()
                while True:
                    async with session.get(f"{second.base}/v1/events?q={word}") as response:
                        listed = {item["id"] for item in (await response.json())["items"]}
                    if event_id in listed or time.perf_counter() - started > FRESH_GIVE_UP_S:
                        break
                    await asyncio.sleep(FRESH_POLL_S)
                delays.append(time.perf_counter() - started)
    delays.sort()
    print(
        f"listed on the other node after (ms, {trials} events, polled every {FRESH_POLL_S * 1000:.0f} ms): median"
        f" {delays[len(delays) // 2] * 1000:.1f}, p90 {delays[int(len(delays) * 0.9)] * 1000:.1f}, max {delays[-1] * 1000:.1f}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rss-events", type=int, default=100_000)
    parser.add_argument("--tree", default=str(HERE.parent), help="the checkout to serve from (default: this one)")
    parser.add_argument("--fresh", type=int, default=0, metavar="N", help="instead: two nodes, how soon one lists the other's events")
    args = parser.parse_args()
    assert 1 <= args.events <= 1_000_000 and 1 <= args.duration <= 120 and 1 <= args.connections <= 1024
    assert 0 <= args.rss_events <= 1_000_000
    args.tree = Path(args.tree).resolve()
    with bench.scratch_postgres("inventoryd-catalogue-bench-") as (server, scratch), tempfile.TemporaryDirectory() as paths:
        if args.fresh:
            uvloop.run(freshness(server.dsn("postgres"), scratch, args.fresh))
            return
        uvloop.run(run(args, server.dsn("postgres"), Path(paths)))


if __name__ == "__main__":
    main()
