"""The public listener's HTTP/1.1 server: a raw ``asyncio.Protocol`` with an httptools parser.

One ``_Connection`` per socket parses requests as bytes arrive and queues them; ONE task per
connection hands them to the application in order (pipelined requests wait their turn, their
bytes kept), one ``RequestCycle`` each. A client that leaves before its response ended
cancels that task, so what the handler awaits for it (an upstream) is given up at once.

No task, timer or timeout context per request: each connection holds at most one deadline
(headers, idle keep-alive, a slow body, lingering after a refusal, an upgraded stream's idle
time) and one sweep per listener closes overdue connections every ``ServerLimits.sweep_s``.
Deadlines are armed from the sweep's own coarse clock (no clock read per request), so each
fires within ``sweep_s`` of its time.

Deadlines, precisely: a new connection's first request head must be in within
``header_timeout_s`` of the accept (after the TLS handshake, itself bounded by the same
time); after a response, a kept-alive connection may sit idle up to ``keepalive_timeout_s``,
and the next head must then be in within ``header_timeout_s`` of its first byte (a leading
empty line counts as one, and further ones do not extend it). A body must keep up
``min_upload_rate`` after ``min_upload_grace_s`` (time gslb held the socket paused does not
count against the client); one the application buffers whole (``body()``) must also be in
within ``body_timeout_s``.

Flow control both ways: request bytes the application has not read yet pause the socket
above ``read_high_water``; the transport's write buffer marks make ``send`` and ``drain``
wait for a client that does not read. Framing and limits are ``gslb.core.h1framing``'s rules;
a refused request gets gslb's own JSON answer (``gslb.edge.logsafety.Refusals``): no request
byte is echoed or logged, and there is no ``Server`` banner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl as ssl_
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final, cast

import httptools

from gslb.core.h1framing import (
    CONTINUE_LINE,
    LAST_CHUNK,
    Framing,
    ServerLimits,
    body_deadline,
    chunk,
    expect_reason,
    frame_response,
    parser_reason,
    refusal_head,
    transfer_encoding_reason,
)
from gslb.edge.logsafety import Refusals, where_it_failed

log = logging.getLogger("gslb.edge.h1server")

App = Callable[["RequestCycle"], Awaitable[None]]

# What a connection's one deadline is for.
_NONE: Final = 0
_HEAD: Final = 1  # the next request's headers
_IDLE: Final = 2  # kept alive, no byte of the next request yet
_BODY: Final = 3  # a request body: min rate, and the total deadline when buffered
_LINGER: Final = 4  # dropping what a refused client still sends
_RELAY: Final = 5  # an upgraded connection's idle time

_INF: Final = float("inf")
_CLIENT_GONE: Final = "client_gone"
_LINGER_MAX: Final = 1 << 20  # bytes dropped while lingering before giving up


class RequestAborted(ConnectionError):
    """The request cannot go on: the client left, or its body broke a limit (``reason``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Refuse(Exception):
    """Raised inside a parser callback: stop parsing, refuse with ``reason``."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


# --------------------------------------------------------------------------- the request


class RequestCycle:
    """One request and its response, as the application sees them."""

    __slots__ = (
        "_body_start",
        "_chunks",
        "_complete",
        "_conn",
        "_error",
        "_framing",
        "_index",
        "_pending_head",
        "_received",
        "_refusal",
        "_sent",
        "_sent_continue",
        "_total_deadline",
        "_waiter",
        "body_sent",
        "chunked",
        "content_length",
        "ended",
        "expect_continue",
        "headers",
        "keep_alive",
        "method",
        "method_bytes",
        "peer",
        "started",
        "target",
        "tls",
        "upgrade",
        "version",
    )

    def __init__(
        self,
        conn: _Connection,
        method: str,
        target: bytes,
        version: str,
        headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        content_length: int | None,
        chunked: bool,
        expect_continue: bool,
        upgrade: bytes | None,
    ) -> None:
        self._conn = conn
        self.method = method
        self.method_bytes = method.encode("ascii")  # as it goes upstream, once per request
        self.target = target  # raw, byte-exact: never normalised
        self.version = version
        self.headers = headers  # raw, in order
        self.peer = conn.peer
        self.tls = conn.tls
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.chunked = chunked
        self.expect_continue = expect_continue
        self.upgrade = upgrade
        self.started = False
        self.ended = False
        self._index: dict[bytes, list[bytes]] | None = None
        self._chunks: deque[bytes] = deque()
        self._complete = False
        self._received = 0
        self._error: str | None = None
        self._refusal: str | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._framing: Framing | None = None
        self._pending_head = b""
        self._sent = 0
        self.body_sent = 0  # body bytes given to the client (before chunk framing)
        self._sent_continue = False
        self._body_start = 0.0
        self._total_deadline = _INF

    @property
    def received(self) -> int:
        """Body bytes received from the client so far (all of them, read or not)."""
        return self._received

    # ----------------------------------------------------------------- headers

    def get(self, name: bytes, default: bytes | None = None) -> bytes | None:
        """The first value of a header, by case-insensitive name."""
        values = self._headers_index().get(name.lower())
        return values[0] if values else default

    def getall(self, name: bytes) -> list[bytes]:
        return list(self._headers_index().get(name.lower(), ()))

    def _headers_index(self) -> dict[bytes, list[bytes]]:
        if self._index is None:
            index: dict[bytes, list[bytes]] = {}
            for name, value in self.headers:
                index.setdefault(name.lower(), []).append(value)
            self._index = index
        return self._index

    # ----------------------------------------------------------------- the body

    async def read(self) -> bytes:
        """The next chunk of the request body; b"" at its end.

        Sends ``100 Continue`` first when the client waits for it. Raises
        ``RequestAborted`` when the client left or the body broke a limit.
        """
        while True:
            if self._chunks:
                data = self._chunks.popleft()
                self._conn._consumed(len(data))
                return data
            if self._error is not None:
                raise RequestAborted(self._error)
            if self._complete:
                return b""
            if self.expect_continue and not self._sent_continue:
                self._send_continue()
            self._waiter = self._conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def prefix(self, limit: int) -> tuple[bytes, bool]:
        """The body if it is at most ``limit`` bytes, buffered (bounded in total time by
        ``body_timeout_s``, like ``body()``), and True; else its first bytes (over ``limit``)
        and False: the rest is for ``read`` to stream, bounded by the minimum rate only."""
        if not self._complete and self._total_deadline == _INF:
            self._total_deadline = self._conn.server.now + self._conn.limits.body_timeout_s
        parts: list[bytes] = []
        size = 0
        while size <= limit:
            data = await self.read()
            if not data:
                return b"".join(parts), True
            parts.append(data)
            size += len(data)
        self._total_deadline = _INF
        return b"".join(parts), False

    async def body(self) -> bytes:
        """The whole body, buffered: bounded by ``max_body_bytes`` and, in total time, by
        ``body_timeout_s`` (a 408 when it runs out)."""
        if not self._complete and self._total_deadline == _INF:
            self._total_deadline = self._conn.server.now + self._conn.limits.body_timeout_s
        parts = []
        while data := await self.read():
            parts.append(data)
        return b"".join(parts)

    def _send_continue(self) -> None:
        self._sent_continue = True
        conn = self._conn
        if self.started or conn.transport is None or conn.lost:
            return
        conn.transport.write(CONTINUE_LINE)
        if conn.parsing is self:
            # The client starts sending now: the body's clock starts here.
            self._body_start = conn.server.now
            conn.kind = _BODY

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ----------------------------------------------------------------- the response

    def _begin(self, status: int) -> bool:
        """Mark the response started; False when the request was aborted (nothing to send)."""
        if self._error is not None:  # aborted: gslb answered already, or the client left
            self.started = self.ended = True
            return False
        if self.started:
            raise RuntimeError("the response has already started")
        if status < 200:
            raise ValueError("a final response is 2xx-5xx; 101 goes through detach()")
        self.started = True
        return True

    def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """The whole response in one write. A no-op when the request was already aborted."""
        if not self._begin(status):
            return
        framing = self._frame(status, headers, len(body))
        self.ended = True
        if framing.body:
            self.body_sent = len(body)
        self._conn._write(framing.head + body if framing.body and body else framing.head)
        self._conn._response_done(self, framing.close)

    def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """Start a streamed response. Framing follows the headers: the application's
        Content-Length if it gives one, else chunked (close-delimited for HTTP/1.0). The
        head goes out with the first ``send`` (``send(b"")`` sends it alone) or ``end``."""
        if not self._begin(status):
            return
        self._framing = self._frame(status, headers, None)
        self._pending_head = self._framing.head

    async def send(self, data: bytes) -> None:
        """One piece of the body; waits while the client is not reading."""
        self.write(data)
        conn = self._conn
        if conn.write_paused:
            await conn.drain()

    def write(self, data: bytes) -> None:
        """One piece of the body, without waiting: for a caller that does its own flow
        control (``write_paused`` and ``on_drain``), such as a relay driven by callbacks."""
        framing = self._framing
        if framing is None or self.ended:
            if self._error is not None:
                raise RequestAborted(self._error)
            raise RuntimeError("write() outside start()..end()")
        conn = self._conn
        if conn.lost:
            raise RequestAborted(_CLIENT_GONE)
        out = self._pending_head
        self._pending_head = b""
        if data and framing.body:
            self.body_sent += len(data)
            if framing.chunked:
                data = chunk(data)
            elif framing.length is not None:
                self._sent += len(data)
                if self._sent > framing.length:
                    self.cut()
                    raise ValueError("more body than the response's Content-Length")
            out = out + data if out else data
        if out:
            conn._write(out)

    @property
    def write_paused(self) -> bool:
        """The client's write buffer is over its high mark: it does not read."""
        return self._conn.write_paused

    def on_drain(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, when the client's write buffer is under its low mark again
        (or the client is gone)."""
        conn = self._conn
        if conn.lost or not conn.write_paused:
            conn.loop.call_soon(callback)
        else:
            conn.drain_callback = callback

    def end(self) -> None:
        """The clean end of a streamed response (the terminating chunk when chunked)."""
        framing = self._framing
        if framing is None or self.ended:
            return
        if framing.length is not None and framing.body and self._sent < framing.length:
            self.cut()  # short of its Content-Length: the client must see the truncation
            return
        self.ended = True
        out = self._pending_head
        self._pending_head = b""
        if framing.chunked:
            out += LAST_CHUNK
        if out:
            self._conn._write(out)
        self._conn._response_done(self, framing.close)

    def cut(self) -> None:
        """Close without a clean end: no terminating chunk, the client sees a truncation."""
        if self.ended:
            return
        self.started = self.ended = True
        conn = self._conn
        if self._pending_head:
            conn._write(self._pending_head)
            self._pending_head = b""
        conn._close()

    def detach(self, headers: list[tuple[bytes, bytes]]) -> Detached:
        """Answer an Upgrade with 101 and take the raw byte stream (``Detached``)."""
        if self.upgrade is None:
            raise RuntimeError("the request asked for no upgrade")
        if self.started:
            raise RuntimeError("the response has already started")
        self.started = self.ended = True
        framing = frame_response(
            101, headers, body_length=0, head_request=False, http11=True, keep_alive=True
        )
        conn = self._conn
        detached = Detached(conn)
        conn.detached = detached
        conn._write(framing.head)
        return detached

    def _frame(
        self, status: int, headers: list[tuple[bytes, bytes]], length: int | None
    ) -> Framing:
        conn = self._conn
        # Keep the connection only when this request's bytes are all in: otherwise the rest
        # of its body (or an upgraded stream) would be read as the next request.
        keep = self.keep_alive and self._complete and self.upgrade is None and not conn.closing
        return frame_response(
            status,
            headers,
            body_length=length,
            head_request=self.method == "HEAD",
            http11=self.version == "1.1",
            keep_alive=keep,
        )


class Detached:
    """An upgraded connection's raw byte stream, for a relay."""

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._chunks = conn.raw
        self._eof = conn.eof
        self._waiter: asyncio.Future[None] | None = None
        self._on_idle: Callable[[], None] | None = None
        self.idle_timeout_s = _INF
        self._active = True

    def write(self, data: bytes) -> None:
        if not self._conn.lost and data:
            self._active = True
            self._conn._write(data)

    @property
    def write_paused(self) -> bool:
        """The client's write buffer is over its high mark: it does not read."""
        return self._conn.write_paused

    async def drain(self) -> None:
        """Wait while the client does not read what ``write`` sent."""
        if self._conn.write_paused:
            await self._conn.drain()

    async def read(self) -> bytes:
        """The next bytes from the client; b"" when it closed or left."""
        while True:
            if self._chunks:
                data = self._chunks.popleft()
                self._conn._consumed(len(data))
                return data
            if self._eof or self._conn.lost:
                return b""
            self._waiter = self._conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def close(self) -> None:
        self._conn._close()

    def set_idle_timeout(self, seconds: float, on_idle: Callable[[], None] | None = None) -> None:
        """Close (or call ``on_idle``) after ``seconds`` with no byte either way. Coarse by
        design (no clock read per byte): it fires between ``seconds`` and twice that after
        the last byte, plus up to ``sweep_s``."""
        self.idle_timeout_s = seconds
        self._on_idle = on_idle
        conn = self._conn
        conn.kind = _RELAY
        conn.deadline = conn.server.now + seconds

    def _feed(self, data: bytes) -> None:
        self._active = True
        self._chunks.append(data)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _idle(self, now: float) -> None:
        if self._active:
            self._active = False
            self._conn.deadline = now + self.idle_timeout_s
            return
        self._conn.kind = _NONE
        if self._on_idle is not None:
            self._on_idle()
        else:
            self._conn._close()


# --------------------------------------------------------------------------- the connection


class _Connection(asyncio.Protocol):
    """One client connection: parsing, the request queue, deadlines and flow control."""

    # Slots: one per open connection, 10,000 of them in a worker holding streams.
    __slots__ = (
        "accepted",
        "broken",
        "buffered",
        "closing",
        "content_length",
        "current",
        "deadline",
        "detached",
        "done",
        "drain_callback",
        "drain_waiter",
        "eof",
        "expect",
        "head_bytes",
        "head_started",
        "headers",
        "in_head",
        "kind",
        "limits",
        "lingered",
        "loop",
        "lost",
        "parser",
        "parsing",
        "paused_at",
        "peer",
        "queue",
        "raw",
        "read_paused",
        "runner",
        "runner_waiter",
        "server",
        "te",
        "tls",
        "transport",
        "upgrade_value",
        "upgrading",
        "url",
        "write_paused",
        "write_paused_at",
    )

    def __init__(self, server: H1Server) -> None:
        self.server = server
        self.limits = server.limits
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = "-"
        self.tls = False
        self.accepted = False
        self.lost = False
        self.closing = False  # graceful shutdown: no more keep-alive
        self.broken = False  # no more parsing (after a refusal or an upgrade)
        self.eof = False
        self.queue: deque[RequestCycle] = deque()
        self.current: RequestCycle | None = None
        self.parsing: RequestCycle | None = None
        self.runner: asyncio.Task[None] | None = None
        self.runner_waiter: asyncio.Future[None] | None = None
        self.detached: Detached | None = None
        self.upgrading: RequestCycle | None = None
        self.raw: deque[bytes] = deque()  # bytes after an Upgrade head
        self.done = False  # no further answer on this connection
        # The request head being parsed.
        self.in_head = True
        self.head_started = False
        self.head_bytes = 0
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.content_length: int | None = None
        self.te: list[bytes] = []
        self.expect: list[bytes] = []
        self.upgrade_value: bytes | None = None
        # Deadlines and flow control.
        self.kind = _NONE
        self.deadline = _INF
        self.buffered = 0
        self.read_paused = False
        self.paused_at = 0.0
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.drain_callback: Callable[[], None] | None = None
        self.write_paused_at = 0.0
        self.lingered = 0

    # ----------------------------------------------------------------- transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, though they are one.
        self.transport = transport = cast(asyncio.Transport, transport)
        server = self.server
        if server.open >= self.limits.max_connections or server.closing:
            server.refused += 1
            transport.close()
            return
        self.accepted = True
        server.open += 1
        server.accepted += 1
        server.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):  # the default loop leaves accepted ones alone
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.peer = str(peer[0])
        self.tls = transport.get_extra_info("ssl_object") is not None
        transport.set_write_buffer_limits(self.limits.write_high_water, self.limits.write_low_water)
        self.kind = _HEAD
        self.deadline = server.now + self.limits.header_timeout_s

    def data_received(self, data: bytes) -> None:
        if self.detached is not None:
            self.buffered += len(data)
            self.detached._feed(data)
            self._flow()
            return
        if self.broken:
            self._drop(data)
            return
        if self.upgrading is not None:  # bytes after an Upgrade head, before detach()
            self.buffered += len(data)
            self.raw.append(data)
            self._flow()
            return
        if self.in_head:
            if self.kind == _IDLE:
                self.kind = _HEAD
                self.deadline = self.server.now + self.limits.header_timeout_s
            self.head_started = True
            # Reset when a head completes; checked after parsing: a head the parser still
            # holds in pieces is bounded (within one read: httptools keeps partial lines).
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except _Refuse as exc:
            self._parse_failed(exc.reason)
        except httptools.HttpParserUpgrade as exc:
            self._upgraded(data[exc.args[0] :] if exc.args else b"")
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._parse_failed(cause.reason if isinstance(cause, _Refuse) else "bad_request")
        except httptools.HttpParserError as exc:
            self._parse_failed(parser_reason(type(exc).__name__, str(exc)))
        else:
            if self.in_head and self.head_bytes > self.server.head_budget:
                self._refuse_next("header_too_large")
                return
            self._flow()

    def eof_received(self) -> bool | None:
        self.eof = True
        if self.parsing is not None:
            self._fail(self.parsing, _CLIENT_GONE)
        if self.detached is not None:
            self.detached._eof = True
            self.detached._wake()
        if self.detached is None and (self.current is not None or self.queue):
            # A client that closes its side before its answer has left, as nginx takes it
            # (499): its handler is cancelled now, not when the upstream answers.
            self._abandon()
        # A relayed stream may still answer a half-closed client (TLS cannot half-close:
        # asyncio warns when asked to); else close our side too: connection_lost follows.
        return None if self.tls or self.detached is None else True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.kind = _NONE
        if not self.accepted:
            return
        server = self.server
        server.open -= 1
        server.connections.discard(self)
        self._abandon()
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._drained()
        if server.open == 0:
            server._all_closed()

    def _abandon(self) -> None:
        """The client left: every request not yet answered ends, and the one in progress
        has its handler cancelled, so whatever it awaits (an upstream's head, a body) is
        given up now, not when it next touches this connection."""
        for cycle in (self.current, self.parsing, *self.queue):
            if cycle is not None and cycle._error is None and not cycle._complete:
                cycle._error = _CLIENT_GONE
            if cycle is not None:
                cycle._wake()
        if self.upgrading is not None:
            self.upgrading._wake()
        if self.detached is not None:
            self.detached._wake()
        current, runner = self.current, self.runner
        if current is not None and not current.ended and runner is not None:
            self.done = True
            runner.cancel()
        self._wake_runner()

    def pause_writing(self) -> None:
        self.write_paused = True
        self.write_paused_at = self.server.now

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._drained()

    def _drained(self) -> None:
        callback = self.drain_callback
        if callback is not None:
            self.drain_callback = None
            callback()

    async def drain(self) -> None:
        """Wait until the write buffer is under its low mark (or the client is gone)."""
        while self.write_paused and not self.lost:
            if self.drain_waiter is None or self.drain_waiter.done():
                self.drain_waiter = self.loop.create_future()
            # Shielded: the response's send and the runner may wait on it together.
            await asyncio.shield(self.drain_waiter)
        if self.lost:
            raise RequestAborted(_CLIENT_GONE)

    # ----------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        self.head_started = True
        self.url = b""
        self.headers = []
        self.content_length = None
        self.te = []
        self.expect = []
        self.upgrade_value = None

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limits.max_line_size:
            raise _Refuse("request_line_too_long")

    def on_header(self, name: bytes, value: bytes) -> None:
        headers = self.headers
        headers.append((name, value))
        if len(name) + len(value) > self.limits.max_field_size:
            raise _Refuse("header_too_large")
        if len(headers) > self.limits.max_headers:
            raise _Refuse("too_many_headers")
        n = len(name)
        if n in (6, 7, 14, 17):  # only then can it be one of the four that matter here
            lname = name.lower()
            if lname == b"content-length":
                self.content_length = int(value)  # llhttp checked: digits, one value
            elif lname == b"transfer-encoding":
                self.te.append(value)
            elif lname == b"expect":
                self.expect.append(value)
            elif lname == b"upgrade":
                self.upgrade_value = value

    def on_headers_complete(self) -> None:
        parser = self.parser
        version = parser.get_http_version()
        if version != "1.1" and version != "1.0":
            raise _Refuse("bad_request_line")
        method = parser.get_method().decode("ascii")
        if method == "CONNECT":
            raise _Refuse("method_not_allowed")
        reason = transfer_encoding_reason(self.te, version)
        if reason is not None:
            raise _Refuse(reason)
        expect_continue = False
        if version == "1.1":  # an HTTP/1.0 client's Expect is ignored (RFC 9110 10.1.1)
            expect_continue, reason = expect_reason(self.expect)
            if reason is not None:
                raise _Refuse(reason)
        length = self.content_length
        if length is not None and length > self.limits.max_body_bytes:
            raise _Refuse("body_too_large")
        chunked = bool(self.te)
        upgrade = self.upgrade_value if parser.should_upgrade() else None
        cycle = RequestCycle(
            self,
            method,
            self.url,
            version,
            self.headers,
            parser.should_keep_alive(),
            length,
            chunked,
            expect_continue,
            upgrade,
        )
        self.in_head = False
        self.head_started = False
        self.head_bytes = 0
        self.parsing = cycle
        if (chunked or length) and upgrade is None:
            if expect_continue:
                self.kind = _NONE  # the client waits for 100 Continue: no clock yet
            else:
                cycle._body_start = self.server.now
                self.kind = _BODY
        elif self.kind != _RELAY:
            self.kind = _NONE
        self._enqueue(cycle)

    def on_body(self, body: bytes) -> None:
        cycle = self.parsing
        if cycle is None:
            return
        cycle._received += len(body)
        if cycle._received > self.limits.max_body_bytes:
            raise _Refuse("body_too_large")
        if cycle._error is not None:
            return
        self.buffered += len(body)
        cycle._chunks.append(body)
        cycle._wake()

    def on_message_complete(self) -> None:
        cycle = self.parsing
        self.in_head = True
        self.parsing = None
        if self.kind == _BODY:
            self.kind = _NONE
        if cycle is not None:
            cycle._complete = True
            cycle._wake()

    # ----------------------------------------------------------------- the queue and the app

    def _enqueue(self, cycle: RequestCycle) -> None:
        self.queue.append(cycle)
        if self.runner is None:
            self.runner = self.loop.create_task(self._run())
        else:
            self._wake_runner()

    def _wake_runner(self) -> None:
        waiter = self.runner_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _run(self) -> None:
        """The connection's one task: each request to the application, in order."""
        queue = self.queue
        app = self.server.app
        while not self.lost and not self.done:
            if not queue:
                self.runner_waiter = self.loop.create_future()
                await self.runner_waiter
                self.runner_waiter = None
                continue
            cycle = queue.popleft()
            if cycle._refusal is not None:
                self._refuse_now(cycle._refusal)
                return
            if cycle._error is not None:  # it broke (the client left) before its turn
                self._close()
                return
            self.current = cycle
            self._flow()
            try:
                await app(cycle)
            except Exception as exc:
                self._app_failed(cycle, exc)
            if not cycle.ended:
                if cycle._error is not None:
                    self._close()
                elif cycle.started:
                    cycle.cut()
                else:  # the application returned without answering
                    log.error("the request handler returned without a response")
                    cycle.ended = True
                    self._refuse_now("internal_error")
            self.current = None
            if self.write_paused and not self.lost:
                try:  # a pipelining client that does not read: answer no further yet
                    await self.drain()
                except RequestAborted:
                    return

    def _app_failed(self, cycle: RequestCycle, exc: Exception) -> None:
        if isinstance(exc, RequestAborted):
            return
        log.error("request handler failed: %s", where_it_failed(exc))
        if not cycle.started:
            cycle.started = cycle.ended = True
            self._refuse_now("internal_error")

    def _response_done(self, cycle: RequestCycle, close: bool) -> None:
        self.server.requests += 1
        if close or self.lost:
            if cycle._complete or cycle.upgrade is not None:
                self._close()
            else:  # answered before its body was all in: let the client see the answer
                self._linger()
            return
        if cycle._chunks:  # a body the application did not read
            self._consumed(sum(len(c) for c in cycle._chunks))
            cycle._chunks.clear()
        if self.queue:
            self.kind = _NONE  # the next request is already in
        elif self.eof or self.broken:  # nothing more will be parsed
            self._close()
        elif self.in_head:
            # The next request's clock starts now: its headers if bytes of it came already
            # (a leading CRLF counts), else the keep-alive idle time.
            now = self.server.now
            if self.head_started:
                self.kind = _HEAD
                self.deadline = now + self.limits.header_timeout_s
            else:
                self.kind = _IDLE
                self.deadline = now + self.limits.keepalive_timeout_s

    # ----------------------------------------------------------------- refusals and failures

    def _parse_failed(self, reason: str) -> None:
        cycle = self.parsing
        if cycle is not None and (cycle in self.queue or cycle is self.current):
            self._fail(cycle, reason)  # an error in a body already handed on
        else:
            self._refuse_next(reason)

    def _refuse_next(self, reason: str) -> None:
        """Refuse the request being parsed (no cycle yet): after those before it."""
        self.broken = True
        self.parsing = None
        if self.current is None and not self.queue:
            self._refuse_now(reason)
            return
        placeholder = RequestCycle(self, "", b"", "1.1", [], False, None, False, False, None)
        placeholder._refusal = reason
        self.queue.append(placeholder)
        self._pause()

    def _fail(self, cycle: RequestCycle, reason: str) -> None:
        """A request whose body cannot go on: its reader is told; the client is answered."""
        self.broken = True
        self.parsing = None
        self.kind = _NONE
        cycle._error = reason
        cycle._wake()
        if reason == _CLIENT_GONE:
            if cycle is self.current and not cycle.started:
                cycle.started = cycle.ended = True
                self._close()
            return
        if cycle is self.current:
            if cycle.started:
                cycle.cut()
            else:
                cycle.started = cycle.ended = True
                self._refuse_now(reason)
        else:
            cycle._refusal = reason
            self._pause()

    def _refuse_now(self, reason: str) -> None:
        """gslb's own answer, then a short linger so the client reads it, then close."""
        transport = self.transport
        if transport is None or self.lost or transport.is_closing():
            return
        self.broken = True
        self.done = True
        self.server.refused_requests += 1
        answer = self.server.refusals.refuse(reason, self.peer)
        transport.write(refusal_head(answer.status, answer.headers, len(answer.body)) + answer.body)
        self._linger()

    def _linger(self) -> None:
        """Close, but first drop what the client still sends for a while (``linger_s``):
        closing with unread bytes would reset the connection, and a reset can destroy the
        answer before the client has read it."""
        transport = self.transport
        self.broken = self.done = True
        if transport is None or self.lost or transport.is_closing():
            return
        if self.tls or not transport.can_write_eof():
            self._close()
            return
        transport.write_eof()
        self.kind = _LINGER
        self.deadline = self.server.now + self.limits.linger_s
        self._resume()

    def _drop(self, data: bytes) -> None:
        self.lingered += len(data)
        if self.lingered > _LINGER_MAX:
            self._close()

    def _upgraded(self, rest: bytes) -> None:
        """The head asked for an Upgrade: what follows is not HTTP; the parser stops."""
        cycle = self.queue[-1] if self.queue else self.current
        self.broken = False
        if cycle is None or cycle.upgrade is None:
            self._close()
            return
        self.upgrading = cycle
        self.parsing = None
        if rest:
            self.buffered += len(rest)
            self.raw.append(rest)
        self._flow()

    def _close(self) -> None:
        self.kind = _NONE
        self.done = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def shutdown(self) -> None:
        """Graceful close: an idle connection closes now, a busy one after its response."""
        self.closing = True
        busy = self.current is not None or self.queue or self.head_started
        if self.done or (not busy and self.detached is None and self.upgrading is None):
            self._close()

    # ----------------------------------------------------------------- deadlines

    def tick(self, now: float) -> None:
        """Called by the listener's sweep when this connection has a deadline."""
        kind = self.kind
        if kind == _BODY:
            cycle = self.parsing
            if cycle is None or self.read_paused:
                return
            due = min(
                cycle._total_deadline,
                body_deadline(cycle._body_start, cycle._received, self.limits),
            )
            if now >= due:
                self.server.slow_bodies += 1
                self._fail(cycle, "slow_request")
            return
        if now < self.deadline:
            return
        if kind == _HEAD:
            self.server.slow_headers += 1
            self.kind = _NONE
            if self.current is None and not self.queue:
                self._refuse_now("slow_request")
            else:
                self._close()
        elif kind == _IDLE:
            self.server.idle_closed += 1
            self._close()
        elif kind == _LINGER:
            self._close()
        elif kind == _RELAY and self.detached is not None:
            self.detached._idle(now)

    def slow_reader(self) -> None:
        """The client read nothing of what was sent for ``send_timeout_s``: cut it (what is
        buffered for it cannot be delivered anyway); its handler is cancelled."""
        self.server.slow_readers += 1
        self.write_paused = False
        log.info("closing a connection whose client stopped reading")
        if self.transport is not None:
            self.transport.abort()

    # ----------------------------------------------------------------- flow control

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.lost:
            self.transport.write(data)

    def _consumed(self, n: int) -> None:
        self.buffered -= n
        if self.read_paused and self.buffered <= self.limits.read_low_water:
            self._flow()

    def _flow(self) -> None:
        over = (
            self.buffered > self.limits.read_high_water
            or len(self.queue) >= self.limits.max_pipelined
        )
        if over:
            self._pause()
        elif self.read_paused and not (self.broken and self.kind != _LINGER):
            self._resume()

    def _pause(self) -> None:
        if not self.read_paused and self.transport is not None and not self.lost:
            self.read_paused = True
            self.paused_at = self.loop.time()
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self.read_paused and self.transport is not None and not self.lost:
            self.read_paused = False
            if self.parsing is not None:
                # The client could not send while gslb held the socket: not its slowness.
                self.parsing._body_start += self.loop.time() - self.paused_at
            self.transport.resume_reading()


# --------------------------------------------------------------------------- the listener


class H1Server:
    """A listening socket and its connections; counters for metrics."""

    def __init__(
        self,
        app: App,
        sock: socket.socket,
        limits: ServerLimits,
        refusals: Refusals,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.app = app
        self.sock = sock  # ours; each asyncio server gets a duplicate, so TLS can be swapped
        self.limits = limits
        self.refusals = refusals
        self.loop = loop
        self.head_budget = limits.head_budget()
        # A coarse clock, advanced by the sweep: deadlines are armed per request without a
        # clock read; they are checked only every sweep_s anyway.
        self.now = loop.time()
        self.connections: set[_Connection] = set()
        self.closing = False
        self.open = 0
        self.accepted = 0
        self.refused = 0  # over max_connections at accept
        self.refused_requests = 0  # answered by gslb itself (4xx/5xx), by Refusals
        self.slow_headers = 0
        self.slow_bodies = 0
        self.idle_closed = 0
        self.slow_readers = 0  # cut after send_timeout_s without reading
        self.requests = 0
        self._servers: list[asyncio.AbstractServer] = []
        self._ssl: ssl_.SSLContext | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed: asyncio.Future[None] = loop.create_future()
        self._grace: asyncio.TimerHandle | None = None

    @property
    def max_connections(self) -> int:
        return self.limits.max_connections

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    async def _listen(self, ctx: ssl_.SSLContext | None) -> None:
        server = await self.loop.create_server(
            lambda: _Connection(self),
            sock=self.sock.dup(),
            ssl=ctx,
            backlog=1024,
            # The header deadline starts once the handshake is done: bound the handshake too.
            ssl_handshake_timeout=self.limits.header_timeout_s if ctx is not None else None,
        )
        self._ssl = ctx
        old, self._servers = self._servers, [server]
        for s in old:
            s.close()
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(self.limits.sweep_s, self._sweep)

    def set_limits(self, limits: ServerLimits) -> None:
        """New limits (a reload) for connections accepted from now on."""
        self.limits = limits
        self.head_budget = limits.head_budget()

    async def set_ssl(self, ctx: ssl_.SSLContext | None) -> None:
        """New handshakes use ``ctx``; connections already open keep theirs."""
        if not self.closing:
            await self._listen(ctx)

    def _sweep(self) -> None:
        self.now = now = self.loop.time()
        send_timeout = self.limits.send_timeout_s
        for conn in list(self.connections):
            if conn.kind:
                conn.tick(now)
            if conn.write_paused and now - conn.write_paused_at >= send_timeout:
                conn.slow_reader()
        if self.closing and not self.connections:
            self._sweeper = None
            return
        self._sweeper = self.loop.call_later(self.limits.sweep_s, self._sweep)

    def close(self, grace_s: float = 30.0) -> None:
        """Stop accepting; idle connections close now, busy ones after their response; after
        ``grace_s`` the rest are cut."""
        if self.closing:
            return
        self.closing = True
        for s in self._servers:
            s.close()
        self.sock.close()
        for conn in list(self.connections):
            conn.shutdown()
        self._grace = self.loop.call_later(grace_s, self._abort_all)
        if self.open == 0:
            self._all_closed()

    def _abort_all(self) -> None:
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
            if conn.runner is not None:
                conn.runner.cancel()

    def _all_closed(self) -> None:
        if self.closing and not self._closed.done():
            self._closed.set_result(None)
            if self._grace is not None:
                self._grace.cancel()

    async def wait_closed(self) -> None:
        for s in self._servers:
            await s.wait_closed()
        await asyncio.shield(self._closed)
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None


async def serve(
    app: App,
    where: socket.socket | tuple[str, int],
    *,
    limits: ServerLimits,
    ssl: ssl_.SSLContext | None = None,
    refusals: Refusals,
) -> H1Server:
    """Listen on ``where`` (a bound socket, or host and port) and serve ``app``."""
    sock = where if isinstance(where, socket.socket) else socket.create_server(where, backlog=1024)
    sock.setblocking(False)
    server = H1Server(app, sock, limits, refusals, asyncio.get_running_loop())
    await server._listen(ssl)
    return server
