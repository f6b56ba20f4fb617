"""The periodic runner: scripted fakes for its loops, real servers for its HTTP prober.

The fakes (``tests/fakes.py``) drive the real ``PeriodicRunner`` and the real policy without
sockets; the aiohttp ``HttpProber`` is checked against real servers on loopback, TLS
included, and a real worker shows that it reports ready only after the first health round.
"""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gslb.core.config import parse_toml
from gslb.core.fleet import FleetState
from gslb.core.healthevents import DOWN, UP, Outcome
from gslb.core.healthpolicy import HealthPolicy
from gslb.edge.geoip import GeoIP
from gslb.edge.server import Worker
from gslb.ops.periodic import LOAD_JITTER, HttpProber, PeriodicRunner, jittered
from gslb.sim.fakeregion import FakeRegion, FakeRegionOptions
from tests.core.test_health import eps, make_config
from tests.fakes import FakeProber, FakeScraper, RecordingSleep
from tests.fleet import REGIONS, fleet_toml
from tests.loopback import eventually
from tests.mmdb_fixtures import write_world_mmdb
from tests.ops.test_serve import make_ca, make_leaf, start_tls_upstream

FAIL = Outcome.HTTP_5XX

FAST = """
[health]
interval_s = 0.05
timeout_s = 0.5
jitter = 0.2
rise = 2
fall = 3
base_ejection_s = 0.2
max_ejection_s = 1
max_ejection_percent = 100
cordon_s = 100
standby_hold_down_s = 0
"""


def runner_for(
    urls: list[str],
    prober: FakeProber | HttpProber,
    health: str = FAST,
    **kw: object,
) -> tuple[FleetState, HealthPolicy, PeriodicRunner]:
    """One region of ``urls`` (each on its own node), its policy and a runner over them."""
    cfg = make_config({"us-east": [(u, f"n{i}") for i, u in enumerate(urls)]}, health=health)
    fleet = FleetState(cfg)
    policy = HealthPolicy(fleet)
    runner = PeriodicRunner(
        fleet,
        policy,
        prober,
        FakeScraper(),
        rnd=random.Random(7),
        **kw,  # type: ignore[arg-type]
    )
    return fleet, policy, runner


def runner_tasks() -> list[str]:
    names = ("health:", "load:", "learn")
    return [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith(names)]


# --------------------------------------------------------------------------------------------
# the loops, with fakes


@pytest.mark.parametrize(("interval", "jitter"), [(2.0, 0.1), (1.0, 0.5), (3.0, 0.0)])
def test_jittered_stays_within_its_bounds(interval: float, jitter: float) -> None:
    rnd = random.Random(3)
    draws = [jittered(interval, jitter, rnd) for _ in range(2000)]
    assert min(draws) >= interval * (1 - jitter) and max(draws) <= interval * (1 + jitter)
    if jitter:  # and it does spread: both halves of the range are used
        assert min(draws) < interval * (1 - jitter / 2) and max(draws) > interval * (1 + jitter / 2)
    else:
        assert set(draws) == {interval}


async def test_every_loop_waits_a_bounded_jittered_interval() -> None:
    sleep = RecordingSleep(limit=6)
    health = FAST.replace("interval_s = 0.05", "interval_s = 2.0").replace(
        "jitter = 0.2", "jitter = 0.1"
    )
    load = 'load = { kind = "json", interval_s = 1.0 }'
    cfg = make_config(
        {"us-east": eps("10.0.0", ["a", "b", "c"])}, health=health, region_extra={"us-east": load}
    )
    fleet = FleetState(cfg)
    scraper = FakeScraper()
    for ep in fleet.endpoints():
        scraper.pages[ep.url] = '{"running": 1, "waiting": 2}'
    runner = PeriodicRunner(
        fleet, HealthPolicy(fleet), FakeProber(), scraper, rnd=random.Random(1), sleep=sleep
    )
    learned: list[int] = []
    runner.every("learn", 1.0, lambda: learned.append(1))
    runner.start()
    try:
        names = runner_tasks()
        assert sorted(names) == sorted(
            [f"health:{e.url}" for e in fleet.endpoints()]
            + [f"load:{e.url}" for e in fleet.endpoints()]
            + ["health:tick", "learn"]
        )
        await eventually(lambda: sleep.full(names))
    finally:
        await runner.stop()
    slack = 0.05  # what a fake probe takes, at most, on a loaded machine
    spread: set[float] = set()
    for ep in fleet.endpoints():
        first, *rest = sleep.delays[f"health:{ep.url}"]
        assert 0.0 <= first < 2.0  # the first probe waits a random part of the interval
        assert all(2.0 * 0.9 - slack <= d <= 2.0 * 1.1 for d in rest), rest
        spread.update(round(d, 2) for d in rest)
        first, *rest = sleep.delays[f"load:{ep.url}"]
        assert 0.0 <= first < 1.0
        assert all(1.0 * (1 - LOAD_JITTER) - slack <= d <= 1.0 * (1 + LOAD_JITTER) for d in rest)
    assert len(spread) > 5  # jittered: not one fixed period
    firsts = {sleep.delays[f"health:{e.url}"][0] for e in fleet.endpoints()}
    assert len(firsts) == 3  # endpoints start apart, not in lockstep
    tick = sleep.delays["health:tick"]
    assert tick[0] == 0.0 and all(0.25 - slack <= d <= 0.25 for d in tick[1:])
    # One run after each recorded wait: the runs that happened all reached the policy.
    assert sleep.delays["learn"][0] == 1.0 and len(learned) == sleep.limit
    assert all(e.probe_successes == sleep.limit for e in fleet.endpoints())
    assert all(e.reported_load == 3.0 for e in fleet.endpoints())


async def test_a_slow_prober_does_not_hold_up_the_others() -> None:
    prober = FakeProber()
    urls = ["http://slow:1", "http://a:1", "http://b:1"]
    health = FAST.replace("timeout_s = 0.5", "timeout_s = 30")
    fleet, _policy, runner = runner_for(urls, prober, health)
    prober.hang(urls[0])
    runner.start()
    try:
        await eventually(lambda: prober.count(urls[1]) >= 5 and prober.count(urls[2]) >= 5)
        # One probe of the slow endpoint is still in flight, and it started no other.
        assert prober.count(urls[0]) == 1 and prober.in_flight(urls[0]) == 1
        assert fleet.regions[0].endpoints[0].probe_failures == 0  # no answer yet, no verdict
        prober.release()
        await eventually(lambda: prober.count(urls[0]) >= 3)
    finally:
        await runner.stop()


async def test_stop_cancels_every_task_and_probe_in_flight() -> None:
    prober = FakeProber()
    urls = ["http://hangs:1", "http://a:1"]
    health = FAST.replace("timeout_s = 0.5", "timeout_s = 30")
    _fleet, _policy, runner = runner_for(urls, prober, health)
    runner.every("learn", 0.01, lambda: None)
    prober.hang(urls[0])
    runner.start()
    runner.start()  # a second start adds nothing
    assert len(runner_tasks()) == 4  # two probe loops, the tick, the learner
    await eventually(lambda: prober.in_flight(urls[0]) == 1 and prober.count(urls[1]) >= 2)
    await asyncio.wait_for(runner.stop(), 5)
    assert runner_tasks() == []
    assert prober.cancelled == [urls[0]]
    calls = len(prober.calls)
    await asyncio.sleep(0.15)  # three intervals
    assert len(prober.calls) == calls  # stopped means stopped


async def test_a_hanging_probe_fails_by_timeout_and_a_broken_prober_fails_too() -> None:
    prober = FakeProber()
    urls = ["http://hangs:1", "http://broken:1"]
    health = FAST.replace("timeout_s = 0.5", "timeout_s = 0.05")
    fleet, _policy, runner = runner_for(urls, prober, health)
    hangs, broken = fleet.regions[0].endpoints
    prober.hang(hangs.url)
    prober.broken.add(broken.url)
    started = time.monotonic()
    assert await asyncio.wait_for(runner.probe_once(hangs), 5) is False
    assert time.monotonic() - started < 1.0
    assert prober.cancelled == [hangs.url] and hangs.probe_failures == 1
    assert await runner.probe_once(broken) is False
    assert broken.probe_failures == 1


async def test_probe_results_reach_the_policy_with_their_rtt() -> None:
    prober = FakeProber()
    fleet, policy, runner = runner_for(["http://a:1"], prober)
    ep = fleet.regions[0].endpoints[0]
    prober.script(ep.url, (True, 0.010), (True, 0.020), (False, 0.5))
    flips: list[str] = []
    policy.on_event = lambda e: flips.append(e.kind)
    for _ in range(3):
        await runner.probe_once(ep)
    # A failed probe's RTT is never learned: 10 ms, then 10 + 0.2 * (20 - 10).
    assert policy.ewma_probe_rtt_ms(0) == pytest.approx(12.0)
    assert ep.probe_failures == 1 and ep.up and flips == []


async def test_the_first_round_ends_only_when_every_probe_is_in() -> None:
    prober = FakeProber()
    urls = ["http://slow:1", "http://dead:1", "http://fine:1"]
    health = FAST.replace("timeout_s = 0.5", "timeout_s = 30")
    fleet, _policy, runner = runner_for(urls, prober, health)
    slow, dead, fine = fleet.regions[0].endpoints
    prober.hang(slow.url)
    prober.script(dead.url, (False, None))
    first = asyncio.create_task(runner.run_round(initial=True))
    await eventually(lambda: prober.count(fine.url) == 1 and prober.count(dead.url) == 1)
    await asyncio.sleep(0.05)
    assert not first.done()  # the slow endpoint's answer is still out
    assert not dead.up  # a failed first probe is decisive at once
    prober.release()
    await first
    assert slow.up and fine.up and slow.probe_successes == 1
    assert not fine.cordoned(time.monotonic())
    assert fleet.view.routable[0] == 1  # the round ends with a tick


async def test_the_runner_ticks_the_policy() -> None:
    prober = FakeProber()
    fleet, policy, runner = runner_for(["http://a:1", "http://b:1"], prober, tick_interval_s=0.02)
    good = fleet.regions[0].endpoints[0]
    for _ in range(5):
        policy.on_outcome(good, FAIL, runner.clock())
    assert good.ejected(runner.clock())  # for base_ejection_s = 0.2
    runner.start()
    try:
        await eventually(lambda: good.state_name(runner.clock()) == "up")
    finally:
        await runner.stop()


# --------------------------------------------------------------------------------------------
# HttpProber against real servers


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
async def upstream() -> AsyncIterator[FakeRegion]:
    """The one fake upstream; here only its /health matters."""
    up = FakeRegion(FakeRegionOptions(name="us-east"))
    await up.start()
    yield up
    await up.stop()


def probes(fake: FakeRegion) -> int:
    return fake.stats.by_path.get("/health", 0)


async def test_http_checks_mark_down_after_fall_and_up_after_rise(
    upstream: FakeRegion, session: aiohttp.ClientSession
) -> None:
    fleet, policy, runner = runner_for([upstream.url], HttpProber(session))
    ep = fleet.regions[0].endpoints[0]
    # The counts at each flip, recorded when it happens (a loaded machine may probe again
    # before the test looks).
    flips: list[tuple[str, int, int]] = []
    policy.on_event = lambda e: flips.append((e.kind, ep.probe_failures, ep.probe_successes))
    runner.start()
    try:
        await eventually(lambda: ep.probe_successes >= 2)
        assert ep.up
        assert policy.ewma_probe_rtt_ms(0) is not None
        upstream.set_health(503)
        await eventually(lambda: not ep.up)
        upstream.set_health(200)
        await eventually(lambda: ep.up)
    finally:
        await runner.stop()
    hits = probes(upstream)
    await asyncio.sleep(0.15)
    assert probes(upstream) == hits  # stopped means stopped
    # Down exactly at the fall-th failure, up exactly at the rise-th success.
    assert [f for f in flips if f[0] in (DOWN, UP)] == [(DOWN, 3, 0), (UP, 0, 2)]


async def test_a_hanging_health_endpoint_fails_by_timeout(
    upstream: FakeRegion, session: aiohttp.ClientSession
) -> None:
    fleet, _policy, runner = runner_for(
        [upstream.url], HttpProber(session), FAST.replace("timeout_s = 0.5", "timeout_s = 0.05")
    )
    ep = fleet.regions[0].endpoints[0]
    upstream.hold_health()
    started = time.monotonic()
    assert await runner.probe_once(ep) is False
    assert time.monotonic() - started < 1.0
    assert ep.probe_failures == 1
    runner.start()
    try:
        await eventually(lambda: not ep.up)
    finally:
        await runner.stop()


async def test_http_prober_expected_status_and_unreachable(
    upstream: FakeRegion, session: aiohttp.ClientSession
) -> None:
    health = FAST.replace("[health]", "[health]\nexpected_status = [200, 204]")
    fleet, _policy, runner = runner_for(
        [upstream.url, closed_port_url()], HttpProber(session), health
    )
    good, dead = fleet.regions[0].endpoints
    prober = HttpProber(session)
    hc = fleet.regions[0].cfg.health
    upstream.set_health(204)
    ok, rtt = await prober.probe(good, hc)
    assert ok and rtt is not None and 0 < rtt < 1.0
    upstream.set_health(500)
    assert await prober.probe(good, hc) == (False, None)
    assert await prober.probe(dead, hc) == (False, None)
    upstream.set_health(200)
    await runner.run_round(initial=True)
    assert good.up and not dead.up
    assert fleet.view.routable[0] == 1


async def test_http_prober_uses_the_region_tls_setting(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    # A region whose servers use a private CA and want a client certificate: the probe must
    # speak the same TLS as the proxy, or every such endpoint would look dead.
    server_ca = make_ca(tmp_path, "upstream-ca")
    client_ca = make_ca(tmp_path, "client-ca")
    cert, key = make_leaf(tmp_path, "gslb-client", client_ca)
    fake, site, port = await start_tls_upstream(tmp_path, server_ca, require_client=client_ca[0])
    try:
        cfg = make_config({"us-east": [(f"https://127.0.0.1:{port}", "n0")]}, health=FAST)
        fleet = FleetState(cfg)
        ep = fleet.regions[0].endpoints[0]
        hc = fleet.regions[0].cfg.health
        assert await HttpProber(session).probe(ep, hc) == (False, None)  # system CAs: refused
        ctx = ssl.create_default_context(cafile=str(server_ca[0]))
        assert (await HttpProber(session, (ctx,)).probe(ep, hc))[0] is False  # no client cert
        ctx.load_cert_chain(cert, key)
        ok, _rtt = await HttpProber(session, (ctx,)).probe(ep, hc)
        assert ok and fake.stats.by_path["/health"] == 1
    finally:
        await site.cleanup()


# --------------------------------------------------------------------------------------------
# a real worker: ready only after the first round


async def test_a_worker_is_ready_only_after_its_first_health_round(
    tmp_path: Path, upstream: FakeRegion
) -> None:
    mmdb = tmp_path / "world.mmdb"
    write_world_mmdb(str(mmdb))
    health = FAST.replace("timeout_s = 0.5", "timeout_s = 30")
    text = fleet_toml(
        urls={"us-east": [upstream.url]},
        regions=[REGIONS[0]],
        extra=health + '[log]\naccess = "off"\n',
        geoip=f'database = "{mmdb}"\n',
    )
    worker = Worker(parse_toml(text, "test.toml"), geoip=GeoIP(str(mmdb)), health=True)
    upstream.hold_health()
    start = asyncio.create_task(worker.start("127.0.0.1", 0))
    try:
        await eventually(lambda: probes(upstream) == 1)
        await asyncio.sleep(0.1)
        assert not start.done() and not worker.ready and worker.port is None
        upstream.release_health()
        await start
        assert worker.ready and worker.port is not None
        assert worker.runtime.fleet.regions[0].endpoints[0].probe_successes == 1
    finally:
        await worker.stop()
