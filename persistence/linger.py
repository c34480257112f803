"""When a group-commit wait pays: only while this process is busy.

The journal waits for the appends of the buyers its last commit answered, and an actor for the
buyers of its last batch, because closed-loop buyers come back within a round trip: the server is
busy reading their next requests meanwhile, and those requests join one commit instead of
alternating between two. Buyers who arrive at their own pace (open loop, a paced on-sale crowd
below the peak) are not coming back at once; waiting for them is pure latency, and while it
lasts the process has little to do. So a wait looks, every LINGER_CHECK_S, at how much CPU the
process used since it began, and ends once that is under LINGER_BUSY_SHARE_MIN of the time.
"""

from __future__ import annotations

import time

from persistence import limits


class Busy:
    """Since it was made: has the process been mostly idle?"""

    __slots__ = ("_cpu", "_wall")

    def __init__(self) -> None:
        self._cpu = time.process_time()
        self._wall = time.perf_counter()

    def idle(self) -> bool:
        """True once LINGER_CHECK_S have passed with under LINGER_BUSY_SHARE_MIN of a CPU used."""
        wall = time.perf_counter() - self._wall
        if wall < limits.LINGER_CHECK_S:
            return False
        return time.process_time() - self._cpu < limits.LINGER_BUSY_SHARE_MIN * wall
