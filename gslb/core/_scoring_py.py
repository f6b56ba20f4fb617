"""Pure-Python region scoring kernel: the readable reference for ``gslb.core._scoring``.

Both modules implement the same decision procedure and must return bit-identical answers
(``tests/core/test_scoring.py`` checks this on thousands of random fleets). Regions are indexed
``0..n-1`` in config order, and every tie goes to the region listed first (lowest index).

Per region ``i``::

    util_i    = load_i / capacity_i
    wait_ms_i = max(0, load_i + 1 - capacity_i) / capacity_i * service_ms_i
    cost_i    = net_ms_i + wait_ms_i

Decision, over the allowed regions ``A`` only:

1. ``A`` empty -> ``NO_REGION``.
2. ``Pool`` = active and routable members of ``A``. If empty, choose the routable standby
   region of ``A`` with least ``net_ms`` (``STANDBY``); fallbacks are the other routable
   standby regions by cost. With no routable standby either -> ``NO_REGION``.
3. ``nearest`` = active member of ``A`` with least ``net_ms`` (routable or not);
   ``home`` = member of ``Pool`` with least ``net_ms``.
4. ``util_home < spill_utilization`` -> ``home``; ``LOCAL`` if it is ``nearest``, else
   ``FAILOVER``. The latency budget does not apply.
5. Otherwise the best spill target is the other ``Pool`` member with
   ``util < spill_utilization`` and ``cost <= budget_ms`` that minimises
   ``cost + spill_penalty_ms``; it wins (``SPILL``) only if that sum is strictly below
   ``cost_home``, else ``home`` stays (``LOCAL_QUEUED``).
6. Fallbacks: the rest of ``Pool`` by cost ascending, ties by index.

Floating-point expressions are written in exactly the order the Cython kernel evaluates
them, e.g. ``(net + wait) + penalty``.
"""

from __future__ import annotations

import array
from collections.abc import Iterable, Sequence

# The reason codes and their names (``Decision.reason``, the route metric label) are defined
# here only. The compiled kernel has the codes as C constants and no names; tests hold its
# codes to these.
NO_REGION = 0
LOCAL = 1
FAILOVER = 2
SPILL = 3
LOCAL_QUEUED = 4
STANDBY = 5

REASONS = ("no-region", "local", "failover", "spill", "local-queued", "standby")

# Why each region was or was not chosen, for explanations (``Kernel.explain``). They are set
# by the very steps that make the decision, so an explanation cannot drift from it.
CHOSEN = 0
NOT_ALLOWED = 1
NOT_ROUTABLE = 2
STANDBY_UNUSED = 3  # a routable standby region while an active one is routable
BUSY = 4  # at or above spill_utilization
OVER_BUDGET = 5  # a spill target whose net + wait exceeds the budget
NOT_BETTER = 6  # allowed and routable, but the chosen region is nearer or cheaper

VERDICTS = (
    "chosen",
    "not-allowed",
    "not-routable",
    "standby-unused",
    "busy",
    "over-budget",
    "not-better",
)

__all__ = [
    "BUSY",
    "CHOSEN",
    "FAILOVER",
    "LOCAL",
    "LOCAL_QUEUED",
    "NOT_ALLOWED",
    "NOT_BETTER",
    "NOT_ROUTABLE",
    "NO_REGION",
    "OVER_BUDGET",
    "REASONS",
    "SPILL",
    "STANDBY",
    "STANDBY_UNUSED",
    "VERDICTS",
    "Kernel",
    "wait_ms",
]


def wait_ms(load: float, capacity: float, service_ms: float) -> float:
    """Modeled queueing delay for one more request at a region with ``load`` in flight."""
    return max(0.0, load + 1.0 - capacity) / capacity * service_ms


class Kernel:
    """Scores the regions of one fleet; built once at config-load time."""

    __slots__ = ("_active", "_capacity", "_n", "_service_ms", "_spill_penalty_ms", "_spill_util")

    def __init__(
        self,
        active: Sequence[bool],
        capacity: Sequence[float],
        service_ms: Sequence[float],
        spill_utilization: float,
        spill_penalty_ms: float,
    ) -> None:
        n = len(active)
        if len(capacity) != n or len(service_ms) != n:
            raise ValueError(
                f"active, capacity and service_ms must have the same length "
                f"(got {n}, {len(capacity)}, {len(service_ms)})"
            )
        caps = [float(c) for c in capacity]
        services = [float(s) for s in service_ms]
        for i in range(n):
            if not caps[i] > 0.0:
                raise ValueError(f"capacity[{i}] must be > 0, got {caps[i]!r}")
            if not services[i] > 0.0:
                raise ValueError(f"service_ms[{i}] must be > 0, got {services[i]!r}")
        self._n = n
        self._active = [bool(a) for a in active]
        self._capacity = caps
        self._service_ms = services
        self._spill_util = float(spill_utilization)
        self._spill_penalty_ms = float(spill_penalty_ms)

    @property
    def n(self) -> int:
        """Number of regions."""
        return self._n

    def set_service_ms(self, index: int, value: float) -> None:
        """Replace one region's per-request service time (e.g. from observed latency)."""
        if not 0 <= index < self._n:
            raise IndexError(f"region index {index} out of range for {self._n} regions")
        value = float(value)
        if not value > 0.0:
            raise ValueError(f"service_ms must be > 0, got {value!r}")
        self._service_ms[index] = value

    def decide(
        self,
        allowed: bytes,
        routable: bytes | bytearray,
        net_ms: array.array[float],
        load: array.array[float],
        budget_ms: float,
        limit: int = 0,
    ) -> tuple[int, tuple[int, ...], int]:
        """Return ``(reason, order, home)``: ``order[0]`` is the choice, the rest are
        fallbacks; ``home`` is the nearest routable active allowed region (the one a spill
        leaves; the chosen standby region when none is active), -1 with no region.

        ``limit`` > 0 keeps only the first ``limit`` entries of ``order``; 0 keeps them all.
        """
        reason, order, home = self._decide(allowed, routable, net_ms, load, budget_ms, None)
        return reason, (order[:limit] if limit > 0 else order), home

    def explain(
        self,
        allowed: bytes,
        routable: bytes | bytearray,
        net_ms: array.array[float],
        load: array.array[float],
        budget_ms: float,
    ) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
        """``decide`` plus a verdict per region (``VERDICTS``): why it was or was not chosen.

        The verdicts come from the same steps as the decision. The compiled kernel has no
        ``explain``: tests hold its decisions to this one over random fleets.
        """
        verdicts = [NOT_ALLOWED] * self._n
        reason, order, _ = self._decide(allowed, routable, net_ms, load, budget_ms, verdicts)
        return reason, order, tuple(verdicts)

    def _decide(
        self,
        allowed: bytes,
        routable: bytes | bytearray,
        net_ms: array.array[float],
        load: array.array[float],
        budget_ms: float,
        verdicts: list[int] | None,
    ) -> tuple[int, tuple[int, ...], int]:
        n = self._n
        if len(allowed) != n or len(routable) != n or len(net_ms) != n or len(load) != n:
            raise ValueError(
                f"expected {n} regions, got allowed={len(allowed)} routable={len(routable)} "
                f"net_ms={len(net_ms)} load={len(load)}"
            )

        def util(i: int) -> float:
            return load[i] / self._capacity[i]

        def cost(i: int) -> float:
            return net_ms[i] + wait_ms(load[i], self._capacity[i], self._service_ms[i])

        def by_cost(regions: Iterable[int]) -> tuple[int, ...]:
            return tuple(sorted(regions, key=cost))  # stable: ties keep index order

        def nearest_of(regions: Sequence[int]) -> int:
            return min(regions, key=lambda i: net_ms[i])  # min keeps the first on ties

        def mark(regions: Iterable[int], verdict: int) -> None:
            if verdicts is not None:
                for i in regions:
                    verdicts[i] = verdict

        candidates = [i for i in range(n) if allowed[i]]
        if not candidates:
            return NO_REGION, (), -1
        mark((i for i in candidates if not routable[i]), NOT_ROUTABLE)

        pool = [i for i in candidates if self._active[i] and routable[i]]
        standby = [i for i in candidates if not self._active[i] and routable[i]]
        if not pool:
            if not standby:
                return NO_REGION, (), -1
            chosen = nearest_of(standby)
            mark(standby, NOT_BETTER)
            mark((chosen,), CHOSEN)
            return STANDBY, (chosen, *by_cost(i for i in standby if i != chosen)), chosen
        mark(standby, STANDBY_UNUSED)

        nearest = nearest_of([i for i in candidates if self._active[i]])
        home = nearest_of(pool)
        mark(pool, NOT_BETTER)
        if util(home) < self._spill_util:
            chosen = home
            reason = LOCAL if home == nearest else FAILOVER
        else:
            chosen, reason = home, LOCAL_QUEUED
            targets = []
            for i in pool:
                if i == home:
                    continue
                if util(i) >= self._spill_util:
                    mark((i,), BUSY)
                elif cost(i) > budget_ms:
                    mark((i,), OVER_BUDGET)
                else:
                    targets.append(i)
            if targets:
                best = min(targets, key=lambda i: cost(i) + self._spill_penalty_ms)
                if cost(best) + self._spill_penalty_ms < cost(home):
                    chosen, reason = best, SPILL
                    mark((home,), BUSY)
        mark((chosen,), CHOSEN)
        return reason, (chosen, *by_cost(i for i in pool if i != chosen)), home
