"""`benchmarks/loadtest.py` (what `make loadtest` runs): short runs against a demo it starts
itself, and against a demo that already runs on other ports."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.ports import free_block
from tests.sim.test_demo import DIRECT, make_dry_run, running_demo

ROOT = Path(__file__).resolve().parents[2]


def need_locust() -> None:
    # Not imported here: importing locust monkey-patches this whole process with gevent.
    assert importlib.util.find_spec("locust") is not None, (
        "locust is not installed: pip install -e '.[bench]' (or '.[test]')"
    )


def descendants(pid: int) -> dict[int, str]:
    """Command lines of every process below ``pid`` right now (Linux /proc)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        parent[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        me = frontier.pop()
        for child, ppid in parent.items():
            if ppid == me and child not in found:
                try:
                    raw = (Path("/proc") / str(child) / "cmdline").read_bytes()
                except OSError:
                    raw = b""
                found[child] = raw.replace(b"\0", b" ").decode(errors="replace")
                frontier.append(child)
    return found


def gslb_requests(admin: str) -> float:
    """Sum of gslb_requests_total on a running gslb's admin listener."""
    with DIRECT.open(f"{admin}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "gslb_requests_total"
    )


def test_make_loadtest_uses_the_demo_already_running_on_its_demo_args() -> None:
    need_locust()
    with running_demo() as demo:
        admin = f"http://127.0.0.1:{demo.base + 1}"
        # The command the demo printed for its own ports, through make (dry run), as typed.
        printed = re.search(r"^Load test against this demo: (.*)$", demo.text, re.M)
        assert printed is not None, demo.text
        argv = shlex.split(printed.group(1))
        assert argv[:2] == ["make", "loadtest"], argv
        quick = "LOADTEST_ARGS=--duration 2s --users 4 --spawn-rate 4"
        command = shlex.split(make_dry_run(*argv[1:], quick)[-1])
        assert command[1] == "benchmarks/loadtest.py", command
        before = gslb_requests(admin)
        proc = subprocess.Popen(
            [sys.executable, *command[1:]],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        children: dict[int, str] = {}
        try:
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                children.update(descendants(proc.pid))
                time.sleep(0.1)
            out, _ = proc.communicate(timeout=5)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        assert proc.returncode == 0, out
        assert f"using the gslb demo already running at {admin}" in out, out
        assert "started `" not in out, out
        assert not children, children  # no second demo, nor anything else, was started
        # The load went to the running demo: its counter moved by exactly the requests made.
        made = re.search(r"^requests: (\d+) .*failures: 0$", out, re.M)
        assert made is not None and int(made.group(1)) > 0, out
        # gslb counts a request just after its last byte went out: allow it a moment.
        deadline = time.monotonic() + 5
        while gslb_requests(admin) - before != int(made.group(1)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gslb_requests(admin) - before == int(made.group(1)), out
        assert "result: PASS" in out, out
        assert demo.proc.poll() is None  # and the demo it used is still running


def test_loadtest_refuses_to_start_a_demo_over_a_busy_port() -> None:
    """A proxy port in use with no gslb admin listener: say so, start nothing (no locust)."""
    base = free_block(2)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", base))
        busy.listen()
        cmd = [
            sys.executable, str(ROOT / "benchmarks" / "loadtest.py"),
            "--listen", f"127.0.0.1:{base}", "--admin-listen", f"127.0.0.1:{base + 1}",
        ]  # fmt: skip
        got = subprocess.run(
            cmd,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert got.returncode == 2, got
    assert got.stderr.strip().splitlines() == [
        f"loadtest: something listens on 127.0.0.1:{base} but no gslb admin listener answers "
        f"at http://127.0.0.1:{base + 1}: if it is a demo started with `make demo "
        "DEMO_ARGS=...`, give `make loadtest` the same DEMO_ARGS (or --admin here)"
    ], got.stderr
    assert "started `" not in got.stdout, got.stdout


def test_short_loadtest_against_its_own_demo() -> None:
    need_locust()
    base = free_block(14)
    cmd = [
        sys.executable, str(ROOT / "benchmarks" / "loadtest.py"),
        "--duration", "5s", "--users", "8", "--spawn-rate", "8",
        "--host", f"http://127.0.0.1:{base}",
        "--admin", f"http://127.0.0.1:{base + 1}",
        "--region-port-base", str(base + 2),
    ]  # fmt: skip
    # Its own session, so a timeout can take down the demo it started along with it.
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out
    assert "started `python -m gslb demo" in out, out  # nothing was listening: it made a demo
    assert re.search(r"^requests: [1-9]\d* .*failures: 0$", out, re.M), out
    # The per-region split: region, requests, percentage.
    assert re.search(r"^served by region", out, re.M), out
    assert re.search(r"^  [a-z]+-[a-z]+ +\d+ +\d+\.\d%", out, re.M), out
    assert re.search(r"^spills: \d+ \(gslb_spills_total delta", out, re.M), out
    assert re.search(r"^time to first token, ms .*p50 +p90 +p99", out, re.M), out
    assert re.search(r"^  all +8 +\d+ +\d+ +\d+ +\d+$", out, re.M), out
    assert "result: PASS" in out, out
    # The demo it started is gone: nothing listens on its proxy port (TIME_WAIT may remain).
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", base))
