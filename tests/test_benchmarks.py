"""`make bench` keeps working: the benchmarks' own configs parse, and the scoring bench runs.

They are not timed here (speed is measured in benchmarks/, not in tests); these only catch a
benchmark that a change to the config rules or the layout has broken.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks import bench_proxy, bench_scoring
from gslb.core.config import parse_toml

ROOT = Path(__file__).resolve().parent.parent


def test_the_proxy_benchmarks_gslb_config_is_valid() -> None:
    regions = [
        bench_proxy.Region("ca-central", (45.5, -73.57), "CA", ("http://127.0.0.1:9",)),
        bench_proxy.Region("us-east", (38.95, -77.45), "US", ("http://127.0.0.1:10",)),
    ]
    text = bench_proxy.gslb_config(18080, 19901, "/nonexistent.mmdb", regions)
    cfg = parse_toml(text, "bench.toml")
    assert [r.name for r in cfg.regions] == ["ca-central", "us-east"]
    assert cfg.residency  # the Canada rule the benchmark's Toronto client is bound by


def test_the_scoring_benchmark_runs() -> None:
    assert len(bench_scoring.synthetic_fleet(32).regions) == 32
    argv = ["benchmarks/bench_scoring.py", "--regions", "8", "--calls", "50", "--json"]
    out = subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout.splitlines()[0])
    assert doc["regions"] == 8 and doc["python_us"] > 0
