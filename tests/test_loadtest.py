"""`benchmarks/loadtest.py` (what `make loadtest` runs): a short run against its own demo."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests.ports import free_block

ROOT = Path(__file__).resolve().parent.parent


def test_short_loadtest_against_its_own_demo() -> None:
    # Not imported here: importing locust monkey-patches this whole process with gevent.
    assert importlib.util.find_spec("locust") is not None, (
        "locust is not installed: pip install -e '.[bench]' (or '.[test]')"
    )
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
