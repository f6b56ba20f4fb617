"""When GPU nodes stop and start serving: GPU failures, scripted outages, spot preemptions. Pure.

The unit is the node (``gpus_per_node`` GPUs, 8 by default): gslb cordons a whole node when
one of its GPUs fails, so a GPU failure takes its node out until it is repaired.

* **GPU failures.** Each GPU fails at ``rate_per_gpu_hour`` (default: 419 interruptions in 54
  days on 16,384 GPUs, Meta's Llama 3 405B pre-training report, about 2e-5 per GPU-hour), so
  a serving node fails at ``gpus_per_node`` times that. A failed node is back ``repair_h``
  later. Failure arrivals are a Poisson process per node, thinned: one that lands on a node
  that is not serving (in repair, in an outage, reclaimed) is dropped, because there is
  nothing left to cordon. By memorylessness that is the same as a failure clock that runs
  only while the node serves.
* **Outages** take every node of the pools of one region, or of one provider, for
  ``duration_h``.
* **Preemption waves** reclaim ``fraction`` of the nodes of each matching spot pool, rounded
  half up (``floor(fraction * nodes + 0.5)``), chosen at random among all its nodes (the
  provider does not care which of them serve). ``start_h`` is the notice: gslb drains the
  nodes then, and they are gone ``notice_s`` later. They come back ``duration_h`` after the
  notice.

**The rule for overlaps.** Each node keeps a count of its reasons to be down (a repair, an
outage, a reclaim). A node stops serving when its count goes from 0 to 1 and serves again
when it goes back to 0; only those transitions become events. So an outage that hits a node
already in repair takes it out once, and the node comes back when the last of its reasons
ends, whichever that is (``cause`` names it). The events' ``nodes`` therefore add up, from a
pool's size, to a count that never leaves ``[0, size]``: the engine applies them as plain
deltas, and ``serving_nodes`` needs no clamp.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

DEFAULT_GPU_FAILURES_PER_HOUR: Final = 419 / (16_384 * 54 * 24)
CAPACITY_TYPES: Final = ("reserved", "on_demand", "spot")
CAUSES: Final = ("gpu_failure", "repair", "outage", "outage_end", "preemption", "preemption_end")

_IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Pool:
    """GPU nodes of one region bought one way from one provider."""

    region: str
    provider: str
    nodes: int
    gpus_per_node: int = 8
    capacity_type: str = "reserved"  # "reserved" | "on_demand" | "spot"

    def __post_init__(self) -> None:
        if self.nodes < 0:
            raise ValueError(f"pool {self.region}/{self.provider}: nodes must be >= 0")
        if self.gpus_per_node < 1:
            raise ValueError(f"pool {self.region}/{self.provider}: gpus_per_node must be >= 1")
        if self.capacity_type not in CAPACITY_TYPES:
            raise ValueError(
                f"pool {self.region}/{self.provider}: capacity_type must be one of "
                f"{', '.join(CAPACITY_TYPES)}"
            )


@dataclass(frozen=True, slots=True)
class Outage:
    """Every node of one region's pools, or of one provider's, down from ``start_h`` for
    ``duration_h`` hours. Exactly one of ``region`` and ``provider`` is set."""

    start_h: float
    duration_h: float
    region: str = ""
    provider: str = ""

    def __post_init__(self) -> None:
        if bool(self.region) == bool(self.provider):
            raise ValueError("outage: name exactly one of region or provider")
        _check_window("outage", self.start_h, self.duration_h)

    def hits(self, pool: Pool) -> bool:
        return pool.region == self.region if self.region else pool.provider == self.provider


@dataclass(frozen=True, slots=True)
class PreemptionWave:
    """``fraction`` of the nodes of each matching spot pool reclaimed: notice at ``start_h``
    (gslb drains them then), gone ``notice_s`` later, back ``duration_h`` after the notice.
    ``region`` and ``provider`` narrow the pools it hits; empty matches any."""

    start_h: float
    fraction: float
    duration_h: float
    region: str = ""
    provider: str = ""
    notice_s: float = 120.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise ValueError("preemption wave: fraction must be in [0, 1]")
        if self.notice_s < 0.0:
            raise ValueError("preemption wave: notice_s must be >= 0")
        _check_window("preemption wave", self.start_h, self.duration_h)

    def hits(self, pool: Pool) -> bool:
        return (
            pool.capacity_type == "spot"
            and self.region in ("", pool.region)
            and self.provider in ("", pool.provider)
        )

    def reclaimed(self, pool: Pool) -> int:
        """How many of ``pool``'s nodes this wave takes (rounded half up; 0 if it misses)."""
        if not self.hits(pool):
            return 0
        return min(pool.nodes, math.floor(self.fraction * pool.nodes + 0.5))


@dataclass(frozen=True, slots=True)
class CapacityEvent:
    """A change in the serving nodes of one pool at ``t_s`` (seconds from the start).

    ``nodes`` is the change (negative: lost). ``cause`` is one of ``CAUSES``: what started
    the nodes' downtime, or what ended its last reason. ``notice_s`` is the warning before
    lost nodes go (preemptions): they take no new work from ``t_s``, and work still running
    at ``t_s + notice_s`` is lost; 0 means at once.
    """

    t_s: float
    region: str
    nodes: int
    cause: str
    provider: str
    capacity_type: str
    notice_s: float = 0.0


def gpu_failures(
    pools: Sequence[Pool],
    hours: float,
    rng: np.random.Generator,
    rate_per_gpu_hour: float = DEFAULT_GPU_FAILURES_PER_HOUR,
    repair_h: float = 4.0,
) -> list[CapacityEvent]:
    """GPU failures (cordoning their node) and repairs alone, over ``hours``."""
    return timeline(pools, hours, rng, rate_per_gpu_hour=rate_per_gpu_hour, repair_h=repair_h)


def scripted(
    pools: Sequence[Pool],
    outages: Sequence[Outage],
    waves: Sequence[PreemptionWave],
    rng: np.random.Generator,
) -> list[CapacityEvent]:
    """Outages and preemption waves alone, in full (no horizon); ``rng`` picks the nodes
    each wave reclaims."""
    _check_pools(pools)
    events: list[CapacityEvent] = []
    for pool in pools:
        downs = _scripted_downs(pool, outages, waves, rng)
        events.extend(_transitions(pool, downs, math.inf))
    return sorted(events, key=_order)


def timeline(
    pools: Sequence[Pool],
    hours: float,
    rng: np.random.Generator,
    *,
    outages: Sequence[Outage] = (),
    waves: Sequence[PreemptionWave] = (),
    rate_per_gpu_hour: float = DEFAULT_GPU_FAILURES_PER_HOUR,
    repair_h: float = 4.0,
) -> list[CapacityEvent]:
    """Every change in serving nodes in ``[0, hours)``, sorted by ``(t_s, region, cause)``.

    Failures, outages and waves combine by the overlap rule of the module docstring.
    ``rng`` is read pool by pool, in order: the nodes each wave reclaims, then the failure
    arrivals, so a seed gives the same timeline.
    """
    if hours < 0.0:
        raise ValueError("hours must be >= 0")
    if rate_per_gpu_hour < 0.0:
        raise ValueError("rate_per_gpu_hour must be >= 0")
    if repair_h < 0.0:
        raise ValueError("repair_h must be >= 0")
    _check_pools(pools)
    horizon_s = hours * 3600.0
    events: list[CapacityEvent] = []
    for pool in pools:
        downs = _scripted_downs(pool, outages, waves, rng)
        downs.extend(_failure_downs(pool, horizon_s, rng, rate_per_gpu_hour, repair_h, downs))
        events.extend(_transitions(pool, downs, horizon_s))
    return sorted(events, key=_order)


def serving_nodes(
    pools: Sequence[Pool], events: Iterable[CapacityEvent], t_s: float
) -> dict[str, int]:
    """Nodes serving per region at ``t_s``: the pools' sizes plus every event at or before
    ``t_s``. Regions appear in the order of their first pool."""
    serving: dict[str, int] = {}
    for pool in pools:
        serving[pool.region] = serving.get(pool.region, 0) + pool.nodes
    for ev in events:
        if ev.t_s <= t_s:
            serving[ev.region] += ev.nodes
    return serving


# -- internals ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Down:
    """One reason for some nodes of a pool not to serve, over ``[start_s, end_s)``."""

    start_s: float
    end_s: float
    nodes: _IntArray  # node indices in the pool
    cause: str  # "gpu_failure" | "outage" | "preemption"
    notice_s: float = 0.0


_END_CAUSE: Final = {
    "gpu_failure": "repair",
    "outage": "outage_end",
    "preemption": "preemption_end",
}


def _check_window(what: str, start_h: float, duration_h: float) -> None:
    if start_h < 0.0:
        raise ValueError(f"{what}: start_h must be >= 0")
    if duration_h <= 0.0:
        raise ValueError(f"{what}: duration_h must be > 0")


def _check_pools(pools: Sequence[Pool]) -> None:
    # Events name a pool by (region, provider, capacity_type); two pools with the same name
    # would be indistinguishable to whoever applies them.
    seen: set[tuple[str, str, str]] = set()
    for p in pools:
        key = (p.region, p.provider, p.capacity_type)
        if key in seen:
            raise ValueError(f"pool {'/'.join(key)} listed twice")
        seen.add(key)


def _order(ev: CapacityEvent) -> tuple[float, str, str, str, str]:
    return (ev.t_s, ev.region, ev.cause, ev.provider, ev.capacity_type)


def _scripted_downs(
    pool: Pool,
    outages: Sequence[Outage],
    waves: Sequence[PreemptionWave],
    rng: np.random.Generator,
) -> list[_Down]:
    everyone = np.arange(pool.nodes, dtype=np.int64)
    downs = [
        _Down(o.start_h * 3600.0, (o.start_h + o.duration_h) * 3600.0, everyone, "outage")
        for o in outages
        if o.hits(pool) and pool.nodes
    ]
    for w in waves:
        k = w.reclaimed(pool)
        if k == 0:
            continue
        chosen = np.sort(rng.choice(pool.nodes, size=k, replace=False)).astype(np.int64)
        start_s = w.start_h * 3600.0
        downs.append(
            _Down(start_s, start_s + w.duration_h * 3600.0, chosen, "preemption", w.notice_s)
        )
    return downs


def _failure_downs(
    pool: Pool,
    horizon_s: float,
    rng: np.random.Generator,
    rate_per_gpu_hour: float,
    repair_h: float,
    scripted: Sequence[_Down],
) -> list[_Down]:
    """The pool's accepted GPU failures in ``[0, horizon_s)``, each a repair-long downtime."""
    rate_per_node_s = rate_per_gpu_hour * pool.gpus_per_node / 3600.0
    mean = rate_per_node_s * pool.nodes * horizon_s
    if mean <= 0.0:
        return []
    # Poisson arrivals over the whole pool, drawn at once: a count, then uniform times and
    # uniform nodes (the superposition of the nodes' independent Poisson processes).
    count = int(rng.poisson(mean))
    times = rng.uniform(0.0, horizon_s, size=count)
    nodes = rng.integers(0, pool.nodes, size=count, dtype=np.int64)
    keep = np.ones(count, dtype=bool)
    for d in scripted:  # thinning: a node that a scripted reason holds down cannot fail
        inside = (times >= d.start_s) & (times < d.end_s)
        keep &= ~(inside & np.isin(nodes, d.nodes))
    times, nodes = times[keep], nodes[keep]
    order = np.lexsort((times, nodes))
    repair_s = repair_h * 3600.0
    downs: list[_Down] = []
    last_node, free_at = -1, -math.inf
    # Sequential per node, but only over the arrivals (hundreds for a large fleet-day): a
    # node in repair drops the arrivals until it is back.
    for n, t in zip(nodes[order].tolist(), times[order].tolist(), strict=True):
        if n != last_node:
            last_node, free_at = n, -math.inf
        if t >= free_at:
            downs.append(_Down(t, t + repair_s, np.array([n], dtype=np.int64), "gpu_failure"))
            free_at = t + repair_s
    return downs


def _transitions(pool: Pool, downs: Sequence[_Down], horizon_s: float) -> list[CapacityEvent]:
    """The pool's serving transitions before ``horizon_s``, one event per (time, cause)."""
    # (time, 0 = a reason starts / 1 = one ends, index): at equal times starts come first, so
    # a reason ending as another begins never flaps the node up and down again.
    marks = sorted(
        [(d.start_s, 0, i) for i, d in enumerate(downs)]
        + [(d.end_s, 1, i) for i, d in enumerate(downs)]
    )
    reasons = np.zeros(pool.nodes, dtype=np.int64)
    changes: dict[tuple[float, str], tuple[int, float]] = {}
    for t, ends, i in marks:
        if t >= horizon_s:
            break
        d = downs[i]
        if ends:
            reasons[d.nodes] -= 1
            delta = int(np.count_nonzero(reasons[d.nodes] == 0))
            cause = _END_CAUSE[d.cause]
        else:
            delta = -int(np.count_nonzero(reasons[d.nodes] == 0))
            reasons[d.nodes] += 1
            cause = d.cause
        if delta:
            nodes, notice = changes.get((t, cause), (0, 0.0))
            changes[(t, cause)] = (nodes + delta, max(notice, d.notice_s if delta < 0 else 0.0))
    return [
        CapacityEvent(t, pool.region, n, cause, pool.provider, pool.capacity_type, notice)
        for (t, cause), (n, notice) in changes.items()
        if n
    ]
