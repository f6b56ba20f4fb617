"""Passive outlier detection: ejection from real traffic's outcomes, and 429 saturation. Pure.

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

The detector changes endpoint fields and says what happened (``Verdict``); the facade
(``healthpolicy``) cordons the node of an ejected endpoint and refreshes the region.
"""

from __future__ import annotations

import enum
import logging
from collections import Counter

from gslb.core.fleet import EndpointState, FleetState, RegionState
from gslb.core.healthevents import EJECTED, EJECTION_REFUSED, Emit, Outcome


class Verdict(enum.Enum):
    """What one outcome changed, so the caller knows what to recompute."""

    NOTHING = "nothing"  # counts only: the region's figures stand
    SATURATED = "saturated"  # load changed
    EJECTED = "ejected"  # the endpoint is out: cordon its node, refresh the region


class OutlierDetector:
    """Passive ejection and saturation for one fleet; time is passed in."""

    def __init__(self, fleet: FleetState, log: logging.Logger, emit: Emit) -> None:
        self.fleet = fleet
        self.log = log
        self.emit = emit
        self.ejections_total: Counter[str] = Counter()
        self.ejections_refused_total: Counter[str] = Counter()

    def on_outcome(self, ep: EndpointState, outcome: Outcome, now: float) -> Verdict:
        """Account one upstream attempt. Cheap on the success path: it runs per request."""
        if outcome is Outcome.SUCCESS:
            ep.consecutive_failures = 0
            return Verdict.NOTHING
        if outcome is Outcome.CANCELLED:
            return Verdict.NOTHING
        region = self.fleet.regions[ep.region]
        health = region.cfg.health
        if outcome is Outcome.SATURATED:
            ep.consecutive_failures = 0
            ep.saturated_until = max(ep.saturated_until, now + health.saturated_s)
            return Verdict.SATURATED
        ep.consecutive_failures += 1
        if ep.consecutive_failures >= health.consecutive_failures and not ep.ejected(now):
            return self._eject(region, ep, now)
        return Verdict.NOTHING

    def lapsed(self, ep: EndpointState, last: float, now: float) -> bool:
        """Whether an ejection or a saturation of ``ep`` ran out in ``(last, now]``."""
        return last < ep.ejected_until <= now or last < ep.saturated_until <= now

    def _eject(self, region: RegionState, ep: EndpointState, now: float) -> Verdict:
        health = region.cfg.health
        if not may_eject(region, now):
            self.ejections_refused_total[region.name] += 1
            self.log.debug(
                "not ejecting %s (region %s): max_ejection_percent %.0f reached",
                ep.url,
                region.name,
                health.max_ejection_percent,
            )
            self.emit(EJECTION_REFUSED, region, ep, "max_ejection_percent")
            return Verdict.NOTHING
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
        self.emit(EJECTED, region, ep, reason)
        return Verdict.EJECTED


def may_eject(region: RegionState, now: float) -> bool:
    """Whether one more ejection keeps the region within ``max_ejection_percent``."""
    pct = region.cfg.health.max_ejection_percent
    if pct <= 0:
        return False
    eps = region.endpoints
    ejected = sum(1 for e in eps if e.ejected(now))
    # One ejection is always allowed; the epsilon keeps 50% of 4 at exactly 2.
    allowed = max(1, int(len(eps) * pct / 100.0 + 1e-9))
    return ejected + 1 <= allowed
