"""Connection-level limits for the public listener: a cap on open connections, and a deadline
for a new connection's first request headers (slowloris).

aiohttp already bounds the request line, each header and the header count
(``max_line_size``, ``max_field_size``, ``max_headers``), the body (``client_max_size`` and
the proxy's own ``max_body_bytes``) and idle keep-alive (``keepalive_timeout``). What it has
no knob for is a client that opens many connections and trickles header bytes forever; this
module wraps each connection's protocol to close such connections.

The header deadline applies to the first request of a connection; later requests on a
kept-alive connection are bounded by the keep-alive timeout while idle.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("gslb.limits")

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
