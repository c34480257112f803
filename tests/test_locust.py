"""The Locust on-sale scenario judges a run: a short real run ends in one `VERDICT ok` line with
every event sold out and nothing oversold, and a run whose oversell check cannot run fails.

Method: the real `inventoryd serve` on the test's PostgreSQL, and Locust headless against it on
loopback for a few seconds (20 users), with events small enough to sell out in that time; then the
same with event ids that do not exist. Only the exit code and the verdict line are judged.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Any

import aiohttp

from tests.helpers import ADMIN_TOKEN, ROOT, free_port, make_api_token, running_server, wait_ready

# Not imported here: locust patches the standard library (gevent) on import.

RUN_TIME_S = 8
# Locust's own start-up and shut-down, on a busy machine, on top of the run.
LOCUST_OVERHEAD_S = 60
VERDICT_OK = re.compile(
    r"^VERDICT ok: 3 events, (?P<seats>\d+) seats, (?P<taken>\d+) sold\+held, 0 oversold, 3/3 sold out; \d+ holds, \d+ waitlisted, (?P<refused>\d+) refused; .*p95 \d+ ms$",
    re.MULTILINE,
)
ROOM_VERDICT_OK = re.compile(r"^VERDICT ok: 3 events, \d+ seats, \d+ sold\+held, 0 oversold, .*p95 \d+ ms$", re.MULTILINE)


def locust(base: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable, "-m", "locust", "-f", "loadtests/locustfile.py", "--host", base,
            "--headless", "-u", "20", "-r", "20", "-t", f"{RUN_TIME_S}s", "--only-summary",
        ],
        cwd=ROOT,
        env={
            key: value for key, value in os.environ.items() if not key.startswith(("LOCUST_", "INVENTORYD_"))
        } | env,
        capture_output=True,
        text=True,
        timeout=RUN_TIME_S + LOCUST_OVERHEAD_S,
    )


async def test_a_short_on_sale_sells_out_and_says_so(database_url: str, tmp_path: Any) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running_server(database_url, port, log_path=tmp_path / "server.log") as process:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, base, process)
        result = locust(
            base,
            INVENTORYD_ADMIN_TOKEN=ADMIN_TOKEN,
            # 10 GA and 1 VIP seats per event: sold out within the run, even on a busy machine.
            LOCUST_CAPACITY="10",
            # Latency is not what this test is about (two shared cores); the bound is checked.
            LOCUST_MAX_P95_MS="10000",
        )
        output = result.stdout + result.stderr
        verdict = VERDICT_OK.search(output)
        assert result.returncode == 0 and verdict is not None, output[-4000:]
        assert int(verdict["seats"]) == 3 * 11 and int(verdict["taken"]) <= 33
    # More buyers than seats: the service told some of them so.
    assert int(verdict["refused"]) > 0, output[-4000:]


async def test_a_run_whose_check_cannot_run_fails(database_url: str, tmp_path: Any) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running_server(database_url, port, log_path=tmp_path / "server.log") as process:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, base, process)
        result = locust(base, LOCUST_EVENT_IDS="no-such-event")
        output = result.stdout + result.stderr
        verdicts = [line for line in output.splitlines() if line.startswith("VERDICT")]
        assert result.returncode != 0, output[-4000:]
        assert len(verdicts) == 1 and verdicts[0].startswith("VERDICT FAIL (") and "no-such-event" in verdicts[0], output[-4000:]


async def test_an_on_sale_behind_a_waiting_room_reserves_only_with_admissions(database_url: str, tmp_path: Any) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running_server(database_url, port, log_path=tmp_path / "server.log") as process:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, base, process)
        result = locust(
            base,
            INVENTORYD_ADMIN_TOKEN=ADMIN_TOKEN,
            LOCUST_CAPACITY="10",
            LOCUST_MAX_P95_MS="10000",
            INVENTORYD_SERVICE_TOKEN=await make_api_token(database_url, "service", "locust"),
            LOCUST_ROOM="1",
            LOCUST_ROOM_START_S="2",  # buyers join before the start and after it
            LOCUST_ROOM_ADMIT_PER_MINUTE="3000",
            LOCUST_ROOM_POLL_S_MAX="0.5",
        )
        output = result.stdout + result.stderr
        verdicts = [line for line in output.splitlines() if line.startswith("VERDICT") or "waiting room" in line]
        # The hot events need not sell out here: the queuers take part of the crowd from them.
        assert result.returncode == 0 and ROOM_VERDICT_OK.search(output) is not None, verdicts
        room = re.search(r"waiting room evt_\w+: \{[^}]*'admitted': (\d+)[^}]*\}, (\d+) reservations", output)
        assert room is not None, output[-4000:]
        assert 0 < int(room[2]) <= int(room[1])  # buyers reserved, each with an admission
