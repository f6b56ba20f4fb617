"""Benchmark the demand model: a simulated day of the world's arrivals, generated vectorised.

The issue's target is a day at a mean of 200 requests/s (about 17M arrivals) in well under
30 s on one core, tokens included. Loading the cities and clustering them are timed apart:
a run does them once.

    python benchmarks/bench_demand.py                       # a day at 200 rps, a table
    python benchmarks/bench_demand.py --rps 20 --hours 2 --json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gslb.model import demand

SCENARIO_DAY = datetime.date(2026, 7, 1)  # a fixed date: DST offsets are part of the input


def measure(rps: float, hours: float, n_cells: int, seed: int) -> dict[str, float | int]:
    t0 = time.perf_counter()
    cities = demand.load_cities()
    t1 = time.perf_counter()
    cells = demand.cluster(cities, n_cells, SCENARIO_DAY)
    t2 = time.perf_counter()
    got = demand.arrivals(cells, rps, demand.Diurnal(), hours, np.random.default_rng(seed))
    t3 = time.perf_counter()
    return {
        "cities": len(cities),
        "cells": len(cells),
        "rps": rps,
        "hours": hours,
        "arrivals": len(got),
        "load_s": round(t1 - t0, 3),
        "cluster_s": round(t2 - t1, 3),
        "arrivals_s": round(t3 - t2, 3),
        "arrivals_per_s": round(len(got) / (t3 - t2)) if t3 > t2 else 0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rps", type=float, default=200.0, help="the world's mean requests/s")
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--cells", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    row = measure(args.rps, args.hours, args.cells, args.seed)
    if args.json:
        print(json.dumps(row))
        return 0
    print(f"python {platform.python_version()}; numpy {np.__version__}; {platform.machine()}")
    for key, value in row.items():
        print(f"{key:>15} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
