"""The procurement model: the newsvendor against brute force, the spot blend's price, and the
fleet LP against first principles (the single-pool newsvendor, residency, and N-1 checked with
Hall's condition on the plan's own capacities)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import numpy.typing as npt
import pytest

from gslb.model.procure import (
    Offer,
    Plan,
    PlanError,
    Pool,
    Zone,
    c_flex,
    newsvendor_reserve,
    plan,
    spot_share,
)

Floats = npt.NDArray[np.float64]
# Ratios r/c_flex for which H*r/c is no integer at H = 168 (a whole number would make the cost
# flat between two demand levels, so that two reserved levels tie).
RATIOS = (0.05, 0.3, 0.55, 0.8, 0.97)


def offer(
    region: str,
    *,
    provider: str = "aws",
    on_demand: float = 4.0,
    spot: float | None = None,
    availability: float = 0.0,
    reserved: float | None = None,
) -> Offer:
    return Offer(region, provider, "h100", on_demand, spot, availability, reserved)


def pool(
    region: str,
    jurisdiction: str = "eu",
    *,
    provider: str = "aws",
    on_demand: float = 4.0,
    spot: float | None = None,
    availability: float = 0.0,
    reserved: float | None = None,
) -> Pool:
    o = offer(
        region,
        provider=provider,
        on_demand=on_demand,
        spot=spot,
        availability=availability,
        reserved=reserved,
    )
    return Pool(region, provider, jurisdiction, o)


def newsvendor_cost(demand: Floats, reserve: Floats, r: float, c: float) -> Floats:
    """The period's cost of each reserved level: reserved hours plus flexible hours above it."""
    above = np.maximum(0.0, demand[None, :] - reserve[:, None]).sum(axis=1)
    return np.asarray(r * demand.size * reserve + c * above, dtype=np.float64)


def brute_force(demand: Floats, r: float, c: float) -> int:
    """The smallest integer reserved level of least cost."""
    levels = np.arange(0, math.ceil(demand.max()) + 2, dtype=np.float64)
    cost = newsvendor_cost(demand, levels, r, c)
    return int(np.flatnonzero(cost <= cost.min() * (1 + 1e-12))[0])


def capacity(p: Plan, lp: bool = True) -> Floats:
    """Each pool's capacity per hour: ``[pool, hour]``, reserved (the LP's, unrounded) + flex."""
    return np.stack([(q.reserved_lp if lp else q.reserved) + q.on_demand + q.spot for q in p.pools])


def hall_shortfall(
    zones: list[Zone], pools: list[Pool], cap: Floats, lost: set[int], exempt: set[str]
) -> float:
    """The worst shortfall of Hall's condition: over every set S of zones and every hour,
    demand(S) - capacity(regions S may use, less the lost ones). <= 0 iff the capacities can
    serve every zone (Gale's theorem for a bipartite transport)."""
    held = [z for z in zones if z.name not in exempt]
    worst = -math.inf
    for k in range(1, len(held) + 1):
        for group in itertools.combinations(held, k):
            usable = {
                i
                for i, p in enumerate(pools)
                if i not in lost and any(p.region in z.allowed for z in group)
            }
            need = np.sum([z.demand for z in group], axis=0)
            have = cap[sorted(usable)].sum(axis=0) if usable else np.zeros_like(need)
            worst = max(worst, float((need - have).max()))
    return worst


def daily(rng: np.random.Generator, hours: int, base: float) -> Floats:
    t = np.arange(hours)
    wave = base * (1 + 0.5 * np.sin(2 * np.pi * (t + rng.uniform(0, 24)) / 24))
    return np.maximum(0.0, wave + rng.normal(0, base / 10, hours))


# --- c_flex -------------------------------------------------------------------------------


def test_c_flex_is_the_expected_price_of_spot_at_its_availability() -> None:
    # a = 0.5 (below 1 - floor): 0.5 * 1 + 0.5 * 4.
    o = offer("a", on_demand=4.0, spot=1.0, availability=0.5)
    assert spot_share(o, 0.2) == 0.5
    assert c_flex(o, 0.2) == pytest.approx(2.5)


def test_the_floor_caps_the_spot_share() -> None:
    # a = min(0.9, 1 - 0.2) = 0.8: 0.8 * 1 + 0.2 * 4.
    o = offer("a", on_demand=4.0, spot=1.0, availability=0.9)
    assert spot_share(o, 0.2) == pytest.approx(0.8)
    assert c_flex(o, 0.2) == pytest.approx(1.6)
    assert c_flex(o, 0.0) == pytest.approx(0.9 * 1 + 0.1 * 4)
    assert c_flex(o, 1.0) == 4.0  # a floor of 1: all flexible capacity on-demand


def test_no_spot_market_or_dear_spot_means_on_demand() -> None:
    assert c_flex(offer("a", on_demand=4.0), 0.2) == 4.0
    assert c_flex(offer("a", on_demand=4.0, spot=1.0, availability=0.0), 0.2) == 4.0
    dear = offer("a", on_demand=4.0, spot=5.0, availability=0.9)
    assert spot_share(dear, 0.2) == 0.0
    assert c_flex(dear, 0.2) == 4.0  # never above p


def test_bad_offers_and_floors_are_refused() -> None:
    with pytest.raises(ValueError, match="on_demand"):
        offer("a", on_demand=0.0)
    with pytest.raises(ValueError, match="spot_availability"):
        offer("a", spot=1.0, availability=1.5)
    with pytest.raises(ValueError, match="spot_floor"):
        spot_share(offer("a"), -0.1)


# --- newsvendor ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("ratio", RATIOS)
def test_newsvendor_is_brute_force_on_whole_gpu_demand(seed: int, ratio: float) -> None:
    # Whole-GPU demand: the least-cost level is a demand level, which brute force over the
    # integers finds exactly.
    rng = np.random.default_rng(seed)
    demand = rng.poisson(rng.uniform(20, 80), 168).astype(np.float64)
    c = 3.0
    assert newsvendor_reserve(demand, ratio * c, c) == brute_force(demand, ratio * c, c)


@pytest.mark.parametrize("seed", [4, 5, 6])
@pytest.mark.parametrize("ratio", RATIOS)
def test_newsvendor_is_within_one_gpu_of_brute_force(seed: int, ratio: float) -> None:
    rng = np.random.default_rng(seed)
    demand = daily(rng, 168, rng.uniform(10, 100))
    c = 2.5
    r = newsvendor_reserve(demand, ratio * c, c)
    assert abs(r - brute_force(demand, ratio * c, c)) <= 1
    # And it is the continuous optimum: no level does better.
    levels = np.linspace(0, demand.max(), 2001)
    best = newsvendor_cost(demand, levels, ratio * c, c).min()
    assert newsvendor_cost(demand, np.array([r]), ratio * c, c)[0] <= best + 1e-9


def test_newsvendor_is_the_demand_quantile() -> None:
    # 100 hours at 1..100 GPUs, r/c = 1/4: F(R) >= 3/4 first at R = 75.
    demand = np.arange(100, 0, -1, dtype=np.float64)
    assert newsvendor_reserve(demand, 1.0, 4.0) == 75.0
    assert newsvendor_reserve(demand, 0.9, 1.0) == 10.0


def test_newsvendor_edges() -> None:
    rng = np.random.default_rng(7)
    demand = rng.uniform(0, 50, 168)
    assert newsvendor_reserve(demand, 3.0, 3.0) == 0.0  # r = c_flex: nothing to save
    assert newsvendor_reserve(demand, 4.0, 3.0) == 0.0
    assert newsvendor_reserve(np.full(168, 37.5), 1.0, 3.0) == 37.5
    assert newsvendor_reserve(np.full(168, 37.5), 2.99, 3.0) == 37.5
    assert newsvendor_reserve([], 1.0, 3.0) == 0.0


# --- the LP -------------------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "ratio"), [(1, 0.3), (2, 0.55), (3, 0.8), (4, 0.05)])
def test_one_zone_one_pool_reserves_the_newsvendor_level(seed: int, ratio: float) -> None:
    rng = np.random.default_rng(seed)
    demand = daily(rng, 168, rng.uniform(20, 120))
    flex = c_flex(offer("fra", on_demand=4.0, spot=1.5, availability=0.7), 0.2)
    p = pool("fra", spot=1.5, availability=0.7, reserved=ratio * flex)
    result = plan([Zone("de", frozenset({"fra"}), demand)], [p], survive="none")
    assert result.status == "optimal"
    (pp,) = result.pools
    expected = newsvendor_reserve(demand, ratio * flex, flex)
    assert abs(pp.reserved_lp - expected) <= 1
    # Whole instances, rounded up; the flexible GPUs fill the rest of every hour.
    assert pp.reserved % 8 == 0
    assert pp.reserved_lp - 1e-6 <= pp.reserved < pp.reserved_lp + 8
    np.testing.assert_allclose(
        pp.reserved_lp + pp.on_demand + pp.spot, np.maximum(demand, pp.reserved_lp), atol=1e-5
    )
    # The LP's optimum is the newsvendor's cost; the plan's adds the rounding.
    nv_cost = newsvendor_cost(demand, np.array([expected]), ratio * flex, flex)[0]
    assert result.cost_lp == pytest.approx(nv_cost, rel=1e-6)
    rounded = ratio * flex * 168 * pp.reserved + flex * float((pp.on_demand + pp.spot).sum())
    assert pp.cost == pytest.approx(rounded)
    assert result.cost == pytest.approx(pp.cost)


def test_every_zone_is_served_its_demand_at_every_hour() -> None:
    rng = np.random.default_rng(11)
    pools = [pool("fra", reserved=2.0), pool("ams", reserved=2.5), pool("dub", reserved=3.0)]
    zones = [
        Zone("de", frozenset({"fra", "ams"}), daily(rng, 48, 60)),
        Zone("ie", frozenset({"dub", "ams"}), daily(rng, 48, 30)),
        Zone("nl", frozenset({"ams"}), daily(rng, 48, 20)),
    ]
    result = plan(zones, pools, survive="none")
    assert result.served.shape == (3, 3, 48)
    assert result.zones == ("de", "ie", "nl")
    for z, zone in enumerate(zones):
        np.testing.assert_allclose(result.served[z].sum(axis=0), zone.demand, atol=1e-5)
    # No pool serves more than it has.
    assert np.all(result.served.sum(axis=0) <= capacity(result) + 1e-5)


def test_residency_keeps_a_zone_out_of_a_cheaper_region() -> None:
    rng = np.random.default_rng(12)
    pools = [
        # No reservation in fra: no idle reserved GPU there that the free zone could fill.
        pool("fra", "eu", on_demand=6.0),
        pool("iad", "us", on_demand=2.0, reserved=1.0),  # far cheaper
    ]
    de = daily(rng, 72, 50)
    us = daily(rng, 72, 40)
    zones = [Zone("de", frozenset({"fra"}), de), Zone("us", frozenset({"fra", "iad"}), us)]
    result = plan(zones, pools, survive="none")
    fra, iad = 0, 1
    assert np.all(result.served[0, iad] == 0.0)  # pinned: never served in iad
    np.testing.assert_allclose(result.served[0, fra], de, atol=1e-5)
    # The free zone does go to the cheaper region: the residency constraint is what binds.
    np.testing.assert_allclose(result.served[1, iad], us, atol=1e-5)
    assert np.all(capacity(result)[fra] >= de - 1e-5)


def test_survive_region_costs_two_full_copies_for_one_zone_over_two_regions() -> None:
    # Constant demand of 40 GPUs, reserved cheaper than on-demand: with nothing lost it all
    # sits in the cheaper region; to lose either, each must hold all 40.
    pools = [pool("fra", reserved=1.0), pool("ams", reserved=1.2)]
    zones = [Zone("de", frozenset({"fra", "ams"}), np.full(24, 40.0))]
    none = plan(zones, pools, survive="none")
    both = plan(zones, pools, survive="region")
    assert none.by_region()["fra"].reserved == 40
    assert none.by_region()["ams"].reserved == 0
    assert none.cost == pytest.approx(40 * 24 * 1.0)
    assert [p.reserved for p in both.pools] == [40, 40]
    assert both.cost == pytest.approx(40 * 24 * (1.0 + 1.2))
    assert both.unprotected == ()


def fleet(rng: np.random.Generator, hours: int) -> tuple[list[Zone], list[Pool]]:
    """Two jurisdictions, two providers, five regions; one zone pinned to a one-region
    jurisdiction (ch)."""
    pools = [
        pool("fra", "eu", provider="aws", on_demand=4.0, reserved=2.2),
        pool("ams", "eu", provider="gcp", on_demand=3.5, spot=1.2, availability=0.8),
        pool("par", "eu", provider="aws", on_demand=4.2, reserved=2.0),
        pool("iad", "us", provider="gcp", on_demand=3.0, reserved=1.5),
        pool("zrh", "ch", provider="gcp", on_demand=5.0, reserved=3.0),
    ]
    zones = [
        Zone("de", frozenset({"fra", "ams", "par"}), daily(rng, hours, 60)),
        Zone("fr", frozenset({"par", "fra"}), daily(rng, hours, 40)),
        Zone("us", frozenset({"iad", "ams", "fra"}), daily(rng, hours, 80)),
        Zone("ch", frozenset({"zrh"}), daily(rng, hours, 10)),
    ]
    return zones, pools


def test_survive_region_covers_every_zone_with_any_one_region_lost() -> None:
    zones, pools = fleet(np.random.default_rng(13), 36)
    result = plan(zones, pools, survive="region")
    none = plan(zones, pools, survive="none")
    assert result.status == "optimal"
    cap = capacity(result)
    assert hall_shortfall(zones, pools, cap, set(), set()) <= 1e-5
    for k, lost in enumerate(pools):
        exempt = {"ch"} if lost.region == "zrh" else set()
        assert hall_shortfall(zones, pools, cap, {k}, exempt) <= 1e-5, lost.region
    # The plan without headroom fails the same check: the test can tell the two apart.
    bare = capacity(none)
    assert max(hall_shortfall(zones, pools, bare, {k}, {"ch"}) for k in range(4)) > 1.0
    assert result.cost > none.cost
    assert result.unprotected == ("ch: no allowed region left with region zrh lost",)


def test_survive_provider_covers_every_zone_with_either_provider_lost() -> None:
    zones, pools = fleet(np.random.default_rng(14), 36)
    result = plan(zones, pools, survive="provider")
    assert result.status == "optimal"
    cap = capacity(result)
    aws = {i for i, p in enumerate(pools) if p.provider == "aws"}
    gcp = {i for i, p in enumerate(pools) if p.provider == "gcp"}
    assert hall_shortfall(zones, pools, cap, gcp, {"ch"}) <= 1e-5
    # With aws lost, fr (aws only) cannot be served: it is reported, not infeasible.
    assert result.unprotected == (
        "fr: no allowed region left with provider aws lost",
        "ch: no allowed region left with provider gcp lost",
    )
    assert hall_shortfall(zones, pools, cap, aws, {"fr"}) <= 1e-5
    # And it costs more than planning for nothing lost.
    assert result.cost > plan(zones, pools, survive="none").cost


def test_spot_takes_its_share_of_the_flexible_capacity() -> None:
    # a = min(0.9, 1 - 0.2) = 0.8; no reservation: every GPU-hour is flexible.
    rng = np.random.default_rng(15)
    demand = daily(rng, 48, 30)
    p = pool("fra", on_demand=4.0, spot=1.0, availability=0.9)
    result = plan([Zone("de", frozenset({"fra"}), demand)], [p], survive="none", spot_floor=0.2)
    (pp,) = result.pools
    assert pp.reserved == 0
    np.testing.assert_allclose(pp.spot, 0.8 * demand, atol=1e-5)
    np.testing.assert_allclose(pp.on_demand, 0.2 * demand, atol=1e-5)
    assert pp.cost == pytest.approx(1.6 * demand.sum(), rel=1e-6)


def test_no_spot_market_buys_all_flexible_capacity_on_demand() -> None:
    rng = np.random.default_rng(16)
    demand = daily(rng, 48, 30)
    p = pool("fra", on_demand=4.0)
    result = plan([Zone("de", frozenset({"fra"}), demand)], [p], survive="none")
    (pp,) = result.pools
    assert np.all(pp.spot == 0.0)
    np.testing.assert_allclose(pp.on_demand, demand, atol=1e-5)
    assert pp.cost == pytest.approx(4.0 * demand.sum(), rel=1e-6)


def test_reserved_rounds_up_to_whole_instances() -> None:
    # 37 GPUs all the time, cheap reservation: 5 instances of 8 (40 GPUs) paid for.
    p = pool("fra", on_demand=4.0, reserved=1.0)
    result = plan([Zone("de", frozenset({"fra"}), np.full(10, 37.0))], [p], survive="none")
    (pp,) = result.pools
    assert pp.reserved_lp == pytest.approx(37.0)
    assert pp.reserved == 40
    assert pp.cost == pytest.approx(40 * 10 * 1.0)
    assert result.cost_lp == pytest.approx(37 * 10 * 1.0)


def test_a_zone_with_no_pool_is_an_error() -> None:
    zones = [Zone("jp", frozenset({"nrt"}), np.ones(4))]
    with pytest.raises(PlanError, match="zone jp"):
        plan(zones, [pool("fra")], survive="none")


def test_bad_inputs_are_refused() -> None:
    zones = [Zone("de", frozenset({"fra"}), np.ones(4))]
    with pytest.raises(ValueError, match="survive"):
        plan(zones, [pool("fra")], survive="az")
    uneven = [*zones, Zone("fr", frozenset({"fra"}), np.ones(5))]
    with pytest.raises(ValueError, match="same number of hours"):
        plan(uneven, [pool("fra")])
    with pytest.raises(ValueError, match="zone de"):
        plan([Zone("de", frozenset({"fra"}), -np.ones(4))], [pool("fra")])


def test_among_equal_costs_a_zone_is_served_from_its_nearer_regions() -> None:
    # Reserved capacity in both regions, paid for by a second zone that needs them both at
    # hour 0; at hour 1 the first zone could use either: it takes the near one.
    hours = 2
    near_far = Zone(
        "z", frozenset({"near", "far"}), np.array([0.0, 8.0]), {"near": 10.0, "far": 150.0}
    )
    both = Zone("w", frozenset({"near", "far"}), np.array([16.0, 0.0]))
    for far_first in (True, False):
        pools = [pool("far", reserved=1.0), pool("near", reserved=1.0)]
        if not far_first:
            pools.reverse()
        got = plan([near_far, both], pools, survive="none")
        near = [p.region for p in got.pools].index("near")
        served = got.served  # (zone, pool, hour)
        assert served[0, near, 1] == pytest.approx(8.0)
        assert served[0, 1 - near, 1] == pytest.approx(0.0)
    # The tie-break is no cost: the optimum is the capacity's price alone.
    assert got.cost_lp == pytest.approx(sum(p.reserved_lp for p in got.pools) * 1.0 * hours)
