"""Geographic primitives: where a client or region is, and how far apart two places are.

Pure: no I/O. The GeoIP reader (``geoip.py``) produces ``Location`` values; the latency
model (``latency.py``) turns distances into round-trip times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

EARTH_RADIUS_KM = 6371.0088


@dataclass(frozen=True, slots=True)
class Location:
    """Where a client is, as far as GeoIP can tell.

    ``country`` and ``continent`` are ISO codes (``"CA"``, ``"NA"``) or ``None`` when the
    database has a point but no country (anycast ranges, satellites). ``lat``/``lon`` are
    ``None`` when only the country is known.
    """

    country: str | None
    continent: str | None = None
    lat: float | None = None
    lon: float | None = None

    @property
    def point(self) -> tuple[float, float] | None:
        """``(lat, lon)``, or ``None`` when only the country is known."""
        if self.lat is None or self.lon is None:
            return None
        return (self.lat, self.lon)


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance in kilometres (mean Earth radius; error under 0.5%)."""
    p1 = math.radians(lat1)
    p2 = math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))
