"""``gslb fleet ...``: an operator's commands on the fleet's KV bucket (docs/design.md, fleet mode).

Every command finds NATS either from ``--config FILE`` (an edge's own file: its ``[fleet]``
section gives servers, credentials, TLS files and the bucket) or from ``--servers URL,...``
(with ``--bucket``), never both. Exit status as for every ``gslb`` command: 0 done, 2 bad
input (nothing written), 1 a failure at run time (NATS unreachable, a lost compare-and-set).

What is printed: revisions, digests, times, drain targets and what edges report of
themselves. Never a password, a server URL (a URL may be refused for carrying one, but the
error does not echo it) or a line of a fleet document.

The edges' report (``EdgeDoc``) is defined here, where it is read: each edge writes one under
its ``edge.<name>`` key with ``FleetStore.report_edge``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import re
import ssl
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypedDict, TypeGuard

from gslb.core.config import ConfigError, FleetConfig, _fleet_url, _name, _token, _url
from gslb.core.fleetdoc import document_digest, parse_local, validate_document

if TYPE_CHECKING:
    from gslb.core.fleet import FleetState
    from gslb.ops.fleetstore import EdgeRecord, FleetStore

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130  # as a shell reports SIGINT
DEFAULT_BUCKET: Final = "gslb"
DEFAULT_TIMEOUT_S: Final = 5.0
# An edge is shown ``stale`` when its report is older than this many publish intervals (the
# edges re-write their report at least once per ``fleet.publish_interval_s``) ...
STALE_INTERVALS: Final = 3
# ... or, with --servers (no [fleet] to read the interval from), than this many seconds.
DEFAULT_STALE_AFTER_S: Final = 10.0
DIGEST_SHORT: Final = 12
# What an edge says of itself is shown to operators: one line, bounded.
MAX_SHOWN_CHARS: Final = 200
# An edge's view of the regions is peer input too: at most this many are read from a report.
MAX_REPORTED_REGIONS: Final = 256
MAX_REPORTED_ENDPOINTS: Final = 10**6  # per region; anything larger is junk
CLI_CONNECTION_NAME: Final = "gslb-fleet-cli"


class RegionSummary(TypedDict):
    """An edge's own view of one region: its endpoints, how many this edge's probes see up,
    and how many the fleet's verdict takes out (a quorum of other edges sees them down)."""

    endpoints: int
    up: int
    fleet_down: int


class EdgeDoc(TypedDict):
    """What an edge writes under ``edge.<name>`` (``FleetStore.report_edge``), as JSON.

    ``edge`` and ``site`` are its ``[fleet]`` edge and site. ``revision`` and ``digest`` name
    the fleet document it serves (``document_digest`` of its text; both ``None`` before its
    first document). ``error`` is the last failure to apply a newer document, as one line that
    names the refused revision (``None`` once the newest one applied). ``at`` is the unix time
    the edge wrote the report: it re-writes it at least once per ``publish_interval_s``, so a
    report older than ``STALE_INTERVALS`` intervals means the edge (or its path to NATS) is gone.
    ``regions`` is its view of each region by name (``region_summary``; ``None`` from an edge
    that does not take part in fleet health).
    """

    edge: str
    site: str
    revision: int | None
    digest: str | None
    error: str | None
    at: float
    regions: dict[str, RegionSummary] | None


EDGE_DOC_KEYS: Final = ("edge", "site", "revision", "digest", "error", "at", "regions")


def edge_doc(
    edge: str,
    site: str,
    revision: int | None,
    digest: str | None,
    error: str | None,
    at: float,
    regions: dict[str, RegionSummary] | None = None,
) -> EdgeDoc:
    """An edge's report, in the one shape ``gslb fleet status`` reads."""
    return {
        "edge": edge,
        "site": site,
        "revision": revision,
        "digest": digest,
        "error": error,
        "at": at,
        "regions": regions,
    }


def region_summary(fleet: FleetState) -> dict[str, RegionSummary]:
    """This edge's view of each region, for its report (region names and counts only)."""
    return {
        r.name: {
            "endpoints": len(r.endpoints),
            "up": sum(1 for ep in r.endpoints if ep.up),
            "fleet_down": sum(1 for ep in r.endpoints if ep.fleet_down),
        }
        for r in fleet.regions
    }


class FleetUsageError(Exception):
    """Bad operator input: printed as one line, exit status 2, nothing written."""


class _StdoutClosed(Exception):
    """Whoever reads our output left (``gslb fleet history | head -1``): not an error."""


# -- arguments ------------------------------------------------------------------------------


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``gslb fleet ...`` and its sub-commands, under ``sub`` (the ``gslb`` sub-parsers)."""
    conn = argparse.ArgumentParser(add_help=False)
    where = conn.add_argument_group("where the fleet's NATS is (exactly one of)")
    where.add_argument("--config", default=None, metavar="FILE", help="an edge's own file")
    where.add_argument("--servers", default=None, metavar="URL,...", help="NATS server URLs")
    conn.add_argument(
        "--bucket", default=None, help=f"KV bucket, with --servers (default {DEFAULT_BUCKET})"
    )
    conn.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"give up reaching NATS after S seconds (default {DEFAULT_TIMEOUT_S:g})",
    )

    fleet = sub.add_parser("fleet", help="operate a fleet: config pushes, drains, status")
    cmds = fleet.add_subparsers(dest="fleet_command", required=True)

    push = cmds.add_parser("push", parents=[conn], help="validate and push a fleet document")
    push.add_argument("file", metavar="FILE")
    push.add_argument(
        "--expect-revision",
        type=_revision,
        default=None,
        metavar="N",
        help="push only over revision N (0: only if no document exists yet)",
    )
    push.set_defaults(func=_runner(cmd_push))

    rb = cmds.add_parser("rollback", parents=[conn], help="re-push an old revision's document")
    rb.add_argument("revision", type=_past_revision, metavar="REV")
    rb.set_defaults(func=_runner(cmd_rollback))

    hist = cmds.add_parser("history", parents=[conn], help="the kept revisions, newest last")
    hist.set_defaults(func=_runner(cmd_history))

    st = cmds.add_parser("status", parents=[conn], help="the current revision and every edge")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_runner(cmd_status))

    for verb, helptext in (("drain", "drain"), ("undrain", "lift a drain of")):
        d = cmds.add_parser(verb, parents=[conn], help=f"{helptext} a region or an endpoint")
        d.add_argument("kind", choices=["region", "endpoint"])
        d.add_argument("target", metavar="NAME|URL")
        d.set_defaults(func=_runner(cmd_drain if verb == "drain" else cmd_undrain))

    ls = cmds.add_parser("drains", parents=[conn], help="the drains in force")
    ls.set_defaults(func=_runner(cmd_drains))


def _seconds(value: str) -> float:
    try:
        s = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {value!r}") from None
    if not math.isfinite(s) or s <= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {value!r}")
    return s


def _revision(value: str) -> int:
    if not (value.isascii() and value.isdigit()):
        raise argparse.ArgumentTypeError(f"expected a revision number, got {value!r}")
    return int(value)


def _past_revision(value: str) -> int:
    n = _revision(value)
    if n < 1:  # revisions start at 1; nats-py would read 0 as "the latest"
        raise argparse.ArgumentTypeError(f"expected a revision number >= 1, got {value!r}")
    return n


# -- running a command ----------------------------------------------------------------------


class _Failed(Exception):
    """A failure at run time, already worded for the operator: exit status 1."""


class WriteCheck:
    """What every config write is held to, and what it wrote (state of one command's run).

    ``FleetStore.rollback`` re-puts the old document through ``push_config`` (its
    compare-and-set; tests/ops/test_fleetstore.py pins that), so checking there holds a
    rolled-back document to today's rules as well as a pushed file.
    """

    def __init__(self, source: str) -> None:
        self.source = source  # names the document in an error: a file, or "revision N"
        self.digest = ""  # document_digest of the last document written

    def check(self, text: str) -> None:
        check_document(text, self.source)

    def wrote(self, text: str) -> None:
        self.digest = document_digest(text)


Command = Callable[[argparse.Namespace, "FleetStore", WriteCheck, list[str]], Awaitable[int]]


def _runner(command: Command) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        return run_command(command, args)

    return run


def run_command(command: Command, args: argparse.Namespace) -> int:
    """Run one fleet command: every failure is one ``gslb: ...`` line, never a traceback."""
    if args.log_level is None:
        # Each failure the store logs is also raised, and printed here as the one line.
        logging.getLogger("gslb.ops.fleetstore").setLevel(logging.ERROR)
    out: list[str] = []
    try:
        # Whatever can be refused without NATS is refused before NATS is reached.
        target = resolve_target(args)
        args.stale_after_s = target.stale_after_s
        check = WriteCheck("the fleet document")
        if args.fleet_command == "push":
            args.text = read_document(args.file)
            check.source = args.file
        if args.fleet_command in ("drain", "undrain"):
            args.target = drain_target(args.kind, args.target)
        status = asyncio.run(_session(command, args, target, check, out))
    except FleetUsageError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except _Failed as exc:
        _error(str(exc))
        status = EXIT_FAILED
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED
    try:
        _emit(out)
    except _StdoutClosed:
        _discard_stdout()
    return status


async def _session(
    command: Command,
    args: argparse.Namespace,
    target: Target,
    check: WriteCheck,
    out: list[str],
) -> int:
    from gslb.ops.fleetstore import FleetError, InvalidValue

    try:
        store = await connect(target, args.timeout, check)
    except FleetError as exc:
        raise _Failed(str(exc)) from None
    except OSError as exc:  # not translated by the store: e.g. a TLS handshake refused
        raise _Failed(f"cannot reach NATS ({type(exc).__name__})") from None
    try:
        return await command(args, store, check, out)
    except InvalidValue as exc:
        raise FleetUsageError(str(exc)) from None
    except FleetError as exc:
        raise _Failed(str(exc)) from None
    except OSError as exc:
        raise _Failed(f"lost NATS ({type(exc).__name__})") from None
    finally:
        if store.dropped:
            _error(f"note: skipped {store.dropped} malformed value(s) in the bucket")
        await store.close()


def _error(message: str) -> None:
    print(f"gslb: {message}", file=sys.stderr)


def _emit(lines: Sequence[str]) -> None:
    if not lines:
        return
    try:
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        raise _StdoutClosed from None


def _discard_stdout() -> None:
    # As gslb.cli does: point the descriptor at /dev/null so Python's flush at exit succeeds.
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


# -- finding NATS ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """Where the fleet's bucket is, and how to get in (from --config or --servers)."""

    servers: tuple[str, ...]
    bucket: str
    stale_after_s: float
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    creds_file: str | None = None
    nkey_file: str | None = None
    tls: ssl.SSLContext | None = None


def resolve_target(args: argparse.Namespace) -> Target:
    """The bucket named by exactly one of ``--config`` and ``--servers``."""
    if (args.config is None) == (args.servers is None):
        raise FleetUsageError("give either --config FILE or --servers URL,... (exactly one)")
    if args.config is not None:
        if args.bucket is not None:
            raise FleetUsageError("--bucket goes with --servers (with --config, [fleet] names it)")
        return target_from_config(args.config, os.environ)
    return target_from_servers(args.servers, args.bucket or DEFAULT_BUCKET)


def target_from_servers(servers: str, bucket: str) -> Target:
    urls: list[str] = []
    for item in servers.split(","):
        if not item.strip():
            raise FleetUsageError("--servers: an empty URL in the list")
        try:
            # The config's rule, which refuses a URL carrying user:password@ without echoing it.
            urls.append(_fleet_url(item.strip(), "--servers"))
        except ConfigError as exc:
            raise FleetUsageError(str(exc)) from None
    try:
        _token(bucket, "--bucket")
    except ConfigError as exc:
        raise FleetUsageError(str(exc)) from None
    return Target(tuple(dict.fromkeys(urls)), bucket, DEFAULT_STALE_AFTER_S)


def target_from_config(path: str, environ: Mapping[str, str]) -> Target:
    """The ``[fleet]`` of an edge's own file: servers, bucket, credentials and TLS."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FleetUsageError(f"{path}: cannot read config: {_reason(exc)}") from None
    try:
        fleet = parse_local(text, path).fleet
    except ConfigError as exc:
        raise FleetUsageError(f"invalid config: {_named(path, exc)}") from None
    password: str | None = None
    if fleet.password_env:
        password = environ.get(fleet.password_env)
        if not password:
            raise FleetUsageError(
                f"{path}: fleet.password_env: the environment variable {fleet.password_env} "
                "is not set"
            )
    return Target(
        servers=fleet.servers,
        bucket=fleet.bucket,
        stale_after_s=STALE_INTERVALS * fleet.publish_interval_s,
        user=fleet.user or None,
        password=password,
        creds_file=fleet.creds_file or None,
        nkey_file=fleet.nkey_file or None,
        tls=tls_context(fleet, path),
    )


def tls_context(fleet: FleetConfig, source: str) -> ssl.SSLContext | None:
    """The client TLS context of ``[fleet]``'s TLS files; ``None``: nats-py's default."""
    if not (fleet.tls_ca_file or fleet.tls_cert_file):
        return None
    try:
        ctx = ssl.create_default_context(cafile=fleet.tls_ca_file or None)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise FleetUsageError(f"{source}: fleet.tls_ca_file: {_reason(exc)}") from None
    if fleet.tls_cert_file:
        try:
            ctx.load_cert_chain(fleet.tls_cert_file, fleet.tls_key_file)
        except (OSError, ValueError) as exc:
            raise FleetUsageError(f"{source}: fleet.tls_cert_file: {_reason(exc)}") from None
    return ctx


async def connect(target: Target, timeout: float, check: WriteCheck) -> FleetStore:
    """A store on ``target`` whose config writes pass ``check`` first."""
    from gslb.ops.fleetstore import DEFAULT_TIMEOUT_S as REQUEST_TIMEOUT_S
    from gslb.ops.fleetstore import FleetStore

    class CheckedStore(FleetStore):
        async def push_config(self, text: str, expected_revision: int | None) -> int:
            check.check(text)
            revision = await super().push_config(text, expected_revision)
            check.wrote(text)
            return revision

    return await CheckedStore.connect(
        list(target.servers),
        user=target.user,
        password=target.password,
        creds_file=target.creds_file,
        nkey_file=target.nkey_file,
        tls=target.tls,
        bucket=target.bucket,
        name=CLI_CONNECTION_NAME,
        timeout=min(timeout, REQUEST_TIMEOUT_S),
        connect_deadline=timeout,
    )


def _named(path: str, exc: ConfigError) -> str:
    """A config error with the file's name in front, once."""
    return str(exc) if exc.path == path else f"{path}: {exc}"


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "strerror", None)
    return reason if isinstance(reason, str) else type(exc).__name__


# -- documents and targets ------------------------------------------------------------------


def canonical(text: str) -> str:
    """The text as pushed: LF line ends, so the bucket's digests equal ``document_digest``."""
    return text.replace("\r\n", "\n")


def read_document(path: str) -> str:
    """A fleet document, read and held to every fleet-wide rule; ``FleetUsageError`` if not."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FleetUsageError(f"{path}: cannot read: {_reason(exc)}") from None
    check_document(text, path)
    return canonical(text)


def check_document(text: str, source: str) -> None:
    try:
        validate_document(text, source)
    except ConfigError as exc:
        raise FleetUsageError(f"invalid fleet document: {_named(source, exc)}") from None


def drain_target(kind: str, target: str) -> str:
    """A region name or an endpoint URL by the config's own rules (the URL as the config
    writes it, so a drain names the endpoint the way every edge's config does).

    A region is not looked up in the fleet document: a drain may come before the push.
    """
    try:
        return _name(target, "region") if kind == "region" else _url(target, "endpoint")
    except ConfigError as exc:
        raise FleetUsageError(str(exc)) from None


# -- the commands ---------------------------------------------------------------------------


async def cmd_push(
    args: argparse.Namespace, store: FleetStore, check: WriteCheck, out: list[str]
) -> int:
    from gslb.ops.fleetstore import ConflictError

    if args.expect_revision is not None:
        expected: int | None = args.expect_revision or None  # 0: no document yet
    else:
        current = await store.get_config()
        expected = current[0] if current is not None else None
    try:
        revision = await store.push_config(args.text, expected)
    except ConflictError as exc:
        raise _Failed(conflict_line(expected, exc.current_revision)) from None
    out.append(f"pushed revision {revision} (sha256 {check.digest})")
    return EXIT_OK


def conflict_line(expected: int | None, current: int | None) -> str:
    """Why a compare-and-set lost, naming the revision that is there now."""
    now = "no fleet document exists" if current is None else f"the fleet is at revision {current}"
    was = "no document" if expected is None else f"revision {expected}"
    return f"conflict: {now}, not {was} (someone else pushed); nothing written"


async def cmd_rollback(
    args: argparse.Namespace, store: FleetStore, check: WriteCheck, out: list[str]
) -> int:
    from gslb.ops.fleetstore import ConflictError

    check.source = f"revision {args.revision}"
    try:
        revision = await store.rollback(args.revision)
    except ConflictError as exc:
        raise _Failed(
            f"conflict: the fleet moved to revision {exc.current_revision} while "
            "rolling back; nothing written"
        ) from None
    out.append(
        f"rolled back to revision {args.revision}'s document as revision {revision} "
        f"(sha256 {check.digest})"
    )
    return EXIT_OK


async def cmd_history(
    args: argparse.Namespace, store: FleetStore, check: WriteCheck, out: list[str]
) -> int:
    versions = await store.history()
    if not versions:
        _error("no fleet document has been pushed")
    out.extend(f"{v.revision}  {_utc(v.when)}  {v.digest[:DIGEST_SHORT]}" for v in versions)
    return EXIT_OK


def _utc(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def cmd_drain(
    args: argparse.Namespace, store: FleetStore, check: WriteCheck, out: list[str]
) -> int:
    revision = await store.set_drain(args.kind, args.target)
    out.append(f"drained {args.kind} {args.target} (revision {revision})")
    return EXIT_OK


async def cmd_undrain(
    args: argparse.Namespace, store: FleetStore, check: WriteCheck, out: list[str]
) -> int:
    if await store.clear_drain(args.kind, args.target):
        out.append(f"undrained {args.kind} {args.target}")
    else:
        out.append(f"{args.kind} {args.target} was not drained")
    return EXIT_OK


async def cmd_drains(
    args: argparse.Namespace, store: FleetStore, check: WriteCheck, out: list[str]
) -> int:
    drains = sorted(await store.drains(), key=lambda d: (d.kind, d.target))
    out.extend(f"{d.kind} {shown(d.target)}" for d in drains)
    return EXIT_OK


# -- status ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegionView:
    """One region as an edge reported seeing it (``RegionSummary``, checked)."""

    name: str
    endpoints: int
    up: int
    fleet_down: int


@dataclass(frozen=True, slots=True)
class EdgeView:
    """One edge as ``gslb fleet status`` shows it, read leniently from its ``EdgeDoc``."""

    edge: str
    site: str
    revision: int | None
    digest: str | None
    error: str | None
    at: float  # unix time of the report: its own ``at``, else when the bucket took it
    age_s: float
    stale: bool
    state: str  # stale, error, behind (not on the current revision) or ok
    regions: tuple[RegionView, ...] | None = None  # None: the edge reported no view


def edge_view(
    record: EdgeRecord, now: float, stale_after_s: float, current: int | None
) -> EdgeView:
    """What an edge reported, each field dropped (``None``) when not of ``EdgeDoc``'s type.

    A report is any peer's JSON: nothing in it is trusted to be well-formed or printable.
    The edge's name is its key's (the one ``report_edge`` wrote under), not the doc's claim.
    """
    doc = record.doc
    revision = doc.get("revision")
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 1:
        revision = None
    digest = doc.get("digest")
    if not isinstance(digest, str) or not _HEX.fullmatch(digest):
        digest = None
    error = doc.get("error")
    at = doc.get("at")
    if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
        at = record.seen.timestamp()
    age = max(0.0, now - float(at))
    stale = age > stale_after_s
    err = shown(error) if isinstance(error, str) and error else None
    if stale:
        state = "stale"
    elif err is not None:
        state = "error"
    elif current is not None and revision != current:
        state = "behind"
    else:
        state = "ok"
    site = doc.get("site")
    return EdgeView(
        edge=shown(record.name),
        site=shown(site) if isinstance(site, str) else "",
        revision=revision,
        digest=digest,
        error=err,
        at=float(at),
        age_s=age,
        stale=stale,
        state=state,
        regions=region_views(doc.get("regions")),
    )


def region_views(raw: object) -> tuple[RegionView, ...] | None:
    """An edge's ``regions``, leniently: a region that is not a ``RegionSummary`` with counts
    that add up is dropped, and at most ``MAX_REPORTED_REGIONS`` are read."""
    if not isinstance(raw, dict):
        return None
    views: list[RegionView] = []
    for name, summary in raw.items():
        if len(views) >= MAX_REPORTED_REGIONS:
            break
        if not isinstance(name, str) or not name or not isinstance(summary, dict):
            continue
        total, up, down = (summary.get(k) for k in ("endpoints", "up", "fleet_down"))
        if not (_small_count(total) and _small_count(up) and _small_count(down)):
            continue
        if up > total or down > total:
            continue
        views.append(RegionView(shown(name), total, up, down))
    return tuple(views)


def _small_count(value: object) -> TypeGuard[int]:
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and 0 <= value <= MAX_REPORTED_ENDPOINTS
    )


_HEX = re.compile(r"[0-9a-f]{1,64}")


def shown(text: str) -> str:
    """A peer's string as one bounded line: escapes for anything a terminal would act on."""
    safe = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return safe if len(safe) <= MAX_SHOWN_CHARS else safe[: MAX_SHOWN_CHARS - 1] + "…"


async def cmd_status(
    args: argparse.Namespace, store: FleetStore, check: WriteCheck, out: list[str]
) -> int:
    config = await store.get_config()
    records = await store.edges()
    now = time.time()
    current = config[0] if config is not None else None
    views = [edge_view(records[name], now, args.stale_after_s, current) for name in sorted(records)]
    digest = document_digest(config[1]) if config is not None else None
    if args.json:
        out.append(json.dumps(status_document(current, digest, args.stale_after_s, views)))
    else:
        out.extend(status_table(current, digest, views))
    return EXIT_OK


def status_document(
    revision: int | None, digest: str | None, stale_after_s: float, views: Sequence[EdgeView]
) -> dict[str, Any]:
    config = None if revision is None else {"revision": revision, "digest": digest}
    edges = [
        {
            "edge": v.edge,
            "site": v.site,
            "revision": v.revision,
            "digest": v.digest,
            "error": v.error,
            "at": v.at,
            "seen_s_ago": round(v.age_s, 3),
            "stale": v.stale,
            "state": v.state,
            "regions": None
            if v.regions is None
            else {
                r.name: {"endpoints": r.endpoints, "up": r.up, "fleet_down": r.fleet_down}
                for r in v.regions
            },
        }
        for v in views
    ]
    return {"config": config, "stale_after_s": stale_after_s, "edges": edges}


def status_table(revision: int | None, digest: str | None, views: Sequence[EdgeView]) -> list[str]:
    if revision is None:
        lines = ["config: none pushed yet"]
    else:
        lines = [f"config: revision {revision}, sha256 {(digest or '')[:DIGEST_SHORT]}"]
    if not views:
        return [*lines, "edges: none has reported"]
    rows = [("EDGE", "SITE", "REVISION", "DIGEST", "LAST SEEN", "STATE", "REGIONS", "ERROR")]
    rows += [
        (
            v.edge,
            v.site or "-",
            str(v.revision) if v.revision is not None else "-",
            v.digest[:DIGEST_SHORT] if v.digest else "-",
            f"{v.age_s:.1f}s ago",
            v.state,
            regions_cell(v.regions),
            v.error or "-",
        )
        for v in views
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return lines


def regions_cell(regions: Sequence[RegionView] | None) -> str:
    """``us-east 2/2 ca-central 0/1!``: endpoints this edge sees up of all, ``!`` when the
    fleet's verdict takes any of them out; ``-`` when the edge reported no view."""
    if not regions:
        return "-"
    return " ".join(f"{r.name} {r.up}/{r.endpoints}{'!' if r.fleet_down else ''}" for r in regions)
