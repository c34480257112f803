"""`inventoryd serve` processes on loopback, as the cluster benchmarks and the cluster tests start
them: each with its own log file, JSON logs, no access lines, a short drain grace, the given admin
token; signalled and stopped by its PID only."""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# A node asked to stop (SIGTERM) hands its shards over first; past this it is killed.
NODE_STOP_TIMEOUT_S = 30.0


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
