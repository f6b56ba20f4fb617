"""Serving: one worker process = one event loop with the proxy, its health checks and pollers.

``gslb serve --workers N`` starts N worker processes, each with its own ``SO_REUSEPORT``
listening socket, so the kernel spreads connections evenly (one shared accept socket wakes
workers unevenly on Linux). SIGTERM or SIGINT: stop accepting, let requests and streams in
flight finish within ``server.shutdown_grace_s``, then exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from gslb.config import Config
from gslb.geoip import GeoIP
from gslb.observe import Observer
from gslb.proxy import Proxy
from gslb.runtime import Runtime, build_runtime

log = logging.getLogger("gslb.server")


def make_session(cfg: Config) -> aiohttp.ClientSession:
    """One upstream session per worker: pooled keep-alive connections per endpoint."""
    p = cfg.proxy
    connector = aiohttp.TCPConnector(
        limit=0,  # bounded per endpoint instead
        limit_per_host=p.pool_size_per_endpoint,
        keepalive_timeout=p.keepalive_timeout_s,
        ttl_dns_cache=300,
        enable_cleanup_closed=True,
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
    """The data plane of one process: listener, proxy, upstream session, health, load."""

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
    ) -> None:
        self.cfg = cfg
        self.with_health = health
        self.clock = clock
        self.rnd = rnd or random.Random()
        self.geoip = geoip or GeoIP(cfg.geoip.database, cache_size=cfg.geoip.cache_size)
        self.runtime: Runtime = build_runtime(cfg, self.rnd)
        self.observer = observer
        self.sock = sock
        self.session: aiohttp.ClientSession | None = None
        self.proxy: Proxy | None = None
        self.runner: web.AppRunner | None = None
        self.port: int | None = None
        self.health: Any = None
        self._tasks: list[Any] = []

    async def start(self, host: str | None = None, port: int | None = None) -> None:
        cfg = self.cfg
        self.session = make_session(cfg)
        self.proxy = Proxy(
            self.runtime,
            self.geoip,
            self.session,
            observer=self.observer,
            clock=self.clock,
        )
        if self.with_health:
            self._start_health()
        app = web.Application(client_max_size=cfg.proxy.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self.proxy.handle)
        s = cfg.server
        self.runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=None,
            handler_cancellation=True,  # a client that leaves cancels its upstream request
            auto_decompress=False,  # request bodies reach the upstream byte for byte
            shutdown_timeout=s.shutdown_grace_s,
            keepalive_timeout=s.keepalive_timeout_s,
            max_line_size=s.max_line_size,
            max_field_size=s.max_field_size,
            max_headers=s.max_headers,
        )
        await self.runner.setup()
        if self.sock is not None:
            site: web.BaseSite = web.SockSite(self.runner, self.sock)
        else:
            site = web.TCPSite(
                self.runner,
                host if host is not None else s.listen.host,
                port if port is not None else s.listen.port,
                reuse_port=True,
                backlog=1024,
            )
        await site.start()
        server = getattr(site, "_server", None)
        if server is not None and server.sockets:
            self.port = server.sockets[0].getsockname()[1]

    def _start_health(self) -> None:
        """Wire passive accounting and start active checks and load pollers."""
        from gslb.health import ActiveChecker, HealthPolicy
        from gslb.loadreport import LoadPoller

        assert self.proxy is not None and self.session is not None
        policy = HealthPolicy(self.runtime.fleet, log=logging.getLogger("gslb.health"))
        self.health = policy
        self.proxy.on_outcome = policy.on_outcome
        self.proxy.on_ttfb = policy.on_ttfb
        checker = ActiveChecker(
            self.runtime.fleet, policy, self.session, clock=self.clock, rnd=self.rnd
        )
        poller = LoadPoller(self.runtime.fleet, self.session, clock=self.clock)
        checker.start()
        poller.start()
        self._tasks = [checker, poller]

    async def stop(self) -> None:
        for t in self._tasks:
            await t.stop()
        if self.runner is not None:
            await self.runner.cleanup()  # stops accepting, waits for in-flight requests
        if self.session is not None:
            await self.session.close()


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


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _run_worker(cfg: Config, sock: socket.socket | None, ready: Callable[[], None]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    worker = Worker(cfg, sock=sock)
    await worker.start()
    ready()
    log.info("worker %d serving on %s", os.getpid(), cfg.server.listen)
    await stop.wait()
    log.info("worker %d draining (grace %.0fs)", os.getpid(), cfg.server.shutdown_grace_s)
    await worker.stop()


def serve(cfg: Config, workers: int | None = None) -> int:
    """Run ``workers`` processes until SIGTERM/SIGINT. Returns an exit status."""
    install_uvloop()
    n = workers or cfg.server.workers
    host, port = cfg.server.listen.host, cfg.server.listen.port
    if n == 1:
        sock = bind_reuseport(host, port)
        asyncio.run(_run_worker(cfg, sock, lambda: None))
        return 0
    children: list[int] = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:  # child: its own socket, its own loop
            code = 0
            try:
                sock = bind_reuseport(host, port)
                asyncio.run(_run_worker(cfg, sock, lambda: None))
            except BaseException:
                log.exception("worker failed")
                code = 1
            finally:
                os._exit(code)
        children.append(pid)

    def forward(signum: int, _frame: Any) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    for pid in children:
        _, code = os.waitpid(pid, 0)
        status = status or (1 if os.waitstatus_to_exitcode(code) else 0)
    return status


def main_serve(cfg: Config, workers: int | None, path: str = "") -> int:
    try:
        return serve(cfg, workers)
    except OSError as exc:
        print(f"gslb: cannot listen on {cfg.server.listen}: {exc}", file=sys.stderr)
        return 1
