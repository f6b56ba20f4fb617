"""From gslb's config and a demand series to the planner's zones and pools, and back to a plan
document. Pure.

* **Zones.** A zone is a country (its code) or a gslb region (demand read from that region's own
  metrics, taken to come from the region's place and jurisdiction). Where it may be served is
  the simulator's routing rule, gslb's own: the regions its residency rules allow
  (``Placement.residency``), and of those the ones within the latency budget of its centre
  (``Router.net_ms``: gslb's latency model), the nearest allowed one always. A country's centre
  is the population-weighted centre of its cities.
* **The demand quantile.** A series of two weeks or more is folded by hour of the week, and each
  hour of the planned week takes the chosen quantile over the weeks. A shorter series is
  planned as it is.
* **Pools.** One per priced (region, GPU type) that the config has.
* **The document** (``plan.json``): per pool what to buy and what it costs, per region the
  hourly demand served there and the capacity stacked under it, the zones and their allowed
  regions, and what a loss would leave unprotected.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from gslb.core.config import Config
from gslb.core.geo import Location
from gslb.core.router import Router
from gslb.model.demand import Cell
from gslb.model.procure import Offer, Plan, Pool, Zone

HOURS_PER_WEEK: Final = 168
FloatArray = npt.NDArray[np.float64]


def country_centres(cells: Sequence[Cell]) -> dict[str, tuple[float, float]]:
    """Each country's population-weighted centre (on the unit sphere) from its cells."""
    acc: dict[str, list[float]] = {}
    for c in cells:
        lat, lon = math.radians(c.lat), math.radians(c.lon)
        v = acc.setdefault(c.country, [0.0, 0.0, 0.0])
        w = float(c.population)
        v[0] += w * math.cos(lat) * math.cos(lon)
        v[1] += w * math.cos(lat) * math.sin(lon)
        v[2] += w * math.sin(lat)
    out = {}
    for country, (x, y, z) in acc.items():
        out[country] = (
            math.degrees(math.atan2(z, math.hypot(x, y))),
            math.degrees(math.atan2(y, x)),
        )
    return out


def zone_location(zone: str, cfg: Config, centres: Mapping[str, tuple[float, float]]) -> Location:
    """Where a zone's demand comes from (see the module docstring)."""
    for r in cfg.regions:
        if r.name == zone:
            return Location(r.jurisdiction, None, r.location[0], r.location[1])
    point = centres.get(zone)
    if point is None:
        return Location(zone)  # a country with no city of the size asked: no point
    return Location(zone, None, point[0], point[1])


def allowed_regions(router: Router, location: Location, budget_ms: float) -> frozenset[str]:
    """The regions residency allows, within the latency budget (the nearest always)."""
    mask = router.placement.residency(location.country)[0]
    net = router.net_ms(location)
    names = router.names
    ok = [i for i in range(len(names)) if mask >> i & 1]
    if not ok:
        return frozenset()
    nearest = min(ok, key=lambda i: net[i])
    return frozenset(names[i] for i in ok if net[i] <= budget_ms or i == nearest)


def fold_quantile(
    gpus: FloatArray, start: datetime.datetime, quantile: float
) -> tuple[FloatArray, datetime.datetime]:
    """The planned period: (zones, hours) at the quantile, and when it starts.

    Two weeks or more: the week by hour of the week, each hour at ``quantile`` over the
    whole weeks (a partial last week is left out), starting where the series does.
    """
    hours = gpus.shape[1]
    weeks = hours // HOURS_PER_WEEK
    if weeks < 2:
        return gpus.astype(np.float64, copy=True), start
    folded = gpus[:, : weeks * HOURS_PER_WEEK].reshape(gpus.shape[0], weeks, HOURS_PER_WEEK)
    return np.quantile(folded, quantile, axis=1), start


def build_zones(
    names: Sequence[str],
    demand: FloatArray,
    cfg: Config,
    cells: Sequence[Cell],
    budget_ms: float,
) -> list[Zone]:
    """The planner's zones: each name's allowed regions and its demand row."""
    router = Router(cfg)
    centres = country_centres(cells)
    zones = []
    for i, name in enumerate(names):
        location = zone_location(name, cfg, centres)
        allowed = allowed_regions(router, location, budget_ms)
        net = router.net_ms(location)
        rtt = {r: float(net[k]) for k, r in enumerate(router.names)}
        zones.append(Zone(name, allowed, np.asarray(demand[i], dtype=np.float64), rtt))
    return zones


def build_pools(cfg: Config, offers: Sequence[Offer]) -> list[Pool]:
    """One pool per offer whose region the config has (the others are not this fleet's)."""
    regions = {r.name: r for r in cfg.regions}
    return [
        Pool(o.region, regions[o.region].provider, regions[o.region].jurisdiction, o)
        for o in offers
        if o.region in regions
    ]


def _r(x: float, digits: int = 2) -> float:
    return round(float(x), digits)


def plan_document(
    plan: Plan,
    zones: Sequence[Zone],
    pools: Sequence[Pool],
    inputs: Mapping[str, Any],
    utilization: float = 1.0,
) -> dict[str, Any]:
    """The ``plan.json`` document (see the module docstring). The zones' demand was planned
    at ``utilization`` of the capacity: the demand shown is the real one, below it."""
    served_by_pool = plan.served.sum(axis=0) * utilization  # (pools, hours)
    regions: dict[str, Any] = {}
    hourly: dict[str, Any] = {}
    for k, (pool, pp) in enumerate(zip(pools, plan.pools, strict=True)):
        per = pool.offer.gpus_per_instance
        key = (
            pool.region
            if len(pools) == len({p.region for p in pools})
            else (f"{pool.region}/{pool.offer.gpu}")
        )
        regions[key] = {
            "provider": pool.provider,
            "jurisdiction": pool.jurisdiction,
            "gpu": pool.offer.gpu,
            "gpus_per_instance": per,
            "reserved_gpus": pp.reserved,
            "reserved_instances": pp.reserved // per,
            "on_demand_gpu_hours": _r(pp.on_demand.sum(), 1),
            "on_demand_peak_gpus": _r(pp.on_demand.max() if pp.on_demand.size else 0.0),
            "spot_gpu_hours": _r(pp.spot.sum(), 1),
            "spot_peak_gpus": _r(pp.spot.max() if pp.spot.size else 0.0),
            "cost_usd": _r(pp.cost),
        }
        hourly[key] = {
            "demand": [_r(v) for v in served_by_pool[k]],
            "reserved": pp.reserved,
            "on_demand": [_r(v) for v in pp.on_demand],
            "spot": [_r(v) for v in pp.spot],
        }
    return {
        "inputs": dict(inputs),
        "cost_usd": _r(plan.cost),
        "cost_usd_lp": _r(plan.cost_lp),
        "status": plan.status,
        "regions": regions,
        "zones": {
            z.name: {
                "allowed": sorted(z.allowed),
                "peak_gpus": _r(z.demand.max() * utilization if z.demand.size else 0.0),
                "mean_gpus": _r(z.demand.mean() * utilization if z.demand.size else 0.0),
            }
            for z in zones
        },
        "unprotected": list(plan.unprotected),
        "hourly": {"regions": hourly},
    }


def plan_table(doc: Mapping[str, Any]) -> list[str]:
    """The plain-text table of a plan document."""
    inputs = doc["inputs"]
    head = (
        f"plan over {inputs['hours']} h from {inputs['start']}: survive {inputs['survive']}, "
        f"demand at p{round(100 * inputs['quantile'])} over {inputs['utilization']:.0%} busy, "
        f"spot floor {inputs['spot_floor']}, "
        f"budget {inputs['budget_ms']:g} ms"
    )
    rows = [("REGION", "PROVIDER", "GPU", "RESERVED", "ON-DEMAND GPU-H", "PEAK",
             "SPOT GPU-H", "PEAK", "COST $")]  # fmt: skip
    for name, r in doc["regions"].items():
        rows.append(
            (
                name,
                r["provider"],
                r["gpu"],
                f"{r['reserved_gpus']} ({r['reserved_instances']} inst)",
                f"{r['on_demand_gpu_hours']:,.0f}",
                f"{r['on_demand_peak_gpus']:,.1f}",
                f"{r['spot_gpu_hours']:,.0f}",
                f"{r['spot_peak_gpus']:,.1f}",
                f"{r['cost_usd']:,.0f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [head, ""]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    lines += ["", f"total: ${doc['cost_usd']:,.0f} over the period"]
    for why in doc["unprotected"]:
        lines.append(f"unprotected: {why}")
    return lines
