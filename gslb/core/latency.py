"""Latency model: the round trip a client would see to each region.

Two models (docs/design.md, section 3), chosen by ``routing.latency_model``:

* ``geodesic``: great-circle distance x ``ROUTE_FACTOR`` over the speed of light in fibre.
  Light in glass covers about 204 km per millisecond (c / 1.47); real routes are longer than
  the great circle. A factor of 1.5 puts New York - San Francisco (4,130 km) at 60.7 ms RTT,
  which matches what public RTT matrices report for that pair (about 60-70 ms). The table in
  ``docs/latency.md`` lists more city pairs.
* ``timezone``: the field's rule of thumb, 5 ms one way per time zone crossed, where a zone is
  15 degrees of longitude. It ignores latitude, so it is only a rough guide.

Measured per-country figures (``routing.measured_rtt_ms``) win over either model. All of this
is computed once per distinct client location and cached by the router, never per request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gslb.core.geo import great_circle_km

FIBRE_KM_PER_MS = 204.0
ROUTE_FACTOR = 1.5
MS_PER_TIMEZONE_ONE_WAY = 5.0
DEGREES_PER_TIMEZONE = 15.0


def geodesic_rtt_ms(a: tuple[float, float], b: tuple[float, float]) -> float:
    km = great_circle_km(a[0], a[1], b[0], b[1])
    return 2.0 * km * ROUTE_FACTOR / FIBRE_KM_PER_MS


def timezone_rtt_ms(a: tuple[float, float], b: tuple[float, float]) -> float:
    dlon = abs(a[1] - b[1]) % 360.0
    dlon = min(dlon, 360.0 - dlon)  # the short way round the globe
    return 2.0 * MS_PER_TIMEZONE_ONE_WAY * dlon / DEGREES_PER_TIMEZONE


MODELS = {"geodesic": geodesic_rtt_ms, "timezone": timezone_rtt_ms}


class LatencyModel:
    """Modeled RTT from a point to every region, with measured overrides per country."""

    def __init__(
        self,
        kind: str,
        region_names: Sequence[str],
        region_locations: Sequence[tuple[float, float]],
        measured: Mapping[str, Mapping[str, float]] | None = None,
    ) -> None:
        if kind not in MODELS:
            raise ValueError(f"unknown latency model {kind!r}")
        self.kind = kind
        self._rtt = MODELS[kind]
        self._locations = tuple(region_locations)
        index = {name: i for i, name in enumerate(region_names)}
        # Resolve names to indexes once, at config load.
        self._measured: dict[str, tuple[tuple[int, float], ...]] = {
            country: tuple((index[r], ms) for r, ms in per_region.items())
            for country, per_region in (measured or {}).items()
        }

    def rtt_ms(self, point: tuple[float, float], country: str | None) -> list[float]:
        """RTT in ms from ``point`` to each region, in config order."""
        out = [self._rtt(point, loc) for loc in self._locations]
        if country is not None:
            for i, ms in self._measured.get(country, ()):
                out[i] = ms
        return out
