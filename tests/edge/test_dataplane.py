"""The raw data plane (h1server -> proxy -> h1client) end to end, through a real gslb worker.

Each test runs a real worker (``tests.harness.stack``: real mmdb, real listener, real pools)
against real upstreams on loopback: the fake regions, or a small raw HTTP/1.1 server started
here (``RawUpstream``) when the test needs to script the upstream's bytes or count its
connections. Clients are raw sockets wherever the bytes matter (pipelining, 100 Continue,
byte-exact targets, smuggling, upgrades), aiohttp elsewhere.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import pytest

from tests.fleet import REGIONS
from tests.harness import FRANKFURT, NEW_YORK, SINGAPORE, Stack, stack
from tests.loopback import eventually

T = 10.0  # an upper bound on any single wait: a hang fails the test instead of blocking it

# --------------------------------------------------------------------------- raw HTTP, both ends


@dataclass
class Seen:
    """One request as a raw upstream received it."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k.lower() == name), None)


async def read_request(reader: asyncio.StreamReader) -> Seen | None:
    """The next request on an upstream connection; None when the peer closed between requests.

    Raises ``asyncio.IncompleteReadError`` (its ``partial`` holds the bytes) when the peer
    closed inside one.
    """
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise
    lines = head[:-4].split(b"\r\n")
    method, target, _version = lines[0].split(b" ")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name, value.strip()))
    seen = Seen(method, target, headers)
    if (seen.header(b"transfer-encoding") or b"").lower() == b"chunked":
        seen.body = await read_chunked(reader)
    elif length := seen.header(b"content-length"):
        seen.body = await reader.readexactly(int(length))
    return seen


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        parts.append((await reader.readexactly(size + 2))[:-2])
    await reader.readuntil(b"\r\n")  # no trailers: the blank line
    return b"".join(parts)


def answer(body: bytes, status: int = 200, extra: bytes = b"") -> bytes:
    """A kept-alive upstream response (no ``Connection: close``)."""
    return b"HTTP/1.1 %d X\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status,
        len(body),
        extra,
        body,
    )


@dataclass
class Reply:
    """A response as a raw client received it."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def json(self) -> dict[str, object]:
        doc = json.loads(self.body)
        assert isinstance(doc, dict)
        return doc


async def read_head(reader: asyncio.StreamReader) -> Reply:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    lines = head[:-4].split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
    return Reply(status, headers)


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    """One whole response: Content-Length, chunked, or delimited by the close."""
    reply = await read_head(reader)
    length = reply.header("content-length")
    if reply.status < 200 or reply.status in (204, 304):
        pass
    elif length is not None:
        reply.body = await reader.readexactly(int(length))
    elif (reply.header("transfer-encoding") or "").lower() == "chunked":
        reply.body = await read_chunked(reader)
    else:
        reply.body = await reader.read()
    return reply


def request(
    method: str,
    target: str,
    ip: str | None = NEW_YORK,
    body: bytes = b"",
    extra: str = "",
    length: int | None = None,
) -> bytes:
    """A raw request; ``extra`` holds further header lines, each ending in CRLF; ``length``
    declares a Content-Length for a body the caller sends itself."""
    lines = f"{method} {target} HTTP/1.1\r\nHost: edge.test\r\n"
    if ip is not None:
        lines += f"X-Forwarded-For: {ip}\r\n"
    if length is not None or body or method in ("POST", "PUT"):
        lines += f"Content-Length: {len(body) if length is None else length}\r\n"
    return (lines + extra + "\r\n").encode("latin-1") + body


async def connect(
    s: Stack, *, rcvbuf: int | None = None, sndbuf: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw client connection to the worker; small socket buffers make backpressure show."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if sndbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", s.worker.port))
    return await asyncio.open_connection(sock=sock, limit=65536)


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0): a client that vanishes without a goodbye."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


Serve = Callable[["RawUpstream", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class RawUpstream:
    """A tiny HTTP/1.1 upstream on loopback whose bytes a test scripts (``serve`` runs once per
    connection) and which counts what reached it."""

    serve: Serve
    rcvbuf: int | None = None  # for every accepted socket (set on the listener)
    accepted: int = 0  # connections, in all
    open: int = 0  # connections now
    max_open: int = 0  # the most at once
    seen: list[Seen] = field(default_factory=list)  # requests the script took in whole
    partial: list[int] = field(default_factory=list)  # body bytes of requests cut short
    ended: list[float] = field(default_factory=list)  # when each connection's script ended
    dropped: int = 0  # kept-alive connections dropped as the next request arrived
    go: asyncio.Event = field(default_factory=asyncio.Event)  # a script may wait for the test
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def __aenter__(self) -> RawUpstream:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        sock.bind(("127.0.0.1", 0))
        self._server = await asyncio.start_server(self._connection, sock=sock)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.accepted += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            await self.serve(self, reader, writer)
        except asyncio.IncompleteReadError as exc:
            self.partial.append(len(exc.partial))
        except ConnectionError:
            pass
        finally:
            self.open -= 1
            self.ended.append(time.monotonic())
            writer.close()
            self._tasks.discard(task)


async def serve_each(
    up: RawUpstream, reader: asyncio.StreamReader, w: asyncio.StreamWriter
) -> None:
    """Answer every request on the connection with ``served <target>``, kept alive."""
    while (req := await read_request(reader)) is not None:
        up.seen.append(req)
        w.write(answer(b"served " + req.target))
        await w.drain()


@asynccontextmanager
async def raw_stack(
    tmp: Path,
    up: RawUpstream,
    *,
    extra: str = "",
    also: tuple[int, ...] = (),
    access_log: str = "off",
) -> AsyncIterator[Stack]:
    """A worker whose us-east endpoint is ``up``; ``also`` adds regions of ``REGIONS`` (fake
    regions) as later candidates."""
    regions = [REGIONS[0], *(REGIONS[i] for i in also)]
    async with stack(tmp, regions=regions, extra=extra, access_log=access_log) as s:
        # Pools are keyed by the endpoint's URL at request time: swapping it routes there.
        s.worker.runtime.fleet.regions[0].endpoints[0].url = up.url
        yield s


# --------------------------------------------------------------------------- 1. pipelining


async def test_pipelined_requests_are_each_routed_and_answered_in_order(tmp_path: Path) -> None:
    upload = b'{"pipelined": true, "n": 2}'
    async with stack(tmp_path) as s:
        r, w = await connect(s)
        # Three requests in one write: the slowest first, so the order is the listener's work.
        w.write(
            request("GET", "/slow-first-byte?delay_ms=150", NEW_YORK)
            + request("POST", "/upload", FRANKFURT, body=upload)
            + request("GET", "/echo?n=3", SINGAPORE)
        )
        async with asyncio.timeout(T):
            replies = [await read_reply(r) for _ in range(3)]
        w.close()
        assert [x.status for x in replies] == [200, 200, 200]
        routed = ["us-east", "eu-central", "ap-southeast"]
        assert [x.header("X-GSLB-Region") for x in replies] == routed
        assert [x.header("X-Fake-Region") for x in replies] == routed  # who really served
        assert replies[0].body == b"first byte after 150 ms from us-east\n"
        assert replies[1].json() == {
            "bytes": len(upload),
            "sha256": hashlib.sha256(upload).hexdigest(),
        }
        echo = replies[2].json()
        assert (echo["region"], echo["path"], echo["query_string"]) == (
            "ap-southeast",
            "/echo",
            "n=3",
        )
        assert len({x.header("X-Request-Id") for x in replies}) == 3
        await eventually(lambda: len(s.recorder.records) == 3)
        assert [(x.path, x.region, x.status) for x in s.recorder.records] == [
            ("/slow-first-byte", "us-east", 200),
            ("/upload", "eu-central", 200),
            ("/echo", "ap-southeast", 200),
        ]


# --------------------------------------------------------------------------- 2. stale connections


async def answer_once_then_drop(
    up: RawUpstream, reader: asyncio.StreamReader, w: asyncio.StreamWriter
) -> None:
    """Answer one request, kept alive; then drop the connection unread when the next request
    arrives: an upstream whose keep-alive timer fired just as gslb reused the connection."""
    req = await read_request(reader)
    if req is None:
        return
    up.seen.append(req)
    w.write(answer(b"served " + req.target))
    await w.drain()
    if await reader.read(1):
        up.dropped += 1
    w.transport.abort()


async def test_a_pooled_connection_the_upstream_dropped_is_retried_once(tmp_path: Path) -> None:
    async with RawUpstream(answer_once_then_drop) as up, raw_stack(tmp_path, up) as s:
        pools = s.worker.pools
        assert pools is not None
        async with s.request("GET", "/first", NEW_YORK) as resp:
            assert (resp.status, await resp.read()) == (200, b"served /first")
        await eventually(lambda: pools.stats(up.url).idle == 1)  # pooled: no close was sent
        assert pools.stale_retries == 0

        async with s.request("GET", "/second", NEW_YORK) as resp:
            assert (resp.status, await resp.read()) == (200, b"served /second")
        assert pools.stale_retries == 1
        assert (up.dropped, up.accepted) == (1, 2)  # the stale one, then a fresh one

        # A POST with a small body gslb holds whole: the same, and its body goes up once.
        await eventually(lambda: pools.stats(up.url).idle == 1)
        async with s.request("POST", "/third", NEW_YORK, data=b"small body") as resp:
            assert (resp.status, await resp.read()) == (200, b"served /third")
        assert pools.stale_retries == 2
        assert (up.dropped, up.accepted) == (2, 3)
        # Each request was taken in exactly once, whatever was dropped on the way.
        assert [(x.method, x.target, x.body) for x in up.seen] == [
            (b"GET", b"/first", b""),
            (b"GET", b"/second", b""),
            (b"POST", b"/third", b"small body"),
        ]
        assert [(x.status, x.attempts, x.retries) for x in s.recorder.records] == [
            (200, 1, ())
        ] * 3  # a stale connection is the pool's business: no failed attempt, no health hit
        assert s.worker.runtime.fleet.regions[0].endpoints[0].consecutive_failures == 0


async def close_when_idle(
    up: RawUpstream, reader: asyncio.StreamReader, w: asyncio.StreamWriter
) -> None:
    """Answer requests, kept alive, but close a connection idle for 50 ms."""
    while True:
        try:
            req = await asyncio.wait_for(read_request(reader), 0.05)
        except TimeoutError:
            return
        if req is None:
            return
        up.seen.append(req)
        w.write(answer(b"served " + req.target))
        await w.drain()


async def test_a_pooled_connection_closed_while_idle_is_not_reused(tmp_path: Path) -> None:
    async with RawUpstream(close_when_idle) as up, raw_stack(tmp_path, up) as s:
        pools = s.worker.pools
        assert pools is not None
        for i in range(3):
            async with s.request("POST", f"/n{i}", NEW_YORK, data=b"body %d" % i) as resp:
                assert (resp.status, await resp.read()) == (200, b"served /n%d" % i)
            await eventually(lambda: up.open == 0)  # the upstream closed it...
            await eventually(lambda: pools.stats(up.url).open == 0)  # ...and gslb noticed
        assert [(x.target, x.body) for x in up.seen] == [
            (b"/n%d" % i, b"body %d" % i) for i in range(3)
        ]
        assert up.accepted == 3 and pools.stale_retries == 0
        assert [x.status for x in s.recorder.records] == [200, 200, 200]


# --------------------------------------------------------------------------- 3. slow bodies


async def send_slowly(
    r: asyncio.StreamReader,
    w: asyncio.StreamWriter,
    head: bytes,
    *,
    total: int,
    piece: int,
    every_s: float,
) -> tuple[Reply, float]:
    """Send ``head``, then the body ``piece`` bytes every ``every_s`` (never past ``total``)
    while waiting for the answer; (the answer, seconds from the head to it)."""

    async def feed() -> None:
        sent = 0
        while sent < total:
            w.write(b"b" * min(piece, total - sent))
            sent += piece
            await w.drain()
            await asyncio.sleep(every_s)

    t0 = time.monotonic()
    w.write(head)
    feeder = asyncio.create_task(feed())
    try:
        reply = await asyncio.wait_for(read_reply(r), T)
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
    return reply, time.monotonic() - t0


@pytest.mark.parametrize("replay", ["buffered", "streamed"])
async def test_a_trickled_body_is_cut_with_a_408(tmp_path: Path, replay: str) -> None:
    extra = "[server]\nmin_upload_rate = 1000\nmin_upload_grace_s = 0.3\n"
    if replay == "streamed":  # every body streams: the upstream has the head and some bytes
        extra += "[proxy]\nreplay_buffer_bytes = 0\n"
    async with RawUpstream(serve_each) as up, raw_stack(tmp_path, up, extra=extra) as s:
        r, w = await connect(s)
        head = b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
        reply, took = await send_slowly(r, w, head, total=1000, piece=5, every_s=0.1)  # 50 B/s
        w.close()
        assert reply.status == 408 and reply.json()["error"] == "slow_request"
        assert reply.header("Connection") == "close"
        # The grace (0.3 s) plus what the bytes bought (< 0.05 s), plus one sweep (0.2 s).
        assert 0.3 <= took < 1.5, took
        await eventually(lambda: bool(s.recorder.records))
        rec = s.recorder.records[-1]
        assert (rec.status, rec.error, rec.path) == (408, "slow_request", "/slow")
        assert up.seen == []  # never a complete request upstream
        if replay == "buffered":
            assert up.accepted == 0  # nothing went up at all
        else:
            await eventually(lambda: len(up.partial) == 1)  # its connection closed mid-body
            assert 0 < up.partial[0] < 1000


async def test_a_buffered_body_must_arrive_within_body_timeout(tmp_path: Path) -> None:
    # Sent at 4000 B/s, four times the minimum rate (it would take 2 s): only the total
    # deadline can cut it.
    extra = "[server]\nbody_timeout_s = 0.5\nmin_upload_rate = 1000\nmin_upload_grace_s = 0.3\n"
    async with RawUpstream(serve_each) as up, raw_stack(tmp_path, up, extra=extra) as s:
        r, w = await connect(s)
        head = b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 8000\r\n\r\n"
        reply, took = await send_slowly(r, w, head, total=8000, piece=200, every_s=0.05)
        w.close()
        assert reply.status == 408 and reply.json()["error"] == "slow_request"
        assert 0.45 <= took < 1.5, took  # 0.5 s plus at most one sweep (0.2 s)
        assert up.accepted == 0
        await eventually(lambda: bool(s.recorder.records))
        assert s.recorder.records[-1].status == 408


async def test_a_fast_upload_over_the_replay_buffer_streams_intact(tmp_path: Path) -> None:
    size = 2 * 1024 * 1024  # over replay_buffer_bytes (1 MiB): streamed, never held whole
    data = bytes(range(256)) * (size // 256)
    async with stack(tmp_path, regions=[REGIONS[0]]) as s:
        async with s.request("POST", "/upload", NEW_YORK, data=data) as resp:
            assert resp.status == 200
            assert await resp.json() == {"bytes": size, "sha256": hashlib.sha256(data).hexdigest()}
        rec = s.recorder.records[-1]
        assert (rec.status, rec.attempts, rec.region) == (200, 1, "us-east")


async def test_a_streamed_upload_is_counted_whole_in_the_record(tmp_path: Path) -> None:
    size = 2 * 1024 * 1024
    async with stack(tmp_path, regions=[REGIONS[0]]) as s:
        async with s.request("POST", "/upload", NEW_YORK, data=b"u" * size) as resp:
            assert resp.status == 200
        assert s.recorder.records[-1].bytes_in == size


# --------------------------------------------------------------------------- 4. backpressure


def pattern(offset: int, size: int) -> bytes:
    """Bytes ``offset..offset+size`` of /download's pattern (00 01 .. ff, repeated)."""
    start = offset % 256
    return (bytes(range(256)) * ((start + size) // 256 + 1))[start : start + size]


async def test_a_download_the_client_does_not_read_holds_the_upstream_back(
    tmp_path: Path,
) -> None:
    total = 64 * 1024 * 1024
    async with stack(tmp_path, regions=[REGIONS[0]]) as s:
        fake = s.fakes["us-east"]
        r, w = await connect(s, rcvbuf=65536)
        w.write(request("GET", f"/download?bytes={total}&chunk=65536"))
        reply = await asyncio.wait_for(read_head(r), T)
        assert reply.status == 200 and reply.header("Content-Length") == str(total)
        digest = hashlib.sha256()
        first = await r.readexactly(65536)
        digest.update(first)
        got = len(first)

        # The client stops reading: the upstream must stop too, far short of the whole body.
        last = -1
        while fake.downloaded != last:
            last = fake.downloaded
            await asyncio.sleep(0.3)
        stalled = fake.downloaded
        assert stalled < total // 4, stalled
        # What is between the upstream and the client (socket buffers both sides, gslb's own
        # buffers) is bounded: not the body.
        assert stalled - got < 16 * 1024 * 1024, stalled - got

        # The client reads again: the rest arrives, whole and in order.
        async with asyncio.timeout(T):
            while got < total:
                data = await r.read(1 << 20)
                assert data, f"connection closed at {got} of {total}"
                digest.update(data)
                got += len(data)
        w.close()
        assert got == total
        await eventually(lambda: fake.downloaded == total)  # counted after each write returns
        assert digest.hexdigest() == hashlib.sha256(pattern(0, total)).hexdigest()
        await eventually(lambda: bool(s.recorder.records))
        assert (s.recorder.records[-1].status, s.recorder.records[-1].bytes_out) == (200, total)


async def read_when_told(
    up: RawUpstream, reader: asyncio.StreamReader, w: asyncio.StreamWriter
) -> None:
    """Take a request's head, then read its body only once the test sets ``go``."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    await up.go.wait()
    digest = hashlib.sha256()
    left = length
    while left:
        data = await reader.read(min(left, 1 << 20))
        if not data:
            raise asyncio.IncompleteReadError(b"", left)
        digest.update(data)
        left -= len(data)
    w.write(answer(b"%d %s" % (length, digest.hexdigest().encode())))
    await w.drain()


async def test_an_upload_to_an_upstream_that_does_not_read_holds_the_client_back(
    tmp_path: Path,
) -> None:
    total = 24 * 1024 * 1024
    block = bytes(range(256)) * 256  # 64 KiB
    extra = "[proxy]\nreplay_buffer_bytes = 65536\n"  # streamed after the first 64 KiB
    async with (
        RawUpstream(read_when_told, rcvbuf=65536) as up,
        raw_stack(tmp_path, up, extra=extra) as s,
    ):
        r, w = await connect(s, sndbuf=65536)
        w.write(request("POST", "/upload", length=total))
        sent = 0
        # Write until the client's own writes stall (the drain waits) for 0.3 s.
        while sent < total:
            w.write(block)
            sent += len(block)
            try:
                await asyncio.wait_for(w.drain(), 0.3)
            except TimeoutError:
                break
        stalled = sent
        assert stalled < total // 2, stalled  # gslb did not take the body in regardless
        held = w.transport.get_write_buffer_size()
        await asyncio.sleep(0.3)
        assert w.transport.get_write_buffer_size() == held > 0  # still held back: none moved

        up.go.set()  # the upstream reads: the client's writes go through, the body intact
        async with asyncio.timeout(T):
            await w.drain()
            while sent < total:
                w.write(block)
                sent += len(block)
                await w.drain()
            reply = await read_reply(r)
        w.close()
        expected = hashlib.sha256(block * (total // len(block))).hexdigest()
        assert (reply.status, reply.body) == (200, b"%d %s" % (total, expected.encode()))


# --------------------------------------------------------------------------- 5. Expect


async def test_expect_100_continue_is_answered_by_gslb(tmp_path: Path) -> None:
    body = b"the body after 100"
    async with stack(tmp_path, regions=[REGIONS[0]]) as s:
        fake = s.fakes["us-east"]
        r, w = await connect(s)
        w.write(request("POST", "/upload", extra="Expect: 100-continue\r\n", length=len(body)))
        # gslb answers 100 before the client sends a byte of the body.
        interim = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), T)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        assert fake.hits == 0  # the upstream has nothing yet
        w.write(body)
        reply = await asyncio.wait_for(read_reply(r), T)
        assert reply.status == 200
        assert reply.json() == {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}
        assert fake.hits == 1
        assert "expect" not in {k.lower() for k, _ in fake.last_headers}

        # An expectation gslb cannot meet: 417, and nothing goes upstream.
        w.write(request("POST", "/upload", extra="Expect: 200-ok\r\n", length=4))
        reply = await asyncio.wait_for(read_reply(r), T)
        w.close()
        assert reply.status == 417 and reply.json()["error"] == "expectation_failed"
        assert fake.hits == 1


# --------------------------------------------------------------------------- 6. a stray 101


async def switch_unasked(
    up: RawUpstream, reader: asyncio.StreamReader, w: asyncio.StreamWriter
) -> None:
    """Answer a plain request with 101 and bytes of another protocol."""
    req = await read_request(reader)
    if req is None:
        return
    up.seen.append(req)
    w.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\nSTRAY")
    await w.drain()
    await reader.read()


@pytest.mark.parametrize("candidates", ["alone", "with-fallback"])
async def test_an_unasked_101_is_never_relayed(tmp_path: Path, candidates: str) -> None:
    also = (2,) if candidates == "with-fallback" else ()  # ca-central, a fake region
    async with RawUpstream(switch_unasked) as up, raw_stack(tmp_path, up, also=also) as s:
        r, w = await connect(s)
        w.write(request("GET", "/v1/models"))
        reply = await asyncio.wait_for(read_reply(r), T)
        w.close()
        assert b"STRAY" not in reply.body and reply.header("Upgrade") is None
        assert len(up.seen) == 1
        rec = s.recorder.records[-1]
        if candidates == "alone":
            assert reply.status == 502 and reply.json()["error"] == "upstream_unavailable"
            assert (rec.status, rec.attempts) == (502, 1)
        else:
            assert reply.status == 200
            assert reply.header("X-GSLB-Region") == reply.header("X-Fake-Region") == "ca-central"
            assert (rec.status, rec.attempts, rec.retries) == (200, 2, ("upstream_aborted",))
        await eventually(lambda: up.open == 0)  # that connection is never pooled


# --------------------------------------------------------------------------- 7. byte-exact targets


async def test_targets_reach_the_upstream_byte_for_byte(tmp_path: Path) -> None:
    targets = [
        b"/a/%2e%2e/b%2Fc?q=%2f&x=..",
        b"/x/./y/../z",
        b"//two//slashes?",
        b"/sp%20ace/%7Euser;p=1?a=1&a=2",
    ]
    log = tmp_path / "access.log"
    async with RawUpstream(serve_each) as up, raw_stack(tmp_path, up, access_log=str(log)) as s:
        r, w = await connect(s)
        for target in targets:
            w.write(request("GET", target.decode()))
            reply = await asyncio.wait_for(read_reply(r), T)
            assert (reply.status, reply.body) == (200, b"served " + target)
        w.close()
        assert [x.target for x in up.seen] == targets
        paths = [x.path for x in s.recorder.records]
    expected = ["/a/%2e%2e/b%2Fc", "/x/./y/../z", "//two//slashes", "/sp%20ace/%7Euser;p=1"]
    assert paths == expected
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [x["path"] for x in lines] == expected
    assert "q=%2f" not in log.read_text() and "a=2" not in log.read_text()


# --------------------------------------------------------------------------- 8. smuggling


SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize(
    ("raw", "status", "code"),
    [
        pytest.param(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
            400,
            "bad_framing",
            id="te-and-cl",
        ),
        pytest.param(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Length: 40\r\n\r\n0\r\n\r\n" + SMUGGLED,
            400,
            "bad_framing",
            id="cl-after-te",
        ),
        pytest.param(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n"
            b"0\r\n\r\n" + SMUGGLED,
            400,
            "bad_framing",
            id="chunked-not-last",
        ),
        pytest.param(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity, chunked\r\n\r\n"
            b"0\r\n\r\n" + SMUGGLED,
            501,
            "unsupported_transfer_encoding",
            id="identity-then-chunked",
        ),
        pytest.param(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
            400,
            "bad_framing",
            id="te-twice",
        ),
        pytest.param(
            b"POST /upload HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\n" + SMUGGLED,
            400,
            "bad_framing",
            id="te-on-http10",
        ),
        pytest.param(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n"
            b"0\r\n\r\n" + SMUGGLED,
            400,
            "bad_header",
            id="te-folded",
        ),
        pytest.param(
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 4, 4\r\n\r\nabcd" + SMUGGLED,
            400,
            "bad_framing",
            id="cl-list",
        ),
    ],
)
async def test_ambiguous_framing_is_refused_and_nothing_reaches_the_upstream(
    tmp_path: Path, raw: bytes, status: int, code: str
) -> None:
    async with RawUpstream(serve_each) as up, raw_stack(tmp_path, up) as s:
        r, w = await connect(s)
        w.write(raw)
        everything = await asyncio.wait_for(r.read(), T)  # the answer, then the close
        w.close()
        reply = await read_reply(_reader(everything))
        assert (reply.status, reply.json()["error"]) == (status, code)
        assert everything.count(b"HTTP/1.1 ") == 1  # one answer: the smuggled one got none
        assert up.accepted == 0  # not even a connection upstream
        async with s.request("GET", "/after", NEW_YORK) as resp:  # still serving
            assert (resp.status, await resp.read()) == (200, b"served /after")
        assert [x.target for x in up.seen] == [b"/after"]


def _reader(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


# --------------------------------------------------------------------------- 9. any Upgrade


GREETING = b"hello from upstream\n"


async def switch_and_echo(
    up: RawUpstream, reader: asyncio.StreamReader, w: asyncio.StreamWriter
) -> None:
    """Grant the Upgrade (a greeting in the same write as the head), then echo in upper case."""
    req = await read_request(reader)
    if req is None:
        return
    up.seen.append(req)
    w.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo-proto\r\nConnection: Upgrade\r\n\r\n"
        + GREETING
    )
    await w.drain()
    while data := await reader.read(65536):
        w.write(data.upper())
        await w.drain()


async def test_any_upgrade_relays_bytes_both_ways_until_idle(tmp_path: Path) -> None:
    extra = "[proxy]\nidle_timeout_s = 0.5\n"
    async with RawUpstream(switch_and_echo) as up, raw_stack(tmp_path, up, extra=extra) as s:
        r, w = await connect(s)
        w.write(request("GET", "/tunnel", extra="Connection: Upgrade\r\nUpgrade: echo-proto\r\n"))
        head = await asyncio.wait_for(read_head(r), T)
        assert head.status == 101
        assert head.header("Upgrade") == "echo-proto"
        assert (head.header("Connection") or "").lower() == "upgrade"
        assert head.header("X-GSLB-Region") == "us-east"
        assert await asyncio.wait_for(r.readexactly(len(GREETING)), T) == GREETING
        sent = 0
        for message in (b"ping", b"abc" * 100_000, b"last"):  # a big one exercises flow control
            w.write(message)
            sent += len(message)
            assert await asyncio.wait_for(r.readexactly(len(message)), T) == message.upper()
        last_byte = time.monotonic()
        # Silence both ways: gslb closes both sides after idle_timeout_s.
        assert await asyncio.wait_for(r.read(), T) == b""
        idle = time.monotonic() - last_byte
        # Coarse by design: between the timeout and twice it, plus a sweep.
        assert 0.45 <= idle < 2.0, idle
        await eventually(lambda: len(up.ended) == 1)
        assert up.ended[0] - last_byte < 2.1
        w.close()
        req = up.seen[0]
        assert req.header(b"upgrade") == b"echo-proto"
        assert (req.header(b"connection") or b"").lower() == b"upgrade"
        await eventually(lambda: bool(s.recorder.records))
        rec = s.recorder.records[-1]
        assert (rec.status, rec.bytes_in, rec.bytes_out) == (101, sent, len(GREETING) + sent)


# --------------------------------------------------------------------------- 10. a full pool


async def serve_slowly(
    up: RawUpstream, reader: asyncio.StreamReader, w: asyncio.StreamWriter
) -> None:
    while (req := await read_request(reader)) is not None:
        up.seen.append(req)
        await asyncio.sleep(0.03)
        w.write(answer(b"served " + req.target))
        await w.drain()


async def test_requests_queue_for_a_full_pool_and_all_succeed(tmp_path: Path) -> None:
    extra = "[proxy]\npool_size_per_endpoint = 2\n"
    async with RawUpstream(serve_slowly) as up, raw_stack(tmp_path, up, extra=extra) as s:

        async def one(i: int) -> tuple[int, bytes]:
            async with s.request("GET", f"/q{i}", NEW_YORK) as resp:
                return resp.status, await resp.read()

        t0 = time.monotonic()
        results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(30))), T)
        took = time.monotonic() - t0
        assert results == [(200, b"served /q%d" % i) for i in range(30)]
        assert up.max_open == 2 and up.accepted == 2  # never more than the pool's two
        assert sorted(x.target for x in up.seen) == sorted(b"/q%d" % i for i in range(30))
        assert took >= 15 * 0.03  # fifteen rounds of two: they really queued
        assert {(x.status, x.attempts) for x in s.recorder.records} == {(200, 1)}


# --------------------------------------------------------------------------- 11. the client leaves


async def hold(up: RawUpstream, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """Take a request and never answer; the script ends when gslb closes the connection."""
    req = await read_request(reader)
    if req is None:
        return
    up.seen.append(req)
    await reader.read()


@pytest.mark.parametrize(
    "leave",
    [
        "reset",
        "close",
    ],
)
async def test_a_client_that_leaves_before_the_head_frees_the_upstream(
    tmp_path: Path, leave: str
) -> None:
    extra = "[server]\nshutdown_grace_s = 1\n[proxy]\nttft_timeout_s = 3\n"
    async with RawUpstream(hold) as up, raw_stack(tmp_path, up, extra=extra) as s:
        _, w = await connect(s)
        w.write(request("GET", "/v1/completions-like"))
        await eventually(lambda: len(up.seen) == 1)
        left = time.monotonic()
        if leave == "reset":
            reset(w)
        else:
            w.close()  # a FIN: what most clients send when they give up
        # The upstream's connection is closed at once, not at ttft_timeout_s (3 s).
        await eventually(lambda: len(up.ended) == 1, timeout=1.0)
        assert up.ended[0] - left < 1.0
        await eventually(lambda: bool(s.recorder.records))
        rec = s.recorder.records[-1]
        assert (rec.status, rec.error) == (499, "client_closed")
        fleet = s.worker.runtime.fleet
        await eventually(lambda: fleet.regions[0].inflight == 0)
        assert fleet.regions[0].endpoints[0].consecutive_failures == 0  # not the upstream's fault
