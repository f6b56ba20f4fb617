"""Recent routing activity for the status page: decision counts and spill flows.

An observer of finished requests. Counts by route since start, and spill flows (from, to)
over a sliding window, so the map can draw arrows for what is happening now. Bounded: the
window holds at most ``max_events`` spills.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable

from gslb.core.scoring import REASONS, SPILL
from gslb.ops.observe import RequestRecord


class RecentActivity:
    def __init__(
        self,
        window_s: float = 60.0,
        max_events: int = 10000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s = window_s
        self.clock = clock
        self.decisions: Counter[str] = Counter()
        self._spills: deque[tuple[float, str, str]] = deque(maxlen=max_events)

    def request_done(self, record: RequestRecord) -> None:
        self.decisions[record.route or "none"] += 1
        if record.route == REASONS[SPILL] and record.spilled_from and record.region:
            self._spills.append((self.clock(), record.spilled_from, record.region))

    def decision_made(self, seconds: float) -> None:
        pass

    def denied(self, cause: str, rules: tuple[str, ...]) -> None:
        pass

    def spills(self) -> list[dict[str, object]]:
        """Spill flows in the window: ``[{"from", "to", "count"}]``, busiest first."""
        horizon = self.clock() - self.window_s
        while self._spills and self._spills[0][0] < horizon:
            self._spills.popleft()
        flows = Counter((src, dst) for _, src, dst in self._spills)
        return [{"from": s, "to": d, "count": n} for (s, d), n in flows.most_common()]
