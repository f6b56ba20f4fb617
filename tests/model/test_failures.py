"""GPU failures, outages and preemption waves: counts against first principles, the overlap
rule, and the invariant that a pool's serving nodes stay within [0, size]."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import pytest

from gslb.model.failures import (
    DEFAULT_GPU_FAILURES_PER_HOUR,
    CapacityEvent,
    Outage,
    Pool,
    PreemptionWave,
    gpu_failures,
    scripted,
    serving_nodes,
    timeline,
)

LLAMA3_HOURS = 54 * 24
# 16,384 GPUs as 2,048 nodes of 8, spread over a few pools.
LLAMA3_POOLS = (
    Pool("eu-west", "aws", 512),
    Pool("us-east", "aws", 768),
    Pool("us-east", "gcp", 256, capacity_type="spot"),
    Pool("ap-northeast", "gcp", 512, capacity_type="on_demand"),
)


def failures(events: list[CapacityEvent]) -> int:
    return sum(-e.nodes for e in events if e.cause == "gpu_failure")


def poisson_tail(mean: float, k: int) -> float:
    """P(Poisson(mean) >= k)."""
    if mean <= 0.0:
        return 0.0
    below = sum(math.exp(-mean + j * math.log(mean) - math.lgamma(j + 1)) for j in range(k))
    return max(0.0, 1.0 - below)


def expected_failures_per_node(rate_per_node_h: float, hours: float, repair_h: float) -> float:
    """E[failures in [0, hours)] for a node that serves Exp(rate) and then repairs for
    repair_h: the k-th failure is at Gamma(k, rate) + (k - 1) * repair_h, which is before
    ``hours`` iff a Poisson(rate * (hours - (k - 1) * repair_h)) count reaches k."""
    total, k = 0.0, 1
    while hours - (k - 1) * repair_h > 0.0:
        term = poisson_tail(rate_per_node_h * (hours - (k - 1) * repair_h), k)
        total += term
        if term < 1e-15:
            break
        k += 1
    return total


def pool_counts(pools: tuple[Pool, ...], events: list[CapacityEvent]) -> list[dict[Pool, int]]:
    """Each pool's serving nodes after each event, in event order."""
    by_key = {(p.region, p.provider, p.capacity_type): p for p in pools}
    serving = {p: p.nodes for p in pools}
    states = []
    for e in events:
        serving[by_key[(e.region, e.provider, e.capacity_type)]] += e.nodes
        states.append(dict(serving))
    return states


def test_default_rate_is_llama3_interruptions() -> None:
    # 419 interruptions over 54 days on 16,384 GPUs: about 2e-5 per GPU-hour.
    rate = DEFAULT_GPU_FAILURES_PER_HOUR
    assert rate * 16_384 * 54 * 24 == pytest.approx(419)
    assert rate == pytest.approx(1.97e-5, rel=0.01)


def test_llama3_fleet_gives_419_failures() -> None:
    assert sum(p.nodes * p.gpus_per_node for p in LLAMA3_POOLS) == 16_384
    events = gpu_failures(LLAMA3_POOLS, LLAMA3_HOURS, np.random.default_rng(13))
    assert abs(failures(events) - 419) <= 60


def test_mean_over_seeds_matches_the_renewal_expectation() -> None:
    rate_node_h = DEFAULT_GPU_FAILURES_PER_HOUR * 8
    expected = 2048 * expected_failures_per_node(rate_node_h, LLAMA3_HOURS, 4.0)
    # Repairs take out a little time: just under 419.
    assert 418.0 < expected < 419.0
    counts = [
        failures(gpu_failures(LLAMA3_POOLS, LLAMA3_HOURS, np.random.default_rng(seed)))
        for seed in range(20)
    ]
    assert np.mean(counts) == pytest.approx(expected, rel=0.03)


def test_repair_downtime_lowers_the_failure_count_as_expected() -> None:
    # A node failing at 0.1/h with 10 h repairs spends half its time in repair, so it fails
    # about half as often as without repairs: 2% is 4 standard deviations here.
    pools = (Pool("r", "p", 200, gpus_per_node=8),)
    events = gpu_failures(pools, 1000.0, np.random.default_rng(3), 0.1 / 8, repair_h=10.0)
    expected = 200 * expected_failures_per_node(0.1, 1000.0, 10.0)
    assert 9_500 < expected < 10_100  # near 1000 * 0.1 / (1 + 0.1 * 10) per node
    assert failures(events) == pytest.approx(expected, rel=0.02)


def test_a_node_in_repair_does_not_fail_again() -> None:
    pool = Pool("r", "p", 1)
    events = gpu_failures((pool,), 500.0, np.random.default_rng(5), 1.0 / 8, repair_h=2.0)
    assert len(events) > 100  # at 1/h with 2 h repairs: about 167 failures
    causes = [e.cause for e in events]
    # One node: strictly down, up, down, up...
    assert causes[0::2] == ["gpu_failure"] * len(causes[0::2])
    assert causes[1::2] == ["repair"] * len(causes[1::2])
    assert [e.nodes for e in events] == [-1, 1] * (len(events) // 2) + [-1] * (len(events) % 2)
    for down, up in zip(events[0::2], events[1::2], strict=False):
        assert up.t_s - down.t_s == pytest.approx(2 * 3600.0)


def test_repairs_after_the_horizon_are_left_out() -> None:
    events = gpu_failures((Pool("r", "p", 50),), 10.0, np.random.default_rng(2), 0.02, 4.0)
    assert events
    assert all(0.0 <= e.t_s < 10 * 3600.0 for e in events)
    still_down = sum(e.nodes for e in events)
    late = [e for e in events if e.cause == "gpu_failure" and e.t_s >= 6 * 3600.0]
    # Failures in the last 4 h are still in repair at the end; earlier ones are all back.
    assert still_down == -sum(-e.nodes for e in late)


def test_provider_outage_hits_every_pool_of_it_and_ends() -> None:
    pools = (
        Pool("eu", "aws", 10),
        Pool("us", "aws", 6, capacity_type="spot"),
        Pool("us", "gcp", 4),
    )
    outage = Outage(start_h=2.0, duration_h=3.0, provider="aws")
    events = scripted(pools, [outage], [], np.random.default_rng(0))
    assert [(e.t_s, e.region, e.provider, e.nodes, e.cause) for e in events] == [
        (7200.0, "eu", "aws", -10, "outage"),
        (7200.0, "us", "aws", -6, "outage"),
        (18000.0, "eu", "aws", 10, "outage_end"),
        (18000.0, "us", "aws", 6, "outage_end"),
    ]
    assert serving_nodes(pools, events, 3600.0) == {"eu": 10, "us": 10}
    assert serving_nodes(pools, events, 7200.0) == {"eu": 0, "us": 4}
    assert serving_nodes(pools, events, 5 * 3600.0) == {"eu": 10, "us": 10}


def test_region_outage_spares_other_regions() -> None:
    pools = (Pool("eu", "aws", 10), Pool("eu", "gcp", 5), Pool("us", "aws", 6))
    events = timeline(
        pools, 24.0, np.random.default_rng(0), outages=[Outage(1.0, 1.0, region="eu")]
    )
    # 21 nodes at the default rate see one failure in a day 8% of the time; this seed draws
    # none, so every event is the outage's.
    assert {e.cause for e in events} == {"outage", "outage_end"}
    assert serving_nodes(pools, events, 1.5 * 3600) == {"eu": 0, "us": 6}
    assert serving_nodes(pools, events, 2 * 3600) == {"eu": 15, "us": 6}


def test_overlapping_outages_take_a_node_out_once() -> None:
    pools = (Pool("eu", "aws", 10),)
    outages = [Outage(1.0, 3.0, region="eu"), Outage(2.0, 4.0, provider="aws")]
    events = scripted(pools, outages, [], np.random.default_rng(0))
    # Down with the first, back when the last ends: nothing in between.
    assert [(e.t_s, e.nodes, e.cause) for e in events] == [
        (3600.0, -10, "outage"),
        (6 * 3600.0, 10, "outage_end"),
    ]


def test_failures_stop_during_an_outage_and_repairs_resume_after() -> None:
    pool = Pool("r", "p", 40)
    outage = Outage(start_h=50.0, duration_h=30.0, region="r")
    events = timeline(
        (pool,),
        200.0,
        np.random.default_rng(8),
        outages=[outage],
        repair_h=40.0,
        rate_per_gpu_hour=0.01 / 8,
    )
    start, end = 50 * 3600.0, 80 * 3600.0
    inside = [e for e in events if start < e.t_s < end]
    assert inside == []  # nothing fails, and no repair shows, while nothing serves
    at_start = next(e for e in events if e.cause == "outage")
    at_end = next(e for e in events if e.cause == "outage_end")
    in_repair_at_start = -sum(e.nodes for e in events if e.t_s < start)
    assert in_repair_at_start > 0  # 40 h repairs at 0.01/h: some nodes are out at 50 h
    assert at_start.nodes == -(40 - in_repair_at_start)
    # Repairs that outlast the outage bring their nodes back later, as "repair".
    later_repairs = [
        e for e in events if e.cause == "repair" and end < e.t_s and e.t_s - 40 * 3600.0 < start
    ]
    assert at_end.nodes == 40 - sum(e.nodes for e in later_repairs)
    assert later_repairs


def test_preemption_wave_hits_only_spot_pools() -> None:
    pools = (
        Pool("us", "aws", 10, capacity_type="spot"),
        Pool("us", "aws", 10, capacity_type="reserved"),
        Pool("eu", "gcp", 7, capacity_type="spot"),
        Pool("eu", "gcp", 8, capacity_type="on_demand"),
    )
    wave = PreemptionWave(start_h=1.0, fraction=0.25, duration_h=2.0)
    events = scripted(pools, [], [wave], np.random.default_rng(0))
    # 0.25 * 10 = 2.5 -> 3 and 0.25 * 7 = 1.75 -> 2 (half up).
    assert [(e.t_s, e.region, e.capacity_type, e.nodes, e.cause, e.notice_s) for e in events] == [
        (3600.0, "eu", "spot", -2, "preemption", 120.0),
        (3600.0, "us", "spot", -3, "preemption", 120.0),
        (3 * 3600.0, "eu", "spot", 2, "preemption_end", 0.0),
        (3 * 3600.0, "us", "spot", 3, "preemption_end", 0.0),
    ]


@pytest.mark.parametrize(
    ("fraction", "nodes", "taken"),
    [(0.5, 5, 3), (0.5, 4, 2), (0.1, 4, 0), (0.125, 4, 1), (1.0, 9, 9), (0.0, 9, 0)],
)
def test_wave_fraction_rounds_half_up(fraction: float, nodes: int, taken: int) -> None:
    pools = (Pool("us", "aws", nodes, capacity_type="spot"),)
    wave = PreemptionWave(0.0, fraction, 1.0, region="us", notice_s=30.0)
    assert wave.reclaimed(pools[0]) == taken
    events = scripted(pools, [], [wave], np.random.default_rng(0))
    assert [e.nodes for e in events] == ([-taken, taken] if taken else [])


def test_wave_narrowed_by_region_and_provider() -> None:
    spot = [
        Pool(region, provider, 4, capacity_type="spot")
        for region in ("us", "eu")
        for provider in ("aws", "gcp")
    ]
    wave = PreemptionWave(0.0, 1.0, 1.0, region="eu", provider="gcp")
    assert [wave.hits(p) for p in spot] == [False, False, False, True]
    events = scripted(spot, [], [wave], np.random.default_rng(0))
    assert {(e.region, e.provider) for e in events} == {("eu", "gcp")}


def test_serving_stays_within_pool_size_under_everything() -> None:
    pools = (
        Pool("us", "aws", 30, capacity_type="spot"),
        Pool("us", "gcp", 20),
        Pool("eu", "aws", 25, capacity_type="spot"),
    )
    events = timeline(
        pools,
        120.0,
        np.random.default_rng(11),
        outages=[Outage(10.0, 20.0, provider="aws"), Outage(15.0, 30.0, region="us")],
        waves=[PreemptionWave(5.0, 0.5, 40.0), PreemptionWave(25.0, 0.6, 5.0, provider="aws")],
        rate_per_gpu_hour=0.005 / 8,
        repair_h=6.0,
    )
    causes = {e.cause for e in events}
    assert causes == {
        "gpu_failure",
        "repair",
        "outage",
        "outage_end",
        "preemption",
        "preemption_end",
    }
    for state in pool_counts(pools, events):
        for pool, serving in state.items():
            assert 0 <= serving <= pool.nodes
    assert events == sorted(events, key=lambda e: (e.t_s, e.region, e.cause))
    assert all(e.nodes != 0 and 0.0 <= e.t_s < 120 * 3600.0 for e in events)
    # After the last scripted reason ends (45 h) and the last repair (< 126 h) everything
    # is up again except nodes still in repair at the horizon.
    final = serving_nodes(pools, events, math.inf)
    in_repair: defaultdict[str, int] = defaultdict(int)
    for e in events:
        if e.cause == "gpu_failure" and e.t_s >= 114 * 3600.0:
            in_repair[e.region] -= e.nodes
    assert final == {"us": 50 - in_repair["us"], "eu": 25 - in_repair["eu"]}


def test_same_seed_same_timeline() -> None:
    def run(seed: int) -> list[CapacityEvent]:
        return timeline(
            LLAMA3_POOLS,
            LLAMA3_HOURS,
            np.random.default_rng(seed),
            outages=[Outage(30.0, 2.0, provider="gcp")],
            waves=[PreemptionWave(40.0, 0.3, 3.0)],
        )

    assert run(4) == run(4)
    assert run(4) != run(5)


def test_gpu_failures_is_the_timeline_without_scripts() -> None:
    a = gpu_failures(LLAMA3_POOLS, 100.0, np.random.default_rng(9))
    b = timeline(LLAMA3_POOLS, 100.0, np.random.default_rng(9))
    assert a == b


def test_zero_rate_means_no_failures() -> None:
    assert gpu_failures(LLAMA3_POOLS, LLAMA3_HOURS, np.random.default_rng(0), 0.0) == []


@pytest.mark.parametrize(
    "make",
    [
        lambda: Outage(1.0, 1.0),
        lambda: Outage(1.0, 1.0, region="eu", provider="aws"),
        lambda: Outage(1.0, 0.0, region="eu"),
        lambda: Outage(-1.0, 1.0, region="eu"),
        lambda: PreemptionWave(1.0, 1.5, 1.0),
        lambda: PreemptionWave(1.0, 0.5, 1.0, notice_s=-1.0),
        lambda: Pool("eu", "aws", -1),
        lambda: Pool("eu", "aws", 1, capacity_type="preemptible"),
        lambda: timeline(
            [Pool("eu", "aws", 1), Pool("eu", "aws", 2)], 1.0, np.random.default_rng(0)
        ),
        lambda: timeline([Pool("eu", "aws", 1)], 1.0, np.random.default_rng(0), repair_h=-1.0),
    ],
)
def test_bad_parameters_are_refused(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        make()
