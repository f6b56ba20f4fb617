"""End-to-end harness: real upstream servers, a real mmdb, a real gslb worker, on loopback.

Clients are placed with ``X-Forwarded-For`` from 127.0.0.1, which the test config trusts;
the cities come from ``tests/mmdb_fixtures.py`` (``WORLD``).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp

from gslb.core.config import Config, parse_toml
from gslb.edge.geoip import GeoIP
from gslb.edge.server import Worker
from gslb.ops.admin import Admin
from gslb.ops.control import LocalControl
from gslb.ops.observe import RequestRecord
from gslb.sim.fakeregion import FakeRegion, FakeRegionOptions
from gslb.sim.fakestress import GZIP_BODY
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
GZIPPED = GZIP_BODY  # what a region's /gzip serves


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


@dataclass
class Stack:
    worker: Worker
    cfg: Config
    fakes: dict[str, FakeRegion]
    # The regions named in ``scripted``, also in ``fakes``: a test sets ``.mode`` and reads
    # ``.hits``, ``.last_headers`` and ``.sent`` (see gslb.sim.fakestress).
    upstreams: dict[str, FakeRegion]
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

    Regions named in ``scripted`` get one endpoint that also answers unknown paths
    (``catch_all``), listed in ``Stack.upstreams`` too. ``endpoints`` gives any other region
    more than one fake endpoint.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    mmdb = tmp / "world.mmdb"
    write_world_mmdb(str(mmdb))
    fakes: dict[str, FakeRegion] = {}
    upstreams: dict[str, FakeRegion] = {}
    urls: dict[str, list[str]] = {}
    for spec in regions or REGIONS:
        name = spec[0]
        urls[name] = []
        count = 1 if name in scripted else max(1, (endpoints or {}).get(name, 1))
        for j in range(count):
            opts = (fake_options or {}).get(name) or FakeRegionOptions(name=name)
            if name in scripted:
                opts = replace(opts, catch_all=True)
            key = name if j == 0 else f"{name}#{j}"
            fake = FakeRegion(opts)
            await fake.start()
            fakes[key] = fake
            urls[name].append(fake.url)
        if name in scripted:
            upstreams[name] = fakes[name]
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
