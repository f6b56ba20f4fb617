"""Benchmark ``gslb simulate``: a simulated day at a mean of 200 requests/s, on one core.

The issue's target: a day at 200 requests/s (about 17M requests) in under 5 minutes on one
core, with every policy on the same arrivals. This runs the shipped ordinary day over the
example fleet, times each step, reports requests per second per policy, and profiles one
policy for an hour to say where the time goes.

    python benchmarks/bench_simulate.py                  # the whole day (a few minutes)
    python benchmarks/bench_simulate.py --hours 1 --json
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import io
import json
import os
import platform
import pstats
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gslb.core.config import parse_toml
from gslb.model import demand, engine
from gslb.model.scenario import parse_scenario
from gslb.model.summary import series, summarize

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config" / "example.toml"
SCENARIO = ROOT / "config" / "scenarios" / "ordinary-day.toml"


def measure(hours: float, profile_hours: float) -> dict[str, object]:
    cfg = parse_toml(CONFIG.read_text(), str(CONFIG))
    sc = parse_scenario(SCENARIO.read_text(), str(SCENARIO))
    sc = dataclasses.replace(sc, hours=hours)
    clock = time.perf_counter
    steps: dict[str, float] = {}
    t0 = clock()
    cells = demand.cluster(demand.load_cities(), sc.cells, sc.date)
    world = engine.build_world(cfg, sc, cells)
    steps["world"] = clock() - t0
    t0 = clock()
    day = engine.draw_day(world, np.random.default_rng(sc.seed))
    steps["draw"] = clock() - t0
    n = len(day.arrivals)
    runs = []
    per_policy = {}
    for policy in sc.policies:
        t0 = clock()
        runs.append(engine.run_policy(world, day, policy))
        took = clock() - t0
        steps[policy] = took
        per_policy[policy] = round(n / took)
    t0 = clock()
    summarize(world, day, runs)
    series(world, day, runs)
    steps["summary"] = clock() - t0
    return {
        "hours": hours,
        "requests": n,
        "capacity_events": len(day.events),
        "total_s": round(sum(steps.values()), 1),
        "steps_s": {k: round(v, 2) for k, v in steps.items()},
        "requests_per_s_by_policy": per_policy,
        "events_per_s": round(n * len(runs) / sum(steps[p] for p in sc.policies)),
        "profile_gslb": profile(world, day, profile_hours),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
    }


def profile(world: engine.World, day: engine.Day, hours: float) -> list[str]:
    """The gslb policy over the first ``hours``: the functions that take the most time."""
    cut = int(np.searchsorted(day.arrivals.t_s, hours * 3600.0))
    arr = day.arrivals
    part = dataclasses.replace(
        day,
        arrivals=demand.Arrivals(
            arr.t_s[:cut], arr.cell[:cut], arr.input_tokens[:cut], arr.output_tokens[:cut]
        ),
        service_s=day.service_s[:cut],
        prefill_s=day.prefill_s[:cut],
        jitter_ms=day.jitter_ms[:cut],
        u=day.u[:cut],
    )
    shorter = dataclasses.replace(world, scenario=dataclasses.replace(world.scenario, hours=hours))
    prof = cProfile.Profile()
    prof.enable()
    engine.run_policy(shorter, part, "gslb")
    prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(8)
    return [line.strip() for line in text.getvalue().splitlines() if "(" in line][:8]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--profile-hours", type=float, default=1.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    got = measure(args.hours, min(args.profile_hours, args.hours))
    if args.json:
        print(json.dumps(got))
        return 0
    print(f"{got['requests']:,} requests over {got['hours']} h; total {got['total_s']} s")
    for step, secs in got["steps_s"].items():  # type: ignore[attr-defined]
        print(f"  {step:<13} {secs:8.2f} s")
    print(f"  {got['events_per_s']:,} requests/s per policy on average")
    print("where the gslb policy's time goes (cProfile, tottime):")
    for line in got["profile_gslb"]:  # type: ignore[attr-defined]
        print("  " + line)
    print(got["machine"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
