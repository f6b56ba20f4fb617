"""Fleet mode end to end: real nats-server processes, real `gslb serve` edges, real upstreams.

Each edge's own file holds [server], [geoip], [log] and [fleet]; the fleet document comes from
JetStream KV (`gslb.ops.fleetstore`). What is proven here: edges converge on a pushed document,
a document an edge cannot run is reported and the edge stays on the last good one, an edge
boots from its state_dir while NATS is down, and an edge with no document yet is not ready and
answers 503 `no_config` until one arrives.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from gslb.ops.fleetstore import FleetStore
from gslb.sim.fakeregion import FakeRegion, FakeRegionOptions
from tests.fleet import REGIONS, fleet_toml
from tests.harness import NEW_YORK, TORONTO
from tests.mmdb_fixtures import write_world_mmdb
from tests.natsserver import NatsServer, nats_server
from tests.ops.test_serve import ROOT, free_port

TWO = [REGIONS[0], REGIONS[2]]  # us-east and ca-central


def document(urls: dict[str, list[str]], via: str = "gslb", extra: str = "") -> str:
    """A fleet document: regions, residency and [proxy]; never a local section."""
    whole = fleet_toml(urls=urls, regions=TWO, extra=f'[proxy]\nvia = "{via}"\n{extra}')
    return whole.replace('[geoip]\nedge_country = "US"\n\n', "", 1)


@dataclass
class Edge:
    name: str
    config: Path
    port: int
    admin_port: int
    workers: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self) -> None:
        log = self.config.with_suffix(".log").open("ab")
        argv = ["serve", "--config", str(self.config), "--workers", str(self.workers)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gslb", *argv],
            cwd=ROOT,
            stderr=log,
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def log_text(self) -> str:
        return self.config.with_suffix(".log").read_text(errors="replace")


def edge_file(tmp: Path, name: str, mmdb: Path, nats: NatsServer) -> Edge:
    port, admin = free_port(), free_port()
    config = tmp / f"{name}.toml"
    config.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\nadmin_listen = "127.0.0.1:{admin}"\n'
        "shutdown_grace_s = 1\n"
        f'[geoip]\ndatabase = "{mmdb}"\nedge_country = "US"\n'
        '[log]\naccess = "off"\nlevel = "info"\n'
        f'[fleet]\nservers = ["{nats.url}"]\nedge = "{name}"\nstate_dir = "{tmp / name}"\n'
    )
    return Edge(name, config, port, admin, workers=1)


@asynccontextmanager
async def world(tmp: Path) -> AsyncIterator[tuple[NatsServer, dict[str, list[str]], Path]]:
    """A NATS server, two fake regions and a GeoIP database."""
    mmdb = tmp / "world.mmdb"
    write_world_mmdb(str(mmdb))
    async with AsyncExitStack() as stack:
        nats = await stack.enter_async_context(nats_server(tmp))
        urls: dict[str, list[str]] = {}
        for spec in TWO:
            fake = FakeRegion(FakeRegionOptions(name=spec[0]))
            await fake.start()
            stack.push_async_callback(fake.stop)
            urls[spec[0]] = [fake.url]
        yield nats, urls, mmdb


async def push(nats: NatsServer, text: str) -> int:
    async with await FleetStore.connect(nats.url) as store:
        current = await store.get_config()
        return await store.push_config(text, current[0] if current else None)


async def via_of(c: aiohttp.ClientSession, edge: Edge, ip: str = NEW_YORK) -> str | None:
    try:
        async with c.get(edge.url + "/v1/models", headers={"X-Forwarded-For": ip}) as r:
            await r.read()
            return r.headers.get("Via") if r.status == 200 else None
    except aiohttp.ClientError:
        return None


async def region_of(c: aiohttp.ClientSession, edge: Edge) -> str | None:
    async with c.get(edge.url + "/v1/models", headers={"X-Forwarded-For": NEW_YORK}) as r:
        await r.read()
        return r.headers.get("X-GSLB-Region") if r.status == 200 else None


async def until(cond: Callable[[], object], timeout: float, step: float = 0.02) -> float:
    """Poll an async ``cond`` until it is true; the seconds it took."""
    t0 = time.monotonic()
    while not await cond():  # type: ignore[misc]
        assert time.monotonic() - t0 < timeout, "condition not reached in time"
        await asyncio.sleep(step)
    return time.monotonic() - t0


async def ready(c: aiohttp.ClientSession, edge: Edge) -> bool:
    try:
        async with c.get(edge.admin + "/readyz") as r:
            return r.status == 200
    except aiohttp.ClientError:
        return False


async def edges_report(nats: NatsServer) -> dict[str, dict[str, object]]:
    async with await FleetStore.connect(nats.url) as store:
        return {name: dict(rec.doc) for name, rec in (await store.edges()).items()}


async def test_edges_converge_report_refusals_and_boot_from_state(tmp_path: Path) -> None:
    async with world(tmp_path) as (nats, urls, mmdb), aiohttp.ClientSession() as c:
        await push(nats, document(urls, via="fleet-v1"))
        edges = [edge_file(tmp_path, f"edge{i}", mmdb, nats) for i in range(3)]
        edges[2].workers = 2  # a supervisor with two workers follows the document too
        try:
            for e in edges:
                e.start()
            for e in edges:
                await until(lambda e=e: ready(c, e), 30, 0.1)  # type: ignore[misc]
            for e in edges:
                assert await via_of(c, e) == "1.1 fleet-v1", e.log_text()[-2000:]

            # 1. A push reaches every edge within a second.
            rev2 = await push(nats, document(urls, via="fleet-v2"))

            async def all_v2() -> bool:
                vias = [await via_of(c, e) for e in edges]
                return all(v == "1.1 fleet-v2" for v in vias)

            took = await until(all_v2, 10)
            assert took < 1.0, took
            state = json.loads((tmp_path / "edge0" / "fleet.json").read_text())
            assert state["revision"] == rev2  # kept for a boot without NATS

            async def all_report_rev2() -> bool:
                reports = await edges_report(nats)
                return all(reports.get(e.name, {}).get("revision") == rev2 for e in edges)

            await until(all_report_rev2, 5, 0.1)
            reports = await edges_report(nats)
            assert {len(str(r["digest"])) for r in reports.values()} == {64}
            # The reports are a heartbeat (publish_interval_s), not only written on change.
            at = {name: float(r["at"]) for name, r in reports.items()}  # type: ignore[arg-type]
            await asyncio.sleep(1.5)
            later = await edges_report(nats)
            assert all(float(later[n]["at"]) > at[n] for n in at)  # type: ignore[arg-type]

            # A fleet-wide drain (gslb fleet drain region us-east) reaches every edge, and its
            # end too: New York clients go to ca-central meanwhile.
            async with await FleetStore.connect(nats.url) as store:
                await store.set_drain("region", "us-east")

            async def all_in(region: str) -> bool:
                return [await region_of(c, e) for e in edges] == [region] * 3

            await until(lambda: all_in("ca-central"), 10, 0.1)
            async with await FleetStore.connect(nats.url) as store:
                assert await store.clear_drain("region", "us-east")
            await until(lambda: all_in("us-east"), 10, 0.1)

            # 2. A document these edges cannot run: reported, and they stay on the last good.
            broken = document(urls, via="fleet-v3").replace(
                '[[regions.endpoints]]', '[regions.tls]\nca_file = "/nonexistent/ca.pem"\n'
                "\n  [[regions.endpoints]]", 1,
            )  # fmt: skip
            rev3 = await push(nats, broken)

            async def all_refused() -> bool:
                reports = await edges_report(nats)
                return all(
                    str(reports.get(e.name, {}).get("error") or "").startswith(f"r{rev3}:")
                    for e in edges
                )

            await until(all_refused, 10, 0.1)
            reports = await edges_report(nats)
            assert all(reports[e.name]["revision"] == rev2 for e in edges)
            assert [await via_of(c, e) for e in edges] == ["1.1 fleet-v2"] * 3

            # 3. NATS goes away: serving goes on; an edge restarted meanwhile boots from its
            # state_dir and serves the last document it applied.
            await nats.kill()
            assert [await via_of(c, e) for e in edges] == ["1.1 fleet-v2"] * 3
            edges[0].stop()
            edges[0].start()
            await until(lambda: ready(c, edges[0]), 30, 0.1)
            assert await via_of(c, edges[0]) == "1.1 fleet-v2"
            # Residency still holds on the restarted edge: a Canadian client stays in Canada.
            async with c.get(
                edges[0].url + "/v1/models", headers={"X-Forwarded-For": TORONTO}
            ) as r:
                assert r.status == 200 and r.headers["X-GSLB-Region"] == "ca-central"

            # 4. NATS returns: every edge, the restarted one too, converges on the next push.
            await nats.start()
            await push(nats, document(urls, via="fleet-v4"))

            async def all_v4() -> bool:
                return all([await via_of(c, e) == "1.1 fleet-v4" for e in edges])

            await until(all_v4, 15, 0.05)
        finally:
            for e in edges:
                e.stop()
        for e in edges:
            assert "Traceback" not in e.log_text(), e.log_text()[-3000:]


async def test_an_edge_without_a_document_is_not_ready_until_one_arrives(tmp_path: Path) -> None:
    async with world(tmp_path) as (nats, urls, mmdb), aiohttp.ClientSession() as c:
        edge = edge_file(tmp_path, "lonely", mmdb, nats)
        edge.start()
        try:

            async def answering() -> bool:
                try:
                    async with c.get(edge.admin + "/readyz") as r:
                        return r.status == 503
                except aiohttp.ClientError:
                    return False

            await until(answering, 30, 0.1)
            async with c.get(edge.url + "/v1/models", headers={"X-Forwarded-For": NEW_YORK}) as r:
                assert r.status == 503
                assert (await r.json())["error"] == "no_config"
            await push(nats, document(urls, via="first"))
            await until(lambda: ready(c, edge), 30, 0.1)
            assert await via_of(c, edge) == "1.1 first"
        finally:
            edge.stop()
        assert "Traceback" not in edge.log_text(), edge.log_text()[-3000:]
