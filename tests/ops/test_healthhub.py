"""One prober per instance: a ``HealthHub`` probes for its workers and shares over real sockets.

Two real workers (``shared_health=True``) serve their control API on Unix sockets, as under a
supervisor; a real upstream counts the health checks it gets. What is proven: the workers are
not ready before the first share and are after it; each endpoint is probed once per interval
for the whole instance, not once per worker; a failing upstream goes down in every worker, and
back up; the workers' in-flight counts add up in the hub; the fleet's verdict reaches them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from gslb.core.config import Config, parse_toml
from gslb.core.peers import EndpointVerdict
from gslb.edge.server import Worker, bind_reuseport
from gslb.ops.control import LocalControl, control_app
from gslb.ops.healthhub import HealthHub
from tests.fleet import REGIONS, fleet_toml
from tests.loopback import serve_app
from tests.mmdb_fixtures import write_world_mmdb

INTERVAL_S = 0.2


@dataclass
class Upstream:
    """A server whose health answer the test sets, counting the checks it gets."""

    status: int = 200
    checks: int = 0
    url: str = ""
    stamps: list[float] = field(default_factory=list)

    def app(self) -> web.Application:
        async def health(request: web.Request) -> web.Response:
            self.checks += 1
            return web.Response(status=self.status)

        app = web.Application()
        app.router.add_get("/health", health)
        return app


def config(tmp: Path, urls: dict[str, list[str]]) -> Config:
    mmdb = tmp / "world.mmdb"
    write_world_mmdb(str(mmdb))
    health = f"[health]\ninterval_s = {INTERVAL_S}\njitter = 0\ntimeout_s = 0.5\n"
    health += "rise = 1\nfall = 1\n"
    text = fleet_toml(
        urls=urls, regions=[REGIONS[0], REGIONS[2]], extra=health, geoip=f'database = "{mmdb}"\n'
    )
    return parse_toml(text, str(tmp / "gslb.toml"))


async def until(cond: Callable[[], bool], timeout: float = 15.0) -> None:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "condition not reached in time"
        await asyncio.sleep(0.02)


@asynccontextmanager
async def instance(tmp: Path) -> AsyncIterator[tuple[HealthHub, list[Worker], Upstream]]:
    ups = Upstream()
    other = Upstream()
    async with AsyncExitStack() as stack:
        for up in (ups, other):
            runner, up.url = await serve_app(up.app())
            stack.push_async_callback(runner.cleanup)
        cfg = config(tmp, {"us-east": [ups.url], "ca-central": [other.url]})
        sockets = [str(tmp / f"w{i}.sock") for i in range(2)]
        workers = []
        for sock in sockets:
            w = Worker(cfg, shared_health=True, sock=bind_reuseport("127.0.0.1", 0))
            runner = web.AppRunner(control_app(LocalControl(w, None)))
            await runner.setup()
            await web.UnixSite(runner, sock).start()
            stack.push_async_callback(runner.cleanup)
            workers.append(w)
        starting = [asyncio.create_task(w.start()) for w in workers]
        await asyncio.sleep(0.3)
        assert not any(t.done() for t in starting)  # no share yet: not ready, not listening
        assert not any(w.ready for w in workers)
        hub = HealthHub(cfg, sockets, interval_s=0.05)
        await hub.start()
        stack.push_async_callback(hub.stop)
        await asyncio.wait_for(asyncio.gather(*starting), 5)
        for w in workers:
            stack.push_async_callback(w.stop)
        yield hub, workers, ups


async def test_the_instance_probes_once_and_every_worker_follows(tmp_path: Path) -> None:
    async with instance(tmp_path) as (hub, workers, ups):
        assert all(w.ready and w.listener is not None for w in workers)
        url = ups.url
        # Once per interval for the instance: the hub's first round plus one per interval.
        ups.checks = 0
        await asyncio.sleep(10 * INTERVAL_S)
        assert 6 <= ups.checks <= 13, ups.checks  # three probers would make about 30

        ups.status = 503
        await until(lambda: all(not w.runtime.fleet.by_url[url].up for w in workers))
        region = workers[0].runtime.fleet.regions[0]
        assert not region.routable  # its only endpoint is down in every worker
        ups.status = 200
        await until(lambda: all(w.runtime.fleet.by_url[url].up for w in workers))

        # In-flight counts of every worker add up in the hub (what fleet mode publishes).
        for w in workers:
            w.runtime.fleet.acquire(w.runtime.fleet.by_url[url])
        await until(lambda: hub.own_view()[0].get(url) == 2)

        # The fleet's verdict travels to every worker with the next share.
        hub.apply({url: EndpointVerdict(True, 2, 3, 4)})
        await until(lambda: all(w.runtime.fleet.by_url[url].fleet_down for w in workers))
        ep = workers[1].runtime.fleet.by_url[url]
        assert ep.peer_inflight == 4 and not ep.available(time.monotonic())
        hub.apply({})
        await until(lambda: not any(w.runtime.fleet.by_url[url].fleet_down for w in workers))


async def test_a_reload_keeps_the_shared_state_and_a_missing_worker_is_skipped(
    tmp_path: Path,
) -> None:
    async with instance(tmp_path) as (hub, workers, ups):
        url = ups.url
        ups.status = 503
        await until(lambda: all(not w.runtime.fleet.by_url[url].up for w in workers))
        cfg = hub.runtime.cfg
        await hub.reload(cfg)
        for w in workers:
            await w.reload(cfg)
        assert not hub.runtime.fleet.by_url[url].up  # carried over, not optimistic again
        await asyncio.sleep(0.3)
        assert all(not w.runtime.fleet.by_url[url].up for w in workers)
        # A worker that is gone (restarting) is skipped; the others go on being told.
        hub.sockets.append(str(tmp_path / "gone.sock"))
        failed = hub.shares_failed
        ups.status = 200
        await until(lambda: all(w.runtime.fleet.by_url[url].up for w in workers))
        assert hub.shares_failed > failed
