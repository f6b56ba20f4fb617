"""Fleet health over a real nats-server: three edges' ``FleetPeers`` publish, hear and combine.

Each edge is a real runtime (the health policy and live state a worker runs) behind a small
vantage, on its own NATS connection. The beat (``tick`` and a publish) is driven by the test,
with an injected clock for expiry, so each step is deterministic. What is proven: one edge's
"down" is not a quorum and the others keep the endpoint; two edges' is, and the third takes
it out; the verdict never brings back what an edge sees down; peers' in-flight counts add to
the load; silence lets the verdict expire; bad, oversized and stale messages are dropped and
counted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from gslb.core.config import FleetConfig, parse_toml
from gslb.core.peers import (
    MAX_OBS_BYTES,
    EndpointObs,
    EndpointVerdict,
    Observation,
    RegionObs,
    encode,
)
from gslb.edge.runtime import Runtime, build_runtime
from gslb.ops.fleetpeers import FleetPeers, own_observation
from gslb.ops.fleetstore import FleetStore
from tests.fleet import REGIONS, fleet_toml
from tests.natsserver import NatsServer, nats_server

US, CA = "http://10.0.0.1:8000", "http://10.0.1.1:8000"
MAX_AGE_S = 5.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class BareVantage:
    """A lone worker's view, without the worker: its runtime and its in-flight counts."""

    runtime: Runtime
    clock: Clock
    inflight: dict[str, int]

    def own_view(self) -> tuple[dict[str, int], dict[str, float]]:
        return dict(self.inflight), {"us-east": 42.0}

    def apply(self, verdicts: Mapping[str, EndpointVerdict]) -> None:
        self.runtime.health.on_fleet(verdicts, self.clock())


@dataclass
class Edge:
    peers: FleetPeers
    store: FleetStore
    vantage: BareVantage

    async def beat(self) -> None:
        data = self.peers.tick()
        assert data is not None
        assert await self.store.publish(self.peers.subject, data)

    def ep(self, url: str):  # type: ignore[no-untyped-def]
        return self.vantage.runtime.fleet.by_url[url]

    def see(self, url: str, up: bool) -> None:
        ep = self.ep(url)
        health = self.vantage.runtime.cfg.health
        for _ in range(max(health.fall, health.rise)):
            self.vantage.runtime.health.on_probe(ep, up, 0.01 if up else None, self.clock.now)

    @property
    def clock(self) -> Clock:
        return self.vantage.clock


def fleet_cfg(edge: str, nats: NatsServer) -> FleetConfig:
    return FleetConfig(
        servers=(nats.url,), edge=edge, site=edge, state_dir="/nonexistent", max_age_s=MAX_AGE_S
    )


@asynccontextmanager
async def fleet(tmp: Path, names: list[str]) -> AsyncIterator[tuple[NatsServer, list[Edge]]]:
    cfg = parse_toml(fleet_toml(regions=[REGIONS[0], REGIONS[2]]), "fleet.toml")
    async with AsyncExitStack() as stack:
        nats = await stack.enter_async_context(nats_server(tmp))
        edges = []
        for name in names:
            clock = Clock()
            vantage = BareVantage(build_runtime(cfg), clock, {})
            peers = FleetPeers(
                fleet_cfg(name, nats), vantage, lambda: 7, clock=clock, wall=time.time
            )
            store = await FleetStore.connect(nats.url, name=name)
            stack.push_async_callback(store.close)
            await store.subscribe(peers.subject_all, peers.on_message)
            edges.append(Edge(peers, store, vantage))
        yield nats, edges


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "condition not reached in time"
        await asyncio.sleep(0.01)


def heard_all(edges: list[Edge], seqs: dict[str, int]) -> bool:
    """Each edge holds every other edge's observation number ``seqs[edge]``."""
    for e in edges:
        fresh = {o.edge: o.seq for o in e.peers.table.fresh()}
        if fresh != {n: s for n, s in seqs.items() if n != e.peers.fleet.edge}:
            return False
    return True


async def round_(edges: list[Edge]) -> None:
    """Every edge publishes once; each hears every other's (a subscription is in place when
    ``subscribe`` returns: nothing is lost); then each combines."""
    for e in edges:
        await e.beat()
    seqs = {e.peers.fleet.edge: e.peers.seq for e in edges}
    await until(lambda: heard_all(edges, seqs))
    for e in edges:  # combine what was heard
        e.peers.tick()


async def test_a_quorum_takes_an_endpoint_out_one_edge_alone_does_not(tmp_path: Path) -> None:
    async with fleet(tmp_path, ["a", "b", "c"]) as (_, (a, b, c)):
        await round_([a, b, c])
        assert all(not e.ep(US).fleet_down for e in (a, b, c))
        assert a.peers.status()["peers"] == 2

        # a alone loses us-east: a fails over by its own view, b and c keep it.
        a.see(US, False)
        await round_([a, b, c])
        assert not a.ep(US).available(a.clock.now)
        for e in (b, c):
            assert not e.ep(US).fleet_down and e.ep(US).available(e.clock.now)
            v = e.peers.verdicts[US]
            assert (v.down_votes, v.reporters) == (1, 3)
        region = b.peers.status()["regions"]["us-east"]
        assert region == {
            "reporters": 3,
            "see_up": 2,
            "agree": False,
            "fleet_down_endpoints": 0,
            "peer_inflight": 0,
        }

        # c loses it too: two of three is a majority, and b follows the quorum.
        c.see(US, False)
        await round_([a, b, c])
        assert b.ep(US).fleet_down and not b.ep(US).available(b.clock.now)
        assert b.ep(US).up  # b's own checks still pass: the fleet's word is separate
        assert b.peers.status()["regions"]["us-east"]["fleet_down_endpoints"] == 1
        assert not b.ep(CA).fleet_down

        # Peers cannot bring an endpoint back: a sees it down, whatever b says.
        a.see(CA, False)
        await round_([a, b, c])
        assert not a.ep(CA).available(a.clock.now)
        assert not a.peers.verdicts[CA].fleet_down  # and no verdict says "up" either

        # a and c recover: the quorum is gone on the next beat.
        a.see(US, True)
        c.see(US, True)
        await round_([a, b, c])
        assert not b.ep(US).fleet_down and b.ep(US).available(b.clock.now)


async def test_peers_in_flight_adds_to_load_and_silence_expires_the_others(
    tmp_path: Path,
) -> None:
    async with fleet(tmp_path, ["a", "b", "c"]) as (_, (a, b, c)):
        a.vantage.inflight[US] = 3
        c.vantage.inflight[US] = 4
        b.see(US, True)
        a.see(US, False)
        c.see(US, False)
        await round_([a, b, c])
        rt = b.vantage.runtime
        i = rt.fleet.view.index("us-east")
        assert b.ep(US).peer_inflight == 7
        assert b.ep(US).fleet_down and rt.fleet.view.load[i] == 7.0
        # What b published is what its status shows of itself.
        assert b.peers.last is not None and b.peers.last.revision == 7
        assert b.peers.last.regions["us-east"].ttfb_ms == 42.0

        # Nothing heard for longer than max_age_s: b goes by its own view again.
        b.clock.now += MAX_AGE_S + 0.1
        b.peers.tick()
        assert b.peers.table.fresh() == [] and b.peers.table.dropped["expired"] == 2
        assert not b.ep(US).fleet_down and b.ep(US).peer_inflight == 0
        assert rt.fleet.view.load[i] == 0.0


async def test_bad_oversized_and_stale_messages_are_dropped_and_counted(tmp_path: Path) -> None:
    async with fleet(tmp_path, ["a", "b"]) as (_, (a, b)):
        await round_([a, b])
        received = b.peers.table.received
        nc = a.store
        prefix = b.peers.fleet.subject_prefix
        await nc.publish(f"{prefix}.obs.evil", b"not json")
        await nc.publish(f"{prefix}.obs.evil", b'{"v": 1}')
        await nc.publish(f"{prefix}.obs.evil", b"{" + b" " * MAX_OBS_BYTES + b"}")
        # a's own observation, published on another edge's subject: a peer cannot speak
        # for someone else.
        assert a.peers.last is not None
        await nc.publish(f"{prefix}.obs.c", encode(a.peers.last))
        late = own_observation(
            a.vantage.runtime, {}, {}, a.peers.fleet, 7, a.peers.seq + 1, time.time() - 60
        )
        await nc.publish(a.peers.subject, encode(late))

        def counted() -> bool:
            d = b.peers.table.dropped
            return (d["malformed"], d["oversized"], d["stale"]) == (3, 1, 1)

        await until(counted)
        assert b.peers.table.received == received  # none of them was taken
        status = b.peers.status()
        assert status["dropped_total"] == {
            "oversized": 1,
            "malformed": 3,
            "stale": 1,
            "expired": 0,
        }
        assert [e["edge"] for e in status["edges"]] == ["a", "b"]


async def test_a_peers_region_names_decide_nothing_only_urls_do(tmp_path: Path) -> None:
    async with fleet(tmp_path, ["b"]) as (_, (b,)):
        # Peer x files us-east's endpoint under ca-central, down, and invents a region.
        x = Observation(
            edge="x",
            site="x",
            revision=7,
            seq=1,
            sent_at=time.time(),
            regions={
                "ca-central": RegionObs(None, None, {US: EndpointObs(False, 3, 0)}),
                "mars": RegionObs(None, None, {"http://10.9.9.9:1": EndpointObs(True, 0, 0)}),
            },
        )
        await b.peers.on_message("gslb.obs.x", encode(x))
        b.peers.tick()
        regions = b.peers.status()["regions"]
        assert set(regions) == {"us-east", "ca-central"}
        # x spoke of us-east's endpoint (down): a reporter there, and a disagreement.
        assert (regions["us-east"]["reporters"], regions["us-east"]["see_up"]) == (2, 1)
        assert regions["us-east"]["agree"] is False
        # Of ca-central's endpoint x said nothing: b's view stands alone.
        assert (regions["ca-central"]["reporters"], regions["ca-central"]["agree"]) == (1, True)
        assert b.peers.verdicts[US].down_votes == 1 and not b.peers.verdicts[CA].down_votes
