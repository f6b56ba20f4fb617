"""Benchmark one full routing decision, Cython kernel vs its pure-Python twin, side by side.

A "full decision" is what the proxy does per request once it knows the client's location:
``Router.decide(facts, snapshot)``: placement masks, the cached per-location round trips,
the kernel call and the ``Decision``. Both backends run in the same process, interleaved, on
the same fleets and clients, so machine noise hits both alike; the speedup is the ratio.

    python benchmarks/bench_scoring.py                 # 8, 32 and 128 regions, a table
    python benchmarks/bench_scoring.py --regions 32 --json
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gslb.core import scoring
from gslb.core.config import Config, parse_toml
from gslb.core.geo import Location
from gslb.core.policy import RequestFacts
from gslb.core.router import Router
from gslb.core.state import LiveView

JURISDICTIONS = ["US", "US", "US", "CA", "DE", "IE", "FR", "JP", "SG", "BR", "AU", "GB"]


def synthetic_fleet(n: int, seed: int = 7) -> Config:
    """``n`` regions scattered over the inhabited world, with Canada and EU residency rules."""
    rnd = random.Random(seed)
    parts = ['[geoip]\nedge_country = "US"\n']  # the residency rules need the edge's country
    for i in range(n):
        lat, lon = rnd.uniform(-40, 60), rnd.uniform(-130, 150)
        jur = JURISDICTIONS[i % len(JURISDICTIONS)]
        role = "standby" if i % 9 == 8 else "active"
        parts.append(
            f'[[regions]]\nname = "r{i}"\nlocation = [{lat:.3f}, {lon:.3f}]\n'
            f'provider = "p{i % 4}"\n'
            f'jurisdiction = "{jur}"\nrole = "{role}"\ncapacity = {rnd.randint(16, 256)}\n'
            f'service_ms = {rnd.randint(300, 1500)}\ncertifications = ["soc2"]\n'
            f'  [[regions.endpoints]]\n  url = "http://10.{i // 250}.{i % 250}.1:8000"\n'
        )
    parts.append(
        '[[residency]]\nname = "canada"\ncountries = ["CA"]\nallow_jurisdictions = ["CA"]\n'
        '[[residency]]\nname = "eu"\ncountries = ["EEA"]\nallow_jurisdictions = ["EU"]\n'
    )
    return parse_toml("\n".join(parts))


def clients(count: int, seed: int = 11) -> list[RequestFacts]:
    rnd = random.Random(seed)
    countries = ["US", "CA", "DE", "FR", "JP", "SG", "BR", "GB", "IN", "AU"]
    return [
        RequestFacts(
            Location(rnd.choice(countries), None, rnd.uniform(-40, 60), rnd.uniform(-130, 150)),
            300.0,
        )
        for _ in range(count)
    ]


def loaded_snapshot(router: Router, seed: int = 3) -> LiveView:
    """About a third of the regions saturated and a few down, so every branch runs."""
    rnd = random.Random(seed)
    snap = router.new_view()
    for i, region in enumerate(router.cfg.regions):
        snap.load[i] = rnd.choice([0.0, 0.3, 0.6, 0.95, 1.5]) * region.capacity
        snap.routable[i] = 0 if rnd.random() < 0.1 else 1
    return snap


def per_call_us(fn: Callable[[], object], calls: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, time.perf_counter() - t0)
    return best / calls * 1e6


def measure(n: int, calls: int = 20000, repeats: int = 7) -> dict[str, float | int | None]:
    cfg = synthetic_fleet(n)
    facts = clients(64)
    results: dict[str, float | int | None] = {"regions": n}
    routers = {name: Router(cfg, mod) for name, mod in scoring.backends().items()}
    for router in routers.values():
        snap = loaded_snapshot(router)
        for f in facts:
            router.decide(f, snap)  # warm the per-location caches, as a running proxy has
    # Interleave the backends so that noise affects both.
    timings: dict[str, list[float]] = {name: [] for name in routers}
    for _ in range(repeats):
        for name, router in routers.items():
            snap = loaded_snapshot(router)
            it = iter(facts * (calls // len(facts) + 1))
            decide = router.decide
            timings[name].append(
                per_call_us(lambda d=decide, s=snap, i=it: d(next(i), s), calls // 4, 1)
            )
    for name in ("cython", "python"):
        results[f"{name}_us"] = round(min(timings[name]), 3) if name in timings else None
    cy, py = results.get("cython_us"), results.get("python_us")
    results["speedup"] = (
        round(py / cy, 1) if isinstance(cy, float) and isinstance(py, float) else None
    )
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--regions", type=int, action="append", help="fleet size (repeatable)")
    ap.add_argument("--calls", type=int, default=40000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sizes = args.regions or [8, 32, 128]
    rows = [measure(n, args.calls) for n in sizes]
    if args.json:
        print(json.dumps(rows[0] if len(rows) == 1 else rows))
        return 0
    print(
        f"backend in use: {scoring.BACKEND}; python {platform.python_version()}; "
        f"{platform.machine()} {platform.processor() or ''}".rstrip()
    )
    print(f"{'regions':>8} {'cython_us':>10} {'python_us':>10} {'speedup':>8}")
    for r in rows:
        print(
            f"{r['regions']:>8} {r['cython_us']!s:>10} {r['python_us']!s:>10} {r['speedup']!s:>8}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
