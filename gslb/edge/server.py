"""A worker: one event loop with the public listener, the proxy, health checks and pollers.

Every worker binds its own ``SO_REUSEPORT`` socket, so the kernel spreads connections evenly
(one shared accept socket wakes workers unevenly on Linux). Processes are managed in
``supervisor.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import resource
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from gslb.core import scoring
from gslb.core.config import Config, ConfigError
from gslb.core.h1framing import ServerLimits
from gslb.core.policy import BUDGET_HEADER, CERTS_HEADER, RESIDENCY_HEADER, facts_from_headers
from gslb.edge import h1server
from gslb.edge.geoip import GeoIP
from gslb.edge.h1client import PoolLimits, UpstreamPools
from gslb.edge.h1server import H1Server
from gslb.edge.logsafety import Answer, RefusalLog, Refusals
from gslb.edge.proxy import Proxy
from gslb.edge.runtime import Runtime, build_runtime
from gslb.edge.sharedhealth import apply_share, worker_share
from gslb.ops.accesslog import AccessLog
from gslb.ops.metrics import Metrics
from gslb.ops.observe import Observer, Observers, RequestRecord
from gslb.ops.periodic import HttpProber, HttpScraper, PeriodicRunner
from gslb.ops.recent import RecentActivity

log = logging.getLogger("gslb.edge.server")
LEARN_INTERVAL_S = 1.0


def server_limits(cfg: Config) -> ServerLimits:
    """The listener's limits from ``[server]`` and ``[proxy]``."""
    s = cfg.server
    return ServerLimits(
        max_connections=s.max_connections,
        max_line_size=s.max_line_size,
        max_field_size=s.max_field_size,
        max_headers=s.max_headers,
        max_body_bytes=cfg.proxy.max_body_bytes,
        keepalive_timeout_s=s.keepalive_timeout_s,
        header_timeout_s=s.header_timeout_s,
        body_timeout_s=s.body_timeout_s,
        min_upload_rate=s.min_upload_rate,
        min_upload_grace_s=s.min_upload_grace_s,
        send_timeout_s=s.send_timeout_s,
    )


def pool_limits(cfg: Config) -> PoolLimits:
    """The upstream pools' limits and time-outs from ``[proxy]``."""
    p = cfg.proxy
    return PoolLimits(
        size=p.pool_size_per_endpoint,
        keepalive_timeout_s=p.keepalive_timeout_s,
        connect_timeout_s=p.connect_timeout_s,
        idle_timeout_s=p.idle_timeout_s,
        source_address=cfg.server.source_address,
    )


def _same_tls(old: Runtime, new: Runtime) -> Callable[[str], bool]:
    """Whether an endpoint origin's pool may stay: still in the config, same TLS settings."""

    def tls_of(rt: Runtime, url: str) -> object:
        ep = rt.fleet.by_url.get(url)
        return None if ep is None else rt.cfg.regions[ep.region].tls

    def keep(origin: str) -> bool:
        return origin in new.fleet.by_url and tls_of(old, origin) == tls_of(new, origin)

    return keep


def make_session(cfg: Config) -> aiohttp.ClientSession:
    """The session of health probes and load scrapes (the data plane has its own pools)."""
    p = cfg.proxy
    connector = aiohttp.TCPConnector(
        limit=0,
        limit_per_host=8,  # probes and scrapes: a few per endpoint at most
        keepalive_timeout=p.keepalive_timeout_s,
        ttl_dns_cache=300,
        enable_cleanup_closed=True,
        local_addr=(cfg.server.source_address, 0) if cfg.server.source_address else None,
    )
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,  # bytes and Content-Encoding pass through untouched
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=p.connect_timeout_s),
        cookie_jar=aiohttp.DummyCookieJar(),  # a proxy keeps no cookies
        read_bufsize=2**16,
    )


class Worker:
    """The data plane of one process: listener, proxy, upstream session, health, load.

    Also the worker's side of the control plane: status, explain, drains and reloads, which
    the admin listener reaches directly (one worker) or over a control socket (several).
    """

    def __init__(
        self,
        cfg: Config,
        *,
        geoip: GeoIP | None = None,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.monotonic,
        rnd: random.Random | None = None,
        sock: socket.socket | None = None,
        health: bool = True,
        shared_health: bool = False,
        access_log: AccessLog | None = None,
    ) -> None:
        self.cfg = cfg
        self.with_health = health
        # Under a supervisor the instance probes once, in the supervisor (gslb.ops.healthhub),
        # which sends every worker the results (``apply_shared``).
        self.shared_health = shared_health
        self._shared_seen = asyncio.Event()
        self.clock = clock
        self.rnd = rnd or random.Random()
        self.geoip = geoip or GeoIP(cfg.geoip.database, cache_size=cfg.geoip.cache_size)
        self.metrics = Metrics(lambda: self.runtime.fleet, self.geoip_stats, clock)
        self.runtime: Runtime = build_runtime(cfg, self.rnd, on_event=self.metrics.health_event)
        self.recent = RecentActivity(clock=clock)
        self.access_log = access_log if access_log is not None else AccessLog.from_config(cfg.log)
        observers: list[Observer] = [self.metrics, self.recent, self.access_log]
        if observer is not None:
            observers.append(observer)
        self.observer = Observers(*observers)
        self.sock = sock
        self.session: aiohttp.ClientSession | None = None
        self.proxy: Proxy | None = None
        self.port: int | None = None
        self.ready = False
        self.started_at = clock()
        self.tls: ssl.SSLContext | None = listener_tls(cfg)
        self.listener: H1Server | None = None
        self.pools: UpstreamPools | None = None
        self._background: BackgroundTasks | None = None

    def geoip_stats(self) -> dict[str, int]:
        return self.geoip.stats

    async def start(self, host: str | None = None, port: int | None = None) -> None:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        self.session = make_session(cfg)  # health probes and load scrapes only
        self.pools = UpstreamPools(pool_limits(cfg), self._upstream_ssl)
        self.proxy = Proxy(
            self.runtime, self.geoip, self.pools, observer=self.observer, clock=self.clock
        )
        if self.with_health:
            self._background = self._tasks_for(self.runtime)
            if self.shared_health:  # ready once the supervisor's first round is in
                self._background.runner.start()
                await self._shared_seen.wait()
            else:
                await self._background.start(initial=True)
        self.ready = True
        refusals = Refusals(
            RefusalLog(call_later=loop.call_later),
            via=lambda: self.cfg.proxy.via,
            client_ip=lambda: self.cfg.log.client_ip,
            on_refused=self._refused,
        )
        s = cfg.server
        if self.sock is None:
            self.sock = bind_reuseport(
                host if host is not None else s.listen.host,
                port if port is not None else s.listen.port,
            )
        self.listener = await h1server.serve(
            self.proxy.handle, self.sock, limits=server_limits(cfg), ssl=self.tls, refusals=refusals
        )
        self.metrics.connections.listener = self.listener
        self.metrics.connections.pools = self.pools
        self.port = self.listener.port

    def _upstream_ssl(self, origin: str) -> ssl.SSLContext | bool | None:
        """The TLS setting of the region an endpoint origin belongs to (current runtime).
        Asked once per pool (when the first request to an origin opens one), not per request."""
        rt = self.runtime
        for region in rt.fleet.regions:
            if any(ep.url == origin for ep in region.endpoints):
                return rt.upstream_ssl[region.index]
        return True  # not in this config (any more): never less than verified TLS

    def _refused(self, answer: Answer, client: str | None) -> None:
        """A request the listener refused: counted, and a line in the access log."""
        self.metrics.refused(answer.reason)
        record = RequestRecord(
            request_id=answer.request_id,
            method="-",
            path="-",  # a refused request's bytes are never kept, its target included
            status=answer.status,
            region=None,
            route=answer.reason,
            attempts=0,
            ttfb_s=None,
            duration_s=0.0,
            bytes_in=0,
            bytes_out=len(answer.body),
            country=None,
            client=client,
            error=answer.reason,
        )
        self.access_log.request_done(record)

    async def stop(self) -> None:
        if self.listener is not None:
            # Stop accepting; idle connections close now, busy ones after their response, and
            # whatever is still open after the grace is cut.
            self.listener.close(self.cfg.server.shutdown_grace_s)
        if self._background is not None:
            await self._background.stop()
        if self.listener is not None:
            await self.listener.wait_closed()
        if self.pools is not None:
            self.pools.close()
        if self.session is not None:
            await self.session.close()
        self.access_log.close()

    # -- control ---------------------------------------------------------------------------

    async def reload(self, cfg: Config) -> None:
        """Swap to a new config; raises ``ConfigError`` and keeps the old one when it fails.

        Requests in flight keep the runtime they started with. Health and ejection state
        carry over for endpoints that did not change; listener and GeoIP settings need a
        restart (a warning says so).
        """
        old = self.runtime
        new = build_runtime(
            cfg, self.rnd, previous=old, now=self.clock(), on_event=self.metrics.health_event
        )
        if cfg.server != old.cfg.server or cfg.geoip.database != old.cfg.geoip.database:
            log.warning("reload: [server] and geoip.database changes take effect on restart")
        tls = listener_tls(cfg) if self.tls is not None and cfg.server.tls_cert else None
        background = self._tasks_for(new) if self.with_health else None
        if background is not None:
            await background.start(initial=False)
        old_background, self._background = self._background, background
        self.runtime = new
        if self.proxy is not None:
            self.proxy.runtime = new
        if self.pools is not None:
            self.pools.reconfigure(pool_limits(cfg), self._upstream_ssl, _same_tls(old, new))
        if self.listener is not None:
            self.listener.set_limits(server_limits(cfg))
            if tls is not None:  # new handshakes use the new certificate; open ones keep theirs
                self.tls = tls
                await self.listener.set_ssl(tls)
        self.cfg = cfg
        if old_background is not None:
            await old_background.stop()
        old.health.close()
        log.info("reload: now on generation %d", new.generation)

    def _tasks_for(self, rt: Runtime) -> BackgroundTasks:
        assert self.session is not None
        return BackgroundTasks(
            self.session, rt, self.clock, self.rnd, probes=not self.shared_health
        )

    def apply_shared(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Take the supervisor's health results (``gslb.ops.healthhub.HealthHub.snapshot``);
        answer with what only this worker knows: its requests in flight and its TTFB."""
        rt = self.runtime
        apply_share(rt, doc, self.clock(), initial=not self._shared_seen.is_set())
        self._shared_seen.set()
        return worker_share(rt)

    def drain(self, draining: bool, target: dict[str, str]) -> dict[str, Any]:
        """Drain or undrain a region, node or endpoint; raises KeyError for unknown targets."""
        rt = self.runtime
        eps = rt.fleet.set_draining(draining, self.clock(), **target)
        progress = rt.health.drain_status(eps)
        if not draining:
            progress["drained"] = False  # "drained" answers a drain, not an undrain
        return {"target": target, "draining": draining, **progress}

    def status(self) -> dict[str, Any]:
        """This worker's view for ``/status``: config facts plus live health per region."""
        rt = self.runtime
        now = self.clock()
        health: dict[str, dict[str, Any]] = rt.health.status(now)["regions"]  # type: ignore[assignment]
        regions = []
        for region in rt.fleet.regions:
            cfg = region.cfg
            doc = {
                "name": region.name,
                "provider": cfg.provider,
                "tier": cfg.tier,
                "jurisdiction": cfg.jurisdiction,
                "role": cfg.role,
                "location": list(cfg.location),
                "capacity": cfg.capacity,
                **health[region.name],
            }
            doc["util"] = round(doc["load"] / cfg.capacity, 4)
            doc["service_ms"] = rt.router.service_ms[region.index]
            for ep_doc, ep in zip(doc["endpoints"], region.endpoints, strict=True):
                ep_doc["capacity_type"] = ep.cfg.capacity_type
            regions.append(doc)
        return {
            "generation": rt.generation,
            "uptime_s": round(now - self.started_at, 1),
            "backend": scoring.BACKEND,
            "ready": self.ready,
            "workers": 1,
            "config": rt.cfg.source,
            "regions": regions,
            "decisions": dict(self.recent.decisions),
            "spills": self.recent.spills(),
        }

    def explain(
        self,
        ip_text: str,
        budget_ms: float | None,
        certs: str | None,
        residency: str | None,
        model: str | None,
    ) -> dict[str, Any]:
        """The ``gslb route`` answer for live state; raises ValueError for bad input."""
        from gslb.core.clientip import parse_ip
        from gslb.core.explain import decision_document

        rt = self.runtime
        ip = parse_ip(ip_text)
        if ip is None:
            raise ValueError(f"ip: {ip_text[:64]!r} is not an IP address")
        location = self.geoip.lookup(ip)
        headers = {
            BUDGET_HEADER: None if budget_ms is None else str(budget_ms),
            CERTS_HEADER: certs,
            RESIDENCY_HEADER: residency,
        }
        facts = facts_from_headers(headers.get, location, rt.cfg, model)
        decision = rt.router.decide(facts, rt.fleet.view, explain=True)
        return decision_document(
            str(ip), location, facts, decision, rt.router.residency_rules(facts)
        )


class BackgroundTasks:
    """The background tasks of one runtime, on one periodic runner (``gslb.ops.periodic``).

    Active probes, load scrapes, the health policy's tick and service-time learning. A reload
    starts the new runtime's set before it stops the old one's.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        rt: Runtime,
        clock: Callable[[], float],
        rnd: random.Random,
        *,
        probes: bool = True,
    ) -> None:
        self.rt = rt
        self.runner = PeriodicRunner(
            rt.fleet,
            rt.health,
            HttpProber(session, rt.upstream_ssl, clock=clock),
            HttpScraper(session, rt.upstream_ssl),
            clock=clock,
            rnd=rnd,
            probes=probes,
        )
        self.runner.every("learn", LEARN_INTERVAL_S, self._learn_service_times)

    async def start(self, initial: bool) -> None:
        if initial:  # ready only once the first health round is in
            await self.runner.run_round(initial=True)
        self.runner.start()

    async def stop(self) -> None:
        await self.runner.stop()

    def _learn_service_times(self) -> None:
        """Correct each region's modeled service time from observed durations (docs/health.md)."""
        rt = self.rt
        for i in range(len(rt.fleet.regions)):
            observed = rt.health.service_ms_correction(i)
            if observed is not None:
                rt.router.set_service_ms(i, observed)


def listener_tls(cfg: Config) -> ssl.SSLContext | None:
    """TLS for the public listener, when configured; a bad file is a ConfigError."""
    s = cfg.server
    if not s.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(s.tls_cert, s.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("server.tls_cert", f"cannot load {s.tls_cert}: {exc}") from None
    return ctx


# --------------------------------------------------------------------------- processes


def bind_reuseport(host: str, port: int) -> socket.socket:
    """A listening socket with SO_REUSEPORT, so every worker can bind the same port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def ensure_unclaimed(host: str, port: int) -> None:
    """Raise ``OSError`` (EADDRINUSE) when some socket already listens on ``host:port``.

    SO_REUSEPORT would let a second gslb join a running one's port and take a share of its
    traffic without a word. On Linux a bind with SO_REUSEADDR but without SO_REUSEPORT fails
    while any socket listens on the address (even one with SO_REUSEPORT), yet succeeds over
    TIME_WAIT leftovers of a previous run. The process that starts the listeners probes
    once; a respawned worker does not, since its siblings hold the port.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


def raise_fd_limit(cfg: Config) -> None:
    """Lift the soft open-files limit to the hard one; warn when it is still too low.

    Each proxied connection holds two descriptors (client and upstream), so
    ``server.max_connections`` needs about twice as many, plus health and load pollers.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    need = 2 * cfg.server.max_connections + 64 + 2 * sum(len(r.endpoints) for r in cfg.regions)
    if soft < need:
        log.warning(
            "open-files limit %d is below the %d that server.max_connections = %d needs; "
            "raise it (ulimit -n) or lower max_connections",
            soft,
            need,
            cfg.server.max_connections,
        )


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
