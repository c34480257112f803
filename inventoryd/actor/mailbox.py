"""An actor's mailbox: a bounded FIFO of messages with one waiting consumer (the actor's loop)."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from inventoryd import domain
from persistence.limits import LINGER_CHECK_S
from persistence.linger import Busy

if TYPE_CHECKING:
    from inventoryd.actor.outcomes import IdempotencyClaim, Outcome


@dataclass(slots=True, eq=False)
class Message:
    """One command for the actor, and who waits for its outcome (None: the actor's own timer)."""

    command: domain.Command
    claim: IdempotencyClaim | None
    request_id: str | None
    future: asyncio.Future[Outcome] | None
    # The loop's clock when the message was queued.
    enqueued_at: float = 0.0


class Mailbox:
    __slots__ = ("_capacity", "_messages", "_waiter", "_wanted")

    def __init__(self, capacity: int) -> None:
        self._messages: deque[Message] = deque()
        self._capacity = capacity
        self._waiter: asyncio.Future[None] | None = None
        # How many queued messages wake the waiter.
        self._wanted = 1

    def __len__(self) -> int:
        return len(self._messages)

    @property
    def wanted(self) -> int:
        """How many queued messages the waiting consumer wants before it wakes (1 unless lingering)."""
        return self._wanted

    def put_nowait(self, message: Message, *, bounded: bool = True) -> bool:
        """Queue `message`; False (and nothing queued) if the mailbox is full and `bounded`."""
        if bounded and len(self._messages) >= self._capacity:
            return False
        self._messages.append(message)
        if self._waiter is not None and len(self._messages) >= self._wanted and not self._waiter.done():
            self._waiter.set_result(None)
        return True

    async def wait_not_empty(self) -> None:
        while not self._messages:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def wait_for(self, count: int, timeout_s: float) -> bool:
        """Wait until `count` messages are queued, for `timeout_s` at most, and only while the
        process is busy (persistence.linger: idling, it is not receiving them); True if at least
        half came."""
        if len(self._messages) >= count:
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        busy = Busy()
        self._wanted = count
        try:
            while len(self._messages) < count and (now := loop.time()) < deadline and not busy.idle():
                self._waiter = waiter = loop.create_future()
                timer = loop.call_later(min(deadline - now, LINGER_CHECK_S), _wake, waiter)
                try:
                    await waiter
                finally:
                    timer.cancel()
                    self._waiter = None
        finally:
            self._wanted = 1
        return 2 * len(self._messages) >= count

    def take_nowait(self, count_max: int) -> list[Message]:
        taken: list[Message] = []
        while self._messages and len(taken) < count_max:
            taken.append(self._messages.popleft())
        return taken


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
