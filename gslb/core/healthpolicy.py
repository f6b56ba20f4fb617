"""The health policy of one fleet: the facade that wires the health rules and reports them. Pure.

``HealthPolicy`` never reads a clock or touches a socket. Events come in with the time they
happened: request outcomes from the proxy (``on_outcome``, ``on_ttfb``, ``on_duration``),
probe results and load reports from the periodic runner (``on_probe``, ``on_initial_probe``,
``on_load_report``), and a periodic ``tick(now)`` lets time-based states expire. Each change
ends in ``FleetState.refresh_region``, which recomputes what the router's ``LiveView`` says.

The rules live with their concern, each in its own pure module (docs/design.md, section 6,
and the choices made where it is silent are in each module's docstring):

- ``gslb.core.outlier``: passive ejection, ``max_ejection_percent``, 429 saturation;
- ``gslb.core.activehealth``: rise and fall, the decisive first round;
- ``gslb.core.cordons``: a failed endpoint takes its node's siblings out for ``cordon_s``;
- ``gslb.core.holddown``: a region back from a health outage waits ``standby_hold_down_s``;
- ``gslb.core.latencylearn``: EWMAs, and the observed service time for the router.

This facade decides how they connect (an ejection or a fall cordons the node, the first
round does not; a probe's RTT feeds the learner), records load reports, owns the tick and
the status JSON, and turns the parts' announcements into ``HealthEvent``s for ``on_event``.

Shared and fleet state: under a supervisor the probes run once per instance, in the
supervisor, and each worker takes their results as ``on_shared`` (the same transitions, logs
and cordons as its own probe would cause). In fleet mode ``on_fleet`` takes the verdict of the
other edges (``gslb.core.peers.combine``): they can take an endpoint out, never bring one back.

Load reports: ``on_load_report`` stores a server's own ``running + waiting`` count on its
endpoint; ``FleetState.region_load`` uses it while it is at most ``load.max_age_s`` old, and
the tick refreshes the region when it goes stale.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from gslb.core.activehealth import ActiveHealth, Transition
from gslb.core.cordons import NodeCordons
from gslb.core.fleet import EndpointState, FleetState, RegionState
from gslb.core.healthevents import FLEET_DOWN, FLEET_UP, LOG, HealthEvent, Outcome
from gslb.core.holddown import HoldDown
from gslb.core.latencylearn import DEFAULT_ALPHA, DEFAULT_MIN_SAMPLES, LatencyLearner
from gslb.core.outlier import OutlierDetector, Verdict


def _round(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def report_went_stale(ep: EndpointState, max_age: float, last: float, now: float) -> bool:
    """Whether ``ep``'s load report turned stale in ``(last, now]``.

    A report is fresh while ``now - reported_at <= max_age``: stale strictly after.
    """
    return ep.reported_load is not None and last <= ep.reported_at + max_age < now


class FleetVerdict(Protocol):
    """What ``on_fleet`` reads of ``gslb.core.peers.EndpointVerdict``."""

    @property
    def fleet_down(self) -> bool: ...

    @property
    def down_votes(self) -> int: ...

    @property
    def reporters(self) -> int: ...

    @property
    def peer_inflight(self) -> int: ...


class HealthPolicy:
    """Health decisions for one ``FleetState``. Pure: time is passed in."""

    def __init__(
        self,
        fleet: FleetState,
        log: logging.Logger | None = None,
        on_event: Callable[[HealthEvent], None] | None = None,
        *,
        alpha: float = DEFAULT_ALPHA,
        min_samples: int = DEFAULT_MIN_SAMPLES,
    ) -> None:
        self.fleet = fleet
        self.log = log or LOG
        self.on_event = on_event
        self.outliers = OutlierDetector(fleet, self.log, self._emit)
        self.active = ActiveHealth(fleet, self.log, self._emit)
        self.cordons = NodeCordons(self.log, self._emit)
        self.hold_down = HoldDown(self.log, self._emit)
        self.latency = LatencyLearner(len(fleet.regions), alpha=alpha, min_samples=min_samples)
        # The counters metrics and status read, by region name.
        self.ejections_total = self.outliers.ejections_total
        self.ejections_refused_total = self.outliers.ejections_refused_total
        self.cordons_total = self.cordons.cordons_total
        self._last_tick = -math.inf
        fleet.on_region_change.append(self.hold_down.on_region_change)

    def close(self) -> None:
        """Stop listening to the fleet (a reload builds a new fleet and policy)."""
        with contextlib.suppress(ValueError):
            self.fleet.on_region_change.remove(self.hold_down.on_region_change)

    # -- passive: request outcomes ------------------------------------------------------------

    def on_outcome(self, ep: EndpointState, outcome: Outcome, now: float) -> None:
        """Account one upstream attempt. Cheap on the success path: it runs per request."""
        verdict = self.outliers.on_outcome(ep, outcome, now)
        if verdict is Verdict.NOTHING:
            return
        region = self.fleet.regions[ep.region]
        if verdict is Verdict.EJECTED:
            self.cordons.cordon_siblings(region, ep, "ejected", now)
        self.fleet.refresh_region(region, now)

    # -- active: probes -----------------------------------------------------------------------

    def on_probe(self, ep: EndpointState, ok: bool, rtt_s: float | None, now: float) -> None:
        """One active check result, with rise/fall hysteresis."""
        if ok and rtt_s is not None:
            self.latency.on_probe_rtt(ep.region, rtt_s)
        self._apply(ep, self.active.on_probe(ep, ok), now, cordon=True)

    def on_initial_probe(
        self, ep: EndpointState, ok: bool, rtt_s: float | None, now: float
    ) -> None:
        """The first round's result: a failure means down at once, without cordoning."""
        if ok:
            self.on_probe(ep, ok, rtt_s, now)
            return
        self._apply(ep, self.active.on_initial_failure(ep), now, cordon=False)

    def on_shared(
        self,
        ep: EndpointState,
        up: bool,
        failures: int,
        successes: int,
        now: float,
        initial: bool = False,
    ) -> None:
        """The instance's prober (the supervisor) says where ``ep`` stands now.

        Its rise/fall counters are taken as they are, so a worker started late agrees with
        its siblings at once; a flip has the same effects as this worker's own probe would
        (the log line, the event, the node cordon), except on the first round.
        """
        ep.probe_failures = failures
        ep.probe_successes = successes
        if up == ep.up:
            return
        self._apply(ep, self.active.set_up(ep, up), now, cordon=not initial)

    def on_fleet(self, verdicts: Mapping[str, FleetVerdict], now: float) -> None:
        """The other edges' verdict on each endpoint, by URL (``gslb.core.peers.combine``).

        An endpoint missing from ``verdicts`` has no fleet verdict: it is not down fleet-wide
        and carries no peers' load.
        """
        for region in self.fleet.regions:
            changed = False
            for ep in region.endpoints:
                v = verdicts.get(ep.url)
                down = v is not None and v.fleet_down
                inflight = v.peer_inflight if v is not None else 0
                if down != ep.fleet_down:
                    ep.fleet_down = down
                    changed = True
                    self._fleet_flip(region, ep, v)
                if inflight != ep.peer_inflight:
                    ep.peer_inflight = inflight
                    changed = True
            if changed:
                self.fleet.refresh_region(region, now)

    def _fleet_flip(self, region: RegionState, ep: EndpointState, v: FleetVerdict | None) -> None:
        if ep.fleet_down and v is not None:
            reason = f"{v.down_votes} of {v.reporters} edges see it down"
            self.log.warning(
                "endpoint %s (region %s) is down fleet-wide: %s", ep.url, region.name, reason
            )
            self._emit(FLEET_DOWN, region, ep, reason)
            return
        self.log.info("endpoint %s (region %s) is no longer down fleet-wide", ep.url, region.name)
        self._emit(FLEET_UP, region, ep, "no quorum of edges sees it down")

    def _apply(self, ep: EndpointState, change: Transition, now: float, cordon: bool) -> None:
        if change is Transition.NONE:
            return
        region = self.fleet.regions[ep.region]
        if change is Transition.DOWN and cordon:
            self.cordons.cordon_siblings(region, ep, "down", now)
        self.fleet.refresh_region(region, now)

    # -- load reports ---------------------------------------------------------------------------

    def on_load_report(
        self, ep: EndpointState, load: float, now: float, read_at: float | None = None
    ) -> None:
        """A server's own ``running + waiting`` count, read at ``read_at`` (default ``now``;
        earlier when another process read it and passed it on)."""
        ep.reported_load = load
        ep.reported_at = now if read_at is None else read_at
        self.fleet.refresh_region(self.fleet.regions[ep.region], now)

    # -- time ---------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Let time-based states expire: refresh the regions where one ran out since last tick.

        One pass over the endpoints' deadlines; a region is refreshed only when an ejection,
        cordon, saturation, load report or hold-down ran out in ``(last tick, now]``. The
        first tick refreshes everything.
        """
        last = self._last_tick
        for region in self.fleet.regions:
            self.hold_down.observe(region)
            if self._due(region, last, now):
                self.fleet.refresh_region(region, now)
        self._last_tick = now

    def _due(self, region: RegionState, last: float, now: float) -> bool:
        due = self.hold_down.lapsed(region, last, now)
        max_age = region.cfg.load.max_age_s
        for ep in region.endpoints:
            # No short-circuit: a lapsed cordon must lose its reason even when due already.
            lapsed = self.cordons.lapsed(ep, last, now)
            lapsed |= self.outliers.lapsed(ep, last, now)
            lapsed |= report_went_stale(ep, max_age, last, now)
            due |= lapsed
        return due

    # -- latency learning ---------------------------------------------------------------------

    def on_ttfb(self, region_index: int, seconds: float) -> None:
        self.latency.on_ttfb(region_index, seconds)

    def on_duration(self, region_index: int, seconds: float) -> None:
        """Whole-request time of a request that completed normally (feeds the service time)."""
        self.latency.on_duration(region_index, seconds)

    def ewma_ttfb_ms(self, region: int | RegionState) -> float | None:
        return self.latency.ewma_ttfb_ms(region)

    def ewma_duration_ms(self, region: int | RegionState) -> float | None:
        return self.latency.ewma_duration_ms(region)

    def ewma_probe_rtt_ms(self, region: int | RegionState) -> float | None:
        return self.latency.ewma_probe_rtt_ms(region)

    def service_ms_correction(self, region: int | RegionState) -> float | None:
        """Observed service time (ms) for the router's wait estimate, or None without data."""
        return self.latency.service_ms_correction(region)

    # -- reporting ----------------------------------------------------------------------------

    def status(self, now: float) -> dict[str, object]:
        """JSON-ready view of every region and endpoint, for ``/status`` and the status page."""
        snap = self.fleet.view
        learn = self.latency
        regions: dict[str, object] = {}
        for region in self.fleet.regions:
            i = region.index
            regions[region.name] = {
                "routable": bool(snap.routable[i]),
                "healthy": region.routable,
                "panic": region.panic,
                "draining": region.draining,
                "hold_down_remaining_s": round(self.hold_down.remaining(region, now), 3),
                "inflight": region.inflight,
                "load": round(snap.load[i], 3),
                "ewma_ttfb_ms": _round(learn.ewma_ttfb_ms(i)),
                "ewma_duration_ms": _round(learn.ewma_duration_ms(i)),
                "ewma_probe_rtt_ms": _round(learn.ewma_probe_rtt_ms(i)),
                "service_ms": region.cfg.service_ms,
                "service_ms_observed": _round(learn.service_ms_correction(i)),
                "ejections_total": self.ejections_total[region.name],
                "cordons_total": self.cordons_total[region.name],
                "endpoints": [_endpoint_status(region, ep, now) for ep in region.endpoints],
            }
        return {"regions": regions}

    def drain_status(self, eps: Iterable[EndpointState]) -> dict[str, object]:
        """Progress of a drain: what is still in flight, and whether it is done."""
        eps = list(eps)
        return {
            "endpoints": [
                {"url": e.url, "node": e.node, "draining": e.draining, "inflight": e.inflight}
                for e in eps
            ],
            "inflight": sum(e.inflight for e in eps),
            "drained": self.fleet.drained(eps),
        }

    # -- events -------------------------------------------------------------------------------

    def _emit(self, kind: str, region: RegionState, ep: EndpointState | None, reason: str) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(HealthEvent(kind, region.name, ep.url if ep else "", reason))
        except Exception:  # a metrics hook must never break health accounting
            self.log.exception("health event callback failed")


def _endpoint_status(region: RegionState, ep: EndpointState, now: float) -> dict[str, object]:
    fresh = ep.reported_load is not None and now - ep.reported_at <= region.cfg.load.max_age_s
    return {
        "url": ep.url,
        "node": ep.node,
        "state": ep.state_name(now),
        "up": ep.up,
        "inflight": ep.inflight,
        "consecutive_failures": ep.consecutive_failures,
        "ejections": ep.ejections,
        "ejected_remaining_s": round(max(0.0, ep.ejected_until - now), 3),
        "cordoned_remaining_s": round(max(0.0, ep.cordoned_until - now), 3),
        "cordon_reason": ep.cordoned_reason if ep.cordoned(now) else "",
        "saturated_remaining_s": round(max(0.0, ep.saturated_until - now), 3),
        "draining": ep.draining,
        "fleet_down": ep.fleet_down,
        "peer_inflight": ep.peer_inflight,
        "reported_load": ep.reported_load if fresh else None,
        "report_age_s": round(now - ep.reported_at, 3) if ep.reported_load is not None else None,
    }
