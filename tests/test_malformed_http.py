"""Malformed and slow HTTP: each is answered with a problem document (or the connection is closed
within a named bound) and logged as one bounded JSON line with its reason, never a traceback.

Method: the real `inventoryd serve` as a subprocess on the test's PostgreSQL, JSON logs to a file;
raw HTTP/1.1 is written on a loopback socket: a header over the field bound, more headers than the
header bound, headers sent a byte at a time, a body sent a byte at a time, and a body cut off by the
client. Then the answers and every line of the server's log are read. What libraries log through
the standard library is checked apart, in a process that logs one traceback.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

from inventoryd.cli import HEADER_FIELD_BYTES_MAX, HEADERS_MAX
from inventoryd.limits import HTTP_BODY_READ_TIMEOUT_S, HTTP_HEADERS_READ_TIMEOUT_S, LOG_REASON_CHARS_MAX
from inventoryd.logs import LIBRARY_LOG_FIELD_CHARS_MAX
from tests.helpers import ADMIN_TOKEN, ROOT, free_port, running_server, wait_ready

# Beyond a bound, the server acts within this much more (the loop's timers, a busy machine).
SLACK_S = 3.0


async def started(database_url: str, tmp_path: Path, port: int) -> Any:
    server = running_server(database_url, port, log_path=tmp_path / "server.log")
    process = server.__enter__()
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, f"http://127.0.0.1:{port}", process)
    except BaseException:
        server.__exit__(None, None, None)
        raise
    return server


async def exchange(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Write `data`, read the answer until the server closes: status, headers, body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    return parse(raw)


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, body


def log_lines(tmp_path: Path) -> list[dict[str, Any]]:
    """Every line of the server's log, each of which must be JSON."""
    text = (tmp_path / "server.log").read_text()
    assert "Traceback" not in text, text[-3000:]
    lines = []
    for line in text.splitlines():
        assert line.startswith("{"), f"not a JSON line: {line[:300]}"
        lines.append(json.loads(line))
    return lines


async def wait_for_line(tmp_path: Path, event: str, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [line for line in log_lines(tmp_path) if line["event"] == event]
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {event} line in {log_lines(tmp_path)}")


def assert_problem(status: int, headers: dict[str, str], body: bytes, expected_status: int) -> dict[str, Any]:
    assert status == expected_status, body[:500]
    assert headers["content-type"].startswith("application/problem+json"), headers
    problem = json.loads(body)
    assert set(problem) >= {"type", "title", "status", "detail", "code"} and problem["status"] == expected_status
    return problem


async def test_an_oversized_header_is_a_problem_and_one_json_line(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    server = await started(database_url, tmp_path, port)
    try:
        secret = b"s3cr3t" * ((HEADER_FIELD_BYTES_MAX + 100) // 6)
        status, headers, body = await exchange(
            port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + secret + b"\r\n\r\n"
        )
        problem = assert_problem(status, headers, body, 400)
        assert problem["code"] == "bad_http_request" and secret[:100] not in body
        [line] = await wait_for_line(tmp_path, "bad_http_request")
        assert line["level"] == "warning" and line["client"] == "127.0.0.1" and line["status"] == 400
        assert 0 < len(line["reason"]) <= LOG_REASON_CHARS_MAX and b"s3cr3t" not in json.dumps(line).encode()
        assert len(json.dumps(line)) < 1000
    finally:
        server.__exit__(None, None, None)


async def test_too_many_headers_is_a_problem_and_one_json_line(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    server = await started(database_url, tmp_path, port)
    try:
        many = b"".join(b"X-H%d: v\r\n" % index for index in range(HEADERS_MAX + 10))
        status, headers, body = await exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
        problem = assert_problem(status, headers, body, 400)
        assert problem["code"] == "bad_http_request"
        [line] = await wait_for_line(tmp_path, "bad_http_request")
        assert "header" in line["reason"].lower() and line["client"] == "127.0.0.1"
        # Not garbage in the request line either: one of each, each logged once.
        status, headers, body = await exchange(port, b"\x16\x03\x01garbage\r\n\r\n")
        assert_problem(status, headers, body, 400)
        assert len(await wait_for_line(tmp_path, "bad_http_request")) == 2
    finally:
        server.__exit__(None, None, None)


async def test_slow_headers_and_slow_bodies_are_cut_off_within_their_bounds(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    server = await started(database_url, tmp_path, port)

    async def trickle(prefix: bytes, drip: bytes) -> tuple[float, bytes]:
        """Send `prefix`, then one byte of `drip` a second; how long until the server closed, and
        what it answered."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        began = time.monotonic()
        writer.write(prefix)
        received = b""

        async def drip_bytes() -> None:
            for byte in drip:
                await asyncio.sleep(1)
                try:
                    writer.write(bytes([byte]))
                    await writer.drain()
                except ConnectionError:
                    return

        dripping = asyncio.create_task(drip_bytes())
        try:
            received = await asyncio.wait_for(reader.read(), max(HTTP_HEADERS_READ_TIMEOUT_S, HTTP_BODY_READ_TIMEOUT_S) + 10)
        finally:
            dripping.cancel()
            writer.close()
        return time.monotonic() - began, received

    try:
        body_headers = (
            b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + ADMIN_TOKEN.encode() + b"\r\nContent-Length: 500\r\n\r\n{"
        )
        (headers_s, headers_answer), (body_s, body_answer) = await asyncio.gather(
            trickle(b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"X-Slow: " + b"a" * 100),
            trickle(body_headers, b" " * 100),
        )
        assert HTTP_HEADERS_READ_TIMEOUT_S - 0.5 <= headers_s <= HTTP_HEADERS_READ_TIMEOUT_S + SLACK_S, headers_s
        assert HTTP_BODY_READ_TIMEOUT_S - 0.5 <= body_s <= HTTP_BODY_READ_TIMEOUT_S + SLACK_S, body_s
        if headers_answer:  # closing is enough; an answer, if any, is a problem document
            assert_problem(*parse(headers_answer), 408)
        assert assert_problem(*parse(body_answer), 408)["code"] == "request_timeout"
        reasons = [line["reason"] for line in await wait_for_line(tmp_path, "bad_http_request")]
        assert len(reasons) == 2 and any("header" in reason for reason in reasons) and any("body" in reason for reason in reasons)
        assert not [line for line in log_lines(tmp_path) if line["event"] == "database_unavailable"]
    finally:
        server.__exit__(None, None, None)


async def test_a_client_that_drops_mid_body_is_a_client_disconnect(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    server = await started(database_url, tmp_path, port)
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + ADMIN_TOKEN.encode() + b"\r\nContent-Length: 500\r\n\r\n{\"name\": "
        )
        await writer.drain()
        await asyncio.sleep(0.5)  # the handler is reading the body
        writer.close()
        await writer.wait_closed()
        [line] = await wait_for_line(tmp_path, "client_disconnected")
        assert line["path"] == "/v1/events" and line["method"] == "POST"
        assert not [line for line in log_lines(tmp_path) if line["event"] == "database_unavailable"]
        # The server is fine.
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/readyz") as response:
            assert response.status == 200
    finally:
        server.__exit__(None, None, None)


def test_library_log_lines_are_json_lines_too() -> None:
    """What aiohttp or asyncpg log through the standard library, traceback and all, is one bounded
    JSON line like every other (a real `logs.configure`, in a process of its own)."""
    script = (
        "import logging\n"
        "from inventoryd import logs\n"
        "logs.configure('info', 'json')\n"
        "try:\n"
        "    raise ValueError('x' * 100_000)\n"
        "except ValueError:\n"
        "    logging.getLogger('aiohttp.server').exception('Error handling request from %s', '127.0.0.1')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    [line] = result.stderr.splitlines()
    entry = json.loads(line)
    assert entry["event"] == "Error handling request from 127.0.0.1" and entry["level"] == "error"
    assert entry["logger"] == "aiohttp.server" and "ValueError" in entry["exception"]
    assert len(line) < 2 * LIBRARY_LOG_FIELD_CHARS_MAX
