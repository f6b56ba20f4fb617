"""`gslb demo` as a newcomer runs it: start it, run the printed commands, stop it with Ctrl-C."""

from __future__ import annotations

import contextlib
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gslb.cli import build_parser
from tests.ports import free_block

ROOT = Path(__file__).resolve().parents[2]
DEMO_ENDPOINTS = 11  # simulated servers in gslb/data/demo.toml
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def demo_args(base: int) -> list[str]:
    """`gslb demo` flags: proxy on ``base``, admin on ``base + 1``, servers from ``base + 2``."""
    return [
        "--listen", f"127.0.0.1:{base}",
        "--admin-listen", f"127.0.0.1:{base + 1}",
        "--region-port-base", str(base + 2),
    ]  # fmt: skip


@dataclass(frozen=True)
class Demo:
    proc: subprocess.Popen[bytes]
    text: str  # what it printed up to "Ctrl-C stops everything"
    base: int  # the ports of demo_args(base)


def read_until(proc: subprocess.Popen[bytes], marker: str, timeout: float = 60) -> str:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    out = b""
    deadline = time.monotonic() + timeout
    while marker.encode() not in out:
        assert time.monotonic() < deadline, f"demo did not print {marker!r}: {out!r}"
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"demo exited early: {out!r}"
            out += chunk
    return out.decode()


def sh(cmd: str) -> str:
    return subprocess.run(
        ["bash", "-c", cmd], capture_output=True, text=True, timeout=30, check=False
    ).stdout


def make_dry_run(*args: str) -> list[str]:
    """The commands ``make -n ARGS`` would run (nothing is built or started)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(
        ["make", "-n", "--no-print-directory", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return out.splitlines()


def http_status(url: str) -> int:
    with DIRECT.open(url, timeout=5) as resp:
        status: int = resp.status
        return status


@contextlib.contextmanager
def running_demo() -> Iterator[Demo]:
    """A real `gslb demo` subprocess on free loopback ports, killed at the end."""
    base = free_block(2 + DEMO_ENDPOINTS + 1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gslb", "demo", *demo_args(base)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield Demo(proc, read_until(proc, "Ctrl-C stops everything"), base)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def demo() -> Iterator[Demo]:
    with running_demo() as d:
        yield d


def test_printed_ports_are_the_ones_it_listens_on(demo: Demo) -> None:
    text, base = demo.text, demo.base
    printed = dict(re.findall(r"^  (proxy|admin|regions) +(\S+)", text, re.M))
    assert printed == {
        "proxy": f"http://127.0.0.1:{base}",
        "admin": f"http://127.0.0.1:{base + 1}",
        "regions": f"127.0.0.1:{base + 2}-{base + 1 + DEMO_ENDPOINTS}",
    }, text
    # Each printed address answers as what it claims to be.
    assert http_status(f"{printed['admin']}/readyz") == 200
    assert http_status(f"{printed['proxy']}/v1/models") == 200
    for port in range(base + 2, base + 2 + DEMO_ENDPOINTS):
        assert http_status(f"http://127.0.0.1:{port}/health") == 200, port
    # ... and the load test it suggests is aimed at these ports, not the defaults.
    suggested = re.search(r"^Load test against this demo: (.*)$", text, re.M)
    assert suggested is not None, text
    assert shlex.split(suggested.group(1)) == [
        "make",
        "loadtest",
        f"DEMO_ARGS=--listen 127.0.0.1:{base} --admin-listen 127.0.0.1:{base + 1}",
    ]


def test_make_demo_passes_demo_args_to_gslb_demo() -> None:
    demo_args = "--listen 127.0.0.1:18080 --admin-listen 127.0.0.1:19901 --region-port-base 18100"
    lines = make_dry_run("demo", f"DEMO_ARGS={demo_args}")
    argv = shlex.split(lines[-1])
    assert argv[0].endswith("/gslb") and argv[1:] == ["demo", *demo_args.split()], lines
    # The flags are `gslb demo`'s own: its parser reads them as the ports.
    args = build_parser().parse_args(argv[1:])
    assert (args.listen, args.admin_listen, args.region_port_base) == (
        "127.0.0.1:18080",
        "127.0.0.1:19901",
        18100,
    )
    # Without DEMO_ARGS the demo runs on its defaults (8080, 9901, 18001...).
    assert shlex.split(make_dry_run("demo")[-1])[1:] == ["demo"]


def test_printed_commands_work_as_printed(demo: Demo) -> None:
    proc, text = demo.proc, demo.text
    landings = re.findall(r"^  (\S[\w ]*?)\s{2,}(curl .*?)\s+# -> (\S+) \((\S+)\)$", text, re.M)
    places = {city: (cmd, region) for city, cmd, region, _ in landings}
    assert len(places) == 6, text
    # Residency and proximity from the bundled GeoLite2 database, as the text says.
    assert places["Toronto"][1] == "ca-central"
    assert places["Frankfurt"][1] == "eu-central"
    assert places["Singapore"][1] == "ap-southeast"
    for city, (cmd, region) in places.items():
        out = sh(cmd)
        assert f"X-GSLB-Region: {region}" in out, (city, cmd, out)

    stream = next(ln.strip() for ln in text.splitlines() if "chat/completions" in ln)
    body = sh(stream)
    assert body.count("data: ") >= 3 and body.rstrip().endswith("data: [DONE]")
    assert "eu-central" in body

    drain, undrain = (ln.strip() for ln in text.splitlines() if "/drain" in ln or "/undrain" in ln)
    assert '"drained":true' in sh(drain)
    assert "X-GSLB-Region: ca-west-standby" in sh(places["Toronto"][0])  # Canada, not the US
    sh(undrain)
    assert "X-GSLB-Region: ca-central" in sh(places["Toronto"][0])

    explain = next(ln.strip() for ln in text.splitlines() if "/explain" in ln)
    assert '"region":"ca-central"' in sh(explain)

    proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert proc.wait(30) == 0
