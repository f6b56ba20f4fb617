"""Everything built from one config that the request path needs, swapped as a whole on reload.

A request takes the ``Runtime`` current when it starts and keeps it to the end, so requests
and streams in flight finish on the config they started with while new ones see the new one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from gslb.clientip import TrustedProxies
from gslb.config import Config
from gslb.fleet import EndpointState, FleetState
from gslb.router import Router

# Health fields carried from an old endpoint to the same endpoint in a new config.
_CARRIED = (
    "up",
    "draining",
    "ejected_until",
    "ejections",
    "consecutive_failures",
    "cordoned_until",
    "cordoned_reason",
    "saturated_until",
    "probe_successes",
    "probe_failures",
    "reported_load",
    "reported_at",
)


@dataclass(frozen=True, slots=True)
class Runtime:
    cfg: Config
    router: Router
    fleet: FleetState
    trusted: TrustedProxies
    parse_model: bool  # some region restricts models: read the body's "model" field
    generation: int = 0


def build_runtime(
    cfg: Config,
    rnd: random.Random | None = None,
    previous: Runtime | None = None,
    now: float = 0.0,
) -> Runtime:
    """Build a runtime; with ``previous``, carry health state of unchanged endpoints over."""
    fleet = FleetState(cfg, rnd)
    if previous is not None:
        _carry_health(previous.fleet, fleet)
        fleet.refresh(now)
    return Runtime(
        cfg=cfg,
        router=Router(cfg),
        fleet=fleet,
        trusted=TrustedProxies(cfg.geoip.trusted_proxies),
        parse_model=any(r.models for r in cfg.regions),
        generation=previous.generation + 1 if previous is not None else 0,
    )


def _carry_health(old: FleetState, new: FleetState) -> None:
    """Same URL in a region of the same name and on the same node: the same server."""
    for region in new.regions:
        for ep in region.endpoints:
            prior = old.by_url.get(ep.url)
            if prior is None or old.regions[prior.region].name != region.name:
                continue
            if prior.node != ep.node:
                continue
            _copy(prior, ep)
        old_region = next((r for r in old.regions if r.name == region.name), None)
        if old_region is not None:
            region.draining = old_region.draining
            region.recovered_at = old_region.recovered_at


def _copy(src: EndpointState, dst: EndpointState) -> None:
    for name in _CARRIED:
        setattr(dst, name, getattr(src, name))
