"""`gslb demo` as a newcomer runs it: start it, run the printed commands, stop it with Ctrl-C."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.ports import free_block

ROOT = Path(__file__).resolve().parent.parent


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


@pytest.fixture
def demo():  # type: ignore[no-untyped-def]
    base = free_block(14)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gslb",
            "demo",
            "--listen",
            f"127.0.0.1:{base}",
            "--admin-listen",
            f"127.0.0.1:{base + 1}",
            "--region-port-base",
            str(base + 2),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc, read_until(proc, "Ctrl-C stops everything")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_printed_commands_work_as_printed(demo) -> None:  # type: ignore[no-untyped-def]
    proc, text = demo
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
