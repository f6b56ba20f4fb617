"""Configuration: TOML in, frozen dataclasses out.

Every problem is reported as a ``ConfigError`` whose message starts with the path of the
offending key (``regions[2].endpoints[0].url: ...``), so an operator can find it at once.
Unknown keys are errors: a typo must not silently fall back to a default.

Parsing is pure (``parse_config`` takes a dict); ``load_config`` is the only function here that
reads a file. The one exception is ``[fleet]``: the credential and TLS files it names must exist
when the config is loaded (a stat, never a read), so a typo fails at start, not at the first
reconnect to NATS.
"""

from __future__ import annotations

import ipaddress
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import urlsplit

from gslb.core import countries

T = TypeVar("T")

# The choices of each enumerated setting. Code that acts on one value compares with the
# named constant, never with a string literal of its own.
TIERS = ("hyperscaler", "neocloud", "reseller")
ROLE_ACTIVE: Final = "active"
ROLE_STANDBY: Final = "standby"
ROLES = (ROLE_ACTIVE, ROLE_STANDBY)
CAPACITY_RESERVED: Final = "reserved"
CAPACITY_TYPES = (CAPACITY_RESERVED, "on_demand", "spot")
LATENCY_MODELS = ("geodesic", "timezone")
UNKNOWN_EDGE_COUNTRY: Final = "edge_country"  # apply geoip.edge_country's residency rules
UNKNOWN_DENY: Final = "deny"
UNKNOWN_UNRESTRICTED: Final = "unrestricted"
UNKNOWN_LOCATION = (UNKNOWN_EDGE_COUNTRY, UNKNOWN_DENY, UNKNOWN_UNRESTRICTED)
LOAD_NONE: Final = "none"  # no load reports: in-flight counts only
LOAD_KINDS = ("vllm", "sglang", "tgi", "json", LOAD_NONE)
CLIENT_IP_TRUNCATED: Final = "truncated"
CLIENT_IP_NONE: Final = "none"
CLIENT_IP_FULL: Final = "full"
CLIENT_IP_LOGGING = (CLIENT_IP_TRUNCATED, CLIENT_IP_NONE, CLIENT_IP_FULL)
# log.access: a file path, or one of these.
ACCESS_LOG_OFF: Final = "off"
ACCESS_LOG_STREAMS = ("stderr", "stdout")
# geoip.forwarded_header: lists a proxy appends to, then headers that hold one address.
X_FORWARDED_FOR: Final = "x-forwarded-for"
FORWARDED: Final = "forwarded"  # RFC 7239
FORWARDED_LIST_HEADERS = (X_FORWARDED_FOR, FORWARDED)
FORWARDED_SINGLE_HEADERS = ("x-real-ip", "true-client-ip", "cf-connecting-ip")
FORWARDED_HEADERS = FORWARDED_LIST_HEADERS + FORWARDED_SINGLE_HEADERS
# fleet.quorum: a majority of the edges that report on an endpoint, or a fixed count.
QUORUM_MAJORITY: Final = "majority"
# fleet.servers: the URL schemes nats-py dials.
FLEET_URL_SCHEMES = ("nats", "tls", "ws", "wss")


class ConfigError(ValueError):
    """An invalid configuration. ``str(err)`` is ``"path: message"``."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: HostPort = HostPort("0.0.0.0", 8080)
    admin_listen: HostPort = HostPort("127.0.0.1", 9901)
    workers: int = 1
    shutdown_grace_s: float = 30.0
    tls_cert: str = ""
    tls_key: str = ""
    max_connections: int = 10000
    max_line_size: int = 8190
    max_field_size: int = 8190
    max_headers: int = 100
    keepalive_timeout_s: float = 75.0
    header_timeout_s: float = 10.0
    # A body gslb buffers (up to proxy.replay_buffer_bytes) must be in within this, in all.
    body_timeout_s: float = 60.0
    # Any body must keep up this rate (bytes/s) once the grace is over (mod_reqtimeout's
    # MinRate): a client that trickles a byte a second is never idle, yet it is cut.
    min_upload_rate: float = 1024.0
    min_upload_grace_s: float = 10.0
    # A client that reads nothing of a response for this long is cut (a slow-read client).
    send_timeout_s: float = 60.0
    # The local address connections to upstreams leave from (nginx's proxy_bind): an edge
    # host with several interfaces picks the path to the regions. Empty: the kernel's choice.
    source_address: str = ""


@dataclass(frozen=True, slots=True)
class GeoIPConfig:
    database: str = ""
    trusted_proxies: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    edge_location: tuple[float, float] = (40.71, -74.01)
    cache_size: int = 65536
    # The one header the trusted proxies write the client address into. Exactly one: a proxy
    # that appends to its own header passes the client's other ones through untouched.
    forwarded_header: str = X_FORWARDED_FOR
    # ISO code of the country this edge stands in: whose residency rules bind a client that
    # cannot be placed (routing.unknown_location = "edge_country").
    edge_country: str = ""


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    latency_budget_ms: float = 300.0
    min_latency_budget_ms: float = 20.0
    max_latency_budget_ms: float = 5000.0
    spill_utilization: float = 0.85
    spill_penalty_ms: float = 10.0
    max_attempts: int = 2
    latency_model: str = "geodesic"
    # Clients that cannot be placed: "edge_country" applies geoip.edge_country's residency
    # rules, "deny" refuses them, "unrestricted" routes them with no residency rule at all.
    unknown_location: str = UNKNOWN_EDGE_COUNTRY
    require_certifications: tuple[str, ...] = ()
    # Measured round trips win over the model: {country: {region: rtt_ms}}.
    measured_rtt_ms: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HealthConfig:
    path: str = "/health"
    expected_status: tuple[int, ...] = (200,)
    interval_s: float = 2.0
    timeout_s: float = 1.0
    jitter: float = 0.1
    rise: int = 2
    fall: int = 3
    consecutive_failures: int = 5
    base_ejection_s: float = 30.0
    max_ejection_s: float = 300.0
    max_ejection_percent: float = 50.0
    saturated_s: float = 5.0
    cordon_s: float = 300.0
    standby_hold_down_s: float = 30.0


@dataclass(frozen=True, slots=True)
class LoadConfig:
    kind: str = LOAD_NONE
    path: str = "/metrics"
    interval_s: float = 1.0
    timeout_s: float = 1.0
    max_age_s: float = 3.0


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    url: str
    node: str
    capacity_type: str = CAPACITY_RESERVED
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class UpstreamTLSConfig:
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    verify: bool = True


@dataclass(frozen=True, slots=True)
class RegionConfig:
    name: str
    location: tuple[float, float]
    provider: str
    tier: str
    jurisdiction: str
    certifications: frozenset[str]
    role: str
    capacity: int
    service_ms: float
    models: frozenset[str]
    endpoints: tuple[EndpointConfig, ...]
    health: HealthConfig
    load: LoadConfig
    tls: UpstreamTLSConfig

    @property
    def active(self) -> bool:
        return self.role == ROLE_ACTIVE


@dataclass(frozen=True, slots=True)
class ResidencyRule:
    name: str
    countries: frozenset[str]
    allow_jurisdictions: frozenset[str]


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    connect_timeout_s: float = 2.0
    ttft_timeout_s: float = 10.0
    idle_timeout_s: float = 60.0
    replay_buffer_bytes: int = 1048576
    max_body_bytes: int = 33554432
    expose_route_headers: bool = True
    region_header: str = "X-GSLB-Region"
    route_header: str = "X-GSLB-Route"
    via: str = "gslb"
    # Open connections per endpoint (and worker); requests beyond wait for one, up to the
    # TTFB deadline. Each client connection holds at most one, so max_connections suffices.
    pool_size_per_endpoint: int = 4096
    keepalive_timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class AdminConfig:
    token_env: str = "GSLB_ADMIN_TOKEN"
    token_file: str = ""


@dataclass(frozen=True, slots=True)
class LogConfig:
    access: str = ACCESS_LOG_STREAMS[0]
    client_ip: str = CLIENT_IP_TRUNCATED
    level: str = "info"


@dataclass(frozen=True, slots=True)
class FleetConfig:
    """``[fleet]``: how this edge reaches NATS and who it is there (docs/design.md, fleet mode)."""

    servers: tuple[str, ...]
    edge: str
    site: str
    state_dir: str
    # Credentials: at most one way. The password itself never sits in the file, only the
    # name of the environment variable that holds it.
    user: str = ""
    password_env: str = ""
    creds_file: str = ""
    nkey_file: str = ""
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    bucket: str = "gslb"
    subject_prefix: str = "gslb"
    # QUORUM_MAJORITY, or how many edges must see an endpoint down for it to be down fleet-wide.
    quorum: int | str = QUORUM_MAJORITY
    max_age_s: float = 5.0
    publish_interval_s: float = 1.0

    def votes_needed(self, reporters: int) -> int:
        """Edges that must see an endpoint down, out of ``reporters`` that report on it.

        A fixed quorum is not lowered when fewer edges report: then the endpoint cannot be
        down fleet-wide, and each edge goes by its own view.
        """
        if isinstance(self.quorum, int):
            return self.quorum
        return reporters // 2 + 1


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig
    geoip: GeoIPConfig
    routing: RoutingConfig
    regions: tuple[RegionConfig, ...]
    residency: tuple[ResidencyRule, ...]
    proxy: ProxyConfig
    health: HealthConfig
    load: LoadConfig
    admin: AdminConfig
    log: LogConfig
    source: str = ""
    # None: no [fleet] section, a standalone edge.
    fleet: FleetConfig | None = None

    def region(self, name: str) -> RegionConfig:
        for r in self.regions:
            if r.name == name:
                return r
        raise KeyError(name)


# --------------------------------------------------------------------------- readers


class _Table:
    """A TOML table being read: typed getters that name the path, and unknown-key detection."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(path, f"expected a table, got {_type_name(data)}")
        self.data: dict[str, Any] = data
        self.path = path
        self.seen: set[str] = set()

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str) -> Any:
        self.seen.add(key)
        return self.data.get(key)

    def get(self, key: str, conv: Callable[[Any, str], T], default: T) -> T:
        self.seen.add(key)
        if key not in self.data:
            return default
        return conv(self.data[key], self.key_path(key))

    def require(self, key: str, conv: Callable[[Any, str], T]) -> T:
        self.seen.add(key)
        if key not in self.data:
            raise ConfigError(self.key_path(key), "is required")
        return conv(self.data[key], self.key_path(key))

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise ConfigError(self.key_path(unknown[0]), "unknown key")


def _type_name(v: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(v), type(v).__name__)


def _any(v: Any, path: str) -> Any:
    return v


def _str(v: Any, path: str) -> str:
    if not isinstance(v, str):
        raise ConfigError(path, f"expected a string, got {_type_name(v)}")
    return v


def _name(v: Any, path: str) -> str:
    s = _str(v, path)
    if not s or not all(c.isalnum() or c in "-_." for c in s):
        raise ConfigError(path, f"{s!r} is not a valid name (letters, digits, '-', '_', '.')")
    return s


def _bool(v: Any, path: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(path, f"expected true or false, got {_type_name(v)}")
    return v


def _int(v: Any, path: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(path, f"expected an integer, got {_type_name(v)}")
    return v


def _num(v: Any, path: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ConfigError(path, f"expected a number, got {_type_name(v)}")
    f = float(v)
    if not math.isfinite(f):
        raise ConfigError(path, "must be a finite number")
    return f


def _ranged(
    conv: Callable[[Any, str], T], lo: float | None, hi: float | None = None, lo_open: bool = False
) -> Callable[[Any, str], T]:
    def check(v: Any, path: str) -> T:
        x = conv(v, path)
        n = float(x)  # type: ignore[arg-type]
        if lo is not None and (n <= lo if lo_open else n < lo):
            raise ConfigError(path, f"must be {'>' if lo_open else '>='} {_fmt(lo)}, got {x}")
        if hi is not None and n > hi:
            raise ConfigError(path, f"must be <= {_fmt(hi)}, got {x}")
        return x

    return check


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _choice(options: tuple[str, ...]) -> Callable[[Any, str], str]:
    def check(v: Any, path: str) -> str:
        s = _str(v, path)
        if s not in options:
            raise ConfigError(path, f"must be one of {', '.join(options)}; got {s!r}")
        return s

    return check


def _list(conv: Callable[[Any, str], T]) -> Callable[[Any, str], tuple[T, ...]]:
    def check(v: Any, path: str) -> tuple[T, ...]:
        if not isinstance(v, list):
            raise ConfigError(path, f"expected an array, got {_type_name(v)}")
        return tuple(conv(item, f"{path}[{i}]") for i, item in enumerate(v))

    return check


def _latlon(v: Any, path: str) -> tuple[float, float]:
    if not isinstance(v, list) or len(v) != 2:
        raise ConfigError(path, "expected [latitude, longitude]")
    lat = _ranged(_num, -90, 90)(v[0], f"{path}[0]")
    lon = _ranged(_num, -180, 180)(v[1], f"{path}[1]")
    return (lat, lon)


def parse_hostport(v: Any, path: str) -> HostPort:
    s = _str(v, path)
    host, sep, port_s = s.rpartition(":")
    if not sep or not port_s.isdigit():
        raise ConfigError(path, f"expected HOST:PORT, got {s!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_s)
    if not 0 <= port <= 65535:
        raise ConfigError(path, f"port {port} out of range")
    if not host:
        raise ConfigError(path, f"expected HOST:PORT, got {s!r}")
    return HostPort(host, port)


def _url(v: Any, path: str) -> str:
    s = _str(v, path)
    try:
        u = urlsplit(s)
        port = u.port
    except ValueError as exc:
        raise ConfigError(path, f"invalid URL {s!r}: {exc}") from None
    if u.scheme not in ("http", "https"):
        raise ConfigError(path, f"URL must start with http:// or https://, got {s!r}")
    if not u.hostname:
        raise ConfigError(path, f"URL has no host: {s!r}")
    if u.username or u.password:
        raise ConfigError(path, "URL must not carry credentials")
    if u.query or u.fragment:
        raise ConfigError(path, "URL must not have a query or fragment")
    if u.path not in ("", "/"):
        raise ConfigError(path, "URL must be an origin (scheme://host[:port]), without a path")
    if port == 0:
        raise ConfigError(path, "URL port must not be 0")
    return f"{u.scheme}://{u.netloc}"


def _country(v: Any, path: str) -> str:
    s = _str(v, path)
    if not countries.is_country(s):
        raise ConfigError(path, f"{s!r} is not an ISO 3166-1 alpha-2 country code")
    return s


def _country_or_group(v: Any, path: str) -> frozenset[str]:
    s = _str(v, path)
    codes = countries.expand(s)
    if codes is None:
        groups = ", ".join(countries.GROUPS)
        raise ConfigError(path, f"{s!r} is not an ISO 3166-1 alpha-2 code or a group ({groups})")
    return codes


def _path_str(v: Any, path: str) -> str:
    s = _str(v, path)
    if not s.startswith("/"):
        raise ConfigError(path, f"must start with '/', got {s!r}")
    return s


def _header_name(v: Any, path: str) -> str:
    s = _str(v, path)
    if not s or not all(c.isalnum() or c == "-" for c in s):
        raise ConfigError(path, f"{s!r} is not a valid header name")
    return s


# --------------------------------------------------------------------------- sections


def _server(t: _Table) -> ServerConfig:
    d = ServerConfig()
    pos = _ranged(_num, 0, lo_open=True)
    cfg = ServerConfig(
        listen=t.get("listen", parse_hostport, d.listen),
        admin_listen=t.get("admin_listen", parse_hostport, d.admin_listen),
        workers=t.get("workers", _ranged(_int, 1, 256), d.workers),
        shutdown_grace_s=t.get("shutdown_grace_s", _ranged(_num, 0), d.shutdown_grace_s),
        tls_cert=t.get("tls_cert", _str, d.tls_cert),
        tls_key=t.get("tls_key", _str, d.tls_key),
        max_connections=t.get("max_connections", _ranged(_int, 1), d.max_connections),
        max_line_size=t.get("max_line_size", _ranged(_int, 256, 1 << 20), d.max_line_size),
        max_field_size=t.get("max_field_size", _ranged(_int, 256, 1 << 20), d.max_field_size),
        max_headers=t.get("max_headers", _ranged(_int, 8, 10000), d.max_headers),
        keepalive_timeout_s=t.get("keepalive_timeout_s", pos, d.keepalive_timeout_s),
        header_timeout_s=t.get("header_timeout_s", pos, d.header_timeout_s),
        body_timeout_s=t.get("body_timeout_s", pos, d.body_timeout_s),
        min_upload_rate=t.get("min_upload_rate", _ranged(_num, 0), d.min_upload_rate),
        min_upload_grace_s=t.get("min_upload_grace_s", _ranged(_num, 0), d.min_upload_grace_s),
        send_timeout_s=t.get("send_timeout_s", pos, d.send_timeout_s),
        source_address=t.get("source_address", _ip_literal, d.source_address),
    )
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise ConfigError(t.key_path("tls_cert"), "tls_cert and tls_key must be set together")
    t.done()
    return cfg


def _ip_literal(v: Any, path: str) -> str:
    text = _str(v, path)
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ConfigError(path, f"expected an IP address, got {text[:64]!r}") from None


def _geoip(t: _Table) -> GeoIPConfig:
    d = GeoIPConfig()
    cfg = GeoIPConfig(
        database=t.get("database", _str, d.database),
        trusted_proxies=t.get("trusted_proxies", _list(_cidr), d.trusted_proxies),
        edge_location=t.get("edge_location", _latlon, d.edge_location),
        cache_size=t.get("cache_size", _ranged(_int, 0), d.cache_size),
        forwarded_header=t.get("forwarded_header", _forwarded_header, d.forwarded_header),
        edge_country=t.get("edge_country", _country, d.edge_country),
    )
    t.done()
    return cfg


def _forwarded_header(v: Any, path: str) -> str:
    if v == "auto":
        raise ConfigError(
            path,
            '"auto" is no longer accepted: a client could pick its own address (and its '
            "residency rules) with the header your proxy does not write; name the one it "
            f"writes: {', '.join(FORWARDED_HEADERS)}",
        )
    return _choice(FORWARDED_HEADERS)(v.lower() if isinstance(v, str) else v, path)


def _unknown_location(v: Any, path: str) -> str:
    if v == "edge":
        raise ConfigError(
            path,
            '"edge" routed unplaceable clients with no residency rule; choose "edge_country" '
            '(apply geoip.edge_country\'s rules), "deny" (answer 503) or "unrestricted"',
        )
    return _choice(UNKNOWN_LOCATION)(v, path)


def _cidr(v: Any, path: str) -> str:
    import ipaddress

    s = _str(v, path)
    try:
        ipaddress.ip_network(s, strict=False)
    except ValueError as exc:
        raise ConfigError(path, f"invalid network {s!r}: {exc}") from None
    return s


def _routing(t: _Table) -> RoutingConfig:
    d = RoutingConfig()
    ms = _ranged(_num, 0)
    cfg = RoutingConfig(
        latency_budget_ms=t.get("latency_budget_ms", ms, d.latency_budget_ms),
        min_latency_budget_ms=t.get("min_latency_budget_ms", ms, d.min_latency_budget_ms),
        max_latency_budget_ms=t.get("max_latency_budget_ms", ms, d.max_latency_budget_ms),
        spill_utilization=t.get(
            "spill_utilization", _ranged(_num, 0, 10, lo_open=True), d.spill_utilization
        ),
        spill_penalty_ms=t.get("spill_penalty_ms", ms, d.spill_penalty_ms),
        max_attempts=t.get("max_attempts", _ranged(_int, 1, 10), d.max_attempts),
        latency_model=t.get("latency_model", _choice(LATENCY_MODELS), d.latency_model),
        unknown_location=t.get("unknown_location", _unknown_location, d.unknown_location),
        require_certifications=t.get(
            "require_certifications", _list(_name), d.require_certifications
        ),
        measured_rtt_ms=t.get("measured_rtt_ms", _measured, {}),
    )
    if not cfg.min_latency_budget_ms <= cfg.latency_budget_ms <= cfg.max_latency_budget_ms:
        raise ConfigError(
            t.key_path("latency_budget_ms"),
            f"must lie within [min_latency_budget_ms, max_latency_budget_ms] = "
            f"[{_fmt(cfg.min_latency_budget_ms)}, {_fmt(cfg.max_latency_budget_ms)}]",
        )
    t.done()
    return cfg


def _measured(v: Any, path: str) -> Mapping[str, Mapping[str, float]]:
    top = _Table(v, path)
    out: dict[str, dict[str, float]] = {}
    for country in list(top.data):
        cpath = top.key_path(country)
        _country(country, cpath)
        inner = _Table(top.raw(country), cpath)
        out[country] = {
            region: _ranged(_num, 0)(inner.raw(region), inner.key_path(region))
            for region in list(inner.data)
        }
    return out


_NO_NAMES: tuple[str, ...] = ()


def _health(t: _Table, base: HealthConfig) -> HealthConfig:
    pos = _ranged(_num, 0, lo_open=True)
    nonneg = _ranged(_num, 0)
    cfg = HealthConfig(
        path=t.get("path", _path_str, base.path),
        expected_status=t.get(
            "expected_status", _list(_ranged(_int, 100, 599)), base.expected_status
        ),
        interval_s=t.get("interval_s", pos, base.interval_s),
        timeout_s=t.get("timeout_s", pos, base.timeout_s),
        jitter=t.get("jitter", _ranged(_num, 0, 1), base.jitter),
        rise=t.get("rise", _ranged(_int, 1, 100), base.rise),
        fall=t.get("fall", _ranged(_int, 1, 100), base.fall),
        consecutive_failures=t.get(
            "consecutive_failures", _ranged(_int, 1, 1000), base.consecutive_failures
        ),
        base_ejection_s=t.get("base_ejection_s", nonneg, base.base_ejection_s),
        max_ejection_s=t.get("max_ejection_s", nonneg, base.max_ejection_s),
        max_ejection_percent=t.get(
            "max_ejection_percent", _ranged(_num, 0, 100), base.max_ejection_percent
        ),
        saturated_s=t.get("saturated_s", nonneg, base.saturated_s),
        cordon_s=t.get("cordon_s", nonneg, base.cordon_s),
        standby_hold_down_s=t.get("standby_hold_down_s", nonneg, base.standby_hold_down_s),
    )
    if not cfg.expected_status:
        raise ConfigError(t.key_path("expected_status"), "must not be empty")
    if cfg.max_ejection_s < cfg.base_ejection_s:
        raise ConfigError(t.key_path("max_ejection_s"), "must be >= base_ejection_s")
    t.done()
    return cfg


def _load(t: _Table, base: LoadConfig) -> LoadConfig:
    pos = _ranged(_num, 0, lo_open=True)
    cfg = LoadConfig(
        kind=t.get("kind", _choice(LOAD_KINDS), base.kind),
        path=t.get("path", _path_str, base.path),
        interval_s=t.get("interval_s", pos, base.interval_s),
        timeout_s=t.get("timeout_s", pos, base.timeout_s),
        max_age_s=t.get("max_age_s", pos, base.max_age_s),
    )
    t.done()
    return cfg


def _endpoint(t: _Table, region: str, index: int) -> EndpointConfig:
    cfg = EndpointConfig(
        url=t.require("url", _url),
        node=t.get("node", _name, f"{region}-node-{index}"),
        capacity_type=t.get("capacity_type", _choice(CAPACITY_TYPES), CAPACITY_RESERVED),
        weight=t.get("weight", _ranged(_num, 0, lo_open=True), 1.0),
    )
    t.done()
    return cfg


def _tls(t: _Table) -> UpstreamTLSConfig:
    cfg = UpstreamTLSConfig(
        ca_file=t.get("ca_file", _str, ""),
        cert_file=t.get("cert_file", _str, ""),
        key_file=t.get("key_file", _str, ""),
        verify=t.get("verify", _bool, True),
    )
    if bool(cfg.cert_file) != bool(cfg.key_file):
        raise ConfigError(t.key_path("cert_file"), "cert_file and key_file must be set together")
    t.done()
    return cfg


def _region(t: _Table, health: HealthConfig, load: LoadConfig) -> RegionConfig:
    name = t.require("name", _name)
    endpoints_raw = t.require("endpoints", _list(_any))
    if not endpoints_raw:
        raise ConfigError(t.key_path("endpoints"), "a region needs at least one endpoint")
    endpoints = tuple(
        _endpoint(_Table(e, f"{t.key_path('endpoints')}[{i}]"), name, i)
        for i, e in enumerate(endpoints_raw)
    )
    seen: set[str] = set()
    for i, e in enumerate(endpoints):
        if e.url in seen:
            raise ConfigError(f"{t.key_path('endpoints')}[{i}].url", f"duplicate URL {e.url}")
        seen.add(e.url)
    cfg = RegionConfig(
        name=name,
        location=t.require("location", _latlon),
        provider=t.require("provider", _name),
        tier=t.get("tier", _choice(TIERS), "hyperscaler"),
        jurisdiction=t.require("jurisdiction", _country),
        certifications=frozenset(t.get("certifications", _list(_name), _NO_NAMES)),
        role=t.get("role", _choice(ROLES), ROLE_ACTIVE),
        capacity=t.require("capacity", _ranged(_int, 1)),
        service_ms=t.get("service_ms", _ranged(_num, 0, lo_open=True), 800.0),
        models=frozenset(t.get("models", _list(_str), _NO_NAMES)),
        endpoints=endpoints,
        health=_health(_Table(t.raw("health") or {}, t.key_path("health")), health),
        load=_load(_Table(t.raw("load") or {}, t.key_path("load")), load),
        tls=_tls(_Table(t.raw("tls") or {}, t.key_path("tls"))),
    )
    t.done()
    return cfg


def _residency(t: _Table) -> ResidencyRule:
    name = t.require("name", _name)
    country_sets = t.require("countries", _list(_country_or_group))
    juris_sets = t.require("allow_jurisdictions", _list(_country_or_group))
    if not country_sets:
        raise ConfigError(t.key_path("countries"), "must list at least one country or group")
    if not juris_sets:
        raise ConfigError(t.key_path("allow_jurisdictions"), "must list at least one jurisdiction")
    t.done()
    return ResidencyRule(
        name=name,
        countries=frozenset().union(*country_sets),
        allow_jurisdictions=frozenset().union(*juris_sets),
    )


def _proxy(t: _Table) -> ProxyConfig:
    d = ProxyConfig()
    pos = _ranged(_num, 0, lo_open=True)
    cfg = ProxyConfig(
        connect_timeout_s=t.get("connect_timeout_s", pos, d.connect_timeout_s),
        ttft_timeout_s=t.get("ttft_timeout_s", pos, d.ttft_timeout_s),
        idle_timeout_s=t.get("idle_timeout_s", pos, d.idle_timeout_s),
        replay_buffer_bytes=t.get("replay_buffer_bytes", _ranged(_int, 0), d.replay_buffer_bytes),
        max_body_bytes=t.get("max_body_bytes", _ranged(_int, 0), d.max_body_bytes),
        expose_route_headers=t.get("expose_route_headers", _bool, d.expose_route_headers),
        region_header=t.get("region_header", _header_name, d.region_header),
        route_header=t.get("route_header", _header_name, d.route_header),
        via=t.get("via", _name, d.via),
        pool_size_per_endpoint=t.get(
            "pool_size_per_endpoint", _ranged(_int, 1), d.pool_size_per_endpoint
        ),
        keepalive_timeout_s=t.get("keepalive_timeout_s", pos, d.keepalive_timeout_s),
    )
    if cfg.replay_buffer_bytes > cfg.max_body_bytes:
        raise ConfigError(t.key_path("replay_buffer_bytes"), "must be <= max_body_bytes")
    t.done()
    return cfg


def _admin(t: _Table) -> AdminConfig:
    d = AdminConfig()
    cfg = AdminConfig(
        token_env=t.get("token_env", _str, d.token_env),
        token_file=t.get("token_file", _str, d.token_file),
    )
    t.done()
    return cfg


def _log(t: _Table) -> LogConfig:
    d = LogConfig()
    cfg = LogConfig(
        access=t.get("access", _str, d.access),
        client_ip=t.get("client_ip", _choice(CLIENT_IP_LOGGING), d.client_ip),
        level=t.get("level", _choice(("debug", "info", "warning", "error")), d.level),
    )
    t.done()
    return cfg


_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _fleet_url(v: Any, path: str) -> str:
    s = _str(v, path)
    # Before anything that echoes the URL: a password in it must not reach the error line.
    if "@" in s:
        raise ConfigError(
            path,
            "URL must not carry credentials (use user + password_env, creds_file or nkey_file)",
        )
    try:
        u = urlsplit(s)
        port = u.port
    except ValueError as exc:
        raise ConfigError(path, f"invalid URL {s!r}: {exc}") from None
    if u.scheme not in FLEET_URL_SCHEMES:
        schemes = ", ".join(f"{x}://" for x in FLEET_URL_SCHEMES)
        raise ConfigError(path, f"URL must start with {schemes}; got {s!r}")
    if not u.hostname:
        raise ConfigError(path, f"URL has no host: {s!r}")
    if u.query or u.fragment:
        raise ConfigError(path, "URL must not have a query or fragment")
    if u.path not in ("", "/") and u.scheme not in ("ws", "wss"):
        raise ConfigError(path, "a nats:// or tls:// URL has no path")
    if port == 0:
        raise ConfigError(path, "URL port must not be 0")
    return s


def _token(v: Any, path: str) -> str:
    s = _str(v, path)
    if not _TOKEN.fullmatch(s):
        raise ConfigError(path, f"{s!r} is not a NATS-safe name (letters, digits, '-', '_')")
    return s


def _env_name(v: Any, path: str) -> str:
    s = _str(v, path)
    if not _ENV_NAME.fullmatch(s):
        raise ConfigError(
            path, f"{s!r} is not an environment variable name (the NAME, not the password)"
        )
    return s


def _nonempty(v: Any, path: str) -> str:
    s = _str(v, path)
    if not s:
        raise ConfigError(path, "must not be empty")
    return s


def _existing_file(v: Any, path: str) -> str:
    s = _nonempty(v, path)
    if not Path(s).is_file():
        raise ConfigError(path, f"{s} does not exist or is not a file")
    return s


def _quorum(v: Any, path: str) -> int | str:
    if v == QUORUM_MAJORITY:
        return QUORUM_MAJORITY
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(path, f'must be "majority" or an integer >= 1, got {v!r}')
    return v


def _fleet(t: _Table) -> FleetConfig:
    if t.has("password"):
        raise ConfigError(
            t.key_path("password"),
            "a password never goes into the file: put it in an environment variable and "
            "name that variable with password_env",
        )
    servers = t.require("servers", _list(_fleet_url))
    if not servers:
        raise ConfigError(t.key_path("servers"), "must list at least one NATS URL")
    for i, url in enumerate(servers):
        if url in servers[:i]:
            raise ConfigError(f"{t.key_path('servers')}[{i}]", f"duplicate URL {url}")
    edge = t.require("edge", _token)
    pos = _ranged(_num, 0, lo_open=True)
    d = FleetConfig(servers=(), edge="", site="", state_dir="")
    cfg = FleetConfig(
        servers=servers,
        edge=edge,
        site=t.get("site", _token, edge),
        state_dir=t.require("state_dir", _nonempty),
        user=t.get("user", _nonempty, d.user),
        password_env=t.get("password_env", _env_name, d.password_env),
        creds_file=t.get("creds_file", _existing_file, d.creds_file),
        nkey_file=t.get("nkey_file", _existing_file, d.nkey_file),
        tls_ca_file=t.get("tls_ca_file", _existing_file, d.tls_ca_file),
        tls_cert_file=t.get("tls_cert_file", _existing_file, d.tls_cert_file),
        tls_key_file=t.get("tls_key_file", _existing_file, d.tls_key_file),
        bucket=t.get("bucket", _token, d.bucket),
        subject_prefix=t.get("subject_prefix", _token, d.subject_prefix),
        quorum=t.get("quorum", _quorum, d.quorum),
        max_age_s=t.get("max_age_s", pos, d.max_age_s),
        publish_interval_s=t.get("publish_interval_s", pos, d.publish_interval_s),
    )
    _check_fleet_credentials(t, cfg)
    if bool(cfg.tls_cert_file) != bool(cfg.tls_key_file):
        raise ConfigError(
            t.key_path("tls_cert_file"), "tls_cert_file and tls_key_file must be set together"
        )
    if cfg.publish_interval_s >= cfg.max_age_s:
        # Every observation would be stale before the next one arrives.
        raise ConfigError(t.key_path("publish_interval_s"), "must be < max_age_s")
    t.done()
    return cfg


def _check_fleet_credentials(t: _Table, cfg: FleetConfig) -> None:
    if bool(cfg.user) != bool(cfg.password_env):
        missing = "password_env" if cfg.user else "user"
        raise ConfigError(t.key_path(missing), "user and password_env must be set together")
    ways = [
        key
        for key, value in (
            ("user", cfg.user),
            ("creds_file", cfg.creds_file),
            ("nkey_file", cfg.nkey_file),
        )
        if value
    ]
    if len(ways) > 1:
        raise ConfigError(
            t.key_path(ways[1]),
            f"choose one way to authenticate, not {' and '.join(ways)}: "
            "user + password_env, creds_file or nkey_file",
        )


# --------------------------------------------------------------------------- whole file


def parse_config(data: Mapping[str, Any], source: str = "") -> Config:
    """Validate a parsed TOML document and build the frozen ``Config``."""
    top = _Table(dict(data), "")
    health = _health(_Table(top.raw("health") or {}, "health"), HealthConfig())
    load = _load(_Table(top.raw("load") or {}, "load"), LoadConfig())
    regions_raw = top.require("regions", _list(_any))
    if not regions_raw:
        raise ConfigError("regions", "at least one region is required")
    regions = tuple(
        _region(_Table(r, f"regions[{i}]"), health, load) for i, r in enumerate(regions_raw)
    )
    _check_unique(regions)
    residency_raw: tuple[Any, ...] = top.get("residency", _list(_any), ())
    rules = tuple(_residency(_Table(raw, f"residency[{i}]")) for i, raw in enumerate(residency_raw))
    names: set[str] = set()
    for i, rule in enumerate(rules):
        if rule.name in names:
            raise ConfigError(f"residency[{i}].name", f"duplicate residency rule {rule.name!r}")
        names.add(rule.name)
    routing = _routing(_Table(top.raw("routing") or {}, "routing"))
    region_names = {r.name for r in regions}
    for country, per_region in routing.measured_rtt_ms.items():
        for region in per_region:
            if region not in region_names:
                raise ConfigError(f"routing.measured_rtt_ms.{country}.{region}", "no such region")
    geoip = _geoip(_Table(top.raw("geoip") or {}, "geoip"))
    if rules and routing.unknown_location == UNKNOWN_EDGE_COUNTRY and not geoip.edge_country:
        raise ConfigError(
            "geoip.edge_country",
            "is required when residency rules exist and routing.unknown_location is "
            '"edge_country" (the default): the ISO code of the country this edge stands in, '
            "whose residency rules bind clients that cannot be placed; or set "
            'routing.unknown_location = "deny"',
        )
    cfg = Config(
        server=_server(_Table(top.raw("server") or {}, "server")),
        geoip=geoip,
        routing=routing,
        regions=regions,
        residency=rules,
        proxy=_proxy(_Table(top.raw("proxy") or {}, "proxy")),
        health=health,
        load=load,
        admin=_admin(_Table(top.raw("admin") or {}, "admin")),
        log=_log(_Table(top.raw("log") or {}, "log")),
        source=source,
        fleet=_fleet(_Table(top.raw("fleet"), "fleet")) if top.has("fleet") else None,
    )
    top.done()
    return cfg


def _check_unique(regions: tuple[RegionConfig, ...]) -> None:
    names: set[str] = set()
    urls: dict[str, str] = {}
    for i, r in enumerate(regions):
        if r.name in names:
            raise ConfigError(f"regions[{i}].name", f"duplicate region name {r.name!r}")
        names.add(r.name)
        for j, e in enumerate(r.endpoints):
            other = urls.get(e.url)
            if other is not None:
                raise ConfigError(
                    f"regions[{i}].endpoints[{j}].url",
                    f"{e.url} is already an endpoint of region {other!r}",
                )
            urls[e.url] = r.name


def parse_toml(text: str, source: str = "<string>") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, f"invalid TOML: {exc}") from None
    return parse_config(data, source)


def load_config(path: str | Path) -> Config:
    """Read and validate a config file. Raises ``ConfigError`` (never OSError)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(p), f"cannot read config: {exc}") from None
    return parse_toml(text, str(p))
