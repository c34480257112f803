"""Helpers shared by the tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any


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
