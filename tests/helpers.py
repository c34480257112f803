"""Helpers shared by the tests."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from inventoryd.cluster import new_node_id
from inventoryd.http import keys
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
