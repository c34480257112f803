"""`inventoryd serve` processes on loopback, as the cluster benchmarks and the cluster tests start
them: each with its own log file, JSON logs, no access lines, a short drain grace, the given admin
token; signalled and stopped by its PID only. And what both ask of them: ready yet, the cluster as
a node sees it, settled yet."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
# A node asked to stop (SIGTERM) hands its shards over first; past this it is killed.
NODE_STOP_TIMEOUT_S = 30.0
# Python's imports and recovery, on a loaded machine (under valgrind, pass more).
NODE_READY_TIMEOUT_S = 60.0
NODE_SETTLE_TIMEOUT_S = 30.0
POLL_S = 0.05


@dataclass
class Node:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def signal(self, number: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(number)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within NODE_STOP_TIMEOUT_S; by PID."""
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=NODE_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.process.wait(timeout=10)


def spawn_node(argv: list[str], name: str, port: int, directory: Path, admin_token: str, env: dict[str, str]) -> Node:
    """Start `argv` (a node listening on `port`), its output in DIRECTORY/NAME.log; `env` adds to
    (or overrides) the environment."""
    log_path = directory / f"{name}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdout=log,
            stderr=log,
            env={
                **os.environ,
                "INVENTORYD_LOG_FORMAT": "json",
                "INVENTORYD_ACCESS_LOG": "0",
                "INVENTORYD_ADMIN_TOKEN": admin_token,
                "INVENTORYD_DRAIN_GRACE_S": "0.2",
                **env,
            },
        )
    return Node(name, port, process, log_path)


async def wait_node_ready(session: aiohttp.ClientSession, node: Node, timeout_s: float = NODE_READY_TIMEOUT_S) -> None:
    """Until the node's /readyz answers 200; RuntimeError (with its log's tail) if it exits first,
    or if `timeout_s` pass."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if node.process.poll() is not None:
            raise RuntimeError(f"{node.name} exited:\n{node.log_path.read_text()[-3000:]}")
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(f"{node.base}/readyz") as response:
                if response.status == 200:
                    return
        await asyncio.sleep(POLL_S)
    raise RuntimeError(f"{node.name} did not become ready within {timeout_s:.0f} s")


async def cluster_view(session: aiohttp.ClientSession, node: Node, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """GET /v1/cluster of the node (`headers`: an admin's, unless the session sends them)."""
    async with session.get(f"{node.base}/v1/cluster", headers=headers) as response:
        if response.status != 200:
            raise RuntimeError(f"GET /v1/cluster on {node.name}: {response.status} {await response.text()}")
        return dict(await response.json())


async def wait_settled(
    session: aiohttp.ClientSession,
    node: Node,
    owners: int,
    timeout_s: float = NODE_SETTLE_TIMEOUT_S,
    *,
    balanced: bool = False,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Until, as `node` sees it, every shard has a live owner and `owners` nodes share them; and,
    if `balanced`, every live node holds its target (a rebalance after a join is over: no shard
    of theirs moves any more, and none is being released). Returns that view."""
    deadline = time.monotonic() + timeout_s
    while True:
        view = await cluster_view(session, node, headers)
        live = {n["node_id"] for n in view["nodes"] if n["live"]}
        holders = {shard["owner"] for shard in view["shards"]}
        at_target = all(n["shards"] == n["target_shards"] for n in view["nodes"] if n["live"])
        if holders <= live and len(holders) == owners and None not in holders and (at_target or not balanced):
            return view
        if time.monotonic() >= deadline:
            raise RuntimeError(f"the shards did not settle on {owners} nodes within {timeout_s:.0f} s: {view['nodes']}")
        await asyncio.sleep(POLL_S)


def live_ids(view: dict[str, Any]) -> dict[str, str]:
    """Node id by URL, of the live nodes (a node restarted at a URL leaves its predecessor's row
    behind for a while: the live one counts)."""
    return {item["url"]: item["node_id"] for item in view["nodes"] if item["live"]}
