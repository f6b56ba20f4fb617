"""The demand model: the world's cities, cells per country, the diurnal curve, arrivals, sizes.

Expected numbers come from the definitions (docs/design.md, simulation; issue 13): Poisson
counts within 4 sigma of the integral of ``rate()``, shares by largest remainder, centroids as
population-weighted means on the unit sphere, offsets from the time-zone database.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from datetime import date
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
import pytest

from gslb.model.demand import (
    Arrivals,
    Cell,
    City,
    Diurnal,
    TokenDist,
    apportion,
    arrivals,
    cluster,
    cluster_members,
    load_cities,
    rate,
    shares,
)

ROOT = Path(__file__).resolve().parent.parent.parent
SUMMER = date(2026, 7, 1)  # northern DST in force
WINTER = date(2026, 1, 15)
DAY_S = 86400.0


@pytest.fixture(scope="module")
def world() -> tuple[list[City], list[Cell], npt.NDArray[np.int32]]:
    cities = load_cities()
    cells, members = cluster_members(cities, 300, SUMMER)
    return cities, cells, members


def spherical_mean(points: list[tuple[float, float]], weights: list[float]) -> tuple[float, float]:
    """The weighted mean of unit vectors, back to (lat, lon): the definition of a centroid."""
    x = y = z = 0.0
    for (lat, lon), w in zip(points, weights, strict=True):
        p, q = math.radians(lat), math.radians(lon)
        x += w * math.cos(p) * math.cos(q)
        y += w * math.cos(p) * math.sin(q)
        z += w * math.sin(p)
    return math.degrees(math.atan2(z, math.hypot(x, y))), math.degrees(math.atan2(y, x))


def four_sigma(observed: float, expected: float) -> bool:
    """A Poisson count within 4 standard deviations of its mean."""
    return abs(observed - expected) <= 4.0 * math.sqrt(expected)


def integral(values: npt.NDArray[np.float64], step: float) -> npt.NDArray[np.float64]:
    """Midpoint rule along axis 0 (``values`` sampled at the midpoints)."""
    out: npt.NDArray[np.float64] = values.sum(axis=0) * step
    return out


# ------------------------------------------------------------------------------------ cities


def test_load_cities_gives_the_worlds_cities_of_15000_people_or_more() -> None:
    cities = load_cities()
    assert len(cities) > 30_000
    assert all(re.fullmatch(r"[A-Z]{2}", c.country) for c in cities)
    assert min(c.population for c in cities) >= 15_000
    assert all(-90 <= c.lat <= 90 and -180 <= c.lon <= 180 for c in cities)
    for tz in {c.tz for c in cities}:
        ZoneInfo(tz)  # every zone is one the time-zone database knows
    keys = [(-c.population, c.country, c.name) for c in cities]
    assert keys == sorted(keys)
    assert {"CN", "IN", "US", "BR", "JP", "NG"} <= {c.country for c in cities}


def test_load_cities_honours_a_higher_bound() -> None:
    big = load_cities(1_000_000)
    assert big and min(c.population for c in big) >= 1_000_000
    everyone = load_cities()
    assert big == [c for c in everyone if c.population >= 1_000_000]


# --------------------------------------------------------------------------------- apportion


@pytest.mark.parametrize(
    ("populations", "seats", "caps", "expected"),
    [
        # quotas 1.667, 1.333: one each, the remainder to the larger fraction
        ([1000, 800], 3, [9, 9], [2, 1]),
        ([800, 1000], 3, [9, 9], [1, 2]),
        # quotas 6.1, 2.4, 1.5: largest remainder gives C the tenth seat (D'Hondt: 7, 2, 1)
        ([61, 24, 15], 10, [99, 99, 99], [6, 2, 2]),
        # quotas under 1 are lifted to 1 and the rest shared again
        ([1000, 10, 5], 4, [9, 9, 9], [2, 1, 1]),
        # more parties than seats: one each
        ([5, 4, 3], 2, [9, 9, 9], [1, 1, 1]),
        # a cap (distinct locations) binds: the excess goes to the others
        ([1000, 500], 6, [2, 10], [2, 4]),
        # every cap binds: fewer seats than asked for
        ([1000, 500], 6, [2, 1], [2, 1]),
    ],
)
def test_apportion_by_largest_remainder(
    populations: list[int], seats: int, caps: list[int], expected: list[int]
) -> None:
    assert apportion(populations, seats, caps) == expected


# ---------------------------------------------------------------------------------- clusters


def test_a_tiny_world_is_clustered_exactly() -> None:
    # AA (1000 people) and BB (800): quotas 1.667 and 1.333 of 3 cells, so AA gets 2.
    cities = [
        City("a1", "AA", 0.0, 0.0, 400, "Asia/Tokyo"),
        City("a2", "AA", 0.0, 2.0, 200, "Asia/Tokyo"),
        City("a3", "AA", 0.0, 60.0, 300, "Asia/Tokyo"),
        City("a4", "AA", 10.0, 60.0, 100, "Asia/Tokyo"),
        City("b1", "BB", 45.0, 10.0, 600, "America/New_York"),
        City("b2", "BB", 46.0, 11.0, 200, "America/New_York"),
    ]
    cells, members = cluster_members(cities, 3, SUMMER)
    assert [(c.index, c.name, c.country, c.population) for c in cells] == [
        (0, "b1", "BB", 800),
        (1, "a1", "AA", 600),
        (2, "a3", "AA", 400),
    ]
    assert members.tolist() == [1, 1, 2, 2, 0, 0]
    # On the equator: lon = atan2(200 sin 2°, 400 + 200 cos 2°).
    r2 = math.radians(2.0)
    assert cells[1].lat == pytest.approx(0.0, abs=1e-12)
    assert cells[1].lon == pytest.approx(
        math.degrees(math.atan2(200 * math.sin(r2), 400 + 200 * math.cos(r2))), abs=1e-9
    )
    # On the meridian 60°E: lat = atan2(100 sin 10°, 300 + 100 cos 10°).
    r10 = math.radians(10.0)
    assert cells[2].lon == pytest.approx(60.0, abs=1e-9)
    assert cells[2].lat == pytest.approx(
        math.degrees(math.atan2(100 * math.sin(r10), 300 + 100 * math.cos(r10))), abs=1e-9
    )
    lat, lon = spherical_mean([(45.0, 10.0), (46.0, 11.0)], [600, 200])
    assert cells[0].lat == pytest.approx(lat, abs=1e-9)
    assert cells[0].lon == pytest.approx(lon, abs=1e-9)
    # Offsets on 1 July: New York is on daylight time, Tokyo has none.
    assert [c.utc_offset_h for c in cells] == [-4.0, 9.0, 9.0]
    assert cluster(cities, 3, WINTER)[0].utc_offset_h == -5.0
    assert shares(cells).tolist() == pytest.approx([800 / 1800, 600 / 1800, 400 / 1800])


def test_more_countries_than_cells_gives_one_cell_per_country() -> None:
    cities = [
        City("x", "XA", 10.0, 10.0, 50_000, "UTC"),
        City("x2", "XA", 10.0, 40.0, 40_000, "UTC"),
        City("y", "YB", 20.0, 20.0, 30_000, "UTC"),
        City("z", "ZC", 30.0, 30.0, 20_000, "UTC"),
    ]
    cells = cluster(cities, 2, SUMMER)
    assert [(c.country, c.population) for c in cells] == [
        ("XA", 90_000),
        ("YB", 30_000),
        ("ZC", 20_000),
    ]


def test_cities_at_one_point_make_one_cell_and_the_seat_goes_elsewhere() -> None:
    # AA's quota is 4 * 900 / 1300 = 2.8 cells, but its two cities share one point.
    cities = [
        City("p", "AA", 5.0, 5.0, 500, "UTC"),
        City("q", "AA", 5.0, 5.0, 400, "UTC"),
        *(City(f"b{i}", "BB", 0.0, 40.0 * i, 100, "UTC") for i in range(4)),
    ]
    cells = cluster(cities, 4, SUMMER)
    assert sorted((c.country, c.population) for c in cells) == [
        ("AA", 900),
        ("BB", 100),
        ("BB", 100),
        ("BB", 200),
    ]


def test_cluster_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n_cells"):
        cluster([City("a", "AA", 0.0, 0.0, 1, "UTC")], 0, SUMMER)
    with pytest.raises(ValueError, match="no cities"):
        cluster([], 3, SUMMER)


def test_world_cells_never_cross_a_country_and_keep_everyone(
    world: tuple[list[City], list[Cell], npt.NDArray[np.int32]],
) -> None:
    cities, cells, members = world
    assert [c.index for c in cells] == list(range(len(cells)))
    assert all(cells[members[i]].country == city.country for i, city in enumerate(cities))
    held = np.bincount(members, weights=[c.population for c in cities], minlength=len(cells))
    assert held.tolist() == [float(c.population) for c in cells]  # and none is empty
    assert sum(c.population for c in cells) == sum(c.population for c in cities)
    keys = [(-c.population, c.name) for c in cells]
    assert keys == sorted(keys)


def test_world_has_exactly_n_cells_when_countries_are_fewer(
    world: tuple[list[City], list[Cell], npt.NDArray[np.int32]],
) -> None:
    cities, cells, _ = world
    countries = {c.country for c in cities}
    assert len(countries) < 300
    assert len(cells) == 300  # within [n, n + #countries], and exact with seats to spare
    assert {c.country for c in cells} == countries
    fewer = cluster(cities, 100, SUMMER)
    assert len(fewer) == len(countries)  # one per country


def test_world_cells_are_named_for_and_centred_on_their_cities(
    world: tuple[list[City], list[Cell], npt.NDArray[np.int32]],
) -> None:
    cities, cells, members = world
    for cell in cells[:: len(cells) // 25]:  # a spread of big and small cells
        mine = [city for i, city in enumerate(cities) if members[i] == cell.index]
        assert cell.name == max(mine, key=lambda c: c.population).name
        lat, lon = spherical_mean([(c.lat, c.lon) for c in mine], [c.population for c in mine])
        assert cell.lat == pytest.approx(lat, abs=1e-9)
        assert cell.lon == pytest.approx(lon, abs=1e-9)


def test_world_offsets_follow_the_zone_on_the_date(
    world: tuple[list[City], list[Cell], npt.NDArray[np.int32]],
) -> None:
    _, cells, _ = world
    us = [c for c in cells if c.country == "US"]
    jp = [c for c in cells if c.country == "JP"]
    assert us and jp
    assert all(-10 <= c.utc_offset_h <= -4 for c in us)  # Hawaii to Eastern daylight time
    assert all(c.utc_offset_h == 9 for c in jp)
    assert [c.utc_offset_h for c in us if c.name == "New York City"] == [-4.0]
    in_winter = cluster(load_cities(), 300, WINTER)
    assert [c.utc_offset_h for c in in_winter if c.name == "New York City"] == [-5.0]


def test_clustering_is_deterministic(
    world: tuple[list[City], list[Cell], npt.NDArray[np.int32]],
) -> None:
    cities, cells, members = world
    again, members_again = cluster_members(cities, 300, SUMMER)
    assert again == cells
    assert np.array_equal(members_again, members)
    # The order the cities come in does not matter either.
    assert cluster(list(reversed(cities)), 300, SUMMER) == cells


# ----------------------------------------------------------------------------------- diurnal


@pytest.mark.parametrize(("peak", "trough"), [(20.0, 0.25), (13.5, 0.6), (0.0, 0.1), (7.0, 0.95)])
def test_diurnal_mean_is_one_and_its_extremes_are_as_asked(peak: float, trough: float) -> None:
    curve = Diurnal(peak_hour=peak, trough_ratio=trough)
    grid = np.arange(240_000, dtype=np.float64) * (24.0 / 240_000)  # includes every 0.1 h
    values = curve.factor(grid)
    assert abs(values.mean() - 1.0) < 1e-9
    top, bottom = curve.factor(np.array([peak, peak + 12.0]))
    assert top / bottom == pytest.approx(1.0 / trough, rel=1e-12)
    assert values.max() == pytest.approx(top, rel=1e-12)
    assert values.min() == pytest.approx(bottom, rel=1e-12)
    assert grid[np.argmax(values)] == pytest.approx(peak, abs=1e-3)
    assert curve.peak_factor == pytest.approx(top, rel=1e-12)
    # 24 h periodic: a local hour past midnight is the same hour of the next day.
    assert np.allclose(curve.factor(grid + 24.0), values, rtol=0, atol=1e-12)


def test_a_trough_ratio_of_one_is_a_flat_day() -> None:
    curve = Diurnal(trough_ratio=1.0)
    assert curve.peak_factor == 1.0
    assert np.array_equal(curve.factor(np.linspace(0.0, 24.0, 97)), np.ones(97))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"trough_ratio": 0.0}, "trough_ratio"),
        ({"trough_ratio": 1.5}, "trough_ratio"),
        ({"peak_hour": 24.0}, "peak_hour"),
        ({"peak_hour": -1.0}, "peak_hour"),
        ({"peak_hour": math.nan}, "peak_hour"),
    ],
)
def test_diurnal_rejects_bad_parameters(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Diurnal(**kwargs)


# --------------------------------------------------------------------------------- token dist


def lognormal_cdf(x: float, mu: float, sigma: float) -> float:
    return 0.5 * (1.0 + math.erf((math.log(x) - mu) / (sigma * math.sqrt(2.0))))


def test_lognormal_sizes_have_the_asked_mean_and_median() -> None:
    dist = TokenDist(mean=512.0, sigma=1.0, low=1, high=10**9)
    sizes = dist.sample(200_000, np.random.default_rng(5))
    assert sizes.dtype == np.int32 and sizes.shape == (200_000,)
    assert abs(sizes.mean() / 512.0 - 1.0) < 0.02
    # The median of a lognormal is exp(mu) = mean * exp(-sigma^2 / 2).
    assert abs(np.median(sizes) / (512.0 * math.exp(-0.5)) - 1.0) < 0.02


def test_lognormal_sizes_are_clipped_to_the_bounds() -> None:
    dist = TokenDist(mean=400.0, sigma=1.0, low=100, high=1000)
    sizes = dist.sample(100_000, np.random.default_rng(6))
    assert sizes.min() == 100 and sizes.max() == 1000
    mu = math.log(400.0) - 0.5
    # A draw rounds to 1000 or more (and is clipped to it) when it is at least 999.5.
    p_high = 1.0 - lognormal_cdf(999.5, mu, 1.0)
    expected = 100_000 * p_high
    assert abs(int((sizes == 1000).sum()) - expected) <= 4 * math.sqrt(expected * (1 - p_high))


def test_fixed_and_uniform_sizes() -> None:
    rng = np.random.default_rng(7)
    assert TokenDist(kind="fixed", mean=300.0).sample(5, rng).tolist() == [300] * 5
    assert TokenDist(kind="fixed", mean=99_999.0).sample(3, rng).tolist() == [32768] * 3
    sizes = TokenDist(kind="uniform", low=10, high=20).sample(100_000, rng)
    assert set(sizes.tolist()) == set(range(10, 21))  # both bounds included
    # The mean of 11 equally likely integers is 15, their variance (11^2 - 1) / 12 = 10.
    assert abs(sizes.mean() - 15.0) <= 4 * math.sqrt(10.0 / 100_000)


def test_the_same_seed_gives_the_same_sizes() -> None:
    dist = TokenDist()
    a = dist.sample(1000, np.random.default_rng(8))
    b = dist.sample(1000, np.random.default_rng(8))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, dist.sample(1000, np.random.default_rng(9)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "gamma"}, "kind"),
        ({"mean": 0.0}, "mean"),
        ({"sigma": -1.0}, "sigma"),
        ({"low": 0}, "low"),
        ({"low": 10, "high": 5}, "low"),
        ({"high": 2**31}, "high"),
    ],
)
def test_token_dist_rejects_bad_parameters(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TokenDist(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- arrivals

# Three hand-made cells 5:3:2 in UTC, Tokyo and US Eastern winter time.
THREE = [
    Cell(0, "u", "GB", 51.5, 0.0, 500, 0.0),
    Cell(1, "t", "JP", 35.7, 139.7, 300, 9.0),
    Cell(2, "n", "US", 40.7, -74.0, 200, -5.0),
]


def test_rate_is_total_times_share_times_the_curve_at_local_time() -> None:
    curve = Diurnal()
    t = np.array([0.0, 3600.0 * 11, 3600.0 * 25])
    got = rate(THREE, 100.0, curve, t, start_utc_hour=2.0)
    assert got.shape == (3, 3)
    local = np.array([[2.0, 11.0, -3.0], [13.0, 22.0, 8.0], [27.0, 36.0, 22.0]])
    expected = 100.0 * np.array([0.5, 0.3, 0.2]) * curve.factor(local)
    assert np.allclose(got, expected, rtol=1e-12, atol=0)
    # UTC 11:00 + 9 h is Tokyo's 20:00: its peak.
    peak = rate(THREE, 100.0, curve, np.array([11 * 3600.0]))[0, 1]
    assert peak == pytest.approx(30.0 * curve.peak_factor, rel=1e-12)


def test_the_worlds_rate_averages_to_the_total_over_a_day(
    world: tuple[list[City], list[Cell], npt.NDArray[np.int32]],
) -> None:
    _, cells, _ = world
    t = (np.arange(2880) + 0.5) * 30.0  # every 30 s of the day
    per_t = rate(cells, 200.0, Diurnal(), t, start_utc_hour=5.25).sum(axis=1)
    assert abs(per_t.mean() - 200.0) < 1e-9
    assert per_t.max() > per_t.min()  # the world's total still varies over the day


def test_the_same_seed_gives_the_same_arrivals() -> None:
    a = arrivals(THREE, 5.0, Diurnal(), 2.0, np.random.default_rng(3))
    b = arrivals(THREE, 5.0, Diurnal(), 2.0, np.random.default_rng(3))
    c = arrivals(THREE, 5.0, Diurnal(), 2.0, np.random.default_rng(4))
    for field in ("t_s", "cell", "input_tokens", "output_tokens"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert len(a) > 0 and not np.array_equal(a.t_s[:100], c.t_s[:100])


def test_arrivals_are_in_time_order_within_the_window() -> None:
    got = arrivals(THREE, 50.0, Diurnal(), 1.5, np.random.default_rng(10))
    assert got.t_s.dtype == np.float64 and got.cell.dtype == np.int32
    assert got.input_tokens.dtype == np.int32 and got.output_tokens.dtype == np.int32
    n = len(got)
    assert got.cell.shape == got.input_tokens.shape == got.output_tokens.shape == (n,)
    assert np.all(np.diff(got.t_s) >= 0)
    assert got.t_s[0] >= 0 and got.t_s[-1] < 1.5 * 3600
    assert set(np.unique(got.cell).tolist()) == {0, 1, 2}
    assert got.input_tokens.min() >= 1 and got.output_tokens.max() <= 32768


def test_arrivals_carry_sizes_from_the_given_distributions() -> None:
    got = arrivals(
        THREE,
        2.0,
        Diurnal(),
        1.0,
        np.random.default_rng(11),
        input_dist=TokenDist(kind="fixed", mean=70.0),
        output_dist=TokenDist(kind="uniform", low=3, high=4),
    )
    assert len(got) > 0
    assert set(got.input_tokens.tolist()) == {70}
    assert set(got.output_tokens.tolist()) <= {3, 4}


def test_no_time_or_no_demand_gives_no_arrivals() -> None:
    for total, hours in ((5.0, 0.0), (0.0, 3.0)):
        got = arrivals(THREE, total, Diurnal(), hours, np.random.default_rng(1))
        assert isinstance(got, Arrivals) and len(got) == 0
        assert got.input_tokens.shape == (0,)
    with pytest.raises(ValueError, match="total_rps"):
        arrivals(THREE, -1.0, Diurnal(), 1.0, np.random.default_rng(1))
    with pytest.raises(ValueError, match="hours"):
        arrivals(THREE, 1.0, Diurnal(), math.inf, np.random.default_rng(1))


def test_a_days_world_total_is_poisson_around_the_mean_rate(
    world: tuple[list[City], list[Cell], npt.NDArray[np.int32]],
) -> None:
    # Each cell's curve averages to 1 over a whole day, so E[N] = total_rps * 86400 exactly,
    # whatever the time zones and the start hour.
    _, cells, _ = world
    got = arrivals(cells, 20.0, Diurnal(), 24.0, np.random.default_rng(12), start_utc_hour=3.0)
    assert four_sigma(len(got), 20.0 * DAY_S)
    # Each cell's share of the day, too (the big cells, where 4 sigma is tight).
    counts = np.bincount(got.cell, minlength=len(cells))
    for c, share in list(enumerate(shares(cells)))[:20]:
        assert four_sigma(int(counts[c]), 20.0 * DAY_S * share)


def test_a_partial_window_follows_the_integral_of_the_rate() -> None:
    # Three hours from 07:30 UTC: the integral of rate() over them, by the midpoint rule.
    curve = Diurnal(peak_hour=18.0, trough_ratio=0.2)
    got = arrivals(THREE, 40.0, curve, 3.0, np.random.default_rng(13), start_utc_hour=7.5)
    step = 1.0
    t = (np.arange(3 * 3600) + 0.5) * step
    expected = integral(rate(THREE, 40.0, curve, t, start_utc_hour=7.5), step)
    counts = np.bincount(got.cell, minlength=3)
    assert all(four_sigma(int(counts[c]), float(expected[c])) for c in range(3))


def test_hourly_counts_of_each_cell_follow_its_rate() -> None:
    curve = Diurnal()
    got = arrivals(THREE, 30.0, curve, 24.0, np.random.default_rng(14))
    step = 10.0
    t = (np.arange(360) + 0.5) * step  # midpoints within one hour
    expected = np.array(
        [integral(rate(THREE, 30.0, curve, t + 3600.0 * h), step) for h in range(24)]
    )  # (hour, cell)
    hour = (got.t_s // 3600).astype(np.int64)
    observed = np.zeros((24, 3))
    np.add.at(observed, (hour, got.cell), 1)
    assert np.all(np.abs(observed - expected) <= 4 * np.sqrt(expected))
    # Chi-square over the 72 bins below its 99.9% point (Wilson-Hilferty, z = 3.09).
    k = expected.size
    threshold = k * (1 - 2 / (9 * k) + 3.09 * math.sqrt(2 / (9 * k))) ** 3
    assert float(((observed - expected) ** 2 / expected).sum()) < threshold
    # Local 20:00-21:00 against 08:00-09:00: over [0, 1] h from the peak the raised cosine
    # averages 1 + a g, over [12, 13] h 1 - a g, with g = (12 / pi) sin(pi / 12).
    g = 12 / math.pi * math.sin(math.pi / 12)
    ratio = (1 + curve.amplitude * g) / (1 - curve.amplitude * g)
    for c, cell in enumerate(THREE):
        busy = observed[int((20 - cell.utc_offset_h) % 24), c]
        quiet = observed[int((8 - cell.utc_offset_h) % 24), c]
        assert abs(busy / quiet / ratio - 1) <= 4 * math.sqrt(1 / busy + 1 / quiet)


def test_the_benchmark_runs_and_reports_what_it_measured() -> None:
    argv = ["benchmarks/bench_demand.py", "--rps", "0.5", "--hours", "24", "--json"]
    out = subprocess.run(
        [sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["cities"] > 30_000 and doc["cells"] == 300
    assert four_sigma(doc["arrivals"], 0.5 * DAY_S)  # a whole day: the mean rate exactly
    assert doc["arrivals_s"] > 0 and doc["arrivals_per_s"] > 0
