"""Latency model calibration against known city pairs."""

from __future__ import annotations

import pytest

from gslb.core.geo import great_circle_km
from gslb.core.latency import LatencyModel, geodesic_rtt_ms, timezone_rtt_ms

NEW_YORK = (40.71, -74.01)
SAN_FRANCISCO = (37.77, -122.42)
LONDON = (51.51, -0.13)
TOKYO = (35.68, 139.69)
SINGAPORE = (1.35, 103.82)
SYDNEY = (-33.87, 151.21)
TORONTO = (43.65, -79.38)
MONTREAL = (45.50, -73.57)


def test_great_circle_reference_distances() -> None:
    assert great_circle_km(*NEW_YORK, *SAN_FRANCISCO) == pytest.approx(4130, rel=0.01)
    assert great_circle_km(*NEW_YORK, *LONDON) == pytest.approx(5570, rel=0.01)
    assert great_circle_km(*TOKYO, *TOKYO) == 0


def test_geodesic_is_calibrated_on_new_york_san_francisco() -> None:
    assert geodesic_rtt_ms(NEW_YORK, SAN_FRANCISCO) == pytest.approx(60, abs=3)


@pytest.mark.parametrize(
    ("a", "b", "lo", "hi"),
    [
        (NEW_YORK, LONDON, 70, 90),  # public RTT tables: ~70-80 ms
        (LONDON, SINGAPORE, 150, 180),  # ~160-170 ms
        (SAN_FRANCISCO, TOKYO, 100, 130),  # ~105-115 ms
        (SINGAPORE, SYDNEY, 85, 110),  # ~90-95 ms
        (TORONTO, MONTREAL, 4, 10),  # ~6-9 ms
    ],
)
def test_geodesic_city_pairs(
    a: tuple[float, float], b: tuple[float, float], lo: float, hi: float
) -> None:
    assert lo <= geodesic_rtt_ms(a, b) <= hi


def test_timezone_rule_of_thumb() -> None:
    # ~5 ms one way per time zone: New York -> San Francisco is ~15 ms one way.
    assert timezone_rtt_ms(NEW_YORK, SAN_FRANCISCO) / 2 == pytest.approx(16, abs=1.5)
    # Across the date line the short way round counts.
    assert timezone_rtt_ms(SAN_FRANCISCO, TOKYO) == pytest.approx(
        10 * (360 - (139.69 + 122.42)) / 15, rel=1e-9
    )
    assert timezone_rtt_ms(NEW_YORK, NEW_YORK) == 0


def test_measured_overrides_win_for_their_country_only() -> None:
    model = LatencyModel("geodesic", ["a", "b"], [NEW_YORK, LONDON], {"BR": {"b": 3.0}})
    modeled = model.rtt_ms(SAN_FRANCISCO, "US")
    measured = model.rtt_ms(SAN_FRANCISCO, "BR")
    assert measured[1] == 3.0 and measured[0] == modeled[0]
    assert modeled[1] > 100
    assert model.rtt_ms(SAN_FRANCISCO, None) == modeled  # no country: the model alone


def test_unknown_model_is_refused() -> None:
    with pytest.raises(ValueError):
        LatencyModel("psychic", [], [])
