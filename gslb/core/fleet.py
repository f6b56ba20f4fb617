"""Live state of every endpoint and region: what the proxy, health checks and router share.

One event loop per worker writes and reads it, so there are no locks. The shell's tasks mutate
``EndpointState`` fields (health flags, in-flight counts, load reports) and then call
``FleetState.refresh_region``; the router reads the resulting ``LiveView`` arrays directly.

An endpoint is *available* for new requests when it is up (active checks), not draining, not
cordoned and not ejected (passive checks). A region is *routable* when at least one of its
endpoints is available, or, by the panic rule, when passive ejection alone has emptied it while
active checks still pass. Time is passed in (``now``), never read here.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from gslb.core.config import Config, EndpointConfig, RegionConfig
from gslb.core.state import LiveView


def saturation_load(capacity: int, endpoints: int) -> float:
    """Extra load a region is charged per endpoint that signals "full" (429)."""
    return float(capacity) / max(1, endpoints)


def endpoint_load(
    reported: float | None, inflight: float, saturated: bool, penalty: float
) -> float:
    """One endpoint's share of its region's load, as the router counts it.

    A fresh report is the server's own running + waiting count, which already holds every
    edge's and every worker's traffic: it is the floor of what we know, never added to our
    in-flight count. Without one, our in-flight count stands alone. ``/status`` merges the
    workers of an edge with this same rule (control.merge_status).
    """
    load = max(reported, inflight) if reported is not None else inflight
    return load + penalty if saturated else load


class EndpointState:
    """Mutable live figures of one endpoint (one inference server)."""

    __slots__ = (
        "cfg",
        "consecutive_failures",
        "cordoned_reason",
        "cordoned_until",
        "draining",
        "ejected_until",
        "ejections",
        "fleet_down",
        "inflight",
        "node",
        "peer_inflight",
        "probe_failures",
        "probe_successes",
        "region",
        "reported_at",
        "reported_load",
        "saturated_until",
        "up",
        "url",
        "weight",
    )

    def __init__(self, cfg: EndpointConfig, region: int) -> None:
        self.cfg = cfg
        self.url = cfg.url
        self.node = cfg.node
        self.weight = cfg.weight
        self.region = region
        self.inflight = 0
        self.up = True  # optimistic until the first failed probes: a fresh edge must serve
        self.draining = False
        self.ejected_until = 0.0
        self.ejections = 0
        self.consecutive_failures = 0
        self.cordoned_until = 0.0
        self.cordoned_reason = ""
        self.saturated_until = 0.0
        self.probe_successes = 0
        self.probe_failures = 0
        self.reported_load: float | None = None
        self.reported_at = 0.0
        # Fleet mode (gslb.core.peers): a quorum of other edges sees it down, and their
        # requests in flight on it. Peers can take an endpoint out, never bring one back.
        self.fleet_down = False
        self.peer_inflight = 0

    def ejected(self, now: float) -> bool:
        return self.ejected_until > now

    def cordoned(self, now: float) -> bool:
        return self.cordoned_until > now

    def available(self, now: float) -> bool:
        return (
            self.up
            and not self.fleet_down
            and not self.draining
            and self.ejected_until <= now
            and self.cordoned_until <= now
        )

    def state_name(self, now: float) -> str:
        """One word for metrics and the status page: the most important reason first."""
        if not self.up:
            return "down"
        if self.fleet_down:
            return "fleet_down"
        if self.ejected(now):
            return "ejected"
        if self.cordoned(now):
            return "cordoned"
        if self.draining:
            return "draining"
        return "up"


def _alive(ep: EndpointState) -> bool:
    """Up by active checks (this edge's and the fleet's) and not drained: what the panic rule
    still uses."""
    return ep.up and not ep.fleet_down and not ep.draining


class RegionState:
    __slots__ = (
        "cfg",
        "draining",
        "endpoints",
        "index",
        "inflight",
        "name",
        "panic",
        "recovered_at",
        "refreshed_at",
        "routable",
    )

    def __init__(self, cfg: RegionConfig, index: int) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.index = index
        self.endpoints = [EndpointState(e, index) for e in cfg.endpoints]
        self.inflight = 0
        self.draining = False
        self.routable = True
        self.panic = False
        # Set by health when the region last came back; standby hold-down reads it.
        self.recovered_at: float | None = None
        # When refresh_region last ran: load updates between refreshes judge report age by it.
        self.refreshed_at = 0.0


class FleetState:
    """Every region and endpoint of one config, and the view the router reads."""

    def __init__(self, cfg: Config, rnd: random.Random | None = None) -> None:
        self.cfg = cfg
        self.regions = [RegionState(r, i) for i, r in enumerate(cfg.regions)]
        self.view = LiveView([r.name for r in cfg.regions])
        self.by_url = {e.url: e for r in self.regions for e in r.endpoints}
        self._rnd = rnd or random.Random()
        self._random = self._rnd.random
        self.saturation_load = [saturation_load(r.capacity, len(r.endpoints)) for r in cfg.regions]
        # Observers (health, metrics, logs) told when a region's routability flips, and when.
        self.on_region_change: list[Callable[[RegionState, bool, float], None]] = []

    def endpoints(self) -> Iterator[EndpointState]:
        for r in self.regions:
            yield from r.endpoints

    # -- the per-request path ------------------------------------------------------------------

    def pick(
        self, region_index: int, now: float, exclude: EndpointState | None = None
    ) -> EndpointState | None:
        """Power of two choices on in-flight per weight among the available endpoints.

        Two random candidates, the less loaded wins: near-optimal balance without global
        coordination, and no herd onto one "least loaded" endpoint across workers.
        """
        cands = self._pickable(region_index, now, exclude)
        if not cands:
            return None
        if len(cands) == 1:
            return cands[0]
        n = len(cands)
        a = cands[int(self._random() * n)]
        b = cands[int(self._random() * (n - 1))]
        if b is a:
            b = cands[n - 1]
        return a if a.inflight / a.weight <= b.inflight / b.weight else b

    def can_pick(self, region_index: int, now: float) -> bool:
        """Whether ``pick`` would find an endpoint (the proxy asks before a retry plan)."""
        return bool(self._pickable(region_index, now, None))

    def _pickable(
        self, region_index: int, now: float, exclude: EndpointState | None
    ) -> list[EndpointState]:
        region = self.regions[region_index]
        if region.draining:
            return []
        eps = region.endpoints
        cands = [e for e in eps if e is not exclude and e.available(now)]
        if not cands and region.panic:
            # Panic: passive ejections alone emptied the region; active checks say it lives.
            cands = [e for e in eps if e is not exclude and _alive(e)]
        return cands

    def acquire(self, ep: EndpointState) -> None:
        ep.inflight += 1
        region = self.regions[ep.region]
        region.inflight += 1
        self._update_load(region)

    def release(self, ep: EndpointState) -> None:
        ep.inflight -= 1
        region = self.regions[ep.region]
        region.inflight -= 1
        self._update_load(region)

    # -- derived figures -------------------------------------------------------------------------

    def _update_load(self, region: RegionState) -> None:
        # As of the last refresh: health ticks refresh often, and acquire/release must not
        # read the clock or resurrect a report that the last refresh found stale.
        self.view.load[region.index] = self.region_load(region, region.refreshed_at)

    def region_load(self, region: RegionState, now: float) -> float:
        """In-flight + queued for the router: fresh load reports win over local counts.

        Endpoints that reported within ``max_age_s`` contribute their reported load (the
        server's own running + waiting, which includes other edges' traffic); the others
        contribute this worker's in-flight count. Saturated endpoints add a penalty.
        """
        total = 0.0
        max_age = region.cfg.load.max_age_s
        penalty = self.saturation_load[region.index]
        for ep in region.endpoints:
            rep = ep.reported_load
            if rep is not None and now - ep.reported_at <= max_age:
                total += endpoint_load(rep, ep.inflight, ep.saturated_until > now, penalty)
            else:
                local = ep.inflight + ep.peer_inflight
                total += endpoint_load(None, local, ep.saturated_until > now, penalty)
        return total

    def refresh_region(self, region: RegionState, now: float) -> None:
        """Recompute a region's routability and load after any health or load change."""
        region.refreshed_at = now
        eps = region.endpoints
        any_available = any(e.available(now) for e in eps)
        # Panic ignores ejections and cordons (both are guesses); active checks and drains hold.
        region.panic = not any_available and any(_alive(e) for e in eps)
        routable = not region.draining and (any_available or region.panic)
        if routable != region.routable:
            region.routable = routable
            for cb in self.on_region_change:
                cb(region, routable, now)
        i = region.index
        self.view.routable[i] = 1 if routable and not self.held_down(region, now) else 0
        self.view.last_resort[i] = 1 if routable else 0
        self.view.load[i] = self.region_load(region, now)

    def held_down(self, region: RegionState, now: float) -> bool:
        """Recovered too recently to take traffic back (flap damping)."""
        if region.recovered_at is None:
            return False
        return now - region.recovered_at < region.cfg.health.standby_hold_down_s

    def refresh(self, now: float) -> None:
        for region in self.regions:
            self.refresh_region(region, now)

    # -- drains ---------------------------------------------------------------------------------

    def drain_targets(
        self, *, region: str | None = None, node: str | None = None, endpoint: str | None = None
    ) -> list[EndpointState]:
        """Endpoints named by a drain request; raises KeyError when the target is unknown."""
        if region is not None:
            found = [r for r in self.regions if r.name == region]
            if not found:
                raise KeyError(f"no region {region!r}")
            return list(found[0].endpoints)
        if node is not None:
            eps = [e for e in self.endpoints() if e.node == node]
            if not eps:
                raise KeyError(f"no node {node!r}")
            return eps
        if endpoint is not None:
            ep = self.by_url.get(endpoint.rstrip("/"))
            if ep is None:
                raise KeyError(f"no endpoint {endpoint!r}")
            return [ep]
        raise KeyError("name a region, a node or an endpoint")

    def set_draining(
        self,
        draining: bool,
        now: float,
        *,
        region: str | None = None,
        node: str | None = None,
        endpoint: str | None = None,
    ) -> list[EndpointState]:
        """Drain or undrain a target: no new requests at once; in-flight ones finish."""
        eps = self.drain_targets(region=region, node=node, endpoint=endpoint)
        for ep in eps:
            ep.draining = draining
        if region is not None:
            self.regions[eps[0].region].draining = draining
        for idx in {ep.region for ep in eps}:
            self.refresh_region(self.regions[idx], now)
        return eps

    def drained(self, eps: list[EndpointState]) -> bool:
        """True once every endpoint of a drained target has no request in flight."""
        return all(ep.inflight == 0 for ep in eps)
