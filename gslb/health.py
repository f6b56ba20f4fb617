"""Endpoint health: a pure policy (outlier detection, rise/fall, cordons, hold-down) and the
active checker that feeds it.

``HealthPolicy`` never reads a clock or touches a socket: the proxy reports request outcomes
(``on_outcome``), the ``ActiveChecker`` reports probe results (``on_probe``), and a periodic
``tick(now)`` lets time-based states expire. Each change ends in ``FleetState.refresh_region``,
which recomputes what the router's ``Snapshot`` says.

Rules (docs/design.md, section 6), and the choices made where it is silent:

- Passive ejection: ``consecutive_failures`` failures in a row (connect error, time-out, 5xx,
  mid-stream abort) eject an endpoint for ``base_ejection_s * n`` (``n``: times ejected), capped
  at ``max_ejection_s``. The multiplier decays: an endpoint that stayed un-ejected for
  ``max_ejection_s`` after its last ejection ended starts again at ``base_ejection_s``. An
  ejection resets the failure count; failures that land while an endpoint is already ejected
  (requests that were in flight, or panic traffic) count, but never extend the ejection.
- ``max_ejection_percent``: an ejection that would leave more than that share of a region's
  endpoints ejected is refused, except that one endpoint may always be ejected (as in Envoy),
  so a small region is not immune. ``max_ejection_percent = 0`` turns passive ejection off.
  A one-endpoint region can therefore be emptied by ejection; the panic rule in ``fleet.py``
  keeps it routable while its active checks pass, so ejection there only shows in status.
- 429 / queue full (``SATURATED``) is a load signal, not a fault: the endpoint is marked
  saturated for ``saturated_s`` (the fleet charges extra load for it) and its failure count is
  reset, since it answered coherently. ``CANCELLED`` (the client left) says nothing.
- Active checks: ``up`` flips to False after ``fall`` failed probes in a row and back after
  ``rise`` successes. ``on_initial_probe`` (the checker's first round, before the edge reports
  ready) marks an endpoint that fails down at once: a fresh edge has no evidence it ever worked.
- Node cordon: when an endpoint goes down or is ejected, the other endpoints on its node are
  cordoned for ``cordon_s``. Two exceptions, both so that a guess never costs more than the
  failure it predicts: an endpoint that was draining (maintenance, preemption notice) does not
  cordon its siblings, and a cordon that would leave its region with no available endpoint is
  skipped (logged): the siblings keep serving under their own checks instead of the whole
  region failing over on a prediction. The first probe round never cordons (a node whose
  servers are still loading weights is not failing).
- Hold-down: a region that became unroutable for health reasons gets ``recovered_at = now``
  when it is routable again, so the router's gate (``FleetState.held_down``) sends it traffic only
  after ``standby_hold_down_s``. This damps flapping for every region and is how a standby hands
  traffic back after an active region recovers. A region that was never down (fresh start) has
  ``recovered_at = None`` and serves at once; a region that was unroutable only because an
  operator drained it serves at once when undrained.

Latency learning: per-region EWMAs (``alpha``, default 0.2) of time to first byte
(``on_ttfb``), whole-request duration (``on_duration``) and probe round trip (``on_probe``).
``service_ms_correction(region)`` is an observed service time for the router's wait estimate:
the duration EWMA minus the probe RTT EWMA (the network part of the duration does not hold a
server slot), floored at ``MIN_SERVICE_MS``, or ``None`` until ``min_samples`` durations were
seen. The router's ``wait_ms`` models how long a queued request waits for a slot, and a slot is
held for the whole request, so the duration is the right figure; TTFB minus RTT would be queue
wait plus prefill, which under load double-counts the queue and at rest underestimates the slot
time by the whole generation, so it is exposed for status only. The shell applies the
correction with ``Router.set_service_ms(i, value)`` when it is not ``None`` and keeps the
modeled ``service_ms`` otherwise; it should feed ``on_duration`` only with requests that
completed normally (a cancelled stream's duration says nothing about service time).

``ActiveChecker`` is the shell: one task per endpoint probing ``GET url + health.path``, plus
a small ticker task that calls ``policy.tick(now)`` every ``tick_interval_s`` (0.25 s) so
ejections, cordons, saturation, stale load reports and hold-downs expire on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import aiohttp

from gslb.config import HealthConfig
from gslb.fleet import EndpointState, FleetState, Outcome, RegionState

LOG = logging.getLogger("gslb.health")

DEFAULT_ALPHA = 0.2
MIN_SERVICE_MS = 1.0
DEFAULT_MIN_SAMPLES = 5
TICK_INTERVAL_S = 0.25

# Event kinds passed to the ``on_event`` callback (metrics, the status page).
EJECTED = "ejected"
EJECTION_REFUSED = "ejection_refused"
DOWN = "down"
UP = "up"
CORDONED = "cordoned"
CORDON_SKIPPED = "cordon_skipped"
REGION_UNROUTABLE = "region_unroutable"
REGION_ROUTABLE = "region_routable"


@dataclass(frozen=True, slots=True)
class HealthEvent:
    """One health transition. ``endpoint`` is empty for region events."""

    kind: str
    region: str
    endpoint: str
    reason: str


class Ewma:
    """Exponentially weighted moving average; the first sample seeds it."""

    __slots__ = ("alpha", "count", "value")

    def __init__(self, alpha: float) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.value: float | None = None
        self.count = 0

    def add(self, x: float) -> None:
        if not math.isfinite(x) or x < 0:
            return  # a bogus sample must not poison the average for good
        self.count += 1
        self.value = x if self.value is None else self.value + self.alpha * (x - self.value)


def _down_for_health(region: RegionState) -> bool:
    """Unroutable because endpoints failed, not (only) because an operator drained them."""
    return not region.draining and any(not e.draining for e in region.endpoints)


def _round(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


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
        self.min_samples = min_samples
        n = len(fleet.regions)
        self._ttfb = [Ewma(alpha) for _ in range(n)]
        self._duration = [Ewma(alpha) for _ in range(n)]
        self._rtt = [Ewma(alpha) for _ in range(n)]
        self.ejections_total: Counter[str] = Counter()
        self.ejections_refused_total: Counter[str] = Counter()
        self.cordons_total: Counter[str] = Counter()
        # Regions that went unroutable for health reasons (not a drain): they get a hold-down.
        self._health_down: set[int] = set()
        self._last_tick = -math.inf
        fleet.on_region_change.append(self._on_region_change)

    def close(self) -> None:
        """Stop listening to the fleet (a reload builds a new fleet and policy)."""
        with contextlib.suppress(ValueError):
            self.fleet.on_region_change.remove(self._on_region_change)

    # -- passive: request outcomes ------------------------------------------------------------

    def on_outcome(self, ep: EndpointState, outcome: Outcome, now: float) -> None:
        """Account one upstream attempt. Cheap on the success path: it runs per request."""
        if outcome is Outcome.SUCCESS:
            ep.consecutive_failures = 0
            return
        if outcome is Outcome.CANCELLED:
            return
        region = self.fleet.regions[ep.region]
        health = region.cfg.health
        if outcome is Outcome.SATURATED:
            ep.consecutive_failures = 0
            ep.saturated_until = max(ep.saturated_until, now + health.saturated_s)
            self.fleet.refresh_region(region, now)
            return
        ep.consecutive_failures += 1
        if ep.consecutive_failures >= health.consecutive_failures and not ep.ejected(now):
            self._eject(region, ep, now)

    def _eject(self, region: RegionState, ep: EndpointState, now: float) -> None:
        health = region.cfg.health
        if not self._may_eject(region, now):
            self.ejections_refused_total[region.name] += 1
            self.log.debug(
                "not ejecting %s (region %s): max_ejection_percent %.0f reached",
                ep.url,
                region.name,
                health.max_ejection_percent,
            )
            self._emit(EJECTION_REFUSED, region, ep, "max_ejection_percent")
            return
        if ep.ejections and now - ep.ejected_until >= health.max_ejection_s:
            ep.ejections = 0  # healthy for a full max_ejection_s: forgive the past
        ep.ejections += 1
        duration = min(health.base_ejection_s * ep.ejections, health.max_ejection_s)
        ep.ejected_until = now + duration
        failures = ep.consecutive_failures
        ep.consecutive_failures = 0
        self.ejections_total[region.name] += 1
        reason = f"{failures} consecutive failures"
        self.log.warning(
            "ejecting %s (region %s, node %s) for %.0fs: %s (ejection #%d)",
            ep.url,
            region.name,
            ep.node,
            duration,
            reason,
            ep.ejections,
        )
        self._emit(EJECTED, region, ep, reason)
        self._cordon_siblings(region, ep, "ejected", now)
        self.fleet.refresh_region(region, now)

    def _may_eject(self, region: RegionState, now: float) -> bool:
        pct = region.cfg.health.max_ejection_percent
        if pct <= 0:
            return False
        eps = region.endpoints
        ejected = sum(1 for e in eps if e.ejected(now))
        # One ejection is always allowed; the epsilon keeps 50% of 4 at exactly 2.
        allowed = max(1, int(len(eps) * pct / 100.0 + 1e-9))
        return ejected + 1 <= allowed

    # -- active: probes -----------------------------------------------------------------------

    def on_probe(self, ep: EndpointState, ok: bool, rtt_s: float | None, now: float) -> None:
        """One active check result, with rise/fall hysteresis."""
        region = self.fleet.regions[ep.region]
        health = region.cfg.health
        if ok:
            ep.probe_failures = 0
            ep.probe_successes += 1
            if rtt_s is not None:
                self._rtt[region.index].add(rtt_s * 1000.0)
            if not ep.up and ep.probe_successes >= health.rise:
                self._mark_up(region, ep, now)
            return
        ep.probe_successes = 0
        ep.probe_failures += 1
        if ep.up and ep.probe_failures >= health.fall:
            self._mark_down(region, ep, now, f"{ep.probe_failures} failed health checks")

    def on_initial_probe(
        self, ep: EndpointState, ok: bool, rtt_s: float | None, now: float
    ) -> None:
        """The first round's result: a failure means down at once, without cordoning."""
        if ok:
            self.on_probe(ep, ok, rtt_s, now)
            return
        region = self.fleet.regions[ep.region]
        ep.probe_successes = 0
        ep.probe_failures = max(ep.probe_failures + 1, region.cfg.health.fall)
        if ep.up:
            self._mark_down(region, ep, now, "failed the first health check", cordon=False)

    def _mark_up(self, region: RegionState, ep: EndpointState, now: float) -> None:
        ep.up = True
        self.log.info(
            "endpoint %s (region %s) is up: %d health checks passed",
            ep.url,
            region.name,
            ep.probe_successes,
        )
        self._emit(UP, region, ep, f"{ep.probe_successes} health checks passed")
        self.fleet.refresh_region(region, now)

    def _mark_down(
        self, region: RegionState, ep: EndpointState, now: float, reason: str, cordon: bool = True
    ) -> None:
        ep.up = False
        self.log.warning("endpoint %s (region %s) is down: %s", ep.url, region.name, reason)
        self._emit(DOWN, region, ep, reason)
        if cordon:
            self._cordon_siblings(region, ep, "down", now)
        self.fleet.refresh_region(region, now)

    # -- node cordon --------------------------------------------------------------------------

    def _cordon_siblings(
        self, region: RegionState, src: EndpointState, what: str, now: float
    ) -> None:
        """Take the other endpoints of ``src``'s node out for ``cordon_s``."""
        health = region.cfg.health
        siblings = [e for e in region.endpoints if e is not src and e.node == src.node]
        if not siblings or health.cordon_s <= 0 or src.draining:
            return
        reason = f"sibling {src.url} {what}"
        others_available = any(e.available(now) for e in region.endpoints if e.node != src.node)
        if not others_available and any(e.available(now) for e in siblings):
            self.log.warning(
                "not cordoning node %s in region %s (%s): it would leave the region with no "
                "available endpoint; %s stay under their own checks",
                src.node,
                region.name,
                reason,
                ", ".join(e.url for e in siblings),
            )
            self._emit(CORDON_SKIPPED, region, src, reason)
            return
        until = now + health.cordon_s
        for e in siblings:
            e.cordoned_until = max(e.cordoned_until, until)
            e.cordoned_reason = reason
            self._emit(CORDONED, region, e, reason)
        self.cordons_total[region.name] += len(siblings)
        self.log.warning(
            "cordoning node %s in region %s for %.0fs (%s): %s",
            src.node,
            region.name,
            health.cordon_s,
            reason,
            ", ".join(e.url for e in siblings),
        )

    # -- time ---------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Let time-based states expire: refresh the regions where one ran out since last tick.

        One pass over the endpoints' deadlines, no allocation; a region is refreshed only
        when an ejection, cordon, saturation, load report or hold-down ran out in
        ``(last tick, now]``. The first tick refreshes everything.
        """
        last = self._last_tick
        for region in self.fleet.regions:
            if not region.routable and _down_for_health(region):
                # Catches regions that went down while drained and were undrained unhealthy.
                self._health_down.add(region.index)
            if self._due(region, last, now):
                self.fleet.refresh_region(region, now)
        self._last_tick = now

    @staticmethod
    def _due(region: RegionState, last: float, now: float) -> bool:
        rec = region.recovered_at
        due = rec is not None and last < rec + region.cfg.health.standby_hold_down_s <= now
        max_age = region.cfg.load.max_age_s
        for ep in region.endpoints:
            if last < ep.cordoned_until <= now:
                ep.cordoned_reason = ""  # so no reader shows a reason for a lapsed cordon
                due = True
            if last < ep.ejected_until <= now or last < ep.saturated_until <= now:
                due = True
            # A report is fresh while now - reported_at <= max_age: stale strictly after.
            if ep.reported_load is not None and last <= ep.reported_at + max_age < now:
                due = True
        return due

    def _on_region_change(self, region: RegionState, routable: bool, now: float) -> None:
        if not routable:
            if _down_for_health(region):
                self._health_down.add(region.index)
                self.log.warning("region %s is not routable: no available endpoint", region.name)
                self._emit(REGION_UNROUTABLE, region, None, "no available endpoint")
            return
        if region.index not in self._health_down:
            return  # undrained, or never down: no hold-down
        self._health_down.discard(region.index)
        region.recovered_at = now
        hold = region.cfg.health.standby_hold_down_s
        self.log.warning(
            "region %s is routable again; traffic returns after a %.0fs hold-down",
            region.name,
            hold,
        )
        self._emit(REGION_ROUTABLE, region, None, f"hold-down {hold:g}s")

    # -- latency learning ---------------------------------------------------------------------

    def on_ttfb(self, region_index: int, seconds: float) -> None:
        self._ttfb[region_index].add(seconds * 1000.0)

    def on_duration(self, region_index: int, seconds: float) -> None:
        """Whole-request time of a request that completed normally (feeds the service time)."""
        self._duration[region_index].add(seconds * 1000.0)

    def ewma_ttfb_ms(self, region: int | RegionState) -> float | None:
        return self._ttfb[self._index(region)].value

    def ewma_duration_ms(self, region: int | RegionState) -> float | None:
        return self._duration[self._index(region)].value

    def ewma_probe_rtt_ms(self, region: int | RegionState) -> float | None:
        return self._rtt[self._index(region)].value

    def service_ms_correction(self, region: int | RegionState) -> float | None:
        """Observed service time (ms) for the router's wait estimate, or None without data."""
        i = self._index(region)
        duration = self._duration[i]
        if duration.value is None or duration.count < self.min_samples:
            return None
        rtt = self._rtt[i].value or 0.0
        return max(MIN_SERVICE_MS, duration.value - rtt)

    @staticmethod
    def _index(region: int | RegionState) -> int:
        return region if isinstance(region, int) else region.index

    # -- reporting ----------------------------------------------------------------------------

    def status(self, now: float) -> dict[str, object]:
        """JSON-ready view of every region and endpoint, for ``/status`` and the status page."""
        snap = self.fleet.snapshot
        regions: dict[str, object] = {}
        for region in self.fleet.regions:
            i = region.index
            hold_left = 0.0
            if region.recovered_at is not None and region.routable:
                hold = region.cfg.health.standby_hold_down_s
                hold_left = max(0.0, region.recovered_at + hold - now)
            regions[region.name] = {
                "routable": bool(snap.routable[i]),
                "healthy": region.routable,
                "panic": region.panic,
                "draining": region.draining,
                "hold_down_remaining_s": round(hold_left, 3),
                "inflight": region.inflight,
                "load": round(snap.load[i], 3),
                "ewma_ttfb_ms": _round(self._ttfb[i].value),
                "ewma_duration_ms": _round(self._duration[i].value),
                "ewma_probe_rtt_ms": _round(self._rtt[i].value),
                "service_ms": region.cfg.service_ms,
                "service_ms_observed": _round(self.service_ms_correction(i)),
                "ejections_total": self.ejections_total[region.name],
                "cordons_total": self.cordons_total[region.name],
                "endpoints": [self._endpoint_status(region, ep, now) for ep in region.endpoints],
            }
        return {"regions": regions}

    @staticmethod
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
            "reported_load": ep.reported_load if fresh else None,
            "report_age_s": round(now - ep.reported_at, 3)
            if ep.reported_load is not None
            else None,
        }

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


# --------------------------------------------------------------------------------------------
# The shell: active checks


class ActiveChecker:
    """Probes every endpoint of a fleet and feeds the results to a ``HealthPolicy``.

    One task per endpoint, probes start to start every ``health.interval_s`` jittered by
    ``± health.jitter`` (a fraction), each bounded by ``health.timeout_s``; a hanging endpoint
    counts as failed. The first probe of each task waits a random part of the interval so a
    large fleet does not probe in lockstep. A separate ticker calls ``policy.tick`` every
    ``tick_interval_s``. ``clock`` stamps results (``now``) and measures RTT; waiting uses the
    event loop's own timers.
    """

    def __init__(
        self,
        fleet: FleetState,
        policy: HealthPolicy,
        session: aiohttp.ClientSession,
        *,
        rnd: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        log: logging.Logger | None = None,
        tick_interval_s: float = TICK_INTERVAL_S,
    ) -> None:
        self.fleet = fleet
        self.policy = policy
        self.session = session
        self.rnd = rnd or random.Random()
        self.clock = clock
        self.log = log or LOG
        self.tick_interval_s = tick_interval_s
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        if self._tasks:
            return
        for ep in self.fleet.endpoints():
            self._tasks.append(asyncio.create_task(self._run(ep), name=f"health:{ep.url}"))
        self._tasks.append(asyncio.create_task(self._ticker(), name="health:tick"))

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def probe_once(self, ep: EndpointState, initial: bool = False) -> bool:
        """Probe one endpoint and report the result; never raises (except cancellation)."""
        ok, rtt = await self._probe(ep)
        now = self.clock()
        report = self.policy.on_initial_probe if initial else self.policy.on_probe
        try:
            report(ep, ok, rtt, now)
        except Exception:  # a policy bug must not stop health checking
            self.log.exception("health policy failed on probe of %s", ep.url)
        return ok

    async def run_round(self, initial: bool = False) -> None:
        """Probe every endpoint once, concurrently (the server's first round before ready).

        ``initial=True`` makes failures decisive (see ``HealthPolicy.on_initial_probe``).
        """
        eps = list(self.fleet.endpoints())
        await asyncio.gather(*(self.probe_once(ep, initial) for ep in eps))
        self.policy.tick(self.clock())

    async def _probe(self, ep: EndpointState) -> tuple[bool, float | None]:
        health = self._health(ep)
        url = ep.url + health.path
        started = self.clock()
        try:
            timeout = aiohttp.ClientTimeout(total=health.timeout_s)
            async with self.session.get(url, timeout=timeout, allow_redirects=False) as resp:
                await resp.read()  # health bodies are tiny; reading keeps the connection reusable
                status = resp.status
        except Exception as exc:  # time-outs, refused connections, resets: all mean "failed"
            self.log.debug("health check %s failed: %s %s", url, type(exc).__name__, exc)
            return False, None
        if status not in health.expected_status:
            self.log.debug("health check %s failed: HTTP %d", url, status)
            return False, None
        return True, self.clock() - started

    def _health(self, ep: EndpointState) -> HealthConfig:
        return self.fleet.regions[ep.region].cfg.health

    def _interval(self, health: HealthConfig) -> float:
        spread = health.jitter * (2.0 * self.rnd.random() - 1.0)
        return health.interval_s * (1.0 + spread)

    async def _run(self, ep: EndpointState) -> None:
        health = self._health(ep)
        await asyncio.sleep(self.rnd.random() * health.interval_s)
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.probe_once(ep)
            except Exception:  # belt and braces: probe_once already swallows failures
                self.log.debug("health loop for %s: unexpected error", ep.url, exc_info=True)
            delay = self._interval(health) - (loop.time() - started)
            await asyncio.sleep(max(0.0, delay))

    async def _ticker(self) -> None:
        while True:
            try:
                self.policy.tick(self.clock())
            except Exception:
                self.log.exception("health tick failed")
            await asyncio.sleep(self.tick_interval_s)
