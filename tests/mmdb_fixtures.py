"""Build small GeoIP2-City-shaped MaxMind DB files for tests (no pytest dependency).

``write_city_mmdb(path, records)`` writes a real .mmdb (IPv6 tree, IPv4 at ::/96, like
GeoLite2 City) that ``gslb.edge.geoip.GeoIP`` and ``maxminddb`` read like the real thing.
``write_world_mmdb(path)`` writes ``WORLD``, the shared test geography below.

The ranges are public unicast space (so ``GeoIP`` does not discard them as private or
documentation addresses) but the city assignments are invented: these are NOT the real
locations of these networks.

    CIDR              city            country  continent  lat, lon          sample IP
    1.0.1.0/24        Toronto         CA       NA          43.6532,  -79.3832  1.0.1.10
    1.0.2.0/24        Montreal        CA       NA          45.5017,  -73.5673  1.0.2.10
    1.0.3.0/24        New York        US       NA          40.7128,  -74.0060  1.0.3.10
    1.0.4.0/24        San Francisco   US       NA          37.7749, -122.4194  1.0.4.10
    1.0.5.0/24        Frankfurt       DE       EU          50.1109,    8.6821  1.0.5.10
    1.0.6.0/24        Paris           FR       EU          48.8566,    2.3522  1.0.6.10
    1.0.7.0/24        London          GB       EU          51.5074,   -0.1278  1.0.7.10
    1.0.8.0/24        Singapore       SG       AS           1.3521,  103.8198  1.0.8.10
    1.0.9.0/24        Tokyo           JP       AS          35.6762,  139.6503  1.0.9.10
    1.0.10.0/24       Sao Paulo       BR       SA         -23.5505,  -46.6333  1.0.10.10
    1.0.11.0/24       Sydney          AU       OC         -33.8688,  151.2093  1.0.11.10
    2600:1::/32       New York        US       NA          40.7128,  -74.0060  2600:1::10
    2a01:1::/32       Frankfurt       DE       EU          50.1109,    8.6821  2a01:1::10
    2400:1::/32       Tokyo           JP       AS          35.6762,  139.6503  2400:1::10

Anything else (e.g. 1.0.99.1, 9.9.9.9, 2600:2::1) is not in the database.
"""

from __future__ import annotations

import os
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet

# (city, country, continent, lat, lon, IPv4 /24, IPv6 /32 or None)
_CITIES: tuple[tuple[str, str, str, float, float, str, str | None], ...] = (
    ("Toronto", "CA", "NA", 43.6532, -79.3832, "1.0.1.0/24", None),
    ("Montreal", "CA", "NA", 45.5017, -73.5673, "1.0.2.0/24", None),
    ("New York", "US", "NA", 40.7128, -74.0060, "1.0.3.0/24", "2600:1::/32"),
    ("San Francisco", "US", "NA", 37.7749, -122.4194, "1.0.4.0/24", None),
    ("Frankfurt", "DE", "EU", 50.1109, 8.6821, "1.0.5.0/24", "2a01:1::/32"),
    ("Paris", "FR", "EU", 48.8566, 2.3522, "1.0.6.0/24", None),
    ("London", "GB", "EU", 51.5074, -0.1278, "1.0.7.0/24", None),
    ("Singapore", "SG", "AS", 1.3521, 103.8198, "1.0.8.0/24", None),
    ("Tokyo", "JP", "AS", 35.6762, 139.6503, "1.0.9.0/24", "2400:1::/32"),
    ("Sao Paulo", "BR", "SA", -23.5505, -46.6333, "1.0.10.0/24", None),
    ("Sydney", "AU", "OC", -33.8688, 151.2093, "1.0.11.0/24", None),
)


def city_record(city: str, country: str, continent: str, lat: float, lon: float) -> dict[str, Any]:
    """A record shaped like a GeoIP2 City record (the fields gslb reads, plus names)."""
    return {
        "city": {"names": {"en": city}},
        "continent": {"code": continent},
        "country": {"iso_code": country},
        "registered_country": {"iso_code": country},
        "location": {"latitude": lat, "longitude": lon, "accuracy_radius": 20},
    }


def _world() -> dict[str, dict[str, Any]]:
    world: dict[str, dict[str, Any]] = {}
    for city, country, continent, lat, lon, v4, v6 in _CITIES:
        record = city_record(city, country, continent, lat, lon)
        world[v4] = record
        if v6 is not None:
            world[v6] = record
    return world


#: CIDR -> GeoIP2 City record for the table in the module docstring.
WORLD: dict[str, dict[str, Any]] = _world()

#: City name -> an address inside its IPv4 block ("Toronto" -> "1.0.1.10").
SAMPLE_IP: dict[str, str] = {
    city: v4.replace(".0/24", ".10") for city, _, _, _, _, v4, _ in _CITIES
}

#: City name -> an address inside its IPv6 block, for the cities that have one.
SAMPLE_IP6: dict[str, str] = {
    city: v6.replace("::/32", "::10") for city, _, _, _, _, _, v6 in _CITIES if v6 is not None
}

#: City name -> (country, continent, lat, lon), for asserting on lookups.
EXPECTED: dict[str, tuple[str, str, float, float]] = {
    city: (country, continent, lat, lon) for city, country, continent, lat, lon, _, _ in _CITIES
}


class _Writer(MMDBWriter):
    """MMDBWriter that can pin build_epoch (it otherwise stamps time.time())."""

    def __init__(self, build_epoch: int | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._build_epoch = build_epoch

    def _build_meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = super()._build_meta()
        if self._build_epoch is not None:
            meta["build_epoch"] = self._build_epoch
        return meta


def write_city_mmdb(
    path: str | os.PathLike[str],
    records: dict[str, dict[str, Any]],
    *,
    database_type: str = "GeoIP2-City",
    build_epoch: int | None = None,
) -> str:
    """Write ``records`` (CIDR string -> record dict) as an .mmdb at ``path``; return it.

    IPv6 tree with IPv4 networks stored at ::/96, as in GeoLite2 City. ``build_epoch``
    (seconds since the epoch) overrides the build time, for age tests.
    """
    writer = _Writer(
        build_epoch,
        ip_version=6,
        database_type=database_type,
        languages=["en"],
        description="gslb test database",
        ipv4_compatible=True,
    )
    for cidr, record in records.items():
        writer.insert_network(IPSet([cidr]), record)
    target = os.fspath(path)
    writer.to_db_file(target)
    return target


def write_world_mmdb(path: str | os.PathLike[str]) -> str:
    """Write the ``WORLD`` test geography to ``path``; return the path as a string."""
    return write_city_mmdb(path, WORLD)
