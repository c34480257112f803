"""Fuzzing: schemathesis against the served /openapi.json, every operation, authenticated.

Method: the real `inventoryd serve` as a subprocess on the test's PostgreSQL, with an admin token;
schemathesis generates requests from the document (examples, coverage, fuzzing and stateful phases,
following the document's links from events to reservations to tickets) and checks that no answer is
a server error and every answer conforms to the document (status, media type, headers, schema).
What it does not check: that every schema-valid request is accepted (ST202), because the API has
rules no schema can state (ticket type codes unique, a sale ending after it starts, a service naming
the buyer). INVENTORYD_FUZZ_EXAMPLES sets examples per operation: 8 in CI (about 700 cases), 50 or
more in the long mode (well over 1,000).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers import ADMIN, ADMIN_TOKEN, free_port, running_server, wait_ready

EXAMPLES = int(os.environ.get("INVENTORYD_FUZZ_EXAMPLES", "8"))
SEED = os.environ.get("INVENTORYD_FUZZ_SEED", "1")
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    ]
)


async def test_schemathesis_finds_no_server_error_and_no_contract_break(database_url: str, tmp_path: Path) -> None:
    schemathesis = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    if schemathesis is None:
        pytest.fail("schemathesis is a test dependency")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    with running_server(database_url, port, log_path=log_path) as server:
        async with aiohttp.ClientSession(headers=ADMIN) as session:
            await wait_ready(session, base, server)
            event: Any = None
            async with session.post(
                f"{base}/v1/events",
                json={"name": "Fuzz", "starts_at": "2027-06-01T19:00:00Z", "currency": "EUR",
                      "ticket_types": [{"code": "GA", "name": "GA", "price": 100, "capacity": 1000}]},
            ) as response:
                event = await response.json()
            assert event["id"]
        result = subprocess.run(
            [
                schemathesis, "run", f"{base}/openapi.json",
                "-H", f"Authorization: Bearer {ADMIN_TOKEN}",
                # The stream never ends by design; the docs page is HTML for people.
                "--exclude-operation-id", "availability_stream",
                "--exclude-operation-id", "docs",
                "--exclude-operation-id", "docs_init",
                "--checks", CHECKS,
                "-n", str(EXAMPLES),
                "--seed", SEED,
                "--request-timeout", "15",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=tmp_path,
        )
    summary = result.stdout[-6000:]
    assert result.returncode == 0, summary + result.stderr[-2000:]
    print(next((line for line in summary.splitlines() if "generated" in line and "Test cases" not in line), ""))
    assert "generated" in summary
    assert b'"level":"error"' not in log_path.read_bytes(), "the server logged an error"
