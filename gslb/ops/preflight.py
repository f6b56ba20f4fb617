"""What ``gslb serve`` checks before it starts, shared with ``gslb check-config``.

One function, ``preflight``, holds every start-up rule beyond the config file's own syntax
(files the config names, the GeoIP database, the access log target), so ``check-config``
cannot say ``ok`` to a file that ``serve`` then refuses. Each rule reuses the code that
``serve`` runs later (``listener_tls``, ``build_runtime``, ``GeoIP``), not a copy of it.

Also here: the ``--listen`` / ``--admin-listen`` overrides of ``gslb serve``, which must
hold for the first start, every reload and every respawned worker alike.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from gslb.core.config import (
    ACCESS_LOG_OFF,
    ACCESS_LOG_STREAMS,
    Config,
    ConfigError,
    HostPort,
    parse_hostport,
    parse_toml,
)
from gslb.edge.geoip import GeoIP, GeoIPError
from gslb.edge.runtime import build_runtime
from gslb.edge.server import listener_tls


def read_config(path: str) -> tuple[str, Config]:
    """The file's text and the config parsed from it, from one read.

    ``gslb serve`` hands workers this text, so the config they run is the one checked here
    even when the file changes afterwards. Raises ``ConfigError`` (as ``load_config``).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, f"cannot read config: {exc}") from None
    return text, parse_toml(text, path)


def preflight(cfg: Config) -> None:
    """Everything ``serve`` refuses at start; raises ``ConfigError`` naming the config key."""
    listener_tls(cfg)
    build_runtime(cfg)  # every region's upstream TLS files (CA bundle, client certificate)
    check_geoip(cfg)
    check_access_log(cfg.log.access)


def check_geoip(cfg: Config) -> None:
    try:  # cache_size=0: only open and validate, no lookups follow
        GeoIP(cfg.geoip.database, cache_size=0).close()
    except GeoIPError as exc:
        raise ConfigError("geoip.database", str(exc)) from None


def check_access_log(destination: str) -> None:
    """Would ``AccessLog`` open this target? Checked without creating the file, so that
    ``check-config`` on an operator's machine leaves no empty log behind."""
    if destination in (ACCESS_LOG_OFF, "", *ACCESS_LOG_STREAMS):
        return
    path = os.path.abspath(os.path.expanduser(destination))
    try:
        if os.path.exists(path):
            with open(path, "ab"):  # what AccessLog does; appends nothing
                pass
            return
        parent = os.path.dirname(path)
        if not os.path.isdir(parent):
            raise OSError(f"directory {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OSError(f"directory {parent} is not writable")
    except OSError as exc:
        reason = exc.strerror if exc.strerror else str(exc)
        raise ConfigError("log.access", f"cannot open {destination}: {reason}") from None


# --------------------------------------------------------------------------- listen overrides


def parse_address_flag(value: str, flag: str) -> HostPort:
    """A ``HOST:PORT`` flag, by the same rule as ``server.listen`` in the config."""
    return parse_hostport(value, flag)


@dataclass(frozen=True, slots=True)
class ListenOverrides:
    """Addresses that win over ``server.listen`` / ``server.admin_listen`` in the file.

    Applied to every config parsed after start (reloads, respawned workers), because a
    reload cannot move a listener: without this, a worker restarted after a reload would
    bind wherever the file says now.
    """

    listen: HostPort | None = None
    admin_listen: HostPort | None = None

    def apply(self, cfg: Config) -> Config:
        server = cfg.server
        if self.listen is not None:
            server = dataclasses.replace(server, listen=self.listen)
        if self.admin_listen is not None:
            server = dataclasses.replace(server, admin_listen=self.admin_listen)
        return cfg if server is cfg.server else dataclasses.replace(cfg, server=server)

    def args(self) -> list[str]:
        """The same overrides as ``gslb`` arguments (for a worker process)."""
        out: list[str] = []
        if self.listen is not None:
            out += ["--listen", str(self.listen)]
        if self.admin_listen is not None:
            out += ["--admin-listen", str(self.admin_listen)]
        return out
