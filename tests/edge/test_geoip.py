"""GeoIP: lookups against small generated databases, start-up validation, the bundled DB."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Any

import maxminddb
import pytest

from gslb.core.geo import Location
from gslb.edge.geoip import LOOKUP_RESULTS, GeoIP, GeoIPError, GeoIPInfo
from tests.mmdb_fixtures import (
    EXPECTED,
    SAMPLE_IP,
    SAMPLE_IP6,
    WORLD,
    city_record,
    write_city_mmdb,
    write_world_mmdb,
)

MAGIC = b"\xab\xcd\xefMaxMind.com"


@pytest.fixture(scope="module")
def world_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_world_mmdb(tmp_path_factory.mktemp("geo") / "world.mmdb")


@pytest.fixture
def geo(world_path: str) -> Iterator[GeoIP]:
    g = GeoIP(world_path)
    yield g
    g.close()


def ip(text: str) -> IPv4Address | IPv6Address:
    return ip_address(text)


def expected_location(city: str) -> Location:
    country, continent, lat, lon = EXPECTED[city]
    return Location(country=country, continent=continent, lat=lat, lon=lon)


# --- lookups -------------------------------------------------------------------------


@pytest.mark.parametrize("city", sorted(SAMPLE_IP))
def test_ipv4_lookup_every_city(geo: GeoIP, city: str) -> None:
    assert geo.lookup(ip(SAMPLE_IP[city])) == expected_location(city)


@pytest.mark.parametrize("city", sorted(SAMPLE_IP6))
def test_ipv6_lookup(geo: GeoIP, city: str) -> None:
    loc = geo.lookup(ip(SAMPLE_IP6[city]))
    assert loc == expected_location(city)
    assert loc is not None and loc.point is not None


def test_ipv4_mapped_ipv6_is_looked_up_as_ipv4(geo: GeoIP) -> None:
    # The generated tree (like many non-MaxMind writers) has no ::ffff:0:0/96 alias,
    # so this only works because lookup unmaps first.
    assert geo.lookup(ip("::ffff:1.0.1.10")) == expected_location("Toronto")


def test_whole_block_maps_to_city(geo: GeoIP) -> None:
    assert geo.lookup(ip("1.0.7.0")) == expected_location("London")
    assert geo.lookup(ip("1.0.7.255")) == expected_location("London")
    assert geo.lookup(ip("2a01:1:ffff::1")) == expected_location("Frankfurt")


def test_world_table_matches_samples() -> None:
    # Guard the fixture itself: every sample address lies in a WORLD network.
    import netaddr

    for sample in [*SAMPLE_IP.values(), *SAMPLE_IP6.values()]:
        assert any(netaddr.IPAddress(sample) in netaddr.IPNetwork(c) for c in WORLD), sample


def test_not_in_database(geo: GeoIP) -> None:
    assert geo.lookup(ip("1.0.99.1")) is None
    assert geo.lookup(ip("9.9.9.9")) is None
    assert geo.lookup(ip("2600:2::1")) is None
    assert geo.stats["not_found"] == 3
    assert geo.stats["found"] == 0


def test_none_input(geo: GeoIP) -> None:
    assert geo.lookup(None) is None
    assert sum(geo.stats.values()) == 0


@pytest.mark.parametrize(
    "addr",
    [
        "10.1.2.3",  # private
        "172.16.0.1",
        "192.168.1.1",
        "127.0.0.1",  # loopback
        "169.254.1.1",  # link-local
        "100.64.0.1",  # shared address space (CGNAT)
        "0.0.0.0",  # unspecified
        "240.0.0.1",  # reserved
        "255.255.255.255",  # broadcast
        "224.0.0.1",  # multicast
        "192.0.2.1",  # documentation
        "198.18.0.1",  # benchmarking
        "::1",
        "::",
        "fe80::1",
        "fc00::1",  # unique local
        "ff02::1",  # multicast
        "2001:db8::1",  # documentation
        "::ffff:10.0.0.1",  # mapped private
        "::ffff:127.0.0.1",
    ],
)
def test_non_routable_is_none_and_counted_private(
    world_path: str, addr: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    g = GeoIP(world_path)
    queried: list[object] = []
    real_get = g._reader.get

    def spy(a: Any) -> Any:
        queried.append(a)
        return real_get(a)

    monkeypatch.setattr(g, "_reader", _Proxy(g._reader, get=spy))
    assert g.lookup(ip(addr)) is None
    assert queried == []  # never sent to the database
    assert g.stats == {"hit": 0, "found": 0, "not_found": 0, "private": 1, "error": 0}
    g.close()


def test_mapped_public_address_is_not_private(geo: GeoIP) -> None:
    # ipaddress calls every ::ffff:a.b.c.d "reserved"; make sure we classify the IPv4.
    assert geo.lookup(ip("::ffff:1.0.9.10")) == expected_location("Tokyo")
    assert geo.stats["private"] == 0


# --- record shapes ------------------------------------------------------------------


def test_record_shapes(tmp_path: Path) -> None:
    records: dict[str, dict[str, Any]] = {
        # country, no coordinates (a GeoIP2 Country style record)
        "1.0.20.0/24": {"country": {"iso_code": "CA"}, "continent": {"code": "NA"}},
        # only registered_country: used as the country fallback
        "1.0.21.0/24": {"registered_country": {"iso_code": "FR"}, "continent": {"code": "EU"}},
        # coordinates but no country (anycast, satellite)
        "1.0.22.0/24": {"location": {"latitude": 10.5, "longitude": -20.25}},
        # neither country nor coordinates
        "1.0.23.0/24": {"continent": {"code": "EU"}},
        # country wins over registered_country
        "1.0.24.0/24": {
            "country": {"iso_code": "DE"},
            "registered_country": {"iso_code": "US"},
        },
        # only one coordinate, and an empty iso_code: locates nothing
        "1.0.25.0/24": {"country": {"iso_code": ""}, "location": {"latitude": 1.0}},
        # integral coordinates are fine and come back as floats
        "1.0.26.0/24": {"country": {"iso_code": "GH"}, "location": {"latitude": 0, "longitude": 0}},
        # not a map at all
        "1.0.27.0/24": {"weird": ["list"]},
    }
    g = GeoIP(write_city_mmdb(tmp_path / "shapes.mmdb", records))
    assert g.lookup(ip("1.0.20.1")) == Location("CA", "NA")
    assert g.lookup(ip("1.0.21.1")) == Location("FR", "EU")
    assert g.lookup(ip("1.0.22.1")) == Location(None, None, 10.5, -20.25)
    assert g.lookup(ip("1.0.23.1")) is None
    assert g.lookup(ip("1.0.24.1")) == Location("DE", None)
    assert g.lookup(ip("1.0.25.1")) is None
    loc = g.lookup(ip("1.0.26.1"))
    assert loc == Location("GH", None, 0.0, 0.0)
    assert loc is not None and isinstance(loc.lat, float) and loc.point == (0.0, 0.0)
    assert g.lookup(ip("1.0.27.1")) is None
    assert g.stats["found"] == 5
    assert g.stats["not_found"] == 3
    g.close()


# --- cache and stats ----------------------------------------------------------------


def test_cache_hits_are_counted(geo: GeoIP) -> None:
    toronto = ip(SAMPLE_IP["Toronto"])
    first = geo.lookup(toronto)
    for _ in range(5):
        assert geo.lookup(toronto) is first  # the cached object itself
    assert geo.stats["found"] == 1
    assert geo.stats["hit"] == 5


def test_negative_and_private_results_are_cached(geo: GeoIP) -> None:
    for _ in range(3):
        assert geo.lookup(ip("9.9.9.9")) is None
        assert geo.lookup(ip("10.0.0.1")) is None
    assert geo.stats == {"hit": 4, "found": 0, "not_found": 1, "private": 1, "error": 0}


def test_stats_keys_and_total(geo: GeoIP) -> None:
    addrs = ["1.0.1.10", "1.0.1.10", "9.9.9.9", "10.0.0.1", "2600:1::10", "2600:1::10"]
    for a in addrs:
        geo.lookup(ip(a))
    stats = geo.stats
    assert set(stats) == set(LOOKUP_RESULTS)
    assert sum(stats.values()) == len(addrs)  # every lookup counted exactly once
    stats["found"] = 999  # a snapshot: mutating it does not affect the source
    assert geo.stats["found"] == 2


def test_cache_is_bounded_lru(world_path: str) -> None:
    g = GeoIP(world_path, cache_size=2)
    a, b, c = ip("1.0.1.10"), ip("1.0.2.10"), ip("1.0.3.10")
    g.lookup(a)
    g.lookup(b)
    g.lookup(a)  # hit; a is now most recent
    g.lookup(c)  # evicts b
    g.lookup(a)  # still cached
    g.lookup(b)  # miss again
    assert g.stats["hit"] == 2
    assert g.stats["found"] == 4
    g.close()


def test_cache_disabled(world_path: str) -> None:
    g = GeoIP(world_path, cache_size=0)
    for _ in range(3):
        assert g.lookup(ip("1.0.1.10")) == expected_location("Toronto")
    assert g.stats["hit"] == 0 and g.stats["found"] == 3
    g.close()


def test_negative_cache_size_rejected(world_path: str) -> None:
    with pytest.raises(ValueError, match="cache_size"):
        GeoIP(world_path, cache_size=-1)


# --- lookups never raise -------------------------------------------------------------


class _Proxy:
    """Wraps a reader, overriding some attributes."""

    def __init__(self, inner: Any, **overrides: Any) -> None:
        self._inner = inner
        self.__dict__.update(overrides)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_lookup_time_corruption_logs_once_and_returns_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Overwrite the data section (between the tree and the metadata) with garbage. The
    # start-up probes are not in this database, so only the tree is validated at start-up
    # and the corruption surfaces at lookup time, as it would for a damaged region.
    path = write_world_mmdb(tmp_path / "bad-data.mmdb")
    with maxminddb.open_database(path) as reader:
        meta = reader.metadata()
        tree_size = meta.node_count * meta.record_size * 2 // 8
    data = bytearray(Path(path).read_bytes())
    meta_at = data.rfind(MAGIC)
    data[tree_size + 16 : meta_at] = b"\xff" * (meta_at - tree_size - 16)
    Path(path).write_bytes(bytes(data))

    g = GeoIP(path)
    with caplog.at_level(logging.ERROR, logger="gslb.edge.geoip"):
        assert g.lookup(ip("1.0.1.10")) is None
        assert g.lookup(ip("1.0.2.10")) is None
        assert g.lookup(ip("1.0.1.10")) is None  # cached negative
    errors = [r for r in caplog.records if r.name == "gslb.edge.geoip"]
    assert len(errors) == 1
    assert path in errors[0].getMessage()
    assert g.stats["error"] == 2 and g.stats["hit"] == 1
    # Addresses in no network never touch the data section and still work.
    assert g.lookup(ip("9.9.9.9")) is None
    assert g.stats["not_found"] == 1
    g.close()


@pytest.mark.parametrize(
    "exc",
    [
        maxminddb.InvalidDatabaseError("boom"),
        ValueError("closed"),
        OSError("io"),
        RuntimeError("?"),
    ],
)
def test_reader_exceptions_never_escape(geo: GeoIP, exc: Exception) -> None:
    def explode(_: Any) -> Any:
        raise exc

    geo._reader = _Proxy(geo._reader, get=explode)  # type: ignore[assignment]
    assert geo.lookup(ip("1.0.1.10")) is None
    assert geo.stats["error"] == 1


def test_bad_argument_type_does_not_raise(geo: GeoIP) -> None:
    assert geo.lookup("1.0.1.10") is None  # type: ignore[arg-type]
    assert geo.stats["error"] == 1


def test_lookup_after_close(world_path: str) -> None:
    g = GeoIP(world_path)
    assert g.lookup(ip("1.0.1.10")) is not None
    g.close()
    assert g.lookup(ip("1.0.1.10")) is None
    g.close()  # idempotent


# --- start-up validation --------------------------------------------------------------


def test_info(world_path: str) -> None:
    g = GeoIP(world_path)
    assert isinstance(g.info, GeoIPInfo)
    assert g.info.path == os.path.abspath(world_path)
    assert g.info.database_type == "GeoIP2-City"
    assert g.info.bundled is False
    assert g.info.built == datetime.fromtimestamp(g.info.build_epoch, UTC)
    assert g.info.built.tzinfo is UTC
    g.close()


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.mmdb")
    with pytest.raises(GeoIPError, match="does not exist") as err:
        GeoIP(path)
    assert path in str(err.value)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(GeoIPError, match="not a regular file") as err:
        GeoIP(str(tmp_path))
    assert str(tmp_path) in str(err.value)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.mmdb"
    path.write_bytes(b"")
    with pytest.raises(GeoIPError, match="empty") as err:
        GeoIP(str(path))
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "content",
    [
        b"this is not a maxmind database\n" * 100,
        b"\x00" * 4096,
        MAGIC,  # marker but no metadata
        MAGIC + b"\xff\xff\xff",  # marker followed by undecodable metadata
        MAGIC + b"\xe0",  # metadata is an empty map
        MAGIC + b"\x43abc",  # metadata is a string
    ],
)
@pytest.mark.parametrize("pure_python", [False, True], ids=["c-ext", "pure"])
def test_garbage_file(
    tmp_path: Path, content: bytes, pure_python: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if pure_python:  # the two readers fail in different ways on junk
        import maxminddb.extension as ext

        monkeypatch.delattr(ext, "Reader")
    path = tmp_path / "garbage.mmdb"
    path.write_bytes(content)
    with pytest.raises(GeoIPError) as err:
        GeoIP(str(path))
    assert str(path) in str(err.value)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_truncated_file(world_path: str, tmp_path: Path, keep: float) -> None:
    data = Path(world_path).read_bytes()
    path = tmp_path / "truncated.mmdb"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(GeoIPError, match="not a valid MaxMind DB") as err:
        GeoIP(str(path))
    assert str(path) in str(err.value)


def test_corrupt_search_tree(world_path: str, tmp_path: Path) -> None:
    with maxminddb.open_database(world_path) as reader:
        meta = reader.metadata()
        tree_size = meta.node_count * meta.record_size * 2 // 8
    data = bytearray(Path(world_path).read_bytes())
    data[:tree_size] = b"\xff" * tree_size
    path = tmp_path / "bad-tree.mmdb"
    path.write_bytes(bytes(data))
    with pytest.raises(GeoIPError, match="corrupt") as err:
        GeoIP(str(path))
    assert str(path) in str(err.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file(world_path: str, tmp_path: Path) -> None:
    path = tmp_path / "secret.mmdb"
    path.write_bytes(Path(world_path).read_bytes())
    path.chmod(0)
    with pytest.raises(GeoIPError, match="cannot read") as err:
        GeoIP(str(path))
    assert str(path) in str(err.value)


def test_permission_error_is_reported(world_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Runs as root too (where chmod 0 does not stop reads): simulate the OS refusing.
    def refuse(path: Any, mode: int = 0) -> Any:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(maxminddb, "open_database", refuse)
    with pytest.raises(GeoIPError, match="cannot read file \\(Permission denied\\)") as err:
        GeoIP(world_path)
    assert os.path.abspath(world_path) in str(err.value)


@pytest.mark.parametrize("db_type", ["GeoLite2-ASN", "GeoIP2-ISP", "GeoIP2-Connection-Type"])
def test_database_without_locations(tmp_path: Path, db_type: str) -> None:
    path = write_city_mmdb(
        tmp_path / "asn.mmdb",
        {"1.0.1.0/24": {"autonomous_system_number": 13335}},
        database_type=db_type,
    )
    with pytest.raises(GeoIPError, match="no location data") as err:
        GeoIP(path)
    assert path in str(err.value) and db_type in str(err.value)


@pytest.mark.parametrize("db_type", ["GeoLite2-Country", "GeoIP2-Enterprise", "DBIP-City-Lite"])
def test_other_location_databases_accepted(tmp_path: Path, db_type: str) -> None:
    rec = city_record("Toronto", "CA", "NA", 43.65, -79.38)
    g = GeoIP(write_city_mmdb(tmp_path / "x.mmdb", {"1.0.1.0/24": rec}, database_type=db_type))
    assert g.lookup(ip("1.0.1.1")) == Location("CA", "NA", 43.65, -79.38)
    g.close()


def test_user_path_expanded(world_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", os.path.dirname(world_path))
    g = GeoIP("~/" + os.path.basename(world_path))
    assert g.info.path == os.path.abspath(world_path)
    g.close()


def test_configured_db_logs_info_not_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    epoch = 1_700_000_000
    path = write_city_mmdb(tmp_path / "w.mmdb", WORLD, build_epoch=epoch)
    with caplog.at_level(logging.INFO, logger="gslb.edge.geoip"):
        g = GeoIP(path, now=lambda: epoch + 10 * 86400 + 5)
    assert g.info.build_epoch == epoch
    (record,) = [r for r in caplog.records if r.name == "gslb.edge.geoip"]
    assert record.levelno == logging.INFO
    assert "10 days old" in record.getMessage()
    g.close()


def test_falls_back_when_c_extension_missing(
    world_path: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import maxminddb.extension as ext

    monkeypatch.delattr(ext, "Reader")
    modes: list[int] = []
    real_open = maxminddb.open_database

    def spy(path: Any, mode: int = maxminddb.MODE_AUTO) -> Any:
        modes.append(mode)
        return real_open(path, mode)

    monkeypatch.setattr(maxminddb, "open_database", spy)
    with caplog.at_level(logging.WARNING, logger="gslb.edge.geoip"):
        g = GeoIP(world_path)
    assert modes == [maxminddb.MODE_AUTO]
    assert any("C extension" in r.getMessage() for r in caplog.records)
    assert g.lookup(ip("1.0.1.10")) == expected_location("Toronto")
    g.close()


def test_uses_c_extension_when_available(world_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    modes: list[int] = []
    real_open = maxminddb.open_database

    def spy(path: Any, mode: int = maxminddb.MODE_AUTO) -> Any:
        modes.append(mode)
        return real_open(path, mode)

    monkeypatch.setattr(maxminddb, "open_database", spy)
    GeoIP(world_path).close()
    assert modes == [maxminddb.MODE_MMAP_EXT]


# --- the bundled GeoLite2 database ---------------------------------------------------


def test_bundled_database(caplog: pytest.LogCaptureFixture) -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC).timestamp()
    with caplog.at_level(logging.WARNING, logger="gslb.edge.geoip"):
        g = GeoIP("", now=lambda: now)
    try:
        assert g.info.bundled is True
        assert g.info.database_type == "GeoLite2-City"
        assert g.info.path.endswith("GeoLite2-City.mmdb")
        age_days = int((now - g.info.build_epoch) // 86400)
        assert age_days > 365
        (warning,) = [r for r in caplog.records if r.name == "gslb.edge.geoip"]
        assert warning.levelno == logging.WARNING
        message = warning.getMessage()
        assert f"{age_days} days old" in message
        assert g.info.built.date().isoformat() in message
        assert '[geoip] database = "/path/to/GeoLite2-City.mmdb"' in message

        loc = g.lookup(ip("24.114.0.1"))
        assert loc is not None and loc.country == "CA" and loc.continent == "NA"
        assert loc.point is not None
        v6 = g.lookup(ip("2001:4860::1"))
        assert v6 is not None and v6.country == "US"
        assert g.lookup(ip("10.0.0.1")) is None
    finally:
        g.close()
