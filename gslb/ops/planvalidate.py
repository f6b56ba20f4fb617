"""``gslb plan validate``: plan on weeks 1..N of a scenario's demand, replay the weeks after.

1. A demand series of ``train + test`` weeks from the scenario (``demand_from_scenario``:
   the scenario's day, a weekly shape, growth and day-to-day noise).
2. The **forecast plan**: made on the first ``train`` weeks (each hour of the week at the
   demand quantile). The **hindsight plan**: made on the ``test`` weeks themselves, the best a
   planner could have done knowing them.
3. Each plan's cost over the test weeks (a plan's week repeats).
4. The replay: for each test week, its busiest day runs through ``gslb simulate``'s engine
   (gslb's policy) with each plan's capacity, hour by hour (reserved, plus that hour's
   on-demand and spot), and the day's demand scaled to that day's (growth, weekday, noise).
   ``--replay-rps`` replays at a lower request rate with the capacity scaled alike, to save
   time.

The result, ``validation.json`` and a table, compares the two: cost ratio and SLO attainment.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
from typing import IO, Any

import numpy as np

from gslb.core.config import Config
from gslb.ops.plancli import (
    EXIT_OK,
    PlanUsageError,
    check_numbers,
    load_config,
    load_offers,
    load_scenario,
    make_out,
    make_plan,
    write_json,
)

HOURS_PER_WEEK = 168


def validate(args: argparse.Namespace, err: IO[str]) -> int:
    from gslb.ops.planinputs import Demand, demand_from_scenario

    check_numbers(args)
    if not 1 <= args.train_weeks <= 26 or not 1 <= args.test_weeks <= 26:
        raise PlanUsageError("--train-weeks and --test-weeks: expected 1 to 26")
    cfg = load_config(args.config)
    offers = load_offers(cfg, args.prices)
    scenario = load_scenario(args.scenario)
    if args.replay_rps is not None and not 0 < args.replay_rps <= scenario.total_rps:
        raise PlanUsageError(f"--replay-rps: expected a number > 0 and <= {scenario.total_rps:g}")
    seed = scenario.seed if args.seed is None else args.seed
    weeks = args.train_weeks + args.test_weeks
    series = demand_from_scenario(cfg, scenario, weeks, np.random.default_rng(seed))
    cut = args.train_weeks * HOURS_PER_WEEK
    train = Demand(series.start, series.zones, series.gpus[:, :cut])
    test_start = series.start + datetime.timedelta(hours=cut)
    test = Demand(test_start, series.zones, series.gpus[:, cut:])
    pop = scenario.min_city_population
    plans = {
        "forecast": make_plan(cfg, train, offers, args, pop),
        "hindsight": make_plan(cfg, test, offers, args, pop),
    }
    base = demand_from_scenario(
        cfg, scenario, 1, np.random.default_rng(0), growth_per_week=0.0, weekend=1.0,
        noise_sigma=0.0,
    ).gpus[:, :24].sum()  # fmt: skip
    scale = 1.0 if args.replay_rps is None else args.replay_rps / scenario.total_rps
    result: dict[str, Any] = {
        "train_weeks": args.train_weeks,
        "test_weeks": args.test_weeks,
        "quantile": args.quantile,
        "utilization": args.utilization,
        "survive": args.survive,
        "replay_rps_scale": scale,
    }
    for name, doc in plans.items():
        replays = []
        for w in range(args.test_weeks):
            week = test.gpus[:, w * HOURS_PER_WEEK : (w + 1) * HOURS_PER_WEEK].sum(axis=0)
            daily = week.reshape(7, 24).sum(axis=1)
            day = int(np.argmax(daily))
            when = test_start + datetime.timedelta(days=7 * w + day)
            factor = float(daily[day] / base)
            replays.append(replay(cfg, scenario, doc, day * 24, when, factor, scale, seed + w))
        result[name] = {
            "cost_usd_week": doc["cost_usd"],
            "cost_usd_test": round(doc["cost_usd"] * args.test_weeks, 2),
            "reserved_gpus": sum(r["reserved_gpus"] for r in doc["regions"].values()),
            "replay": replays,
            "slo_attainment": round(float(np.mean([r["slo_attainment"] for r in replays])), 4),
        }
    f, h = result["forecast"], result["hindsight"]
    result["cost_ratio"] = round(f["cost_usd_test"] / h["cost_usd_test"], 4)
    result["slo_gap"] = round(f["slo_attainment"] - h["slo_attainment"], 4)
    out = make_out(args.out)
    write_json(out / "validation.json", result)
    for name, doc in plans.items():
        write_json(out / f"plan-{name}.json", doc)
    print("\n".join(table(result)), file=err)
    print(f"validation: {out / 'validation.json'}", file=err)
    return EXIT_OK


def replay(
    cfg: Config,
    scenario: Any,
    doc: dict[str, Any],
    hour0: int,
    when: datetime.datetime,
    factor: float,
    scale: float,
    seed: int,
) -> dict[str, Any]:
    """One day through the engine (gslb's policy) with the plan's capacity hour by hour."""
    from gslb.model import demand, engine
    from gslb.model.failures import CapacityEvent
    from gslb.model.scenario import RegionCapacity
    from gslb.model.summary import summarize

    gpus = scenario.server.gpus
    hourly = doc["hourly"]["regions"]
    period = doc["inputs"]["hours"]
    names = [r.name for r in cfg.regions]

    def servers(region: str, h: int) -> int:
        plan = hourly.get(region)
        if plan is None:
            return 0
        k = (hour0 + h) % period
        total = plan["reserved"] + plan["on_demand"][k] + plan["spot"][k]
        return math.ceil(float(total) * scale / float(gpus) - 1e-9)

    first = {n: servers(n, 0) for n in names}
    sc = dataclasses.replace(
        scenario,
        hours=24.0,
        date=when.date(),
        start_utc_hour=0.0,
        total_rps=scenario.total_rps * factor * scale,
        capacity=tuple(RegionCapacity(n, on_demand=first[n]) for n in names),
        policies=("gslb",),
    )
    providers = {r.name: r.provider for r in cfg.regions}
    events = []
    for n in names:
        prev = first[n]
        for h in range(1, 24):
            now = servers(n, h)
            if now != prev:
                events.append(
                    CapacityEvent(h * 3600.0, n, now - prev, "scale", providers[n], "on_demand")
                )
            prev = now
    cells = demand.cluster(demand.load_cities(sc.min_city_population), sc.cells, sc.date)
    world = engine.build_world(cfg, sc, cells)
    day = engine.draw_day(world, np.random.default_rng(seed), scaling=events)
    run = engine.run_policy(world, day, "gslb")
    policy = summarize(world, day, [run])["policies"]["gslb"]
    return {
        "day": when.date().isoformat(),
        "demand_factor": round(factor, 4),
        "requests": len(day.arrivals),
        "slo_attainment": policy["slo_attainment"],
        "ttft_p95_ms": policy["ttft_ms"]["p95"],
        "failed": policy["failed"],
        "residency_violations": policy["residency_violations"],
    }


def table(result: dict[str, Any]) -> list[str]:
    lines = [
        f"plan on {result['train_weeks']} weeks, replay {result['test_weeks']}: survive "
        f"{result['survive']}, demand at p{round(100 * result['quantile'])} "
        f"over {result['utilization']:.0%} busy",
        "",
        f"{'PLAN':<10} {'COST $ (TEST)':>14} {'RESERVED GPUS':>14} {'SLO':>8}  REPLAYED DAYS",
    ]
    for name in ("forecast", "hindsight"):
        r = result[name]
        days = ", ".join(f"{d['day']} {100 * d['slo_attainment']:.1f}%" for d in r["replay"])
        lines.append(
            f"{name:<10} {r['cost_usd_test']:>14,.0f} {r['reserved_gpus']:>14} "
            f"{100 * r['slo_attainment']:>7.2f}%  {days}"
        )
    lines += [
        "",
        f"cost: forecast / hindsight = {result['cost_ratio']:.3f}; "
        f"SLO: forecast - hindsight = {100 * result['slo_gap']:+.2f} points",
    ]
    return lines
