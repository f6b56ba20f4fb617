"""Region hold-down: a region back from a health outage waits before it takes traffic. Pure.

Rules (docs/design.md, section 6), and the choices made where it is silent:

- A region that became unroutable for health reasons gets ``recovered_at = now`` when it is
  routable again, so the router's gate (``FleetState.held_down``) sends it traffic only after
  ``standby_hold_down_s``. This damps flapping for every region and is how a standby hands
  traffic back after an active region recovers.
- A region that was never down (fresh start) has ``recovered_at = None`` and serves at once;
  a region that was unroutable only because an operator drained it serves at once when
  undrained.

``FleetState`` tells the facade when a region's routability flips; the facade passes that
on to ``on_region_change`` here.
"""

from __future__ import annotations

import logging

from gslb.core.fleet import RegionState
from gslb.core.healthevents import REGION_ROUTABLE, REGION_UNROUTABLE, Emit


def down_for_health(region: RegionState) -> bool:
    """Unroutable because endpoints failed, not (only) because an operator drained them."""
    return not region.draining and any(not e.draining for e in region.endpoints)


class HoldDown:
    """Which regions went down for health reasons, and when each one's hold-down ends."""

    def __init__(self, log: logging.Logger, emit: Emit) -> None:
        self.log = log
        self.emit = emit
        self._health_down: set[int] = set()  # region indexes owed a hold-down

    def observe(self, region: RegionState) -> None:
        """Note an unroutable region that is down for health (called on every tick).

        Catches regions that went down while drained and were undrained unhealthy: no
        routability flip announced that.
        """
        if not region.routable and down_for_health(region):
            self._health_down.add(region.index)

    def on_region_change(self, region: RegionState, routable: bool, now: float) -> None:
        if not routable:
            if down_for_health(region):
                self._health_down.add(region.index)
                self.log.warning("region %s is not routable: no available endpoint", region.name)
                self.emit(REGION_UNROUTABLE, region, None, "no available endpoint")
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
        self.emit(REGION_ROUTABLE, region, None, f"hold-down {hold:g}s")

    @staticmethod
    def lapsed(region: RegionState, last: float, now: float) -> bool:
        """Whether the region's hold-down ran out in ``(last, now]``."""
        rec = region.recovered_at
        return rec is not None and last < rec + region.cfg.health.standby_hold_down_s <= now

    @staticmethod
    def remaining(region: RegionState, now: float) -> float:
        """Seconds until a routable region takes traffic again (0 when not held down)."""
        if region.recovered_at is None or not region.routable:
            return 0.0
        hold = region.cfg.health.standby_hold_down_s
        return max(0.0, region.recovered_at + hold - now)
