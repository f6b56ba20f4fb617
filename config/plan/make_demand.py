"""Regenerate config/plan/demand.csv: two weeks of hourly GPU demand per country.

The demand is ``gslb.ops.planinputs.demand_from_scenario`` over the ordinary-day scenario and
the example fleet, with the scenario's seed: the same inputs give the same file. Countries
whose mean is under 0.5 GPU are left out (see README.md), which keeps the file small.

    .venv/bin/python config/plan/make_demand.py
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from gslb.core.config import load_config
from gslb.model.scenario import parse_scenario
from gslb.ops.planinputs import Demand, demand_from_scenario, format_demand_csv

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CONFIG = ROOT / "config" / "example.toml"
SCENARIO = ROOT / "config" / "scenarios" / "ordinary-day.toml"
OUT = HERE / "demand.csv"
WEEKS = 2
MIN_MEAN_GPUS = 0.5


def make() -> Demand:
    cfg = load_config(CONFIG)
    scenario = parse_scenario(SCENARIO.read_text(encoding="utf-8"), str(SCENARIO))
    demand = demand_from_scenario(cfg, scenario, WEEKS, np.random.default_rng(scenario.seed))
    keep = demand.gpus.mean(axis=1) >= MIN_MEAN_GPUS
    zones = tuple(z for z, k in zip(demand.zones, keep, strict=True) if k)
    return replace(demand, zones=zones, gpus=demand.gpus[keep])


def main() -> int:
    demand = make()
    OUT.write_text(format_demand_csv(demand), encoding="utf-8")
    total = float(demand.gpus.sum(axis=0).mean())
    print(
        f"{OUT}: {len(demand.zones)} countries, {demand.hours} hours from "
        f"{demand.start:%Y-%m-%d %H:%M} UTC, {total:.1f} GPUs on average",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
