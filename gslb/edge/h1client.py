"""The upstream HTTP/1.1 client: raw asyncio protocols, httptools' parser, per-endpoint pools.

What the proxy gets (docs/design.md, the upstream side):

* ``UpstreamPools.request(origin, method, target, headers, body, deadline=...)`` returns an
  ``UpstreamResponse`` once the response head is in. A body gslb holds whole goes out in the
  same write as the head; a streamed body is written as it comes, with the transport's write
  buffer as backpressure, chunked when it declares no length.
* A pool per endpoint origin holds at most ``PoolLimits.size`` connections. A request that
  finds it full waits in a FIFO queue until a connection or a slot is free, bounded by its
  own deadline (the TTFB deadline of the commit window): a healthy endpoint never fails a
  request because its pool is full. The queue length is load for the router.
* A pooled connection that the peer closed is retried once on a fresh connection, only when
  that cannot send the request twice (``gslb.core.h1client_rules.may_retry_stale``).
* Errors are classes, each with the ``Failure`` the forwarding core wants, so the shell maps
  them without looking at messages. Their messages are fixed text: nothing an upstream sends
  reaches an exception message or a log.

Timing costs no Task and no timeout context per request: each connection carries its
deadline, and one coarse sweep per ``UpstreamPools`` (every ``sweep_interval_s``) closes the
overdue ones, cancels overdue connects, expires idle connections and queued waiters.
Connecting takes a Task per connection (not per request), so the sweep can cancel it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Protocol, cast
from urllib.parse import urlsplit

import httptools

from gslb.core.forward import Failure
from gslb.core.h1client_rules import (
    LAST_CHUNK,
    HeadError,
    chunk,
    encode_head,
    may_retry_stale,
)

_OUT_OF_FILES: Final = frozenset({errno.EMFILE, errno.ENFILE})
_NEVER: Final = float("inf")

# --------------------------------------------------------------------------- errors


class BodySink(Protocol):
    """Where ``UpstreamResponse.stream_to`` writes a body: the client's side of a relay."""

    def write(self, data: bytes) -> None: ...

    @property
    def write_paused(self) -> bool: ...

    def on_drain(self, callback: Callable[[], None]) -> None: ...


class UpstreamError(Exception):
    """An upstream attempt failed; ``failure`` is what the forwarding core calls it."""

    failure: ClassVar[Failure] = Failure.ABORTED
    message: ClassVar[str] = "upstream failed"

    def __init__(self) -> None:
        super().__init__(self.message)


class ConnectError(UpstreamError):
    failure = Failure.CONNECT_ERROR
    message = "cannot connect to the upstream (refused, unreachable, reset or TLS failure)"


class ConnectTimeout(ConnectError):
    message = "no connection to the upstream within the connect timeout"


class OutOfFiles(UpstreamError):
    failure = Failure.OUT_OF_FILES
    message = "out of file descriptors: cannot open an upstream connection"


class UpstreamTimeout(UpstreamError):
    failure = Failure.TIMEOUT
    message = "no response head before the deadline"


class PoolTimeout(UpstreamTimeout):
    """Every connection of the endpoint's pool stayed busy: gslb's own limit, which says
    nothing about the endpoint's health."""

    failure = Failure.POOL_TIMEOUT
    message = "no pooled connection free before the deadline"


class HeadTimeout(UpstreamTimeout):
    message = "no response head before the deadline"


class FirstByteTimeout(UpstreamTimeout):
    message = "no first body byte before the deadline"


class AbortedBeforeHead(UpstreamError):
    failure = Failure.ABORTED
    message = "the upstream closed the connection before a response head"


class BadResponse(AbortedBeforeHead):
    message = "the upstream sent a malformed response head"


class UnexpectedUpgrade(AbortedBeforeHead):
    message = "the upstream switched protocols though no upgrade was asked for"


class BadRequestHead(UpstreamError):
    """The request cannot be framed as given (CR/LF in a field): gslb's fault, not the
    upstream's; the shell answers it without trying another endpoint."""

    failure = Failure.ABORTED
    message = "the request head cannot be sent as it is"


class BodyError(UpstreamError):
    """The response body broke after the head: the proxy cuts the client's response."""

    failure = Failure.ABORTED
    message = "the upstream response body broke"


class TruncatedBody(BodyError):
    message = "the upstream closed the connection before the end of the body"


class BadBody(BodyError):
    message = "the upstream sent malformed body framing"


class BodyIdleTimeout(BodyError):
    failure = Failure.TIMEOUT
    message = "no body bytes from the upstream within the idle timeout"


class RequestBodyLength(UpstreamError):
    """A streamed request body did not match the Content-Length it declared."""

    failure = Failure.ABORTED
    message = "the streamed request body does not match its Content-Length"


class PoolClosed(UpstreamError):
    failure = Failure.CONNECT_ERROR
    message = "the upstream pools are closed"


class _Stale(Exception):
    """Internal: a reused connection died before any response byte; safe to retry once."""


class _NotSent(Exception):
    """Internal: the connection was found closed before a byte was written."""


# --------------------------------------------------------------------------- limits


@dataclass(frozen=True, slots=True)
class PoolLimits:
    """Per-endpoint pool limits and the client's timeouts (from ``ProxyConfig``)."""

    size: int = 256  # connections per endpoint
    keepalive_timeout_s: float = 30.0  # an idle pooled connection is closed after this
    connect_timeout_s: float = 2.0  # TCP connect plus TLS handshake
    idle_timeout_s: float = 60.0  # silence inside a response body
    sweep_interval_s: float = 0.1  # the resolution of every timeout above
    # A reused connection that closes within this long of the request's write, before any
    # response byte, was already closed by the peer: retried once (a body gslb holds only).
    stale_window_s: float = 0.25
    read_high_water: int = 256 * 1024  # buffered body bytes: pause reading above this
    write_high_water: int = 64 * 1024  # transport write buffer: a streamed body waits above
    source_address: str = ""  # connect from this local address ("": the kernel's choice)
    write_low_water: int = 16 * 1024


@dataclass(frozen=True, slots=True)
class PoolStats:
    """One endpoint's pool, for the router's load and for metrics."""

    open: int  # connections (connecting, busy and idle)
    idle: int
    waiting: int  # requests queued for a connection


# --------------------------------------------------------------------------- connection

_CONNECTING: Final = 0
_IDLE: Final = 1
_BUSY: Final = 2
_CLOSED: Final = 3


class _Conn(asyncio.Protocol):
    """One upstream connection; at most one exchange at a time (no pipelining)."""

    __slots__ = (
        "_loop",
        "body_done",
        "body_seen",
        "buf",
        "buffered",
        "deadline",
        "drain_waiter",
        "error",
        "first_due",
        "framed",
        "gen",
        "head_fut",
        "head_req",
        "headers",
        "held",
        "idle_since",
        "idle_timeout_s",
        "interim",
        "keep",
        "limits",
        "parser",
        "parser_dirty",
        "pool",
        "read_paused",
        "read_waiter",
        "reason",
        "req_complete",
        "response",
        "reused",
        "rx",
        "rx_mark",
        "rx_mark_time",
        "rx_start",
        "sink",
        "sink_fut",
        "state",
        "status",
        "tail",
        "transport",
        "upgrade_ok",
        "write_paused",
        "written_at",
    )

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.limits = pool.limits
        self._loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.parser_dirty = False
        self.state = _CONNECTING
        self.reused = False
        self.gen = 0
        self.rx = 0
        self.rx_start = 0
        self.rx_mark = -1
        self.rx_mark_time = 0.0
        self.idle_since = 0.0
        self.deadline = 0.0
        self.idle_timeout_s = self.limits.idle_timeout_s
        self.written_at = 0.0
        self.held = True
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self.head_fut: asyncio.Future[UpstreamResponse] | None = None
        self.response: UpstreamResponse | None = None
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.interim = False
        self.framed = False
        self.head_req = False
        self.upgrade_ok = False
        self.keep = False
        self.req_complete = False
        self.body_done = False
        self.buf: deque[bytes] = deque()
        self.buffered = 0
        self.read_paused = False
        self.read_waiter: asyncio.Future[None] | None = None
        self.error: UpstreamError | None = None
        self.tail = b""
        self.body_seen = False
        self.first_due = _NEVER
        self.sink: BodySink | None = None
        self.sink_fut: asyncio.Future[None] | None = None

    # ---------------------------------------------------------------- transport callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they have its methods.
        self.transport = transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Explicitly: a loop sets it only on sockets it created as TCP itself.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        limits = self.limits
        transport.set_write_buffer_limits(limits.write_high_water, limits.write_low_water)

    def data_received(self, data: bytes) -> None:
        self.rx += 1
        if self.state != _BUSY:
            # Bytes while no request is out: the upstream is out of step. Never reuse it.
            self._abort()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgraded(data, int(exc.args[0]))
        except httptools.HttpParserError:
            self._broken()

    def eof_received(self) -> bool:
        return False  # close our side too: connection_lost follows

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self.drain_waiter
        if waiter is not None:
            self.drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        prior = self.state
        self.state = _CLOSED
        self.pool.lost(self, prior)
        waiter = self.drain_waiter
        if waiter is not None:
            self.drain_waiter = None
            if not waiter.done():
                waiter.set_exception(ConnectionResetError())
        if prior != _BUSY:
            return
        fut = self.head_fut
        if fut is not None and not fut.done():
            fut.set_exception(self._head_failure())
        elif not self.body_done:
            if self.error is None:
                if self.framed or self.status == 101 or self.head_req:
                    self.error = TruncatedBody()
                else:  # a body delimited by the close: this is its end
                    self.body_done = True
            self._wake_reader()

    def _head_failure(self) -> BaseException:
        if self.error is not None:
            return self.error
        since = self._loop.time() - self.written_at
        if may_retry_stale(
            reused=self.reused,
            response_started=self.rx != self.rx_start,
            written=self.written_at > 0.0,
            body_held=self.held,
            since_write_s=since,
            window_s=self.limits.stale_window_s,
        ):
            return _Stale()
        return AbortedBeforeHead()

    # ---------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        if self.body_done and self.status >= 200:
            # More bytes after a complete response: never reuse this connection.
            self.keep = False
            raise _Extra

    def on_status(self, reason: bytes) -> None:
        self.reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_fut is None or self.head_fut.done():
            return  # trailers: the head went out already; gslb forwards no trailers
        self.headers.append((name, value))
        low = name.lower()
        if low == b"content-length" or low == b"transfer-encoding":
            self.framed = True

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        self.status = status
        if status < 200:
            if status == 101:
                if not self.upgrade_ok:
                    self.error = UnexpectedUpgrade()
                    raise _Extra
                return  # HttpParserUpgrade follows with the offset of the relayed bytes
            self.interim = True  # 100 Continue, 103 Early Hints: not the response
            self.headers = []
            self.framed = False
            return
        self.keep = self.parser.should_keep_alive()
        if self.head_req or status == 204 or status == 304:
            self.body_done = True
            self.parser_dirty = self.head_req  # llhttp would still expect a HEAD's body
        self._deliver_head()

    def on_body(self, data: bytes) -> None:
        if self.body_done:  # a body after HEAD's head: out of step
            self.keep = False
            raise _Extra
        self.body_seen = True
        if self.sink is not None:
            self._to_sink(data)
            return
        self.buf.append(data)
        self.buffered += len(data)
        if self.buffered > self.limits.read_high_water and not self.read_paused:
            self.read_paused = True
            assert self.transport is not None
            self.transport.pause_reading()
        waiter = self.read_waiter
        if waiter is not None:
            self.read_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if self.status == 101:
            return
        self.body_done = True
        self._wake_reader()

    # ---------------------------------------------------------------- internals

    def _deliver_head(self) -> None:
        fut = self.head_fut
        assert fut is not None
        resp = UpstreamResponse(self, self.status, self.reason, self.headers)
        self.response = resp
        if not fut.done():
            fut.set_result(resp)

    def _upgraded(self, data: bytes, offset: int) -> None:
        if self.status != 101 or not self.upgrade_ok:
            self._broken()
            return
        self.tail = data[offset:]
        self.keep = False
        assert self.transport is not None
        self.transport.pause_reading()  # until the relay takes the transport over
        self.read_paused = True
        self._deliver_head()

    def _broken(self) -> None:
        """The parser refused the bytes (or a callback stopped it)."""
        if self.error is None:
            fut = self.head_fut
            if fut is not None and not fut.done():
                self.error = BadResponse()
            elif not self.body_done:
                self.error = BadBody()
        if self.error is None and self.body_done:
            self.keep = False  # complete response, then junk: the response stands
            return
        self._abort()

    def _abort(self) -> None:
        self.keep = False
        if self.transport is not None:
            self.transport.abort()

    def fail(self, error: UpstreamError) -> None:
        """The sweep found this exchange overdue."""
        if self.error is None:
            self.error = error
        self._abort()

    def _wake_reader(self) -> None:
        waiter = self.read_waiter
        if waiter is not None:
            self.read_waiter = None
            if not waiter.done():
                waiter.set_result(None)
        fut = self.sink_fut
        if fut is not None and not fut.done():
            if self.error is not None:
                fut.set_exception(self.error)
            elif self.body_done:
                fut.set_result(None)

    def _to_sink(self, data: bytes) -> None:
        """A body chunk straight to the sink, from the parser's callback: no task, no
        coroutine and no buffer per chunk. A sink that is full pauses this socket."""
        sink = self.sink
        assert sink is not None
        try:
            sink.write(data)
        except Exception as exc:  # the sink's side broke (its client left): stop here
            self.keep = False
            fut = self.sink_fut
            if fut is not None and not fut.done():
                fut.set_exception(exc)
            raise _Extra from None
        if sink.write_paused and not self.read_paused:
            self.read_paused = True
            assert self.transport is not None
            self.transport.pause_reading()
            sink.on_drain(self._sink_drained)

    def _sink_drained_or_wait(self) -> None:
        sink = self.sink
        assert sink is not None and self.transport is not None
        if sink.write_paused:
            self.read_paused = True
            sink.on_drain(self._sink_drained)
        else:
            self.transport.resume_reading()

    def _sink_drained(self) -> None:
        if self.read_paused and self.sink is not None and self.state == _BUSY:
            self.read_paused = False
            if self.transport is not None:
                self.transport.resume_reading()

    def check(self, now: float) -> None:
        """The sweep's look at one busy connection."""
        fut = self.head_fut
        if fut is None:
            return
        if not fut.done():
            if now >= self.deadline:
                self.fail(HeadTimeout())
            return
        if self.body_done or self.status == 101:
            return
        if not self.body_seen and now >= self.first_due:
            self.fail(FirstByteTimeout())
            return
        if self.read_paused or self.rx != self.rx_mark:
            # New bytes, or silence that is ours (the reader lags): the clock restarts.
            self.rx_mark = self.rx
            self.rx_mark_time = now
        elif now - self.rx_mark_time >= self.idle_timeout_s:
            self.fail(BodyIdleTimeout())

    def transport_closing(self) -> bool:
        transport = self.transport
        return transport is None or transport.is_closing()

    async def drain(self) -> None:
        if self.write_paused and self.state != _CLOSED:
            waiter = self._loop.create_future()
            self.drain_waiter = waiter
            await waiter

    # ---------------------------------------------------------------- one exchange

    async def exchange(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes | AsyncIterator[bytes] | None,
        deadline: float,
        upgrade: bool,
        idle_timeout_s: float | None,
        first_byte: bool = False,
    ) -> UpstreamResponse:
        transport = self.transport
        if self.state == _CLOSED or transport is None or transport.is_closing():
            raise _NotSent  # the peer closed it while idle: try another connection
        held = body is None or isinstance(body, bytes)
        length = (len(body) if body else 0) if held else None  # type: ignore[arg-type]
        try:
            head = encode_head(method, target, headers, self.pool.host, length)
        except HeadError:
            self.pool.release(self)  # nothing sent: the connection is still good
            raise BadRequestHead() from None
        if self.parser_dirty:
            self.parser = httptools.HttpResponseParser(self)
            self.parser_dirty = False
        # Reset already: by ``release`` (or, for a new connection, by ``__init__``).
        self.gen += 1
        self.held = held
        self.head_req = method == b"HEAD"
        self.upgrade_ok = upgrade
        self.deadline = deadline
        self.first_due = deadline if first_byte else _NEVER
        self.idle_timeout_s = (
            self.limits.idle_timeout_s if idle_timeout_s is None else idle_timeout_s
        )
        self.rx_start = self.rx
        self.rx_mark = -1
        self.written_at = 0.0
        fut: asyncio.Future[UpstreamResponse] = self._loop.create_future()
        self.head_fut = fut
        self.state = _BUSY
        try:
            if body is None or isinstance(body, bytes):
                transport.write(head.data + body if body else head.data)  # one write
                self.written_at = self._loop.time()
            else:
                transport.write(head.data)
                self.written_at = self._loop.time()
                await self._stream(body, head.chunked, head.length)
            self.req_complete = not head.close
            return await fut
        except BaseException:
            # Cancelled, timed out, or the body source failed: this connection is done.
            if not fut.done():
                fut.cancel()
            elif not fut.cancelled():
                fut.exception()  # retrieved: no "never retrieved" report at collection
            self._abort()
            raise

    async def _stream(self, body: AsyncIterator[bytes], chunked: bool, length: int | None) -> None:
        """Write a streamed body as it comes; stop when the connection dies (the head
        future then says why). An error from ``body`` itself propagates unchanged."""
        transport = self.transport
        assert transport is not None
        sent = 0
        try:
            async for data in body:
                if not data:
                    continue
                if self.state == _CLOSED:
                    return
                sent += len(data)
                if length is not None and sent > length:
                    raise RequestBodyLength()
                transport.write(chunk(data) if chunked else data)
                if self.write_paused:
                    await self.drain()
            if self.state == _CLOSED:
                return
            if chunked:
                transport.write(LAST_CHUNK)
            elif length is not None and sent != length:
                raise RequestBodyLength()
        except ConnectionResetError:
            return  # the head future holds the reason
        except BaseException:
            self.keep = False
            self._abort()
            raise


class _Extra(Exception):
    """Raised from a parser callback to stop parsing."""


# --------------------------------------------------------------------------- response


class UpstreamResponse:
    """The head of an upstream response and a reader for its body.

    ``read()`` returns what arrived (b"" at the end) and raises a ``BodyError`` when the body
    broke. Call ``release()`` (or read to b"") when done: the connection goes back to the
    pool when the body ended and the connection may be kept, and is closed otherwise.
    """

    __slots__ = ("_conn", "_gen", "headers", "reason", "status")

    def __init__(
        self, conn: _Conn, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        self._conn: _Conn | None = conn
        self._gen = conn.gen
        self.status = status
        self.reason = reason
        self.headers = headers

    @property
    def buffered(self) -> int:
        """Body bytes received and not read yet (bounded by the read high-water mark)."""
        conn = self._conn
        return conn.buffered if conn is not None and conn.gen == self._gen else 0

    @property
    def at_eof(self) -> bool:
        conn = self._conn
        return conn is None or (conn.body_done and not conn.buf)

    async def read(self) -> bytes:
        while True:
            conn = self._conn
            if conn is None or conn.gen != self._gen:
                return b""
            buf = conn.buf
            if buf:
                data = buf.popleft() if len(buf) == 1 else _drain_all(buf)
                conn.buffered -= len(data)
                if conn.read_paused and conn.buffered <= conn.limits.read_high_water // 2:
                    conn.read_paused = False
                    if conn.transport is not None and conn.status != 101:
                        conn.transport.resume_reading()
                return data
            if conn.error is not None:
                error = conn.error
                self.close()
                raise error
            if conn.body_done:
                self.release()
                return b""
            waiter: asyncio.Future[None] = conn._loop.create_future()
            conn.read_waiter = waiter
            try:
                await waiter
            except BaseException:
                self.close()
                raise

    def stream_to(self, sink: BodySink) -> asyncio.Future[None]:
        """Hand the rest of the body to ``sink`` as it arrives, from the connection's own
        callbacks: no task or coroutine per chunk. The future resolves when the body ends,
        or fails with the ``BodyError`` that broke it (or what ``sink.write`` raised). Flow
        control: while ``sink.write_paused``, the upstream's socket is paused, and
        ``sink.on_drain`` resumes it. ``release()`` afterwards, as with ``read``."""
        conn = self._conn
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if conn is None or conn.gen != self._gen:
            fut.set_result(None)
            return fut
        while conn.buf:  # what arrived before: first, in order
            sink.write(conn.buf.popleft())
        conn.buffered = 0
        conn.sink = sink
        conn.sink_fut = fut
        if conn.error is not None or conn.body_done:
            conn._wake_reader()
        elif conn.read_paused:  # paused for the buffer's high mark: the sink decides now
            conn.read_paused = False
            conn._sink_drained_or_wait()
        return fut

    def release(self) -> None:
        """Done with this response: back to the pool when the body ended cleanly and the
        connection may be kept (unread buffered bytes are dropped); closed otherwise."""
        conn = self._conn
        self._conn = None
        if conn is None or conn.gen != self._gen:
            return
        if conn.body_done and conn.keep and conn.req_complete and conn.error is None:
            conn.pool.release(conn)
        else:
            conn.pool.discard(conn)

    def close(self) -> None:
        """Done with this response, whatever state its body is in: the connection closes."""
        conn = self._conn
        self._conn = None
        if conn is not None and conn.gen == self._gen:
            conn.pool.discard(conn)

    def detach(self) -> tuple[asyncio.Transport, bytes]:
        """After an asked-for 101: the raw transport (reading paused) and the bytes that
        came after the head. The caller sets its own protocol on the transport and resumes
        reading; the connection leaves the pool (its slot is free again)."""
        conn = self._conn
        self._conn = None
        if conn is None or conn.status != 101 or conn.transport is None:
            raise UnexpectedUpgrade()
        transport, tail = conn.transport, conn.tail
        conn.pool.detach(conn)
        return transport, tail


def _drain_all(buf: deque[bytes]) -> bytes:
    data = b"".join(buf)
    buf.clear()
    return data


# --------------------------------------------------------------------------- pool


class _Pool:
    """The connections to one endpoint origin and the queue of requests waiting for one."""

    def __init__(
        self,
        owner: UpstreamPools,
        origin: str,
        ssl_ctx: ssl.SSLContext | None,
    ) -> None:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an endpoint origin: {origin!r}")
        self.owner = owner
        self.loop = owner.loop
        self.limits = owner.limits
        self.hostname = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = ssl_ctx if parts.scheme == "https" else None
        netloc = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        self.host = f"{netloc}:{self.port}".encode("idna")
        self.open = 0  # connecting + busy + idle
        self.idle: dict[_Conn, None] = {}  # insertion order = release order: oldest first
        self.busy: set[_Conn] = set()
        self.waiters: deque[tuple[float, asyncio.Future[_Conn | None]]] = deque()
        self.connecting: dict[asyncio.Task[Any], tuple[float, type[UpstreamError]]] = {}
        self.timed_out: dict[asyncio.Task[Any], UpstreamError] = {}
        self.retired = False  # replaced by a reload: no connection goes back to idle

    # ---------------------------------------------------------------- acquire

    async def acquire(self, deadline: float, fresh: bool) -> _Conn:
        """A connection for one exchange: an idle one, a new one, or one freed for us."""
        while True:
            idle = self.idle
            if idle and not fresh:
                conn, _ = idle.popitem()  # the most recently used: warmest
                if conn.state == _IDLE:
                    conn.state = _BUSY
                    conn.reused = True
                    self.busy.add(conn)
                    return conn
                continue
            if self.open < self.limits.size:
                self.open += 1
                return await self._connect(deadline)
            if fresh and idle:
                oldest = next(iter(idle))
                del idle[oldest]
                oldest.state = _CLOSED
                self._close_transport(oldest)
                return await self._connect(deadline)  # its slot is ours
            got = await self._wait(deadline)
            if got is None:
                return await self._connect(deadline)  # a slot was handed to us
            if got.state == _BUSY and not got.transport_closing():
                got.reused = True
                return got
            self.discard(got)

    async def _wait(self, deadline: float) -> _Conn | None:
        if self.owner.closed:
            raise PoolClosed()
        fut: asyncio.Future[_Conn | None] = self.loop.create_future()
        entry = (deadline, fut)
        self.waiters.append(entry)
        self.owner.arm()
        try:
            return await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                got = fut.result()  # handed to us as we were cancelled: pass it on
                if got is None:
                    self.open -= 1
                    self._grant()
                else:
                    self.release(got)
            else:
                with contextlib.suppress(ValueError):
                    self.waiters.remove(entry)
            raise

    async def _connect(self, deadline: float) -> _Conn:
        """Open a connection in the slot already counted in ``open``."""
        if self.owner.closed:
            self.open -= 1
            raise PoolClosed()
        conn = _Conn(self)
        loop = self.loop
        limits = self.limits
        task = loop.create_task(
            loop.create_connection(
                lambda: conn,
                self.hostname,
                self.port,
                ssl=self.ssl,
                server_hostname=self.hostname if self.ssl is not None else None,
                ssl_handshake_timeout=limits.connect_timeout_s if self.ssl is not None else None,
                local_addr=(limits.source_address, 0) if limits.source_address else None,
            )
        )
        connect_due = loop.time() + limits.connect_timeout_s
        # Past the connect timeout: a connect error; past the request's deadline first: the
        # request's own time-out (no head before the deadline).
        self.connecting[task] = (
            (deadline, HeadTimeout) if deadline < connect_due else (connect_due, ConnectTimeout)
        )
        self.owner.arm()
        try:
            await task
        except BaseException as exc:
            timeout = self.timed_out.pop(task, None)
            self.connecting.pop(task, None)
            if conn.state != _CLOSED:  # else ``lost`` counted it already
                conn.state = _CLOSED
                self.open -= 1
                self._grant()
            if conn.transport is not None:
                conn.transport.abort()
            if isinstance(exc, asyncio.CancelledError):
                if timeout is not None:
                    raise timeout from None
                raise
            if isinstance(exc, OSError) and exc.errno in _OUT_OF_FILES:
                raise OutOfFiles() from None
            if isinstance(exc, (OSError, ssl.SSLError, ssl.CertificateError)):
                raise ConnectError() from None
            raise
        self.connecting.pop(task, None)
        self.timed_out.pop(task, None)
        if conn.state == _CLOSED:  # a fresh connection closed at once: the upstream fails
            raise AbortedBeforeHead()
        conn.state = _BUSY
        self.busy.add(conn)
        return conn

    # ---------------------------------------------------------------- give back

    def release(self, conn: _Conn) -> None:
        """A connection whose exchange ended cleanly: to the first waiter, or idle."""
        if conn.state != _BUSY or conn.transport_closing():
            self.discard(conn)
            return
        waiters = self.waiters
        while waiters:
            _, fut = waiters.popleft()
            if not fut.done():
                conn._reset()
                conn.gen += 1
                fut.set_result(conn)  # stays busy: it is the waiter's now
                return
        if self.retired:
            self.discard(conn)
            return
        self.busy.discard(conn)
        conn._reset()
        conn.gen += 1
        conn.state = _IDLE
        conn.idle_since = self.loop.time()
        self.idle[conn] = None

    def discard(self, conn: _Conn) -> None:
        """Close a connection that may not be reused (bookkeeping in ``lost``)."""
        conn.keep = False
        conn.gen += 1
        if conn.state == _CLOSED:
            return
        self._close_transport(conn)

    def _close_transport(self, conn: _Conn) -> None:
        transport = conn.transport
        if transport is not None:
            transport.abort()  # unread bytes make close() linger; abort frees the slot now

    def detach(self, conn: _Conn) -> None:
        """The connection leaves the pool for good (an upgraded byte relay)."""
        self.busy.discard(conn)
        conn.state = _CLOSED
        conn.gen += 1
        self.open -= 1
        self._grant()

    def lost(self, conn: _Conn, prior: int) -> None:
        """The connection closed: its slot is free."""
        if prior == _CLOSED:
            return  # counted already (closed while idle by the sweep, or detached)
        if prior == _IDLE:
            self.idle.pop(conn, None)
        self.busy.discard(conn)
        self.open -= 1
        self._grant()

    def _grant(self) -> None:
        """A slot is free: the first live waiter gets it, to connect itself."""
        waiters = self.waiters
        while waiters and self.open < self.limits.size:
            _, fut = waiters.popleft()
            if not fut.done():
                self.open += 1
                fut.set_result(None)
                return

    # ---------------------------------------------------------------- sweep

    def sweep(self, now: float) -> None:
        waiters = self.waiters
        if waiters:
            late = [entry for entry in waiters if entry[0] <= now or entry[1].done()]
            for entry in late:
                waiters.remove(entry)
                if not entry[1].done():
                    entry[1].set_exception(PoolTimeout())
        keepalive = self.limits.keepalive_timeout_s
        idle = self.idle
        while idle:
            conn = next(iter(idle))
            if now - conn.idle_since < keepalive:
                break
            del idle[conn]
            conn.state = _CLOSED
            self.open -= 1
            self._close_transport(conn)
            self._grant()
        for task, (due, error) in list(self.connecting.items()):
            if now >= due and not task.done() and task not in self.timed_out:
                self.timed_out[task] = error()
                task.cancel()
        for conn in list(self.busy):
            conn.check(now)

    def stats(self) -> PoolStats:
        return PoolStats(open=self.open, idle=len(self.idle), waiting=len(self.waiters))

    def retire(self) -> None:
        """Take no more requests: waiters go on waiting for busy connections of this pool,
        which close instead of idling once the last waiter is served."""
        self.retired = True
        for conn in list(self.idle):
            del self.idle[conn]
            conn.state = _CLOSED
            self.open -= 1
            self._close_transport(conn)

    def close(self) -> None:
        for _, fut in self.waiters:
            if not fut.done():
                fut.set_exception(PoolClosed())
        self.waiters.clear()
        for task in self.connecting:
            task.cancel()
        for conn in list(self.idle) + list(self.busy):
            self._close_transport(conn)

    @property
    def alive(self) -> bool:
        return bool(self.open or self.waiters)


# --------------------------------------------------------------------------- pools


SslFor = Callable[[str], ssl.SSLContext | bool | None]


class UpstreamPools:
    """Pools of persistent upstream connections, one per endpoint origin URL."""

    def __init__(self, limits: PoolLimits, ssl_for: SslFor) -> None:
        self.limits = limits
        self.ssl_for = ssl_for
        self.loop = asyncio.get_running_loop()
        self.closed = False
        self.stale_retries = 0  # a plain counter: exposed by a collector at scrape time
        self._pools: dict[str, _Pool] = {}
        self._retired: list[_Pool] = []  # replaced by a reload, with exchanges in flight
        self._timer: asyncio.TimerHandle | None = None
        self._default_ctx: ssl.SSLContext | None = None
        self._insecure_ctx: ssl.SSLContext | None = None

    async def request(
        self,
        origin: str,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes | AsyncIterator[bytes] | None,
        *,
        deadline: float,
        upgrade: bool = False,
        idle_timeout_s: float | None = None,
        first_byte: bool = False,
    ) -> UpstreamResponse:
        """Send one request to ``origin``; the response once its head is in.

        ``deadline`` (loop time) bounds the wait for a pooled connection, the connect, the
        upload and the head; with ``first_byte``, also the first body byte (the proxy's
        commit window), after which ``read`` raises ``FirstByteTimeout``. Raises an
        ``UpstreamError`` subclass, or what ``body`` raised.
        """
        if self.closed:
            raise PoolClosed()
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pool(origin)
        retried = False
        while True:
            conn = await pool.acquire(deadline, retried)
            try:
                return await conn.exchange(
                    method, target, headers, body, deadline, upgrade, idle_timeout_s, first_byte
                )
            except _NotSent:
                continue  # nothing was sent: not a retry
            except _Stale:
                if retried:
                    raise AbortedBeforeHead() from None
                retried = True
                self.stale_retries += 1

    def _pool(self, origin: str) -> _Pool:
        pool = self._pools[origin] = _Pool(self, origin, self._ssl(origin))
        return pool

    def _ssl(self, origin: str) -> ssl.SSLContext | None:
        if not origin.startswith("https:"):
            return None
        setting = self.ssl_for(origin)
        if isinstance(setting, ssl.SSLContext):
            return setting
        if setting is True:
            if self._default_ctx is None:
                self._default_ctx = ssl.create_default_context()
            return self._default_ctx
        if self._insecure_ctx is None:  # False/None on https: encrypted, not verified
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            self._insecure_ctx = ctx
        return self._insecure_ctx

    def reconfigure(self, limits: PoolLimits, ssl_for: SslFor, keep: Callable[[str], bool]) -> None:
        """New limits and TLS settings (a reload). Pools for which ``keep(origin)`` is false
        (an endpoint that left the config, or whose TLS settings changed), and every pool when
        the limits changed, are retired: their idle connections close now, their busy ones
        when their exchange ends, and a later request to that origin opens a new pool."""
        changed = limits != self.limits
        self.limits = limits
        self.ssl_for = ssl_for
        for origin in list(self._pools):
            if changed or not keep(origin):
                pool = self._pools.pop(origin)
                pool.retire()
                if pool.alive:  # its busy connections still need the sweep's deadlines
                    self._retired.append(pool)

    def stats(self, origin: str) -> PoolStats:
        pool = self._pools.get(origin)
        return pool.stats() if pool is not None else PoolStats(0, 0, 0)

    @property
    def waiting(self) -> int:
        """Requests queued for a connection, over every endpoint: load for the router."""
        return sum(len(p.waiters) for p in self._pools.values())

    def arm(self) -> None:
        """Start the sweep if it is not running."""
        if self._timer is None and not self.closed:
            self._timer = self.loop.call_later(self.limits.sweep_interval_s, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        now = self.loop.time()
        alive = False
        for pool in self._pools.values():
            pool.sweep(now)
            alive = alive or pool.alive
        if self._retired:
            for pool in self._retired:
                pool.sweep(now)
            self._retired = [pool for pool in self._retired if pool.alive]
            alive = alive or bool(self._retired)
        if alive:
            self.arm()

    def close(self) -> None:
        """Close every connection and fail every waiter; the pools take no more requests."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for pool in (*self._pools.values(), *self._retired):
            pool.close()
