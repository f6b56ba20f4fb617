"""The periodic runner: probes, load scrapes and the policy tick, on jittered timers. I/O shell.

``PeriodicRunner`` owns every background loop of one runtime's health: an active probe per
endpoint, a load scrape per endpoint whose region sets ``load.kind``, the ``HealthPolicy``
tick, and any other periodic job its owner adds (``every``, e.g. service-time learning). It
reads the clock to stamp results, waits on the event loop's timers, and hands each result
to the pure policy (``on_probe``, ``on_initial_probe``, ``on_load_report``, ``tick``).

The I/O itself sits behind two small protocols, so tests drive the real runner with
scripted fakes (``tests/fakes.py``) and no sockets:

- ``Prober``: probe one endpoint, answer (ok, round-trip seconds);
- ``Scraper``: fetch one endpoint's load page as text.

``HttpProber`` and ``HttpScraper`` are the aiohttp implementations. Both use the region's
upstream TLS setting (CA bundle, client certificate), as the proxy does.

One task per endpoint and job, rather than one task per cadence: a slow or hanging endpoint
(bounded by its ``timeout_s``, which may exceed the interval) delays only its own next probe,
each endpoint's first run waits a random part of its interval so a large fleet does not probe
in lockstep, and ``stop`` is one cancel per task. Runs are spaced start to start by the
interval, jittered by ``± jitter`` (a fraction: ``health.jitter`` for probes, 10% for
scrapes). Each probe and scrape is bounded by its ``timeout_s`` here too, whatever the
implementation does; a probe that times out or raises counts as failed.

Scrape failures: an unreadable page (``LoadReportError``: wrong ``kind``, too large, not
UTF-8) is logged as a warning the first time for an endpoint (a wrong ``kind`` would
otherwise go unnoticed) and at debug after that until it reads again; an unreachable server
is logged at debug only, since health checks deal with it. A failed scrape leaves the last
report in place; ``load.max_age_s`` retires it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Protocol

import aiohttp

from gslb.core.config import LOAD_NONE, HealthConfig, LoadConfig
from gslb.core.fleet import EndpointState, FleetState
from gslb.core.healthpolicy import HealthPolicy
from gslb.core.loadreport import LoadReport, LoadReportError, parse

HEALTH_LOG: Final = logging.getLogger("gslb.health")
LOAD_LOG: Final = logging.getLogger("gslb.core.loadreport")

TICK_INTERVAL_S: Final = 0.25
LOAD_JITTER: Final = 0.1  # so endpoints' scrapes drift apart
MAX_BODY_BYTES: Final = 4 * 1024 * 1024  # a metrics page larger than this is a misconfiguration

Sleep = Callable[[float], Awaitable[None]]


class Prober(Protocol):
    """Probes one endpoint; failures are answers (ok False), not exceptions."""

    async def probe(self, ep: EndpointState, health: HealthConfig) -> tuple[bool, float | None]:
        """(ok, round-trip seconds or None) for one probe of ``ep``."""
        ...


class Scraper(Protocol):
    """Fetches one endpoint's load page."""

    async def scrape(self, ep: EndpointState, load: LoadConfig) -> str:
        """The page's text; raises ``LoadReportError`` when it is unreadable, else any error."""
        ...


class ScrapeError(Exception):
    """The server answered, but not with a load page (a non-200 status)."""


def jittered(interval_s: float, jitter: float, rnd: random.Random) -> float:
    """``interval_s`` spread uniformly by ``± jitter`` of itself."""
    return interval_s * (1.0 + jitter * (2.0 * rnd.random() - 1.0))


class PeriodicRunner:
    """Drives one fleet's probes, load scrapes and policy tick (see the module docstring)."""

    def __init__(
        self,
        fleet: FleetState,
        policy: HealthPolicy,
        prober: Prober,
        scraper: Scraper,
        *,
        rnd: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        tick_interval_s: float = TICK_INTERVAL_S,
        sleep: Sleep = asyncio.sleep,
        probes: bool = True,
    ) -> None:
        self.fleet = fleet
        # False: another process probes and scrapes for this one (a supervisor's workers);
        # the tick and the extra jobs still run here.
        self.probes = probes
        self.policy = policy
        self.prober = prober
        self.scraper = scraper
        self.rnd = rnd or random.Random()
        self.clock = clock
        self.tick_interval_s = tick_interval_s
        self._sleep = sleep
        self._extra: list[tuple[str, float, Callable[[], None]]] = []
        self._warned: set[str] = set()  # load URLs whose unreadable page was warned about
        self._tasks: list[asyncio.Task[None]] = []

    def every(self, name: str, interval_s: float, job: Callable[[], None]) -> None:
        """Run ``job`` every ``interval_s`` once started, the first time after one interval."""
        self._extra.append((name, interval_s, job))

    def load_endpoints(self) -> list[EndpointState]:
        """The endpoints whose region has ``load.kind != "none"``."""
        return [e for e in self.fleet.endpoints() if self._load(e).kind != LOAD_NONE]

    def start(self) -> None:
        if self._tasks:
            return
        for ep in self.fleet.endpoints() if self.probes else ():
            health = self._health(ep)
            self._spawn(
                f"health:{ep.url}",
                health.interval_s,
                health.jitter,
                self.rnd.random() * health.interval_s,
                self._prober_job(ep),
            )
        for ep in self.load_endpoints() if self.probes else ():
            load = self._load(ep)
            self._spawn(
                f"load:{ep.url}",
                load.interval_s,
                LOAD_JITTER,
                self.rnd.random() * load.interval_s,
                self._scraper_job(ep),
            )
        self._spawn("health:tick", self.tick_interval_s, 0.0, 0.0, self._sync(self._tick))
        for name, interval_s, job in self._extra:
            self._spawn(name, interval_s, 0.0, interval_s, self._sync(job))

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- one run of each kind -------------------------------------------------------------------

    async def probe_once(self, ep: EndpointState, initial: bool = False) -> bool:
        """Probe one endpoint and report the result; never raises (except cancellation)."""
        health = self._health(ep)
        try:
            async with asyncio.timeout(health.timeout_s):
                ok, rtt = await self.prober.probe(ep, health)
        except Exception as exc:  # a hang past timeout_s, or a prober bug: a failed probe
            HEALTH_LOG.debug("health check %s failed: %s %s", ep.url, type(exc).__name__, exc)
            ok, rtt = False, None
        report = self.policy.on_initial_probe if initial else self.policy.on_probe
        try:
            report(ep, ok, rtt if ok else None, self.clock())
        except Exception:  # a policy bug must not stop health checking
            HEALTH_LOG.exception("health policy failed on probe of %s", ep.url)
        return ok

    async def run_round(self, initial: bool = False) -> None:
        """Probe every endpoint once, concurrently, then tick (the first round before ready).

        ``initial=True`` makes failures decisive (see ``HealthPolicy.on_initial_probe``).
        """
        eps = list(self.fleet.endpoints())
        await asyncio.gather(*(self.probe_once(ep, initial) for ep in eps))
        self.policy.tick(self.clock())

    async def scrape_once(self, ep: EndpointState) -> LoadReport | None:
        """Scrape one endpoint; report and return its load, or None. Never raises."""
        load = self._load(ep)
        url = ep.url + load.path
        try:
            async with asyncio.timeout(load.timeout_s):
                text = await self.scraper.scrape(ep, load)
            report = parse(load.kind, text)
        except LoadReportError as exc:
            self._unreadable(url, exc)
            return None
        except Exception as exc:  # unreachable, time-out, reset: health checks deal with those
            LOAD_LOG.debug("load report %s failed: %s %s", url, type(exc).__name__, exc)
            return None
        self._warned.discard(url)
        self.policy.on_load_report(ep, report.load, self.clock())
        return report

    async def scrape_round(self) -> None:
        """Scrape every load endpoint once, concurrently."""
        await asyncio.gather(*(self.scrape_once(ep) for ep in self.load_endpoints()))

    # -- the loops ------------------------------------------------------------------------------

    def _spawn(
        self,
        name: str,
        interval_s: float,
        jitter: float,
        first_s: float,
        job: Callable[[], Awaitable[object]],
    ) -> None:
        loop = self._loop(name, interval_s, jitter, first_s, job)
        self._tasks.append(asyncio.create_task(loop, name=name))

    async def _loop(
        self,
        name: str,
        interval_s: float,
        jitter: float,
        first_s: float,
        job: Callable[[], Awaitable[object]],
    ) -> None:
        await self._sleep(first_s)
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await job()
            except Exception:  # the jobs swallow failures: this is a bug, keep the loop alive
                HEALTH_LOG.exception("periodic job %s failed", name)
            delay = jittered(interval_s, jitter, self.rnd) - (loop.time() - started)
            await self._sleep(max(0.0, delay))

    def _prober_job(self, ep: EndpointState) -> Callable[[], Awaitable[bool]]:
        return lambda: self.probe_once(ep)

    def _scraper_job(self, ep: EndpointState) -> Callable[[], Awaitable[LoadReport | None]]:
        return lambda: self.scrape_once(ep)

    @staticmethod
    def _sync(job: Callable[[], None]) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            job()

        return run

    def _tick(self) -> None:
        self.policy.tick(self.clock())

    def _unreadable(self, url: str, exc: LoadReportError) -> None:
        if url in self._warned:
            LOAD_LOG.debug("load report %s unreadable: %s", url, exc)
            return
        self._warned.add(url)
        LOAD_LOG.warning("load report %s unreadable: %s", url, exc)

    def _health(self, ep: EndpointState) -> HealthConfig:
        return self.fleet.regions[ep.region].cfg.health

    def _load(self, ep: EndpointState) -> LoadConfig:
        return self.fleet.regions[ep.region].cfg.load


# --------------------------------------------------------------------------------------------
# aiohttp implementations

UpstreamSSL = Sequence[ssl.SSLContext | bool]


class HttpProber:
    """``GET url + health.path``; ok when the status is one of ``health.expected_status``.

    ``upstream_ssl`` is ``Runtime.upstream_ssl`` (one setting per region); empty means
    aiohttp's default (verified against the system CAs).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        upstream_ssl: UpstreamSSL = (),
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session = session
        self.upstream_ssl = upstream_ssl
        self.clock = clock

    async def probe(self, ep: EndpointState, health: HealthConfig) -> tuple[bool, float | None]:
        url = ep.url + health.path
        started = self.clock()
        try:
            async with self.session.get(
                url,
                timeout=aiohttp.ClientTimeout(total=health.timeout_s),
                allow_redirects=False,
                ssl=_ssl_for(self.upstream_ssl, ep),
            ) as resp:
                await resp.read()  # health bodies are tiny; reading keeps the connection reusable
                status = resp.status
        except Exception as exc:  # time-outs, refused connections, resets: all mean "failed"
            HEALTH_LOG.debug("health check %s failed: %s %s", url, type(exc).__name__, exc)
            return False, None
        if status not in health.expected_status:
            HEALTH_LOG.debug("health check %s failed: HTTP %d", url, status)
            return False, None
        return True, self.clock() - started


class HttpScraper:
    """``GET url + load.path``: the body of a 200 answer, at most ``max_body_bytes``."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        upstream_ssl: UpstreamSSL = (),
        *,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.session = session
        self.upstream_ssl = upstream_ssl
        self.max_body_bytes = max_body_bytes

    async def scrape(self, ep: EndpointState, load: LoadConfig) -> str:
        async with self.session.get(
            ep.url + load.path,
            timeout=aiohttp.ClientTimeout(total=load.timeout_s),
            allow_redirects=False,
            ssl=_ssl_for(self.upstream_ssl, ep),
        ) as resp:
            if resp.status != 200:
                raise ScrapeError(f"HTTP {resp.status}")
            body = bytearray()
            async for chunk in resp.content.iter_any():
                body += chunk
                if len(body) > self.max_body_bytes:
                    raise LoadReportError(f"response larger than {self.max_body_bytes} bytes")
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise LoadReportError("response is not UTF-8 text") from None


def _ssl_for(upstream_ssl: UpstreamSSL, ep: EndpointState) -> ssl.SSLContext | bool:
    return upstream_ssl[ep.region] if upstream_ssl else True
