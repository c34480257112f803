"""The budget of live-availability streams: how many are open, in all (STREAM_SUBSCRIBERS_MAX), per
event (STREAMS_PER_EVENT_MAX) and per client address (STREAMS_PER_ADDRESS_MAX); and the watch that
ends a stream as soon as its client has gone (or the service drains).

A stream holds a `StreamLease` from `open` to `close`. aiohttp does not cancel a handler whose
client went away (handler cancellation is off: a reservation's handler must not be cut off between
its actor's decision and its answer), and a stream's handler mostly waits for its event to change,
so it would notice only at its next write, up to STREAM_HEARTBEAT_S later. Instead one sweep, every
STREAM_DISCONNECT_CHECK_S while any stream is open, asks each lease's `should_end` (its client has
left, or the service is draining: an open stream would otherwise hold a shutdown for its whole
timeout) and resolves the `gone` future of those that should; the stream waits on that too.

Counters per event and per address are dropped when they reach 0: memory follows the open streams.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Literal

from inventoryd import limits

# Which bound refused a stream: the client's own address, its event, or the service's.
StreamScope = Literal["address", "event", "total"]


class StreamRefused(Exception):
    def __init__(self, scope: StreamScope, bound: int) -> None:
        super().__init__(f"{bound} availability streams are open already ({scope})")
        self.scope = scope
        self.bound = bound


class StreamLease:
    """One open stream's slot. `gone` is resolved once the stream should end (or the lease closed)."""

    __slots__ = ("address", "event_id", "gone", "should_end")

    def __init__(self, event_id: str, address: str, should_end: Callable[[], bool], gone: asyncio.Future[None]) -> None:
        self.event_id = event_id
        self.address = address
        self.should_end = should_end
        self.gone = gone


class StreamBudget:
    def __init__(self) -> None:
        self.open_streams = 0
        self._by_event: dict[str, int] = {}
        self._by_address: dict[str, int] = {}
        self._leases: set[StreamLease] = set()
        self._sweep: asyncio.TimerHandle | None = None

    def open(self, event_id: str, address: str, should_end: Callable[[], bool]) -> StreamLease:
        """Take a slot for a new stream of `event_id` from `address` (a key of
        `inventoryd.ratelimit.address_key`); raises StreamRefused when a bound is reached. The
        address is looked at first: a client over its own bound is told so even when the service
        is full as well."""
        if self._by_address.get(address, 0) >= limits.STREAMS_PER_ADDRESS_MAX:
            raise StreamRefused("address", limits.STREAMS_PER_ADDRESS_MAX)
        if self._by_event.get(event_id, 0) >= limits.STREAMS_PER_EVENT_MAX:
            raise StreamRefused("event", limits.STREAMS_PER_EVENT_MAX)
        if self.open_streams >= limits.STREAM_SUBSCRIBERS_MAX:
            raise StreamRefused("total", limits.STREAM_SUBSCRIBERS_MAX)
        loop = asyncio.get_running_loop()
        lease = StreamLease(event_id, address, should_end, loop.create_future())
        self._leases.add(lease)
        self.open_streams += 1
        self._by_event[event_id] = self._by_event.get(event_id, 0) + 1
        self._by_address[address] = self._by_address.get(address, 0) + 1
        if self._sweep is None:
            self._sweep = loop.call_later(limits.STREAM_DISCONNECT_CHECK_S, self._look_for_gone_clients)
        return lease

    def close(self, lease: StreamLease) -> None:
        """Give the slot back (once; closing a lease again does nothing)."""
        if lease not in self._leases:
            return
        self._leases.remove(lease)
        if not lease.gone.done():
            lease.gone.set_result(None)
        self.open_streams -= 1
        _count_down(self._by_event, lease.event_id)
        _count_down(self._by_address, lease.address)
        if not self._leases and self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None

    def streams_of(self, *, event_id: str | None = None, address: str | None = None) -> int:
        """Streams open for an event, or from an address (for tests and metrics)."""
        if event_id is not None:
            return self._by_event.get(event_id, 0)
        if address is not None:
            return self._by_address.get(address, 0)
        return self.open_streams

    def _look_for_gone_clients(self) -> None:
        for lease in self._leases:
            if not lease.gone.done() and lease.should_end():
                lease.gone.set_result(None)
        self._sweep = (
            asyncio.get_running_loop().call_later(limits.STREAM_DISCONNECT_CHECK_S, self._look_for_gone_clients)
            if self._leases
            else None
        )


def _count_down(counts: dict[str, int], key: str) -> None:
    left = counts[key] - 1
    if left:
        counts[key] = left
    else:
        del counts[key]
