"""End-to-end harness: real upstream servers, a real mmdb, a real gslb worker, on loopback.

Clients are placed with ``X-Forwarded-For`` from 127.0.0.1, which the test config trusts;
the cities come from ``tests/mmdb_fixtures.py`` (``WORLD``).
"""

from __future__ import annotations

import asyncio
import gzip
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gslb.admin import Admin
from gslb.config import Config, parse_toml
from gslb.control import LocalControl
from gslb.fakeregion import FakeRegion, FakeRegionOptions
from gslb.geoip import GeoIP
from gslb.observe import RequestRecord
from gslb.server import Worker
from tests.fleet import REGIONS, fleet_toml
from tests.loopback import serve_app
from tests.mmdb_fixtures import write_world_mmdb

TORONTO = "1.0.1.10"
MONTREAL = "1.0.2.10"
NEW_YORK = "1.0.3.10"
SAN_FRANCISCO = "1.0.4.10"
FRANKFURT = "1.0.5.10"
PARIS = "1.0.6.10"
SINGAPORE = "1.0.8.10"
SAO_PAULO = "1.0.10.10"
NOWHERE = "1.0.99.1"
GZIPPED = gzip.compress(b"compressed by the upstream " * 50, mtime=0)


class Recorder:
    """An observer that keeps every request record, for assertions."""

    def __init__(self) -> None:
        self.records: list[RequestRecord] = []
        self.denials: list[tuple[str, tuple[str, ...]]] = []
        self.decisions = 0

    def request_done(self, record: RequestRecord) -> None:
        self.records.append(record)

    def decision_made(self, seconds: float) -> None:
        self.decisions += 1

    def denied(self, cause: str, rules: tuple[str, ...]) -> None:
        self.denials.append((cause, rules))


class Upstream:
    """A scriptable upstream for behaviours the fake region does not offer.

    ``mode`` picks the behaviour for ``/`` paths: "ok", "503", "hang", "abort-after-first".
    ``hits`` counts requests; ``sent`` counts body bytes written by ``/pump``.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.mode = "ok"
        self.hits = 0
        self.sent = 0
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.last_headers: list[tuple[str, str]] = []

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/ws", self._ws)
        app.router.add_get("/pump", self._pump)
        app.router.add_get("/gzip", self._gzip)
        app.router.add_route("*", "/{tail:.*}", self._any)
        self.runner, self.url = await serve_app(app, handler_cancellation=True)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _any(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        self.last_headers = list(request.headers.items())
        await request.read()
        if self.mode == "503":
            return web.json_response({"busy": self.name}, status=503, headers={"Retry-After": "7"})
        if self.mode == "hang":
            await asyncio.Event().wait()
        resp = web.StreamResponse(headers={"X-Upstream": self.name})
        await resp.prepare(request)
        await resp.write(b"first;")
        if self.mode == "abort-after-first":
            await asyncio.sleep(0.05)
            assert request.transport is not None
            request.transport.abort()
            return resp
        await resp.write(f"served-by={self.name}".encode())
        await resp.write_eof()
        return resp

    async def _pump(self, request: web.Request) -> web.StreamResponse:
        """Stream up to ``bytes`` bytes as fast as the proxy takes them, counting."""
        total = int(request.query.get("bytes", "0"))
        resp = web.StreamResponse()
        await resp.prepare(request)
        chunk = b"x" * 65536
        while self.sent < total:
            await resp.write(chunk)
            self.sent += len(chunk)
        await resp.write_eof()
        return resp

    async def _gzip(self, request: web.Request) -> web.Response:
        return web.Response(
            body=GZIPPED, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"}
        )

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        self.last_headers = list(request.headers.items())
        ws = web.WebSocketResponse(protocols=("chat",))
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(f"{self.name}:{msg.data}")
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        return ws


@dataclass
class Stack:
    worker: Worker
    cfg: Config
    fakes: dict[str, FakeRegion]
    upstreams: dict[str, Upstream]
    client: aiohttp.ClientSession
    recorder: Recorder
    tmp: Path
    admin_url: str = ""
    config_path: Path | None = None
    control: LocalControl | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.worker.port}"

    def request(
        self, method: str, path: str, ip: str | None = None, **kw: Any
    ) -> Any:  # aiohttp's _RequestContextManager
        headers = dict(kw.pop("headers", {}) or {})
        if ip is not None:
            headers["X-Forwarded-For"] = ip
        return self.client.request(method, self.url + path, headers=headers, **kw)


@asynccontextmanager
async def stack(
    tmp: Path,
    *,
    extra: str = "",
    fake_options: dict[str, FakeRegionOptions] | None = None,
    scripted: tuple[str, ...] = (),
    regions: list[tuple] | None = None,  # type: ignore[type-arg]
    region_extra: dict[str, str] | None = None,
    endpoints: dict[str, int] | None = None,
    health: bool = False,
    seed: int = 1,
    trusted: tuple[str, ...] = ("127.0.0.0/8", "::1/128"),
    admin_token: str | None = None,
    access_log: str = "off",
    geoip: str = "",
) -> AsyncIterator[Stack]:
    """Start every region of ``regions`` (default: the shared test fleet) and a gslb worker.

    Regions named in ``scripted`` get an ``Upstream`` instead of a ``FakeRegion``.
    ``endpoints`` gives a region more than one fake endpoint.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    mmdb = tmp / "world.mmdb"
    write_world_mmdb(str(mmdb))
    fakes: dict[str, FakeRegion] = {}
    upstreams: dict[str, Upstream] = {}
    urls: dict[str, list[str]] = {}
    for spec in regions or REGIONS:
        name = spec[0]
        if name in scripted:
            up = Upstream(name)
            await up.start()
            upstreams[name] = up
            urls[name] = [up.url]
            continue
        urls[name] = []
        for j in range(max(1, (endpoints or {}).get(name, 1))):
            opts = (fake_options or {}).get(name) or FakeRegionOptions(name=name)
            key = name if j == 0 else f"{name}#{j}"
            fake = FakeRegion(opts)
            await fake.start()
            fakes[key] = fake
            urls[name].append(fake.url)
    header = f"""
[log]
access = "{access_log}"
{extra}
"""
    geoip_lines = f'database = "{mmdb}"\ntrusted_proxies = {list(trusted)!r}\n{geoip}'
    # Extra sections (TOML tables) first, then the regions and residency rules.
    text = header + fleet_toml(
        urls=urls, regions=regions, region_extra=region_extra, geoip=geoip_lines
    )
    text = text.replace("'", '"')
    config_path = tmp / "gslb.toml"
    config_path.write_text(text)
    cfg = parse_toml(text, str(config_path))
    recorder = Recorder()
    worker = Worker(
        cfg,
        geoip=GeoIP(str(mmdb)),
        observer=recorder,
        rnd=random.Random(seed),
        health=health,
    )
    await worker.start("127.0.0.1", 0)
    control = LocalControl(worker, str(config_path))
    admin = Admin(control, admin_token)
    admin_runner, admin_url = await serve_app(admin.app())
    client = aiohttp.ClientSession(auto_decompress=False)
    st = Stack(worker, cfg, fakes, upstreams, client, recorder, tmp)
    st.admin_url = admin_url
    st.config_path = config_path
    st.control = control
    try:
        yield st
    finally:
        await client.close()
        await admin_runner.cleanup()
        await worker.stop()
        for fake in fakes.values():
            await fake.stop()
        for up in upstreams.values():
            await up.stop()
