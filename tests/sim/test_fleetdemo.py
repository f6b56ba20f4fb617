"""`gslb demo --fleet 3` as a newcomer runs it: start it, run the printed commands, Ctrl-C.

Real processes throughout: the demo, its nats-server, three `gslb serve` edges and the
`gslb fleet` commands it prints.
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from gslb.core.fleetdoc import validate_document
from tests.ports import free_block
from tests.sim.test_demo import DEMO_ENDPOINTS, DIRECT, ROOT, read_until


def gslb_command(line: str) -> subprocess.CompletedProcess[str]:
    """Run a printed `gslb ...` command with this Python."""
    argv = shlex.split(line)
    assert argv[0] == "gslb", line
    return subprocess.run(
        [sys.executable, "-m", "gslb", *argv[1:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def region_via(line: str) -> str | None:
    """A printed `curl ... | grep -i '^x-gslb-region'` line, done with urllib."""
    header = re.search(r"-H '([^']+)'", line)
    url = re.search(r"(http://\S+/v1/models)", line)
    assert header and url, line
    name, value = header.group(1).split(": ", 1)
    request = urllib.request.Request(url.group(1), headers={name: value})
    with DIRECT.open(request, timeout=5) as resp:
        region: str | None = resp.headers.get("X-GSLB-Region")
        return region


def wait_for(cond: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.2)


def test_the_printed_fleet_commands_act_on_every_edge(tmp_path: Path) -> None:
    base = free_block(6 + DEMO_ENDPOINTS)  # 3 edges, 3 admin listeners, the regions
    args = [
        "--listen", f"127.0.0.1:{base}",          # edges at base, base+1, base+2
        "--admin-listen", f"127.0.0.1:{base + 3}",  # their admin listeners at base+3..+5
        "--region-port-base", str(base + 6),
    ]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "gslb", "demo", "--fleet", "3", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "stderr.log").open("wb"),
    )
    try:
        try:
            text = read_until(proc, "Ctrl-C stops everything", timeout=90)
        except AssertionError:
            raise AssertionError((tmp_path / "stderr.log").read_text()[-3000:]) from None
        lines = [line.strip() for line in text.splitlines()]
        commands = {line.split(" --servers")[0]: line for line in lines if line.startswith("gslb ")}
        curls = [line for line in lines if line.startswith("curl ") and "x-gslb-region" in line]
        assert len(curls) == 3 and len(re.findall(r"^  edge ", text, re.M)) == 3, text
        [status_line] = [ln for ln in lines if ln.startswith("curl ") and "/status" in ln]

        # Three edges, each on the pushed document.
        def all_ok() -> bool:
            out = gslb_command(commands["gslb fleet status"]).stdout
            return len(re.findall(r" ok ", out)) == 3

        wait_for(all_ok)
        assert [region_via(c) for c in curls] == ["ca-central"] * 3  # Toronto stays in Canada

        # The printed status command shows the fleet as one edge sees it: the two others,
        # and every region seen up by all three.
        status_url = re.search(r"(http://\S+/status)", status_line)
        assert status_url is not None, status_line

        def fleet_seen() -> bool:
            with DIRECT.open(status_url.group(1), timeout=5) as resp:
                fleet = json.load(resp).get("fleet", {})
            regions = fleet.get("regions", {}).values()
            return fleet.get("peers") == 2 and all(r["see_up"] == 3 for r in regions)

        wait_for(fleet_seen)

        # A fleet-wide drain moves Toronto on every edge, to the Canadian standby.
        drain = gslb_command(commands["gslb fleet drain region ca-central"])
        assert drain.returncode == 0, drain.stderr
        wait_for(lambda: [region_via(c) for c in curls] == ["ca-west-standby"] * 3)
        undrain = gslb_command(commands["gslb fleet undrain region ca-central"])
        assert undrain.returncode == 0, undrain.stderr
        wait_for(lambda: [region_via(c) for c in curls] == ["ca-central"] * 3)

        # The printed document is a valid fleet document; pushing it is a new revision that
        # every edge reports.
        push_line = next(v for k, v in commands.items() if k.startswith("gslb fleet push"))
        document = Path(shlex.split(push_line)[3])
        validate_document(document.read_text(), str(document))
        pushed = gslb_command(push_line)
        assert pushed.returncode == 0, pushed.stderr
        revision = re.search(r"pushed revision (\d+)", pushed.stdout)
        assert revision is not None, pushed.stdout

        def all_on_it() -> bool:
            out = gslb_command(commands["gslb fleet status"]).stdout
            rows = [r for r in out.splitlines() if r.split()[:1] in (["nyc"], ["fra"], ["sgp"])]
            return len(rows) == 3 and all(r.split()[2] == revision.group(1) for r in rows)

        wait_for(all_on_it)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0
    # Everything it started is gone: nothing answers on the edges' ports any more.
    for port in (base, base + 1, base + 2):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, port
