"""A day of the world's inference traffic, through the real router and the baselines. Pure.

``World`` is what does not change during a run: the fleet from gslb's config (its regions,
jurisdictions and residency rules, with the scenario's servers), the demand cells, the round
trip from each cell to each region (gslb's own latency model), and what each cell may use.
``draw_day`` draws the day once (arrivals, sizes, network jitter, failures) and
``run_policy`` runs one policy on those draws; every policy runs on the same ones:

* arrivals are taken in time order; capacity changes and the router's snapshots are applied
  between them as their time comes;
* the policy sees the regions as of the last snapshot (``staleness_s`` old at most), as a
  production router sees health and load reports that lag;
* gslb's policy is ``Router.decide`` itself, with the scenario's latency budget, on a
  ``LiveView`` built from the snapshot; its decision is reused for every request of the same
  cell until the next snapshot (same facts, same view: the same decision);
* a request sent to a region with no serving capacity left is refused there: gslb tries its
  next candidate (up to ``routing.max_attempts``), a baseline fails it;
* a region is a multi-server FCFS queue (``gslb.model.queueing``); TTFT = round trip (with
  jitter) + queue wait + prefill. Requests join a region's queue when sent: the one-way
  network delay shifts their arrival by tens of milliseconds, which the model ignores.

Nothing here reads a clock or a file; ``gslb.ops.simulate`` loads the inputs and writes the
reports.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Final

import numpy as np
import numpy.typing as npt

from gslb.core.config import Config
from gslb.core.geo import Location
from gslb.core.policy import RequestFacts
from gslb.core.router import Router
from gslb.model import baselines
from gslb.model.demand import Arrivals, Cell, arrivals
from gslb.model.failures import CapacityEvent, Pool, timeline
from gslb.model.queueing import RegionQueue
from gslb.model.scenario import Scenario

BIN_S: Final = 900.0  # time series resolution: 15 minutes
FAILED: Final = -1  # where a request went: no region (refused everywhere, or denied)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int32]


@dataclass(frozen=True, slots=True)
class SimRegion:
    index: int
    name: str
    provider: str
    jurisdiction: str
    lat: float
    lon: float
    role: str
    servers: dict[str, int]  # by capacity type

    @property
    def total_servers(self) -> int:
        return sum(self.servers.values())


@dataclass(frozen=True, slots=True)
class World:
    """Everything fixed for a run: regions, cells, round trips, who may go where."""

    cfg: Config  # with each region's capacity set to its servers x concurrency
    scenario: Scenario
    regions: tuple[SimRegion, ...]
    cells: tuple[Cell, ...]
    rtt_ms: FloatArray  # (cells, regions), gslb's latency model
    allowed: npt.NDArray[np.bool_]  # (cells, regions): residency allows it
    nearest: IntArray  # per cell: the nearest region by round trip
    locations: tuple[Location, ...]

    @property
    def slots(self) -> list[int]:
        c = self.scenario.server.concurrency
        return [r.total_servers * c for r in self.regions]

    def pools(self) -> list[Pool]:
        return [
            Pool(r.name, r.provider, n, self.scenario.server.gpus, kind)
            for r in self.regions
            for kind, n in r.servers.items()
            if n > 0
        ]


def region_servers(cfg: Config, scenario: Scenario) -> list[dict[str, int]]:
    """Servers per region and capacity type: the scenario's ``[[capacity]]``, else the
    config's capacity over the server's concurrency, split like the region's endpoints."""
    given = {c.region: c for c in scenario.capacity}
    names = {r.name for r in cfg.regions}
    for name in given:
        if name not in names:
            raise ValueError(f"capacity: no region {name!r} in the config")
    out = []
    for r in cfg.regions:
        if r.name in given:
            c = given[r.name]
            out.append({"reserved": c.reserved, "on_demand": c.on_demand, "spot": c.spot})
            continue
        total = max(1, math.ceil(r.capacity / scenario.server.concurrency))
        kinds = [e.capacity_type for e in r.endpoints] or ["reserved"]
        split = {k: 0 for k in ("reserved", "on_demand", "spot")}
        for i in range(total):
            split[kinds[i % len(kinds)]] += 1
        out.append(split)
    return out


def build_world(cfg: Config, scenario: Scenario, cells: Sequence[Cell]) -> World:
    servers = region_servers(cfg, scenario)
    conc = scenario.server.concurrency
    # The router's service time is what a live edge learns it to be (latencylearn): the
    # scenario's mean time a request holds its slot.
    service_ms = mean_service_s(scenario) * 1e3
    regions_cfg = tuple(
        replace(r, capacity=max(1, sum(s.values()) * conc), service_ms=service_ms)
        for r, s in zip(cfg.regions, servers, strict=True)
    )
    cfg = replace(cfg, regions=regions_cfg)
    router = Router(cfg)
    regions = tuple(
        SimRegion(i, r.name, r.provider, r.jurisdiction, r.location[0], r.location[1], r.role, s)
        for i, (r, s) in enumerate(zip(cfg.regions, servers, strict=True))
    )
    locations = tuple(Location(c.country, None, c.lat, c.lon) for c in cells)
    rtt = np.array([list(router.net_ms(loc)) for loc in locations], dtype=np.float64)
    n = len(regions)
    allowed = np.array(
        [[bool(router.placement.residency(loc.country)[0] >> i & 1) for i in range(n)]
         for loc in locations],
        dtype=np.bool_,
    ).reshape(len(cells), n)  # fmt: skip
    nearest = np.argmin(rtt, axis=1).astype(np.int32) if len(cells) else np.zeros(0, np.int32)
    return World(cfg, scenario, regions, tuple(cells), rtt, allowed, nearest, locations)


def mean_service_s(scenario: Scenario) -> float:
    """The mean time a request holds a slot, from the scenario's server and size models."""
    return float(
        scenario.server.service_s(
            scenario.input_tokens.expected(), scenario.output_tokens.expected()
        )
    )


# -- the day's draws, shared by every policy ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Day:
    arrivals: Arrivals
    service_s: FloatArray
    prefill_s: FloatArray
    jitter_ms: FloatArray
    u: FloatArray  # a uniform per request, for policies that draw
    events: tuple[CapacityEvent, ...]


def draw_day(world: World, rng: np.random.Generator, scaling: Sequence[CapacityEvent] = ()) -> Day:
    """The day's arrivals, sizes, jitter, draws and capacity events. ``scaling``: capacity
    the operator adds or removes on a schedule (a plan's hourly on-demand and spot), merged
    with the failures in time order."""
    sc = world.scenario
    arr = arrivals(
        world.cells,
        sc.total_rps,
        sc.diurnal,
        sc.hours,
        rng,
        start_utc_hour=sc.start_utc_hour,
        input_dist=sc.input_tokens,
        output_dist=sc.output_tokens,
    )
    n = len(arr)
    server = sc.server
    prefill = np.asarray(server.prefill_s(arr.input_tokens.astype(np.float64)), dtype=np.float64)
    service = np.asarray(
        server.service_s(arr.input_tokens.astype(np.float64), arr.output_tokens.astype(np.float64)),
        dtype=np.float64,
    )
    if server.service == "exponential":  # same mean, memoryless: for checks against theory
        service = rng.exponential(float(service.mean()) if n else 1.0, n)
    jitter = rng.exponential(sc.jitter_ms, n) if sc.jitter_ms > 0 else np.zeros(n)
    u = rng.random(n)
    events = timeline(
        world.pools(),
        sc.hours,
        rng,
        outages=sc.outages,
        waves=sc.preemptions,
        rate_per_gpu_hour=sc.gpu_failures_per_hour,
        repair_h=sc.repair_h,
    )
    events = sorted([*events, *scaling], key=lambda ev: ev.t_s)
    return Day(arr, service, prefill, jitter, u, tuple(events))


# -- one policy over the day -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    """What one policy did with the day: per request, where and how fast."""

    policy: str
    region: npt.NDArray[np.int16]  # FAILED when refused everywhere or denied
    ttft_ms: npt.NDArray[np.float64]  # inf when failed
    wait_s: npt.NDArray[np.float64]  # inf when failed
    busy_s: FloatArray  # per region: slot-seconds of service within the horizon
    slot_s: FloatArray  # per region: slot-seconds available
    denied: int  # no region the rules allow was up (gslb's 503 no_eligible_region)
    decisions: int  # router or policy calls (a decision is reused within a snapshot)


# (cell, request index) -> the regions to try, in order
Chooser = Callable[[int, int], tuple[int, ...]]


class _Regions:
    """Every region's queue and serving slots while one policy runs."""

    def __init__(self, world: World) -> None:
        self.conc = world.scenario.server.concurrency
        self.full = world.slots
        self.slots = list(self.full)
        self.queues = [RegionQueue(s) for s in self.full]
        self.slot_s = [0.0] * len(self.full)
        self.since = 0.0

    def apply(self, region: int, nodes: int, t: float) -> None:
        self.account(t)
        self.slots[region] = max(0, self.slots[region] + nodes * self.conc)
        self.queues[region].resize(t, self.slots[region])

    def account(self, t: float) -> None:
        dt = t - self.since
        if dt > 0:
            for i, s in enumerate(self.slots):
                self.slot_s[i] += s * dt
            self.since = t


PROGRESS_EVERY: Final = 250_000  # requests between two progress reports


def run_policy(
    world: World, day: Day, policy: str, progress: Callable[[int], None] | None = None
) -> Run:
    """One policy over the day's draws (see the module docstring). ``progress`` is told how
    many requests are done, now and then."""
    sc = world.scenario
    n = len(day.arrivals)
    index = {r.name: i for i, r in enumerate(world.regions)}
    regions = _Regions(world)
    events = [(ev.t_s, index[ev.region], ev.nodes) for ev in day.events]
    events.append((math.inf, 0, 0))
    chooser, on_snapshot, counters = _chooser(world, policy, regions, day.u.tolist())
    t_arr = day.arrivals.t_s.tolist()
    cells = day.arrivals.cell.tolist()
    service = day.service_s.tolist()
    where = [FAILED] * n
    starts = [math.inf] * n
    refusals = [0] * n
    slots = regions.slots
    admit = [q.admit for q in regions.queues]
    staleness = sc.staleness_s
    next_snap = 0.0
    ev_i = 0
    next_ev = events[0][0]
    next_change = 0.0
    reported = 0
    for i in range(n):
        t = t_arr[i]
        if t >= next_change:
            if progress is not None and i - reported >= PROGRESS_EVERY:
                progress(i)
                reported = i
            while t >= next_ev or t >= next_snap:
                if next_ev <= next_snap:
                    _, r, nodes = events[ev_i]
                    regions.apply(r, nodes, next_ev)
                    ev_i += 1
                    next_ev = events[ev_i][0]
                else:
                    on_snapshot(next_snap)
                    next_snap += staleness
            next_change = next_ev if next_ev < next_snap else next_snap
        for r in chooser(cells[i], i):
            if slots[r]:
                starts[i] = admit[r](t, service[i])
                where[i] = r
                break
            refusals[i] += 1  # refused: the next candidate, if the policy has one
    horizon = sc.hours * 3600.0
    regions.account(horizon)
    return _finish(world, day, policy, where, starts, refusals, regions, counters, horizon)


def _finish(
    world: World,
    day: Day,
    policy: str,
    where: list[int],
    starts: list[float],
    refusals: list[int],
    regions: _Regions,
    counters: dict[str, int],
    horizon: float,
) -> Run:
    """Per-request TTFT and per-region busy time, vectorised once the loop is done."""
    region = np.array(where, dtype=np.int16)
    start = np.array(starts, dtype=np.float64)
    ok = region >= 0
    cells = day.arrivals.cell
    wait = start - day.arrivals.t_s
    rtt = np.where(ok, world.rtt_ms[cells, np.where(ok, region, 0)], 0.0)
    extra = np.array(refusals, dtype=np.float64) * world.scenario.connect_fail_ms
    ttft = np.where(ok, rtt + day.jitter_ms + extra + (wait + day.prefill_s) * 1e3, np.inf)
    finish = np.minimum(start + day.service_s, horizon)
    served = np.where(ok, np.maximum(0.0, finish - np.minimum(start, horizon)), 0.0)
    busy = np.bincount(region[ok], weights=served[ok], minlength=len(world.regions))
    return Run(
        policy=policy,
        region=region,
        ttft_ms=ttft,
        wait_s=np.where(ok, wait, np.inf),
        busy_s=busy.astype(np.float64),
        slot_s=np.array(regions.slot_s),
        denied=counters["denied"],
        decisions=counters["decisions"],
    )


# Baselines whose choice depends on the view alone: one call per cell and snapshot.
_PER_SNAPSHOT: Final = frozenset({"nearest", "least_loaded", "waterfall"})


def _chooser(
    world: World, policy: str, regions: _Regions, u: list[float]
) -> tuple[Chooser, Callable[[float], None], dict[str, int]]:
    """The policy's choice per request, and what it does at each snapshot."""
    counters = {"denied": 0, "decisions": 0}
    if policy == "gslb":
        return _gslb_chooser(world, regions, counters)
    sites = [
        baselines.Site(r.name, r.lat, r.lon, float(max(1, full)))
        for r, full in zip(world.regions, regions.full, strict=True)
    ]
    cell_ll = np.array([[c.lat, c.lon] for c in world.cells], dtype=np.float64).reshape(-1, 2)
    chosen = {p.name: p for p in baselines.baselines(sites, cell_ll)}[policy]
    n = len(sites)
    view = baselines.View(healthy=np.ones(n), load=np.zeros(n))
    full = regions.full
    cache: dict[int, tuple[int, ...]] = {}

    def snapshot(t: float) -> None:
        cache.clear()
        view.healthy = np.array(
            [s / f if f else 0.0 for s, f in zip(regions.slots, full, strict=True)]
        )
        view.load = np.array([q.in_system(t) for q in regions.queues], dtype=np.float64)

    def choose(cell: int, i: int) -> tuple[int, ...]:
        counters["decisions"] += 1
        r = chosen.choose(cell, view, u[i])
        return (r,) if r >= 0 else ()

    if policy not in _PER_SNAPSHOT:
        return choose, snapshot, counters

    def choose_cached(cell: int, i: int) -> tuple[int, ...]:
        order = cache.get(cell)
        if order is None:
            order = cache[cell] = choose(cell, i)
        return order

    return choose_cached, snapshot, counters


class GslbPolicy:
    """gslb's own policy: ``Router.decide`` on a ``LiveView`` of the last snapshot, one
    decision per cell and snapshot (the same facts and view give the same decision)."""

    def __init__(self, world: World, counters: dict[str, int] | None = None) -> None:
        self.router = Router(world.cfg)
        self.view = self.router.new_view()
        budget = budget_ms(world)
        self.facts = [RequestFacts(location=loc, budget_ms=budget) for loc in world.locations]
        self.cache: dict[int, tuple[int, ...]] = {}
        self.counters = counters if counters is not None else {"decisions": 0, "denied": 0}

    def see(self, routable: Sequence[bool], load: Sequence[float]) -> None:
        """A snapshot: which regions have serving capacity, and their load."""
        self.cache.clear()
        view = self.view
        for i, (up, n) in enumerate(zip(routable, load, strict=True)):
            view.routable[i] = view.last_resort[i] = 1 if up else 0
            view.load[i] = float(n)

    def choose(self, cell: int, i: int = 0) -> tuple[int, ...]:
        """The regions to try, in order (empty: denied)."""
        order = self.cache.get(cell)
        if order is None:
            self.counters["decisions"] += 1
            order = self.cache[cell] = self.router.decide(self.facts[cell], self.view).order
        if not order:
            self.counters["denied"] += 1
        return order


def _gslb_chooser(
    world: World, regions: _Regions, counters: dict[str, int]
) -> tuple[Chooser, Callable[[float], None], dict[str, int]]:
    policy = GslbPolicy(world, counters)

    def snapshot(t: float) -> None:
        policy.see([s > 0 for s in regions.slots], [q.in_system(t) for q in regions.queues])

    return policy.choose, snapshot, counters


def budget_ms(world: World) -> float:
    """The latency budget every simulated request carries."""
    b = world.scenario.budget_ms
    return world.cfg.routing.latency_budget_ms if b is None else b
