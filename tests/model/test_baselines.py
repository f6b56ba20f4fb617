"""The baseline routing policies: Envoy's documented priority spill, GCP's waterfall, and the
simple ones, on small hand-made tables; the batch forms against the one-by-one ones."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gslb.model.baselines import (
    BatchPolicy,
    EnvoyPriority,
    LeastLoaded,
    NearestOnly,
    RoundRobin,
    Site,
    View,
    Waterfall,
    baselines,
    nearest_order,
)

SITES = (
    Site("london", 51.51, -0.13, 100.0),
    Site("virginia", 38.90, -77.04, 100.0),
    Site("tokyo", 35.68, 139.69, 100.0),
)
LONDON, VIRGINIA, TOKYO = 0, 1, 2
PARIS, NEW_YORK, SEOUL, SYDNEY = 0, 1, 2, 3
CELLS = np.array([[48.86, 2.35], [40.71, -74.01], [37.57, 126.98], [-33.87, 151.21]])
ORDER = nearest_order(SITES, CELLS)


def view(healthy: list[float], load: list[float] | None = None) -> View:
    return View(
        healthy=np.array(healthy, dtype=np.float64),
        load=np.array(load if load is not None else [0.0] * len(healthy), dtype=np.float64),
    )


def test_nearest_order_by_great_circle() -> None:
    # Paris is 340 km from London, 6,200 from Virginia; Seoul is 1,160 km from Tokyo and
    # 8,850 from London but 11,200 from Virginia; Sydney is 7,800 km from Tokyo and 15,700
    # from Virginia but 17,000 from London.
    assert ORDER.tolist() == [
        [LONDON, VIRGINIA, TOKYO],
        [VIRGINIA, LONDON, TOKYO],
        [TOKYO, LONDON, VIRGINIA],
        [TOKYO, VIRGINIA, LONDON],
    ]
    assert ORDER.dtype == np.int32


# -- Envoy ------------------------------------------------------------------------------------

ENVOY = EnvoyPriority(ORDER)


@pytest.mark.parametrize(
    ("healthy", "shares"),
    [
        # The issue: 80% healthy keeps all the traffic, 50% healthy keeps 70%.
        ([0.8, 1.0], [1.0, 0.0]),
        ([0.5, 1.0], [0.7, 0.3]),
        # Envoy's two-level table (P=1 fully healthy).
        ([1.0, 1.0], [1.0, 0.0]),
        ([0.72, 1.0], [1.0, 0.0]),
        ([0.71, 1.0], [0.99, 0.01]),
        ([0.25, 1.0], [0.35, 0.65]),
        ([0.0, 1.0], [0.0, 1.0]),
        # Both levels degraded: normalised by the total health (25% and 25% -> 35 + 35 = 70).
        ([0.72, 0.72], [1.0, 0.0]),
        ([0.71, 0.71], [0.99, 0.01]),
        ([0.5, 0.5], [0.7, 0.3]),
        ([0.25, 0.25], [0.5, 0.5]),
        # The docs' normalisation example: healths {20, 30} (total 50) -> loads {40, 60}.
        ([1 / 7, 3 / 14], [0.4, 0.6]),
        # Envoy's three-level table.
        ([1.0, 1.0, 1.0], [1.0, 0.0, 0.0]),
        ([0.72, 0.72, 1.0], [1.0, 0.0, 0.0]),
        ([0.71, 0.71, 1.0], [0.99, 0.01, 0.0]),
        ([0.5, 0.5, 1.0], [0.7, 0.3, 0.0]),
        ([0.25, 1.0, 1.0], [0.35, 0.65, 0.0]),
        ([0.25, 0.25, 1.0], [0.35, 0.35, 0.3]),
    ],
)
def test_envoy_level_shares_match_the_docs(healthy: list[float], shares: list[float]) -> None:
    assert ENVOY.level_shares(healthy) == shares


def test_envoy_rounding_remainder_goes_to_the_first_healthy_level() -> None:
    # Healths 35, 35, 28 (total 98): each gets floor(h * 100 / 98) = 35, 35, 28, and the 2
    # that rounding leaves go to P0, as Envoy's load balancer does (its docs' table prints
    # 36/36/28 for this row, which no integer rule in the code gives).
    assert ENVOY.level_shares([0.25, 0.25, 0.2]) == [0.37, 0.35, 0.28]
    # ...to the first level with any health, not P0 when P0 has none.
    assert ENVOY.level_shares([0.0, 0.25, 0.2]) == [0.0, 0.56, 0.44]


def test_envoy_overprovisioning_factor_is_configurable() -> None:
    # Without overprovisioning a level gets exactly its healthy fraction.
    plain = EnvoyPriority(ORDER, overprovisioning_factor=1.0)
    assert plain.level_shares([0.8, 1.0]) == [0.8, 0.2]


def test_envoy_shares_sum_to_one_when_any_level_is_routable() -> None:
    grid = [i / 20 for i in range(21)]
    for h0 in grid:
        for h1 in grid:
            for h2 in (0.0, 0.3, 1.0):
                shares = ENVOY.level_shares([h0, h1, h2])
                assert all(s >= 0.0 for s in shares)
                if h0 or h1 or h2:
                    assert sum(shares) == pytest.approx(1.0)
                else:
                    assert shares == [0.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("healthy", "cell", "shares"),
    [
        ([0.25, 0.25, 1.0], PARIS, {LONDON: 0.35, VIRGINIA: 0.35, TOKYO: 0.30}),
        ([0.5, 1.0, 1.0], PARIS, {LONDON: 0.7, VIRGINIA: 0.3}),
        # Seoul's levels are Tokyo, London, Virginia.
        ([1.0, 1.0, 0.5], SEOUL, {TOKYO: 0.7, LONDON: 0.3}),
    ],
)
def test_envoy_choices_follow_the_shares(
    healthy: list[float], cell: int, shares: dict[int, float]
) -> None:
    n = 10_000
    u = np.random.default_rng(7).random(n)
    v = view(healthy)
    counts = np.bincount([ENVOY.choose(cell, v, float(x)) for x in u], minlength=3)
    for site in range(3):
        p = shares.get(site, 0.0)
        assert abs(counts[site] - n * p) <= 4 * math.sqrt(n * p * (1 - p)) + 1e-9


def test_envoy_choose_maps_draws_to_levels() -> None:
    v = view([0.5, 1.0, 1.0])  # Paris: 70% London, 30% Virginia
    assert ENVOY.choose(PARIS, v, 0.0) == LONDON
    assert ENVOY.choose(PARIS, v, 0.695) == LONDON
    assert ENVOY.choose(PARIS, v, 0.705) == VIRGINIA
    assert ENVOY.choose(PARIS, v, 0.999) == VIRGINIA
    assert ENVOY.choose(NEW_YORK, v, 0.999) == VIRGINIA  # New York's P0 is fully healthy


def test_envoy_nothing_healthy() -> None:
    assert ENVOY.choose(PARIS, view([0.0, 0.0, 0.0]), 0.5) == -1
    # A health score rounds down: one node of 200 (0.5%) scores 0, and Envoy (without panic
    # mode) has nothing to route to.
    assert ENVOY.choose(PARIS, view([0.005, 0.0, 0.0]), 0.5) == -1


def test_envoy_sees_health_changes() -> None:
    envoy = EnvoyPriority(ORDER)
    v = view([1.0, 1.0, 1.0])
    assert envoy.choose(PARIS, v, 0.9) == LONDON
    v.healthy[LONDON] = 0.0  # the engine updates the view in place
    assert envoy.choose(PARIS, v, 0.9) == VIRGINIA


# -- the others -------------------------------------------------------------------------------


def test_nearest_only() -> None:
    nearest = NearestOnly(ORDER)
    assert nearest.choose(PARIS, view([1.0, 1.0, 1.0]), 0.5) == LONDON
    assert nearest.choose(SEOUL, view([1.0, 1.0, 1.0]), 0.5) == TOKYO
    # Any node serving will do, however loaded.
    assert nearest.choose(PARIS, view([0.1, 1.0, 1.0], [1e6, 0.0, 0.0]), 0.5) == LONDON
    assert nearest.choose(PARIS, view([0.0, 1.0, 1.0]), 0.5) == VIRGINIA
    assert nearest.choose(SEOUL, view([1.0, 1.0, 0.0]), 0.5) == LONDON
    assert nearest.choose(PARIS, view([0.0, 0.0, 0.0]), 0.5) == -1


def test_least_loaded_is_blind_to_geography() -> None:
    capacity = np.array([100.0, 50.0, 200.0])
    ll = LeastLoaded(capacity)
    # load / (capacity * healthy): 50/100 = 0.5, 20/50 = 0.4, 40/100 = 0.4; the tie goes to
    # the lower index.
    v = view([1.0, 1.0, 0.5], [50.0, 20.0, 40.0])
    assert [ll.choose(cell, v, 0.5) for cell in range(4)] == [VIRGINIA] * 4
    v = view([1.0, 0.0, 0.5], [50.0, 0.0, 40.0])  # Virginia down, even though idle
    assert ll.choose(PARIS, v, 0.5) == TOKYO
    v = view([1.0, 1.0, 1.0], [30.0, 10.0, 50.0])  # 0.3, 0.2, 0.25
    assert ll.choose(SYDNEY, v, 0.5) == VIRGINIA
    assert ll.choose(PARIS, view([0.0, 0.0, 0.0]), 0.5) == -1


def test_round_robin_skips_what_is_down() -> None:
    rr = RoundRobin(3)
    up = view([1.0, 1.0, 1.0])
    assert [rr.choose(PARIS, up, 0.5) for _ in range(4)] == [0, 1, 2, 0]
    one_down = view([1.0, 0.0, 1.0])
    assert [rr.choose(PARIS, one_down, 0.5) for _ in range(4)] == [2, 0, 2, 0]
    assert [rr.choose(PARIS, up, 0.5) for _ in range(3)] == [1, 2, 0]
    assert rr.choose(PARIS, view([0.0, 0.0, 0.0]), 0.5) == -1
    assert rr.choose(PARIS, up, 0.5) == 1  # a refusal does not move the turn


def test_waterfall_spills_at_max_utilization() -> None:
    wf = Waterfall(ORDER, np.array([100.0, 100.0, 100.0]))
    assert wf.choose(PARIS, view([1.0, 1.0, 1.0], [79.0, 90.0, 0.0]), 0.5) == LONDON
    # 80 of 100 is full (max utilization 0.8): next nearest with room.
    assert wf.choose(PARIS, view([1.0, 1.0, 1.0], [80.0, 0.0, 0.0]), 0.5) == VIRGINIA
    # Half of London's nodes serve: 40 in flight is 0.8 of its 50.
    assert wf.choose(PARIS, view([0.5, 1.0, 1.0], [40.0, 0.0, 0.0]), 0.5) == VIRGINIA
    assert wf.choose(PARIS, view([0.5, 1.0, 1.0], [39.0, 0.0, 0.0]), 0.5) == LONDON
    # London and Virginia full: Tokyo, however far.
    assert wf.choose(PARIS, view([1.0, 1.0, 1.0], [85.0, 95.0, 10.0]), 0.5) == TOKYO
    assert wf.choose(PARIS, view([0.0, 1.0, 1.0], [0.0, 10.0, 0.0]), 0.5) == VIRGINIA


def test_waterfall_all_full_takes_the_least_utilized() -> None:
    wf = Waterfall(ORDER, np.array([100.0, 100.0, 100.0]))
    assert wf.choose(PARIS, view([1.0, 1.0, 1.0], [90.0, 85.0, 95.0]), 0.5) == VIRGINIA
    # On a tie, the nearer: London from Paris, Virginia from New York.
    tie = view([1.0, 1.0, 1.0], [90.0, 90.0, 95.0])
    assert wf.choose(PARIS, tie, 0.5) == LONDON
    assert wf.choose(NEW_YORK, tie, 0.5) == VIRGINIA
    assert wf.choose(PARIS, view([0.0, 0.0, 0.0]), 0.5) == -1


def test_waterfall_max_utilization_is_configurable() -> None:
    wf = Waterfall(ORDER, np.array([100.0, 100.0, 100.0]), max_utilization=0.5)
    assert wf.choose(PARIS, view([1.0, 1.0, 1.0], [50.0, 0.0, 0.0]), 0.5) == VIRGINIA
    with pytest.raises(ValueError):
        Waterfall(ORDER, np.array([100.0, 100.0, 100.0]), max_utilization=0.0)


def test_bad_sites_are_refused() -> None:
    with pytest.raises(ValueError):
        Site("x", 0.0, 0.0, 0.0)


# -- batch forms ----------------------------------------------------------------------------


def random_views(rng: np.random.Generator, n: int) -> list[View]:
    views = []
    for _ in range(n):
        healthy = rng.choice([0.0, 0.25, 0.5, 0.71, 0.8, 1.0], size=3)
        load = rng.integers(0, 120, size=3).astype(np.float64)
        views.append(View(healthy=healthy, load=load))
    views.append(view([0.0, 0.0, 0.0]))
    return views


def test_batch_forms_equal_one_by_one() -> None:
    rng = np.random.default_rng(21)
    names = [p.name for p in baselines(SITES, CELLS)]
    assert names == ["nearest", "least_loaded", "round_robin", "waterfall", "envoy"]
    one: list[BatchPolicy] = baselines(SITES, CELLS)
    many: list[BatchPolicy] = baselines(SITES, CELLS)
    for v in random_views(rng, 200):
        cells = rng.integers(0, len(CELLS), size=25).astype(np.int32)
        u = rng.random(25)
        for a, b in zip(one, many, strict=True):
            expected = [a.choose(int(c), v, float(x)) for c, x in zip(cells, u, strict=True)]
            got = b.choose_many(cells, v, u)
            assert got.dtype == np.int32
            assert got.tolist() == expected, a.name
