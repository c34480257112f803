"""What a cluster costs and how fast it heals, measured with real `inventoryd serve` processes.

    python -m loadtests.cluster_bench failover [--trials 10] [--nodes 2] [--events 8]
    python -m loadtests.cluster_bench forward-cost [--requests 2000]       # needs valgrind
    python -m loadtests.cluster_bench throughput [--nodes 1,2,3] [--duration 8]   # needs wrk, haproxy

failover: per trial, one node (the victim) is killed with SIGKILL while probes reserve, through a
surviving node, at events the victim owns; the trial's failover time is from the kill until every
one of those events has acknowledged a reservation again (its shard taken over by a survivor, its
actor rebuilt from the log). The victim is then started again on its port: shards move back to it
(rebalance), and the longest gap between two acknowledged reservations of one event while they
move is that trial's pause per shard. --trials N runs N such trials and N more, alternating with
them, where the victim leaves with SIGTERM instead (a planned handoff: drained, then released),
whose longest gap is the planned pause.

forward-cost: the instructions (callgrind) the cluster spends per reservation when the request
reaches a node that does not own the event, against the same request sent to the owner. Three
runs on two nodes, one of them under valgrind each time: the owner asked directly; the owner
serving forwarded requests; the forwarding node. Forwarded cost = forwarder + owner-when-forwarded,
as a multiple of direct. Valgrind slows its node ~50x; its lease renewals still come in time.

throughput: 1, 2 and 3 nodes behind HAProxy (deploy/haproxy.cfg's scheme, generated for the ports
used), wrk reserving at --events events through HAProxy, and the same load sent straight to one
node (so about (N-1)/N of it is forwarded): accepted reservations per second, p50/p99, WAL syncs
per reservation and the share of requests a node forwarded. Two cores cannot show a cluster
scaling (three nodes, PostgreSQL, HAProxy and wrk share them); on a bigger machine the same
command does.

Everything runs on 127.0.0.1 against a throwaway embedded PostgreSQL, is bounded in time, and
every process started here is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from inventoryd.cluster import shard_of
from loadtests import haproxy_config
from loadtests.auth_cost import WARMUP_REQUESTS, callgrind_control, counted_window, drive, out_file_of_dump
from loadtests.bench import (
    ADMIN_TOKEN,
    HUGE_CAPACITY,
    ROOT,
    Result,
    callgrind_totals,
    create_database,
    free_port,
    load_and_count,
    make_service_token,
    scratch_postgres,
    setup_inventoryd,
    wait_listening,
)
from loadtests.nodes import Node, cluster_view, live_ids, spawn_node, wait_node_ready, wait_settled
from persistence.limits import CLUSTER_SHARDS

VALGRIND_READY_TIMEOUT_S = 300.0
SETTLE_TIMEOUT_S = 60.0
# A trial gives up (and says so) if the victim's events are not served again within this.
FAILOVER_GIVE_UP_S = 30.0
PROBE_TIMEOUT_S = 5.0
# After a refusal a probe waits this long before it asks again (so that it does not spin).
PROBE_BACKOFF_S = 0.01
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass
class Nodes:
    """The `inventoryd serve` processes of one run, all on one database."""

    database_url: str
    directory: Path
    started: list[Node] = field(default_factory=list)

    def start(
        self, name: str, port: int | None = None, *, valgrind: Path | None = None, env: dict[str, str] | None = None, **flags: object
    ) -> Node:
        """A node; `env` adds to (or overrides) its environment: authentication and rate limits are
        off unless it says otherwise."""
        port = port or free_port()
        argv = [sys.executable, "-m", "inventoryd", "serve", "--port", str(port), "--database-url", self.database_url]
        for flag, value in flags.items():
            argv += [f"--{flag.replace('_', '-')}", str(value)]
        if valgrind is not None:
            argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={valgrind}", *argv]
        env = {"INVENTORYD_AUTH": "off", "INVENTORYD_RATE_LIMITS": "off", **(env or {})}
        node = spawn_node(argv, name, port, self.directory, ADMIN_TOKEN, env)
        self.started.append(node)
        return node

    def stop_all(self) -> None:
        for node in self.started:
            node.stop()


@contextlib.contextmanager
def nodes_on(database_url: str, directory: Path) -> Iterator[Nodes]:
    nodes = Nodes(database_url, directory)
    try:
        yield nodes
    finally:
        nodes.stop_all()


async def owners(session: aiohttp.ClientSession, node: Node) -> tuple[list[str | None], set[str], dict[str, str]]:
    """As `node` sees it: each shard's owner, the live nodes, and node id by URL."""
    view = await cluster_view(session, node, ADMIN)
    shards = [shard["owner"] for shard in view["shards"]]
    live = {item["node_id"] for item in view["nodes"] if item["live"]}
    return shards, live, live_ids(view)


async def wait_balanced(session: aiohttp.ClientSession, node: Node, count: int) -> dict[str, str]:
    """Until every shard has a live owner, `count` nodes share them and each holds what the ring
    gives it; returns node id by URL."""
    return live_ids(await wait_settled(session, node, count, SETTLE_TIMEOUT_S, balanced=True, headers=ADMIN))


async def create_events(session: aiohttp.ClientSession, node: Node, count: int) -> list[str]:
    ids = []
    for index in range(count):
        body = {
            "name": f"cluster bench {index}",
            "starts_at": "2027-06-01T19:00:00Z",
            "currency": "EUR",
            "ticket_types": [{"code": "GA", "name": "GA", "price": 1000, "capacity": HUGE_CAPACITY}],
        }
        async with session.post(f"{node.base}/v1/events", json=body, headers=ADMIN) as response:
            if response.status != 201:
                raise RuntimeError(f"creating an event: {response.status} {await response.text()}")
            ids.append((await response.json())["id"])
    return ids


# -- failover ---------------------------------------------------------------------------------------


@dataclass
class Probes:
    """One prober per event, reserving through `via` as fast as it is answered; every answer kept
    as (when it came, event, status)."""

    session: aiohttp.ClientSession
    via: Node
    events: list[str]
    answers: list[tuple[float, str, int]] = field(default_factory=list)
    _numbers: Iterator[int] = field(default_factory=itertools.count)

    async def _probe(self, event_id: str, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
        while not stop.is_set():
            body = {"ticket_type": "GA", "quantity": 1, "user_id": f"p{next(self._numbers)}"}
            try:
                async with self.session.post(
                    f"{self.via.base}/v1/events/{event_id}/reservations", json=body, timeout=timeout
                ) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            self.answers.append((time.monotonic(), event_id, status))
            if status != 201:
                await asyncio.sleep(PROBE_BACKOFF_S)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(self._probe(event_id, stop)) for event_id in self.events]
        try:
            yield
        finally:
            stop.set()
            await asyncio.gather(*tasks)

    def first_acknowledged_after(self, moment: float) -> dict[str, float]:
        first: dict[str, float] = {}
        for when, event_id, status in self.answers:
            if status == 201 and when > moment and event_id not in first:
                first[event_id] = when
        return first

    def longest_gap(self, start: float, end: float) -> float:
        """The longest time, over the events, between two acknowledged reservations within
        [start, end] (or from `start` to the first one)."""
        worst = 0.0
        for event_id in self.events:
            times = [start] + [when for when, event, status in self.answers if event == event_id and status == 201 and start < when <= end]
            worst = max(worst, *(later - earlier for earlier, later in itertools.pairwise(times)), 0.0)
        return worst

    def refused(self, start: float, end: float) -> dict[int, int]:
        counts: dict[int, int] = {}
        for when, _, status in self.answers:
            if start < when <= end and status != 201:
                counts[status] = counts.get(status, 0) + 1
        return counts

    def answered(self, start: float, end: float) -> int:
        return sum(1 for when, _, _ in self.answers if start < when <= end)


async def failover(args: argparse.Namespace, admin_url: str, scratch: Path) -> None:
    database_url = await create_database(admin_url, "cluster_failover")
    failovers: list[float] = []
    rebalances: list[float] = []
    drains: list[float] = []
    async with aiohttp.ClientSession() as session:
        with nodes_on(database_url, scratch) as nodes:
            ports = [free_port() for _ in range(args.nodes)]
            survivors = [nodes.start(f"node{index}", port) for index, port in enumerate(ports[:-1])]
            for node in survivors:
                await wait_node_ready(session, node)
            victim_port = ports[-1]
            victim = nodes.start("victim", victim_port)
            await wait_node_ready(session, victim)
            ids = await wait_balanced(session, survivors[0], args.nodes)
            # A node makes new events in its own shards: made through the victim, they are its; the
            # survivors take them over, and when it comes back it takes its share of them again.
            events = await create_events(session, victim, args.events * args.nodes * 4)
            for trial in range(2 * args.trials):
                graceful = trial % 2 == 1
                shards, _, ids = await owners(session, survivors[0])
                victim_id = ids[victim.base]
                theirs = [event for event in events if shards[shard_of(event, CLUSTER_SHARDS)] == victim_id][: args.events]
                if not theirs:
                    raise RuntimeError("the victim owns none of the events")
                probes = Probes(session, survivors[0], theirs)
                async with probes.running():
                    await asyncio.sleep(0.5)
                    stopped_at = time.monotonic()
                    victim.signal(signal.SIGTERM if graceful else signal.SIGKILL)
                    await asyncio.to_thread(victim.process.wait, 30)
                    # A draining node still answers until it has handed its shards over: what
                    # counts is the first acknowledgement after it is gone.
                    gone_at = time.monotonic() if graceful else stopped_at
                    deadline = gone_at + FAILOVER_GIVE_UP_S
                    while len(probes.first_acknowledged_after(gone_at)) < len(theirs) and time.monotonic() < deadline:
                        await asyncio.sleep(0.01)
                    served = probes.first_acknowledged_after(gone_at)
                    if len(served) < len(theirs):
                        missing = len(theirs) - len(served)
                        raise RuntimeError(f"trial {trial + 1}: {missing} events not served within {FAILOVER_GIVE_UP_S:.0f} s")
                    healed_at = max(served.values())
                    away = probes.refused(stopped_at, healed_at)
                    if graceful:
                        pause = probes.longest_gap(stopped_at, healed_at)
                        drains.append(pause)
                    else:
                        pause = healed_at - stopped_at
                        failovers.append(pause)
                    # Back on its port: its share moves back to it.
                    returned_at = time.monotonic()
                    victim = nodes.start(f"victim-{trial + 1}", victim_port)
                    await wait_node_ready(session, victim)
                    await wait_balanced(session, survivors[0], args.nodes)
                    settled_at = time.monotonic()
                    await asyncio.sleep(0.3)
                rebalance = probes.longest_gap(returned_at, settled_at + 0.3)
                rebalances.append(rebalance)
                print(
                    f"trial {trial + 1:2}: {'SIGTERM' if graceful else 'SIGKILL'}"
                    f" {'longest pause' if graceful else 'served again after'} {pause:.3f} s"
                    f" ({len(theirs)} events; refusals meanwhile {away}); rejoined and rebalanced in"
                    f" {settled_at - returned_at:.2f} s, longest pause per event {rebalance:.3f} s"
                    f" (refusals {probes.refused(returned_at, settled_at)} of {probes.answered(returned_at, settled_at)})",
                    flush=True,
                )

    def summary(values: list[float]) -> str:
        return f"median {statistics.median(values):.3f} s, worst {max(values):.3f} s over {len(values)}" if values else "–"

    print()
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, {args.nodes} nodes, {args.trials} trials of each kind")
    print(f"- SIGKILL, until every event of the victim is served again: {summary(failovers)}")
    print(f"- SIGTERM (planned handoff), longest pause of one event: {summary(drains)}")
    print(f"- rejoin (shards moving back), longest pause of one event: {summary(rebalances)}")


# -- forward-cost -----------------------------------------------------------------------------------

async def counted(
    args: argparse.Namespace, admin_url: str, scratch: Path, run: str, *, measured: str, asked: str
) -> tuple[float, float]:
    """Two nodes, `owner` and `other`, the events the owner's; `measured` of them runs under
    callgrind while `args.requests` reservations are sent to `asked`. Returns instructions per
    reservation, as counted and less the node's idle rate (its lease renewals) over the window."""
    database_url = await create_database(admin_url, f"forward_cost_{run}")
    out_file = scratch / f"callgrind.{run}.out"
    async with aiohttp.ClientSession() as session:
        with nodes_on(database_url, scratch) as nodes:
            started = {
                name: nodes.start(f"{run}-{name}", valgrind=out_file if name == measured else None) for name in ("owner", "other")
            }
            for node in started.values():
                await wait_node_ready(session, node, VALGRIND_READY_TIMEOUT_S)
            await wait_balanced(session, started["other"], 2)
            events = await create_events(session, started["owner"], args.events)
            target, counting = started[asked], started[measured]
            await drive(target.base, events, "", WARMUP_REQUESTS, args.concurrency, 0)
            window = await counted_window(
                counting.process.pid, out_file, lambda: drive(target.base, events, "", args.requests, args.concurrency, WARMUP_REQUESTS)
            )
            counting.stop()
    if window.created != args.requests:
        raise RuntimeError(f"{run}: {window.created} of {args.requests} reservations were created")
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(out_file_of_dump(out_file), args.keep / out_file.name)
    raw, net = window.per_reservation, window.per_reservation_less_idle
    print(
        f"{run:22} {raw:10,.0f} instructions per reservation ({net:,.0f} less idle {window.idle_per_s:,.0f}/s over {window.seconds:.1f} s)",
        flush=True,
    )
    return raw, net


async def http_floor(args: argparse.Namespace, scratch: Path) -> float:
    """Instructions per request of the no-op aiohttp server (loadtests/noop_server.py): what any
    node that receives a request over HTTP spends before it does anything, forwarding included."""
    port = free_port()
    out_file = scratch / "callgrind.noop.out"
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out_file}",
         sys.executable, "-m", "loadtests.noop_server", str(port)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        await wait_listening(port, VALGRIND_READY_TIMEOUT_S)
        base = f"http://127.0.0.1:{port}"
        await drive(base, ["evt_noop"], "", WARMUP_REQUESTS, args.concurrency, 0)
        callgrind_control("--instr=on", str(server.pid))
        answered = await drive(base, ["evt_noop"], "", args.requests, args.concurrency, WARMUP_REQUESTS)
        callgrind_control("--instr=off", str(server.pid))
    finally:
        server.terminate()
        server.wait(timeout=120)
    floor = callgrind_totals(out_file) / answered
    print(f"{'no-op HTTP server':22} {floor:10,.0f} instructions per request", flush=True)
    return floor


async def forward_cost(args: argparse.Namespace, admin_url: str, scratch: Path) -> None:
    floor = await http_floor(args, scratch)
    direct = await counted(args, admin_url, scratch, "direct", measured="owner", asked="owner")
    owner = await counted(args, admin_url, scratch, "owner-when-forwarded", measured="owner", asked="other")
    forwarder = await counted(args, admin_url, scratch, "forwarder", measured="other", asked="other")
    print()
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, {args.requests:,} reservations"
        f" over {args.events} event(s), {args.concurrency} at a time"
    )
    for label, index in (("as counted", 0), ("less idle", 1)):
        total = owner[index] + forwarder[index]
        print(
            f"- {label}: direct {direct[index]:,.0f}; forwarded {total:,.0f} (owner {owner[index]:,.0f} + forwarder"
            f" {forwarder[index]:,.0f}) = {total / direct[index]:.2f}x direct"
        )
    print(
        f"- the floor of forwarding over HTTP: the owner's cost and a no-op HTTP server's,"
        f" (direct + {floor:,.0f}) / direct = {(direct[1] + floor) / direct[1]:.2f}x (less idle);"
        f" the forwarder spends {forwarder[1] - floor:+,.0f} beyond that floor"
    )


# -- throughput (python -m loadtests.bench --nodes N) ----------------------------------------------

HAPROXY_READY_TIMEOUT_S = 30.0


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise SystemExit("haproxy is needed: apt-get install haproxy")
    return found


async def forwarded_total(session: aiohttp.ClientSession, nodes: list[Node]) -> float:
    """Requests the nodes forwarded to another, so far (their inventoryd_forwarded_requests_total)."""
    total = 0.0
    for node in nodes:
        async with session.get(f"{node.base}/metrics") as response:
            text = await response.text()
        for line in text.splitlines():
            if line.startswith("inventoryd_forwarded_requests_total{"):
                total += float(line.rpartition(" ")[2])
    return total


async def measure_cluster(
    target: str, scenario: str, events: int, admin_url: str, args: argparse.Namespace, scratch: Path
) -> Result:
    """`cluster-N`: N nodes, as shipped (a service token, authentication and rate limits on), with
    the HAProxy ids and weights of their `server` lines, and HAProxy in front; `cluster-N-direct`:
    the same nodes, the load sent to the first of them, the events made on all of them."""
    count = int(target.split("-")[1])
    through_proxy = not target.endswith("-direct")
    database_url = await create_database(admin_url, f"bench_{target.replace('-', '_')}_{scenario}")
    servers = [haproxy_config.Server(f"node{index + 1}", f"127.0.0.1:{free_port()}", index + 1) for index in range(count)]
    env = {"INVENTORYD_AUTH": "on", "INVENTORYD_RATE_LIMITS": "on", "INVENTORYD_ACCESS_LOG": "1" if args.access_log else "0"}
    proxy_port = free_port()
    config = scratch / f"haproxy-{target}-{scenario}.cfg"
    config.write_text(haproxy_config.render(servers, bind=f"127.0.0.1:{proxy_port}", stats_socket=None, log=False, path=str(config)))
    proxy: subprocess.Popen[bytes] | None = None
    async with aiohttp.ClientSession() as session:
        with nodes_on(database_url, scratch) as nodes:
            try:
                started = []
                for server in servers:
                    port = int(server.address.rpartition(":")[2])
                    started.append(
                        nodes.start(
                            f"{target}-{scenario}-{server.name}", port, env=env, advertise_url=f"http://{server.address}",
                            lb_server_id=server.server_id, lb_weight=server.weight,
                        )
                    )
                for node in started:
                    await wait_node_ready(session, node)
                await wait_balanced(session, started[0], count)
                proxy = subprocess.Popen([haproxy_binary(), "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                await wait_listening(proxy_port, HAPROXY_READY_TIMEOUT_S)
                base = f"http://127.0.0.1:{proxy_port}" if through_proxy else started[0].base
                token = make_service_token(database_url)
                if through_proxy:
                    ids = await setup_inventoryd(base, events)
                else:
                    # A node makes new events in its own shards: made on every node in turn, the last
                    # first, the events the first node is sent are mostly another's ((N-1)/N spread,
                    # the one hot event always), as when organisers reach any node.
                    shares = [events // count + (index < events % count) for index in range(count)]
                    ids = []
                    for maker, share in zip(started[::-1], shares, strict=True):
                        ids += await setup_inventoryd(maker.base, share) if share else []
                return await load_and_count(
                    base, database_url, ids, token, [node.process.pid for node in started], target, scenario,
                    "SELECT count(*) FROM journal WHERE kind = 'reservation_held'", args, scratch,
                    forwarded=lambda: forwarded_total(session, started),
                )
            finally:
                if proxy is not None:
                    proxy.terminate()
                    proxy.wait(timeout=30)


# -- entry point ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    modes = parser.add_subparsers(dest="mode", required=True)
    one = modes.add_parser("failover", help="SIGKILL / SIGTERM / rejoin, timed")
    one.add_argument("--trials", type=int, default=10, help="SIGKILL trials, and as many SIGTERM ones")
    one.add_argument("--nodes", type=int, default=2)
    one.add_argument("--events", type=int, default=8, help="the victim's events probed per trial")
    cost = modes.add_parser("forward-cost", help="instructions per forwarded reservation (callgrind)")
    cost.add_argument("--requests", type=int, default=2000)
    cost.add_argument("--concurrency", type=int, default=32)
    cost.add_argument("--events", type=int, default=1)
    cost.add_argument("--keep", type=Path, help="copy the callgrind files here (for callgrind_annotate)")
    args = parser.parse_args()
    if args.mode == "forward-cost" and (shutil.which("valgrind") is None or shutil.which("callgrind_control") is None):
        raise SystemExit("needs valgrind (apt install valgrind)")
    if args.mode == "failover" and not (1 <= args.trials <= 100 and 2 <= args.nodes <= 8 and 1 <= args.events <= 64):
        raise SystemExit("--trials 1..100, --nodes 2..8, --events 1..64")
    with scratch_postgres("inventoryd-cluster-bench-") as (embedded, scratch):
        asyncio.run({"failover": failover, "forward-cost": forward_cost}[args.mode](args, embedded.dsn("postgres"), scratch))


if __name__ == "__main__":
    main()
