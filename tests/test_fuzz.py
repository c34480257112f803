"""Fuzzing: schemathesis runs every check against the served /openapi.json, every operation, authenticated.

Method: the real `inventoryd serve` as a subprocess on the test's PostgreSQL, with an admin token (and
the /v1/auth rate limit raised, so that the accounts routes' logic is reached rather than their 429);
schemathesis runs `--checks all` (examples, coverage, fuzzing and stateful phases, following the
document's links from events to reservations to tickets): every answer must conform to the document
(status, media type, headers, schema), no answer may be a server error, schema-violating requests must
be refused and schema-valid ones accepted. No check is switched off. The only allowance is the
document's own: the rules no schema can state (`x-inventoryd-rules`: ticket type codes unique, a sale
ending after it starts, a service naming the buyer, a cursor this service issued) add their status to
the statuses expected of schema-valid requests for the operations that list them, and the hook in
tests/fuzz_hooks.py fails any such refusal whose problem `field` is not one of those rules'. The
event stream is read up to its first event. INVENTORYD_FUZZ_EXAMPLES sets examples per operation: 8
in CI (about 1,200 cases), 50 or more in the long mode (over 2,000); INVENTORYD_FUZZ_SEED the seed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fuzz_hooks import rule_matches
from tests.helpers import ADMIN, ADMIN_TOKEN, ROOT, free_port, running_server, wait_ready

EXAMPLES = int(os.environ.get("INVENTORYD_FUZZ_EXAMPLES", "8"))
SEED = os.environ.get("INVENTORYD_FUZZ_SEED", "1")
# schemathesis' own default for positive_data_acceptance, to which a documented rule adds its status.
ACCEPTED_STATUSES = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
# The fuzz's server: /v1/auth's per-address limit (0.5/s by default) would answer most of them 429.
SERVER_ENV = {"INVENTORYD_RATE_AUTH_PER_S": "100000", "INVENTORYD_RATE_AUTH_BURST": "100000"}


def schemathesis_config(document: dict[str, Any]) -> str:
    """schemathesis.toml from the document: each operation's documented rules, and streams read
    to their first event (they never end)."""
    lines: list[str] = []
    for operations in document["paths"].values():
        for operation in operations.values():
            selector = f'include-operation-id = "{operation["operationId"]}"'
            statuses = sorted({str(rule["status"]) for rule in operation.get("x-inventoryd-rules", [])})
            if statuses:
                expected = json.dumps(ACCEPTED_STATUSES + statuses)
                lines += ["[[operations]]", selector, f"checks.positive_data_acceptance.expected-statuses = {expected}", ""]
            if any("text/event-stream" in answer.get("content", {}) for answer in operation["responses"].values()):
                lines += ["[[operations]]", selector, "max-stream-events = 1", ""]
    return "\n".join(lines)


def test_rule_fields_match_the_problems_fields() -> None:
    assert rule_matches("$.ticket_types[*].code", "$.ticket_types[12].code")
    assert not rule_matches("$.ticket_types[*].code", "$.ticket_types[1].name")
    assert rule_matches("cursor", "cursor") and not rule_matches("cursor", "limit") and not rule_matches("cursor", None)


async def test_schemathesis_all_checks_find_nothing(database_url: str, tmp_path: Path) -> None:
    schemathesis = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which("schemathesis")
    if schemathesis is None:
        pytest.fail("schemathesis is a test dependency")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    with running_server(database_url, port, env=SERVER_ENV, log_path=log_path) as server:
        async with aiohttp.ClientSession(headers=ADMIN) as session:
            await wait_ready(session, base, server)
            async with session.post(
                f"{base}/v1/events",
                json={"name": "Fuzz", "starts_at": "2027-06-01T19:00:00Z", "currency": "EUR",
                      "ticket_types": [{"code": "GA", "name": "GA", "price": 100, "capacity": 1000}]},
            ) as response:
                assert response.status == 201
            async with session.get(f"{base}/openapi.json") as response:
                document = await response.json()
        config = tmp_path / "schemathesis.toml"
        config.write_text(schemathesis_config(document))
        result = subprocess.run(
            [
                schemathesis, "--config-file", str(config), "run", f"{base}/openapi.json",
                "-H", f"Authorization: Bearer {ADMIN_TOKEN}",
                "--checks", "all",
                "-n", str(EXAMPLES),
                "--seed", SEED,
                "--request-timeout", "15",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=1800,
            cwd=tmp_path,
            env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.fuzz_hooks", "PYTHONPATH": str(ROOT)},
        )
    summary = result.stdout[-8000:]
    assert result.returncode == 0, summary + result.stderr[-2000:]
    cases = re.search(r"(\d+) generated", summary)
    assert cases is not None, summary
    selected = re.search(r"Selected: (\d+)/(\d+)", summary)
    assert selected is not None and selected.group(1) == selected.group(2), "every operation is fuzzed"
    print(f"schemathesis --checks all: {cases.group(0)} cases, {EXAMPLES} examples per operation, seed {SEED}")
    assert b'"level":"error"' not in log_path.read_bytes(), "the server logged an error"
