"""The simulator's engine: queueing against theory, gslb's decisions against a live worker,
and residency under every shipped scenario's faults."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from gslb.core.config import parse_toml
from gslb.edge.geoip import GeoIP
from gslb.edge.server import Worker
from gslb.model.demand import Cell, Diurnal, TokenDist, cluster, load_cities
from gslb.model.engine import FAILED, GslbPolicy, build_world, draw_day, region_servers, run_policy
from gslb.model.queueing import RegionQueue
from gslb.model.scenario import RegionCapacity, Scenario, ServerModel, parse_scenario
from gslb.model.summary import summarize
from tests.mmdb_fixtures import EXPECTED, SAMPLE_IP, write_world_mmdb

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "example.toml"
SCENARIOS = sorted((ROOT / "config" / "scenarios").glob("*.toml"))


def erlang_c_wait(c: int, lam: float, mu: float) -> float:
    """Mean wait in queue of M/M/c (Erlang C over c*mu - lam)."""
    a = lam / mu
    rho = a / c
    tail = a**c / math.factorial(c) / (1 - rho)
    p_wait = tail / (sum(a**k / math.factorial(k) for k in range(c)) + tail)
    return p_wait / (c * mu - lam)


def test_erlang_c_reference_value() -> None:
    assert erlang_c_wait(10, 9.0, 1.0) == pytest.approx(0.6687, abs=5e-5)


def one_region_world(slots: int, rps: float, hours: float):  # type: ignore[no-untyped-def]
    text = """
[[regions]]
name = "solo"
location = [40.0, -75.0]
provider = "aws"
jurisdiction = "US"
capacity = 10
  [[regions.endpoints]]
  url = "http://10.0.0.1:8000"
"""
    cfg = parse_toml(text, "solo.toml")
    scenario = Scenario(
        hours=hours,
        total_rps=rps,
        diurnal=Diurnal(trough_ratio=1.0),  # flat: a homogeneous Poisson process
        input_tokens=TokenDist(kind="fixed", mean=1.0),
        output_tokens=TokenDist(kind="fixed", mean=1.0),
        server=ServerModel(
            concurrency=slots,
            prefill_ms_per_1k_tokens=0.0,
            decode_ms_per_token=0.0,
            overhead_ms=1000.0,  # a mean service of 1 s ...
            service="exponential",  # ... exponentially distributed
        ),
        capacity=(RegionCapacity("solo", reserved=1),),
        jitter_ms=0.0,
        gpu_failures_per_hour=0.0,
        policies=("gslb",),
    )
    cell = Cell(0, "Philadelphia", "US", 39.95, -75.17, 1_000_000, -4.0)
    return build_world(cfg, scenario, [cell])


def test_one_region_with_exponential_service_waits_as_erlang_c() -> None:
    world = one_region_world(slots=10, rps=9.0, hours=48.0)  # M/M/10 at rho 0.9
    day = draw_day(world, np.random.default_rng(7))
    assert day.service_s.mean() == pytest.approx(1.0, rel=0.01)
    run = run_policy(world, day, "gslb")
    assert (run.region == 0).all()
    warm = day.arrivals.t_s > 3600.0  # past the first hour, from an empty system
    mean_wait = float(run.wait_s[warm].mean())
    assert mean_wait == pytest.approx(erlang_c_wait(10, 9.0, 1.0), rel=0.03)
    # Utilisation is the offered load over the slots.
    assert run.busy_s[0] / run.slot_s[0] == pytest.approx(0.9, rel=0.02)


def test_a_region_that_loses_slots_finishes_running_requests_and_serves_with_the_rest() -> None:
    q = RegionQueue(2)
    assert q.admit(0.0, 10.0) == 0.0
    assert q.admit(0.0, 10.0) == 0.0
    q.resize(1.0, 1)  # a node goes: one of the two running requests still finishes
    assert q.admit(2.0, 1.0) == 10.0  # one slot left, free at 10
    assert q.admit(2.0, 1.0) == 11.0
    q.resize(3.0, 3)  # two come back at 3
    assert q.admit(4.0, 1.0) == 4.0
    assert q.in_system(4.5) == 5
    assert q.in_system(10.5) == 2


def test_servers_come_from_the_config_unless_the_scenario_gives_them() -> None:
    cfg = parse_toml(EXAMPLE.read_text(), str(EXAMPLE))
    sc = Scenario(server=ServerModel(concurrency=16))
    servers = region_servers(cfg, sc)
    us_east = servers[[r.name for r in cfg.regions].index("us-east")]
    assert sum(us_east.values()) == math.ceil(256 / 16)
    # us-east's endpoints: two reserved, one on-demand, dealt in turn.
    assert us_east == {"reserved": 11, "on_demand": 5, "spot": 0}
    given = dataclasses.replace(sc, capacity=(RegionCapacity("us-east", 3, 2, 1),))
    assert region_servers(cfg, given)[0] == {"reserved": 3, "on_demand": 2, "spot": 1}
    with pytest.raises(ValueError, match="no region 'mars'"):
        region_servers(cfg, dataclasses.replace(sc, capacity=(RegionCapacity("mars", 1),)))


def test_the_simulators_decisions_are_a_live_workers_for_the_same_state(tmp_path: Path) -> None:
    mmdb = tmp_path / "world.mmdb"
    write_world_mmdb(str(mmdb))
    base = parse_toml(EXAMPLE.read_text(), str(EXAMPLE))
    names = sorted(EXPECTED)
    cells = [
        Cell(i, name, EXPECTED[name][0], EXPECTED[name][2], EXPECTED[name][3], 1, 0.0)
        for i, name in enumerate(names)
    ]
    world = build_world(base, Scenario(), cells)
    # The live worker runs the fleet as simulated (its capacities and learned service time).
    cfg = dataclasses.replace(world.cfg, geoip=dataclasses.replace(base.geoip, database=str(mmdb)))
    worker = Worker(cfg, geoip=GeoIP(str(mmdb)), health=False)
    sim = GslbPolicy(world)
    rng = np.random.default_rng(3)
    n = len(world.regions)
    view = worker.runtime.fleet.view
    compared = 0
    for _ in range(60):
        routable = (rng.random(n) > 0.3).tolist()
        load = (rng.random(n) * np.array(world.slots) * 1.3).tolist()
        sim.see(routable, load)
        for i in range(n):
            view.routable[i] = view.last_resort[i] = 1 if routable[i] else 0
            view.load[i] = load[i]
        for k, name in enumerate(names):
            live = worker.explain(SAMPLE_IP[name], None, None, None, None)
            order = sim.choose(k)
            assert (world.regions[order[0]].name if order else None) == live["region"]
            compared += 1
    assert compared == 60 * len(names)


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_gslb_never_breaks_residency_under_any_shipped_scenario(path: Path) -> None:
    cfg = parse_toml(EXAMPLE.read_text(), str(EXAMPLE))
    sc = parse_scenario(path.read_text(), str(path))
    ends = [o.start_h + o.duration_h for o in sc.outages] + [
        w.start_h + w.duration_h for w in sc.preemptions
    ]
    # A lighter day that still covers every scripted fault; failures 500x as often.
    sc = dataclasses.replace(
        sc,
        total_rps=6.0,
        hours=max([2.0, *ends]) + 0.5,
        gpu_failures_per_hour=sc.gpu_failures_per_hour * 500,
        repair_h=0.5,
    )
    world = build_world(cfg, sc, cluster(load_cities(), 60, sc.date))
    day = draw_day(world, np.random.default_rng(sc.seed))
    assert any(ev.cause == "gpu_failure" for ev in day.events)
    runs = [run_policy(world, day, p) for p in sc.policies]
    summary = summarize(world, day, runs)
    policies = summary["policies"]
    assert policies["gslb"]["residency_violations"] == 0
    # The policies blind to residency report what they broke: round robin sends Canadians
    # everywhere on any day.
    assert policies["round_robin"]["residency_violations"] > 0
    gslb = runs[-1]
    assert gslb.policy == "gslb"
    served = gslb.region != FAILED
    assert world.allowed[day.arrivals.cell[served], gslb.region[served]].all()
    if path.stem == "provider-outage":  # AWS gone: Canada's only active region with it
        canada = np.array([c.country == "CA" for c in world.cells])[day.arrivals.cell]
        during = day.arrivals.t_s < 2 * 3600
        names = np.array([r.name for r in world.regions])
        went = set(names[gslb.region[canada & during & served]].tolist())
        assert went == {"ca-west-standby"}
        assert policies["nearest"]["residency_violations"] > 0
