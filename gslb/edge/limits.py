"""Connection-level limits for the public listener: a cap on open connections, and a deadline
for a new connection's first request headers (slowloris).

aiohttp already bounds the request line, each header and the header count
(``max_line_size``, ``max_field_size``, ``max_headers``), the body (``client_max_size`` and
the proxy's own ``max_body_bytes``) and idle keep-alive (``keepalive_timeout``). What it has
no knob for is a client that opens many connections and trickles header bytes forever; this
module wraps each connection's protocol to close such connections.

The header deadline applies to the first request of a connection; later requests on a
kept-alive connection are bounded by the keep-alive timeout while idle.

It also holds the small aiohttp-specific part of refusing malformed requests
(``RefusingHandler``); the reusable part (reason codes, the rate-limited refusal log, the
answer) is ``gslb.edge.logsafety``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from gslb.edge.logsafety import Refusals, classify

log = logging.getLogger("gslb.edge.limits")

_HEADER_END = b"\r\n\r\n"


class Limits:
    """Shared counters for one listener; ``factory()`` builds guarded protocols."""

    def __init__(
        self,
        inner: Callable[[], asyncio.Protocol],
        max_connections: int,
        header_timeout_s: float,
    ) -> None:
        self.inner = inner
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.open = 0
        self.refused = 0
        self.slow_headers = 0

    def factory(self) -> asyncio.Protocol:
        return _Guarded(self, self.inner())


class _Guarded(asyncio.Protocol):
    """Delegates to aiohttp's protocol; enforces the limits around it."""

    def __init__(self, limits: Limits, inner: asyncio.Protocol) -> None:
        self.limits = limits
        self.inner = inner
        self.transport: asyncio.BaseTransport | None = None
        self.accepted = False
        self.headers_done = False
        self.tail = b""
        self.timer: asyncio.TimerHandle | None = None
        # Length of the connection's first line (so far, until its LF arrives): tells an
        # over-long request line from an over-long header, which the parser's error does not.
        self.first_line = 0
        self.first_line_open = True
        if isinstance(inner, RefusingHandler):
            inner.guard = self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        lim = self.limits
        if lim.open >= lim.max_connections:
            lim.refused += 1
            transport.close()  # over the cap: refuse before aiohttp sees it
            return
        lim.open += 1
        self.accepted = True
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(lim.header_timeout_s, self._deadline)
        self.inner.connection_made(transport)

    def _deadline(self) -> None:
        if not self.headers_done and self.transport is not None:
            self.limits.slow_headers += 1
            log.info("closing a connection that sent no complete request headers in time")
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if not self.headers_done:
            if self.first_line_open:
                end = data.find(b"\n")
                self.first_line += len(data) if end < 0 else end
                self.first_line_open = end < 0
            # Look for the end of the header block across chunk boundaries.
            if _HEADER_END in self.tail + data:
                self._headers_complete()
            else:
                self.tail = (self.tail + data)[-3:]
        self.inner.data_received(data)

    def _headers_complete(self) -> None:
        self.headers_done = True
        self.tail = b""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if not self.accepted:
            return
        self.limits.open -= 1
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def __getattr__(self, name: str) -> Any:
        # Anything else aiohttp or the transport asks of the protocol.
        return getattr(self.inner, name)


# --------------------------------------------------------------------------- refusals


class RefusingHandler(RequestHandler):
    """aiohttp's protocol with gslb's own answer to a request its parser refuses.

    Why a subclass rather than only a custom ``logger=``: aiohttp's ``handle_error`` both logs
    the parser's exception (its text quotes the request bytes: credentials, cookies, query
    strings, bodies; and the full peer address) and sends that text back as the body. A
    logger can only silence the first. Overriding ``handle_error`` replaces both: a JSON 4xx
    with a request id, a reason code from ``gslb.edge.logsafety`` and a rate-limited log line. The
    ``logger`` stays aiohttp's ``aiohttp.server``, so anything else aiohttp logs there is
    still cut by the redaction filter on gslb's log handlers (a gslb.* name would exempt it).
    """

    __slots__ = ("guard", "refusals")

    def __init__(self, manager: web.Server, refusals: Refusals, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.refusals = refusals
        self.guard: _Guarded | None = None

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # Part of a response went out already: nothing more can be said on this
            # connection (aiohttp's own handle_error does the same; its caller closes it).
            raise ConnectionError("response already started")
        if isinstance(exc, HttpProcessingError) or status < 500:
            reason = classify(exc, request_line=self._request_line_too_long())
        else:  # the request handler failed (500) or timed out (504): never the parser
            reason = "handler_timeout" if status == 504 else "internal_error"
        answer = self.refusals.refuse(reason, request.remote)
        response = _Bare(status=answer.status, body=answer.body, headers=answer.headers)
        response.force_close()
        return response

    def _request_line_too_long(self) -> bool | None:
        """Whether an over-long line was the request line (None: cannot tell).

        When the connection's first line is over ``max_line_size``, the error is that line's:
        such a request never parses, so no later one exists. Otherwise the long line is taken
        for a header, which is wrong only for a pipelined later request's request line (the
        guard reads only a connection's first header block, to stay off the body path).
        """
        if self.guard is None:
            return None
        return self.guard.first_line > self.max_line_size


class _Bare(web.Response):
    """A response without aiohttp's ``Server`` banner (it names the library and version)."""

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        self.headers.popall("Server", None)


def refusing_factory(server: web.Server, refusals: Refusals) -> Callable[[], RefusingHandler]:
    """A protocol factory like ``server`` (``AppRunner.server``) building ``RefusingHandler``s.

    The handler settings (size limits, keep-alive, access log) are the ones the runner gave
    ``server``, read from its private ``_kwargs``: aiohttp has no public way to choose the
    handler class of an ``AppRunner``'s server (``tests/edge/test_logsafety.py`` checks that the
    settings arrive, so an aiohttp change there fails a test instead of dropping a limit).
    """
    loop = asyncio.get_running_loop()
    kwargs: dict[str, Any] = dict(server._kwargs)

    def factory() -> RefusingHandler:
        return RefusingHandler(server, refusals, loop=loop, **kwargs)

    return factory
