"""A region as a multi-server FCFS queue whose number of servers changes over time. Pure.

Continuous batching is modelled as a concurrency limit: a region has ``slots`` (its servers
times the requests each runs at once), and a request holds one slot from its start to its last
token. Requests start in arrival order (FCFS) on the first free slot: for a fixed number of
slots that is the classic G/G/c queue, and the start of each request follows from the slots'
free times alone (a min-heap of them), with no event per completion.

Capacity changes (failures, repairs, outages, preemptions) come in time order between
arrivals (``resize``):

* lost slots finish the request they run and then disappear (a cordoned node drains);
* new slots are free from the moment they come;
* a region with no slot at all takes no request: the engine treats it as a refused
  connection (the next candidate, or a failed request).

Each ``admit`` returns the request's start time; the region also keeps the finish times of
every request in it, so ``in_system(t)`` (running + queued) is what a router would read as load.
"""

from __future__ import annotations

import heapq


class RegionQueue:
    """One region's slots, FCFS. Times are seconds; call ``admit`` and ``resize`` in time order."""

    __slots__ = ("_finishes", "_free", "_remove", "busy_s", "slots")

    def __init__(self, slots: int, t0: float = 0.0) -> None:
        self.slots = slots
        self._free: list[float] = [t0] * slots  # when each slot is next free (a heap)
        self._remove = 0  # slots to drop as they come free (a shrink in progress)
        self._finishes: list[float] = []  # finish time of every request still in the system
        self.busy_s = 0.0  # slot-seconds of service started (utilisation numerator)

    def admit(self, t: float, service_s: float) -> float:
        """A request arriving at ``t`` for ``service_s`` seconds: its start time. The region
        must have a slot (``slots > 0``)."""
        free = self._free
        while self._remove:
            heapq.heappop(free)  # the earliest-free slots go first: idle ones, then draining
            self._remove -= 1
        slot = free[0]
        start = t if slot <= t else slot
        finish = start + service_s
        heapq.heapreplace(free, finish)
        heapq.heappush(self._finishes, finish)
        self.busy_s += service_s
        return start

    def resize(self, t: float, slots: int) -> None:
        """The region has ``slots`` from ``t`` on."""
        delta = slots - self.slots
        self.slots = slots
        if delta < 0:
            self._remove -= delta
            return
        cancel = min(self._remove, delta)  # slots not yet dropped stay, as they were
        self._remove -= cancel
        for _ in range(delta - cancel):
            heapq.heappush(self._free, t)

    def in_system(self, t: float) -> int:
        """Requests running or queued at ``t`` (those admitted and not finished)."""
        finishes = self._finishes
        while finishes and finishes[0] <= t:
            heapq.heappop(finishes)
        return len(finishes)
