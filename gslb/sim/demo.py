"""``gslb demo``: the product running on a world of simulated regions, on loopback.

Starts a fake OpenAI-compatible server for every endpoint of the demo config (by default the
embedded ``gslb/data/demo.toml``), then gslb's proxy and admin listener in the same process,
and prints what to try. The printed landing regions are computed by the router itself from
the bundled GeoLite2 database, and a test runs the printed commands.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shlex
import signal
import sys
from dataclasses import replace
from importlib import resources
from typing import TextIO
from urllib.parse import urlsplit

from aiohttp import web

from gslb.core.config import Config, HostPort, parse_toml
from gslb.core.policy import RequestFacts
from gslb.edge.server import Worker
from gslb.ops.admin import Admin
from gslb.ops.control import LocalControl
from gslb.sim.fakeregion import FakeRegion, FakeRegionOptions

# Real public addresses that the bundled (2018) GeoLite2 City database places in these cities.
CLIENTS = (
    ("Toronto", "142.1.0.1"),
    ("New York", "72.229.28.185"),
    ("Frankfurt", "80.81.192.1"),
    ("Paris", "81.57.0.1"),
    ("Singapore", "103.6.148.1"),
    ("Sao Paulo", "201.6.0.1"),
)
MODEL = "demo-llm"


def embedded_config() -> Config:
    text = resources.files("gslb").joinpath("data/demo.toml").read_text(encoding="utf-8")
    return parse_toml(text, "gslb/data/demo.toml")


# What `make loadtest` assumes when it is given no DEMO_ARGS (benchmarks/loadtest.py).
LOADTEST_LISTEN = HostPort("127.0.0.1", 8080)
LOADTEST_ADMIN = HostPort("127.0.0.1", 9901)


def with_ports(
    cfg: Config, listen: str | None, admin: str | None, region_base: int | None
) -> Config:
    """The demo config moved to other ports (tests run several demos side by side)."""
    server = cfg.server
    if listen:
        server = replace(server, listen=_host_port(listen))
    if admin:
        server = replace(server, admin_listen=_host_port(admin))
    regions = cfg.regions
    if region_base is not None:
        n = 0
        moved = []
        for region in regions:
            eps = []
            for ep in region.endpoints:
                host = urlsplit(ep.url).hostname or "127.0.0.1"
                eps.append(replace(ep, url=f"http://{host}:{region_base + n}"))
                n += 1
            moved.append(replace(region, endpoints=tuple(eps)))
        regions = tuple(moved)
    return replace(cfg, server=server, regions=regions)


def _host_port(text: str) -> HostPort:
    host, _, port = text.rpartition(":")
    return HostPort(host.strip("[]") or "127.0.0.1", int(port))


def region_ports(cfg: Config) -> str:
    """The simulated servers' addresses, compactly: ``127.0.0.1:18001-18003,18011``."""
    by_host: dict[str, list[int]] = {}
    for region in cfg.regions:
        for ep in region.endpoints:
            parts = urlsplit(ep.url)
            by_host.setdefault(parts.hostname or "127.0.0.1", []).append(parts.port or 80)
    out = []
    for host, ports in by_host.items():
        runs: list[list[int]] = []
        for port in sorted(set(ports)):
            if runs and port == runs[-1][-1] + 1:
                runs[-1].append(port)
            else:
                runs.append([port])
        spans = ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)
        out.append(f"{host}:{spans}")
    return " ".join(out)


def loadtest_command(cfg: Config) -> str:
    """``make loadtest``, with the ports of this demo when they are not its defaults."""
    server = cfg.server
    if server.listen == LOADTEST_LISTEN and server.admin_listen == LOADTEST_ADMIN:
        return "make loadtest"
    ports = f"--listen {server.listen} --admin-listen {server.admin_listen}"
    return f"make loadtest DEMO_ARGS={shlex.quote(ports)}"


def fake_options(cfg: Config) -> dict[str, FakeRegionOptions]:
    """One fake server per endpoint, with the region's capacity split over its endpoints.

    The split is exact (8 over 3 endpoints is 3, 3, 2), so the slots gslb believes a region
    has are the slots its servers really have.
    """
    out = {}
    for region in cfg.regions:
        share, extra = divmod(region.capacity, len(region.endpoints))
        for j, ep in enumerate(region.endpoints):
            out[ep.url] = FakeRegionOptions(
                name=region.name,
                slots=max(1, share + (1 if j < extra else 0)),
                tokens_per_s=25.0,
                max_tokens_default=24,
                model=MODEL,
                seed=hash(ep.url) & 0xFFFF,
            )
    return out


def landings(worker: Worker) -> list[tuple[str, str, str, str]]:
    """(city, ip, region, reason) for each demo client, as the router decides right now."""
    rt = worker.runtime
    out = []
    for city, ip in CLIENTS:
        from gslb.core.clientip import parse_ip

        location = worker.geoip.lookup(parse_ip(ip))
        d = rt.router.decide(
            RequestFacts(location, rt.cfg.routing.latency_budget_ms), rt.fleet.view
        )
        out.append((city, ip, d.region or "-", d.reason))
    return out


def instructions(cfg: Config, worker: Worker, token: str) -> str:
    proxy = f"http://{cfg.server.listen}"
    admin = f"http://{cfg.server.admin_listen}"
    providers = len({r.provider for r in cfg.regions})
    q = shlex.quote
    servers = sum(len(r.endpoints) for r in cfg.regions)
    lines = [
        "",
        f"gslb demo: {len(cfg.regions)} simulated regions on {providers} providers",
        f"  proxy        {proxy}",
        f"  admin        {admin}   (status page, JSON status, metrics, explanations, drains)",
        f"  status page  {admin}/",
        f"  regions      {region_ports(cfg)}   ({servers} simulated servers)",
        "  (other ports: make demo DEMO_ARGS='--listen HOST:PORT --admin-listen HOST:PORT"
        " --region-port-base PORT')",
        "",
        "Where clients land (X-Forwarded-For places them; the demo proxy trusts loopback):",
    ]
    width = max(len(c) for c, _ in CLIENTS)
    for city, ip, region, reason in landings(worker):
        cmd = (
            f"curl -s -o /dev/null -D - -H {q('X-Forwarded-For: ' + ip)} {proxy}/v1/models"
            " | grep -i '^x-gslb'"
        )
        lines.append(f"  {city:<{width}}  {cmd}   # -> {region} ({reason})")
    chat = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "stream": True}
    )
    ca = next((r for r in cfg.regions if r.name == "ca-central"), cfg.regions[0])
    eu = next((r for r in cfg.regions if r.name == "eu-central"), cfg.regions[-1])
    bearer = q(f"Authorization: Bearer {token}")
    lines += [
        "",
        "Stream a chat completion (SSE tokens arrive as they are generated):",
        f"  curl -sN -H {q('X-Forwarded-For: 80.81.192.1')} -H 'Content-Type: application/json'"
        f" {proxy}/v1/chat/completions -d {q(chat)}",
        "",
        "Ask why a client goes where it goes:",
        f"  curl -s '{admin}/explain?ip=142.1.0.1'",
        "",
        f"Drain {ca.name} and watch Toronto move to the Canadian standby (never the US):",
        f'  curl -s -X POST -H {bearer} -d \'{{"region": "{ca.name}"}}\' {admin}/drain',
        f'  curl -s -X POST -H {bearer} -d \'{{"region": "{ca.name}"}}\' {admin}/undrain',
        "",
        f"Kill {eu.name} (its health checks fail; Frankfurt moves to the next EU region):",
        f"  curl -s -X POST -d '{{\"health_status\": 503}}' {eu.endpoints[0].url}/control",
        f"  curl -s -X POST -d '{{\"health_status\": 200}}' {eu.endpoints[0].url}/control"
        f"   # back after a {eu.health.standby_hold_down_s:g} s hold-down",
        "",
        f"Metrics: {admin}/metrics    Status JSON: {admin}/status",
        f"Load test against this demo: {loadtest_command(cfg)}",
        "Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


async def run_demo(
    cfg: Config, out: TextIO = sys.stdout, stop: asyncio.Event | None = None
) -> None:
    fakes: list[FakeRegion] = []
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    token = secrets.token_urlsafe(12)
    worker: Worker | None = None
    admin_runner: web.AppRunner | None = None
    try:
        for url, opts in fake_options(cfg).items():
            fake = FakeRegion(opts)
            parts = urlsplit(url)
            await fake.start(parts.hostname or "127.0.0.1", parts.port or 80)
            fakes.append(fake)
        worker = Worker(cfg)
        await worker.start()
        admin = Admin(LocalControl(worker, None), token)
        admin_runner = web.AppRunner(admin.app(), access_log=None)
        await admin_runner.setup()
        where = cfg.server.admin_listen
        await web.TCPSite(admin_runner, where.host, where.port).start()
        print(instructions(cfg, worker, token), file=out, flush=True)
        await stop.wait()
    finally:
        print("stopping the demo...", file=out, flush=True)
        if admin_runner is not None:
            await admin_runner.cleanup()
        if worker is not None:
            await worker.stop()
        for fake in fakes:
            await fake.stop()
