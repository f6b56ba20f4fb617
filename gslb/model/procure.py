"""How many GPUs to reserve, buy on demand and take as spot, region by region. Pure.

Three ways to buy a GPU-hour, per pool (one GPU type in one region):

* **reserved** at ``r`` per GPU-hour, committed for every hour of the period;
* **on-demand** at ``p``, bought hour by hour;
* **spot** at ``s``, bought hour by hour but only there a share ``a`` of the hours.

On-demand and spot together are the *flexible* capacity. Spot is counted at its availability
with a floor for correlated preemption (preemptions come in waves, so a share of the flexible
capacity is always planned on-demand): of each flexible GPU-hour a share
``a = min(availability, 1 - spot_floor)`` is spot and the rest on-demand, at an expected
``c_flex = a*s + (1-a)*p`` (``c_flex``). Spot dearer than on-demand is never planned.

**One pool.** Reserving ``R`` GPUs costs ``r*H*R`` over ``H`` hours and the hours above it cost
``c_flex`` each: the newsvendor, whose answer is the quantile ``F^-1(1 - r/c_flex)`` of the
hourly demand (``newsvendor_reserve``).

**The fleet.** Residency (which regions may serve a zone) and redundancy (the fleet still
covers the demand with a region or a provider lost) couple the pools, so ``plan`` solves one
linear program with HiGHS (``scipy.optimize.linprog``): reserved levels ``R_p``, flexible
GPUs ``F_{p,h}`` per hour, and for each survival scenario its own flows ``x^s_{z,p,h}`` from
zones to the pools they may use. Every scenario's flows must meet every zone's demand at every
hour within ``R_p + F_{p,h}`` of the pools it keeps; the capacity is shared by all scenarios,
so the plan pays once for the headroom the worst loss needs. A zone that has no allowed pool
left in a scenario (a jurisdiction with one region, losing it) is exempted from that scenario
and reported in ``Plan.unprotected``, never made infeasible.

The week planned stands for the whole commitment term: a reserved GPU's price is charged for
every hour of the period, whatever ``reserved_term_months`` is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from scipy import sparse  # type: ignore[import-untyped]
from scipy.optimize import linprog  # type: ignore[import-untyped]

SURVIVE: Final = ("region", "provider", "none")
# USD per GPU-hour per ms of round trip on the no-loss flows: orders equal-cost routings by
# distance, far below any price (100 ms costs 1e-5 USD per GPU-hour).
LATENCY_TIE_BREAK: Final = 1e-7
# Below this a flow or a capacity is solver noise (HiGHS' feasibility tolerance is 1e-7).
_EPS: Final = 1e-6

_Floats = npt.NDArray[np.float64]
_Ints = npt.NDArray[np.int64]


class PlanError(Exception):
    """The fleet cannot serve the demand at all (a zone with no pool), or the solver failed."""


@dataclass(frozen=True, slots=True)
class Offer:
    """One (region, GPU type) pool's prices, per GPU-hour (instance prices / GPUs per instance)."""

    region: str
    provider: str
    gpu: str
    on_demand: float
    spot: float | None  # None: no spot market here
    spot_availability: float  # 0..1, the share of hours spot can be had
    reserved: float | None  # None: no reservation offered
    reserved_term_months: int = 12
    gpus_per_instance: int = 8

    def __post_init__(self) -> None:
        where = f"offer {self.region}/{self.provider}/{self.gpu}"
        if not self.on_demand > 0:
            raise ValueError(f"{where}: on_demand must be > 0")
        if self.spot is not None and not self.spot > 0:
            raise ValueError(f"{where}: spot must be > 0 (or absent)")
        if not 0.0 <= self.spot_availability <= 1.0:
            raise ValueError(f"{where}: spot_availability must be in [0, 1]")
        if self.reserved is not None and not self.reserved > 0:
            raise ValueError(f"{where}: reserved must be > 0 (or absent)")
        if self.reserved_term_months < 1:
            raise ValueError(f"{where}: reserved_term_months must be >= 1")
        if self.gpus_per_instance < 1:
            raise ValueError(f"{where}: gpus_per_instance must be >= 1")


def spot_share(offer: Offer, spot_floor: float) -> float:
    """``a``: the share of flexible GPU-hours planned as spot, the rest being on-demand.

    ``min(availability, 1 - spot_floor)``, and 0 with no spot market or spot no cheaper than
    on-demand (it would only raise ``c_flex``)."""
    if not 0.0 <= spot_floor <= 1.0:
        raise ValueError("spot_floor must be in [0, 1]")
    if offer.spot is None or offer.spot >= offer.on_demand:
        return 0.0
    return min(offer.spot_availability, 1.0 - spot_floor)


def c_flex(offer: Offer, spot_floor: float) -> float:
    """The expected cost of one GPU-hour of flexible capacity: ``a*s + (1-a)*p``, never above p."""
    a = spot_share(offer, spot_floor)
    if a == 0.0 or offer.spot is None:
        return offer.on_demand
    return a * offer.spot + (1.0 - a) * offer.on_demand


def newsvendor_reserve(demand: npt.ArrayLike, reserved: float, flex: float) -> float:
    """The reserved level that minimises ``reserved*H*R + flex*sum(max(0, d_h - R))``.

    The cost's slope in ``R`` is ``reserved*H - flex*#{h: d_h > R}``, so the smallest minimiser
    is the smallest ``R`` with ``#{h: d_h <= R} >= H*(1 - reserved/flex)``: the ``k``-th
    smallest hour with ``k = ceil(H*(1 - reserved/flex))``, i.e. ``F^-1(1 - reserved/flex)``.
    0 when ``reserved >= flex`` (or no demand); constant demand ``d`` gives exactly ``d``."""
    d = np.sort(np.asarray(demand, dtype=np.float64).ravel())
    if d.size == 0 or reserved >= flex:
        return 0.0
    if not flex > 0:
        raise ValueError("the flexible price must be > 0")
    # The tolerance keeps an exact k (say 0.25 * 168 = 42) from rounding up to k + 1.
    k = math.ceil(d.size * (1.0 - reserved / flex) - 1e-9)
    if k <= 0:
        return 0.0
    return max(0.0, float(d[min(k, d.size) - 1]))


@dataclass(frozen=True, slots=True)
class Zone:
    """Where demand comes from: one country, or a group of them."""

    name: str
    allowed: frozenset[str]  # regions that may serve it: residency AND latency budget
    demand: _Floats  # GPUs needed per hour of the period (already at the demand quantile)
    # Round trip to each region (ms). Among routings that cost the same, the plan serves the
    # zone from its nearer regions (a tie-break far below any price, not a cost).
    rtt_ms: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Pool:
    """A region and the offer planned there."""

    region: str
    provider: str
    jurisdiction: str
    offer: Offer


@dataclass(frozen=True, slots=True)
class PoolPlan:
    """What to buy in one pool. ``on_demand + spot`` is the flexible capacity per hour."""

    region: str
    provider: str
    gpu: str
    reserved: int  # GPUs for the whole period, whole instances (multiple of gpus_per_instance)
    on_demand: _Floats  # GPUs per hour
    spot: _Floats  # expected GPUs per hour bought as spot (a share a of the flexible ones)
    cost: float  # USD over the period, with ``reserved`` rounded up to whole instances
    reserved_lp: float = 0.0  # the LP's reserved level before rounding to instances


@dataclass(frozen=True, slots=True)
class Plan:
    """The fleet's plan. ``served[z, p, h]``: GPUs of zone ``zones[z]`` served by pool
    ``pools[p]`` at hour ``h`` with nothing lost."""

    pools: tuple[PoolPlan, ...]
    cost: float
    survive: str
    status: str  # "optimal", or the solver's message
    served: _Floats
    unprotected: tuple[str, ...] = ()  # "zone: why" for each loss a zone cannot survive
    zones: tuple[str, ...] = ()
    cost_lp: float = 0.0  # the LP's optimum, before rounding reserved up to instances

    def by_region(self) -> dict[str, PoolPlan]:
        """Each region's pool plan (one pool per region; ``pools`` when there are more)."""
        out: dict[str, PoolPlan] = {}
        for pool in self.pools:
            if pool.region in out:
                raise ValueError(f"region {pool.region} has more than one pool: use Plan.pools")
            out[pool.region] = pool
        return out


@dataclass(frozen=True, slots=True)
class _Scenario:
    """One survival case: what is lost, and the (zone, pool) pairs that keep a flow."""

    lost: str  # "" for the no-failure case, else "region X" / "provider Y"
    pair_zone: _Ints
    pair_pool: _Ints
    zones: _Ints  # zones held to their demand in this case (not exempted)
    exempt: tuple[int, ...]  # zones with no allowed pool left in this case


def _unit(pool: Pool, survive: str) -> str:
    """What a loss takes out with this pool: its region, or its provider."""
    return pool.region if survive == "region" else pool.provider


def _scenarios(pools: Sequence[Pool], survive: str) -> list[tuple[str, frozenset[int]]]:
    """Each survival case as (its name, the pool indices it loses). Every region (or
    provider) in turn, not only the largest of each jurisdiction: which is largest is what the
    plan decides, and a dozen regions keep the LP small."""
    cases: list[tuple[str, frozenset[int]]] = [("", frozenset())]
    if survive == "none":
        return cases
    for name in sorted({_unit(p, survive) for p in pools}):
        lost = frozenset(i for i, p in enumerate(pools) if _unit(p, survive) == name)
        cases.append((f"{survive} {name}", lost))
    return cases


def _build_scenario(
    name: str, lost: frozenset[int], allowed: list[list[int]], n_zones: int
) -> _Scenario:
    pair_zone: list[int] = []
    pair_pool: list[int] = []
    held: list[int] = []
    exempt: list[int] = []
    for z in range(n_zones):
        left = [p for p in allowed[z] if p not in lost]
        if not left:
            exempt.append(z)
            continue
        held.append(z)
        pair_zone.extend([z] * len(left))
        pair_pool.extend(left)
    return _Scenario(
        lost=name,
        pair_zone=np.asarray(pair_zone, dtype=np.int64),
        pair_pool=np.asarray(pair_pool, dtype=np.int64),
        zones=np.asarray(held, dtype=np.int64),
        exempt=tuple(exempt),
    )


def _validate(zones: Sequence[Zone], pools: Sequence[Pool], survive: str) -> int:
    """The number of hours; raises ValueError on inputs no plan can be made of."""
    if survive not in SURVIVE:
        raise ValueError(f"survive must be one of {', '.join(SURVIVE)}, not {survive!r}")
    if not zones:
        raise ValueError("no demand zone to plan for")
    if not pools:
        raise ValueError("no pool to plan")
    hours = {np.asarray(z.demand).shape for z in zones}
    if len(hours) != 1 or len(next(iter(hours))) != 1:
        raise ValueError("every zone needs a 1-d demand series of the same number of hours")
    names = [z.name for z in zones]
    if len(set(names)) != len(names):
        raise ValueError("zone names must be unique")
    keys = [(p.region, p.offer.gpu) for p in pools]
    if len(set(keys)) != len(keys):
        raise ValueError("one pool per (region, GPU type)")
    for z in zones:
        d = np.asarray(z.demand, dtype=np.float64)
        if not np.all(np.isfinite(d)) or np.any(d < 0):
            raise ValueError(f"zone {z.name}: demand must be finite and >= 0")
    return int(next(iter(hours))[0])


def plan(
    zones: Sequence[Zone],
    pools: Sequence[Pool],
    *,
    survive: str = "region",
    spot_floor: float = 0.2,
) -> Plan:
    """The cheapest blend of reserved, on-demand and spot GPUs per pool that serves every
    zone's demand at every hour from the regions it allows, with nothing lost and with any
    one region (``survive="region"``) or provider (``"provider"``) lost."""
    n_hours = _validate(zones, pools, survive)
    n_zones, n_pools = len(zones), len(pools)
    allowed = [[p for p, pool in enumerate(pools) if pool.region in z.allowed] for z in zones]
    for zone, usable in zip(zones, allowed, strict=True):
        if not usable:
            raise PlanError(f"zone {zone.name}: none of its allowed regions has an offer")
    cases = [
        _build_scenario(name, lost, allowed, n_zones) for name, lost in _scenarios(pools, survive)
    ]
    shares = np.array([spot_share(p.offer, spot_floor) for p in pools])
    flex = np.array([c_flex(p.offer, spot_floor) for p in pools])
    demand = np.stack([np.asarray(z.demand, dtype=np.float64) for z in zones])
    rtt = np.array([[z.rtt_ms.get(p.region, 0.0) for p in pools] for z in zones])
    x, status, cost_lp = _solve(cases, pools, flex, demand, n_hours, rtt)

    reserved_lp = np.maximum(x[:n_pools], 0.0)
    flexible = np.maximum(x[n_pools : n_pools * (1 + n_hours)].reshape(n_pools, n_hours), 0.0)
    flexible[flexible < _EPS] = 0.0
    pool_plans = tuple(
        _pool_plan(pool, float(reserved_lp[i]), flexible[i], float(shares[i]), float(flex[i]))
        for i, pool in enumerate(pools)
    )
    served = _served(x, cases[0], n_pools, n_zones, n_hours)
    unprotected = tuple(
        f"{zones[z].name}: no allowed region left with {case.lost} lost"
        for case in cases[1:]
        for z in case.exempt
    )
    return Plan(
        pools=pool_plans,
        cost=float(sum(p.cost for p in pool_plans)),
        survive=survive,
        status=status,
        served=served,
        unprotected=unprotected,
        zones=tuple(z.name for z in zones),
        cost_lp=cost_lp,
    )


def _solve(
    cases: list[_Scenario],
    pools: Sequence[Pool],
    flex: _Floats,
    demand: _Floats,
    n_hours: int,
    rtt: _Floats,
) -> tuple[_Floats, str, float]:
    """Build the LP in sparse form, solve it with HiGHS: the variables, status and optimum.

    Columns: ``R_p`` (n_pools), then ``F_{p,h}`` (row-major), then each case's flows, pair by
    pair, hour by hour. Rows: each case's demand equalities (a flow never over-serves: any
    surplus could be cut without breaking a capacity row), then its capacity inequalities."""
    n_pools = len(pools)
    hours = np.arange(n_hours, dtype=np.int64)
    reserved_price = np.array(
        [p.offer.reserved if p.offer.reserved is not None else 0.0 for p in pools]
    )
    cost = [reserved_price * n_hours, np.repeat(flex, n_hours)]
    eq_rows: list[_Ints] = []
    eq_cols: list[_Ints] = []
    eq_rhs: list[_Floats] = []
    ub_rows: list[_Ints] = []
    ub_cols: list[_Ints] = []
    ub_vals: list[_Floats] = []
    col = n_pools * (1 + n_hours)
    n_eq = n_ub = 0
    for case in cases:
        n_pairs = case.pair_zone.size
        flow_cols = col + np.arange(n_pairs * n_hours, dtype=np.int64).reshape(n_pairs, n_hours)
        if case is cases[0]:  # the tie-break by distance, on the no-loss routing only
            pair_rtt = rtt[case.pair_zone, case.pair_pool] * LATENCY_TIE_BREAK
            cost.append(np.repeat(pair_rtt, n_hours))
        else:
            cost.append(np.zeros(n_pairs * n_hours))
        # Demand rows: one per (held zone, hour), summing the zone's pairs.
        zone_row = np.full(len(demand), -1, dtype=np.int64)
        zone_row[case.zones] = np.arange(case.zones.size)
        rows = n_eq + zone_row[case.pair_zone][:, None] * n_hours + hours[None, :]
        eq_rows.append(rows.ravel())
        eq_cols.append(flow_cols.ravel())
        eq_rhs.append(demand[case.zones].ravel())
        n_eq += case.zones.size * n_hours
        # Capacity rows: one per (pool with a pair, hour): its flows - R_p - F_{p,h} <= 0.
        live = np.unique(case.pair_pool)
        pool_row = np.full(n_pools, -1, dtype=np.int64)
        pool_row[live] = np.arange(live.size)
        rows = n_ub + pool_row[case.pair_pool][:, None] * n_hours + hours[None, :]
        cap_rows = n_ub + np.arange(live.size * n_hours, dtype=np.int64)
        r_cols = np.repeat(live, n_hours)
        f_cols = n_pools + (live[:, None] * n_hours + hours[None, :]).ravel()
        ub_rows += [rows.ravel(), cap_rows, cap_rows]
        ub_cols += [flow_cols.ravel(), r_cols, f_cols]
        ub_vals += [np.ones(rows.size), -np.ones(cap_rows.size), -np.ones(cap_rows.size)]
        n_ub += live.size * n_hours
        col += n_pairs * n_hours

    c = np.concatenate(cost)
    a_eq = _matrix(eq_rows, eq_cols, [np.ones(r.size) for r in eq_rows], n_eq, col)
    a_ub = _matrix(ub_rows, ub_cols, ub_vals, n_ub, col)
    # No reservation offered: R_p is held at 0.
    upper: list[float | None] = [0.0 if p.offer.reserved is None else None for p in pools]
    bounds = [(0.0, u) for u in upper] + [(0.0, None)] * (col - n_pools)
    res: Any = linprog(
        c,
        A_ub=a_ub,
        b_ub=np.zeros(n_ub),
        A_eq=a_eq,
        b_eq=np.concatenate(eq_rhs),
        bounds=bounds,
        method="highs",
    )
    if res.x is None:
        raise PlanError(f"the capacity plan has no solution: {res.message}")
    status = "optimal" if res.status == 0 else str(res.message)
    x = np.asarray(res.x, dtype=np.float64)
    capacity_cols = n_pools * (1 + n_hours)
    cost_lp = float(c[:capacity_cols] @ x[:capacity_cols])  # the tie-break is no cost
    return x, status, cost_lp


def _matrix(
    rows: list[_Ints], cols: list[_Ints], vals: list[_Floats], n_rows: int, n_cols: int
) -> Any:
    return sparse.csr_array(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n_rows, n_cols),
    )


def _pool_plan(
    pool: Pool, reserved_lp: float, flexible: _Floats, a: float, flex: float
) -> PoolPlan:
    """Round reserved up to whole instances (a tolerance keeps 8.0000001 from becoming 16)
    and split the flexible GPUs into spot and on-demand at the spot share ``a``."""
    offer = pool.offer
    per = offer.gpus_per_instance
    reserved = per * math.ceil(max(reserved_lp - _EPS, 0.0) / per)
    price = offer.reserved if offer.reserved is not None else 0.0
    n_hours = flexible.size
    cost = price * n_hours * reserved + flex * float(flexible.sum())
    return PoolPlan(
        region=pool.region,
        provider=pool.provider,
        gpu=offer.gpu,
        reserved=reserved,
        on_demand=(1.0 - a) * flexible,
        spot=a * flexible,
        cost=cost,
        reserved_lp=reserved_lp,
    )


def _served(x: _Floats, case: _Scenario, n_pools: int, n_zones: int, n_hours: int) -> _Floats:
    """The no-failure case's flows as ``[zone, pool, hour]``."""
    base = n_pools * (1 + n_hours)
    flows = x[base : base + case.pair_zone.size * n_hours].reshape(-1, n_hours)
    served = np.zeros((n_zones, n_pools, n_hours))
    served[case.pair_zone, case.pair_pool] = np.maximum(flows, 0.0)
    served[served < _EPS] = 0.0
    return served
