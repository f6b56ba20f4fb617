"""What a simulated day comes to: ``summary.json`` and the time series the plots draw. Pure.

Every figure is computed from the runs with numpy and rounded (milliseconds to 0.1, shares to
1e-4), so one seed gives byte-identical files. TTFT percentiles are over the requests that were
served; a request that was refused everywhere or denied counts as an SLO miss, and in
``failed``. A request *spills* when it is served outside its cell's nearest region.

Cost is what the capacity costs, whatever the policy: reserved and on-demand servers are paid
for the whole day, spot servers except while reclaimed. ``usd_per_1k_good`` divides it by the
requests each policy served within the SLO.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from gslb.model.engine import BIN_S, Day, Run, World

PERCENTILES: Final = (50, 95, 99)
TOP_FLOWS: Final = 300  # spill flows kept per policy for the map (the largest)


def _ms(x: float) -> float:
    return round(float(x), 1)


def _share(x: float) -> float:
    return round(float(x), 4)


def _percentiles(values: npt.NDArray[np.float64]) -> dict[str, float | None]:
    if values.size == 0:
        return {f"p{p}": None for p in PERCENTILES}
    got = np.percentile(values, PERCENTILES)
    return {f"p{p}": _ms(v) for p, v in zip(PERCENTILES, got, strict=True)}


def cost(world: World, day: Day) -> dict[str, Any]:
    """GPU-hours and dollars per capacity type and per region (see the module docstring)."""
    sc = world.scenario
    hours = sc.hours
    gpus = sc.server.gpus
    reclaimed_h = _reclaimed_node_hours(world, day)
    by_type = {"reserved": 0.0, "on_demand": 0.0, "spot": 0.0}
    by_region: dict[str, float] = {}
    usd_total = 0.0
    for r in world.regions:
        usd = 0.0
        for kind, nodes in r.servers.items():
            node_h = nodes * hours - (reclaimed_h.get(r.name, 0.0) if kind == "spot" else 0.0)
            gpu_h = node_h * gpus
            by_type[kind] += gpu_h
            usd += gpu_h * sc.prices.of(kind)
        by_region[r.name] = round(usd, 2)
        usd_total += usd
    return {
        "gpu_hours": {k: round(v, 1) for k, v in by_type.items()},
        "usd": round(usd_total, 2),
        "usd_by_region": by_region,
    }


def _reclaimed_node_hours(world: World, day: Day) -> dict[str, float]:
    """Spot node-hours lost to preemption waves, per region (not paid for)."""
    horizon = world.scenario.hours * 3600.0
    out: dict[str, float] = {}
    for ev in day.events:
        if ev.capacity_type != "spot":
            continue
        if ev.cause == "preemption":
            out[ev.region] = out.get(ev.region, 0.0) + (-ev.nodes) * (horizon - ev.t_s) / 3600
        elif ev.cause == "preemption_end":
            out[ev.region] = out.get(ev.region, 0.0) - ev.nodes * (horizon - ev.t_s) / 3600
    return out


def summarize(world: World, day: Day, runs: Sequence[Run]) -> dict[str, Any]:
    """The ``summary.json`` document."""
    sc = world.scenario
    n = len(day.arrivals)
    events: dict[str, int] = {}
    for ev in day.events:
        events[ev.cause] = events.get(ev.cause, 0) + abs(ev.nodes)
    money = cost(world, day)
    countries = sorted({c.country for c in world.cells})
    return {
        "scenario": {
            "name": sc.name,
            "seed": sc.seed,
            "hours": sc.hours,
            "slo_ttft_ms": sc.slo_ttft_ms,
            "staleness_s": sc.staleness_s,
        },
        "requests": n,
        "mean_rps": round(n / (sc.hours * 3600.0), 2),
        "demand": {"cells": len(world.cells), "countries": len(countries)},
        "capacity": {
            "server": {"gpus": sc.server.gpus, "concurrency": sc.server.concurrency},
            "regions": {
                r.name: {"servers": dict(r.servers), "slots": slots}
                for r, slots in zip(world.regions, world.slots, strict=True)
            },
            "node_events": dict(sorted(events.items())),
        },
        "cost": money,
        "policies": {run.policy: _policy(world, day, run, money["usd"]) for run in runs},
    }


def _policy(world: World, day: Day, run: Run, usd: float) -> dict[str, Any]:
    sc = world.scenario
    n = len(day.arrivals)
    ok = run.region >= 0
    served = int(ok.sum())
    ttft = run.ttft_ms
    good = ttft <= sc.slo_ttft_ms  # inf (failed) is never good
    cells = day.arrivals.cell
    spilled = ok & (run.region != world.nearest[cells])
    violations = ok & ~world.allowed[cells, np.where(ok, run.region, 0)]
    n_good = int(good.sum())
    return {
        "ttft_ms": _percentiles(ttft[ok]),
        "slo_attainment": _share(n_good / n) if n else None,
        "spill_share": _share(spilled.sum() / served) if served else None,
        "residency_violations": int(violations.sum()),
        "failed": int(n - served),
        "denied": run.denied,
        "decisions": run.decisions,
        "usd_per_1k_good": round(usd / (n_good / 1000.0), 4) if n_good else None,
        "regions": _regions(world, run, ok, served),
        "countries": _countries(world, day, run, ok, good, spilled),
    }


def _regions(world: World, run: Run, ok: npt.NDArray[np.bool_], served: int) -> dict[str, Any]:
    counts = np.bincount(run.region[ok], minlength=len(world.regions))
    out: dict[str, Any] = {}
    for r in world.regions:
        mine = run.region == r.index
        waits = run.wait_s[mine] * 1e3
        slot_s = float(run.slot_s[r.index])
        out[r.name] = {
            "requests": int(counts[r.index]),
            "share": _share(counts[r.index] / served) if served else None,
            "utilization": _share(run.busy_s[r.index] / slot_s) if slot_s > 0 else None,
            "wait_ms_mean": _ms(waits.mean()) if waits.size else None,
            "wait_ms_p95": _ms(np.percentile(waits, 95)) if waits.size else None,
        }
    return out


def _countries(
    world: World,
    day: Day,
    run: Run,
    ok: npt.NDArray[np.bool_],
    good: npt.NDArray[np.bool_],
    spilled: npt.NDArray[np.bool_],
) -> dict[str, Any]:
    country_of = np.array([c.country for c in world.cells])
    per_request = country_of[day.arrivals.cell]
    order = np.argsort(per_request, kind="stable")
    keys, starts = np.unique(per_request[order], return_index=True)
    bounds = [*starts.tolist(), len(order)]
    out: dict[str, Any] = {}
    for k, country in enumerate(keys.tolist()):
        idx = order[bounds[k] : bounds[k + 1]]
        served = ok[idx]
        n_served = int(served.sum())
        out[country] = {
            "requests": int(idx.size),
            "ttft_ms": _percentiles(run.ttft_ms[idx][served]),
            "slo_attainment": _share(good[idx].mean()),
            "spill_share": _share(spilled[idx].sum() / n_served) if n_served else None,
        }
    return out


def series(world: World, day: Day, runs: Sequence[Run]) -> dict[str, Any]:
    """Time series for the plots: per 15 minutes, TTFT p95 and SLO attainment by policy and
    utilisation by region; and the largest spill flows (cell to region) by policy."""
    t = day.arrivals.t_s
    horizon = world.scenario.hours * 3600.0
    nbins = max(1, int(np.ceil(horizon / BIN_S)))
    edges = np.searchsorted(t, np.arange(nbins + 1) * BIN_S)
    doc: dict[str, Any] = {
        "bin_s": BIN_S,
        "bins": nbins,
        "regions": [r.name for r in world.regions],
        "region_locations": [[r.lat, r.lon] for r in world.regions],
        "ttft_p95_ms": {},
        "slo_attainment": {},
        "utilization": {},
        "flows": {},
    }
    for run in runs:
        p95: list[float | None] = []
        slo: list[float | None] = []
        for b in range(nbins):
            sl = slice(int(edges[b]), int(edges[b + 1]))
            tt = run.ttft_ms[sl]
            fin = tt[np.isfinite(tt)]
            p95.append(_ms(np.percentile(fin, 95)) if fin.size else None)
            slo.append(_share((tt <= world.scenario.slo_ttft_ms).mean()) if tt.size else None)
        doc["ttft_p95_ms"][run.policy] = p95
        doc["slo_attainment"][run.policy] = slo
        doc["utilization"][run.policy] = _utilization_series(world, day, run, nbins)
        doc["flows"][run.policy] = _flows(world, day, run)
    return doc


def _utilization_series(world: World, day: Day, run: Run, nbins: int) -> dict[str, list[float]]:
    """Service started in each bin over the region's full slots: an approximation (work is
    counted where it starts), clipped to 1.5 for the plot."""
    ok = run.region >= 0
    start = day.arrivals.t_s[ok] + run.wait_s[ok]
    b = np.minimum((start // BIN_S).astype(np.int64), nbins - 1)
    r = run.region[ok].astype(np.int64)
    busy = np.bincount(
        r * nbins + b, weights=day.service_s[ok], minlength=len(world.regions) * nbins
    )
    busy = busy.reshape(len(world.regions), nbins)
    out = {}
    for region, slots in zip(world.regions, world.slots, strict=True):
        cap = max(1, slots) * BIN_S
        out[region.name] = [_share(min(1.5, v / cap)) for v in busy[region.index]]
    return out


def _flows(world: World, day: Day, run: Run) -> list[list[float]]:
    """[cell lat, cell lon, region index, requests] of the largest spill flows."""
    ok = run.region >= 0
    cells = day.arrivals.cell[ok].astype(np.int64)
    regions = run.region[ok].astype(np.int64)
    spill = regions != world.nearest[cells]
    key = cells[spill] * len(world.regions) + regions[spill]
    counts = np.bincount(key, minlength=len(world.cells) * len(world.regions))
    top = np.argsort(-counts, kind="stable")[:TOP_FLOWS]
    flows = []
    for k in top.tolist():
        if counts[k] == 0:
            break
        cell = world.cells[k // len(world.regions)]
        flows.append([cell.lat, cell.lon, k % len(world.regions), int(counts[k])])
    return flows
