"""Fleet health under failure: real nats-server, real `gslb serve` edges, real fake regions.

What is proven here (docs/design.md, fleet mode, "One picture of health and load" and
"Failure behaviour"):

- an edge that alone loses the path to a region (its requests black-holed) fails over for
  itself, while the others keep using the region: one edge of three is not a quorum; a region
  every edge sees down is down everywhere;
- peers can take an endpoint down by quorum, never bring one up, never widen residency, and
  their word expires within ``max_age_s`` when they fall silent;
- malformed, oversized and stale messages are dropped and counted, and logged without their
  content;
- NATS away for 30 s changes nothing for clients; an edge restarted meanwhile boots from its
  state_dir; every edge converges once NATS is back, with no pile-up of JetStream consumers;
- under ``--workers N`` an instance probes once, not once per worker, and a respawned worker
  is ready on the instance's shared health state.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import nats
import orjson
import pytest

from gslb.core.peers import MAX_OBS_BYTES, EndpointObs, Observation, RegionObs, encode
from gslb.ops.fleetstore import WATCH_INACTIVE_S
from gslb.sim.fakeregion import FakeRegion, FakeRegionOptions
from tests.harness import NEW_YORK, TORONTO
from tests.mmdb_fixtures import write_world_mmdb
from tests.natsserver import NatsServer, nats_server
from tests.ops.test_fleetserve import (
    TWO,
    Edge,
    document,
    edge_file,
    push,
    ready,
    region_of,
    until,
    via_of,
)

PUBLISH_S = 0.25
MAX_AGE_S = 2.0
# Local to each edge: a fast beat, so that words arrive and expire within a test's patience.
FAST_FLEET = f"publish_interval_s = {PUBLISH_S}\nmax_age_s = {MAX_AGE_S}\n"
# Fleet-wide (the document): a down endpoint is seen within about two seconds, a request sent
# to a black hole before that gives up in two, and a region back up takes traffic within a
# second (the hold-down that keeps a flapping region out is 30 s by default). Probes get a
# whole second: on a busy 2-core machine a shorter time-out takes up regions down.
FAST_DOC = (
    "ttft_timeout_s = 2\n"
    "\n[health]\ninterval_s = 0.2\ntimeout_s = 1\nrise = 1\nfall = 2\n"
    "base_ejection_s = 1\nmax_ejection_s = 1\nstandby_hold_down_s = 1\n"
)
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=10)


@dataclass
class World:
    nats: NatsServer
    fakes: dict[str, FakeRegion]
    urls: dict[str, list[str]]
    mmdb: Path

    def url(self, region: str) -> str:
        return self.urls[region][0]


@asynccontextmanager
async def fleet_world(tmp: Path) -> AsyncIterator[World]:
    """test_fleetserve's world, with the fake regions in reach for fault injection."""
    mmdb = tmp / "world.mmdb"
    write_world_mmdb(str(mmdb))
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(nats_server(tmp))
        fakes: dict[str, FakeRegion] = {}
        for spec in TWO:
            fake = FakeRegion(FakeRegionOptions(name=spec[0]))
            await fake.start()
            stack.push_async_callback(fake.stop)
            fakes[spec[0]] = fake
        yield World(server, fakes, {n: [f.url] for n, f in fakes.items()}, mmdb)


def fast_edge(
    tmp: Path, name: str, w: World, *, workers: int = 1, source_address: str = ""
) -> Edge:
    """``edge_file``'s edge with a fast fleet beat, and optionally a source address."""
    edge = edge_file(tmp, name, w.mmdb, w.nats)
    text = edge.config.read_text()
    if source_address:
        grace = "shutdown_grace_s = 1\n"
        text = text.replace(grace, f'{grace}source_address = "{source_address}"\n', 1)
    edge.config.write_text(text + FAST_FLEET)  # [fleet] is the file's last table
    edge.workers = workers
    return edge


async def start_all(c: aiohttp.ClientSession, edges: list[Edge]) -> None:
    for e in edges:
        e.start()
    for e in edges:
        await until(lambda e=e: ready(c, e), 30, 0.1)  # type: ignore[misc]


def stop_all(edges: list[Edge]) -> None:
    for e in edges:
        e.stop()


def assert_clean_logs(edges: list[Edge]) -> None:
    for e in edges:
        assert "Traceback" not in e.log_text(), e.log_text()[-3000:]


async def status(c: aiohttp.ClientSession, edge: Edge) -> dict[str, Any]:
    async with c.get(edge.admin + "/status") as r:
        assert r.status == 200, await r.text()
        doc: dict[str, Any] = await r.json()
        return doc


def endpoint(doc: Mapping[str, Any], region: str) -> dict[str, Any]:
    """The one endpoint of ``region`` in a ``/status`` document."""
    (r,) = [r for r in doc["regions"] if r["name"] == region]
    (ep,) = r["endpoints"]
    out: dict[str, Any] = ep
    return out


async def state(c: aiohttp.ClientSession, edge: Edge, region: str) -> str:
    return str(endpoint(await status(c, edge), region)["state"])


async def fleet_of(c: aiohttp.ClientSession, edge: Edge) -> dict[str, Any]:
    doc: dict[str, Any] = (await status(c, edge))["fleet"]
    return doc


async def answer(c: aiohttp.ClientSession, edge: Edge, ip: str) -> tuple[int, str | None]:
    """Status and ``X-GSLB-Region`` of one request from ``ip``."""
    async with c.get(edge.url + "/v1/models", headers={"X-Forwarded-For": ip}) as r:
        await r.read()
        return r.status, r.headers.get("X-GSLB-Region")


async def picture(c: aiohttp.ClientSession, edges: list[Edge]) -> dict[str, object]:
    """What each edge says of the regions and the fleet, for a failure message."""
    out: dict[str, object] = {}
    for e in edges:
        try:
            doc = await status(c, e)
        except (aiohttp.ClientError, AssertionError) as exc:
            out[e.name] = repr(exc)
            continue
        fleet = doc.get("fleet", {})
        out[e.name] = {
            "states": {r["name"]: [ep["state"] for ep in r["endpoints"]] for r in doc["regions"]},
            "peers": fleet.get("peers"),
            "fleet": {
                name: [r["reporters"], r["see_up"], r["agree"], r["fleet_down_endpoints"]]
                for name, r in fleet.get("regions", {}).items()
            },
        }
    return out


async def until_seen(
    c: aiohttp.ClientSession,
    edges: list[Edge],
    cond: Callable[[], Awaitable[bool]],
    timeout: float,
    step: float,
) -> float:
    """``until``, with the edges' picture in the failure message."""
    try:
        return await until(cond, timeout, step)
    except AssertionError:
        raise AssertionError(f"not reached in {timeout} s: {await picture(c, edges)}") from None


async def peers_heard(c: aiohttp.ClientSession, edges: list[Edge], n: int) -> bool:
    return all([(await fleet_of(c, e))["peers"] == n for e in edges])


# --------------------------------------------------------------------------------------------
# 1. One edge loses its path to a region


def can_bind(address: str) -> bool:
    with socket.socket() as s:
        try:
            s.bind((address, 0))
        except OSError:
            return False
    return True


@pytest.mark.skipif(
    not can_bind("127.0.0.2"), reason="127.0.0.2 is not a local address here (Linux has 127/8)"
)
async def test_a_black_holed_edge_fails_over_alone_and_a_quorum_is_down_everywhere(
    tmp_path: Path,
) -> None:
    async with fleet_world(tmp_path) as w, aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as c:
        await push(w.nats, document(w.urls, via="fh", extra=FAST_DOC))
        lone = fast_edge(tmp_path, "lone", w, source_address="127.0.0.2")
        edges = [lone, fast_edge(tmp_path, "multi", w, workers=2), fast_edge(tmp_path, "plain", w)]
        others = edges[1:]
        us = w.fakes["us-east"]
        try:
            await start_all(c, edges)
            await until_seen(c, edges, lambda: peers_heard(c, edges, 2), 15, 0.1)
            assert [await region_of(c, e) for e in edges] == ["us-east"] * 3

            # The path from 127.0.0.2 (the lone edge's source_address) to us-east drops packets.
            us.blackholed.add("127.0.0.2")

            async def lone_sees_down() -> bool:
                return await state(c, lone, "us-east") == "down"

            await until_seen(c, edges, lone_sees_down, 10, 0.1)
            # Its probes did leave from 127.0.0.2; the others' from 127.0.0.1 still answer.
            assert us.blackholed_requests > 0
            assert await region_of(c, lone) == "ca-central"

            async def all_disagree() -> bool:
                for e in edges:
                    region = (await fleet_of(c, e))["regions"]["us-east"]
                    if (region["reporters"], region["see_up"], region["agree"]) != (3, 2, False):
                        return False
                return True

            await until_seen(c, edges, all_disagree, 10, 0.1)
            # A few beats more: one of three edges seeing it down is not a quorum, so the others
            # keep it up (not "fleet_down") and keep sending New York to it.
            await asyncio.sleep(4 * PUBLISH_S)
            for e in others:
                assert await state(c, e, "us-east") == "up", await picture(c, edges)
                assert await region_of(c, e) == "us-east", await picture(c, edges)
            for e in edges:
                fleet = await fleet_of(c, e)
                assert len(fleet["edges"]) == 3, fleet["edges"]
                assert fleet["regions"]["us-east"]["fleet_down_endpoints"] == 0, e.name
                assert fleet["regions"]["ca-central"]["agree"] is True, e.name
            assert await region_of(c, lone) == "ca-central"
            async with c.get(lone.url + "/v1/models", headers={"X-Forwarded-For": TORONTO}) as r:
                assert r.status == 200 and r.headers["X-GSLB-Region"] == "ca-central"

            # Now us-east fails its health checks for everyone: every edge marks it down, and
            # each hears a quorum of the others agree.
            us.blackholed.clear()
            us.set_health(503)

            async def all_down() -> bool:
                states = [await state(c, e, "us-east") for e in edges]
                regions = [await region_of(c, e) for e in edges]
                return states == ["down"] * 3 and regions == ["ca-central"] * 3

            await until_seen(c, edges, all_down, 10, 0.1)

            async def all_agree_down() -> bool:
                for e in edges:
                    region = (await fleet_of(c, e))["regions"]["us-east"]
                    if (region["see_up"], region["agree"], region["fleet_down_endpoints"]) != (
                        0,
                        True,
                        1,
                    ):
                        return False
                return True

            await until_seen(c, edges, all_agree_down, 10, 0.1)

            # And back: every edge returns New York to us-east.
            us.set_health(200)

            async def all_back() -> bool:
                return [await region_of(c, e) for e in edges] == ["us-east"] * 3

            await until_seen(c, edges, all_back, 10, 0.1)
        finally:
            stop_all(edges)
        assert_clean_logs(edges)


# --------------------------------------------------------------------------------------------
# 2. Peers take down, never bring up, never widen residency


class FakePeers:
    """Edges that exist only as messages: each beat, every name says what ``regions`` holds."""

    def __init__(self, url: str, names: list[str], revision: int) -> None:
        self.url = url
        self.names = names
        self.revision = revision
        self.regions: dict[str, RegionObs] = {}
        self.sent = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        nc = await nats.connect(self.url)
        try:
            while True:
                for name in self.names:
                    self.sent += 1
                    obs = Observation(
                        name, "fake-site", self.revision, self.sent, time.time(), self.regions
                    )
                    await nc.publish(f"gslb.obs.{name}", encode(obs))
                await nc.flush()
                await asyncio.sleep(PUBLISH_S)
        finally:
            await nc.close()

    def say(self, regions: dict[str, RegionObs]) -> None:
        self.regions = regions
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def fall_silent(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def region_obs(endpoints: dict[str, bool]) -> RegionObs:
    """A peer's word on one region: each endpoint URL up or down."""
    return RegionObs(
        5.0, 20.0, {url: EndpointObs(up, 0 if up else 4, 0) for url, up in endpoints.items()}
    )


async def test_peers_take_an_endpoint_down_by_quorum_but_never_up_nor_widen_residency(
    tmp_path: Path,
) -> None:
    async with fleet_world(tmp_path) as w, aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as c:
        rev = await push(w.nats, document(w.urls, via="fh", extra=FAST_DOC))
        edge = fast_edge(tmp_path, "real", w)
        us_url, ca_url = w.url("us-east"), w.url("ca-central")
        fakes = FakePeers(w.nats.url, ["peer-a", "peer-b"], rev)
        try:
            await start_all(c, [edge])
            assert await answer(c, edge, TORONTO) == (200, "ca-central")

            # Two of three edges say ca-central's endpoint is down; they also claim us-east's
            # endpoint serves ca-central (it does not: routing rules never come from peers)
            # and a region of their own making.
            fakes.say(
                {
                    "ca-central": RegionObs(5.0, 20.0, {
                        ca_url: EndpointObs(False, 4, 0),
                        us_url: EndpointObs(True, 0, 0),
                    }),
                    "us-east": RegionObs(5.0, 20.0, {us_url: EndpointObs(True, 0, 0)}),
                    "xx-evil": RegionObs(1.0, 1.0, {"http://127.0.0.1:9": EndpointObs(True, 0, 0)}),
                }
            )  # fmt: skip

            async def ca_fleet_down() -> bool:
                return await state(c, edge, "ca-central") == "fleet_down"

            await until_seen(c, [edge], ca_fleet_down, 10, 0.05)
            doc = await status(c, edge)
            assert [r["name"] for r in doc["regions"]] == ["us-east", "ca-central"]
            assert endpoint(doc, "ca-central")["up"] is True  # its own probes still say up
            fleet = doc["fleet"]
            assert fleet["peers"] == 2
            assert fleet["regions"]["ca-central"]["fleet_down_endpoints"] == 1
            assert "xx-evil" not in fleet["regions"]

            # Toronto's only lawful region is out: 503, never us-east. New York still gets us-east.
            us_hits = w.fakes["us-east"].hits
            for _ in range(5):
                headers = {"X-Forwarded-For": TORONTO}
                async with c.get(edge.url + "/v1/models", headers=headers) as r:
                    body = await r.json()
                    assert r.status == 503, (r.status, r.headers.get("X-GSLB-Region"))
                    assert body["error"] == "no_eligible_region", body
            assert w.fakes["us-east"].hits == us_hits
            assert await answer(c, edge, NEW_YORK) == (200, "us-east")

            # The peers fall silent: their word expires, and ca-central is back for Toronto.
            await fakes.fall_silent()
            t0 = time.monotonic()

            async def ca_back() -> bool:
                return await answer(c, edge, TORONTO) == (200, "ca-central")

            await until_seen(c, [edge], ca_back, 10, 0.05)
            took = time.monotonic() - t0
            assert took < MAX_AGE_S + 4 * PUBLISH_S + 0.5, took
            assert (await fleet_of(c, edge))["peers"] == 0

            # This edge's own probes see us-east down; both peers say it is up. It stays down.
            w.fakes["us-east"].set_health(503)

            async def us_down() -> bool:
                return await state(c, edge, "us-east") == "down"

            await until_seen(c, [edge], us_down, 10, 0.05)
            fakes.say(
                {
                    "us-east": region_obs({us_url: True}),
                    "ca-central": region_obs({ca_url: True}),
                }
            )
            await until_seen(c, [edge], lambda: peers_heard(c, [edge], 2), 5, 0.05)
            deadline = time.monotonic() + 2 * MAX_AGE_S
            while time.monotonic() < deadline:
                assert await state(c, edge, "us-east") == "down"
                assert await answer(c, edge, NEW_YORK) == (200, "ca-central")
                await asyncio.sleep(0.1)
            fleet = await fleet_of(c, edge)
            assert fleet["peers"] == 2
            assert fleet["regions"]["us-east"]["see_up"] == 2  # heard, and not taken
            assert fleet["regions"]["us-east"]["agree"] is False
        finally:
            await fakes.fall_silent()
            edge.stop()
        assert_clean_logs([edge])


# --------------------------------------------------------------------------------------------
# 3. Bad messages are dropped and counted, and their content stays out of the log


async def test_malformed_oversized_and_stale_messages_are_dropped_and_counted(
    tmp_path: Path,
) -> None:
    async with fleet_world(tmp_path) as w, aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as c:
        await push(w.nats, document(w.urls, via="fh", extra=FAST_DOC))
        edge = fast_edge(tmp_path, "target", w)
        secret = "SECRET-PROMPT-7f3a"  # stands for user data a hostile peer might send
        evil_regions = {"us-east": region_obs({f"http://{secret}.invalid": True})}

        def evil(edge_name: str, at: float) -> bytes:
            return encode(Observation(edge_name, "evil", 1, 1, at, evil_regions))

        oversized = b'{"v": 1, "edge": "evil", "pad": "' + secret.encode()
        oversized += b"x" * (MAX_OBS_BYTES + 1 - len(oversized) - 2) + b'"}'
        assert MAX_OBS_BYTES < len(oversized) < 1024 * 1024  # NATS's default max_payload
        messages = [
            f"{secret} is not JSON".encode(),  # malformed
            b'{"v": 1, "prompt": "' + secret.encode() + b'"}',  # malformed: the wrong shape
            evil(edge.name, time.time()),  # malformed: speaks for another edge
            oversized,
            evil("evil", time.time() - 3600),  # stale: an hour old
            evil("evil", time.time() + 3600),  # stale: from a clock an hour ahead
        ]
        try:
            await start_all(c, [edge])

            async def listening() -> bool:  # it subscribes on its first beat with NATS
                return bool((await fleet_of(c, edge))["published_total"] > 0)

            await until(listening, 10, 0.05)
            nc = await nats.connect(w.nats.url)
            try:
                for data in messages:
                    await nc.publish("gslb.obs.evil", data)
                await nc.flush()
                expected = {"malformed": 3, "oversized": 1, "stale": 2, "expired": 0}

                async def counted() -> bool:
                    return bool((await fleet_of(c, edge))["dropped_total"] == expected)

                await until(counted, 10, 0.05)
                # A well-formed word from a peer is still heard after all that.
                good = Observation("good", "ok", 1, 1, time.time(), {})
                await nc.publish("gslb.obs.good", encode(good))
                await nc.flush()
                await until_seen(c, [edge], lambda: peers_heard(c, [edge], 1), 5, 0.05)
            finally:
                await nc.close()
            fleet = await fleet_of(c, edge)
            assert fleet["dropped_total"] == expected  # each message counted once
            assert fleet["received_total"] == 1
            assert await via_of(c, edge) == "1.1 fh"
            assert await answer(c, edge, TORONTO) == (200, "ca-central")
            async with c.get(edge.admin + "/metrics") as r:
                metrics = await r.text()
            for reason, n in expected.items():
                line = f'gslb_fleet_observations_dropped_total{{reason="{reason}"}} {float(n)}'
                assert line in metrics, (line, [m for m in metrics.splitlines() if "dropped" in m])
        finally:
            edge.stop()
        assert_clean_logs([edge])
        text = edge.log_text()
        assert secret not in text
        # One warning per sending edge and minute, however many bad messages it sends; short.
        warnings = [line for line in text.splitlines() if "dropped a message" in line]
        assert len(warnings) == 1, warnings
        assert "'evil'" in warnings[0] and "not valid JSON" in warnings[0], warnings
        assert len(warnings[0]) < 300, warnings


# --------------------------------------------------------------------------------------------
# 4. NATS away for 30 s


OUTAGE_S = 30.0


class Poller:
    """One edge asked every 0.2 s, from New York (its Via) and from Toronto (its status and
    region: residency holds throughout); every answer kept. ``paused`` while it restarts."""

    def __init__(self, c: aiohttp.ClientSession, edge: Edge) -> None:
        self.c = c
        self.edge = edge
        self.paused = False
        self.answers: list[tuple[str | None, tuple[int, str | None] | str]] = []
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            if not self.paused:
                via = await via_of(self.c, self.edge)
                try:
                    toronto: tuple[int, str | None] | str = await answer(self.c, self.edge, TORONTO)
                except aiohttp.ClientError as exc:
                    toronto = type(exc).__name__
                self.answers.append((via, toronto))
            await asyncio.sleep(0.2)

    async def stop(self) -> None:
        self._task.cancel()
        with suppress(asyncio.CancelledError):
            await self._task


async def consumers(server: NatsServer) -> tuple[int, int]:
    """JetStream's consumers: all of them, and those with a subscriber bound (a live watch)."""
    page = await server.monitor("/jsz?accounts=true&consumers=true")
    bound = sum(
        1
        for account in page.get("account_details", [])
        for stream in account.get("stream_detail", [])
        for consumer in stream.get("consumer_detail") or []
        if consumer.get("push_bound")
    )
    return int(page["consumers"]), bound


# What each edge watches in the bucket: the fleet document and the drains.
WATCHES = 2


async def watches_are(server: NatsServer, n: int) -> bool:
    return (await consumers(server))[1] == n


async def test_nats_away_for_30_s_serving_goes_on_and_every_edge_converges_after(
    tmp_path: Path,
) -> None:
    async with fleet_world(tmp_path) as w, aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as c:
        await push(w.nats, document(w.urls, via="before", extra=FAST_DOC))
        edges = [fast_edge(tmp_path, f"edge{i}", w) for i in range(3)]
        pollers: list[Poller] = []
        try:
            await start_all(c, edges)
            await until_seen(c, edges, lambda: peers_heard(c, edges, 2), 15, 0.1)
            await until(lambda: watches_are(w.nats, WATCHES * len(edges)), 10, 0.1)
            before = await consumers(w.nats)
            assert before == (WATCHES * len(edges),) * 2, before

            await w.nats.kill()
            t_kill = time.monotonic()
            pollers = [Poller(c, e) for e in edges]

            # The others' words expire: each edge is on its own view, which is "up", not "down".
            await until_seen(c, edges, lambda: peers_heard(c, edges, 0), MAX_AGE_S + 5, 0.1)
            for e in edges:
                fleet = await fleet_of(c, e)
                assert fleet["connected"] is False
                assert await state(c, e, "us-east") == "up"

            # An edge restarted in the outage boots from its state_dir and serves.
            restarted = edges[0]
            pollers[0].paused = True
            restarted.stop()
            restarted.start()
            await until(lambda: ready(c, restarted), 30, 0.1)
            assert await via_of(c, restarted) == "1.1 before"
            pollers[0].paused = False

            await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - t_kill)))
            for p in pollers:
                await p.stop()
            for p in pollers:
                assert len(p.answers) >= 30, (p.edge.name, len(p.answers))
                bad = [a for a in p.answers if a != ("1.1 before", (200, "ca-central"))]
                assert not bad, (p.edge.name, bad[:5], len(p.answers))

            await w.nats.start()
            t_back = time.monotonic()
            await push(w.nats, document(w.urls, via="after", extra=FAST_DOC))

            async def all_after() -> bool:
                return [await via_of(c, e) for e in edges] == ["1.1 after"] * 3

            await until_seen(c, edges, all_after, 15, 0.05)
            assert time.monotonic() - t_back < 5, time.monotonic() - t_back
            await until_seen(c, edges, lambda: peers_heard(c, edges, 2), 10, 0.1)

            # Once the server has retired the consumers of the connections it lost (their
            # inactive threshold after the restart): as many as before, one per live watch.
            await asyncio.sleep(max(0.0, WATCH_INACTIVE_S + 2 - (time.monotonic() - t_back)))

            async def as_before() -> bool:
                return await consumers(w.nats) == before

            try:
                await until(as_before, 10, 0.1)
            except AssertionError:
                raise AssertionError((before, await consumers(w.nats))) from None
        finally:
            for p in pollers:
                await p.stop()
            stop_all(edges)
        assert_clean_logs(edges)


async def test_an_edge_holds_one_consumer_per_watch(tmp_path: Path) -> None:
    """However many beats go by: nothing an edge reads now and then leaves a consumer behind
    (nats-py's KeyWatcher.stop() only unsubscribes; the server keeps the consumer for
    WATCH_INACTIVE_S)."""
    async with fleet_world(tmp_path) as w, aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as c:
        await push(w.nats, document(w.urls, via="fh", extra=FAST_DOC))
        edge = fast_edge(tmp_path, "counted", w)
        try:
            await start_all(c, [edge])
            await until(lambda: watches_are(w.nats, WATCHES), 10, 0.1)
            await asyncio.sleep(12 * PUBLISH_S)
            assert await consumers(w.nats) == (WATCHES, WATCHES)
        finally:
            edge.stop()
        assert_clean_logs([edge])


# --------------------------------------------------------------------------------------------
# 5. Probes run once per instance


def children(pid: int) -> dict[int, list[str]]:
    """The live child processes of ``pid``: their pid and argv (Linux /proc)."""
    kids: dict[int, list[str]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, ValueError, IndexError):  # gone meanwhile
            # The command name is in parentheses and may hold anything: the state and the
            # parent's pid are the first fields after its last ")".
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != pid:
                continue
            argv = [a.decode() for a in (stat.parent / "cmdline").read_bytes().split(b"\0") if a]
            if argv:  # a zombie has none
                kids[int(stat.parent.name)] = argv
    return kids


def control_socket(argv: list[str]) -> str:
    return argv[argv.index("--control") + 1]


async def worker_get(sock: str, path: str) -> tuple[int, bytes]:
    """A worker's own control API (its Unix socket), as its supervisor calls it."""
    conn = aiohttp.UnixConnector(path=sock)
    async with aiohttp.ClientSession(connector=conn, timeout=CLIENT_TIMEOUT) as s:
        async with s.get(f"http://worker{path}") as r:
            return r.status, await r.read()


def requests_served(metrics: bytes) -> float:
    total = 0.0
    for line in metrics.decode().splitlines():
        if line.startswith("gslb_requests_total"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_an_instance_probes_once_and_a_respawned_worker_shares_its_health(
    tmp_path: Path,
) -> None:
    extra = FAST_DOC.replace("interval_s = 0.2", "interval_s = 0.5")
    async with fleet_world(tmp_path) as w, aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as c:
        await push(w.nats, document(w.urls, via="fh", extra=extra))
        edge = fast_edge(tmp_path, "three", w, workers=3)
        # A connection per request, so that SO_REUSEPORT may hand each to any worker.
        one_shot = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True), timeout=CLIENT_TIMEOUT
        )
        try:
            await start_all(c, [edge])
            assert edge.proc is not None
            kids = children(edge.proc.pid)
            assert len(kids) == 3, kids

            # 4 s at one probe every 0.5 s (10% jitter): about 8 per region, not 3 x 8.
            probes = {n: f.stats.by_path.get("/health", 0) for n, f in w.fakes.items()}
            await asyncio.sleep(4.0)
            for name, fake in w.fakes.items():
                n = fake.stats.by_path.get("/health", 0) - probes[name]
                assert 5 <= n < 16, (name, n)

            # The instance's shared view says us-east is down (its data plane still answers, so
            # a worker on its own optimistic view would send New York there).
            w.fakes["us-east"].set_health(503)

            async def us_down() -> bool:
                return await state(c, edge, "us-east") == "down"

            await until_seen(c, [edge], us_down, 10, 0.05)
            for _ in range(12):
                assert await answer(one_shot, edge, NEW_YORK) == (200, "ca-central")

            # A worker dies; its supervisor starts another in its place.
            victim, args = sorted(kids.items())[0]
            sock = control_socket(args)
            os.kill(victim, signal.SIGKILL)

            async def respawned() -> bool:
                now = children(edge.proc.pid)  # type: ignore[union-attr]
                new = [p for p, a in now.items() if p not in kids and control_socket(a) == sock]
                if not new:
                    return False
                with suppress(aiohttp.ClientError, OSError):
                    code, body = await worker_get(sock, "/ready")
                    return code == 200 and b"true" in body
                return False

            await until(respawned, 20, 0.1)
            # Ready means on the shared health already: us-east down from its first moment.
            code, body = await worker_get(sock, "/status")
            assert code == 200
            doc = orjson.loads(body)
            assert doc["ready"] is True
            assert endpoint(doc, "us-east")["state"] == "down"
            _, metrics = await worker_get(sock, "/metrics")
            served_before = requests_served(metrics)
            # New connections spread over the workers (SO_REUSEPORT); every one lands in
            # ca-central, and the new worker takes its share.
            for _ in range(40):
                assert await answer(one_shot, edge, NEW_YORK) == (200, "ca-central")
            _, metrics = await worker_get(sock, "/metrics")
            assert requests_served(metrics) > served_before
            assert len(children(edge.proc.pid)) == 3
        finally:
            await one_shot.close()
            edge.stop()
        assert_clean_logs([edge])
