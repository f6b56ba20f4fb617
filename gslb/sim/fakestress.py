"""The fake region's endpoints for exercising a proxy, and its scripted failure mode.

Endpoints (all answer from the region named ``name``):

- ``/echo``: what arrived upstream (method, path, query, raw headers, body length, peer);
- ``/upload`` (size and sha256 of a streamed body) and ``/download?bytes=&chunk=`` (a known
  byte pattern, streamed with a Content-Length, counted in ``download_bytes`` as it is
  written: backpressure tests read how far it got);
- ``/sse?events=&interval_ms=``: paced server-sent events;
- ``/status/{code}``, ``/slow-first-byte?delay_ms=``, ``/headers-then-hang``,
  ``/abort-mid-stream?after=``: answers a proxy must not retry, or cannot finish;
- ``/pump?bytes=``: a body written as fast as the reader takes it, counted in
  ``pump_bytes`` (backpressure tests read how far it got);
- ``/gzip``: ``GZIP_BODY`` with ``Content-Encoding: gzip`` (must pass through untouched);
- ``/ws``: a WebSocket (subprotocol ``chat``) answering text with ``"<name>:<text>"`` and
  binary with the bytes reversed;
- with ``catch_all``, any other path: ``200`` with ``first;`` then ``served-by=<name>``.

The scripted ``mode``, switchable while serving, overrides every data-plane request (the
server decides which paths those are; its probe, scrape and control paths are not):
``"ok"`` serves normally, ``"503"`` answers 503 with ``Retry-After: 7``, ``"hang"`` never
answers, ``"abort-after-first"`` sends headers and one chunk, then resets the connection.
``hits`` and ``last_headers`` record the data-plane requests as they arrive.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
from typing import Final

import aiohttp
from aiohttp import web

from gslb.sim.fakesched import bad_request

__all__ = ["GZIP_BODY", "MODES", "StressEndpoints", "check_mode", "hang"]

MODES: Final = ("ok", "503", "hang", "abort-after-first")
GZIP_BODY: Final = gzip.compress(b"compressed by the upstream " * 50, mtime=0)
# Upper bounds on query parameters: a typo must not make the test server allocate gigabytes
# per chunk or sleep for a day.
_MAX_CHUNK: Final = 16 * 1024 * 1024
_MAX_DELAY_MS: Final = 3_600_000
_PUMP_CHUNK: Final = b"x" * 65536


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


async def hang() -> None:
    """Never return; only cancellation (client hang-up, stop, kill) ends the wait."""
    await asyncio.get_running_loop().create_future()


async def _drain(request: web.Request) -> None:
    # Chunk by chunk, discarded: the body is read (as an upstream would) without a size cap.
    async for _ in request.content.iter_any():
        pass


def _download_chunk(offset: int, size: int) -> bytes:
    """Bytes ``offset..offset+size`` of the infinite pattern 00 01 .. ff 00 01 .."""
    start = offset % 256
    reps = (start + size) // 256 + 1
    return (bytes(range(256)) * reps)[start : start + size]


def _query_int(request: web.Request, name: str, default: int | None, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        if default is None:
            raise bad_request(f"query parameter '{name}' is required")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"query parameter '{name}' must be an integer") from None
    if not lo <= value <= hi:
        raise bad_request(f"query parameter '{name}' must be within {lo}..{hi}")
    return value


async def _abort(
    request: web.Request, resp: web.StreamResponse, grace_s: float
) -> web.StreamResponse:
    """Reset the connection once what was written has had ``grace_s`` to reach the client.

    Without the grace, the reset can discard chunks still in the socket buffers.
    """
    await asyncio.sleep(grace_s)
    if request.transport is not None:
        request.transport.abort()
    await hang()  # the abort cancels this handler (handler_cancellation)
    return resp  # unreachable: hang() only ends by cancellation


class StressEndpoints:
    """The endpoints above for one region, with its scripted mode and request records."""

    def __init__(self, name: str, mode: str = "ok") -> None:
        self.name = name
        self._mode = check_mode(mode)
        self.hits = 0
        self.pump_bytes = 0
        self.download_bytes = 0
        self.last_headers: list[tuple[str, str]] = []

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        self._mode = check_mode(mode)

    def add_routes(self, app: web.Application, *, catch_all: bool) -> None:
        add = app.router.add_route
        add("*", "/echo", self._echo)
        add("POST", "/upload", self._upload)
        add("GET", "/download", self._download)
        add("GET", "/sse", self._sse_events)
        add("GET", r"/status/{code:\d+}", self._status)
        add("GET", "/slow-first-byte", self._slow_first_byte)
        add("GET", "/headers-then-hang", self._headers_then_hang)
        add("GET", "/abort-mid-stream", self._abort_mid_stream)
        add("GET", "/pump", self._pump)
        add("GET", "/gzip", self._gzip)
        add("GET", "/ws", self._ws)
        if catch_all:
            add("*", "/{tail:.*}", self._served_by)  # last: every route above wins over it

    def record(self, request: web.Request) -> None:
        """Count a data-plane request and keep its headers, as it arrives."""
        self.hits += 1
        self.last_headers = list(request.headers.items())

    async def answer_in_mode(self, request: web.Request) -> web.StreamResponse | None:
        """The scripted answer, or None in mode "ok" (the request is served normally)."""
        if self._mode == "ok":
            return None
        await _drain(request)
        if self._mode == "503":
            return web.json_response({"busy": self.name}, status=503, headers={"Retry-After": "7"})
        if self._mode == "hang":
            await hang()
        resp = web.StreamResponse(headers={"X-Upstream": self.name})
        await resp.prepare(request)
        await resp.write(b"first;")
        return await _abort(request, resp, 0.05)

    async def _served_by(self, request: web.Request) -> web.StreamResponse:
        await _drain(request)
        # Two writes: a proxy sees a first chunk before the rest, as with a real stream.
        resp = web.StreamResponse(headers={"X-Upstream": self.name})
        await resp.prepare(request)
        await resp.write(b"first;")
        await resp.write(f"served-by={self.name}".encode())
        await resp.write_eof()
        return resp

    async def _echo(self, request: web.Request) -> web.StreamResponse:
        body_length = 0
        async for chunk in request.content.iter_any():
            body_length += len(chunk)
        headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers]
        return web.json_response(
            {
                "region": self.name,
                "method": request.method,
                "path": request.path,
                "raw_path": request.raw_path,
                "query_string": request.query_string,
                "headers": headers,
                "body_length": body_length,
                "remote": request.remote,
                "http_version": f"{request.version.major}.{request.version.minor}",
            }
        )

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        digest = hashlib.sha256()
        total = 0
        # Chunk by chunk: a 50 MB upload must not be held in memory.
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            total += len(chunk)
        return web.json_response({"bytes": total, "sha256": digest.hexdigest()})

    async def _download(self, request: web.Request) -> web.StreamResponse:
        size = _query_int(request, "bytes", None, 0, 1 << 40)
        chunk = _query_int(request, "chunk", 64 * 1024, 1, _MAX_CHUNK)
        resp = web.StreamResponse()
        resp.content_type = "application/octet-stream"
        resp.content_length = size
        await resp.prepare(request)
        for offset in range(0, size, chunk):
            piece = min(chunk, size - offset)
            await resp.write(_download_chunk(offset, piece))
            self.download_bytes += piece
        await resp.write_eof()
        return resp

    async def _sse_events(self, request: web.Request) -> web.StreamResponse:
        events = _query_int(request, "events", 10, 0, 1_000_000)
        interval = _query_int(request, "interval_ms", 100, 0, _MAX_DELAY_MS) / 1000
        resp = web.StreamResponse(headers={"Cache-Control": "no-cache"})
        resp.content_type = "text/event-stream"
        await resp.prepare(request)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        # Event i leaves at t0 + i*interval: the first at once, then one per interval.
        for i in range(events):
            await asyncio.sleep(max(0.0, t0 + i * interval - loop.time()))
            data = json.dumps({"seq": i, "region": self.name})
            await resp.write(f"id: {i}\nevent: tick\ndata: {data}\n\n".encode())
        await resp.write_eof()
        return resp

    async def _status(self, request: web.Request) -> web.StreamResponse:
        code = int(request.match_info["code"])
        if not 200 <= code <= 599:
            raise bad_request("status code must be within 200..599")
        if code in (204, 304):
            return web.Response(status=code)  # these may not carry a body
        body = {"status": code, "region": self.name}
        return web.json_response(body, status=code)

    async def _slow_first_byte(self, request: web.Request) -> web.StreamResponse:
        delay_ms = _query_int(request, "delay_ms", 1000, 0, _MAX_DELAY_MS)
        resp = web.StreamResponse()
        resp.content_type = "text/plain"
        await resp.prepare(request)  # StreamResponse sends its headers right away
        await asyncio.sleep(delay_ms / 1000)
        await resp.write(f"first byte after {delay_ms} ms from {self.name}\n".encode())
        await resp.write_eof()
        return resp

    async def _headers_then_hang(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "text/plain"
        await resp.prepare(request)
        await resp.write(b"first chunk\n")
        await hang()
        return resp  # unreachable: hang() only ends by cancellation

    async def _abort_mid_stream(self, request: web.Request) -> web.StreamResponse:
        after = _query_int(request, "after", 1, 0, 1_000_000)
        resp = web.StreamResponse()
        resp.content_type = "text/plain"
        await resp.prepare(request)
        for i in range(after):
            await resp.write(f"chunk {i}\n".encode())
        return await _abort(request, resp, 0.01)

    async def _pump(self, request: web.Request) -> web.StreamResponse:
        """Write ``bytes`` bytes as fast as the reader takes them, counting what was written."""
        total = _query_int(request, "bytes", 0, 0, 1 << 40)
        resp = web.StreamResponse()
        await resp.prepare(request)
        written = 0
        while written < total:
            # Whole chunks: a backpressure test only needs to see where the writer stopped.
            await resp.write(_PUMP_CHUNK)
            written += len(_PUMP_CHUNK)
            self.pump_bytes += len(_PUMP_CHUNK)
        await resp.write_eof()
        return resp

    async def _gzip(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=GZIP_BODY, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"}
        )

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=("chat",))
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(f"{self.name}:{msg.data}")
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        return ws
