"""Hold expiry is a message the actor sends itself: `HoldTimer` is the timer that sends it.

After every batch the actor tells it when the earliest live hold falls due. A timer already set for
no later than that is kept (on a busy event the earliest hold rarely changes, and re-arming per
batch costs a timer each time); one that fires early finds nothing due, and the next batch sets the
next. At most one expiry message is in the mailbox at a time (`queued`), so it needs no room there.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from datetime import UTC, datetime

from inventoryd import domain
from inventoryd.actor.mailbox import Mailbox, Message

_NEVER = datetime.min.replace(tzinfo=UTC)


class HoldTimer:
    __slots__ = ("_clock", "_due", "_handle", "_mailbox", "queued")

    def __init__(self, mailbox: Mailbox, clock: Callable[[], datetime]) -> None:
        self._mailbox = mailbox
        self._clock = clock
        self._handle: asyncio.TimerHandle | None = None
        self._due = _NEVER
        # An expiry message is in the mailbox, not yet decided.
        self.queued = False

    def schedule(self, due: datetime | None) -> None:
        """Wake the actor when `due` comes (None: no hold is live)."""
        if due is not None and self._handle is not None and self._due <= due:
            return
        self.cancel()
        if due is None or self.queued:
            return
        delay_s = max(0.0, (due - self._clock()).total_seconds())
        self._handle = asyncio.get_running_loop().call_later(delay_s, self.fire)
        self._due = due

    def fire(self) -> None:
        """Queue the expiry message now (unless one is queued already)."""
        self._handle = None
        if self.queued:
            return
        self.queued = True
        # Not bounded by the mailbox: there is at most one in it.
        # A fresh seed each time: it draws the waiting room's shuffle if this message makes it.
        self._mailbox.put_nowait(Message(domain.ExpireDue(secrets.randbits(63)), None, None, None), bounded=False)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
