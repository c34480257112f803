"""The cluster: several real `inventoryd serve` processes on one PostgreSQL, exactly one fenced owner
per event, any node answering any request, failover within the lease.

Method: nodes are subprocesses on loopback (`tests/cluster_node.py`, which can slow a node's
journal or, for the mutation check, take the epoch out of its fence), driven by concurrent clients
with Idempotency-Keys against random nodes. Faults: SIGKILL, SIGSTOP past the lease then SIGCONT
(the zombie), and a TCP proxy the test controls between one node and the database. Oracles read the
log itself: no record acknowledged and then missing, nothing oversold (the audit), each event's
epochs never decreasing along its log, and no record written at a shard's old epoch after the
takeover committed. Every wait is bounded; every process is stopped by its PID.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from inventoryd.cluster import shard_of
from inventoryd.cluster.membership import LOCAL_LEASE_S
from inventoryd.limits import SHARD_LEASE_S, SHARD_RENEW_INTERVAL_S, STREAMS_PER_ADDRESS_MAX
from persistence import limits as persistence_limits
from persistence.embedded import EmbeddedPostgres
from persistence.journal import connect
from tests.helpers import (
    ADMIN,
    ADMIN_TOKEN,
    ROOT,
    Load,
    Node,
    Stream,
    check_nothing_acknowledged_is_lost,
    check_the_log,
    cluster_event_body,
    cluster_of,
    cluster_view,
    create_events,
    free_port,
    metric,
    wait_node_ready,
    wait_settled,
)

FAILOVER_BOUND_S = 5.0
SHARDS = persistence_limits.CLUSTER_SHARDS


async def database_now(database_url: str) -> Any:
    connection = await connect(database_url)
    try:
        return await connection.fetchval("SELECT clock_timestamp()")
    finally:
        await connection.close()


async def written_since(database_url: str, events: list[str], epochs: dict[int, int], since: Any) -> int:
    """Records of these events at these shard epochs whose transactions began after `since`."""
    connection = await connect(database_url)
    try:
        return int(
            await connection.fetchval(
                """SELECT count(*) FROM journal j
                   JOIN unnest($1::text[], $2::bigint[]) AS e (event_id, epoch) ON e.event_id = j.event_id AND e.epoch = j.epoch
                   WHERE j.recorded_at > $3""",
                events,
                [epochs[shard_of(event_id, SHARDS)] for event_id in events],
                since,
            )
        )
    finally:
        await connection.close()


async def stale_writes_after_takeover(database_url: str, events: list[str]) -> int:
    """Records at an epoch older than their shard's latest, written after that epoch was taken (its
    transaction began after the takeover committed): what a deposed owner committed. The fence's
    whole point is that there are none."""
    connection = await connect(database_url)
    try:
        return int(
            await connection.fetchval(
                """SELECT count(*) FROM journal j
                   JOIN unnest($1::text[], $2::int[]) AS e (event_id, shard_id) ON e.event_id = j.event_id
                   JOIN shards s ON s.shard_id = e.shard_id
                   WHERE j.epoch < s.epoch AND j.recorded_at > s.acquired_at""",
                events,
                [shard_of(event_id, SHARDS) for event_id in events],
            )
        )
    finally:
        await connection.close()


async def test_any_node_answers_for_any_event(database_url: str, tmp_path: Path) -> None:
    async with aiohttp.ClientSession(headers=ADMIN) as session:
        with cluster_of(database_url, tmp_path) as cluster:
            first = cluster.start("first")
            await wait_node_ready(session, first)
            second = cluster.start("second")
            await wait_node_ready(session, second)
            view = await wait_settled(session, first, owners=2, balanced=True)
            assert sum(node["shards"] for node in view["nodes"]) == SHARDS
            # Every shard's lease is live by the database's clock; the holder's own deadline is the shorter.
            assert all(0 < shard["lease_left_s"] <= SHARD_LEASE_S for shard in view["shards"]), view["shards"]
            mine = [shard for shard in view["shards"] if shard["owner"] == view["node_id"]]
            assert mine and all(shard["local_lease_left_s"] <= shard["lease_left_s"] for shard in mine)
            assert 0 <= view["map_age_s"] < 2 * SHARD_RENEW_INTERVAL_S
            events = await create_events(session, [first, second], 12)
            # A reservation through the node that does not own the event is forwarded to the one that does.
            for index, event_id in enumerate(events):
                other = [second, first][index % 2]
                async with session.post(
                    f"{other.base}/v1/events/{event_id}/reservations", json={"ticket_type": "GA", "quantity": 2, "user_id": "alice"}
                ) as response:
                    assert response.status == 201, await response.text()
                    reservation = await response.json()
                async with session.post(f"{first.base}/v1/reservations/{reservation['id']}/confirm") as response:
                    assert response.status == 200 and (await response.json())["status"] == "confirmed"
            assert await metric(session, first, "inventoryd_forwarded_requests_total") > 0
            # Listings and a user's history show every event, whichever node is asked.
            for node in (first, second):
                async with session.get(f"{node.base}/v1/events?limit=50") as response:
                    listing = await response.json()
                assert {item["id"] for item in listing["items"]} == set(events)
                assert all(item["ticket_types"][0]["sold"] == 2 for item in listing["items"])
                async with session.get(f"{node.base}/v1/users/alice/reservations?limit=50") as response:
                    history = await response.json()
                assert len(history["items"]) == len(events) and {item["status"] for item in history["items"]} == {"confirmed"}
            # A keyed create retried on the other node is the same event (its id follows from the key).
            keyed = {"Idempotency-Key": "create-once"}
            async with session.post(f"{first.base}/v1/events", json=cluster_event_body("once"), headers=keyed) as response:
                assert response.status == 201, await response.text()
                created = await response.json()
            async with session.post(f"{second.base}/v1/events", json=cluster_event_body("once"), headers=keyed) as response:
                assert response.status == 201 and (await response.json())["id"] == created["id"]
                assert response.headers.get("Idempotent-Replayed") == "true"
        await check_the_log(database_url, events)


async def test_a_stream_through_another_node_is_relayed_and_counted_by_its_client(database_url: str, tmp_path: Path) -> None:
    # An availability stream asked of a node that does not own the event is relayed from the owner
    # as it comes; the owner counts it against the client's address (which the forwarding node
    # passes on), not the forwarding node's: more clients than one address may hold all get theirs.
    async with aiohttp.ClientSession(headers=ADMIN) as session:
        with cluster_of(database_url, tmp_path) as cluster:
            asked, owner = cluster.start("asked"), cluster.start("owner")
            for node in (asked, owner):
                await wait_node_ready(session, node)
            await wait_settled(session, asked, owners=2, balanced=True)
            [event_id] = await create_events(session, [owner], 1)
            clients = STREAMS_PER_ADDRESS_MAX + 1
            streams = [await Stream.open(asked.port, event_id, f"127.0.{20 + index // 250}.{1 + index % 250}") for index in range(clients)]
            try:
                assert [stream.status for stream in streams] == [200] * clients
                async with session.post(
                    f"{asked.base}/v1/events/{event_id}/reservations", json={"ticket_type": "GA", "quantity": 3, "user_id": "u"}
                ) as response:
                    assert response.status == 201 and response.headers["Inventoryd-Forwarded-To"] == owner.base
                # The change reaches a relayed stream: its next event shows 3 fewer seats.
                while True:
                    line = await asyncio.wait_for(streams[0].reader.readline(), 10)
                    if line.startswith(b"data:") and b'"available":9997' in line.replace(b" ", b""):
                        break
            finally:
                for stream in streams:
                    stream.close()
            # Past the bound from one client address, through the other node too: refused.
            same = [await Stream.open(asked.port, event_id, "127.0.30.1") for _ in range(clients)]
            try:
                statuses = [stream.status for stream in same]
                assert statuses == [200] * STREAMS_PER_ADDRESS_MAX + [429], (
                    f"{statuses}\nasked:\n{asked.log_path.read_text()[-3000:]}\nowner:\n{owner.log_path.read_text()[-3000:]}"
                )
            finally:
                for stream in same:
                    stream.close()


async def test_a_killed_node_is_replaced_within_the_lease(database_url: str, tmp_path: Path) -> None:
    async with aiohttp.ClientSession(headers=ADMIN, timeout=aiohttp.ClientTimeout(total=20)) as session:
        with cluster_of(database_url, tmp_path) as cluster:
            nodes = [cluster.start(f"node{index}") for index in range(3)]
            for node in nodes:
                await wait_node_ready(session, node)
            await wait_settled(session, nodes[0], owners=3, balanced=True)
            events = await create_events(session, nodes, 100)  # as the issue asks: 100 events on three nodes
            doomed = nodes[2]
            doomed_view = await cluster_view(session, doomed)
            theirs = [event for event in events if doomed_view["shards"][shard_of(event, SHARDS)]["owner"] == doomed_view["node_id"]]
            assert theirs, "the node to kill owns none of the events"
            load = Load(session, nodes, events)
            async with load.running_with(buyers=16):
                await asyncio.sleep(1.5)
                doomed.signal(signal.SIGKILL)
                killed_at = time.monotonic()
                doomed.process.wait(timeout=10)
                survivors = nodes[:2]
                waiting = set(theirs)
                while waiting:
                    for event_id in list(waiting):
                        async with session.get(f"{survivors[0].base}/v1/events/{event_id}/availability") as response:
                            if response.status == 200:
                                waiting.discard(event_id)
                    assert time.monotonic() - killed_at < 30, f"{len(waiting)} events still not served"
                    await asyncio.sleep(0.05)
                failover_s = time.monotonic() - killed_at
                await asyncio.sleep(1.0)
            print(f"failover after SIGKILL: {failover_s:.2f} s for {len(theirs)} events; answers {load.statuses}")
            assert failover_s <= FAILOVER_BOUND_S
            assert load.acknowledged, "nothing was acknowledged"
            await check_nothing_acknowledged_is_lost(load, survivors[1])
        await check_the_log(database_url, events)


@pytest.mark.parametrize("fence", ["epoch", "mutant without the epoch check"])
async def test_a_zombie_can_commit_nothing_after_the_takeover(database_url: str, tmp_path: Path, fence: str) -> None:
    # A is paused (SIGSTOP) past its lease with appends in flight (its journal holds each
    # transaction 0.3 s, a slow disk), B takes its shards over, then A resumes: every append A
    # sends now is refused by the database, A finds its shards gone and serves by forwarding. The
    # mutant, whose fence does not compare epochs, must be caught by the same oracle.
    mutant = fence != "epoch"
    async with aiohttp.ClientSession(headers=ADMIN, timeout=aiohttp.ClientTimeout(total=30)) as session:
        with cluster_of(database_url, tmp_path) as cluster:
            env = {"INVENTORYD_TEST_WRITE_DELAY_S": "0.3", **({"INVENTORYD_TEST_NO_EPOCH_FENCE": "1"} if mutant else {})}
            zombie = cluster.start("zombie", env=env)
            await wait_node_ready(session, zombie)
            other = cluster.start("other")
            await wait_node_ready(session, other)
            # Once the join's rebalance is over, events made through the zombie are in its shards
            # and stay there until it is paused (made before, some could move to the newcomer).
            await wait_settled(session, zombie, owners=2, balanced=True)
            events = await create_events(session, [zombie], 4)
            load = Load(session, [zombie], events)
            buyers = [asyncio.create_task(load.buyer(index)) for index in range(12)]
            await asyncio.sleep(1.0)
            epochs = {shard["shard"]: shard["epoch"] for shard in (await cluster_view(session, zombie))["shards"]}
            zombie.signal(signal.SIGSTOP)
            stopped_at = time.monotonic()
            stopped_at_db = await database_now(database_url)
            load.running = False  # what is in flight at the zombie stays so until it resumes
            await wait_settled(session, other, owners=1, timeout_s=15)
            taken_after_s = time.monotonic() - stopped_at
            zombie.signal(signal.SIGCONT)
            await asyncio.wait_for(asyncio.gather(*buyers), timeout=30)
            await asyncio.sleep(1.0)
            # What the zombie wrote at its own epochs once it resumed, after its shards were taken.
            stale = await written_since(database_url, events, epochs, stopped_at_db)
            if mutant:
                assert stale > 0, "the mutant's stale writes went unseen: the oracle cannot fail"
                return
            fenced = await metric(session, zombie, "inventoryd_appends_fenced_total")
            print(f"zombie: shards taken {taken_after_s:.2f} s after the stop; appends fenced {fenced:.0f}; {load.statuses}")
            assert stale == 0, f"{stale} records written at a deposed epoch"
            assert fenced >= 1, "the zombie attempted no append after the takeover"
            # It stepped down (it may take shards again later, at new epochs, as a healthy node), and
            # answers by forwarding meanwhile; the new owner sells on.
            assert await metric(session, zombie, "inventoryd_shards_lost_total") >= 1
            async with session.post(
                f"{zombie.base}/v1/events/{events[0]}/reservations", json={"ticket_type": "GA", "quantity": 1, "user_id": "after"}
            ) as response:
                assert response.status == 201, await response.text()
            await check_nothing_acknowledged_is_lost(load, other)
        await check_the_log(database_url, events)


class DatabaseProxy:
    """A TCP proxy to the embedded PostgreSQL's Unix socket, which the test can cut and heal."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_unix_connection(self.socket_path)
        except OSError:
            writer.close()
            return
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._links.add(task)
            task.add_done_callback(self._links.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            sink.close()

    async def cut(self) -> None:
        """Every connection dropped, and new ones refused."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._links):
            task.cancel()
        await asyncio.gather(*self._links, return_exceptions=True)

    async def heal(self) -> None:
        await self.start()


async def test_a_node_cut_off_from_the_database_gives_its_shards_up(database_url: str, database_server: Any, tmp_path: Path) -> None:
    # The cut-off node stops answering for its shards from memory before their leases run out; the
    # other takes them; once it can reach the database again it finds them gone. Nothing acked is lost.
    embedded = database_server.embedded
    if embedded is None:
        pytest.skip("the proxy needs the embedded server's socket (INVENTORYD_TEST_DATABASE_URL given)")
    socket_path = str(embedded.socket_dir / ".s.PGSQL.5432")
    proxy = DatabaseProxy(socket_path)
    await proxy.start()
    database = urlsplit(database_url).path.lstrip("/")
    through_proxy = f"postgresql://inventoryd@127.0.0.1:{proxy.port}/{database}"
    async with aiohttp.ClientSession(headers=ADMIN, timeout=aiohttp.ClientTimeout(total=20)) as session:
        with cluster_of(database_url, tmp_path) as cluster:
            cut_off = cluster.start("cut-off", database_url=through_proxy)
            await wait_node_ready(session, cut_off)
            events = await create_events(session, [cut_off], 4)
            other = cluster.start("other")
            await wait_node_ready(session, other)
            load = Load(session, [cut_off, other], events)
            async with load.running_with(buyers=8):
                await asyncio.sleep(1.0)
                await proxy.cut()
                cut_at = time.monotonic()
                await wait_settled(session, other, owners=1, timeout_s=15)
                taken_after_s = time.monotonic() - cut_at
                await asyncio.sleep(1.0)
                healed_at = time.monotonic()
                await proxy.heal()
                await asyncio.sleep(2.0)
            print(f"cut off: shards taken {taken_after_s:.2f} s after the cut; {load.statuses}")
            assert taken_after_s <= 2 * FAILOVER_BOUND_S
            # Once its leases could have run out elsewhere, it acknowledged nothing itself: answers
            # from it were relayed from the new owner, or refusals to retry.
            deadline = cut_at + LOCAL_LEASE_S + 0.1
            own = [answer for answer in load.answers if answer[1] == "cut-off" and deadline < answer[0] < healed_at and answer[2] < 300]
            assert all(relayed for _, _, _, relayed in own), f"{sum(not r for *_, r in own)} answered from memory after its lease"
            # It found its shards gone once it could renew again (and may take some back later, as
            # a healthy node, at new epochs).
            assert await metric(session, cut_off, "inventoryd_shards_lost_total") >= 1
            assert await stale_writes_after_takeover(database_url, events) == 0
            await check_nothing_acknowledged_is_lost(load, other)
        await check_the_log(database_url, events)
    await proxy.cut()


async def test_join_leave_and_a_rolling_restart_under_load(database_url: str, tmp_path: Path) -> None:
    # Never two owners (epochs never decrease along any event's log, no stale write), nothing
    # acknowledged lost, and only 503s with Retry-After while shards move.
    async with aiohttp.ClientSession(headers=ADMIN, timeout=aiohttp.ClientTimeout(total=20)) as session:
        with cluster_of(database_url, tmp_path) as cluster:
            first = cluster.start("first")
            await wait_node_ready(session, first)
            events = await create_events(session, [first], 16)
            load = Load(session, [first], events)
            async with load.running_with(buyers=12):
                second = cluster.start("second")
                await wait_node_ready(session, second)
                load.nodes = [first, second]
                await wait_settled(session, first, owners=2)
                third = cluster.start("third")
                await wait_node_ready(session, third)
                load.nodes = [first, second, third]
                await wait_settled(session, first, owners=3)
                for index in range(3):  # a rolling restart: each node drained (SIGTERM), then started again
                    leaving = load.nodes[index]
                    load.nodes = [node for node in load.nodes if node is not leaving]
                    leaving.signal(signal.SIGTERM)
                    assert leaving.process.wait(timeout=30) == 0, leaving.log_path.read_text()[-3000:]
                    back = cluster.start(f"{leaving.name}-again")
                    await wait_node_ready(session, back)
                    load.nodes.insert(index, back)
                    await wait_settled(session, back, owners=3)
                await asyncio.sleep(0.5)
            print(f"rolling restart: {load.statuses}")
            errors = sum(count for status, count in load.statuses.items() if status >= 500)
            assert errors <= 0.05 * sum(load.statuses.values()), load.statuses
            assert set(load.statuses) <= {200, 201, 409, 503}, load.statuses
            await check_nothing_acknowledged_is_lost(load, load.nodes[0])
        await check_the_log(database_url, events)
        assert await stale_writes_after_takeover(database_url, events) == 0


async def test_two_nodes_on_one_machine_share_the_embedded_database(tmp_path: Path) -> None:
    # `inventoryd serve --port …` twice on one data directory, nothing else: one embedded
    # PostgreSQL, a two-node cluster; the node that started the server may leave first, the other
    # serves on; the last to leave stops the server.
    # Not under pytest's own temporary root: the unprivileged server user must reach it (as root).
    scratch = Path(tempfile.mkdtemp(prefix="inventoryd-two-nodes-"))
    scratch.chmod(0o755)
    data_dir = scratch / "pgdata"
    env = {**os.environ, "INVENTORYD_DATA_DIR": str(data_dir), "INVENTORYD_LOG_FORMAT": "json", "INVENTORYD_ACCESS_LOG": "0",
           "INVENTORYD_ADMIN_TOKEN": ADMIN_TOKEN, "INVENTORYD_DRAIN_GRACE_S": "0.2"}
    env.pop("DATABASE_URL", None)
    ports = [free_port(), free_port()]
    logs = [open(tmp_path / f"node{index}.log", "ab") for index in range(2)]  # noqa: SIM115 - closed below
    processes = [
        subprocess.Popen([sys.executable, "-m", "inventoryd", "serve", "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=log)
        for port, log in zip(ports, logs, strict=True)
    ]
    nodes = [Node(f"node{index}", port, process, tmp_path / f"node{index}.log") for index, (port, process) in enumerate(zip(ports, processes, strict=True))]
    try:
        async with aiohttp.ClientSession(headers=ADMIN) as session:
            for node in nodes:
                await wait_node_ready(session, node)
            view = await wait_settled(session, nodes[0], owners=2)
            assert len([node for node in view["nodes"] if node["live"]]) == 2
            events = await create_events(session, nodes, 4)
            starter = next(node for node in nodes if "embedded_postgres_started" in node.log_path.read_text())
            stayer = next(node for node in nodes if node is not starter)
            starter.signal(signal.SIGTERM)
            assert starter.process.wait(timeout=30) == 0
            await wait_settled(session, stayer, owners=1)
            for event_id in events:
                async with session.post(
                    f"{stayer.base}/v1/events/{event_id}/reservations", json={"ticket_type": "GA", "quantity": 1, "user_id": "u"}
                ) as response:
                    assert response.status == 201, await response.text()
            stayer.signal(signal.SIGTERM)
            assert stayer.process.wait(timeout=30) == 0
        assert "embedded_postgres_stopped" in stayer.log_path.read_text(), "the last node did not stop the server"
        assert not (data_dir / "postmaster.pid").exists()
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
        for log in logs:
            log.close()
        EmbeddedPostgres(data_dir).stop(also_if_reused=True)
        shutil.rmtree(scratch, ignore_errors=True)
