"""Helpers shared by the tests."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from inventoryd import cli
from inventoryd.audit import audit
from inventoryd.cluster import new_node_id
from inventoryd.http import keys

# The cluster tests' node helpers are the benchmarks' (one home), offered here with every test helper.
from loadtests.nodes import Node, cluster_view, spawn_node, wait_node_ready, wait_settled  # noqa: F401
from persistence import cluster as cluster_store
from persistence.embedded import STOP_TIMEOUT_S, EmbeddedPostgres
from persistence.journal import Append, AppendFailed, AppendOutcomeUnknown, Journal, connect

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_S = 60.0

# The bootstrap admin token the test apps are started with (INVENTORYD_ADMIN_TOKEN).
ADMIN_TOKEN = "test-admin-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2027, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def event_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "Hot concert",
        "starts_at": "2027-06-01T19:00:00Z",
        "currency": "EUR",
        "ticket_types": [{"code": "GA", "name": "General admission", "price": 4500, "capacity": 100}],
    }
    body.update(overrides)
    return body


async def create_event(client: Any, **overrides: Any) -> dict[str, Any]:
    response = await client.post("/v1/events", json=event_body(**overrides))
    assert response.status == 201, await response.text()
    return await response.json()


class FaultyJournal(Journal):
    """The real journal, with faults on demand: `faults` is consumed one per append.

    - "fail": refused before anything is written (AppendFailed);
    - "unknown_lost": nothing is written, but the caller is told the outcome is unknown;
    - "unknown_committed": written and committed, and the caller is told the outcome is unknown.
    While `gate` is set and not open, appends wait at the door, before the journal has them. While
    `write_gate` is set and not open, the writer holds each transaction before it sends it: a
    commit in flight, which messages that come meanwhile cannot join.
    """

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn)
        self.faults: deque[str] = deque()
        self.gate: asyncio.Event | None = None
        self.waiting_at_gate = 0
        self.write_gate: asyncio.Event | None = None
        self.writes_at_gate = 0

    async def append(self, batch: Append) -> None:
        if self.gate is not None and not self.gate.is_set():
            self.waiting_at_gate += 1
            try:
                await self.gate.wait()
            finally:
                self.waiting_at_gate -= 1
        fault = self.faults.popleft() if self.faults else None
        if fault == "fail":
            raise AppendFailed("injected: refused")
        if fault == "unknown_lost":
            raise AppendOutcomeUnknown("injected: lost")
        await super().append(batch)
        if fault == "unknown_committed":
            raise AppendOutcomeUnknown("injected: committed, but the answer was lost")

    async def _write(self, batches: list[Append]) -> None:
        if self.write_gate is not None and not self.write_gate.is_set():
            self.writes_at_gate += 1
            try:
                await self.write_gate.wait()
            finally:
                self.writes_at_gate -= 1
        await super()._write(batches)


async def wait_until(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


# -- a real `inventoryd serve` process --------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def running_server(
    database_url: str, port: int, *, env: dict[str, str] | None = None, log_path: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`inventoryd serve` on the test's database, with the test admin token, JSON logs, no access
    lines, and `env` on top; its output goes to `log_path` (else nowhere). Killed on exit if alive."""
    log = open(log_path or os.devnull, "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "inventoryd", "serve", "--port", str(port), "--database-url", database_url],
        cwd=ROOT,
        stdout=log,
        stderr=log,
        env={
            **os.environ,
            "INVENTORYD_LOG_FORMAT": "json",
            "INVENTORYD_ACCESS_LOG": "0",
            "INVENTORYD_ADMIN_TOKEN": ADMIN_TOKEN,
            **(env or {}),
        },
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        log.close()


async def wait_ready(
    session: aiohttp.ClientSession, base: str, process: subprocess.Popen[bytes], *, alone: bool = True
) -> None:
    """Until the server answers /readyz 200 and (`alone`: it is the only node) it holds every shard:
    a server restarted after a SIGKILL takes its dead predecessor's shards once their leases run
    out (a few seconds), and answers 503 for their events until then."""
    deadline = asyncio.get_running_loop().time() + STARTUP_TIMEOUT_S
    while asyncio.get_running_loop().time() < deadline:
        assert process.poll() is None, "the server exited during start-up"
        try:
            async with session.get(f"{base}/readyz") as response:
                if response.status == 200 and (not alone or await holds_every_shard(session, base)):
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("the server did not become ready")


async def holds_every_shard(session: aiohttp.ClientSession, base: str) -> bool:
    """The node at `base` holds every shard of the cluster."""
    async with session.get(f"{base}/v1/cluster", headers=ADMIN) as response:
        if response.status != 200:
            return False
        view = await response.json()
    return all(shard["owner"] == view["node_id"] and shard["local_lease_left_s"] for shard in view["shards"])


# -- HAProxy (tests/test_haproxy.py, tests/test_containers.py) -----------------------------------

HAPROXY_CHECK_TIMEOUT_S = 30.0


def haproxy_binary() -> str:
    """The haproxy executable (2.6: the ring the nodes copy is that version's)."""
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    assert found, "haproxy 2.6 is a test dependency (.ci/run installs it: apt-get install -y haproxy)"
    return found


def haproxy_check(path: Path) -> subprocess.CompletedProcess[str]:
    """`haproxy -c -f path`: the configuration parsed and checked, nothing started."""
    return subprocess.run(
        [haproxy_binary(), "-c", "-f", str(path)], capture_output=True, text=True, timeout=HAPROXY_CHECK_TIMEOUT_S
    )


def assert_haproxy_config_valid(path: Path) -> None:
    result = haproxy_check(path)
    assert result.returncode == 0 and "Configuration file is valid" in result.stdout, result.stdout + result.stderr


# -- reading what the service shows -----------------------------------------------------------


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def full_state(app: Any) -> dict[str, Any]:
    state = {}
    for actor in app[keys.REGISTRY].actors():
        inventory = actor.inventory
        state[actor.event_id] = (
            inventory.definition,
            inventory.status,
            {code: (t.capacity, t.held, t.sold, t.price) for code, t in inventory.ticket_types.items()},
            dict(inventory.reservations),
            {user: seats for user, seats in inventory.seats_by_user.items() if seats},
            inventory.reservations_created,
            inventory.last_seq,
            {code: (t.waitlist[t.waitlist_head :], t.waiting, t.checked_in, t.cancelled, t.revenue) for code, t in inventory.ticket_types.items()},
        )
    return state


def crash_postgres(server: EmbeddedPostgres) -> None:
    """Stop an embedded PostgreSQL at once, as a crash would (immediate mode: no shutdown checkpoint)."""
    server._run(
        [str(server.bin_dir / "pg_ctl"), "stop", "-D", str(server.data_dir), "-m", "immediate", "-w"],
        timeout=STOP_TIMEOUT_S,
    )
    server.started_here = False


async def hold_a_shard(database_url: str, shard: int = 0) -> tuple[int, int]:
    """Lease one shard to a node of the test's own (a registered node row), as `Membership` does:
    a journal written to directly needs its appends' shard held at their epoch (the fence)."""
    connection = await connect(database_url)
    try:
        node_id = new_node_id()
        await cluster_store.register_node(connection, node_id, "http://127.0.0.1:9", None, 16)
        [(taken, epoch)] = await cluster_store.take(connection, node_id, [shard], 3600.0)
        return taken, epoch
    finally:
        await connection.close()


# -- a cluster of real nodes (tests/cluster_node.py), and load on it ------------------------------
#
# Nodes are subprocesses on loopback, each with its own log file; `cluster_of` kills every one it
# started, by its PID. `Load` is buyers reserving, confirming and cancelling through the nodes (or a
# load balancer in front of them); the checks after it read what the service answered and the log.


@dataclass
class Cluster:
    database_url: str
    directory: Path
    nodes: list[Node] = field(default_factory=list)

    def start(self, name: str, *, env: dict[str, str] | None = None, database_url: str | None = None, **flags: Any) -> Node:
        port = flags.pop("port", None) or free_port()
        arguments = ["--port", str(port), "--advertise-url", f"http://127.0.0.1:{port}"]
        for flag, value in flags.items():
            arguments += [f"--{flag.replace('_', '-')}", str(value)]
        argv = [sys.executable, "-m", "tests.cluster_node", "serve", "--database-url", database_url or self.database_url, *arguments]
        node = spawn_node(argv, name, port, self.directory, ADMIN_TOKEN, env or {})
        self.nodes.append(node)
        return node

    def stop_all(self) -> None:
        for node in self.nodes:
            node.signal(signal.SIGCONT)
            node.signal(signal.SIGKILL)
        for node in self.nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.process.wait(timeout=30)


@contextlib.contextmanager
def cluster_of(database_url: str, directory: Path) -> Iterator[Cluster]:
    cluster = Cluster(database_url, directory)
    try:
        yield cluster
    finally:
        cluster.stop_all()


def cluster_event_body(name: str, capacity: int = 10_000) -> dict[str, Any]:
    return {
        "name": name,
        "starts_at": "2027-06-01T19:00:00Z",
        "currency": "EUR",
        "ticket_types": [{"code": "GA", "name": "GA", "price": 100, "capacity": capacity}],
    }


async def create_events(session: aiohttp.ClientSession, nodes: list[Node], count: int) -> list[str]:
    """Events made through each node in turn (each in a shard of the node that made it)."""
    ids = []
    for index in range(count):
        node = nodes[index % len(nodes)]
        async with session.post(f"{node.base}/v1/events", json=cluster_event_body(f"cluster {index}")) as response:
            assert response.status == 201, await response.text()
            ids.append((await response.json())["id"])
    return ids


@dataclass
class Load:
    """Buyers reserving, confirming and cancelling through random nodes, each request with its own
    Idempotency-Key; what was acknowledged is kept, with the answer, to be checked after."""

    session: aiohttp.ClientSession
    nodes: list[Node]
    events: list[str]
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    acknowledged: dict[str, tuple[str, str, dict[str, Any] | None, dict[str, Any]]] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    reserved: list[str] = field(default_factory=list)
    # (when, the node asked, status, whether another node answered): who acknowledged what, when.
    answers: list[tuple[float, str, int, bool]] = field(default_factory=list)
    running: bool = True

    async def buyer(self, index: int) -> None:
        attempt = 0
        while self.running:
            attempt += 1
            key = f"b{index}-{attempt}"
            live = [node for node in self.nodes if node.process.poll() is None] or self.nodes
            node = self.rng.choice(live)
            if self.reserved and self.rng.random() < 0.3:
                verb = self.rng.choice(["confirm", "confirm", "cancel"])
                path, body = f"/v1/reservations/{self.rng.choice(self.reserved)}/{verb}", None
            else:
                path = f"/v1/events/{self.rng.choice(self.events)}/reservations"
                body = {"ticket_type": "GA", "quantity": 1, "user_id": f"u{index}-{attempt}"}
            try:
                async with self.session.post(node.base + path, json=body, headers={"Idempotency-Key": key}) as response:
                    status = response.status
                    answer = await response.json()
                    relayed = "Inventoryd-Forwarded-To" in response.headers
                    self.answers.append((time.monotonic(), node.name, status, relayed))
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.05)
                continue
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if status in (200, 201):
                self.acknowledged[key] = (path, answer["status"], body, answer)
                if status == 201:
                    self.reserved.append(answer["id"])
            elif status in (429, 503):
                assert "Retry-After" in response.headers, answer
                await asyncio.sleep(0.05)
            else:
                assert status == 409, (status, answer)

    @contextlib.asynccontextmanager
    async def running_with(self, buyers: int) -> AsyncIterator[Load]:
        tasks = [asyncio.create_task(self.buyer(index)) for index in range(buyers)]
        try:
            yield self
        finally:
            self.running = False
            await asyncio.gather(*tasks)


_STEP = {"held": 1, "confirmed": 2, "cancelled": 3, "expired": 3}


async def check_nothing_acknowledged_is_lost(load: Load, node: Node) -> None:
    """Every acknowledged change is there (a reservation never found behind its last acknowledged
    step), and every acknowledged request, retried with its key, gets its original answer."""
    latest: dict[str, str] = {}
    for _, step, _, answer in load.acknowledged.values():
        if _STEP[step] > _STEP.get(latest.get(answer["id"], ""), 0):
            latest[answer["id"]] = step
    for reservation_id, step in latest.items():
        async with load.session.get(f"{node.base}/v1/reservations/{reservation_id}") as response:
            assert response.status == 200, f"acknowledged {reservation_id} is missing: {await response.text()}"
            now = (await response.json())["status"]
        assert _STEP[now] >= _STEP[step], f"{reservation_id} was acknowledged {step}, is {now}"
    for key, (path, _, body, answer) in list(load.acknowledged.items())[:200]:
        async with load.session.post(f"{node.base}{path}", json=body, headers={"Idempotency-Key": key}) as response:
            assert response.status in (200, 201), await response.text()
            assert (await response.json())["id"] == answer["id"]


async def check_the_log(database_url: str, events: list[str]) -> None:
    """The audit passes; each event's epochs never decrease along its log; no record was written at
    a shard's old epoch after a newer epoch's first record (a deposed owner committed nothing)."""
    connection = await connect(database_url)
    try:
        results = await audit(connection)
        assert all(not result.problems for result in results), [r.line() for r in results if r.problems]
        rows = await connection.fetch(
            "SELECT event_id, seq, epoch FROM journal WHERE event_id = ANY($1::text[]) ORDER BY event_id, seq", events
        )
    finally:
        await connection.close()
    last: dict[str, int] = {}
    for event_id, seq, epoch in rows:
        assert epoch >= last.get(event_id, 0), f"{event_id} seq {seq}: epoch {epoch} after {last[event_id]}"
        last[event_id] = epoch


async def metric(session: aiohttp.ClientSession, node: Node, name: str) -> float:
    async with session.get(f"{node.base}/metrics") as response:
        found = samples(await response.text())
    return sum(value for (sample, _), value in found.items() if sample == name)


async def token_command(database_url: str, *words: str) -> tuple[int, str]:
    """Run `inventoryd token ...` as the CLI does, in a thread (it runs its own event loop), and
    without cli.main, which would set up logging for the whole process."""
    arguments = cli._parser().parse_args(["token", *words, "--database-url", database_url])
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = await asyncio.to_thread(cli.token, cli._settings(arguments), arguments)
    return code, out.getvalue().strip()


async def make_api_token(database_url: str, role: str, name: str) -> str:
    code, token = await token_command(database_url, "create", "--role", role, "--name", name)
    assert code == 0 and token.startswith("ivd_")
    return token


def one_type(capacity: int, code: str = "GA") -> list[dict[str, Any]]:
    return [{"code": code, "name": code, "price": 1000, "capacity": capacity}]


class Stream:
    """One `GET .../availability/stream` on its own TCP connection from a chosen source address."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: int) -> None:
        self.reader, self.writer, self.status = reader, writer, status

    @classmethod
    async def open(cls, port: int, event_id: str, source: str) -> Stream:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        writer.write(
            f"GET /v1/events/{event_id}/availability/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Accept: text/event-stream\r\n\r\n".encode()
        )
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        stream = cls(reader, writer, int(status_line.split()[1]))
        if stream.status == 200:
            # The first event: the server has counted this stream.
            while not (await asyncio.wait_for(reader.readline(), 5)).startswith(b"data:"):
                pass
        else:
            stream.close()
        return stream

    def close(self) -> None:
        self.writer.close()
