"""The ``gslb`` command line.

Exit status: 0 on success, 2 for bad input (invalid config, unreadable files, bad arguments),
1 for failures at run time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gslb.core.config import Config, ConfigError, load_config, parse_hostport, parse_toml

if TYPE_CHECKING:
    from gslb.core.config import HostPort
    from gslb.core.geo import Location
    from gslb.core.policy import RequestFacts
    from gslb.ops.preflight import ListenOverrides

EXIT_USAGE = 2
MAX_WORKERS = 256  # as server.workers in the config


class UsageError(Exception):
    """Bad operator input: printed as one line, exit status 2."""


class StdoutClosed(Exception):
    """Whoever reads our output left (``gslb route ... | head -1``): not an error."""


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise UsageError(f"invalid config: {exc}") from None


def _emit(text: str) -> None:
    """Print and flush now, so a closed pipe shows up here and not at interpreter exit."""
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise StdoutClosed from None


def _discard_stdout() -> None:
    # The text layer still holds the unwritten rest, and Python flushes it at exit: point
    # the descriptor at /dev/null so that flush succeeds instead of printing a traceback.
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


def cmd_check_config(args: argparse.Namespace) -> int:
    from gslb.ops.preflight import preflight

    if fleet_mode(args.file) is not None:  # an edge's own file: the rest comes from NATS
        from gslb.core.fleetdoc import parse_local

        try:
            local = parse_local(Path(args.file).read_text(encoding="utf-8"), args.file)
        except ConfigError as exc:
            raise UsageError(f"invalid config: {exc}") from None
        _emit(
            f"{args.file}: ok (fleet mode: edge {local.fleet.edge}; the fleet document comes "
            f"from {', '.join(local.fleet.servers)})"
        )
        return 0
    cfg = _load(args.file)
    try:  # the same start-up checks as `serve`, so "ok" means serve will start
        preflight(cfg)
    except ConfigError as exc:
        raise UsageError(f"invalid config: {exc}") from None
    active = sum(1 for r in cfg.regions if r.active)
    endpoints = sum(len(r.endpoints) for r in cfg.regions)
    _emit(
        f"{args.file}: ok ({len(cfg.regions)} regions, {active} active, "
        f"{endpoints} endpoints, {len(cfg.residency)} residency rules)"
    )
    return 0


def _read_state(path: str, names: Sequence[str]) -> Any:
    from gslb.core.state import LiveView

    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read state: {exc}") from None
    try:
        return LiveView.from_document(names, doc)
    except ValueError as exc:
        raise UsageError(f"{path}: {exc}") from None


def _route_facts(args: argparse.Namespace, location: Location | None, cfg: Config) -> RequestFacts:
    """The request facts, by the rules the proxy applies to the control headers."""
    from gslb.core.policy import (
        BUDGET_HEADER,
        CERTS_HEADER,
        RESIDENCY_HEADER,
        BadControlHeader,
        facts_from_headers,
    )

    flags = {
        BUDGET_HEADER: "--budget-ms",
        CERTS_HEADER: "--require",
        RESIDENCY_HEADER: "--residency",
    }
    headers = {
        BUDGET_HEADER: args.budget_ms,
        CERTS_HEADER: ",".join(args.require) if args.require else None,
        RESIDENCY_HEADER: args.residency,
    }
    try:
        return facts_from_headers(headers.get, location, cfg, args.model)
    except BadControlHeader as exc:
        reason = str(exc).removeprefix(f"{exc.header}: ")
        raise UsageError(f"{flags.get(exc.header, exc.header)}: {reason}") from None


def cmd_route(args: argparse.Namespace) -> int:
    from gslb.core.clientip import parse_ip
    from gslb.core.explain import decision_document, render_table
    from gslb.core.router import Router
    from gslb.edge.geoip import GeoIP, GeoIPError

    cfg = _load(args.config)
    ip = parse_ip(args.ip)
    if ip is None:
        raise UsageError(f"--ip: {args.ip!r} is not an IP address")
    try:
        geoip = GeoIP(cfg.geoip.database)
    except GeoIPError as exc:
        raise UsageError(str(exc)) from None
    location = geoip.lookup(ip)
    facts = _route_facts(args, location, cfg)
    router = Router(cfg)
    snapshot = _read_state(args.state, router.names) if args.state else router.new_view()
    decision = router.decide(facts, snapshot, explain=True)
    doc = decision_document(str(ip), location, facts, decision, router.residency_rules(facts))
    _emit(json.dumps(doc, indent=2) if args.json else render_table(doc))
    return 0


def _overrides(args: argparse.Namespace) -> ListenOverrides:
    from gslb.ops.preflight import ListenOverrides, parse_address_flag

    def flag(value: str | None, name: str) -> HostPort | None:
        if value is None:
            return None
        try:
            return parse_address_flag(value, name)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None

    return ListenOverrides(flag(args.listen, "--listen"), flag(args.admin_listen, "--admin-listen"))


def serve_config(args: argparse.Namespace) -> tuple[str, Config, ListenOverrides]:
    """What ``gslb serve`` would run: the file's text, the checked config, the overrides."""
    from gslb.ops.preflight import preflight, read_config

    overrides = _overrides(args)
    try:
        text, cfg = read_config(args.config)
        cfg = overrides.apply(cfg)
        preflight(cfg)
    except ConfigError as exc:
        raise UsageError(f"invalid config: {exc}") from None
    return text, cfg, overrides


def fleet_mode(path: str) -> str | None:
    """The file's text when it is an edge's own file in fleet mode (it has ``[fleet]``)."""
    from gslb.core.fleetdoc import FLEET, read_toml

    try:
        text = Path(path).read_text(encoding="utf-8")
        return text if FLEET in read_toml(text, path) else None
    except (OSError, UnicodeDecodeError, ConfigError):
        return None  # the usual path reports it


def cmd_serve_fleet(args: argparse.Namespace, text: str) -> int:
    """``serve`` for an edge in fleet mode: boot from the kept or current fleet document (or
    wait, not ready, for the first one), then serve and follow the document."""
    import asyncio

    from gslb.core.fleetdoc import parse_local
    from gslb.ops.fleetagent import FleetAgent, serve_unready
    from gslb.ops.preflight import preflight
    from gslb.ops.supervisor import serve

    overrides = _overrides(args)
    try:
        local = parse_local(text, args.config)
    except ConfigError as exc:
        raise UsageError(f"invalid config: {exc}") from None
    if args.log_level is None:
        logging.getLogger().setLevel(local.log.level.upper())
    agent = FleetAgent(text, args.config, local.fleet)

    async def boot() -> str:
        try:
            whole = await agent.boot(connect_s=2.0)
            return whole if whole is not None else await serve_unready(local, agent)
        finally:
            await agent.close()  # its NATS connection belongs to this event loop

    try:
        whole = asyncio.run(boot())
        cfg = overrides.apply(parse_toml(whole, args.config))
        preflight(cfg)
    except ConfigError as exc:
        raise UsageError(f"invalid config: {exc}") from None
    except KeyboardInterrupt:
        return 0
    return serve(cfg, whole, args.config, args.workers, overrides, agent=agent)


def cmd_serve(args: argparse.Namespace) -> int:
    from gslb.ops.supervisor import serve

    fleet_text = fleet_mode(args.config)
    if fleet_text is not None:
        return cmd_serve_fleet(args, fleet_text)
    text, cfg, overrides = serve_config(args)
    if args.log_level is None:
        logging.getLogger().setLevel(cfg.log.level.upper())
    return serve(cfg, text, args.config, args.workers, overrides)


def cmd_worker(args: argparse.Namespace) -> int:
    import asyncio

    from gslb.edge.server import install_uvloop
    from gslb.ops.supervisor import run_worker_process

    # The config the supervisor accepted arrives on stdin; the file may hold another by now.
    text = sys.stdin.read()
    install_uvloop()
    asyncio.run(run_worker_process(text, args.config, args.control, _overrides(args)))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import asyncio

    from gslb.edge.server import install_uvloop
    from gslb.sim.demo import embedded_config, run_demo, with_ports

    try:
        cfg = _load(args.config) if args.config else embedded_config()
        for flag, value in (("--listen", args.listen), ("--admin-listen", args.admin_listen)):
            if value:
                parse_hostport(value, flag)  # the rule of server.listen: one line, exit 2
    except ConfigError as exc:
        raise UsageError(f"invalid config: {exc}") from None
    if args.region_port_base is not None and not 1 <= args.region_port_base <= 65000:
        raise UsageError("--region-port-base: expected a port number from 1 to 65000")
    cfg = with_ports(cfg, args.listen, args.admin_listen, args.region_port_base)
    if args.fleet is not None:
        return _fleet_demo(args, cfg)
    install_uvloop()
    try:
        asyncio.run(run_demo(cfg))
    except OSError as exc:
        print(f"gslb: demo could not start: {exc} (is another demo running?)", file=sys.stderr)
        return 1
    return 0


def _fleet_demo(args: argparse.Namespace, cfg: Config) -> int:
    import asyncio
    from importlib import resources

    from gslb.sim.fleetdemo import DemoError, run_fleet_demo

    if args.config:
        text = Path(args.config).read_text(encoding="utf-8")
    else:
        text = resources.files("gslb").joinpath("data/demo.toml").read_text(encoding="utf-8")
    try:
        asyncio.run(run_fleet_demo(cfg, text, args.fleet))
    except DemoError as exc:
        print(f"gslb: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"gslb: demo could not start: {exc} (is another demo running?)", file=sys.stderr)
        return 1
    return 0


def cmd_fake_region(args: argparse.Namespace) -> int:
    from gslb.sim.fakeregion import main_from_args

    return main_from_args(args)


def _edges(value: str) -> int:
    from gslb.sim.fleetdemo import MAX_EDGES

    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_EDGES:
        raise argparse.ArgumentTypeError(f"expected a number of edges from 1 to {MAX_EDGES}")
    return n


def _workers(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not 1 <= n <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"expected 1 to {MAX_WORKERS}, got {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gslb", description="Geo-aware global load balancer")
    p.add_argument(
        "--log-level",
        default=None,
        choices=["debug", "info", "warning", "error"],
        help="default: log.level from the config for serve, else warning",
    )
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("check-config", help="validate a config file (exit 0 or 2)")
    c.add_argument("file")
    c.set_defaults(func=cmd_check_config)

    r = sub.add_parser("route", help="where would a client at this IP go, and why")
    r.add_argument("--config", required=True)
    r.add_argument("--ip", required=True)
    # A string: the X-GSLB-Latency-Budget-Ms parser decides (NaN and garbage refused).
    r.add_argument("--budget-ms", type=str, default=None)
    r.add_argument("--require", action="append", default=[], metavar="CERT")
    r.add_argument("--residency", default=None, help="comma list of allowed jurisdictions")
    r.add_argument("--model", default=None)
    r.add_argument("--state", default=None, help="JSON file of per-region load and health")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_route)

    sv = sub.add_parser("serve", help="run the proxy")
    sv.add_argument("--config", required=True)
    sv.add_argument("--workers", type=_workers, default=None, help="processes (default: config)")
    sv.add_argument(
        "--listen", default=None, metavar="HOST:PORT", help="public listener (over server.listen)"
    )
    sv.add_argument(
        "--admin-listen",
        default=None,
        metavar="HOST:PORT",
        help="admin listener (over server.admin_listen)",
    )
    sv.set_defaults(func=cmd_serve)

    # Internal: one worker process under `serve --workers N` (not for direct use). The config
    # text comes on stdin; --config names its file (the source in messages and /status).
    wk = sub.add_parser("_worker")
    wk.add_argument("--config", required=True)
    wk.add_argument("--control", required=True)
    wk.add_argument("--listen", default=None)
    wk.add_argument("--admin-listen", default=None)
    wk.set_defaults(func=cmd_worker)

    dm = sub.add_parser("demo", help="run gslb on simulated regions (the embedded demo)")
    dm.add_argument("--config", default=None, help="demo config (default: the embedded one)")
    dm.add_argument("--listen", default=None, help="HOST:PORT for the proxy")
    dm.add_argument("--admin-listen", default=None, help="HOST:PORT for the admin listener")
    dm.add_argument("--region-port-base", type=int, default=None, help="first fake-region port")
    dm.add_argument(
        "--fleet",
        type=_edges,
        default=None,
        metavar="N",
        help="N edges at N simulated sites, one config on NATS JetStream (needs nats-server)",
    )
    dm.set_defaults(func=cmd_demo)

    from gslb.sim.fakeregion import add_arguments

    fr = sub.add_parser("fake-region", help="a simulated OpenAI-compatible inference server")
    add_arguments(fr)
    fr.set_defaults(func=cmd_fake_region)

    from gslb.ops import fleetcli  # its commands import nats-py only when they run

    fleetcli.add_parser(sub)

    from gslb.ops import simulate  # numpy and matplotlib only when it runs

    simulate.add_parser(sub)

    from gslb.ops import plancli  # numpy and scipy only when it runs

    plancli.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from gslb.edge.logsafety import configure_logging

    # Library records (aiohttp, asyncio) are cut to name, level and exception class: their
    # text can quote request bytes and client addresses (gslb.edge.logsafety).
    configure_logging(getattr(logging, (args.log_level or "warning").upper()), sys.stderr)
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"gslb: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StdoutClosed:
        _discard_stdout()
        return 0


if __name__ == "__main__":
    sys.exit(main())
