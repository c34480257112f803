"""The budget of live-availability streams: how many are open, against STREAM_SUBSCRIBERS_MAX."""

from __future__ import annotations

from inventoryd import limits


class StreamBudget:
    def __init__(self) -> None:
        self.open = 0

    def try_open(self) -> bool:
        """Take a slot for a new stream; False when every slot is taken."""
        if self.open >= limits.STREAM_SUBSCRIBERS_MAX:
            return False
        self.open += 1
        return True

    def close(self) -> None:
        self.open -= 1
