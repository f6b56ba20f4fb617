"""The routing policies gslb is compared with in ``gslb simulate``. Pure.

Each picks a site (a region) for one request from a demand cell, seeing what the engine shows
it (``View``: health and load per site, possibly stale). None of them knows about residency:
the engine counts the violations they cause.

* ``NearestOnly``: the nearest site that has a node serving.
* ``LeastLoaded``: the site with the lowest load per serving capacity, blind to geography.
* ``RoundRobin``: the sites in turn, skipping those with nothing serving.
* ``Waterfall``: Google Cloud's "waterfall by region" (the default ``serviceLbPolicy``
  algorithm): the nearest region with capacity, spilling to the next nearest when it is full.
  A region is full at ``max_utilization`` (0.8, the default of the UTILIZATION balancing
  mode) of its serving capacity; when every region is full the least utilized one takes it.
* ``EnvoyPriority``: Envoy's priority levels, one level per site by distance from the cell
  (P0 the nearest), with its overprovisioning factor (1.4) and its integer "priority load"
  arithmetic, as Envoy's docs on priority levels describe and its load balancer computes:

  - health(P) = min(100, floor(140 * healthy fraction of P)), an integer percent;
  - normalized total health NTH = min(100, sum of the healths);
  - load(P0) = min(100, health(P0) * 100 // NTH), and each next level gets
    min(what is left, health(P) * 100 // NTH);
  - what rounding leaves unassigned goes to the first level with health > 0;
  - a request picks a level with a draw in 0..99 against the cumulative loads.

  So 80% healthy keeps 100% of the traffic (80 * 1.4 >= 100) and 50% healthy keeps 70%.
  Envoy's panic mode (a level under 50% healthy routes to all its hosts, healthy or not)
  is off here, as with ``healthy_panic_threshold: 0``: a simulated region only serves on
  its serving nodes, so routing to the rest would only fail. With NTH = 0 nothing is
  routable and ``choose`` returns -1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import numpy as np
import numpy.typing as npt

from gslb.core.geo import great_circle_km

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int32]

ENVOY_OVERPROVISIONING: Final = 1.4
GCP_MAX_UTILIZATION: Final = 0.8


@dataclass(frozen=True, slots=True)
class Site:
    """A region as a policy sees it. ``capacity``: concurrent requests it serves at full
    health (its slots)."""

    name: str
    lat: float
    lon: float
    capacity: float

    def __post_init__(self) -> None:
        if not self.capacity > 0.0:
            raise ValueError(f"site {self.name}: capacity must be > 0")


@dataclass(slots=True)
class View:
    """What a policy sees, per site (the engine fills it, possibly stale)."""

    healthy: FloatArray  # fraction of its nodes serving, 0..1
    load: FloatArray  # requests in flight + queued


class Policy(Protocol):
    name: str

    def choose(self, cell: int, view: View, u: float) -> int:
        """The site for one request from ``cell``, or -1 when nothing is up. ``u`` is a
        uniform draw in [0, 1) from the engine, so policies stay deterministic."""
        ...


class BatchPolicy(Policy, Protocol):
    def choose_many(self, cells: IntArray, view: View, u: FloatArray) -> IntArray:
        """What ``choose`` gives for each ``(cells[i], u[i])`` in turn, the view unchanged."""
        ...


def nearest_order(sites: Sequence[Site], cell_lat_lon: npt.NDArray[np.float64]) -> IntArray:
    """Per cell (rows of ``(lat, lon)``), the site indices from nearest to farthest by
    great-circle distance; equal distances keep the sites' order."""
    points = np.asarray(cell_lat_lon, dtype=np.float64).reshape(-1, 2)
    km = np.array(
        [[great_circle_km(lat, lon, s.lat, s.lon) for s in sites] for lat, lon in points.tolist()],
        dtype=np.float64,
    ).reshape(len(points), len(sites))
    return np.argsort(km, axis=1, kind="stable").astype(np.int32)


def baselines(sites: Sequence[Site], cell_lat_lon: npt.NDArray[np.float64]) -> list[BatchPolicy]:
    """One of each baseline, with the defaults the issue names."""
    order = nearest_order(sites, cell_lat_lon)
    capacity = np.array([s.capacity for s in sites], dtype=np.float64)
    return [
        NearestOnly(order),
        LeastLoaded(capacity),
        RoundRobin(len(sites)),
        Waterfall(order, capacity),
        EnvoyPriority(order),
    ]


def _no_site(n: int) -> IntArray:
    return np.full(n, -1, dtype=np.int32)


class NearestOnly:
    """The nearest site with any node serving."""

    name: str = "nearest"

    def __init__(self, order: IntArray) -> None:
        self.order = np.asarray(order, dtype=np.int32)
        self._rows: list[list[int]] = self.order.tolist()

    def choose(self, cell: int, view: View, u: float) -> int:
        healthy = view.healthy
        for site in self._rows[cell]:
            if healthy[site] > 0.0:
                return site
        return -1

    def choose_many(self, cells: IntArray, view: View, u: FloatArray) -> IntArray:
        rows = self.order[cells]
        up = view.healthy[rows] > 0.0
        first = np.argmax(up, axis=1)
        chosen = rows[np.arange(len(rows)), first]
        return np.where(up.any(axis=1), chosen, -1).astype(np.int32)


def _utilization(capacity: FloatArray, view: View) -> FloatArray:
    """Load per serving capacity; +inf where nothing serves."""
    serving = capacity * view.healthy
    with np.errstate(divide="ignore", invalid="ignore"):
        util = view.load / serving
    return np.where(serving > 0.0, util, np.inf)


class LeastLoaded:
    """The site with the least load per serving capacity; ties go to the lowest index."""

    name: str = "least_loaded"

    def __init__(self, capacity: FloatArray) -> None:
        self.capacity = np.asarray(capacity, dtype=np.float64)
        self._capacity: list[float] = self.capacity.tolist()

    def choose(self, cell: int, view: View, u: float) -> int:
        # A loop over lists: for a dozen sites, twice as fast as numpy's small-array calls,
        # and this runs once per request.
        healthy: list[float] = view.healthy.tolist()
        load: list[float] = view.load.tolist()
        best, best_util = -1, math.inf
        for site, capacity in enumerate(self._capacity):
            h = healthy[site]
            if h > 0.0:
                util = load[site] / (capacity * h)
                if util < best_util:  # strict: the first of equal minima
                    best, best_util = site, util
        return best

    def choose_many(self, cells: IntArray, view: View, u: FloatArray) -> IntArray:
        return np.full(len(cells), self.choose(0, view, 0.0), dtype=np.int32)


class RoundRobin:
    """The sites in turn, skipping those with nothing serving. The turn moves past the site
    chosen, so a skipped site does not make its successor serve twice in a row."""

    name: str = "round_robin"

    def __init__(self, sites: int) -> None:
        self.sites = sites
        self.next = 0

    def choose(self, cell: int, view: View, u: float) -> int:
        healthy = view.healthy
        for k in range(self.sites):
            site = (self.next + k) % self.sites
            if healthy[site] > 0.0:
                self.next = (site + 1) % self.sites
                return site
        return -1

    def choose_many(self, cells: IntArray, view: View, u: FloatArray) -> IntArray:
        up = np.flatnonzero(view.healthy > 0.0).astype(np.int32)
        if len(up) == 0:
            return _no_site(len(cells))
        start = int(np.searchsorted(up, self.next))  # the first up site at or after the turn
        chosen = up[(start + np.arange(len(cells))) % len(up)]
        if len(chosen):
            self.next = (int(chosen[-1]) + 1) % self.sites
        return chosen.astype(np.int32)


class Waterfall:
    """Google Cloud's waterfall by region: the nearest site under ``max_utilization`` of its
    serving capacity; when all are over it, the least utilized (the nearer on a tie)."""

    name: str = "waterfall"

    def __init__(
        self, order: IntArray, capacity: FloatArray, max_utilization: float = GCP_MAX_UTILIZATION
    ) -> None:
        if not 0.0 < max_utilization <= 1.0:
            raise ValueError("max_utilization must be in (0, 1]")
        self.order = np.asarray(order, dtype=np.int32)
        self.capacity = np.asarray(capacity, dtype=np.float64)
        self.max_utilization = max_utilization
        self._rows: list[list[int]] = self.order.tolist()
        self._capacity: list[float] = self.capacity.tolist()

    def choose(self, cell: int, view: View, u: float) -> int:
        healthy: list[float] = view.healthy.tolist()
        load: list[float] = view.load.tolist()
        best, best_util = -1, math.inf
        for site in self._rows[cell]:
            h = healthy[site]
            if h > 0.0:
                util = load[site] / (self._capacity[site] * h)
                if util < self.max_utilization:
                    return site
                if util < best_util:  # strict: the nearest of equal minima
                    best, best_util = site, util
        return best

    def choose_many(self, cells: IntArray, view: View, u: FloatArray) -> IntArray:
        util = _utilization(self.capacity, view)
        rows = self.order[cells]
        by_distance = util[rows]
        room = by_distance < self.max_utilization
        index = np.arange(len(rows))
        first_room = rows[index, np.argmax(room, axis=1)]
        least = rows[index, np.argmin(by_distance, axis=1)]
        chosen = np.where(room.any(axis=1), first_room, least)
        return np.where(np.isfinite(by_distance.min(axis=1, initial=np.inf)), chosen, -1).astype(
            np.int32
        )


class EnvoyPriority:
    """Envoy's priority levels by distance, with overprovisioning (see the module docstring)."""

    name: str = "envoy"

    def __init__(
        self, order: IntArray, overprovisioning_factor: float = ENVOY_OVERPROVISIONING
    ) -> None:
        if overprovisioning_factor <= 0.0:
            raise ValueError("overprovisioning_factor must be > 0")
        self.order = np.asarray(order, dtype=np.int32)
        # Envoy holds the factor as an integer percent (140) and does integer arithmetic.
        self.factor_pct = round(overprovisioning_factor * 100)
        self._key = b""
        self._cum: npt.NDArray[np.int64] = np.zeros(self.order.shape, dtype=np.int64)
        self._routable = False
        self._rows: list[list[int]] = self.order.tolist()
        self._cum_rows: list[list[int]] = []

    def health(self, healthy: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Envoy's health score per level or site: an integer percent, 0..100."""
        h = np.asarray(healthy, dtype=np.float64)
        # Envoy computes 140 * healthy_hosts // total_hosts in integers. From a fraction,
        # 140 * (47 / 70) comes out just under 94; 1e-9 puts such products back on the
        # integer the host counts give.
        score = np.floor(self.factor_pct * h + 1e-9).astype(np.int64)
        return np.clip(score, 0, 100)

    def level_shares(self, healthy_by_level: Sequence[float]) -> list[float]:
        """The share of traffic (0..1) each priority level gets; all 0 when none is routable."""
        loads = self._loads(self.health(np.asarray(healthy_by_level, dtype=np.float64))[None, :])
        return [int(x) / 100 for x in loads[0]]

    def _loads(self, health: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Integer percent loads per level, for rows of level healths (Envoy's distributeLoad)."""
        nth = np.minimum(100, health.sum(axis=1, keepdims=True))
        raw = health * 100 // np.maximum(nth, 1)
        # Sequential min(left, raw) is a capped cumulative sum, since raw >= 0.
        cum = np.minimum(100, np.cumsum(raw, axis=1))
        loads = np.diff(cum, axis=1, prepend=0)
        left = 100 - cum[:, -1]
        first = np.argmax(health > 0, axis=1)
        loads[np.arange(len(loads)), first] += left
        return np.where(nth > 0, loads, 0)

    def _refresh(self, view: View) -> None:
        # Health changes only when capacity does; cache the per-cell cumulative loads.
        key = view.healthy.tobytes()
        if key == self._key:
            return
        self._key = key
        health = self.health(view.healthy)
        self._routable = bool(health.sum() > 0)
        self._cum = np.cumsum(self._loads(health[self.order]), axis=1)
        self._cum_rows = self._cum.tolist()

    def choose(self, cell: int, view: View, u: float) -> int:
        self._refresh(view)
        if not self._routable:
            return -1
        k = int(u * 100)  # Envoy draws hash % 100 + 1 in 1..100: the level where it fits
        for level, cum in enumerate(self._cum_rows[cell]):
            if k < cum:
                return self._rows[cell][level]
        return -1  # unreachable: the loads add up to 100

    def choose_many(self, cells: IntArray, view: View, u: FloatArray) -> IntArray:
        self._refresh(view)
        if not self._routable:
            return _no_site(len(cells))
        k = (np.asarray(u, dtype=np.float64) * 100).astype(np.int64)
        level = np.count_nonzero(self._cum[cells] <= k[:, None], axis=1)
        chosen: IntArray = self.order[cells, level]
        return chosen
