"""Requests to the other nodes of the cluster: HTTP/1.1 over pooled keep-alive connections, and
nothing more.

Forwarding is on the path of every request that reaches a node that does not own its event, and
aiohttp's client (cookies, redirects, tracing hooks, URL objects and timers per request) costs more
instructions than the owner's whole work for a reservation. Here a request is one bytes object in
one send, and the answer is read by a parser that knows what the nodes answer each other: a status
line, headers and a body of Content-Length bytes. Anything else (a chunked answer, a stream) is
refused as malformed: streams are relayed by aiohttp's client (`cluster.forward`), which reads them
as they come.

A connection carries one request at a time. It goes back to its node's pool once its answer has
been read whole, and is not used again after PEER_IDLE_S idle (well before the node's own
keep-alive timeout closes it, so that a request is never written onto a connection the node is
closing). A request is never sent twice: once written, a lost connection is an outcome unknown to
the caller.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Final, cast
from urllib.parse import urlsplit

from inventoryd import limits

# An answer's status line and headers are at most this long (a node's are a few hundred bytes).
ANSWER_HEAD_BYTES_MAX: Final = 16 * 1024
_NO_BODY = frozenset({204, 304})


@dataclass(frozen=True, slots=True)
class PeerAnswer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class PeerUnreachable(ConnectionError):
    """No connection could be made to the node: the request was not sent."""


class PeerLost(ConnectionError):
    """The request was sent, and no whole answer came back (the connection closed, the answer was
    malformed, or it took too long): whether the node carried it out is not known."""


class _Connection(asyncio.Protocol):
    __slots__ = ("_answer", "_buffer", "_head", "closed", "idle_since", "reusable", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._answer: asyncio.Future[PeerAnswer] | None = None
        # The answer's status, headers and Content-Length, once its head has been read.
        self._head: tuple[int, list[tuple[str, str]], int] | None = None
        self.closed = False
        self.reusable = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # create_connection's is one

    def send(self, data: bytes) -> asyncio.Future[PeerAnswer]:
        if self.transport is None or self.closed or self.transport.is_closing():
            raise PeerUnreachable("the connection is closed")
        self._answer = asyncio.get_running_loop().create_future()
        self._head = None
        self.reusable = False
        self.transport.write(data)
        return self._answer

    def data_received(self, data: bytes) -> None:
        answer = self._answer
        if answer is None or answer.done():
            self._fail(PeerLost("bytes from the node with no request waiting"))
            return
        self._buffer += data
        try:
            complete = self._parse()
        except ValueError as error:
            self._fail(PeerLost(f"a malformed answer: {error}"))
            return
        if complete is not None:
            self._answer = None
            answer.set_result(complete)

    def _parse(self) -> PeerAnswer | None:
        buffer = self._buffer
        if self._head is None:
            end = buffer.find(b"\r\n\r\n", 0, ANSWER_HEAD_BYTES_MAX + 4)
            if end < 0:
                if len(buffer) > ANSWER_HEAD_BYTES_MAX:
                    raise ValueError(f"a head longer than {ANSWER_HEAD_BYTES_MAX} bytes")
                return None
            lines = buffer[:end].decode("utf-8", "replace").split("\r\n")
            del buffer[: end + 4]
            version, _, rest = lines[0].partition(" ")
            if version not in ("HTTP/1.1", "HTTP/1.0") or len(rest) < 3 or not rest[:3].isdigit():
                raise ValueError(f"status line {lines[0][:80]!r}")
            status = int(rest[:3])
            headers = []
            length = 0 if status in _NO_BODY or status < 200 else -1
            keep_alive = version == "HTTP/1.1"
            for line in lines[1:]:
                name, colon, value = line.partition(":")
                if not colon:
                    raise ValueError(f"header line {line[:80]!r}")
                value = value.strip()
                lowered = name.lower()
                if lowered == "content-length":
                    if not value.isdigit():
                        raise ValueError(f"Content-Length {value[:20]!r}")
                    length = int(value)
                elif lowered == "transfer-encoding":
                    raise ValueError("a chunked answer (streams are not read here)")
                elif lowered == "connection":
                    keep_alive = value.lower() != "close"
                headers.append((name, value))
            if length < 0:
                raise ValueError("an answer without Content-Length")
            self._head = (status, headers, length)
            self.reusable = keep_alive
        status, headers, length = self._head
        if len(buffer) < length:
            return None
        if len(buffer) > length:
            raise ValueError("more bytes than the answer's Content-Length")
        body = bytes(buffer)
        buffer.clear()
        return PeerAnswer(status, headers, body)

    def _fail(self, error: Exception) -> None:
        self.reusable = False
        answer, self._answer = self._answer, None
        if answer is not None and not answer.done():
            answer.set_exception(error)
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        answer, self._answer = self._answer, None
        if answer is not None and not answer.done():
            answer.set_exception(PeerLost(f"the node closed the connection ({exc!r})"))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Peers:
    """Pooled connections to the other nodes, at most PEER_CONNECTIONS_PER_NODE_MAX to each (a
    request beyond that waits for one of them)."""

    def __init__(self) -> None:
        self._idle: dict[str, deque[_Connection]] = {}
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._addresses: dict[str, tuple[str, int]] = {}
        self._closed = False

    async def request(self, url: str, head: bytes, body: bytes) -> PeerAnswer:
        """Send a request (`head` ends with the blank line; it says the body's length) to the node at
        `url` (`http://host:port`), and read its answer, within REQUEST_TIMEOUT_S + 1."""
        slots = self._slots.get(url)
        if slots is None:
            slots = self._slots[url] = asyncio.Semaphore(limits.PEER_CONNECTIONS_PER_NODE_MAX)
        async with slots:
            connection = self._reuse(url) or await self._open(url)
            answered = False
            try:
                async with asyncio.timeout(limits.REQUEST_TIMEOUT_S + 1):
                    answer = await connection.send(head + body if body else head)
                answered = True
                return answer
            except TimeoutError:
                raise PeerLost("the node did not answer in time") from None
            finally:
                if answered and connection.reusable and not connection.closed and not self._closed:
                    connection.idle_since = asyncio.get_running_loop().time()
                    self._idle.setdefault(url, deque()).append(connection)
                else:
                    connection.close()

    def _reuse(self, url: str) -> _Connection | None:
        idle = self._idle.get(url)
        if not idle:
            return None
        fresh_after = asyncio.get_running_loop().time() - limits.PEER_IDLE_S
        while idle:
            connection = idle.pop()  # the most recently used: the likeliest to be warm
            transport = connection.transport
            if connection.closed or transport is None or transport.is_closing() or connection.idle_since < fresh_after:
                connection.close()
                continue
            return connection
        return None

    async def _open(self, url: str) -> _Connection:
        address = self._addresses.get(url)
        if address is None:
            parts = urlsplit(url)
            if parts.scheme != "http" or parts.hostname is None:
                raise PeerUnreachable(f"not an http://host:port URL: {url!r}")
            address = self._addresses[url] = (parts.hostname, parts.port or 80)
        try:
            async with asyncio.timeout(limits.FORWARD_CONNECT_TIMEOUT_S):
                _, connection = await asyncio.get_running_loop().create_connection(_Connection, *address)
        except (OSError, TimeoutError) as error:
            raise PeerUnreachable(f"cannot connect to {url}: {error!r}") from None
        return connection

    def close(self) -> None:
        """Close every idle connection; those in use close when their answer is read."""
        self._closed = True
        for idle in self._idle.values():
            while idle:
                idle.pop().close()
