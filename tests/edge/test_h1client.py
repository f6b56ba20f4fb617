"""The upstream HTTP/1.1 client (gslb.edge.h1client) against real loopback servers.

aiohttp ``web`` servers play well-behaved upstreams; raw asyncio servers play the
misbehaving ones (stale keep-alive, truncated bodies, stray 101, silence). Every wait is
bounded: the client's own deadlines are short, and each test runs under ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import resource
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop
from aiohttp import web

from gslb.core.config import UpstreamTLSConfig
from gslb.core.forward import Failure
from gslb.core.h1client_rules import HeadError, encode_head, may_retry_stale
from gslb.edge.h1client import (
    AbortedBeforeHead,
    BadRequestHead,
    BodyIdleTimeout,
    ConnectError,
    ConnectTimeout,
    FirstByteTimeout,
    HeadTimeout,
    OutOfFiles,
    PoolLimits,
    PoolTimeout,
    TruncatedBody,
    UnexpectedUpgrade,
    UpstreamError,
    UpstreamPools,
    UpstreamResponse,
)
from gslb.edge.runtime import upstream_ssl_context
from tests.loopback import eventually, serve_app
from tests.ops.test_serve import make_ca, make_leaf

FAST = PoolLimits(
    size=8,
    keepalive_timeout_s=30.0,
    connect_timeout_s=1.0,
    idle_timeout_s=5.0,
    sweep_interval_s=0.02,
)


# Both loops for every test. pytest-asyncio now prefers a pytest_asyncio_loop_factories hook,
# which only a conftest can hold; until tests/conftest.py has one, the fixture override.
pytestmark = pytest.mark.filterwarnings(
    'ignore:Overriding the "event_loop_policy" fixture is deprecated'
)


@pytest.fixture(params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Every test on both loops: gslb serves on uvloop, and the default loop must work too."""
    if request.param == "uvloop":
        policy: asyncio.AbstractEventLoopPolicy = uvloop.EventLoopPolicy()
        return policy
    return asyncio.DefaultEventLoopPolicy()


def deadline(seconds: float = 5.0) -> float:
    return asyncio.get_running_loop().time() + seconds


async def fetch(
    pools: UpstreamPools,
    origin: str,
    method: bytes = b"GET",
    target: bytes = b"/",
    body: bytes | AsyncIterator[bytes] | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
    **kw: Any,
) -> tuple[UpstreamResponse, bytes]:
    """One request, its body read to the end (which releases the connection)."""
    resp = await pools.request(
        origin, method, target, headers or [], body, deadline=kw.pop("deadline", deadline()), **kw
    )
    parts = []
    while chunk := await resp.read():
        parts.append(chunk)
    return resp, b"".join(parts)


def plain(_: str) -> bool:
    return False


# --------------------------------------------------------------------------- raw upstream

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class RawUpstream:
    """A raw asyncio server; connection number ``n`` (from 0) runs ``script(r, w, n)``."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.handlers: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in self.handlers:
            task.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = self.connections
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            await self.script(reader, writer, n)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away, or the test is over: end quietly
        finally:
            writer.transport.abort()
            self.handlers.discard(task)


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One request off the wire: (head, decoded body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                return head, body
            body += data[:-2]
    length = 0
    for line in lower.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head, await reader.readexactly(length)


def ok(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%b\r\n%b" % (len(body), extra, body)


@pytest.fixture
async def pools() -> AsyncIterator[UpstreamPools]:
    p = UpstreamPools(FAST, plain)
    try:
        async with asyncio.timeout(30):
            yield p
    finally:
        p.close()


def peer_app(delay: float = 0.0) -> web.Application:
    """Answers with the client's port: one port per upstream connection."""

    async def handle(request: web.Request) -> web.Response:
        if delay:
            await asyncio.sleep(delay)
        body = await request.read()
        peer = request.transport.get_extra_info("peername")[1] if request.transport else 0
        return web.Response(text=f"{peer} {len(body)} {request.path_qs}")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


# --------------------------------------------------------------------------- the pure rules


def test_head_frames_a_held_body_by_length_and_drops_the_callers_framing() -> None:
    head = encode_head(
        b"POST",
        b"/v1/x?q=%2e%2e",
        [(b"Content-Length", b"999"), (b"Transfer-Encoding", b"chunked"), (b"X-A", b"1")],
        b"up:80",
        3,
    )
    assert head.data == (
        b"POST /v1/x?q=%2e%2e HTTP/1.1\r\nX-A: 1\r\nHost: up:80\r\nContent-Length: 3\r\n\r\n"
    )
    assert not head.chunked and not head.close
    streamed = encode_head(b"POST", b"/", [(b"Host", b"h")], b"up:80", None)
    assert streamed.chunked and b"Transfer-Encoding: chunked\r\n" in streamed.data
    assert b"up:80" not in streamed.data  # the caller's Host stands
    declared = encode_head(b"PUT", b"/", [(b"content-length", b"12")], b"h", None)
    assert declared.length == 12 and not declared.chunked
    assert encode_head(b"GET", b"/", [], b"h", 0).data == b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"


@pytest.mark.parametrize(
    "headers",
    [
        [(b"X-A", b"1\r\nX-Injected: 1")],
        [(b"X-A", b"1\n")],
        [(b"X\rA", b"1")],
        [(b"content-length", b"12; drop")],
    ],
)
def test_head_refuses_fields_that_would_split_it(headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(HeadError):
        encode_head(b"POST", b"/", headers, b"h", None)


def test_stale_retry_rule() -> None:
    base = {"since_write_s": 0.001, "window_s": 0.25}
    yes = may_retry_stale(reused=True, response_started=False, written=True, body_held=True, **base)
    assert yes
    assert not may_retry_stale(
        reused=True, response_started=False, written=True, body_held=False, **base
    )  # a streamed body is gone: never twice
    assert not may_retry_stale(
        reused=False, response_started=False, written=True, body_held=True, **base
    )
    assert not may_retry_stale(
        reused=True, response_started=True, written=True, body_held=True, **base
    )
    assert not may_retry_stale(
        reused=True,
        response_started=False,
        written=True,
        body_held=True,
        since_write_s=1.0,
        window_s=0.25,
    )
    assert may_retry_stale(
        reused=True, response_started=False, written=False, body_held=False, **base
    )


def test_each_error_names_its_failure_for_the_forwarding_core() -> None:
    assert ConnectError.failure is Failure.CONNECT_ERROR
    assert ConnectTimeout.failure is Failure.CONNECT_ERROR
    assert OutOfFiles.failure is Failure.OUT_OF_FILES
    # A full pool is gslb's own limit: retried elsewhere, but no health penalty.
    assert PoolTimeout.failure is Failure.POOL_TIMEOUT and HeadTimeout.failure is Failure.TIMEOUT
    assert FirstByteTimeout.failure is Failure.TIMEOUT
    assert AbortedBeforeHead.failure is Failure.ABORTED
    assert UnexpectedUpgrade.failure is Failure.ABORTED


# --------------------------------------------------------------------------- keep-alive, pool


async def test_sequential_requests_reuse_one_connection(pools: UpstreamPools) -> None:
    runner, origin = await serve_app(peer_app())
    try:
        ports = set()
        for i in range(10):
            resp, body = await fetch(pools, origin, target=b"/a/%%2e%%2e/b?i=%d" % i)
            assert resp.status == 200
            port, _, path = body.decode().split(" ")
            assert path == f"/a/%2e%2e/b?i={i}"  # byte-exact target
            ports.add(port)
        assert len(ports) == 1
        stats = pools.stats(origin)
        assert (stats.open, stats.idle, stats.waiting) == (1, 1, 0)
    finally:
        await runner.cleanup()


async def test_a_held_body_goes_out_in_one_write_with_the_head(pools: UpstreamPools) -> None:
    first_reads: list[bytes] = []

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        first_reads.append(await r.read(65536))
        w.write(ok())
        await r.read(1)

    async with RawUpstream(script) as origin:
        body = b"x" * 2000
        _resp, data = await fetch(pools, origin, b"POST", b"/p", body)
        assert data == b"ok"
    head, _, rest = first_reads[0].partition(b"\r\n\r\n")
    assert rest == body and b"Content-Length: 2000" in head


async def test_a_full_pool_queues_requests_in_order(pools: UpstreamPools) -> None:
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.query["i"])
        await asyncio.sleep(0.01)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", handle)
    runner, origin = await serve_app(app)
    one = UpstreamPools(PoolLimits(size=1, sweep_interval_s=0.02), plain)
    try:
        tasks = []
        for i in range(12):
            tasks.append(asyncio.create_task(fetch(one, origin, target=b"/?i=%d" % i)))
            await asyncio.sleep(0)  # each one queues before the next starts
        await eventually(lambda: one.stats(origin).waiting >= 5, timeout=5)
        assert one.waiting == one.stats(origin).waiting  # the router's total
        results = await asyncio.gather(*tasks)
        assert [r.status for r, _ in results] == [200] * 12
        assert seen == [str(i) for i in range(12)]  # first come, first served
        assert one.stats(origin).open == 1 and one.waiting == 0
    finally:
        one.close()
        await runner.cleanup()


async def test_the_queue_wait_is_bounded_by_the_deadline() -> None:
    release = asyncio.Event()

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await read_request(r)
        await release.wait()
        w.write(ok())
        await r.read(1)

    one = UpstreamPools(PoolLimits(size=1, sweep_interval_s=0.02), plain)
    try:
        async with asyncio.timeout(10), RawUpstream(script) as origin:
            first = asyncio.create_task(fetch(one, origin))
            await eventually(lambda: one.stats(origin).open == 1, timeout=5)
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(PoolTimeout):
                await fetch(one, origin, deadline=deadline(0.2))
            assert 0.15 <= loop.time() - start < 1.0
            assert one.waiting == 0
            release.set()
            _resp, body = await first
            assert body == b"ok"
    finally:
        one.close()


async def test_two_thousand_requests_through_a_pool_of_256_all_succeed() -> None:
    runner, origin = await serve_app(peer_app(delay=0.005))
    pools = UpstreamPools(PoolLimits(size=256, sweep_interval_s=0.05), plain)
    try:
        async with asyncio.timeout(60):
            most = 0

            async def one(i: int) -> int:
                nonlocal most
                resp, _body = await fetch(pools, origin, target=b"/s?%d" % i, deadline=deadline(30))
                most = max(most, pools.stats(origin).open)
                return resp.status

            statuses = await asyncio.gather(*(one(i) for i in range(2000)))
        assert statuses == [200] * 2000
        assert most <= 256
        assert pools.stats(origin).open <= 256 and pools.waiting == 0
    finally:
        pools.close()
        await runner.cleanup()


async def test_idle_connections_expire() -> None:
    runner, origin = await serve_app(peer_app())
    pools = UpstreamPools(
        PoolLimits(size=4, keepalive_timeout_s=0.15, sweep_interval_s=0.02), plain
    )
    try:
        async with asyncio.timeout(10):
            _, first = await fetch(pools, origin)
            assert pools.stats(origin).idle == 1
            await eventually(lambda: pools.stats(origin).open == 0, timeout=5)
            _, second = await fetch(pools, origin)
            assert first.split()[0] != second.split()[0]  # a new connection
    finally:
        pools.close()
        await runner.cleanup()


# --------------------------------------------------------------------------- stale connections


def stale_after_first(answered: list[bytes]) -> Script:
    """Answers the first request on a connection; then drops the connection the moment the
    next request arrives, unread, as a server that closed the idle connection does."""

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        _, body = await read_request(r)
        answered.append(body)
        w.write(ok(b"answer %d" % len(answered)))
        await r.read(1)  # the next request: close without reading it (a reset)

    return script


async def test_a_stale_pooled_connection_is_retried_once_on_a_fresh_one(
    pools: UpstreamPools,
) -> None:
    answered: list[bytes] = []
    upstream = RawUpstream(stale_after_first(answered))
    async with upstream as origin:
        _, first = await fetch(pools, origin, b"POST", b"/", b"one")
        _resp, second = await fetch(pools, origin, b"POST", b"/", b"two")
    assert (first, second) == (b"answer 1", b"answer 2")
    assert answered == [b"one", b"two"]  # each request answered once
    assert upstream.connections == 2 and pools.stale_retries == 1


async def test_a_streamed_body_is_never_sent_twice(pools: UpstreamPools) -> None:
    answered: list[bytes] = []
    pulled = 0

    async def stream() -> AsyncIterator[bytes]:
        nonlocal pulled
        for part in (b"str", b"eam"):
            pulled += 1
            yield part

    upstream = RawUpstream(stale_after_first(answered))
    async with upstream as origin:
        await fetch(pools, origin, b"POST", b"/", b"one")
        with pytest.raises(AbortedBeforeHead):
            await fetch(pools, origin, b"POST", b"/", stream())
    assert answered == [b"one"]
    assert pulled <= 2 and upstream.connections == 1  # no second connection, no replay
    assert pools.stale_retries == 0


async def test_a_fresh_connection_that_closes_is_not_retried(pools: UpstreamPools) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await read_request(r)  # then close without an answer

    upstream = RawUpstream(script)
    async with upstream as origin:
        with pytest.raises(AbortedBeforeHead):
            await fetch(pools, origin, b"POST", b"/", b"x")
    assert upstream.connections == 1


# --------------------------------------------------------------------------- framing


async def test_chunked_bodies_are_decoded_with_extensions_and_trailers(
    pools: UpstreamPools,
) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_request(r)
            w.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5;name=value\r\nhello\r\n1\r\n \r\n"
            )
            await w.drain()
            await asyncio.sleep(0.01)
            w.write(b"5;x\r\nworld\r\n0;end=1\r\nX-Trailer: t\r\n\r\n")

    upstream = RawUpstream(script)
    async with upstream as origin:
        for _ in range(3):
            resp, body = await fetch(pools, origin)
            assert body == b"hello world"
            assert (b"X-Trailer", b"t") not in resp.headers
    assert upstream.connections == 1  # exact framing: the connection stays usable


async def test_a_streamed_upload_is_chunked_or_sent_with_its_declared_length(
    pools: UpstreamPools,
) -> None:
    runner, origin = await serve_app(peer_app())

    async def stream() -> AsyncIterator[bytes]:
        for i in range(50):
            yield b"%03d" % i

    try:
        _, body = await fetch(pools, origin, b"POST", b"/u", stream())
        assert body.split()[1] == b"150"
        _, body = await fetch(
            pools, origin, b"PUT", b"/u", stream(), headers=[(b"Content-Length", b"150")]
        )
        assert body.split()[1] == b"150"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n12345\r\n",
    ],
    ids=["short-content-length", "chunked-without-last-chunk"],
)
async def test_a_truncated_body_is_an_error(pools: UpstreamPools, response: bytes) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await read_request(r)
        w.write(response)
        await w.drain()

    async with RawUpstream(script) as origin:
        resp = await pools.request(origin, b"GET", b"/", [], None, deadline=deadline())
        assert await resp.read() == b"12345"  # what came, then the cut
        with pytest.raises(TruncatedBody):
            await resp.read()
        assert pools.stats(origin).open == 0


async def test_a_body_delimited_by_the_close_ends_cleanly(pools: UpstreamPools) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
        await w.drain()
        w.close()

    async with RawUpstream(script) as origin:
        _, body = await fetch(pools, origin)
    assert body == b"until the end"
    assert pools.stats(origin).open == 0


async def test_bytes_past_the_content_length_retire_the_connection(pools: UpstreamPools) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await read_request(r)
        w.write(ok(b"abc") + b"JUNK")
        await r.read(1)

    upstream = RawUpstream(script)
    async with upstream as origin:
        _, first = await fetch(pools, origin)
        _, second = await fetch(pools, origin)
    assert first == second == b"abc"
    assert upstream.connections == 2


async def test_head_204_and_304_carry_no_body(pools: UpstreamPools) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        while True:
            head, _ = await read_request(r)
            if head.startswith(b"HEAD"):
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            elif b"/204" in head:
                w.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            elif b"/304" in head:
                w.write(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n")
            else:
                w.write(ok(b"full"))

    upstream = RawUpstream(script)
    async with upstream as origin:
        for method, target, status in [
            (b"HEAD", b"/", 200),
            (b"GET", b"/", 200),
            (b"GET", b"/204", 204),
            (b"GET", b"/304", 304),
            (b"HEAD", b"/", 200),
            (b"GET", b"/", 200),
        ]:
            resp, body = await fetch(pools, origin, method, target)
            assert resp.status == status
            assert body == (b"full" if method == b"GET" and status == 200 else b"")
    assert upstream.connections == 1  # no body was read into the next response


async def test_connection_close_is_honoured(pools: UpstreamPools) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await read_request(r)
        w.write(ok(b"bye", b"Connection: close\r\n"))
        await r.read(1)  # keeps its end open: the client must not reuse it anyway

    upstream = RawUpstream(script)
    async with upstream as origin:
        await fetch(pools, origin)
        await eventually(lambda: pools.stats(origin).open == 0, timeout=5)
        _, body = await fetch(pools, origin)
    assert body == b"bye" and upstream.connections == 2


async def test_interim_responses_are_skipped(pools: UpstreamPools) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + ok(b"final"))
        await r.read(1)

    async with RawUpstream(script) as origin:
        resp, body = await fetch(pools, origin)
    assert resp.status == 200 and body == b"final"
    assert all(name != b"Link" for name, _ in resp.headers)


# --------------------------------------------------------------------------- upgrade


def switching(tail: bytes) -> Script:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await read_request(r)
        w.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"
            + tail
        )
        while data := await r.read(65536):
            w.write(data)

    return script


async def test_a_101_nobody_asked_for_is_an_error(pools: UpstreamPools) -> None:
    async with RawUpstream(switching(b"")) as origin:
        with pytest.raises(UnexpectedUpgrade):
            await pools.request(origin, b"GET", b"/", [], None, deadline=deadline())
        await eventually(lambda: pools.stats(origin).open == 0, timeout=5)


async def test_an_asked_for_101_hands_over_the_transport(pools: UpstreamPools) -> None:
    class Relay(asyncio.Protocol):
        def __init__(self) -> None:
            self.got = b""

        def data_received(self, data: bytes) -> None:
            self.got += data

    async with RawUpstream(switching(b"early")) as origin:
        resp = await pools.request(
            origin,
            b"GET",
            b"/ws",
            [(b"Connection", b"Upgrade"), (b"Upgrade", b"echo")],
            None,
            deadline=deadline(),
            upgrade=True,
        )
        assert resp.status == 101
        transport, tail = resp.detach()
        assert tail == b"early"
        assert pools.stats(origin).open == 0  # its slot is free
        relay = Relay()
        transport.set_protocol(relay)
        transport.resume_reading()
        transport.write(b"ping")
        await eventually(lambda: relay.got == b"ping", timeout=5)
        transport.close()


# --------------------------------------------------------------------------- timeouts, errors


async def test_no_head_before_the_deadline_is_a_timeout(pools: UpstreamPools) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await read_request(r)
        await r.read(1)

    async with RawUpstream(script) as origin:
        with pytest.raises(HeadTimeout):
            await fetch(pools, origin, deadline=deadline(0.2))
        await eventually(lambda: pools.stats(origin).open == 0, timeout=5)


async def test_silence_inside_a_body_is_an_idle_timeout(pools: UpstreamPools) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await r.read(1)

    async with RawUpstream(script) as origin:
        resp = await pools.request(
            origin, b"GET", b"/", [], None, deadline=deadline(), idle_timeout_s=0.2
        )
        loop = asyncio.get_running_loop()
        assert await resp.read() == b"0123456789"
        start = loop.time()
        with pytest.raises(BodyIdleTimeout):
            await resp.read()
        assert 0.15 <= loop.time() - start < 1.5


async def test_a_refused_connect_is_a_connect_error(pools: UpstreamPools) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(ConnectError) as info:
        await fetch(pools, f"http://127.0.0.1:{port}")
    assert type(info.value) is ConnectError
    assert pools.stats(f"http://127.0.0.1:{port}").open == 0


@contextlib.asynccontextmanager
async def unanswered_port() -> AsyncIterator[int]:
    """A listener that never accepts, its backlog full: a SYN to it gets no answer."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            f = socket.socket()
            fillers.append(f)
            f.setblocking(False)
            f.connect_ex(("127.0.0.1", port))
        await asyncio.sleep(0.05)
        yield port
    finally:
        for f in fillers:
            f.close()
        listener.close()


async def test_a_connect_that_hangs_times_out() -> None:
    pools = UpstreamPools(PoolLimits(connect_timeout_s=0.2, sweep_interval_s=0.02), plain)
    try:
        async with asyncio.timeout(10), unanswered_port() as port:
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(ConnectTimeout):
                await fetch(pools, f"http://127.0.0.1:{port}")
            assert 0.15 <= loop.time() - start < 1.5
            assert pools.stats(f"http://127.0.0.1:{port}").open == 0
    finally:
        pools.close()


async def test_out_of_descriptors_is_its_own_error(pools: UpstreamPools) -> None:
    runner, origin = await serve_app(peer_app())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[int] = []
    try:
        # Every descriptor number below the limit taken: the client's socket() fails.
        top = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (top + 8, hard))
        with contextlib.suppress(OSError):
            while True:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
        with pytest.raises(OutOfFiles):
            await fetch(pools, origin)
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert pools.stats(origin).open == 0
    _, body = await fetch(pools, origin)  # descriptors back: the pool works again
    assert body.endswith(b" /")
    await runner.cleanup()


async def test_a_head_that_would_split_is_refused_before_sending(pools: UpstreamPools) -> None:
    runner, origin = await serve_app(peer_app())
    try:
        with pytest.raises(BadRequestHead):
            await fetch(pools, origin, headers=[(b"X-A", b"1\r\nX-B: 2")])
        _, body = await fetch(pools, origin)  # the pool is intact
        assert body.endswith(b" /")
    finally:
        await runner.cleanup()


# --------------------------------------------------------------------------- TLS


def tls_server_context(
    tmp_path: Path, require_client: bool
) -> tuple[ssl.SSLContext, tuple[Any, ...]]:
    ca = make_ca(tmp_path, "upstream-ca")
    cert, key = make_leaf(tmp_path, "upstream", ca)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if require_client:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(ca[0])
    return ctx, ca


async def test_tls_verifies_the_upstream_and_presents_a_client_certificate(
    tmp_path: Path,
) -> None:
    server_ctx, ca = tls_server_context(tmp_path, require_client=True)
    client_cert, client_key = make_leaf(tmp_path, "gslb-client", ca)
    runner = web.AppRunner(peer_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx).start()
    origin = f"https://127.0.0.1:{runner.addresses[0][1]}"
    mtls = upstream_ssl_context(
        UpstreamTLSConfig(ca_file=str(ca[0]), cert_file=str(client_cert), key_file=str(client_key)),
        "regions[0].tls",
    )
    no_cert = upstream_ssl_context(UpstreamTLSConfig(ca_file=str(ca[0])), "regions[1].tls")
    # verify = false with a client certificate: encrypted, unverified, still presenting it.
    unverified = upstream_ssl_context(
        UpstreamTLSConfig(cert_file=str(client_cert), key_file=str(client_key), verify=False),
        "regions[2].tls",
    )
    good = UpstreamPools(FAST, lambda _: mtls)
    lax = UpstreamPools(FAST, lambda _: unverified)
    anonymous = UpstreamPools(FAST, lambda _: no_cert)
    strangers = UpstreamPools(FAST, lambda _: True)  # the system CAs do not know this one
    try:
        async with asyncio.timeout(20):
            for _ in range(3):
                resp, _body = await fetch(good, origin)
                assert resp.status == 200
            assert good.stats(origin).open == 1
            with pytest.raises(UpstreamError) as refused:
                await fetch(anonymous, origin)
            # TLS 1.3 ends the handshake before the server checks the client: the refusal
            # comes as a close before the head.
            assert refused.value.failure in (Failure.CONNECT_ERROR, Failure.ABORTED)
            with pytest.raises(ConnectError):
                await fetch(strangers, origin)
            resp, _ = await fetch(lax, origin)
            assert resp.status == 200
    finally:
        for p in (good, anonymous, strangers, lax):
            p.close()
        await runner.cleanup()


# --------------------------------------------------------------------------- flow control


async def test_a_slow_reader_pauses_the_upstream_and_memory_stays_bounded() -> None:
    total = 16 * 1024 * 1024
    sent = 0
    limits = PoolLimits(read_high_water=128 * 1024, sweep_interval_s=0.02)

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        nonlocal sent
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        block = b"z" * 65536
        while sent < total:
            w.write(block)
            sent += len(block)
            await w.drain()
        await r.read(1)

    pools = UpstreamPools(limits, plain)
    try:
        async with asyncio.timeout(30), RawUpstream(script) as origin:
            resp = await pools.request(origin, b"GET", b"/", [], None, deadline=deadline())
            got = len(await resp.read())
            await asyncio.sleep(0.3)  # a consumer that lags
            most = resp.buffered
            # Reading paused: the upstream is stuck far short of the whole body, and what
            # gslb holds is the high-water mark plus at most one socket read.
            assert sent < total // 2
            assert most <= limits.read_high_water + 256 * 1024
            while data := await resp.read():
                got += len(data)
                most = max(most, resp.buffered)
            assert got == total and sent == total
            assert most <= limits.read_high_water + 256 * 1024
    finally:
        pools.close()


async def test_a_streamed_upload_waits_for_the_upstream_to_read() -> None:
    release = asyncio.Event()
    produced = 0

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        head = await r.readuntil(b"\r\n\r\n")
        assert b"chunked" in head.lower()
        await release.wait()  # not reading: the client's write buffer fills
        received = 0
        while True:
            size = int((await r.readuntil(b"\r\n")).split(b";")[0], 16)
            await r.readexactly(size + 2)
            if size == 0:
                break
            received += size
        w.write(ok(b"%d" % received))
        await r.read(1)

    async def big() -> AsyncIterator[bytes]:
        nonlocal produced
        block = b"u" * 65536
        for _ in range(256):  # 16 MiB
            produced += len(block)
            yield block

    pools = UpstreamPools(PoolLimits(sweep_interval_s=0.02), plain)
    try:
        async with asyncio.timeout(30), RawUpstream(script) as origin:
            task = asyncio.create_task(fetch(pools, origin, b"POST", b"/", big()))
            await asyncio.sleep(0.3)
            assert produced < 8 * 1024 * 1024  # held back by the write buffer's high water
            release.set()
            _resp, body = await task
            assert body == b"%d" % (256 * 65536)
    finally:
        pools.close()


# --------------------------------------------------------------------------- cancellation


async def test_a_cancelled_request_gives_its_place_and_its_connection_back() -> None:
    release = asyncio.Event()

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_request(r)
            await release.wait()
            w.write(ok())

    one = UpstreamPools(PoolLimits(size=1, sweep_interval_s=0.02), plain)
    try:
        async with asyncio.timeout(10), RawUpstream(script) as origin:
            holder = asyncio.create_task(fetch(one, origin))
            await eventually(lambda: one.stats(origin).open == 1, timeout=5)
            queued = asyncio.create_task(fetch(one, origin))
            await eventually(lambda: one.waiting == 1, timeout=5)
            queued.cancel()  # the caller's client went away while queued
            with pytest.raises(asyncio.CancelledError):
                await queued
            assert one.waiting == 0
            holder.cancel()  # and this one while its head was awaited
            with pytest.raises(asyncio.CancelledError):
                await holder
            await eventually(lambda: one.stats(origin).open == 0, timeout=5)
            release.set()
            _, body = await fetch(one, origin)  # the slot came back
            assert body == b"ok"
    finally:
        one.close()


async def test_an_error_from_the_body_source_propagates_unchanged(
    pools: UpstreamPools, caplog: pytest.LogCaptureFixture
) -> None:
    class ClientGone(Exception):
        pass

    async def failing() -> AsyncIterator[bytes]:
        yield b"part"
        raise ClientGone

    runner, origin = await serve_app(peer_app())
    try:
        with pytest.raises(ClientGone):
            await fetch(pools, origin, b"POST", b"/", failing())
        await eventually(lambda: pools.stats(origin).open == 0, timeout=5)
        gc.collect()
        assert "never retrieved" not in caplog.text
    finally:
        await runner.cleanup()


async def test_an_idle_connection_the_peer_closes_leaves_the_pool(pools: UpstreamPools) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await read_request(r)
        w.write(ok())
        await w.drain()
        await asyncio.sleep(0.05)  # then close it while it idles in the pool

    upstream = RawUpstream(script)
    async with upstream as origin:
        await fetch(pools, origin)
        await eventually(lambda: pools.stats(origin).open == 0, timeout=5)
        _, body = await fetch(pools, origin)
    assert body == b"ok" and upstream.connections == 2
    assert pools.stale_retries == 0  # found closed while idle: no request was risked


async def test_the_callers_connection_close_retires_the_connection(pools: UpstreamPools) -> None:
    runner, origin = await serve_app(peer_app())
    try:
        _, first = await fetch(pools, origin, headers=[(b"Connection", b"close")])
        assert pools.stats(origin).idle == 0
        await eventually(lambda: pools.stats(origin).open == 0, timeout=5)
        _, second = await fetch(pools, origin)
        assert first.split()[0] != second.split()[0]
    finally:
        await runner.cleanup()


async def test_a_reused_connection_that_dies_late_is_not_retried(pools: UpstreamPools) -> None:
    # The upstream read the request and worked on it past the stale window: it may have acted
    # on it, so a close now is its failure, not a stale connection.
    seen: list[bytes] = []

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        _, body = await read_request(r)
        seen.append(body)
        w.write(ok())
        _, body = await read_request(r)
        seen.append(body)
        await asyncio.sleep(FAST.stale_window_s + 0.2)

    upstream = RawUpstream(script)
    async with upstream as origin:
        await fetch(pools, origin, b"POST", b"/", b"one")
        with pytest.raises(AbortedBeforeHead):
            await fetch(pools, origin, b"POST", b"/", b"two")
    assert seen == [b"one", b"two"] and upstream.connections == 1
    assert pools.stale_retries == 0


async def test_a_deadline_before_the_connect_timeout_is_the_requests_timeout() -> None:
    pools = UpstreamPools(PoolLimits(connect_timeout_s=5.0, sweep_interval_s=0.02), plain)
    try:
        async with asyncio.timeout(10), unanswered_port() as port:
            with pytest.raises(HeadTimeout):
                await fetch(pools, f"http://127.0.0.1:{port}", deadline=deadline(0.2))
    finally:
        pools.close()


class _Sink:
    """A relay's client side for ``stream_to``: records writes; ``full`` pauses it."""

    def __init__(self) -> None:
        self.got = bytearray()
        self.full = False
        self.drained: list[Callable[[], None]] = []

    def write(self, data: bytes) -> None:
        self.got += data

    @property
    def write_paused(self) -> bool:
        return self.full

    def on_drain(self, callback: Callable[[], None]) -> None:
        self.drained.append(callback)

    def drain(self) -> None:
        self.full = False
        while self.drained:
            self.drained.pop()()


async def test_stream_to_relays_in_order_and_a_full_sink_pauses_the_upstream() -> None:
    total = 8 * 1024 * 1024
    sent = 0

    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        nonlocal sent
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(total // 65536):
            block = bytes([i % 251]) * 65536
            w.write(b"%x\r\n%b\r\n" % (len(block), block))
            sent += len(block)
            await w.drain()
        w.write(b"0\r\n\r\n")
        await w.drain()
        await r.read(1)

    pools = UpstreamPools(PoolLimits(sweep_interval_s=0.02), plain)
    try:
        async with asyncio.timeout(30), RawUpstream(script) as origin:
            resp = await pools.request(origin, b"GET", b"/", [], None, deadline=deadline())
            sink = _Sink()
            sink.full = True  # the client does not read: the first chunk pauses the upstream
            done = resp.stream_to(sink)
            await asyncio.sleep(0.3)
            assert not done.done() and sink.drained  # waiting for the sink to drain
            assert sent < total // 2  # the upstream is stuck: nothing piles up in gslb
            stuck_at = len(sink.got)
            sink.drain()  # from now on it takes everything
            await done
            assert len(sink.got) == total > stuck_at
            expected = b"".join(bytes([i % 251]) * 65536 for i in range(total // 65536))
            assert bytes(sink.got) == expected
            resp.release()
            assert pools.stats(origin).idle == 1  # the connection went back to the pool
    finally:
        pools.close()


async def test_stream_to_fails_with_the_error_that_broke_the_body(pools: UpstreamPools) -> None:
    async def script(r: asyncio.StreamReader, w: asyncio.StreamWriter, n: int) -> None:
        await read_request(r)
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
        await w.drain()
        await asyncio.sleep(0.05)

    async with RawUpstream(script) as origin:
        resp = await pools.request(origin, b"GET", b"/", [], None, deadline=deadline())
        sink = _Sink()
        with pytest.raises(TruncatedBody):
            await asyncio.wait_for(resp.stream_to(sink), 5)
        assert bytes(sink.got) == b"12345"
        resp.release()
        await eventually(lambda: pools.stats(origin).open == 0)  # never back to the pool
