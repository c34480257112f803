"""inventoryd behind the real HAProxy 2.6: HAProxy sends every request for an event to the node that
owns the event's shard, so that (almost) no request needs a forwarding hop.

Method: the configuration is generated (`loadtests.haproxy_config`), and the committed files must be
its output and pass `haproxy -c`. The ring copied into the nodes (`inventoryd.cluster.ring`) is
compared with the binary itself: haproxy runs in the foreground in front of three stub HTTP servers
on loopback that answer with their own name, and for every one of the 256 shards and all four path
forms (an event, a sub-path of it, a reservation's action, a ticket) the server that answered must be
the one the Python ring names; again with one server stopped (and marked down by the health check),
where no shard may move between the survivors. Then the real thing: three `inventoryd serve` nodes
(`--lb-server-id 1..3`) behind haproxy, events created and a load of reserves, confirms and cancels
sent through it; the nodes' forwarded-request counters, summed, against the requests sent must stay
small, and the log must show nothing oversold; a mutant whose nodes take their neighbours' ids must
be caught by the same count. Every wait is bounded; haproxy and every node are stopped by their PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import random
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from inventoryd.cluster import shard_of, targets
from inventoryd.cluster.ring import RingNode
from loadtests import haproxy_config
from loadtests.haproxy_config import Server
from persistence import limits as persistence_limits
from tests.helpers import (
    ADMIN,
    HAPROXY_CHECK_TIMEOUT_S,
    Load,
    Node,
    assert_haproxy_config_valid,
    check_nothing_acknowledged_is_lost,
    check_the_log,
    cluster_of,
    cluster_view,
    create_events,
    free_port,
    haproxy_binary,
    metric,
    wait_node_ready,
)

SHARDS = persistence_limits.CLUSTER_SHARDS
# What only nodes may send each other: the proxy strips them from every client request.
INTERNAL_HEADERS = ("Inventoryd-Forwarded-By", "Inventoryd-Forward-Token", "Inventoryd-Forwarded-For")
RUNTIME_API_TIMEOUT_S = 10.0
HAPROXY_STOP_TIMEOUT_S = 10.0
# Health checks every 500 ms (250 ms while changing), rise/fall 2: a state change takes about 1 s.
SERVER_STATE_TIMEOUT_S = 10.0
SETTLE_TIMEOUT_S = 30.0
RING_REQUESTS_IN_FLIGHT = 16
LOAD_S = 4.0
LOAD_BUYERS = 16
# The share of requests sent through haproxy that a node had to forward: steady state is 0; the
# bound leaves room for a shard still moving when the load starts.
FORWARDED_SHARE_MAX = 0.05
# With every node on another's ring position, every request for an event hops.
MUTANT_FORWARDED_SHARE_MIN = 0.5
PATH_FORMS = (
    "/v1/events/evt_{key}",
    "/v1/events/evt_{key}/availability",
    "/v1/reservations/rsv_{key}_12/confirm",
    "/v1/tickets/tkt_{key}_12_3",
)


@contextlib.contextmanager
def running_haproxy(config: str, directory: Path) -> Iterator[subprocess.Popen[bytes]]:
    """haproxy in the foreground (-db: no daemon, no master) with this configuration; its log in
    `directory`. Stopped (SIGTERM, then SIGKILL) by its PID on exit."""
    config_path = directory / "haproxy.cfg"
    config_path.write_text(config)
    log_path = directory / "haproxy.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([haproxy_binary(), "-db", "-f", str(config_path)], stdout=log, stderr=log)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=HAPROXY_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=HAPROXY_STOP_TIMEOUT_S)


async def server_states(socket_path: Path) -> dict[str, str]:
    """Each backend server's status (UP, DOWN, ...) from haproxy's runtime API (`show stat`)."""
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(socket_path)), RUNTIME_API_TIMEOUT_S)
    try:
        writer.write(b"show stat\n")
        await writer.drain()
        text = (await asyncio.wait_for(reader.read(), RUNTIME_API_TIMEOUT_S)).decode()
    finally:
        writer.close()
    rows = csv.DictReader(text.removeprefix("# ").splitlines())
    return {row["svname"]: row["status"].split()[0] for row in rows if row["pxname"] == "inventoryd" and row["svname"] != "BACKEND"}


async def wait_server_states(process: subprocess.Popen[bytes], socket_path: Path, wanted: dict[str, str]) -> None:
    deadline = time.monotonic() + SERVER_STATE_TIMEOUT_S
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        assert process.poll() is None, "haproxy exited"
        with contextlib.suppress(OSError, TimeoutError):
            states = await server_states(socket_path)
            if all(states.get(name) == state for name, state in wanted.items()):
                return
        await asyncio.sleep(0.05)
    raise AssertionError(f"haproxy's servers are {states}, not {wanted}")


def config_for(servers: list[Server], front_port: int, directory: Path) -> str:
    return haproxy_config.render(servers, bind=f"127.0.0.1:{front_port}", stats_socket=str(directory / "haproxy.sock"))


def ring_targets(servers: list[Server]) -> list[str]:
    """Which server the nodes' copy of the ring gives each shard."""
    return targets(SHARDS, [RingNode(server.name, server.server_id, server.weight) for server in servers])


def one_key_per_shard() -> dict[int, str]:
    rng = random.Random(2026)
    keys: dict[int, str] = {}
    while len(keys) < SHARDS:
        key = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz234567") for _ in range(16))
        keys.setdefault(shard_of(f"evt_{key}", SHARDS), key)
    return keys


# -- the configuration ------------------------------------------------------------------------------


def test_the_committed_configurations_are_the_generators() -> None:
    assert haproxy_config.LOCAL_FILE.read_text() == haproxy_config.local(), "regenerate: python -m loadtests.haproxy_config --write"
    assert haproxy_config.COMPOSE_FILE.read_text() == haproxy_config.compose(), "regenerate: python -m loadtests.haproxy_config --write"
    assert f"mod({SHARDS})" in haproxy_config.local()


def test_the_configurations_are_valid() -> None:
    for path in (haproxy_config.LOCAL_FILE, haproxy_config.COMPOSE_FILE):
        assert_haproxy_config_valid(path)


def test_the_generator_refuses_what_would_misalign() -> None:
    for servers in (
        [Server("a", "127.0.0.1:1", 1), Server("b", "127.0.0.1:2", 1)],  # one id twice
        [Server("a", "127.0.0.1:1", 1, weight=0)],
        [Server("a", "127.0.0.1:1", 1, weight=257)],
        [],
    ):
        try:
            haproxy_config.render(servers)
        except ValueError:
            continue
        raise AssertionError(f"accepted {servers}")


# -- the ring: Python's copy against the binary ------------------------------------------------------


@contextlib.asynccontextmanager
async def stub_servers(names: list[str]) -> AsyncIterator[dict[str, tuple[int, web.AppRunner]]]:
    """HTTP servers on loopback that answer every request with their own name (and /readyz 200),
    and say whether the cluster-internal headers reached them."""

    def app_for(name: str) -> web.Application:
        async def answer(request: web.Request) -> web.Response:
            leaked = [header for header in INTERNAL_HEADERS if header in request.headers]
            return web.Response(text=name, headers={"X-Leaked": ",".join(leaked)})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", answer)
        return app

    running: dict[str, tuple[int, web.AppRunner]] = {}
    try:
        for name in names:
            runner = web.AppRunner(app_for(name), access_log=None)
            await runner.setup()
            port = free_port()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            running[name] = (port, runner)
        yield running
    finally:
        for _, runner in running.values():
            await runner.cleanup()


async def who_answers(session: aiohttp.ClientSession, front: str, keys: dict[int, str]) -> dict[int, set[str]]:
    """For each shard, the servers that answered its four path forms."""
    answered: dict[int, set[str]] = {shard: set() for shard in keys}
    gate = asyncio.Semaphore(RING_REQUESTS_IN_FLIGHT)

    async def ask(shard: int, path: str) -> None:
        async with gate, session.get(front + path) as response:
            assert response.status == 200, (path, response.status)
            answered[shard].add(await response.text())

    await asyncio.gather(*(ask(shard, form.format(key=key)) for shard, key in keys.items() for form in PATH_FORMS))
    return answered


def mismatches(answered: dict[int, set[str]], expected: list[str]) -> list[tuple[int, set[str], str]]:
    return [(shard, got, expected[shard]) for shard, got in sorted(answered.items()) if got != {expected[shard]}]


async def test_the_python_ring_is_haproxys(tmp_path: Path) -> None:
    version = subprocess.run([haproxy_binary(), "-v"], capture_output=True, text=True, timeout=HAPROXY_CHECK_TIMEOUT_S).stdout
    version = version.partition("\n")[0]
    names = ["node1", "node2", "node3"]
    keys = one_key_per_shard()
    async with stub_servers(names) as stubs, aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HAPROXY_CHECK_TIMEOUT_S)) as session:
        servers = [Server(name, f"127.0.0.1:{stubs[name][0]}", index + 1) for index, name in enumerate(names)]
        front_port = free_port()
        front = f"http://127.0.0.1:{front_port}"
        socket_path = tmp_path / "haproxy.sock"
        with running_haproxy(config_for(servers, front_port, tmp_path), tmp_path) as haproxy:
            await wait_server_states(haproxy, socket_path, dict.fromkeys(names, "UP"))
            all_up = ring_targets(servers)
            answered = await who_answers(session, front, keys)
            wrong = mismatches(answered, all_up)
            print(
                f"{version}: 3 servers up, {len(keys)} shards x {len(PATH_FORMS)} paths, {len(wrong)} mismatches; shards per server {dict(Counter(all_up))}"
            )
            assert not wrong, f"{len(wrong)} shards go elsewhere than the Python ring says (shard, haproxy, python): {wrong[:10]}"

            # No event key (catalogue, users, a create, a malformed id): round robin over all three
            # (HAProxy walks its ring: over a short window the shares are uneven, over 120 even enough).
            spread: Counter[str] = Counter()
            for path in ["/v1/events", "/v1/users/alice/reservations", "/v1/events/evt_short", "/v1/auth/login"] * 30:
                async with session.get(front + path) as response:
                    spread[await response.text()] += 1
            assert set(spread) == set(names) and min(spread.values()) >= 0.15 * spread.total(), spread
            # Clients cannot pass for a node.
            forged = {
                "Inventoryd-Forwarded-By": "nod_aaaaaaaaaaaaaaaa", "Inventoryd-Forward-Token": "0" * 64,
                "Inventoryd-Forwarded-For": "203.0.113.9",
            }
            async with session.post(f"{front}/v1/events/evt_{keys[0]}/reservations", headers=forged) as response:
                assert response.headers["X-Leaked"] == "", response.headers["X-Leaked"]

            # node2 stops: its shards go to the survivors, as the Python ring over them says, and no
            # other shard moves.
            await stubs["node2"][1].cleanup()
            await wait_server_states(haproxy, socket_path, {"node1": "UP", "node2": "DOWN", "node3": "UP"})
            survivors = [server for server in servers if server.name != "node2"]
            two_up = ring_targets(survivors)
            answered = await who_answers(session, front, keys)
            wrong = mismatches(answered, two_up)
            moved = [shard for shard in range(SHARDS) if all_up[shard] != "node2" and two_up[shard] != all_up[shard]]
            print(f"node2 down: {len(wrong)} mismatches, {len(moved)} shards moved between the survivors")
            assert not wrong, f"with node2 down, {len(wrong)} shards go elsewhere than the Python ring says: {wrong[:10]}"
            assert not moved, moved


# -- the real thing ---------------------------------------------------------------------------------


async def wait_aligned(session: aiohttp.ClientSession, node: Node, servers: list[Server]) -> dict[str, Any]:
    """Until every shard is held by the node the ring gives it (as `node` sees the cluster)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while True:
        view = await cluster_view(session, node)
        by_id = {entry["lb_server_id"]: entry["node_id"] for entry in view["nodes"] if entry["live"]}
        if set(by_id) == {server.server_id for server in servers}:
            expected = [by_id[next(s.server_id for s in servers if s.name == name)] for name in ring_targets(servers)]
            if [shard["owner"] for shard in view["shards"]] == expected:
                return view
        assert time.monotonic() < deadline, f"the shards are not where the ring puts them: {view['nodes']}"
        await asyncio.sleep(0.1)


async def forwarded(session: aiohttp.ClientSession, nodes: list[Node]) -> float:
    return sum([await metric(session, node, "inventoryd_forwarded_requests_total") for node in nodes])


@pytest.mark.parametrize("ids", ["matching", "rotated (the mutant)"])
async def test_behind_haproxy_requests_reach_the_owner_directly(database_url: str, tmp_path: Path, ids: str) -> None:
    # The mutant starts each node with its neighbour's --lb-server-id: the nodes agree with one
    # another, not with haproxy, and nearly every request must hop; the same oracle must see it.
    mutant = ids != "matching"
    ports = [free_port() for _ in range(3)]
    servers = [Server(f"node{index + 1}", f"127.0.0.1:{port}", index + 1) for index, port in enumerate(ports)]
    front_port = free_port()
    socket_path = tmp_path / "haproxy.sock"
    async with aiohttp.ClientSession(headers=ADMIN, timeout=aiohttp.ClientTimeout(total=20)) as session:
        with running_haproxy(config_for(servers, front_port, tmp_path), tmp_path) as haproxy, cluster_of(database_url, tmp_path) as cluster:
            nodes = [
                cluster.start(
                    server.name, port=port, lb_server_id=server.server_id % 3 + 1 if mutant else server.server_id, lb_weight=server.weight
                )
                for server, port in zip(servers, ports, strict=True)
            ]
            for node in nodes:
                await wait_node_ready(session, node)
            await wait_aligned(session, nodes[0], servers)
            await wait_server_states(haproxy, socket_path, dict.fromkeys((s.name for s in servers), "UP"))
            proxy = Node("haproxy", front_port, haproxy, tmp_path / "haproxy.log")

            before = await forwarded(session, nodes)
            events = await create_events(session, [proxy], 12)
            load = Load(session, [proxy], events)
            async with load.running_with(buyers=LOAD_BUYERS):
                await asyncio.sleep(LOAD_S)
            sent = len(events) + len(load.answers)
            hops = await forwarded(session, nodes) - before
            relayed = sum(1 for *_, was_relayed in load.answers if was_relayed)
            share = hops / sent
            print(
                f"through haproxy: {sent} requests, {hops:.0f} forwarded by a node ({share:.2%}), {relayed} answers relayed; {load.statuses}"
            )
            assert len(load.acknowledged) > 100, load.statuses
            if mutant:
                assert share > MUTANT_FORWARDED_SHARE_MIN, f"misaligned ids, yet only {share:.2%} hopped: the oracle cannot fail"
                return
            assert share < FORWARDED_SHARE_MAX, f"{share:.2%} of the requests needed a hop"
            await check_nothing_acknowledged_is_lost(load, proxy)
        await check_the_log(database_url, events)
