"""The HTTP connection itself, below the application: malformed requests answered with a problem
document and logged as one bounded JSON line, and slow clients cut off.

aiohttp answers a request it cannot parse (a header over the field bound, too many headers, not
HTTP at all) in `RequestHandler.handle_error`, before any middleware: with plain text, and an ERROR
log line with a traceback per request. `GuardedRequestHandler` answers problem+json instead and logs
`bad_http_request` (status, reason, client) as a warning.

aiohttp has no header or body read timeout (its keep-alive timeout closes idle connections only,
and only once it runs out), so one client sending a byte a second holds a connection for as long as
it likes. Here a request's headers must arrive within HTTP_HEADERS_READ_TIMEOUT_S (of the
connection's start, or of their first byte on a kept-alive connection), and its body within
HTTP_BODY_READ_TIMEOUT_S of its headers; else 408, a `bad_http_request` line, and the connection is
closed. A connection that sent nothing at all is closed without a word. Requests whose headers
arrive in one read (nearly all) set no timer.

This leans on a few of RequestHandler's internals (`_messages`, `_waiter`, `_request_count`,
`_request_in_progress`, `_lingering_time`); tests/test_malformed_http.py checks it on the aiohttp
that is installed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler

from inventoryd import limits
from inventoryd.http.problems import ProblemError, problem_response
from inventoryd.http.schemas import ENCODER

log = structlog.get_logger("inventoryd.http")


class GuardedRequestHandler(RequestHandler):
    __slots__ = ("_body", "_body_timer", "_headers_begun", "_headers_timer")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._headers_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body: StreamReader | None = None
        # Bytes of the next request's headers have come (the parser holds them).
        self._headers_begun = False

    # -- malformed requests ---------------------------------------------------------------------

    def handle_error(
        self, request: Any, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        """aiohttp's answer to a request it could not parse (400) or that failed outside the
        middleware (500, 504): a problem document, and one log line."""
        if status >= 500:
            log.error("request_failed", status=status, client=request.remote, exc_info=exc)
            code, detail = "internal_error", "an unexpected error; it has been logged"
        else:
            log.warning("bad_http_request", status=status, reason=_reason(exc, message), client=request.remote)
            code, detail = "bad_http_request", _detail(exc)
        if request.writer.output_size > 0:  # an answer has begun: nothing more can be said
            raise ConnectionError("the answer was already under way")
        response = problem_response(status, code, detail)
        response.force_close()
        return response

    # -- slow clients ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_headers_timer()

    def data_received(self, data: bytes) -> None:
        requests = self._request_count
        super().data_received(data)
        if self._request_count != requests:  # headers complete: a request (or more) is queued
            self._cancel_timers()
            self._headers_begun = False
            payload = self._messages[-1][1] if self._messages else None
            if isinstance(payload, StreamReader) and not payload.is_eof():
                self._body = payload
                self._body_timer = self._loop.call_later(limits.HTTP_BODY_READ_TIMEOUT_S, self._body_timed_out)
        elif self._body is not None:
            if self._body.is_eof():
                self._cancel_timers()
        elif data and self._waiter is not None:
            self._headers_begun = True
            if self._headers_timer is None:
                self._arm_headers_timer()  # the first bytes of the next request on a kept-alive connection

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def _arm_headers_timer(self) -> None:
        self._headers_timer = self._loop.call_later(
            limits.HTTP_HEADERS_READ_TIMEOUT_S, self._headers_timed_out, self._request_count
        )

    def _cancel_timers(self) -> None:
        for timer in (self._headers_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._headers_timer = self._body_timer = None
        self._body = None

    def _headers_timed_out(self, requests: int) -> None:
        self._headers_timer = None
        waiting = self._waiter is not None and not self._waiter.done()
        if self.transport is None or self._request_count != requests or not waiting:
            return  # gone, or the headers came, or a request is being handled
        if not self._headers_begun:
            self.force_close()  # opened and never used (a pre-connect): no one to tell
            return
        seconds = limits.HTTP_HEADERS_READ_TIMEOUT_S
        log.warning(
            "bad_http_request", status=408, reason=f"the request headers did not arrive within {seconds} s", client=self._client()
        )
        problem = ProblemError(408, "request_timeout", f"the request headers did not arrive within {seconds} s").body
        body = ENCODER.encode(problem)
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/problem+json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        self.force_close()

    def _body_timed_out(self) -> None:
        self._body_timer = None
        body, self._body = self._body, None
        if self.transport is None or body is None or body.is_eof():
            return
        seconds = limits.HTTP_BODY_READ_TIMEOUT_S
        log.warning("bad_http_request", status=408, reason=f"the request body did not arrive within {seconds} s", client=self._client())
        if not self._request_in_progress:  # answered already (without reading the body): just close
            self.force_close()
            return
        # The handler's read fails with a 408 problem, which the middleware answers; then the
        # connection closes instead of waiting for the rest of the body.
        self._lingering_time = 0.0
        self.close()
        body.set_exception(ProblemError(408, "request_timeout", f"the request body did not arrive within {seconds} s"))

    def _client(self) -> str | None:
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        return str(peer[0]) if isinstance(peer, tuple) and peer else None


class GuardedServer(web.Server):
    """aiohttp's Server, making GuardedRequestHandler connections."""

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, **self._kwargs)


class GuardedAppRunner(web.AppRunner):
    """web.AppRunner whose connections are GuardedRequestHandler's."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The application's own server (its handler, request factory and settings), with our
        # connections: same state, one method more.
        server.__class__ = GuardedServer
        return server


def _reason(exc: BaseException | None, message: str | None) -> str:
    """The parser's reason, for the log: bounded, and never the start of an over-long line (which
    may be an Authorization header)."""
    if isinstance(exc, LineTooLong):
        return f"a line longer than {exc.args[1]} bytes"
    reason = " ".join((message or (str(exc) if exc is not None else "") or "malformed request").split())
    if len(reason) > limits.LOG_REASON_CHARS_MAX:
        return reason[: limits.LOG_REASON_CHARS_MAX - 1] + "…"
    return reason


def _detail(exc: BaseException | None) -> str:
    """What the client is told: which rule the request broke, without echoing the request."""
    if isinstance(exc, LineTooLong):
        return "the request line or a header is too long"
    if exc is not None and "too many headers" in str(exc).lower():
        return "the request has too many headers"
    return "the request is not valid HTTP/1.1"
