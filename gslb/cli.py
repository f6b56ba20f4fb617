"""The ``gslb`` command line.

Exit status: 0 on success, 2 for bad input (invalid config, unreadable files, bad arguments),
1 for failures at run time.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from gslb.config import Config, ConfigError, load_config

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad operator input: printed as one line, exit status 2."""


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as exc:
        raise UsageError(f"invalid config: {exc}") from None


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.file)
    active = sum(1 for r in cfg.regions if r.active)
    endpoints = sum(len(r.endpoints) for r in cfg.regions)
    print(
        f"{args.file}: ok ({len(cfg.regions)} regions, {active} active, "
        f"{endpoints} endpoints, {len(cfg.residency)} residency rules)"
    )
    return 0


def _read_state(path: str, names: Sequence[str]) -> Any:
    from gslb.state import Snapshot

    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read state: {exc}") from None
    try:
        return Snapshot.from_document(names, doc)
    except ValueError as exc:
        raise UsageError(f"{path}: {exc}") from None


def cmd_route(args: argparse.Namespace) -> int:
    from gslb.clientip import parse_ip
    from gslb.explain import decision_document, render_table
    from gslb.geoip import GeoIP, GeoIPError
    from gslb.policy import BadControlHeader, RequestFacts, parse_residency
    from gslb.router import Router

    cfg = _load(args.config)
    ip = parse_ip(args.ip)
    if ip is None:
        raise UsageError(f"--ip: {args.ip!r} is not an IP address")
    try:
        geoip = GeoIP(cfg.geoip.database)
    except GeoIPError as exc:
        raise UsageError(str(exc)) from None
    location = geoip.lookup(ip)
    router = Router(cfg)
    snapshot = _read_state(args.state, router.names) if args.state else router.new_snapshot()
    r = cfg.routing
    budget = r.latency_budget_ms if args.budget_ms is None else args.budget_ms
    try:
        residency = parse_residency(args.residency)
    except BadControlHeader as exc:
        raise UsageError(f"--residency: {exc}") from None
    facts = RequestFacts(
        location=location,
        budget_ms=min(max(budget, r.min_latency_budget_ms), r.max_latency_budget_ms),
        certifications=frozenset(c.lower() for c in args.require),
        residency=residency,
        model=args.model,
    )
    decision = router.decide(facts, snapshot, explain=True)
    doc = decision_document(str(ip), location, facts, decision, router.residency_rules(facts))
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(render_table(doc))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from gslb.geoip import GeoIP, GeoIPError
    from gslb.supervisor import serve

    cfg = _load(args.config)
    if args.log_level is None:
        logging.getLogger().setLevel(cfg.log.level.upper())
    try:  # fail fast, before starting workers, on a broken GeoIP database
        GeoIP(cfg.geoip.database, cache_size=0).close()
    except GeoIPError as exc:
        raise UsageError(str(exc)) from None
    return serve(cfg, args.config, args.workers)


def cmd_worker(args: argparse.Namespace) -> int:
    import asyncio

    from gslb.server import install_uvloop
    from gslb.supervisor import run_worker_process

    install_uvloop()
    asyncio.run(run_worker_process(args.config, args.control))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import asyncio

    from gslb.demo import embedded_config, run_demo, with_ports
    from gslb.server import install_uvloop

    cfg = _load(args.config) if args.config else embedded_config()
    cfg = with_ports(cfg, args.listen, args.admin_listen, args.region_port_base)
    install_uvloop()
    try:
        asyncio.run(run_demo(cfg))
    except OSError as exc:
        print(f"gslb: demo could not start: {exc} (is another demo running?)", file=sys.stderr)
        return 1
    return 0


def cmd_fake_region(args: argparse.Namespace) -> int:
    from gslb.fakeregion import main_from_args

    return main_from_args(args)


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
    r.add_argument("--budget-ms", type=float, default=None)
    r.add_argument("--require", action="append", default=[], metavar="CERT")
    r.add_argument("--residency", default=None, help="comma list of allowed jurisdictions")
    r.add_argument("--model", default=None)
    r.add_argument("--state", default=None, help="JSON file of per-region load and health")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_route)

    sv = sub.add_parser("serve", help="run the proxy")
    sv.add_argument("--config", required=True)
    sv.add_argument("--workers", type=int, default=None, help="processes (default: config)")
    sv.set_defaults(func=cmd_serve)

    # Internal: one worker process under `serve --workers N` (not for direct use).
    wk = sub.add_parser("_worker")
    wk.add_argument("--config", required=True)
    wk.add_argument("--control", required=True)
    wk.set_defaults(func=cmd_worker)

    dm = sub.add_parser("demo", help="run gslb on simulated regions (the embedded demo)")
    dm.add_argument("--config", default=None, help="demo config (default: the embedded one)")
    dm.add_argument("--listen", default=None, help="HOST:PORT for the proxy")
    dm.add_argument("--admin-listen", default=None, help="HOST:PORT for the admin listener")
    dm.add_argument("--region-port-base", type=int, default=None, help="first fake-region port")
    dm.set_defaults(func=cmd_demo)

    from gslb.fakeregion import add_arguments

    fr = sub.add_parser("fake-region", help="a simulated OpenAI-compatible inference server")
    add_arguments(fr)
    fr.set_defaults(func=cmd_fake_region)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, (args.log_level or "warning").upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return int(args.func(args))
    except UsageError as exc:
        print(f"gslb: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
