"""GeoIP2 / GeoLite2 City lookups: client address -> ``Location``.

Shell module: opens a MaxMind DB file at start-up and memory-maps it. Every problem with
the file (missing, unreadable, not an mmdb, corrupt, wrong kind of database) is reported
once, at start-up, as a ``GeoIPError`` naming the path. After that, ``lookup`` never
raises: a GeoIP problem must degrade routing to "location unknown", not fail a request.

``lookup`` is on the per-request hot path, so results (negative ones included) are kept
in a bounded LRU cache; a cache hit is one C-level ``functools.lru_cache`` probe.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Final

import maxminddb

from gslb.core.geo import Location

log = logging.getLogger("gslb.edge.geoip")

IPAddress = IPv4Address | IPv6Address

# The result labels of ``GeoIP.stats`` (gslb_geoip_lookups_total{result}).
LOOKUP_RESULTS: Final = ("hit", "found", "not_found", "private", "error")

# Where the ``maxminddb-geolite2`` package keeps its (2018) GeoLite2 City database.
_BUNDLED_PACKAGE: Final = "_maxminddb_geolite2"
_BUNDLED_FILE: Final = "GeoLite2-City.mmdb"

# database_type substrings of MaxMind-format databases that carry country and/or
# coordinates (GeoIP2/GeoLite2 City and Country, GeoIP2 Enterprise, DB-IP City/Country
# Lite). ASN, ISP, Domain, Connection-Type and Anonymous-IP databases do not.
_LOCATION_TYPES: Final = ("city", "country", "enterprise")

# Public addresses probed at start-up: forces a walk of the search tree (and the data
# section when found) so a corrupt file fails now rather than on the first request.
_PROBES: Final = (IPv4Address("1.1.1.1"), IPv4Address("8.8.8.8"), IPv6Address("2001:4860::1"))

_HINT: Final = 'set [geoip] database = "/path/to/GeoLite2-City.mmdb" for a current one'


class GeoIPError(Exception):
    """The GeoIP database cannot be used; the message names the path and the problem."""


@dataclass(frozen=True)
class GeoIPInfo:
    """What was opened, for start-up logs and the status endpoint."""

    path: str
    database_type: str
    build_epoch: int
    bundled: bool
    built: datetime  # UTC, from build_epoch


class GeoIP:
    """A GeoIP2/GeoLite2 City (or Country) database, opened and validated at start-up.

    ``path=""`` opens the GeoLite2 City database bundled with ``maxminddb-geolite2``;
    that data is from 2018, so a warning with its age is logged. ``now`` is injectable
    so the age is testable.
    """

    def __init__(
        self,
        path: str = "",
        cache_size: int = 65536,
        now: Callable[[], float] = time.time,
    ) -> None:
        if cache_size < 0:
            raise ValueError(f"GeoIP cache_size must be >= 0, got {cache_size}")
        bundled = not path
        resolved = _bundled_path() if bundled else os.path.abspath(os.path.expanduser(path))
        self._reader = _open_reader(resolved)
        try:
            self.info: GeoIPInfo = _validate(self._reader, resolved, bundled)
        except BaseException:
            self._reader.close()
            raise
        self._ipv4_only = self._reader.metadata().ip_version == 4
        self._counts: dict[str, int] = dict.fromkeys(LOOKUP_RESULTS, 0)
        self._error_logged = False
        self._closed = False
        # lru_cache over a bound method: the hit path stays in C and its own hit counter
        # gives the "hit" stat for free. maxsize=0 disables caching (for tests/benchmarks).
        self._cached: functools._lru_cache_wrapper[Location | None] = functools.lru_cache(
            maxsize=cache_size
        )(self._resolve)
        _log_opened(self.info, now())

    @property
    def stats(self) -> dict[str, int]:
        """Lookup counts by result label (``LOOKUP_RESULTS``); a fresh snapshot.

        Every ``lookup`` call counts exactly once: ``hit`` when answered from the cache,
        otherwise the outcome of the database query (``found``, ``not_found``, ``error``)
        or ``private`` for addresses never sent to the database.
        """
        snapshot = dict(self._counts)
        snapshot["hit"] = self._cached.cache_info().hits
        return snapshot

    def lookup(self, ip: IPAddress | None) -> Location | None:
        """Where ``ip`` is, or ``None`` if unknown. Never raises."""
        if ip is None or self._closed:
            return None
        return self._cached(ip)

    def close(self) -> None:
        """Release the memory map. Idempotent; later lookups return ``None`` uncounted."""
        self._closed = True
        self._cached.cache_clear()
        self._reader.close()

    def _resolve(self, ip: IPAddress) -> Location | None:
        """Uncached lookup: classify, query, convert. Runs once per distinct address."""
        if not isinstance(ip, IPv4Address | IPv6Address):
            self._counts["error"] += 1  # a caller bug; still must not fail the request
            return None
        if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
            # Classify and query the IPv4 address: ::ffff:10.0.0.1 is private, and
            # ipaddress calls every mapped address "reserved".
            ip = ip.ipv4_mapped
        if not _is_routable(ip):
            self._counts["private"] += 1
            return None
        if self._ipv4_only and ip.version == 6:
            self._counts["not_found"] += 1
            return None
        try:
            record = self._reader.get(ip)
            location = _to_location(record)
        except Exception as exc:  # the request path must never see these
            self._lookup_failed(ip, exc)
            return None
        self._counts["found" if location is not None else "not_found"] += 1
        return location

    def _lookup_failed(self, ip: IPAddress, exc: Exception) -> None:
        self._counts["error"] += 1
        if self._error_logged:
            return  # one log line per process: a corrupt region would otherwise flood logs
        self._error_logged = True
        log.error(
            "GeoIP lookup of %s in %s failed (%s: %s); treating such addresses as "
            "location unknown. The database may be corrupt: replace it and restart. "
            'Further lookup errors are counted in gslb_geoip_lookups_total{result="error"} '
            "but not logged.",
            ip,
            self.info.path,
            type(exc).__name__,
            exc,
        )


def _is_routable(ip: IPAddress) -> bool:
    """Whether a GeoIP database could know this address.

    ``is_global`` excludes private, loopback, link-local, unspecified, reserved,
    documentation, benchmarking and shared (100.64/10) space; multicast is "global" to
    ``ipaddress`` but never locates a client.
    """
    return ip.is_global and not ip.is_multicast


def _to_location(record: Any) -> Location | None:
    """Build a Location from a GeoIP2 City/Country record; ``None`` if it locates nothing."""
    if not isinstance(record, dict):
        return None
    country = _code(record.get("country"), "iso_code") or _code(
        record.get("registered_country"), "iso_code"
    )
    lat, lon = _point(record.get("location"))
    if country is None and lat is None:
        return None
    return Location(
        country=country,
        continent=_code(record.get("continent"), "code"),
        lat=lat,
        lon=lon,
    )


def _code(section: Any, key: str) -> str | None:
    if isinstance(section, dict):
        value = section.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _point(section: Any) -> tuple[float, float] | tuple[None, None]:
    """(lat, lon) when both are present and sane numbers; a lone coordinate is useless."""
    if isinstance(section, dict):
        lat = section.get("latitude")
        lon = section.get("longitude")
        if (
            isinstance(lat, int | float)
            and isinstance(lon, int | float)
            and not isinstance(lat, bool)
            and not isinstance(lon, bool)
            and -90.0 <= lat <= 90.0
            and -180.0 <= lon <= 180.0
        ):
            return float(lat), float(lon)
    return None, None


def _bundled_path() -> str:
    try:
        return str(resources.files(_BUNDLED_PACKAGE).joinpath(_BUNDLED_FILE))
    except ModuleNotFoundError:
        raise GeoIPError(
            "GeoIP: no database configured and the bundled GeoLite2 City database "
            f"(package maxminddb-geolite2) is not installed; {_HINT}"
        ) from None


def _open_mode() -> int:
    """MODE_MMAP_EXT (the C reader) when the extension is built, else MODE_AUTO."""
    try:
        from maxminddb import extension
    except ImportError:
        extension = None  # type: ignore[assignment]
    if extension is not None and hasattr(extension, "Reader"):
        return maxminddb.MODE_MMAP_EXT
    log.warning(
        "GeoIP: the maxminddb C extension is unavailable; using the pure-Python reader "
        "(lookups are several times slower; install libmaxminddb and reinstall maxminddb)"
    )
    return maxminddb.MODE_AUTO


def _open_reader(path: str) -> maxminddb.Reader:
    # Check the common cases first so the error says what is wrong in plain words
    # rather than whatever the reader or mmap happens to raise.
    if not os.path.exists(path):
        raise GeoIPError(f"GeoIP database {path!r}: file does not exist")
    if not os.path.isfile(path):
        raise GeoIPError(f"GeoIP database {path!r}: not a regular file")
    if os.path.getsize(path) == 0:
        raise GeoIPError(f"GeoIP database {path!r}: file is empty")
    try:
        return maxminddb.open_database(path, _open_mode())
    except PermissionError as exc:
        raise GeoIPError(f"GeoIP database {path!r}: cannot read file ({exc.strerror})") from exc
    except OSError as exc:
        raise GeoIPError(f"GeoIP database {path!r}: cannot open file ({exc})") from exc
    except Exception as exc:  # the pure-Python reader raises TypeError, KeyError... on junk
        raise GeoIPError(
            f"GeoIP database {path!r}: not a valid MaxMind DB (.mmdb) file or corrupt ({exc})"
        ) from exc


def _validate(reader: maxminddb.Reader, path: str, bundled: bool) -> GeoIPInfo:
    """Check the metadata and probe the tree; raise GeoIPError naming what is wrong."""
    try:
        meta = reader.metadata()
        db_type = str(meta.database_type)
        build_epoch = int(meta.build_epoch)
        ip_version = int(meta.ip_version)
    except Exception as exc:  # any failure here means an unusable file
        raise GeoIPError(f"GeoIP database {path!r}: unreadable metadata ({exc})") from exc
    if not any(kind in db_type.lower() for kind in _LOCATION_TYPES):
        raise GeoIPError(
            f"GeoIP database {path!r}: database type {db_type!r} has no location data; "
            "a GeoIP2/GeoLite2 City (or Country) database is required"
        )
    for probe in _PROBES:
        if ip_version == 4 and probe.version == 6:
            continue
        try:
            _to_location(reader.get(probe))
        except Exception as exc:  # the decoder raises many types on bad data
            raise GeoIPError(
                f"GeoIP database {path!r}: corrupt ({type(exc).__name__} looking up {probe}: {exc})"
            ) from exc
    try:
        built = datetime.fromtimestamp(build_epoch, UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise GeoIPError(f"GeoIP database {path!r}: bad build_epoch {build_epoch}") from exc
    return GeoIPInfo(
        path=path, database_type=db_type, build_epoch=build_epoch, bundled=bundled, built=built
    )


def _log_opened(info: GeoIPInfo, now: float) -> None:
    age_days = max(0, int((now - info.build_epoch) // 86400))
    built = info.built.date().isoformat()
    if info.bundled:
        log.warning(
            "GeoIP: using the bundled %s database built %s (%d days old); client "
            "locations may be stale or wrong; %s",
            info.database_type,
            built,
            age_days,
            _HINT,
        )
    else:
        log.info(
            "GeoIP: opened %s (%s, built %s, %d days old)",
            info.path,
            info.database_type,
            built,
            age_days,
        )
