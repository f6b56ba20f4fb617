"""Latency learning: per-region EWMAs and the observed service time for the router. Pure.

Per region, EWMAs (``alpha``, default 0.2) of time to first byte (``on_ttfb``), whole-request
duration (``on_duration``) and probe round trip (``on_probe_rtt``).

``service_ms_correction(region)`` is an observed service time for the router's wait estimate:
the duration EWMA minus the probe RTT EWMA (the network part of the duration does not hold a
server slot), floored at ``MIN_SERVICE_MS``, or ``None`` until ``min_samples`` durations were
seen. The router's ``wait_ms`` models how long a queued request waits for a slot, and a slot is
held for the whole request, so the duration is the right figure; TTFB minus RTT would be queue
wait plus prefill, which under load double-counts the queue and at rest underestimates the slot
time by the whole generation, so it is exposed for status only.

The shell applies the correction with ``Router.set_service_ms(i, value)`` when it is not
``None`` and keeps the modeled ``service_ms`` otherwise; it should feed ``on_duration`` only
with requests that completed normally (a cancelled stream's duration says nothing about
service time).
"""

from __future__ import annotations

import math
from typing import Final

from gslb.core.fleet import RegionState

DEFAULT_ALPHA: Final = 0.2
MIN_SERVICE_MS: Final = 1.0
DEFAULT_MIN_SAMPLES: Final = 5


class Ewma:
    """Exponentially weighted moving average; the first sample seeds it."""

    __slots__ = ("alpha", "count", "value")

    def __init__(self, alpha: float) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.value: float | None = None
        self.count = 0

    def add(self, x: float) -> None:
        if not math.isfinite(x) or x < 0:
            return  # a bogus sample must not poison the average for good
        self.count += 1
        self.value = x if self.value is None else self.value + self.alpha * (x - self.value)


class LatencyLearner:
    """The EWMAs of ``regions`` regions, indexed like ``FleetState.regions``."""

    def __init__(
        self,
        regions: int,
        *,
        alpha: float = DEFAULT_ALPHA,
        min_samples: int = DEFAULT_MIN_SAMPLES,
    ) -> None:
        self.min_samples = min_samples
        self._ttfb = [Ewma(alpha) for _ in range(regions)]
        self._duration = [Ewma(alpha) for _ in range(regions)]
        self._rtt = [Ewma(alpha) for _ in range(regions)]

    def on_ttfb(self, region_index: int, seconds: float) -> None:
        self._ttfb[region_index].add(seconds * 1000.0)

    def on_duration(self, region_index: int, seconds: float) -> None:
        """Whole-request time of a request that completed normally (feeds the service time)."""
        self._duration[region_index].add(seconds * 1000.0)

    def on_probe_rtt(self, region_index: int, seconds: float) -> None:
        self._rtt[region_index].add(seconds * 1000.0)

    def set_probe_rtt_ms(self, region_index: int, value: float | None) -> None:
        """Take another process's probe RTT average as it is (a supervisor probes for its
        workers, which still need it for ``service_ms_correction``)."""
        self._rtt[region_index].value = value

    def ewma_ttfb_ms(self, region: int | RegionState) -> float | None:
        return self._ttfb[_index(region)].value

    def ewma_duration_ms(self, region: int | RegionState) -> float | None:
        return self._duration[_index(region)].value

    def ewma_probe_rtt_ms(self, region: int | RegionState) -> float | None:
        return self._rtt[_index(region)].value

    def service_ms_correction(self, region: int | RegionState) -> float | None:
        """Observed service time (ms) for the router's wait estimate, or None without data."""
        i = _index(region)
        duration = self._duration[i]
        if duration.value is None or duration.count < self.min_samples:
            return None
        rtt = self._rtt[i].value or 0.0
        return max(MIN_SERVICE_MS, duration.value - rtt)


def _index(region: int | RegionState) -> int:
    return region if isinstance(region, int) else region.index
