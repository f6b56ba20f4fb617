"""Node cordons: when one GPU server on a node fails, take its siblings out for a while. Pure.

Rules (docs/design.md, section 6), and the choices made where it is silent:

- When an endpoint goes down (active checks) or is ejected (passive), the other endpoints on
  its node are cordoned for ``cordon_s``: GPUs on one node share power, network and driver,
  and often fail together.
- Two exceptions, both so that a guess never costs more than the failure it predicts: an
  endpoint that was draining (maintenance, preemption notice) does not cordon its siblings,
  and a cordon that would leave its region with no available endpoint is skipped (logged):
  the siblings keep serving under their own checks instead of the whole region failing over
  on a prediction.
- The first probe round never cordons; the facade (``healthpolicy``) simply does not ask.
"""

from __future__ import annotations

import logging
from collections import Counter

from gslb.core.fleet import EndpointState, RegionState
from gslb.core.healthevents import CORDON_SKIPPED, CORDONED, Emit


class NodeCordons:
    """Cordons of one fleet's nodes; time is passed in."""

    def __init__(self, log: logging.Logger, emit: Emit) -> None:
        self.log = log
        self.emit = emit
        self.cordons_total: Counter[str] = Counter()

    def cordon_siblings(
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
            self.emit(CORDON_SKIPPED, region, src, reason)
            return
        until = now + health.cordon_s
        for e in siblings:
            e.cordoned_until = max(e.cordoned_until, until)
            e.cordoned_reason = reason
            self.emit(CORDONED, region, e, reason)
        self.cordons_total[region.name] += len(siblings)
        self.log.warning(
            "cordoning node %s in region %s for %.0fs (%s): %s",
            src.node,
            region.name,
            health.cordon_s,
            reason,
            ", ".join(e.url for e in siblings),
        )

    @staticmethod
    def lapsed(ep: EndpointState, last: float, now: float) -> bool:
        """Whether ``ep``'s cordon ran out in ``(last, now]``; clears its reason if so."""
        if last < ep.cordoned_until <= now:
            ep.cordoned_reason = ""  # so no reader shows a reason for a lapsed cordon
            return True
        return False
