"""Helpers shared by the tests."""

from __future__ import annotations

import asyncio
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

from persistence.journal import Append, AppendFailed, AppendOutcomeUnknown, Journal

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
