"""One picture of health and load across the fleet: publish what this edge sees, hear the rest.

Every ``fleet.publish_interval_s`` an edge publishes an observation (``gslb.core.peers``) on
``<subject_prefix>.obs.<edge>``: each endpoint's active-check verdict and failures, its own
requests in flight per endpoint, and its RTT and TTFB averages per region. It hears every
other edge's on ``<subject_prefix>.obs.*`` and, on the same beat, combines the fresh ones with
its own view (``gslb.core.peers.combine``) into a verdict per endpoint, which goes to the data
plane (``Vantage.apply``):

- an endpoint a quorum of edges sees down is down here too (``fleet_down``);
- one that only this edge cannot reach is down here only (its own probes say so);
- no word from the others, or only stale words, leaves this edge's own view;
- where no fresh load report from the server exists, the others' in-flight counts add to
  the load the router sees.

Nothing a peer sends can bring an endpoint up or widen residency: a verdict can only take an
endpoint out, and routing rules never come from peers. A malformed, oversized or stale
message is dropped and counted (``status``, ``gslb_fleet_observations_dropped_total``).

NATS is never on the request path: messages are handled on the event loop beside serving,
and a publish while NATS is away is skipped, not queued (a late copy would only be stale).
No user data is published: endpoint URLs, region names and counts only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from gslb.core.config import FleetConfig
from gslb.core.peers import (
    MAX_FAILURES,
    MAX_OBS_BYTES,
    Drop,
    EndpointObs,
    EndpointVerdict,
    ObsError,
    Observation,
    PeerTable,
    RegionObs,
    combine,
    decode,
    encode,
)
from gslb.edge.runtime import Runtime
from gslb.edge.server import Worker
from gslb.edge.sharedhealth import merge_answers, worker_share

log = logging.getLogger("gslb.ops.fleetpeers")

WARN_EVERY_S = 60.0  # at most one warning per sending edge and minute about bad messages


class Vantage(Protocol):
    """Where this edge's own view comes from, and where the fleet's verdict goes: the lone
    worker (``--workers 1``) or the supervisor's prober (``gslb.ops.healthhub``)."""

    @property
    def runtime(self) -> Runtime: ...

    def own_view(self) -> tuple[dict[str, int], dict[str, float]]:
        """In-flight per endpoint URL and TTFB average (ms) per region, for this edge."""
        ...

    def apply(self, verdicts: Mapping[str, EndpointVerdict]) -> None: ...


class WorkerVantage:
    """A lone worker (``--workers 1``): its own probes, its own requests, verdicts applied
    straight to its health policy."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    @property
    def runtime(self) -> Runtime:
        return self.worker.runtime

    def own_view(self) -> tuple[dict[str, int], dict[str, float]]:
        return merge_answers([worker_share(self.worker.runtime)])

    def apply(self, verdicts: Mapping[str, EndpointVerdict]) -> None:
        self.worker.runtime.health.on_fleet(verdicts, self.worker.clock())


def own_observation(
    rt: Runtime,
    inflight: Mapping[str, int],
    ttfb_ms: Mapping[str, float],
    fleet: FleetConfig,
    revision: int,
    seq: int,
    wall: float,
) -> Observation:
    """What this edge tells the others (one source: the status of each edge is this)."""
    learn = rt.health.latency
    return Observation(
        edge=fleet.edge,
        site=fleet.site,
        revision=revision,
        seq=seq,
        sent_at=wall,
        regions={
            r.name: RegionObs(
                rtt_ms=learn.ewma_probe_rtt_ms(r.index),
                ttfb_ms=ttfb_ms.get(r.name),
                endpoints={
                    ep.url: EndpointObs(
                        ep.up, min(ep.probe_failures, MAX_FAILURES), inflight.get(ep.url, 0)
                    )
                    for ep in r.endpoints
                },
            )
            for r in rt.fleet.regions
        },
    )


class FleetPeers:
    """This edge's observations out, the others' in, and the combined verdict applied."""

    def __init__(
        self,
        fleet: FleetConfig,
        vantage: Vantage,
        revision: Callable[[], int],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.fleet = fleet
        self.vantage = vantage
        self.revision = revision
        self.clock = clock
        self.wall = wall
        self.table = PeerTable(fleet.edge, fleet.max_age_s)
        self.subject = f"{fleet.subject_prefix}.obs.{fleet.edge}"
        self.subject_all = f"{fleet.subject_prefix}.obs.*"
        self.seq = 0
        self.published = 0
        self.too_large = 0  # own observations over the size limit: never sent
        self.verdicts: dict[str, EndpointVerdict] = {}
        self.last: Observation | None = None  # this edge's own last observation
        self._warned: dict[str, float] = {}

    # -- in -----------------------------------------------------------------------------------

    async def on_message(self, subject: str, data: bytes) -> None:
        """One message on ``<prefix>.obs.*``: kept when fresh and well-formed, else counted."""
        sender = subject.rsplit(".", 1)[-1]
        try:
            obs = decode(data, subject_edge=sender)
        except ObsError as exc:
            self.table.count(exc.reason)
            self._warn(sender, exc)
            return
        self.table.offer(obs, self.clock(), self.wall())

    def _warn(self, sender: str, exc: ObsError) -> None:
        now = self.clock()
        key = sender[:64]
        if now - self._warned.get(key, -WARN_EVERY_S) < WARN_EVERY_S:
            return
        if len(self._warned) > 1024:  # senders are peers' choice: keep the memory bounded
            self._warned.clear()
        self._warned[key] = now
        log.warning(
            "fleet: dropped a message from edge %r (%s): %s", key, exc.reason.value, exc.detail
        )

    # -- the beat -----------------------------------------------------------------------------

    def tick(self) -> bytes | None:
        """Retire old observations, apply the combined verdict, and return this edge's
        observation to publish (None when it is too large to send)."""
        now, wall = self.clock(), self.wall()
        self.table.expire(now)
        rt = self.vantage.runtime
        own_up = {ep.url: ep.up for ep in rt.fleet.endpoints()}
        self.verdicts = combine(own_up, self.table.fresh(), self.fleet.votes_needed)
        self.vantage.apply(self.verdicts)
        inflight, ttfb = self.vantage.own_view()
        self.seq += 1
        self.last = own_observation(rt, inflight, ttfb, self.fleet, self.revision(), self.seq, wall)
        data = encode(self.last)
        if len(data) > MAX_OBS_BYTES:
            self.too_large += 1
            if self.too_large == 1:
                log.error(
                    "fleet: this edge's observation is %d bytes, over the %d limit: not sent",
                    len(data),
                    MAX_OBS_BYTES,
                )
            return None
        return data

    # -- reporting ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The fleet as this edge sees it, for ``/status``, the status page and ``/metrics``."""
        now = self.clock()
        fresh = self.table.fresh()
        edges = [
            {
                "edge": o.edge,
                "site": o.site,
                "revision": o.revision,
                "age_s": round(self.table.age(o.edge, now) or 0.0, 3),
                "self": False,
            }
            for o in fresh
        ]
        if self.last is not None:
            edges.append(
                {
                    "edge": self.last.edge,
                    "site": self.last.site,
                    "revision": self.last.revision,
                    "age_s": 0.0,
                    "self": True,
                }
            )
        edges.sort(key=lambda e: str(e["edge"]))
        return {
            "edge": self.fleet.edge,
            "site": self.fleet.site,
            "quorum": self.fleet.quorum,
            "max_age_s": self.fleet.max_age_s,
            "peers": len(fresh),
            "edges": edges,
            "received_total": self.table.received,
            "dropped_total": {d.value: self.table.dropped.get(d.value, 0) for d in Drop},
            "published_total": self.published,
            "regions": self._regions(fresh),
        }

    def _regions(self, fresh: list[Observation]) -> dict[str, dict[str, Any]]:
        """Per region: how many edges report on it, how many see it up (at least one endpoint
        up), whether they agree, and what the fleet verdict takes out here. A peer's view of a
        region is what it says of this edge's endpoints of that region, by URL: the region
        names in its message decide nothing."""
        rt = self.vantage.runtime
        seen = [
            {u: e.up for r in obs.regions.values() for u, e in r.endpoints.items()} for obs in fresh
        ]
        out: dict[str, dict[str, Any]] = {}
        for region in rt.fleet.regions:
            urls = [ep.url for ep in region.endpoints]
            views = [any(ep.up for ep in region.endpoints)]
            for ups in seen:
                said = [ups[u] for u in urls if u in ups]
                if said:
                    views.append(any(said))
            verdicts = [self.verdicts.get(u) for u in urls]
            out[region.name] = {
                "reporters": len(views),
                "see_up": sum(views),
                "agree": len(set(views)) == 1,
                "fleet_down_endpoints": sum(1 for v in verdicts if v is not None and v.fleet_down),
                "peer_inflight": sum(v.peer_inflight for v in verdicts if v is not None),
            }
        return out
