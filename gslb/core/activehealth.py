"""Active health: rise and fall over probe results, and the decisive first round. Pure.

Rules (docs/design.md, section 6), and the choices made where it is silent:

- ``up`` flips to False after ``fall`` failed probes in a row and back after ``rise``
  successes in a row.
- ``on_initial_probe`` (the runner's first round, before the edge reports ready) marks an
  endpoint that fails down at once: a fresh edge has no evidence it ever worked. The first
  round never cordons (a node whose servers are still loading weights is not failing); the
  facade (``healthpolicy``) reads that from which entry point reported the failure.

Probes themselves (HTTP, time-outs, jitter) are the shell's (``gslb.ops.periodic``); this module
sees only "ok or not".
"""

from __future__ import annotations

import enum
import logging

from gslb.core.fleet import EndpointState, FleetState, RegionState
from gslb.core.healthevents import DOWN, UP, Emit


class Transition(enum.Enum):
    """What one probe result changed."""

    NONE = "none"
    UP = "up"
    DOWN = "down"


class ActiveHealth:
    """Rise/fall hysteresis over one fleet's probe results."""

    def __init__(self, fleet: FleetState, log: logging.Logger, emit: Emit) -> None:
        self.fleet = fleet
        self.log = log
        self.emit = emit

    def on_probe(self, ep: EndpointState, ok: bool) -> Transition:
        """One active check result."""
        region = self.fleet.regions[ep.region]
        health = region.cfg.health
        if ok:
            ep.probe_failures = 0
            ep.probe_successes += 1
            if not ep.up and ep.probe_successes >= health.rise:
                return self._mark_up(region, ep)
            return Transition.NONE
        ep.probe_successes = 0
        ep.probe_failures += 1
        if ep.up and ep.probe_failures >= health.fall:
            return self._mark_down(region, ep, f"{ep.probe_failures} failed health checks")
        return Transition.NONE

    def on_initial_failure(self, ep: EndpointState) -> Transition:
        """A failed probe of the first round: down at once, as if ``fall`` had been reached."""
        region = self.fleet.regions[ep.region]
        ep.probe_successes = 0
        ep.probe_failures = max(ep.probe_failures + 1, region.cfg.health.fall)
        if ep.up:
            return self._mark_down(region, ep, "failed the first health check")
        return Transition.NONE

    def set_up(self, ep: EndpointState, up: bool) -> Transition:
        """Take another prober's verdict (the supervisor's, shared with its workers)."""
        region = self.fleet.regions[ep.region]
        if up and not ep.up:
            return self._mark_up(region, ep)
        if not up and ep.up:
            return self._mark_down(region, ep, "the instance's health checks failed")
        return Transition.NONE

    def _mark_up(self, region: RegionState, ep: EndpointState) -> Transition:
        ep.up = True
        self.log.info(
            "endpoint %s (region %s) is up: %d health checks passed",
            ep.url,
            region.name,
            ep.probe_successes,
        )
        self.emit(UP, region, ep, f"{ep.probe_successes} health checks passed")
        return Transition.UP

    def _mark_down(self, region: RegionState, ep: EndpointState, reason: str) -> Transition:
        ep.up = False
        self.log.warning("endpoint %s (region %s) is down: %s", ep.url, region.name, reason)
        self.emit(DOWN, region, ep, reason)
        return Transition.DOWN
