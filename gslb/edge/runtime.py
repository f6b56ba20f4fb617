"""Everything built from one config that the request path needs, swapped as a whole on reload.

A request takes the ``Runtime`` current when it starts and keeps it to the end, so requests
and streams in flight finish on the config they started with while new ones see the new one.
"""

from __future__ import annotations

import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import aiohttp

from gslb.core.clientip import HeaderSource, TrustedProxies
from gslb.core.config import X_FORWARDED_FOR, Config, ConfigError, UpstreamTLSConfig
from gslb.core.fleet import EndpointState, FleetState
from gslb.core.healthevents import HealthEvent
from gslb.core.healthpolicy import HealthPolicy
from gslb.core.router import Router

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
    "fleet_down",
    "peer_inflight",
)


@dataclass(frozen=True, slots=True)
class Runtime:
    cfg: Config
    router: Router
    fleet: FleetState
    trusted: TrustedProxies
    health: HealthPolicy
    parse_model: bool  # some region restricts models: read the body's "model" field
    # Per region: True = verify with the system CAs, False = no verification (opt-in),
    # or a context with the region's CA bundle and client certificate (mTLS).
    upstream_ssl: tuple[ssl.SSLContext | bool, ...]
    # Connect time-out, and idle_timeout_s as the bound on every wait for upstream bytes
    # (the commit window is bounded separately by ttft_timeout_s).
    upstream_timeout: aiohttp.ClientTimeout
    # The one header that carries the client address from a trusted proxy (geoip config).
    address_header: HeaderSource = X_FORWARDED_FOR
    generation: int = 0


def build_runtime(
    cfg: Config,
    rnd: random.Random | None = None,
    previous: Runtime | None = None,
    now: float = 0.0,
    on_event: Callable[[HealthEvent], None] | None = None,
) -> Runtime:
    """Build a runtime; with ``previous``, carry health state of unchanged endpoints over.

    Raises ``ConfigError`` when a file the config names (CA bundle, client certificate)
    cannot be loaded: a reload then keeps the running config.
    """
    upstream_ssl = tuple(
        upstream_ssl_context(r.tls, f"regions[{i}].tls") for i, r in enumerate(cfg.regions)
    )
    fleet = FleetState(cfg, rnd)
    health = HealthPolicy(fleet, on_event=on_event)
    if previous is not None:
        _carry_health(previous.fleet, fleet)
        fleet.refresh(now)
    return Runtime(
        cfg=cfg,
        router=Router(cfg),
        fleet=fleet,
        trusted=TrustedProxies(cfg.geoip.trusted_proxies),
        health=health,
        parse_model=any(r.models for r in cfg.regions),
        upstream_ssl=upstream_ssl,
        upstream_timeout=aiohttp.ClientTimeout(
            total=None,
            sock_connect=cfg.proxy.connect_timeout_s,
            sock_read=cfg.proxy.idle_timeout_s,
        ),
        address_header=cast(HeaderSource, cfg.geoip.forwarded_header),
        generation=previous.generation + 1 if previous is not None else 0,
    )


def upstream_ssl_context(tls: UpstreamTLSConfig, path: str) -> ssl.SSLContext | bool:
    """The TLS client setting for one region's upstreams, built at config load."""
    if not tls.verify and not tls.cert_file:
        return False
    if tls.verify and not tls.ca_file and not tls.cert_file:
        return True  # aiohttp's default: verified against the system CAs
    try:
        ctx = ssl.create_default_context(cafile=tls.ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{path}.ca_file", f"cannot load {tls.ca_file}: {exc}") from None
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.cert_file:
        try:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{path}.cert_file", f"cannot load {tls.cert_file}: {exc}") from None
    return ctx


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
