"""Fleet mode's split of the config: one fleet document shared by every edge, one file per edge.

The fleet document (pushed to NATS by ``gslb fleet push``) holds what every edge must agree on:
``FLEET_SECTIONS``. Each edge's own file keeps what belongs to its machine: ``LOCAL_SECTIONS``,
``[fleet]`` among them. Neither may hold the other's sections, so no key is ever set in two
places. An edge composes the two into the one TOML-shaped dict ``parse_config`` takes, so every
rule of a standalone config (residency, edge_country, regions) applies to the result unchanged.

Everything here is pure: text in, ``Config`` out (docs/design.md, fleet mode).
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from gslb.core.config import (
    AdminConfig,
    Config,
    ConfigError,
    FleetConfig,
    GeoIPConfig,
    LogConfig,
    ServerConfig,
    _admin,
    _fleet,
    _geoip,
    _log,
    _server,
    _Table,
    parse_config,
)

FLEET_SECTIONS = ("routing", "regions", "residency", "proxy", "health", "load")
LOCAL_SECTIONS = ("server", "admin", "geoip", "log", "fleet")
FLEET: Final = "fleet"
# Arrays of tables are written [[name]] in TOML: the errors show sections as the file has them.
_ARRAYS = frozenset({"regions", "residency"})
# validate_document checks a document with no edge's file: this stands in for the one local key
# a fleet-wide rule needs (residency binds unplaceable clients by geoip.edge_country). Each edge
# checks its real edge_country when it composes, and reports a failure under its status key.
_STAND_IN_LOCAL: Final[Mapping[str, Any]] = {"geoip": {"edge_country": "US"}}


@dataclass(frozen=True, slots=True)
class LocalConfig:
    """An edge's own file in fleet mode: enough to listen, log and reach NATS, but no regions."""

    server: ServerConfig
    geoip: GeoIPConfig
    admin: AdminConfig
    log: LogConfig
    fleet: FleetConfig
    source: str = ""


def _heading(section: str) -> str:
    return f"[[{section}]]" if section in _ARRAYS else f"[{section}]"


def read_toml(text: str, source: str) -> dict[str, Any]:
    """Parse TOML text; a syntax error is a ``ConfigError`` named by ``source``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, f"invalid TOML: {exc}") from None


def check_fleet_document(data: Mapping[str, Any], source: str) -> None:
    """Refuse a fleet document that holds anything but fleet-wide sections."""
    for key in data:
        if key in FLEET_SECTIONS:
            continue
        if key in LOCAL_SECTIONS:
            raise ConfigError(
                key,
                f"a fleet document holds only {', '.join(FLEET_SECTIONS)}; {_heading(key)} "
                f"belongs in each edge's own file (found in {source})",
            )
        raise ConfigError(key, f"unknown key (in {source})")


def check_local_file(data: Mapping[str, Any], source: str) -> None:
    """With ``[fleet]``, refuse a local file that holds a fleet-wide section.

    Without ``[fleet]`` the file is a whole standalone config and ``parse_config`` judges it.
    """
    if FLEET not in data:
        return
    for key in data:
        if key in LOCAL_SECTIONS:
            continue
        if key in FLEET_SECTIONS:
            raise ConfigError(
                key,
                f"with [fleet], {_heading(key)} comes from the fleet document (gslb fleet push); "
                f"an edge's own file holds only {', '.join(LOCAL_SECTIONS)} (found in {source})",
            )
        raise ConfigError(key, f"unknown key (in {source})")


def merge(local: Mapping[str, Any], fleet: Mapping[str, Any]) -> dict[str, Any]:
    """The one TOML-shaped dict ``parse_config`` takes. A section in both halves is an error."""
    both = sorted(set(local) & set(fleet))
    if both:
        raise ConfigError(both[0], "is set both in the edge's own file and in the fleet document")
    return {**local, **fleet}


def compose(local_text: str, local_source: str, fleet_text: str, fleet_source: str) -> Config:
    """An edge's whole ``Config``: its own file (with ``[fleet]``) plus the fleet document."""
    local = read_toml(local_text, local_source)
    fleet = read_toml(fleet_text, fleet_source)
    if FLEET not in local:
        raise ConfigError(FLEET, f"is required in {local_source} to apply a fleet document")
    check_local_file(local, local_source)
    check_fleet_document(fleet, fleet_source)
    return parse_config(merge(local, fleet), f"{local_source} + {fleet_source}")


def validate_document(text: str, source: str) -> None:
    """Check a fleet document on its own (``gslb fleet push`` before it writes).

    Every fleet-wide rule applies. A rule that also needs an edge's own key (residency rules
    with ``routing.unknown_location = "edge_country"`` need ``geoip.edge_country``) is checked
    by each edge when it composes.
    """
    data = read_toml(text, source)
    check_fleet_document(data, source)
    parse_config(merge(_STAND_IN_LOCAL, data), source)


def parse_local(text: str, source: str) -> LocalConfig:
    """An edge's own file in fleet mode, before any fleet document has arrived."""
    data = read_toml(text, source)
    if FLEET not in data:
        raise ConfigError(FLEET, f"is required in {source} for fleet mode")
    check_local_file(data, source)
    return LocalConfig(
        server=_server(_section(data, "server")),
        geoip=_geoip(_section(data, "geoip")),
        admin=_admin(_section(data, "admin")),
        log=_log(_section(data, "log")),
        fleet=_fleet(_Table(data[FLEET], FLEET)),
        source=source,
    )


def _section(data: Mapping[str, Any], name: str) -> _Table:
    return _Table(data.get(name) or {}, name)


def document_digest(text: str) -> str:
    """sha256 hex of a document's canonical bytes: UTF-8, line ends as LF.

    It equals ``sha256sum`` of the pushed file saved with LF line ends, so an operator can
    tell which file an edge runs.
    """
    return hashlib.sha256(text.replace("\r\n", "\n").encode("utf-8")).hexdigest()
