"""The forwarding client (inventoryd/http/peers.py) against a real TCP server on loopback that
answers what each test scripts: a whole answer is read and its connection reused; anything the
client does not read (chunked, no length, bytes past the length, an oversized head, a connection
closed mid-answer) fails that request alone as `PeerLost` (sent, outcome unknown), and a node that
cannot be reached as `PeerUnreachable` (not sent)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from inventoryd.http.peers import ANSWER_HEAD_BYTES_MAX, PeerLost, Peers, PeerUnreachable
from tests.helpers import free_port

HEAD = b"POST /v1/x HTTP/1.1\r\nHost: n\r\nContent-Length: 2\r\n\r\n"
OK = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


@asynccontextmanager
async def node(answer: Callable[[int], bytes], *, close_after: bool = False) -> AsyncIterator[tuple[str, list[int]]]:
    """A server answering each request (read up to its 2-byte body) with `answer(n)`, n counting
    requests; yields its URL and the number of connections it accepted, as a one-item list."""
    accepted = [0]
    served = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        accepted[0] += 1
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(2)
                served += 1
                writer.write(answer(served))
                await writer.drain()
                if close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", accepted
    finally:
        server.close()
        await server.wait_closed()


async def test_answers_are_read_whole_and_the_connection_reused() -> None:
    peers = Peers()
    async with node(lambda n: OK) as (url, accepted):
        for _ in range(5):
            answer = await peers.request(url, HEAD, b"{}")
            assert answer.status == 201 and answer.body == b"{}"
            assert ("Content-Type", "application/json") in answer.headers
        assert accepted == [1]
    peers.close()


async def test_an_answer_in_pieces_is_put_together() -> None:
    peers = Peers()

    async def slowly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)
        for index in range(0, len(OK), 7):
            writer.write(OK[index : index + 7])
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.close()

    server = await asyncio.start_server(slowly, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        answer = await peers.request(url, HEAD, b"{}")
        assert (answer.status, answer.body) == (201, b"{}")
    finally:
        server.close()
        await server.wait_closed()
        peers.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nno length",
        OK + b"more",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Big: " + b"a" * ANSWER_HEAD_BYTES_MAX + b"\r\n\r\n{}",
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}",  # then the connection closes
    ],
    ids=["chunked", "no length", "bytes past the length", "oversized head", "not HTTP", "closed mid-body"],
)
async def test_what_the_client_does_not_read_fails_that_request_alone(answer: bytes) -> None:
    peers = Peers()
    async with node(lambda n: answer if n == 1 else OK, close_after=True) as (url, accepted):
        with pytest.raises(PeerLost):
            await peers.request(url, HEAD, b"{}")
        # The next request gets a new connection and its answer.
        assert (await peers.request(url, HEAD, b"{}")).status == 201
        assert accepted == [2]
    peers.close()


async def test_a_node_that_is_not_there_is_unreachable_not_lost() -> None:
    peers = Peers()
    with pytest.raises(PeerUnreachable):
        await peers.request(f"http://127.0.0.1:{free_port()}", HEAD, b"{}")
    peers.close()


async def test_a_closed_pool_keeps_no_connection() -> None:
    peers = Peers()
    async with node(lambda n: OK) as (url, accepted):
        await peers.request(url, HEAD, b"{}")
        peers.close()
        await peers.request(url, HEAD, b"{}")  # answered on a new connection, not kept after
        assert accepted == [2]
