"""Load test of gslb's demo world: locust users around the globe, then a summary.

``make loadtest`` runs this. It drives ``benchmarks/locustfile.py`` headless, in this process
(locust as a library), against a running ``gslb demo``; when no gslb admin listener answers on
``--admin`` and nothing listens on ``--host``, it starts a demo itself (on those ports) and
stops it at the end. It also takes the demo's own port flags (``--listen``, ``--admin-listen``,
``--region-port-base``, ``--config``), so ``make demo`` and ``make loadtest`` given the same
``DEMO_ARGS`` meet on the same ports instead of the load test starting a second demo.

The summary: requests and failures, the split over serving regions (``X-GSLB-Region``), the
routes gslb took (``X-GSLB-Route``) and its spill count (``gslb_spills_total`` before and after),
time to first token overall and per city. The demo's regions have 4-8 slots and generate 25
tokens/s, so 40 users saturate the busiest ones: the run should show spills and no failures.

Exit status: 0 when every request succeeded, 1 when any failed (or none ran), 2 when no demo
could be reached or started (bad flags, a port held by something else, a demo that failed).
"""

from __future__ import annotations

import locust.env  # first: importing locust monkey-patches the standard library with gevent

# isort: split
import argparse
import contextlib
import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import IO, TYPE_CHECKING, Final, TypeVar
from urllib.parse import urlsplit

import gevent
from locust.util.timespan import parse_timespan
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from benchmarks.locustfile import Outcome

K = TypeVar("K")
ROOT: Final = Path(__file__).resolve().parent.parent
LOCUSTFILE: Final = Path(__file__).resolve().with_name("locustfile.py")
DEFAULT_HOST: Final = "http://127.0.0.1:8080"
DEFAULT_ADMIN: Final = "http://127.0.0.1:9901"
READY_TIMEOUT_S: Final = 60.0
DEMO_STOP_TIMEOUT_S: Final = 15.0
# When the time is up, users finish the request they are in (so the stop is not counted as a
# client hang-up by gslb), for at most this long.
USER_STOP_TIMEOUT_S: Final = 10.0
PROGRESS_EVERY_S: Final = 5.0
PERCENTILES: Final = (0.5, 0.9, 0.99)


class SetupError(Exception):
    """The demo could not be started or reached."""


# --------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Locust load test of gslb's demo world, with a routing summary."
    )
    p.add_argument("--users", type=int, default=40, help="concurrent users (default 40)")
    p.add_argument(
        "--spawn-rate", type=float, default=10.0, help="users started per second (default 10)"
    )
    p.add_argument(
        "--duration", default="30s", help="how long to run: 30, 30s, 2m, 1m30s (default 30s)"
    )
    p.add_argument("--host", default=None, help=f"gslb proxy URL (default {DEFAULT_HOST})")
    p.add_argument("--admin", default=None, help=f"gslb admin URL (default {DEFAULT_ADMIN})")
    p.add_argument("--seed", type=int, default=1, help="seed of the users' city draw (default 1)")
    demo = p.add_argument_group(
        "the demo's flags",
        "the same as `gslb demo` takes: `make loadtest` passes DEMO_ARGS here, so it finds a "
        "demo that `make demo DEMO_ARGS=...` started, or starts one on the same ports",
    )
    demo.add_argument("--listen", metavar="HOST:PORT", help="the demo's proxy; sets --host")
    demo.add_argument(
        "--admin-listen", metavar="HOST:PORT", help="the demo's admin listener; sets --admin"
    )
    demo.add_argument(
        "--region-port-base",
        type=int,
        default=None,
        help="first port of the simulated regions, for a demo started here (default: the "
        "demo's own, 18001...)",
    )
    demo.add_argument("--config", default=None, help="demo config, for a demo started here")
    args = p.parse_args(argv)
    try:
        args.host = _url_flag(args.host, args.listen, "--host", "--listen", DEFAULT_HOST)
        args.admin = _url_flag(
            args.admin, args.admin_listen, "--admin", "--admin-listen", DEFAULT_ADMIN
        )
    except ValueError as exc:
        p.error(str(exc))
    if args.users < 1:
        p.error("--users must be >= 1")
    if args.spawn_rate <= 0:
        p.error("--spawn-rate must be > 0")
    try:
        args.duration_s = parse_timespan(args.duration)
    except ValueError as exc:
        p.error(f"--duration: {exc}")
    if args.duration_s < 1:
        p.error("--duration must be at least 1 s")
    return args


def _url_flag(
    url: str | None, listen: str | None, url_flag: str, listen_flag: str, default: str
) -> str:
    """The URL to reach: ``--host``/``--admin`` as given, or built from the demo's flag."""
    if listen is None:
        return (url or default).rstrip("/")
    built = listen_url(listen, listen_flag)
    if url is not None and url.rstrip("/") != built:
        raise ValueError(f"{url_flag} {url} and {listen_flag} {listen} name different listeners")
    return built


def listen_url(listen: str, flag: str) -> str:
    """``http://`` URL of a ``HOST:PORT`` listener; a wildcard address is reached on loopback."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{flag}: expected HOST:PORT, got {listen!r}")
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def host_port(url: str) -> str:
    parts = urlsplit(url)
    if not parts.hostname or not parts.port:
        raise SetupError(f"{url}: give a URL with a host and a port to start a demo on")
    host = parts.hostname
    return f"[{host}]:{parts.port}" if ":" in host else f"{host}:{parts.port}"


# --------------------------------------------------------------------------------------------
# The demo


# The demo is on this machine: an http_proxy/HTTP_PROXY in the environment must not carry the
# probes and scrapes away to a proxy, which would answer for a demo that is not there.
_DIRECT: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes] | None:
    """Status and body, or None when nothing answers."""
    try:
        with _DIRECT.open(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, ValueError):
        return None


def is_ready(admin: str) -> bool:
    got = http_get(f"{admin}/readyz", timeout=1.0)
    return got is not None and got[0] == 200


def gslb_admin_answers(admin: str) -> bool:
    """True when a gslb admin listener answers at ``admin`` (ready or still starting).

    Raises ``SetupError`` when something else answers there: waiting for it to become ready,
    or starting a demo on its port, would both fail, and later and less clearly.
    """
    got = http_get(f"{admin}/readyz", timeout=1.0)
    if got is None:
        return False
    status, body = got
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if status in (200, 503) and isinstance(doc, dict) and isinstance(doc.get("ready"), bool):
        return True
    raise SetupError(
        f"{admin}/readyz answered {status}, not as gslb's admin listener: give the demo's "
        "admin address (--admin, or --admin-listen as in DEMO_ARGS)"
    )


def listening(url: str) -> bool:
    """Whether anything accepts connections on ``url``'s host and port."""
    parts = urlsplit(url)
    if not parts.hostname or not parts.port:
        return False
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=1.0):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def demo_running(args: argparse.Namespace) -> Iterator[str | None]:
    """Yield None when gslb already answers on ``args.admin``, else start a demo for the block.

    The yielded string says what was started. The demo's output goes to a temporary file,
    shown when it fails to come up.
    """
    if gslb_admin_answers(args.admin):
        wait_ready(None, args.admin, None)  # one already runs; it may be starting
        yield None
        return
    if listening(args.host):
        # A demo on other ports than the ones we were given, most likely: a second demo here
        # would only collide with it. Say which flags meet it instead.
        raise SetupError(
            f"something listens on {host_port(args.host)} but no gslb admin listener answers "
            f"at {args.admin}: if it is a demo started with `make demo DEMO_ARGS=...`, give "
            "`make loadtest` the same DEMO_ARGS (or --admin here)"
        )
    cmd = [
        sys.executable, "-m", "gslb", "demo",
        "--listen", host_port(args.host),
        "--admin-listen", host_port(args.admin),
    ]  # fmt: skip
    if args.region_port_base is not None:
        cmd += ["--region-port-base", str(args.region_port_base)]
    if args.config is not None:
        cmd += ["--config", str(Path(args.config).resolve())]  # the demo runs in ROOT
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            wait_ready(proc, args.admin, log)
            shown = " ".join(["python", *cmd[1:]])
            yield f"started `{shown}` (pid {proc.pid}); it is stopped at the end"
        finally:
            stop_demo(proc)


def wait_ready(proc: subprocess.Popen[bytes] | None, admin: str, log: IO[bytes] | None) -> None:
    """Wait for ``admin``/readyz to say ready; give up if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not is_ready(admin):
        output = f":\n{tail(log)}" if log is not None else ""
        if proc is not None and proc.poll() is not None:
            raise SetupError(f"the demo exited with status {proc.returncode}{output}")
        if time.monotonic() > deadline:
            raise SetupError(f"{admin} was not ready within {READY_TIMEOUT_S:g} s{output}")
        time.sleep(0.2)


def tail(log: IO[bytes], n: int = 4000) -> str:
    log.flush()
    log.seek(0, os.SEEK_END)
    log.seek(max(0, log.tell() - n))
    return log.read().decode(errors="replace")


def stop_demo(proc: subprocess.Popen[bytes]) -> None:
    """Ctrl-C, as a person would; kill it if it does not stop in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(DEMO_STOP_TIMEOUT_S)
            return
        except subprocess.TimeoutExpired:
            print(f"the demo did not stop within {DEMO_STOP_TIMEOUT_S:g} s: killing it")
            proc.kill()
    proc.wait()


# --------------------------------------------------------------------------------------------
# gslb's metrics


@dataclass(frozen=True)
class Scrape:
    """The counters of one /metrics scrape that the summary compares."""

    spills: dict[tuple[str, str], float]  # (from_region, to_region) -> count
    requests: dict[tuple[str, str, str], float]  # (region, route, code class) -> count

    def minus(self, before: Scrape) -> Scrape:
        return Scrape(_delta(self.spills, before.spills), _delta(self.requests, before.requests))


def _delta(after: dict[K, float], before: dict[K, float]) -> dict[K, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}


def scrape(admin: str) -> Scrape | None:
    got = http_get(f"{admin}/metrics")
    if got is None or got[0] != 200:
        return None
    spills: dict[tuple[str, str], float] = {}
    requests: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(got[1].decode()):
        for s in family.samples:
            if s.name == "gslb_spills_total":
                spills[(s.labels["from_region"], s.labels["to_region"])] = s.value
            elif s.name == "gslb_requests_total":
                key = (s.labels["region"], s.labels["route"], s.labels["code"])
                requests[key] = s.value
    return Scrape(spills, requests)


# --------------------------------------------------------------------------------------------
# The run


def load_locustfile() -> ModuleType:
    spec = importlib.util.spec_from_file_location("locustfile", LOCUSTFILE)
    if spec is None or spec.loader is None:
        raise SetupError(f"cannot load {LOCUSTFILE}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class RunResult:
    env: locust.env.Environment
    outcomes: list[Outcome]
    placed: dict[str, int]  # users per city
    elapsed_s: float
    interrupted: bool  # stopped by Ctrl-C before the time was up


def run_locust(lf: ModuleType, args: argparse.Namespace) -> RunResult:
    env = locust.env.Environment(
        user_classes=[lf.ChatUser],
        host=args.host,
        events=locust.events,
        stop_timeout=USER_STOP_TIMEOUT_S,
    )
    runner = env.create_local_runner()
    lf.reseed(args.seed)
    start = time.monotonic()
    runner.start(args.users, spawn_rate=args.spawn_rate)
    interrupted = False
    try:
        deadline = start + args.duration_s
        while (left := deadline - time.monotonic()) > 0:
            gevent.sleep(min(PROGRESS_EVERY_S, left))
            done = lf.TALLY.snapshot()
            failed = sum(not o.ok for o in done)
            print(
                f"  {time.monotonic() - start:5.1f} s  users {runner.user_count:3d}  "
                f"requests {len(done):5d}  failures {failed}",
                flush=True,
            )
    except KeyboardInterrupt:
        # Ctrl-C: a demo in the same terminal is stopping too, so stop the users at once.
        print("interrupted: stopping the users", flush=True)
        interrupted = True
        env.stop_timeout = 0
    finally:
        runner.quit()
    elapsed = time.monotonic() - start
    for exc in runner.exceptions.values():
        print(f"locust user error ({exc['count']}x): {exc['msg']}\n{exc['traceback']}")
    return RunResult(env, lf.TALLY.snapshot(), dict(lf.PLACED), elapsed, interrupted)


# --------------------------------------------------------------------------------------------
# The summary


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values (printed as "-")."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def pcts(values: Sequence[float]) -> str:
    return "".join(f"{ms(percentile(values, q)):>7}" for q in PERCENTILES)


def ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f}"


def share(counts: Counter[str], total: int) -> str:
    if total == 0:
        return "-"
    return " ".join(f"{k} {100 * v / total:.0f}%" for k, v in counts.most_common())


def summarize(
    args: argparse.Namespace, result: RunResult, delta: Scrape | None
) -> tuple[list[str], bool]:
    """The summary's lines and whether the run passed."""
    outcomes = result.outcomes
    total = len(outcomes)
    failed = sum(not o.ok for o in outcomes)
    chat_entries = [e for e in result.env.stats.entries.values() if e.method == "POST"]
    locust_total = sum(e.num_requests for e in chat_entries)
    locust_failed = sum(e.num_failures for e in chat_entries)
    runner = result.env.runner
    user_errors = sum(e["count"] for e in runner.exceptions.values()) if runner else 0
    lines = [
        "",
        f"gslb load test: {args.users} users for {result.elapsed_s:.0f} s against {args.host}"
        f" (seed {args.seed})",
        f"requests: {total} ({total / result.elapsed_s:.1f}/s)   failures: {failed}",
    ]
    if locust_total != total or locust_failed != failed:
        lines.append(f"  (locust counted {locust_total} requests, {locust_failed} failures)")
    if user_errors:
        lines.append(f"  locust user errors: {user_errors}")
    for err in result.env.stats.errors.values():
        lines.append(f"  failure x{err.occurrences}: {err.name}: {err.error}")
    lines += region_lines(outcomes) + spill_lines(outcomes, delta) + ttft_lines(result)

    passed = total > 0 and not failed and not locust_failed and not user_errors
    verdict = "PASS" if passed else "FAIL"
    why = "no failures" if passed else ("no requests ran" if total == 0 else "see failures above")
    if result.interrupted:
        passed, verdict, why = False, "INTERRUPTED", "stopped by Ctrl-C"
    lines += ["", f"result: {verdict} ({why})"]
    return lines, passed


def region_lines(outcomes: Sequence[Outcome]) -> list[str]:
    """The split over serving regions, with what spilled into each and its TTFT."""
    lines = ["", "served by region (X-GSLB-Region)   requests      %   spilled in   TTFT p50 p90"]
    for region, n in Counter(o.region for o in outcomes).most_common():
        mine = [o for o in outcomes if o.region == region]
        spilled_in = sum(o.route == "spill" for o in mine)
        ttft = [o.ttft_ms for o in mine if o.ttft_ms is not None]
        lines.append(
            f"  {region:<32} {n:8d} {100 * n / len(outcomes):6.1f}% {spilled_in:12d}"
            f"   {ms(percentile(ttft, 0.5)):>5} {ms(percentile(ttft, 0.9)):>5}"
        )
    return lines


def spill_lines(outcomes: Sequence[Outcome], delta: Scrape | None) -> list[str]:
    """Routes from the response headers; spills and status classes from gslb's counters."""
    routes = Counter(o.route for o in outcomes)
    lines = ["", "routes (X-GSLB-Route): " + ", ".join(f"{k} {v}" for k, v in routes.most_common())]
    if delta is None:
        return [*lines, "spills: n/a (gslb /metrics did not answer)"]
    lines.append(
        f"spills: {sum(delta.spills.values()):.0f} (gslb_spills_total delta; "
        f"X-GSLB-Route spill: {routes.get('spill', 0)})"
    )
    for (src, dst), n in sorted(delta.spills.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {src} -> {dst}: {n:.0f}")
    codes: Counter[str] = Counter()
    for (_, _, code), n in delta.requests.items():
        codes[code] += int(n)
    answers = ", ".join(f"{k} {v}" for k, v in sorted(codes.items())) or "none"
    lines.append(f"gslb's answers (gslb_requests_total delta): {answers}")
    return lines


def ttft_lines(result: RunResult) -> list[str]:
    """Time to first token overall and per city (busiest first), and whole-request time."""
    outcomes = result.outcomes
    ttft_all = [o.ttft_ms for o in outcomes if o.ttft_ms is not None]
    head = "".join(f"{'p' + format(100 * q, 'g'):>7}" for q in PERCENTILES)
    lines = ["", f"time to first token, ms  users requests{head}   served by"]
    placed = sum(result.placed.values())
    lines.append(f"  {'all':<22} {placed:5d} {len(ttft_all):8d}{pcts(ttft_all)}")
    cities = {o.city for o in outcomes} | set(result.placed)
    for city in sorted(cities, key=lambda c: (-result.placed.get(c, 0), c)):
        mine = [o for o in outcomes if o.city == city]
        ttft = [o.ttft_ms for o in mine if o.ttft_ms is not None]
        served = share(Counter(o.region for o in mine), len(mine))
        users = result.placed.get(city, 0)
        lines.append(f"  {city:<22} {users:5d} {len(ttft):8d}{pcts(ttft)}   {served}")
    whole = [o.total_ms for o in outcomes if o.ok]
    lines.append(f"whole request, ms        {'':5} {len(whole):8d}{pcts(whole)}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    lf = load_locustfile()
    try:
        with demo_running(args) as started:
            print(started or f"using the gslb demo already running at {args.admin}", flush=True)
            before = scrape(args.admin)
            print(
                f"running {args.users} users (spawn {args.spawn_rate:g}/s) for "
                f"{args.duration_s} s against {args.host}",
                flush=True,
            )
            result = run_locust(lf, args)
            after = scrape(args.admin)
    except SetupError as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # while starting or stopping; a run handles its own
        print("loadtest: interrupted", file=sys.stderr)
        return 130
    delta = after.minus(before) if after is not None and before is not None else None
    lines, passed = summarize(args, result, delta)
    print("\n".join(lines), flush=True)
    if result.interrupted:
        return 130
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
