"""Benchmark gslb's proxy path against nginx, side by side, on this machine.

One run measures, with one load generator and one upstream:

1. Throughput (wrk, closed loop, ``-t1 -c64``): ``direct`` (wrk -> upstream nginx), ``nginx``
   (one nginx worker as a reverse proxy with a GeoIP2 lookup on the same mmdb as gslb),
   ``gslb-1w`` and ``gslb-2w`` (``gslb serve --workers 1|2``), and ``aiohttp-bare`` (for
   reference: the least an aiohttp reverse proxy does, no gslb): requests/s, p50 and p99.
2. Added latency at a fixed rate (2,000 req/s unless ``--rate``; ``--rate half-peak`` is half
   of gslb-1w's peak from part 1) from an open-loop client in this process, direct, nginx and
   gslb-1w interleaved: gslb-1w minus nginx, and each proxy minus direct, p50 and p99.
3. SSE relay cost (``sse-relay``): N streams (2,000) of an event every 100 ms from this
   script's own upstream (a raw asyncio server), which stamps each event with the time it
   writes it; direct, nginx (``proxy_buffering off``, the same GeoIP2 lookup) and gslb-1w,
   interleaved rounds: CPU per relayed event, events delivered against the upstream's
   schedule, event delay (the kernel's arrival stamp on the client's socket minus the
   upstream's stamp) p50/p99, and RSS per held stream; the client's own CPU is checked.
4. Concurrent SSE streams through one gslb worker (``gslb fake-region`` upstreams): the worker's
   RSS per stream, and the added time to first byte of new requests while N streams are open.
   N is capped to what the hard open-files limit allows (said so in the output).
5. Worker scaling (``scaling``, on machines with >= 16 CPUs only): 1/2/4/8 nginx workers and
   1/2/4/8 gslb workers on CPUs of their own, wrk and the upstream on others.
6. A py-spy profile of gslb-1w under part 1's load: where its CPU time goes.

The upstream of parts 1, 2, 5 and 6 is nginx returning a fixed JSON body (one worker, in part
5 one per CPU of a quarter of them; no access log); every nginx configuration is rendered from
``benchmarks/nginx/*.conf.tmpl`` into a temporary directory. Every process started here runs in
its own session and is stopped (SIGTERM, then SIGKILL of its process group) when the benchmark
ends, fails or is interrupted.

CPU placement (sched_setaffinity, as ``taskset -c``): the load generator, the upstream and this
script share the last CPU; a one-process proxy under test (nginx, gslb-1w, aiohttp-bare) gets
CPU 0 to itself; gslb-2w may use every CPU on a 2-CPU machine, so its workers share a core
with the load generator. Each run also reports the CPU that processes other than this
benchmark's used meanwhile ("other load"), since a shared machine skews every figure. Every
process started gets its open-files limit raised to the hard limit (or higher where allowed).

    python benchmarks/bench_proxy.py                       # everything, markdown tables
    python benchmarks/bench_proxy.py --parts throughput --duration 5 --json
    python benchmarks/bench_proxy.py --parts sse --sse-streams 1000,5000
    python benchmarks/bench_proxy.py --parts sse-relay --relay-streams 200 --relay-hold 3
    python benchmarks/bench_proxy.py --parts scaling       # on a >= 16-CPU machine

Needs nginx, libnginx-mod-http-geoip2 and wrk (Debian) and, for the profile, py-spy (pip).
Every request goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import importlib.metadata
import importlib.resources
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import string
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO, TypeVar, cast

T = TypeVar("T")

ROOT: Final = Path(__file__).resolve().parent.parent
TEMPLATES: Final = Path(__file__).resolve().parent / "nginx"
HOST: Final = "127.0.0.1"  # the only address any traffic of this benchmark goes to
# A public address the bundled GeoLite2 City (2018) places: Toronto, Canada.
CLIENT_IP: Final = "142.1.0.1"
BODY: Final = '{"object":"list","data":[]}'
GEOIP2_MODULE_DIRS: Final = ("/usr/lib/nginx/modules", "/usr/share/nginx/modules")
PARTS: Final = ("throughput", "latency", "sse-relay", "sse", "scaling", "profile")
THROUGHPUT_TARGETS: Final = ("direct", "nginx", "gslb-1w", "gslb-2w", "aiohttp-bare")
LATENCY_TARGETS: Final = ("direct", "nginx", "gslb-1w")
RELAY_TARGETS: Final = ("direct", "nginx", "gslb-1w")
WARMUP_S: Final = 2
READY_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 10.0
SSE_INTERVAL_MS: Final = 1000
DEFAULT_RATE: Final = 2000.0  # part 2's open-loop rate, requests/s
# Open files wanted by every process here: a proxy holding 10,000 streams needs two per stream.
# Raising the hard limit needs CAP_SYS_RESOURCE; without it the soft limit goes up to the hard.
NOFILE_WANTED: Final = 65536
# Files a process keeps besides its streams: listeners, logs, pools, health checks, samples.
FD_RESERVE: Final = 256
SCALING_MIN_CPUS: Final = 16
PROFILE_RATE_HZ: Final = 200
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")


def note(msg: str) -> None:
    """Progress goes to stderr, so ``--json`` output on stdout stays clean."""
    print(f"[bench_proxy] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024**2, 1)

    def version(argv: Sequence[str], pattern: str) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "missing"
        m = re.search(pattern, out.stdout + out.stderr)
        return m.group(1) if m else "unknown"

    def dist(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "missing"

    spy = _py_spy() or "py-spy"
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": mem_gib,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": dist("aiohttp"),
        "uvloop": dist("uvloop"),
        "nginx": version(["nginx", "-v"], r"nginx/(\S+)"),
        "wrk": version(["wrk", "-v"], r"wrk (\S+)"),
        "py-spy": version([spy, "--version"], r"py-spy (\S+)"),
        "nofile_limit": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }


@dataclass(frozen=True)
class Layout:
    """Which CPUs each role may use."""

    proxy_1w: frozenset[int]
    proxy_2w: frozenset[int]
    harness: frozenset[int]  # load generator, upstream, fake regions and this script
    # The SSE relay upstream, where a CPU is left over: sharing one with the client, the
    # upstream's writes and the client's reads take turns, and every event waits for that.
    relay_upstream: frozenset[int] = frozenset()

    @classmethod
    def for_machine(cls, pin: bool) -> Layout:
        cpus = sorted(os.sched_getaffinity(0))
        every = frozenset(cpus)
        if not pin or len(cpus) < 2:
            return cls(every, every, every, every)
        if len(cpus) < 3:
            return cls(frozenset({cpus[0]}), every, frozenset({cpus[-1]}), frozenset({cpus[-1]}))
        return cls(
            frozenset({cpus[0]}),
            frozenset(cpus[:2]),
            frozenset({cpus[-1]}),
            frozenset({cpus[1]}),  # gslb-2w's second CPU: idle while the relay part runs
        )

    def describe(self) -> dict[str, list[int]]:
        return {k: sorted(v) for k, v in asdict(self).items()}


# --------------------------------------------------------------------------- processes


def raise_nofile() -> int:
    """Lift this process's open-files limit as far as allowed; returns the new soft limit.

    NOFILE_WANTED for soft and hard where the process may raise its hard limit (root with
    CAP_SYS_RESOURCE, up to fs.nr_open); else soft up to the hard limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < NOFILE_WANTED:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE_WANTED, NOFILE_WANTED))
            return NOFILE_WANTED
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return int(soft)


def _child_setup(cpus: frozenset[int] | None) -> Callable[[], None]:
    """Runs in a child before exec: fd limit up to the hard limit (or more), CPU affinity."""

    def setup() -> None:
        raise_nofile()
        if cpus:
            os.sched_setaffinity(0, cpus)

    return setup


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


class Processes:
    """Every process the benchmark starts; ``close()`` stops whatever is still running.

    Each child leads its own session and process group: a terminal's Ctrl-C reaches only this
    script, which then stops the children, and stopping a child's group also stops what it
    started (nginx's worker, gslb's worker processes).
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.children: list[Child] = []

    def start(self, name: str, argv: Sequence[str], cpus: frozenset[int] | None) -> Child:
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
                preexec_fn=_child_setup(cpus),
            )
        child = Child(name, proc, log_path)
        self.children.append(child)
        return child

    def stop(self, child: Child) -> None:
        if child.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
            try:
                child.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                note(f"{child.name} ignored SIGTERM for {STOP_TIMEOUT_S:.0f}s; killing it")
        # Whatever is left of its group (a worker that outlived its master) goes now.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.proc.wait(STOP_TIMEOUT_S)
        if child in self.children:
            self.children.remove(child)

    def close(self) -> None:
        for child in reversed(list(self.children)):
            self.stop(child)

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def running(procs: Processes, child: Child) -> Iterator[Child]:
    try:
        yield child
    finally:
        procs.stop(child)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def http_status(port: int, path: str, timeout: float = 2.0) -> int | None:
    """Status of a GET to 127.0.0.1 (no proxy settings consulted), None if it cannot connect."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"X-Forwarded-For": CLIENT_IP})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def wait_ready(child: Child, port: int, path: str, timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc.poll() is not None:
            code = child.proc.returncode
            raise RuntimeError(f"{child.name} exited with {code}:\n{child.log_tail()}")
        if http_status(port, path) == 200:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{child.name} not ready on :{port}{path} in {timeout:.0f}s")


# --------------------------------------------------------------------------- /proc accounting


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc/PID/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError):
                    kids = Path(f"/proc/{p}/task/{task}/children").read_text().split()
                    todo.extend(int(k) for k in kids)
    return out


def tree_ticks(pid: int) -> dict[int, int]:
    """User + system CPU ticks of each process in a tree."""
    ticks = {}
    for p in process_tree(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks[p] = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks


def cpu_seconds(pid: int) -> float:
    return sum(tree_ticks(pid).values()) / CLK_TCK


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _system_ticks() -> tuple[int, int]:
    """(user + nice + system, steal) ticks of the whole machine, from /proc/stat."""
    f = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return int(f[0]) + int(f[1]) + int(f[2]), int(f[7])


def _reaped_children_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class CpuWindow:
    """CPU use during a window: one process tree's, and that of processes not ours.

    "Other" is the machine's user + system time minus this benchmark's process tree (live
    ones from /proc, exited children such as wrk from RUSAGE_CHILDREN): other jobs on a
    shared machine. Kernel time spent in softirq (loopback delivery) is left out of both.
    """

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid
        self.wall = 0.0
        self.proxy_cores: float | None = None
        self.other_cores = 0.0
        self.steal_cores = 0.0

    def __enter__(self) -> CpuWindow:
        self._t0 = time.monotonic()
        self._sys0 = _system_ticks()
        self._ours0 = tree_ticks(os.getpid())
        self._reaped0 = _reaped_children_s()
        self._proxy0 = cpu_seconds(self.pid) if self.pid else 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.monotonic() - self._t0
        busy1, steal1 = _system_ticks()
        ours1 = tree_ticks(os.getpid())
        ours = sum(t - self._ours0.get(p, 0) for p, t in ours1.items()) / CLK_TCK
        ours += _reaped_children_s() - self._reaped0
        busy = (busy1 - self._sys0[0]) / CLK_TCK
        self.other_cores = round(max(0.0, busy - ours) / self.wall, 2)
        self.steal_cores = round((steal1 - self._sys0[1]) / CLK_TCK / self.wall, 2)
        if self.pid:
            self.proxy_cores = round((cpu_seconds(self.pid) - self._proxy0) / self.wall, 3)


# --------------------------------------------------------------------------- the lab


@dataclass(frozen=True)
class Tools:
    nginx: str
    wrk: str
    geoip2_module: str
    mmdb: str
    py_spy: str | None


def _py_spy() -> str | None:
    return shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))


def find_tools() -> Tools:
    missing = [t for t in ("nginx", "wrk") if shutil.which(t) is None]
    module = next(
        (
            str(Path(d) / "ngx_http_geoip2_module.so")
            for d in GEOIP2_MODULE_DIRS
            if (Path(d) / "ngx_http_geoip2_module.so").exists()
        ),
        None,
    )
    if module is None:
        missing.append("libnginx-mod-http-geoip2")
    if missing or module is None:
        raise SystemExit(
            f"bench_proxy: missing {', '.join(missing)}; "
            "apt-get install -y nginx libnginx-mod-http-geoip2 wrk"
        )
    # The database gslb opens for `database = ""`; nginx is given the very same file.
    mmdb = importlib.resources.files("_maxminddb_geolite2") / "GeoLite2-City.mmdb"
    return Tools(str(shutil.which("nginx")), str(shutil.which("wrk")), module, str(mmdb), _py_spy())


def render(template: str, dest: Path, **values: object) -> Path:
    text = string.Template((TEMPLATES / template).read_text()).substitute(
        {k: str(v) for k, v in values.items()}
    )
    dest.write_text(text)
    return dest


@dataclass(frozen=True)
class Region:
    name: str
    location: tuple[float, float]
    jurisdiction: str
    urls: tuple[str, ...]
    capacity: int = 256


def gslb_config(
    listen: int,
    admin: int,
    mmdb: str,
    regions: Sequence[Region],
    *,
    pool_size: int = 256,
    max_connections: int = 10000,
) -> str:
    """A gslb config: no access log, no load polling, the example's Canada residency rule."""
    lines = [
        "[server]",
        f'listen = "{HOST}:{listen}"',
        f'admin_listen = "{HOST}:{admin}"',
        f"max_connections = {max_connections}",
        "shutdown_grace_s = 2",
        "",
        "[geoip]",
        f"database = {json.dumps(mmdb)}",
        'trusted_proxies = ["127.0.0.0/8", "::1/128"]',
        'edge_country = "US"',
        "",
        "[health]",
        'path = "/health"',
        "",
        "[load]",
        'kind = "none"',
        "",
        "[proxy]",
        f"pool_size_per_endpoint = {pool_size}",
        "",
        "[log]",
        'access = "off"',
        'level = "warning"',
        "",
        "[[residency]]",
        'name = "canada"',
        'countries = ["CA"]',
        'allow_jurisdictions = ["CA"]',
    ]
    for r in regions:
        lines += [
            "",
            "[[regions]]",
            f'name = "{r.name}"',
            f"location = [{r.location[0]}, {r.location[1]}]",
            'provider = "bench"',
            f'jurisdiction = "{r.jurisdiction}"',
            f"capacity = {r.capacity}",
        ]
        for url in r.urls:
            lines += ["  [[regions.endpoints]]", f'  url = "{url}"']
    return "\n".join(lines) + "\n"


def start_gslb(
    procs: Processes,
    workdir: Path,
    name: str,
    config: Callable[[int, int], str],
    workers: int,
    cpus: frozenset[int],
) -> tuple[Child, int]:
    """``gslb serve`` with ``config(listen, admin)``; returns once /readyz answers 200."""
    listen, admin = free_port(), free_port()
    path = workdir / f"{name}.toml"
    path.write_text(config(listen, admin))
    argv = [sys.executable, "-m", "gslb", "--log-level", "warning", "serve"]
    child = procs.start(name, [*argv, "--config", str(path), "--workers", str(workers)], cpus)
    wait_ready(child, admin, "/readyz")
    return child, listen


@dataclass(frozen=True)
class Target:
    name: str
    port: int
    child: Child | None  # None for "direct": the upstream itself, not a proxy


def nginx_common(workdir: Path) -> dict[str, object]:
    """Template values every nginx configuration here shares."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "dir": workdir,
        "user": "user root;" if os.geteuid() == 0 else "",
        "nofile": hard,
        "worker_connections": max(1024, hard // 2 - 64),
    }


def start_nginx(
    procs: Processes, tools: Tools, name: str, conf: Path, cpus: frozenset[int]
) -> Child:
    workdir = procs.workdir
    argv = [tools.nginx, "-p", str(workdir)]
    argv += ["-e", str(workdir / f"{name}-startup.log"), "-c", str(conf)]
    return procs.start(name, [*argv, "-g", "daemon off;"], cpus)


# The SSE relay part's nginx: the proxy configuration of parts 1 and 2 plus what an SSE
# deployment sets, so that each event goes on as it arrives and idle streams stay open.
SSE_LOCATION: Final = "            proxy_buffering off;\n            proxy_read_timeout 1h;"


def render_nginx_proxy(
    tools: Tools,
    workdir: Path,
    name: str,
    port: int,
    upstream_port: int,
    *,
    workers: int = 1,
    location_extra: str = "",
) -> Path:
    """``proxy.conf.tmpl`` for one nginx reverse proxy, written to ``workdir/NAME.conf``."""
    return render(
        "proxy.conf.tmpl",
        workdir / f"{name}.conf",
        name=name,
        workers=workers,
        geoip2_module=tools.geoip2_module,
        mmdb=tools.mmdb,
        upstream_port=upstream_port,
        port=port,
        location_extra=location_extra,
        **nginx_common(workdir),
    )


_PROXY_NAME: Final = re.compile(r"(nginx|gslb)(?:-(\d+)w)?")


def proxy_kind(name: str) -> tuple[str, int] | None:
    """``("nginx", 1)`` for "nginx", ``("gslb", 4)`` for "gslb-4w"; None for other names."""
    m = _PROXY_NAME.fullmatch(name)
    if m is None or (m.group(1) == "gslb" and m.group(2) is None):
        return None
    return m.group(1), int(m.group(2) or 1)


class Lab:
    """The upstream nginx, plus proxies in front of it, each started on first use.

    The upstream listens on four ports (one process, ``upstream_workers`` workers, the same
    answer), one per region of gslb's fleet; a Toronto client may only use ca-central (Canada
    residency), the port every proxy forwards to. Proxies are named "nginx" (one worker),
    "nginx-Nw", "gslb-Nw" and "aiohttp-bare"; ``cpus_of`` places them (default: the layout's).
    """

    FLEET: Final = (
        ("ca-central", (45.50, -73.57), "CA"),
        ("us-east", (38.95, -77.45), "US"),
        ("eu-west", (53.35, -6.26), "IE"),
        ("ap-southeast", (1.35, 103.82), "SG"),
    )

    def __init__(
        self,
        procs: Processes,
        tools: Tools,
        workdir: Path,
        layout: Layout,
        *,
        upstream_workers: int = 1,
        upstream_cpus: frozenset[int] | None = None,
        cpus_of: Callable[[str], frozenset[int]] | None = None,
    ) -> None:
        self.procs = procs
        self.tools = tools
        self.workdir = workdir
        self.layout = layout
        self.cpus_of = cpus_of
        self.ports = [free_port() for _ in self.FLEET]
        listen = "\n".join(f"        listen {HOST}:{p};" for p in self.ports)
        conf = render(
            "upstream.conf.tmpl",
            workdir / "upstream.conf",
            listen=listen,
            body=BODY,
            workers=upstream_workers,
            **nginx_common(workdir),
        )
        cpus = upstream_cpus or layout.harness
        self.upstream = start_nginx(procs, tools, "upstream", conf, cpus)
        for p in self.ports:
            wait_ready(self.upstream, p, "/health")
        self.targets: dict[str, Target] = {"direct": Target("direct", self.ports[0], None)}

    def cpus(self, name: str) -> frozenset[int]:
        if self.cpus_of is not None:
            return self.cpus_of(name)
        return self.layout.proxy_2w if name == "gslb-2w" else self.layout.proxy_1w

    def get(self, name: str) -> Target:
        if name not in self.targets:
            self.targets[name] = self._start(name)
        return self.targets[name]

    def stop(self, *names: str) -> None:
        for name in names:
            target = self.targets.pop(name, None)
            if target is not None and target.child is not None:
                self.procs.stop(target.child)

    def _start(self, name: str) -> Target:
        port = free_port()
        if name == "aiohttp-bare":
            argv = [sys.executable, str(Path(__file__).resolve()), "--serve-bare-proxy"]
            argv += [str(port), str(self.ports[0])]
            child = self.procs.start(name, argv, self.cpus(name))
            wait_ready(child, port, "/")
            return Target(name, port, child)
        kind = proxy_kind(name)
        if kind is None:
            raise ValueError(f"unknown target {name}")
        software, workers = kind
        if software == "nginx":
            child_name = "nginx-proxy" if name == "nginx" else name
            conf = render_nginx_proxy(
                self.tools, self.workdir, child_name, port, self.ports[0], workers=workers
            )
            child = start_nginx(self.procs, self.tools, child_name, conf, self.cpus(name))
            wait_ready(child, port, "/")
            return Target(name, port, child)
        fleet = [
            Region(rname, loc, jur, (f"http://{HOST}:{p}",))
            for (rname, loc, jur), p in zip(self.FLEET, self.ports, strict=True)
        ]
        mmdb = self.tools.mmdb
        child, port = start_gslb(
            self.procs,
            self.workdir,
            name,
            lambda listen, admin: gslb_config(listen, admin, mmdb, fleet),
            workers,
            self.cpus(name),
        )
        return Target(name, port, child)


def serve_bare_proxy(listen: int, upstream: int) -> None:
    """The ``aiohttp-bare`` reference: the least an aiohttp reverse proxy does (not gslb).

    One process, uvloop, one pooled ClientSession; per request: forward method, path and
    X-Forwarded-For, read the whole upstream body, answer with its status and content type.
    """
    import aiohttp
    import uvloop
    from aiohttp import web

    base = f"http://{HOST}:{upstream}"
    key = web.AppKey("session", aiohttp.ClientSession)

    async def handle(request: web.Request) -> web.Response:
        session = request.app[key]
        xff = request.headers.get("X-Forwarded-For")
        peer = request.remote or ""
        headers = {"X-Forwarded-For": f"{xff}, {peer}" if xff else peer}
        async with session.request(request.method, base + request.raw_path, headers=headers) as up:
            body = await up.read()
            return web.Response(body=body, status=up.status, content_type=up.content_type)

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=256)
        app[key] = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        yield
        await app[key].close()

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", handle)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(app, host=HOST, port=listen, access_log=None, print=None)


# --------------------------------------------------------------------------- part 1: wrk


@dataclass
class WrkResult:
    target: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: int
    proxy_cpu: float | None = None  # cores the proxy used: CPU seconds / wall seconds
    other_cpu: float = 0.0  # cores that processes other than this benchmark's used
    steal_cpu: float = 0.0  # cores the hypervisor took from this machine

    @property
    def rps_per_core(self) -> float | None:
        return round(self.rps / self.proxy_cpu) if self.proxy_cpu else None


_UNITS_MS: Final = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _wrk_ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", value)
    if m is None:
        raise ValueError(f"unparsable wrk latency {value!r}")
    return float(m.group(1)) * _UNITS_MS[m.group(2)]


def parse_wrk(target: str, out: str) -> WrkResult:
    """Requests/s and the --latency percentiles from wrk's text output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    total = re.search(r"(\d+) requests in", out)
    if not (rps and p50 and p99 and total):
        raise RuntimeError(f"cannot parse wrk output for {target}:\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return WrkResult(
        target=target,
        rps=float(rps.group(1)),
        p50_ms=_wrk_ms(p50.group(1)),
        p99_ms=_wrk_ms(p99.group(1)),
        requests=int(total.group(1)),
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
        socket_errors=sum(int(g) for g in sock.groups()) if sock else 0,
    )


def wrk_argv(
    tools: Tools,
    port: int,
    duration: float,
    connections: int,
    latency: bool = True,
    threads: int = 1,
) -> list[str]:
    argv = [tools.wrk, f"-t{threads}", f"-c{connections}", f"-d{duration:g}s"]
    argv += ["--latency"] if latency else []
    return [*argv, "-H", f"X-Forwarded-For: {CLIENT_IP}", f"http://{HOST}:{port}/"]


def run_wrk(
    tools: Tools,
    target: Target,
    duration: float,
    connections: int,
    layout: Layout,
    *,
    threads: int = 1,
    cpus: frozenset[int] | None = None,
) -> WrkResult:
    """wrk against ``target`` on ``cpus`` (default: the harness CPU), the proxy's CPU measured."""
    with CpuWindow(target.child.pid if target.child else None) as window:
        out = subprocess.run(
            wrk_argv(tools, target.port, duration, connections, threads=threads),
            capture_output=True,
            text=True,
            timeout=duration + 60,
            preexec_fn=_child_setup(cpus or layout.harness),
        )
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr}")
    result = parse_wrk(target.name, out.stdout)
    result.proxy_cpu = window.proxy_cores
    result.other_cpu = window.other_cores
    result.steal_cpu = window.steal_cores
    return result


def measure_wrk(lab: Lab, name: str, args: argparse.Namespace) -> WrkResult:
    target = lab.get(name)
    run_wrk(lab.tools, target, WARMUP_S, args.connections, lab.layout)  # pools, caches
    result = run_wrk(lab.tools, target, args.duration, args.connections, lab.layout)
    cpu = f", proxy {result.proxy_cpu:.2f} cores" if result.proxy_cpu is not None else ""
    note(
        f"{name}: {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms"
        f"{cpu}, other load {result.other_cpu:.2f} cores"
    )
    if result.non_2xx or result.socket_errors:
        note(f"{name}: {result.non_2xx} non-2xx responses, {result.socket_errors} socket errors")
    return result


def _median_row(rows: Sequence[T], keys: Sequence[str]) -> T:
    """The first row with each of ``keys`` replaced by its median over ``rows``."""
    first = rows[0]
    values = {k: statistics.median(getattr(r, k) for r in rows) for k in keys}
    return type(first)(**{**asdict(cast(Any, first)), **values})


def part_throughput(lab: Lab, args: argparse.Namespace) -> dict[str, Any]:
    """Every target, ``--repeats`` rounds interleaved; the table shows per-target medians."""
    runs: dict[str, list[WrkResult]] = {name: [] for name in THROUGHPUT_TARGETS}
    for _ in range(args.repeats):
        for name in THROUGHPUT_TARGETS:
            runs[name].append(measure_wrk(lab, name, args))
    keys = ("rps", "p50_ms", "p99_ms", "proxy_cpu", "other_cpu", "steal_cpu")
    rows = [_median_row(rs, keys) if len(rs) > 1 else rs[0] for rs in (runs[n] for n in runs)]
    return {
        "rows": [{**asdict(r), "rps_per_core": r.rps_per_core} for r in rows],
        "ratios": throughput_ratios(rows),
        "runs": {n: [asdict(r) for r in rs] for n, rs in runs.items()} if args.repeats > 1 else {},
    }


def throughput_ratios(results: Sequence[WrkResult]) -> dict[str, dict[str, float | None]]:
    by = {r.target: r for r in results}
    nginx = by.get("nginx")
    out: dict[str, dict[str, float | None]] = {}
    if nginx is None:
        return out
    for name in ("gslb-1w", "gslb-2w", "aiohttp-bare"):
        r = by.get(name)
        if r is None:
            continue
        mine, theirs = r.rps_per_core, nginx.rps_per_core
        out[name] = {
            "rps_ratio": round(r.rps / nginx.rps, 3),
            "p99_ratio": round(r.p99_ms / nginx.p99_ms, 2) if nginx.p99_ms else None,
            "rps_per_core_ratio": round(mine / theirs, 3) if mine and theirs else None,
        }
    return out


# --------------------------------------------------------------------------- part 2: fixed rate


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    k = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


class _HttpConn(asyncio.Protocol):
    """One keep-alive client connection with at most one request outstanding."""

    def __init__(self, client: OpenLoopClient) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.sent_at = 0.0
        self.need = -1  # body bytes still expected after the headers; -1 while reading headers
        self.status = 0
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def send(self, request: bytes) -> None:
        assert self.transport is not None
        self.busy = True
        self.sent_at = time.perf_counter()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.need < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).decode("latin-1")
            self.status = int(head[9:12])
            m = re.search(r"(?im)^content-length:\s*(\d+)", head)
            if m is None:
                raise RuntimeError("the benchmark client needs Content-Length responses")
            del self.buf[: end + 4]
            self.need = int(m.group(1))
        if len(self.buf) >= self.need:
            latency = time.perf_counter() - self.sent_at
            del self.buf[: self.need]
            self.need = -1
            self.busy = False
            self.client.done(self, latency, self.status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.lost(self)


@dataclass
class RateResult:
    target: str
    rate: float
    achieved_rate: float
    requests: int
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    pacer_lag_p99_ms: float
    connections: int
    proxy_cpu: float | None = None
    other_cpu: float = 0.0
    steal_cpu: float = 0.0


class OpenLoopClient:
    """Sends ``GET /`` at a fixed rate whether or not earlier responses came back.

    Requests leave on schedule (the pacer wakes about every millisecond and sends every request
    that is due) on an idle keep-alive connection, or on a new one when all are busy, so a
    slow response never holds back the next request (no coordinated omission). Latency runs
    from the write to the last body byte; the pacer's lateness against the schedule is
    reported on its own.
    """

    def __init__(self, port: int, connections: int) -> None:
        self.port = port
        self.initial = connections
        self.request = (
            f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\nX-Forwarded-For: {CLIENT_IP}\r\n\r\n"
        ).encode()
        self.idle: deque[_HttpConn] = deque()
        self.conns: set[_HttpConn] = set()
        self.latencies: list[float] = []
        self.errors = 0
        self.recording = False
        self.outstanding = 0
        self.opened = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def _connect(self) -> _HttpConn:
        loop = asyncio.get_running_loop()
        _t, conn = await loop.create_connection(lambda: _HttpConn(self), HOST, self.port)
        self.conns.add(conn)
        self.opened += 1
        return conn

    def done(self, conn: _HttpConn, latency: float, status: int) -> None:
        self.outstanding -= 1
        if self.recording:
            if status == 200:
                self.latencies.append(latency)
            else:
                self.errors += 1
        self.idle.append(conn)

    def lost(self, conn: _HttpConn) -> None:
        self.conns.discard(conn)
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)
        if conn.busy:
            self.outstanding -= 1
            if self.recording:
                self.errors += 1

    def _dispatch(self) -> None:
        self.outstanding += 1
        while self.idle:
            conn = self.idle.popleft()
            if conn.transport is not None and not conn.transport.is_closing():
                conn.send(self.request)
                return

        async def fresh() -> None:
            try:
                conn = await self._connect()
            except OSError:
                self.outstanding -= 1
                if self.recording:
                    self.errors += 1
                return
            conn.send(self.request)

        task = asyncio.create_task(fresh())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pace(self, rate: float, duration: float) -> list[float]:
        interval = 1.0 / rate
        total = int(rate * duration)
        lags: list[float] = []
        start = time.perf_counter()
        n = 0
        while n < total:
            now = time.perf_counter()
            due = start + n * interval
            while due <= now and n < total:
                lags.append(now - due)
                self._dispatch()
                n += 1
                due = start + n * interval
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
        return lags

    async def _drain(self, timeout: float = 10.0) -> None:
        deadline = time.perf_counter() + timeout
        while self.outstanding > 0 and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)

    async def run(self, target: Target, rate: float, duration: float) -> RateResult:
        for _ in range(self.initial):
            self.idle.append(await self._connect())
        await self._pace(rate, WARMUP_S)
        await self._drain()
        self.recording = True
        with CpuWindow(target.child.pid if target.child else None) as window:
            lags = await self._pace(rate, duration)
            await self._drain()
        self.recording = False
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.close()
        lat = sorted(self.latencies)
        lags.sort()
        ms = 1e3
        return RateResult(
            target=target.name,
            rate=round(rate, 1),
            achieved_rate=round(len(lat) / window.wall, 1),
            requests=len(lat),
            errors=self.errors,
            p50_ms=round(percentile(lat, 50) * ms, 3),
            p90_ms=round(percentile(lat, 90) * ms, 3),
            p99_ms=round(percentile(lat, 99) * ms, 3),
            p999_ms=round(percentile(lat, 99.9) * ms, 3),
            max_ms=round((lat[-1] if lat else 0.0) * ms, 3),
            pacer_lag_p99_ms=round(percentile(lags, 99) * ms, 3),
            connections=self.opened,
            proxy_cpu=window.proxy_cores,
            other_cpu=window.other_cores,
            steal_cpu=window.steal_cores,
        )


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is one of gslb's dependencies
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(coro)


def measure_rate(lab: Lab, name: str, rate: float, args: argparse.Namespace) -> RateResult:
    client = OpenLoopClient(lab.get(name).port, args.connections)
    result = run_async(client.run(lab.get(name), rate, args.duration))
    note(
        f"{name} at {rate:,.0f}/s: p50 {result.p50_ms:.3f} ms, p99 {result.p99_ms:.3f} ms, "
        f"errors {result.errors}, pacer lag p99 {result.pacer_lag_p99_ms:.3f} ms, "
        f"other load {result.other_cpu:.2f} cores"
    )
    return result


def latency_rate(args: argparse.Namespace, peak: float | None) -> tuple[float, str]:
    """Part 2's rate and how it was chosen: ``--rate N`` (2,000 by default) or half-peak."""
    if args.rate != "half-peak":
        return float(args.rate), "fixed"
    if peak is None:
        raise ValueError("half-peak needs gslb-1w's peak")
    return peak / 2, "half of gslb-1w's peak"


def _differences(a: RateResult, b: RateResult) -> dict[str, float]:
    return {
        "p50_ms": round(a.p50_ms - b.p50_ms, 3),
        "p99_ms": round(a.p99_ms - b.p99_ms, 3),
    }


def _medians(runs: Sequence[dict[str, float]]) -> dict[str, float]:
    return {k: round(statistics.median(r[k] for r in runs), 3) for k in ("p50_ms", "p99_ms")}


def part_latency(lab: Lab, args: argparse.Namespace, peak: float | None) -> dict[str, Any]:
    """Open-loop latency at one rate: direct, nginx and gslb-1w, ``--latency-repeats`` rounds.

    Each round runs the three back to back, so that a slow spell of a shared machine lands on
    one round of all three rather than on one target; differences are taken within a round
    and the median over rounds is reported.
    """
    if args.rate == "half-peak" and peak is None:
        note("no gslb-1w peak measured yet; measuring it first")
        peak = measure_wrk(lab, "gslb-1w", args).rps
    rate, rate_mode = latency_rate(args, peak)
    rows: list[RateResult] = []
    added: dict[str, list[dict[str, float]]] = {"nginx": [], "gslb-1w": []}
    vs_nginx: list[dict[str, float]] = []
    for _ in range(args.latency_repeats):
        by = {name: measure_rate(lab, name, rate, args) for name in LATENCY_TARGETS}
        rows.extend(by.values())
        for name, runs in added.items():
            runs.append(_differences(by[name], by["direct"]))
        vs_nginx.append(_differences(by["gslb-1w"], by["nginx"]))
    return {
        "rate": round(rate, 1),
        "rate_mode": rate_mode,
        "rows": [asdict(r) for r in rows],
        "added_runs": added,
        "added": {name: _medians(runs) for name, runs in added.items()},
        "vs_nginx_runs": vs_nginx,
        "vs_nginx": _medians(vs_nginx),
    }


# --------------------------------------------------------------------------- part 3: SSE relay

RELAY_RESPONSE_HEAD: Final = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
RELAY_OK: Final = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n"
    b'{"status":"ok"}'
)
RELAY_WARM_STREAMS: Final = 8
RELAY_SETTLE_S: Final = 2.0  # after the last stream opened, before the window: rhythms settle
RELAY_GRACE_S: Final = 1.0  # after the window, for its last events to arrive
NEVER: Final = 2**63 - 1


def relay_event(seq: int, due_ns: int, sent_ns: int) -> bytes:
    """One event of the relay upstream as one HTTP/1.1 chunk.

    ``data: SEQ DUE SENT``: the event's number on its stream, when the upstream's schedule
    wanted it out, and when it was written, in CLOCK_REALTIME ns: the clock the kernel stamps
    socket arrivals with (SO_TIMESTAMPNS), shared by every process on this machine. The client
    times the delay from SENT and counts events by DUE.
    """
    payload = b"data: %d %d %d\n\n" % (seq, due_ns, sent_ns)
    return b"%x\r\n%b\r\n" % (len(payload), payload)


class _RelaySource(asyncio.Protocol):
    """One upstream connection: plain requests are answered at once (keep-alive); a request
    for ``/sse`` turns the connection into an endless event stream."""

    def __init__(self, upstream: RelayUpstream) -> None:
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.streaming = False
        self.seq = 0
        self.due_ns = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self.streaming:
            return  # nothing more is expected on a stream; a proxy sends nothing else
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            line = bytes(self.buf[: self.buf.find(b"\r\n")])
            del self.buf[: end + 4]
            assert self.transport is not None
            if line.split(b" ")[1:2] == [b"/sse"]:
                self.streaming = True
                self.transport.write(RELAY_RESPONSE_HEAD)
                self.upstream.begin(self)
                return
            self.transport.write(RELAY_OK)


class RelayUpstream:
    """Every stream's events on one schedule: stream j's event k is due at open_j + k * I.

    The streams wait in one queue in order of their next due time: a stream enters at the
    tail when its first event goes out (at once, on the request), so with one interval for all
    the queue stays ordered without a heap. One task wakes when the head is due and writes
    every event that is due (late ones too: the schedule never slips, so the client can tell
    how many events each stream should have had).
    """

    def __init__(self, interval_ns: int) -> None:
        self.interval_ns = interval_ns
        self.queue: deque[_RelaySource] = deque()

    def begin(self, source: _RelaySource) -> None:
        source.due_ns = time.time_ns()
        self._send(source, source.due_ns)
        self.queue.append(source)

    def _send(self, source: _RelaySource, now_ns: int) -> None:
        assert source.transport is not None
        source.transport.write(relay_event(source.seq, source.due_ns, now_ns))
        source.seq += 1
        source.due_ns += self.interval_ns

    async def run(self) -> None:
        queue = self.queue
        while True:
            now = time.time_ns()
            while queue and queue[0].due_ns <= now:
                source = queue.popleft()
                transport = source.transport
                if transport is None or transport.is_closing():
                    continue  # its client went away
                self._send(source, time.time_ns())
                queue.append(source)
            wait = (queue[0].due_ns - time.time_ns()) / 1e9 if queue else 0.01
            await asyncio.sleep(max(0.0, wait))


def serve_relay_upstream(port: int, interval_ms: float) -> None:
    """The SSE relay part's upstream: a raw asyncio server on 127.0.0.1:``port`` (uvloop)."""

    async def main() -> None:
        upstream = RelayUpstream(round(interval_ms * 1e6))
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _RelaySource(upstream), HOST, port, backlog=4096, reuse_address=True
        )
        async with server:
            await upstream.run()

    with contextlib.suppress(KeyboardInterrupt):
        run_async(main())


@dataclass
class RelayWindow:
    """The measured window every stream's parser reads on each event (CLOCK_REALTIME ns).

    Mutable on purpose: the streams are opened first, then the window is set once, just ahead
    of its start. Events the upstream scheduled within [t0_ns, t1_ns) are the ones counted,
    and their delays collected: arrival in the client's socket (the kernel's stamp) minus the
    upstream's write stamp, and, for reference, the same up to the client's read, which adds
    the client's own scheduling.
    """

    interval_ns: int
    t0_ns: int = NEVER
    t1_ns: int = NEVER
    delays_ns: list[int] = field(default_factory=list)
    read_delays_ns: list[int] = field(default_factory=list)
    upstream_lag_ns: list[int] = field(default_factory=list)  # write stamp minus due time


class SseEventParser:
    """One stream's response as it arrives: status, chunked framing, then SSE events.

    Events are ``data: SEQ DUE SENT`` (see ``relay_event``); a proxy may regroup the chunks
    (several events in one, one split over several) and reads may split anything anywhere.
    An event whose data line is not three integers counts in ``bad``.
    """

    def __init__(self, window: RelayWindow) -> None:
        self.window = window
        self.status = 0  # 0 until the response head is in
        self.events = 0  # every event
        self.in_window = 0  # events due within the window
        self.bad = 0
        self.origin_ns: int | None = None  # when this stream's event 0 was due
        self.ended = False  # the last chunk came
        self._head = bytearray()
        self._chunked = False
        self._chunk_left = 0  # data bytes left in the current chunk
        self._crlf_left = 0  # bytes of the CRLF after a chunk's data still to skip
        self._size_line = b""  # a chunk-size line split across reads
        self._text = b""  # an event split across chunks or reads

    def feed(self, data: bytes, arrived_ns: int, read_ns: int) -> None:
        """``data`` as read at ``read_ns``, the kernel having received it at ``arrived_ns``."""
        if not self.status:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._head[:end]).lower()
            data = bytes(self._head[end + 4 :])
            self._head = bytearray()
            self.status = int(head[9:12])
            self._chunked = b"\r\ntransfer-encoding: chunked" in head
        if self._chunked:
            data = self._dechunk(data)
        if data:
            self._events(data, arrived_ns, read_ns)

    def _dechunk(self, data: bytes) -> bytes:
        if self._size_line:
            data, self._size_line = self._size_line + data, b""
        out: list[bytes] = []
        i, n = 0, len(data)
        while i < n and not self.ended:
            if self._chunk_left:
                take = min(self._chunk_left, n - i)
                out.append(data[i : i + take])
                i += take
                self._chunk_left -= take
                if not self._chunk_left:
                    self._crlf_left = 2
            elif self._crlf_left:
                skip = min(self._crlf_left, n - i)
                i += skip
                self._crlf_left -= skip
            else:
                end = data.find(b"\r\n", i)
                if end < 0:
                    self._size_line = data[i:]
                    break
                size = int(data[i:end].split(b";", 1)[0], 16)
                i = end + 2
                if size == 0:
                    self.ended = True
                self._chunk_left = size
        return out[0] if len(out) == 1 else b"".join(out)

    def _events(self, data: bytes, arrived_ns: int, read_ns: int) -> None:
        if self._text:
            data, self._text = self._text + data, b""
        start = 0
        while (end := data.find(b"\n\n", start)) >= 0:
            self._event(data[start:end], arrived_ns, read_ns)
            start = end + 2
        if start < len(data):
            self._text = data[start:]

    def _event(self, block: bytes, arrived_ns: int, read_ns: int) -> None:
        at = block.find(b"data: ")
        fields = block[at + 6 :].split(b"\n", 1)[0].split() if at >= 0 else []
        try:
            seq, due, sent = (int(f) for f in fields)
        except ValueError:  # not three integers
            self.bad += 1
            return
        self.events += 1
        w = self.window
        if self.origin_ns is None:
            self.origin_ns = due - seq * w.interval_ns
        if w.t0_ns <= due < w.t1_ns:
            self.in_window += 1
            w.delays_ns.append(arrived_ns - sent)
            w.read_delays_ns.append(read_ns - sent)
            w.upstream_lag_ns.append(sent - due)

    def expected(self) -> int:
        """Events of this stream the upstream scheduled within the window.

        From the stream's own schedule (event 0's due time, known from any event that came);
        a stream none of whose events came is taken to have been due the window's share.
        """
        w = self.window
        if w.t0_ns == NEVER:
            return 0
        if self.origin_ns is None:
            return (w.t1_ns - w.t0_ns) // w.interval_ns

        def due_before(t: int) -> int:  # events k >= 0 with origin + k * I < t
            return max(0, -((self.origin_ns - t) // w.interval_ns))  # type: ignore[operator]

        return due_before(w.t1_ns) - due_before(w.t0_ns)


SO_TIMESTAMPNS: Final = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python names it in 3.13
_TIMESPEC: Final = struct.Struct("@qq")
_CMSG_SPACE: Final = socket.CMSG_SPACE(_TIMESPEC.size)


class _RelayStream:
    """One client connection of the SSE relay part: a request, then the parser on every read.

    A plain non-blocking socket read with ``recvmsg`` rather than a Protocol: the kernel's
    receive stamp (SO_TIMESTAMPNS, of the last segment a read takes in) comes with the data,
    so the delay measured is the proxy's, not how long this process took to get to the read.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, window: RelayWindow):
        self.loop = loop
        self.sock = sock
        self.parser = SseEventParser(window)
        self.status: asyncio.Future[int] = loop.create_future()  # 0: closed before a response
        self.lost = False
        self.closed = False

    def readable(self) -> None:
        try:
            data, ancillary, _flags, _addr = self.sock.recvmsg(65536, _CMSG_SPACE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, ancillary = b"", []
        read_ns = time.time_ns()
        if not data:
            self._lost()
            return
        arrived_ns = read_ns
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = _TIMESPEC.unpack(value[: _TIMESPEC.size])
                arrived_ns = sec * 1_000_000_000 + nsec
        parser = self.parser
        parser.feed(data, arrived_ns, read_ns)
        if parser.status and not self.status.done():
            self.status.set_result(parser.status)

    def _lost(self) -> None:
        self.lost = True
        if not self.status.done():
            self.status.set_result(0)
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()


async def open_relay_stream(port: int, window: RelayWindow, timeout: float) -> _RelayStream:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    stream = _RelayStream(loop, sock, window)
    try:
        await loop.sock_connect(sock, (HOST, port))
        await loop.sock_sendall(sock, _sse_request(port, "/sse", close=False))
        loop.add_reader(sock.fileno(), stream.readable)
        status = await asyncio.wait_for(asyncio.shield(stream.status), timeout)
    except BaseException:
        stream.close()
        raise
    if status != 200:
        stream.close()
        raise ConnectionError(f"HTTP {status}" if status else "closed before a response")
    return stream


def tree_rss_kib(pid: int) -> int:
    """RSS of a process and its descendants (nginx's master and worker, gslb's workers)."""
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            total += rss_kib(p)
    return total


def tree_fds(pid: int) -> int:
    total = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            total += open_fds(p)
    return total


def _self_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def _loop_lag(samples: list[float], period: float = 0.01) -> None:
    """How late this process's event loop wakes: a busy client reads events late."""
    while True:
        t0 = time.perf_counter()
        await asyncio.sleep(period)
        samples.append(time.perf_counter() - t0 - period)


@dataclass
class RelayResult:
    target: str
    round: int
    streams: int
    opened: int
    failed: int
    failures: dict[str, int]
    still_open: int
    open_s: float
    window_s: float
    events_expected: int
    events_delivered: int
    delivered_pct: float
    events_per_s: float
    bad_events: int
    delay_p50_ms: float
    delay_p99_ms: float
    delay_p999_ms: float
    delay_max_ms: float
    read_delay_p50_ms: float  # the same, up to this process's read: its scheduling included
    read_delay_p99_ms: float
    upstream_lag_p99_ms: float  # the upstream's write stamp minus the event's due time
    client_cpu: float  # cores this process (the client) used in the window
    upstream_cpu: float
    client_lag_p99_ms: float
    other_cpu: float
    proxy_cpu: float | None = None  # cores, None for direct
    cpu_us_per_event: float | None = None
    rss_idle_mib: float | None = None
    rss_streams_mib: float | None = None
    kib_per_stream: float | None = None
    proxy_fds: int | None = None


def _ns_ms(sorted_ns: Sequence[int], q: float) -> float:
    return round(percentile(sorted_ns, q) / 1e6, 3)


async def _open_relay_streams(
    port: int, window: RelayWindow, n: int, concurrency: int
) -> tuple[list[_RelayStream], Counter[str], float]:
    sem = asyncio.Semaphore(concurrency)
    streams: list[_RelayStream] = []
    failures: Counter[str] = Counter()

    async def one() -> None:
        async with sem:
            try:
                streams.append(await open_relay_stream(port, window, timeout=60))
            except (OSError, TimeoutError) as exc:
                failures[type(exc).__name__ + (f": {exc}" if str(exc) else "")] += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return streams, failures, time.perf_counter() - t0


async def relay_round(
    target: Target, upstream: Child, n: int, rnd: int, args: argparse.Namespace
) -> RelayResult:
    """N streams through ``target``; counts, delays and CPU over ``--relay-hold`` seconds."""
    interval_ns = round(1e9 / args.relay_rate)
    proxy = target.child
    # A few streams first, so that pools and lazily built state are not charged per stream.
    warm, _f, _s = await _open_relay_streams(
        target.port, RelayWindow(interval_ns), RELAY_WARM_STREAMS, RELAY_WARM_STREAMS
    )
    await asyncio.sleep(0.5)
    for s in warm:
        s.close()
    await asyncio.sleep(0.5)
    rss0 = tree_rss_kib(proxy.pid) if proxy else 0
    window = RelayWindow(interval_ns)
    streams, failures, open_s = await _open_relay_streams(
        target.port, window, n, args.sse_open_concurrency
    )
    note(f"relay {target.name} {n}: {len(streams)} open in {open_s:.1f}s")
    lags: list[float] = []
    lag_task = asyncio.create_task(_loop_lag(lags))
    try:
        t0 = time.time_ns() + round(RELAY_SETTLE_S * 1e9)
        window.t0_ns, window.t1_ns = t0, t0 + round(args.relay_hold * 1e9)
        await asyncio.sleep((t0 - time.time_ns()) / 1e9)
        up0, me0 = cpu_seconds(upstream.pid), _self_cpu_s()
        with CpuWindow(proxy.pid if proxy else None) as cpu:
            await asyncio.sleep(max(0.0, (window.t1_ns - time.time_ns()) / 1e9))
        up1, me1 = cpu_seconds(upstream.pid), _self_cpu_s()
        rss1 = tree_rss_kib(proxy.pid) if proxy else 0
        fds = tree_fds(proxy.pid) if proxy else None
        still_open = sum(1 for s in streams if not s.lost)
        await asyncio.sleep(RELAY_GRACE_S)
    finally:
        lag_task.cancel()
        for s in streams:
            s.close()
    parsers = [s.parser for s in streams]
    delivered = sum(p.in_window for p in parsers)
    expected = sum(p.expected() for p in parsers)
    delays = sorted(window.delays_ns)
    read_delays = sorted(window.read_delays_ns)
    up_lags = sorted(window.upstream_lag_ns)
    lags.sort()
    proxy_cores = cpu.proxy_cores
    opened = len(streams)
    return RelayResult(
        target=target.name,
        round=rnd,
        streams=n,
        opened=opened,
        failed=n - opened,
        failures=dict(failures.most_common(5)),
        still_open=still_open,
        open_s=round(open_s, 2),
        window_s=round(cpu.wall, 3),
        events_expected=expected,
        events_delivered=delivered,
        delivered_pct=round(100 * delivered / expected, 3) if expected else 0.0,
        events_per_s=round(delivered / cpu.wall, 1),
        bad_events=sum(p.bad for p in parsers),
        delay_p50_ms=_ns_ms(delays, 50),
        delay_p99_ms=_ns_ms(delays, 99),
        delay_p999_ms=_ns_ms(delays, 99.9),
        delay_max_ms=round(delays[-1] / 1e6, 3) if delays else 0.0,
        read_delay_p50_ms=_ns_ms(read_delays, 50),
        read_delay_p99_ms=_ns_ms(read_delays, 99),
        upstream_lag_p99_ms=_ns_ms(up_lags, 99),
        client_cpu=round((me1 - me0) / cpu.wall, 3),
        upstream_cpu=round((up1 - up0) / cpu.wall, 3),
        client_lag_p99_ms=round(percentile(lags, 99) * 1e3, 3),
        other_cpu=cpu.other_cores,
        proxy_cpu=proxy_cores,
        cpu_us_per_event=(
            round(proxy_cores * cpu.wall / delivered * 1e6, 2)
            if proxy_cores is not None and delivered
            else None
        ),
        rss_idle_mib=round(rss0 / 1024, 1) if proxy else None,
        rss_streams_mib=round(rss1 / 1024, 1) if proxy else None,
        kib_per_stream=round((rss1 - rss0) / opened, 2) if proxy and opened else None,
        proxy_fds=fds,
    )


def start_relay_proxy(
    procs: Processes, tools: Tools, layout: Layout, name: str, upstream_port: int, n: int
) -> Target:
    """A fresh nginx (``proxy_buffering off``) or one-worker gslb in front of the upstream."""
    if name == "direct":
        return Target(name, upstream_port, None)
    if name == "nginx":
        port = free_port()
        conf = render_nginx_proxy(
            tools, procs.workdir, "nginx-sse", port, upstream_port, location_extra=SSE_LOCATION
        )
        child = start_nginx(procs, tools, "nginx-sse", conf, layout.proxy_1w)
        wait_ready(child, port, "/")
        return Target(name, port, child)

    def config(listen: int, admin: int) -> str:
        return relay_gslb_config(listen, admin, tools.mmdb, upstream_port, n)

    child, port = start_gslb(procs, procs.workdir, "gslb-sse", config, 1, layout.proxy_1w)
    return Target(name, port, child)


def relay_gslb_config(listen: int, admin: int, mmdb: str, upstream_port: int, n: int) -> str:
    """gslb for the relay part: one Canadian region, the relay upstream its one endpoint."""
    region = Region("sse", (45.50, -73.57), "CA", (f"http://{HOST}:{upstream_port}",), 1_000_000)
    pool = max(n + RELAY_WARM_STREAMS, 256)  # every stream holds an upstream connection
    return gslb_config(listen, admin, mmdb, [region], pool_size=pool, max_connections=4 * pool)


def _median_of(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


RELAY_MEDIAN_KEYS: Final = (
    *("delivered_pct", "events_per_s", "delay_p50_ms", "delay_p99_ms", "delay_p999_ms"),
    *("delay_max_ms", "read_delay_p50_ms", "read_delay_p99_ms", "upstream_lag_p99_ms"),
    *("client_cpu", "upstream_cpu", "client_lag_p99_ms"),
    *("other_cpu", "proxy_cpu", "cpu_us_per_event", "rss_idle_mib", "rss_streams_mib"),
    "kib_per_stream",
)


def relay_summary(runs: Sequence[RelayResult]) -> dict[str, Any]:
    """Per target: the median of each figure over rounds, and the gslb-vs-nginx comparisons.

    Comparisons are taken within each round (the targets of a round ran back to back) and
    their median reported, as in part 2.
    """
    by: dict[str, list[RelayResult]] = {}
    for r in runs:
        by.setdefault(r.target, []).append(r)
    rows = []
    for name, rs in by.items():
        row: dict[str, Any] = {"target": name, "rounds": len(rs), "streams": rs[0].streams}
        row["still_open_min"] = min(r.still_open for r in rs)
        row["failed_max"] = max(r.failed for r in rs)
        row["events_delivered"] = sum(r.events_delivered for r in rs)
        row["events_expected"] = sum(r.events_expected for r in rs)
        row["bad_events"] = sum(r.bad_events for r in rs)
        row |= {k: _median_of([getattr(r, k) for r in rs]) for k in RELAY_MEDIAN_KEYS}
        rows.append(row)
    per_round: list[dict[str, float | None]] = []
    for g, n in zip(by.get("gslb-1w", []), by.get("nginx", []), strict=False):
        g_us, n_us = g.cpu_us_per_event, n.cpu_us_per_event
        per_round.append(
            {
                "cpu_nginx_over_gslb": round(n_us / g_us, 3) if g_us and n_us else None,
                "delay_p50_gslb_minus_nginx_ms": round(g.delay_p50_ms - n.delay_p50_ms, 3),
                "delay_p99_gslb_minus_nginx_ms": round(g.delay_p99_ms - n.delay_p99_ms, 3),
            }
        )
    keys = ("cpu_nginx_over_gslb", "delay_p50_gslb_minus_nginx_ms", "delay_p99_gslb_minus_nginx_ms")
    compare = {k: _median_of([r[k] for r in per_round]) for k in keys} if per_round else {}
    return {"rows": rows, "compare": compare, "compare_runs": per_round}


def client_check(runs: Sequence[RelayResult], client_cpus: int, shared: bool) -> dict[str, Any]:
    """Whether the client (this process) or its upstream, not a proxy, limited a round.

    If either used nearly a core (or, ``shared`` on the same ``client_cpus`` CPUs, nearly all
    of them together), or events went missing even without a proxy, the counts and delays say
    more about the harness than about the proxies. Apart from that: how late the client's
    loop and the upstream's writes woke (p99), the scheduling noise of this machine, which
    every proxy's delays include too.
    """
    client = max((r.client_cpu for r in runs), default=0.0)
    upstream = max((r.upstream_cpu for r in runs), default=0.0)
    both = max((r.client_cpu + r.upstream_cpu for r in runs), default=0.0)
    lag = max((r.client_lag_p99_ms for r in runs), default=0.0)
    up_lag = max((r.upstream_lag_p99_ms for r in runs), default=0.0)
    direct = [r.delivered_pct for r in runs if r.target == "direct"]
    reasons = []
    if client >= 0.85:
        reasons.append(f"the client used {client:.2f} of a core")
    if upstream >= 0.85:
        reasons.append(f"the upstream used {upstream:.2f} of a core")
    if shared and both >= 0.9 * client_cpus:
        reasons.append(f"client + upstream used {both:.2f} of their {client_cpus} CPU(s)")
    if direct and min(direct) < 99.9:
        reasons.append(f"direct (no proxy) delivered only {min(direct):.2f}% of events")
    where = "on the client's CPU" if shared else "on a CPU of its own"
    verdict = (
        "the client may be the bottleneck: " + "; ".join(reasons)
        if reasons
        else (
            f"the client is not the bottleneck: it used at most {client:.2f} of a core, the "
            f"upstream {upstream:.2f} ({where})"
        )
    )
    noise = (
        f"scheduling noise: the client's loop woke up to {lag:.2f} ms late and the upstream "
        f"wrote events up to {up_lag:.2f} ms after their due time (p99 of the worst round); "
        "proxies' delays include such wake-up latency too"
    )
    return {
        "client_cpu_max": client,
        "upstream_cpu_max": upstream,
        "upstream_shares_client_cpu": shared,
        "client_lag_p99_max_ms": lag,
        "upstream_lag_p99_max_ms": up_lag,
        "bottleneck": bool(reasons),
        "verdict": verdict,
        "noise": noise,
    }


def part_sse_relay(
    procs: Processes, tools: Tools, layout: Layout, args: argparse.Namespace
) -> dict[str, Any]:
    """Direct, nginx and gslb-1w, ``--relay-rounds`` interleaved rounds, a fresh proxy each."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    ((requested, n, why),) = capped_counts([args.relay_streams], nofile)
    if why:
        note(f"relay: {why}")
    port = free_port()
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve-relay-upstream"]
    argv += [str(port), str(1000 / args.relay_rate)]
    runs: list[RelayResult] = []
    upstream_cpus = layout.relay_upstream or layout.harness
    shared = bool(upstream_cpus & layout.harness)
    with running(procs, procs.start("relay-upstream", argv, upstream_cpus)) as upstream:
        wait_ready(upstream, port, "/health")
        for rnd in range(1, args.relay_rounds + 1):
            for name in RELAY_TARGETS:
                target = start_relay_proxy(procs, tools, layout, name, port, n)
                try:
                    r = run_async(relay_round(target, upstream, n, rnd, args))
                finally:
                    if target.child is not None:
                        procs.stop(target.child)
                runs.append(r)
                note(
                    f"relay {name} round {rnd}: {r.events_delivered:,}/{r.events_expected:,}"
                    f" events ({r.delivered_pct:.2f}%), delay p50 {r.delay_p50_ms:.3f} ms p99 "
                    f"{r.delay_p99_ms:.3f} ms, CPU {_fmt(r.cpu_us_per_event, '.2f')} us/event, "
                    f"{_fmt(r.kib_per_stream, '.1f')} KiB/stream, client {r.client_cpu:.2f} "
                    f"cores, upstream {r.upstream_cpu:.2f} cores, other load {r.other_cpu:.2f}"
                )
    return {
        "streams": n,
        "requested": requested,
        "capped": why,
        "rate_per_stream": args.relay_rate,
        "interval_ms": round(1000 / args.relay_rate, 3),
        "hold_s": args.relay_hold,
        "rounds": args.relay_rounds,
        **relay_summary(runs),
        "client": client_check(runs, len(layout.harness), shared),
        "runs": [asdict(r) for r in runs],
    }


# --------------------------------------------------------------------------- part 4: SSE streams


class _Stream(asyncio.Protocol):
    """One client connection: a request, then a count of the SSE events that arrive."""

    MARK: Final = b"event: tick"

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.transport: asyncio.Transport | None = None
        self.first_byte: asyncio.Future[float] = loop.create_future()  # perf_counter; 0: closed
        self.status: asyncio.Future[int] = loop.create_future()  # 0: closed before a response
        self.finished: asyncio.Future[None] = loop.create_future()
        self.head = bytearray()
        self.tail = b""
        self.events = 0
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if not self.first_byte.done():
            self.first_byte.set_result(time.perf_counter())
        if not self.status.done():
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            self.status.set_result(int(self.head[9:12]))
            data = bytes(self.head[end + 4 :])
            self.head = bytearray()
        chunk = self.tail + data
        self.events += chunk.count(self.MARK)
        self.tail = chunk[-(len(self.MARK) - 1) :]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.first_byte.done():
            self.first_byte.set_result(0.0)
        if not self.status.done():
            self.status.set_result(0)
        if not self.finished.done():
            self.finished.set_result(None)


def _sse_request(port: int, path: str, close: bool) -> bytes:
    conn = "Connection: close\r\n" if close else ""
    return (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nX-Forwarded-For: {CLIENT_IP}\r\n"
        f"Accept: text/event-stream\r\n{conn}\r\n"
    ).encode()


async def open_stream(port: int, path: str, timeout: float) -> _Stream:
    loop = asyncio.get_running_loop()
    transport, stream = await loop.create_connection(lambda: _Stream(loop), HOST, port)
    transport.write(_sse_request(port, path, close=False))
    try:
        status = await asyncio.wait_for(asyncio.shield(stream.status), timeout)
    except TimeoutError:
        transport.abort()
        raise
    if status != 200:
        transport.abort()
        raise ConnectionError(f"HTTP {status}" if status else "closed before a response")
    return stream


async def ttfb_once(port: int, path: str) -> float:
    """Seconds from connect() to the first response byte, on a new connection."""
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    transport, stream = await loop.create_connection(lambda: _Stream(loop), HOST, port)
    try:
        transport.write(_sse_request(port, path, close=True))
        first = await asyncio.wait_for(asyncio.shield(stream.first_byte), 30)
        await asyncio.wait_for(asyncio.shield(stream.finished), 30)
        if not first:
            raise ConnectionError("closed before a response")
        return first - t0
    finally:
        transport.close()


async def ttfb_sample(gslb_port: int, direct_port: int, samples: int) -> dict[str, float | None]:
    """New requests, alternately via gslb and direct; added TTFB = gslb - direct (p50, p99).

    A request that fails (refused, closed without an answer) counts in ``*_failed`` and not in
    the percentiles.
    """
    path = "/sse?events=1&interval_ms=0"
    times: dict[str, list[float]] = {"gslb": [], "direct": []}
    failed = {"gslb": 0, "direct": 0}
    for _ in range(samples):
        for side, port in (("gslb", gslb_port), ("direct", direct_port)):
            try:
                times[side].append(await ttfb_once(port, path))
            except (OSError, TimeoutError):
                failed[side] += 1
    out: dict[str, float | None] = {}
    for side, values in times.items():
        values.sort()
        for q in (50, 99):
            out[f"{side}_p{q}_ms"] = round(percentile(values, q) * 1e3, 3) if values else None
        out[f"{side}_failed"] = failed[side]
    for q in (50, 99):
        via, direct = out[f"gslb_p{q}_ms"], out[f"direct_p{q}_ms"]
        out[f"added_p{q}_ms"] = None if via is None or direct is None else round(via - direct, 3)
    return out


@dataclass
class SseResult:
    streams: int
    opened: int
    failed: int
    failures: dict[str, int]
    open_s: float
    still_open: int
    events_per_s: float
    expected_events_per_s: float
    gslb_cpu: float
    other_cpu: float
    gslb_fds: int
    fd_limit: int
    rss_before_mib: float
    rss_with_streams_mib: float
    kib_per_stream: float | None
    ttfb_idle: dict[str, float | None]
    ttfb_loaded: dict[str, float | None]
    gslb_alive: bool
    internal_errors_logged: int = 0  # gslb "internal error" log lines, streams closed included
    ok: bool = False
    requested: int = 0  # N asked for; ``streams`` is less where the fd limit caps it
    capped: str = ""  # why ``streams`` < ``requested``, said in the output


def stream_cap(nofile: int, fds_per_stream: int = 2) -> int:
    """Most streams one process can hold with ``nofile`` open files.

    A proxy holds two descriptors per stream (client and upstream side), plus FD_RESERVE for
    its listeners, logs, pools and health checks.
    """
    return max(0, (nofile - FD_RESERVE) // fds_per_stream)


def capped_counts(requested: Sequence[int], nofile: int) -> list[tuple[int, int, str]]:
    """(requested, to run, why it is less) for each N, under the open-files limit ``nofile``."""
    cap = stream_cap(nofile)
    out = []
    for n in requested:
        if n <= cap:
            out.append((n, n, ""))
        else:
            why = (
                f"{n:,} streams need about {2 * n + FD_RESERVE:,} open files in the proxy; the "
                f"hard limit here is {nofile:,} (raising it needs CAP_SYS_RESOURCE), so "
                f"{cap:,} streams were run instead"
            )
            out.append((n, cap, why))
    return out


async def sse_round(
    n: int, gslb: Child, gslb_port: int, direct_port: int, args: argparse.Namespace
) -> SseResult:
    # The streams would last 11 days: this client closes them once they are measured.
    path = f"/sse?events=1000000&interval_ms={SSE_INTERVAL_MS}"
    ttfb_idle = await ttfb_sample(gslb_port, direct_port, args.ttfb_samples)
    rss0 = rss_kib(gslb.pid)
    sem = asyncio.Semaphore(args.sse_open_concurrency)
    streams: list[_Stream] = []
    failures: Counter[str] = Counter()

    async def one() -> None:
        async with sem:
            try:
                streams.append(await open_stream(gslb_port, path, timeout=60))
            except (OSError, TimeoutError) as exc:
                failures[type(exc).__name__ + (f": {exc}" if str(exc) else "")] += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    open_s = time.perf_counter() - t0
    note(f"sse {n}: {len(streams)} open in {open_s:.1f}s, {sum(failures.values())} failed")
    try:
        await asyncio.sleep(2)  # every stream settles into its 1 s rhythm
        events0 = sum(s.events for s in streams)
        with CpuWindow(gslb.pid) as window:
            ttfb_loaded = await ttfb_sample(gslb_port, direct_port, args.ttfb_samples)
            await asyncio.sleep(max(0.0, args.sse_hold - (time.monotonic() - window._t0)))
        events = sum(s.events for s in streams) - events0
        rss1 = rss_kib(gslb.pid)
        fds = open_fds(gslb.pid)
        still_open = sum(1 for s in streams if not s.lost)
    finally:
        for s in streams:
            if s.transport is not None:
                s.transport.abort()
    opened = len(streams)
    result = SseResult(
        streams=n,
        opened=opened,
        failed=n - opened,
        failures=dict(failures.most_common(5)),
        open_s=round(open_s, 2),
        still_open=still_open,
        events_per_s=round(events / window.wall, 1),
        expected_events_per_s=round(still_open * 1000 / SSE_INTERVAL_MS, 1),
        gslb_cpu=window.proxy_cores or 0.0,
        other_cpu=window.other_cores,
        gslb_fds=fds,
        fd_limit=_fd_limit(gslb.pid),
        rss_before_mib=round(rss0 / 1024, 1),
        rss_with_streams_mib=round(rss1 / 1024, 1),
        kib_per_stream=round((rss1 - rss0) / opened, 2) if opened else None,
        ttfb_idle=ttfb_idle,
        ttfb_loaded=ttfb_loaded,
        gslb_alive=gslb.proc.poll() is None,
    )
    result.ok = (
        result.failed == 0
        and result.still_open == n
        and result.events_per_s >= 0.9 * result.expected_events_per_s
        and result.gslb_alive
    )
    await asyncio.sleep(2)  # gslb sees the hang-ups before it is stopped
    return result


def _fd_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    return 0


def part_sse(
    procs: Processes, tools: Tools, layout: Layout, args: argparse.Namespace
) -> list[SseResult]:
    """For each N: two fake regions and a fresh one-worker gslb, N streams, measure, close."""
    results = []
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]  # children get this one too
    for requested, n, why in capped_counts(_int_list(args.sse_streams), nofile):
        if why:
            note(f"sse {requested}: {why}")
        fake_ports = [free_port(), free_port()]
        started: list[Child] = []
        try:
            for i, p in enumerate(fake_ports):
                argv = [sys.executable, "-m", "gslb", "fake-region", "--host", HOST]
                argv += ["--port", str(p), "--name", f"fake-{i}"]
                argv += ["--slots", "20000", "--max-queue", "20000"]
                child = procs.start(f"fake-region-{i}", argv, layout.harness)
                started.append(child)
                wait_ready(child, p, "/health")
            region = Region(
                "sse",
                (45.50, -73.57),
                "CA",
                tuple(f"http://{HOST}:{p}" for p in fake_ports),
                capacity=1_000_000,
            )
            pool = max(n, 256)  # connections per endpoint; every stream holds one

            def config(listen: int, admin: int, r: Region = region, pool: int = pool) -> str:
                return gslb_config(
                    listen, admin, tools.mmdb, [r], pool_size=pool, max_connections=4 * pool
                )

            gslb, port = start_gslb(
                procs, procs.workdir, f"gslb-sse-{n}", config, 1, layout.proxy_1w
            )
            started.append(gslb)
            result = run_async(sse_round(n, gslb, port, fake_ports[0], args))
            result.requested, result.capped = requested, why
            result.internal_errors_logged = gslb.log_text().count("internal error on request")
            results.append(result)
            tl = result.ttfb_loaded
            note(
                f"sse {n}: {'ok' if result.ok else 'FAILED'}; {result.kib_per_stream} KiB/stream, "
                f"{result.events_per_s:,.0f} events/s (expected "
                f"{result.expected_events_per_s:,.0f}), gslb {result.gslb_cpu:.2f} cores, "
                f"{result.gslb_fds} fds (limit {result.fd_limit}), added TTFB p50 "
                f"{_fmt(tl['added_p50_ms'], '.2f')} ms p99 {_fmt(tl['added_p99_ms'], '.2f')} ms, "
                f"{tl['gslb_failed']} of {args.ttfb_samples} new requests via gslb failed"
            )
        finally:
            for child in reversed(started):
                procs.stop(child)
    return results


# --------------------------------------------------------------------------- part 5: scaling


@dataclass(frozen=True)
class ScalingLayout:
    """CPUs for the scaling part: half for the proxy, a quarter each for wrk and the upstream.

    A proxy with W workers gets the first W of its CPUs. Below SCALING_MIN_CPUS the part is
    skipped unless forced, and then every role shares every CPU (a smoke run of the code, its
    figures meaningless).
    """

    proxy: tuple[int, ...]
    wrk: frozenset[int]
    upstream: frozenset[int]
    shared: bool = False

    @classmethod
    def for_cpus(cls, cpus: Sequence[int]) -> ScalingLayout:
        ordered = sorted(cpus)
        n = len(ordered)
        if n < SCALING_MIN_CPUS:
            return cls(tuple(ordered), frozenset(ordered), frozenset(ordered), shared=True)
        half, quarter = n // 2, n // 4
        return cls(
            tuple(ordered[:half]),
            frozenset(ordered[half : half + quarter]),
            frozenset(ordered[half + quarter :]),
        )

    def proxy_cpus(self, workers: int) -> frozenset[int]:
        return frozenset(self.proxy[:workers] if workers <= len(self.proxy) else self.proxy)


@dataclass
class ScalingPoint:
    workers: int
    nginx: WrkResult
    gslb: WrkResult
    nginx_upstream_cpu: float  # cores the upstream used under nginx's load
    gslb_upstream_cpu: float


def _scaling_point(
    lab: Lab, name: str, sl: ScalingLayout, connections: int, args: argparse.Namespace
) -> tuple[WrkResult, float]:
    target = lab.get(name)
    threads = min(len(sl.wrk), connections)
    try:
        run_wrk(lab.tools, target, 1, connections, lab.layout, threads=threads, cpus=sl.wrk)
        up0 = cpu_seconds(lab.upstream.pid)
        t0 = time.monotonic()
        result = run_wrk(
            lab.tools,
            target,
            args.scaling_duration,
            connections,
            lab.layout,
            threads=threads,
            cpus=sl.wrk,
        )
        upstream = round((cpu_seconds(lab.upstream.pid) - up0) / (time.monotonic() - t0), 2)
    finally:
        lab.stop(name)
    note(
        f"scaling {name}: {result.rps:,.0f} req/s, p99 {result.p99_ms:.2f} ms, proxy "
        f"{_fmt(result.proxy_cpu, '.2f')} cores, upstream {upstream:.2f} cores"
    )
    return result, upstream


def part_scaling(
    procs: Processes, tools: Tools, workdir: Path, cpus: Sequence[int], args: argparse.Namespace
) -> dict[str, Any]:
    """W nginx workers, then W gslb workers, for each W, wrk and the upstream on other CPUs.

    ``cpus``: the CPUs this benchmark may use (its affinity before it pinned itself).
    """
    workers = _int_list(args.scaling_workers)
    if len(cpus) < args.scaling_min_cpus:
        why = (
            f"skipped: this machine has {len(cpus)} CPUs; worker scaling needs "
            f">= {args.scaling_min_cpus} (workers {max(workers)} on CPUs of their own, wrk and "
            "the upstream on others)"
        )
        note(f"scaling: {why}")
        return {"skipped": why}
    sl = ScalingLayout.for_cpus(cpus)
    if sl.shared:
        note("scaling: fewer CPUs than the part needs; every role shares every CPU (smoke run)")
    layout = Layout(sl.proxy_cpus(1), sl.proxy_cpus(2), sl.wrk)
    lab = Lab(
        procs,
        tools,
        workdir,
        layout,
        upstream_workers=len(sl.upstream),
        upstream_cpus=sl.upstream,
        cpus_of=lambda name: sl.proxy_cpus((proxy_kind(name) or ("", 1))[1]),
    )
    points = []
    try:
        for w in workers:
            connections = args.scaling_connections * w
            nginx, nginx_up = _scaling_point(lab, f"nginx-{w}w", sl, connections, args)
            gslb, gslb_up = _scaling_point(lab, f"gslb-{w}w", sl, connections, args)
            points.append(ScalingPoint(w, nginx, gslb, nginx_up, gslb_up))
    finally:
        procs.stop(lab.upstream)
    return {
        "layout": {
            "proxy": list(sl.proxy),
            "wrk": sorted(sl.wrk),
            "upstream": sorted(sl.upstream),
            "shared": sl.shared,
        },
        "duration_s": args.scaling_duration,
        "connections_per_worker": args.scaling_connections,
        "rows": scaling_rows(points, len(sl.upstream)),
    }


def scaling_rows(points: Sequence[ScalingPoint], upstream_cpus: int) -> list[dict[str, Any]]:
    """Requests/s of each, gslb/nginx, and each one's speed-up over its own first point."""
    rows = []
    base = points[0] if points else None
    for p in points:
        assert base is not None
        rows.append(
            {
                "workers": p.workers,
                "nginx_rps": p.nginx.rps,
                "gslb_rps": p.gslb.rps,
                "gslb_over_nginx": round(p.gslb.rps / p.nginx.rps, 3) if p.nginx.rps else None,
                "nginx_speedup": round(p.nginx.rps / base.nginx.rps, 2) if base.nginx.rps else None,
                "gslb_speedup": round(p.gslb.rps / base.gslb.rps, 2) if base.gslb.rps else None,
                "nginx_p99_ms": p.nginx.p99_ms,
                "gslb_p99_ms": p.gslb.p99_ms,
                "nginx_cpu": p.nginx.proxy_cpu,
                "gslb_cpu": p.gslb.proxy_cpu,
                "nginx_upstream_cpu": p.nginx_upstream_cpu,
                "gslb_upstream_cpu": p.gslb_upstream_cpu,
                # The upstream near all its CPUs: nginx's figure is a floor, not its ceiling.
                "upstream_bound": max(p.nginx_upstream_cpu, p.gslb_upstream_cpu)
                >= 0.9 * upstream_cpus,
                "errors": p.nginx.non_2xx
                + p.nginx.socket_errors
                + p.gslb.non_2xx
                + p.gslb.socket_errors,
            }
        )
    return rows


# --------------------------------------------------------------------------- part 6: profile

_FRAME: Final = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")
# Inclusive-time rows of the profile summary: (label, a frame's text up to its file name).
# With --native, C frames show up too: libc's syscall wrappers, the interpreter, uvloop.
KEY_FRAMES: Final = (
    ("gslb Proxy.handle (the whole handler)", "Proxy.handle (gslb/edge/proxy.py"),
    ("  upstream request: UpstreamPools.request", "request (gslb/edge/h1client.py"),
    ("    request head: encode_head()", "encode_head (gslb/core/h1client_rules.py"),
    ("  _relay: response head and body to the client", "_relay (gslb/edge/proxy.py"),
    ("    response head: frame_response()", "frame_response (gslb/core/h1framing.py"),
    ("  read_request()", "read_request (gslb/core/headers.py"),
    ("  upstream_headers()", "upstream_headers (gslb/core/headers.py"),
    ("  downstream_headers()", "downstream_headers (gslb/core/headers.py"),
    ("  client_ip()", "client_ip (gslb/core/clientip.py"),
    ("  GeoIP lookup", "lookup (gslb/edge/geoip.py"),
    ("  Router.decide", "decide (gslb/core/router.py"),
    ("  forwarding state machine (Exchange)", "(gslb/core/forward.py"),
    ("  _record: observers (metrics, recent)", "_record (gslb/edge/proxy.py"),
    ("listener: parsing (h1server data_received)", "data_received (gslb/edge/h1server.py"),
    ("upstream: parsing (h1client data_received)", "data_received (gslb/edge/h1client.py"),
    ("write() syscalls", "write (libc"),
    ("read() syscalls", "read (libc"),
    ("getpid() syscalls", "getpid (libc"),
    ("epoll_pwait() (the event loop waiting or polling)", "epoll_pwait (libc"),
    ("garbage collector (gc_collect_main)", "gc_collect_main ("),
)
# Leaf C frames whose Python callers the summary lists.
CALLERS_OF: Final = ("write (libc", "getpid (libc", "gc_collect_main (")


def _module_of(path: str) -> str:
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    parts = path.strip("/").split("/")
    if parts[0].startswith("python3"):
        parts = parts[1:]
    if len(parts) > 1 and parts[0] in ("gslb", "aiohttp", "asyncio", "multidict", "yarl"):
        return f"{parts[0]}/{parts[1]}"
    return parts[0] if parts else path


def summarize_profile(raw: str, top: int = 15) -> dict[str, Any]:
    """Self time by module and function, inclusive time of key frames (py-spy raw format)."""
    total = 0
    self_mod: Counter[str] = Counter()
    self_fn: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    callers: dict[str, Counter[str]] = {leaf: Counter() for leaf in CALLERS_OF}
    for line in raw.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        total += count
        frames = stack.split(";")
        m = _FRAME.match(frames[-1])
        self_mod[_module_of(m.group("file")) if m else frames[-1]] += count
        self_fn[frames[-1]] += count
        for label, needle in KEY_FRAMES:
            if needle in stack:
                inclusive[label] += count
        for leaf, counter in callers.items():
            if frames[-1].startswith(leaf):
                python = [f.split(" (", 1)[0] for f in frames if ".py:" in f]
                counter[" <- ".join(reversed(python[-2:]))] += count

    def pct(c: int) -> float:
        return round(100 * c / total, 1) if total else 0.0

    return {
        "samples": total,
        "self_by_module": [(k, pct(v)) for k, v in self_mod.most_common(top)],
        "self_by_function": [(k, pct(v)) for k, v in self_fn.most_common(top)],
        "inclusive": [(label, pct(inclusive[label])) for label, _ in KEY_FRAMES],
        "callers": {
            leaf.split(" (")[0]: [(k, pct(v)) for k, v in c.most_common(5)]
            for leaf, c in callers.items()
        },
    }


def part_profile(lab: Lab, args: argparse.Namespace) -> dict[str, Any] | None:
    """py-spy on gslb-1w under wrk's load: samples of Python and native (C) stacks.

    The process is paused for each sample (py-spy's default) so stacks are consistent; this is
    a run of its own, not one whose figures are reported above.
    """
    tools = lab.tools
    if tools.py_spy is None:
        note("py-spy not found (pip install py-spy); skipping the profile")
        return None
    target = lab.get("gslb-1w")
    assert target.child is not None
    out_dir = Path(args.profile_dir) if args.profile_dir else lab.workdir
    out_dir.mkdir(parents=True, exist_ok=True)
    raw_path = out_dir / "gslb-1w.collapsed.txt"
    run_wrk(tools, target, WARMUP_S, args.connections, lab.layout)
    argv = wrk_argv(tools, target.port, args.duration + 4, args.connections, latency=False)
    native = True
    with running(lab.procs, lab.procs.start("wrk-profile", argv, lab.layout.harness)):
        time.sleep(1)
        spy = [tools.py_spy, "record", "--pid", str(target.child.pid), "--function"]
        spy += ["--duration", str(args.duration), "--rate", str(PROFILE_RATE_HZ)]
        spy += ["--format", "raw", "--output", str(raw_path), "--native"]
        rc = subprocess.run(
            spy,
            capture_output=True,
            text=True,
            timeout=args.duration + 60,
            preexec_fn=_child_setup(lab.layout.harness),
        )
        if rc.returncode != 0:  # no native unwinding here: Python frames only
            note(f"py-spy --native failed ({rc.stderr.strip()[-200:]}); Python frames only")
            native = False
            rc = subprocess.run(
                spy[:-1],
                capture_output=True,
                text=True,
                timeout=args.duration + 60,
                preexec_fn=_child_setup(lab.layout.harness),
            )
    if rc.returncode != 0 or not raw_path.exists():
        note(f"py-spy failed ({rc.returncode}): {rc.stderr.strip()[-500:]}")
        return None
    summary = summarize_profile(raw_path.read_text())
    summary["native"] = native
    summary["expected_samples"] = PROFILE_RATE_HZ * args.duration
    summary["collapsed_stacks"] = str(raw_path) if args.profile_dir else None
    note(f"profile: {summary['samples']} samples ({summary['expected_samples']} if never idle)")
    return summary


# --------------------------------------------------------------------------- report


THROUGHPUT_HEADER: Final = (
    *("target", "requests/s", "p50 ms", "p99 ms", "proxy CPU (cores)"),
    *("req/s per proxy core", "other load (cores)", "non-2xx", "socket errors"),
)
LATENCY_HEADER: Final = (
    *("target", "achieved/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "errors"),
    *("pacer lag p99 ms", "conns", "proxy CPU", "other load"),
)
SSE_HEADER: Final = (
    *("streams", "opened", "failed", "open s", "events/s (expected)", "gslb CPU"),
    *("gslb fds (limit)", "RSS before MiB", "RSS with streams MiB", "KiB/stream"),
    *("added TTFB idle p50/p99 ms", "added TTFB with streams p50/p99 ms", "ok"),
)


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _ttfb_cell(t: dict[str, Any]) -> str:
    cell = f"{_fmt(t['added_p50_ms'], '.2f')} / {_fmt(t['added_p99_ms'], '.2f')}"
    return cell + (f" ({t['gslb_failed']} failed)" if t["gslb_failed"] else "")


def _table(out: TextIO, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    print("| " + " | ".join(header) + " |", file=out)
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|", file=out)
    for row in rows:
        print("| " + " | ".join(row) + " |", file=out)


RELAY_HEADER: Final = (
    *("target", "streams held (min)", "events delivered / expected", "delivered %"),
    *("delay p50 ms", "delay p99 ms", "delay p99.9 ms", "to client's read p99 ms"),
    *("proxy CPU (cores)", "CPU us/event"),
    *("RSS idle MiB", "RSS with streams MiB", "KiB/stream", "client CPU", "upstream CPU"),
)


def print_relay(relay: dict[str, Any], out: TextIO) -> None:
    print(
        f"\n### SSE relay: {relay['streams']:,} streams x {relay['rate_per_stream']:g} events/s "
        f"(interval {relay['interval_ms']:g} ms), {relay['hold_s']:g} s windows, medians of "
        f"{relay['rounds']} rounds (direct, nginx, gslb-1w back to back in each); delay: the "
        "kernel's arrival stamp on the client's socket minus the upstream's write stamp\n",
        file=out,
    )
    if relay["capped"]:
        print(f"{relay['requested']:,} streams asked for: {relay['capped']}\n", file=out)
    _table(
        out,
        RELAY_HEADER,
        [
            [
                r["target"],
                f"{r['still_open_min']:,}",
                f"{r['events_delivered']:,} / {r['events_expected']:,}",
                f"{r['delivered_pct']:.2f}",
                f"{r['delay_p50_ms']:.3f}",
                f"{r['delay_p99_ms']:.3f}",
                f"{r['delay_p999_ms']:.3f}",
                f"{r['read_delay_p99_ms']:.3f}",
                _fmt(r["proxy_cpu"], ".3f"),
                _fmt(r["cpu_us_per_event"], ".2f"),
                _fmt(r["rss_idle_mib"], ".1f"),
                _fmt(r["rss_streams_mib"], ".1f"),
                _fmt(r["kib_per_stream"], ".1f"),
                f"{r['client_cpu']:.3f}",
                f"{r['upstream_cpu']:.3f}",
            ]
            for r in relay["rows"]
        ],
    )
    c = relay["compare"]
    if c:
        print(file=out)
        runs = relay["compare_runs"]
        _table(
            out,
            ["gslb-1w vs nginx", "median", "per round"],
            [
                [
                    label,
                    _fmt(c[key], spec),
                    ", ".join(_fmt(r[key], spec) for r in runs),
                ]
                for label, key, spec in (
                    ("CPU per event, nginx_us / gslb_us", "cpu_nginx_over_gslb", ".3f"),
                    ("delay p50, gslb - nginx (ms)", "delay_p50_gslb_minus_nginx_ms", "+.3f"),
                    ("delay p99, gslb - nginx (ms)", "delay_p99_gslb_minus_nginx_ms", "+.3f"),
                )
            ],
        )
    print(f"\nclient check: {relay['client']['verdict']}", file=out)
    print(f"\n{relay['client']['noise']}", file=out)


def print_scaling(scaling: dict[str, Any], out: TextIO) -> None:
    if "skipped" in scaling:
        print(f"\n### Worker scaling\n\n{scaling['skipped']}", file=out)
        return
    lay = scaling["layout"]
    print(
        f"\n### Worker scaling: wrk -c{scaling['connections_per_worker']}xW "
        f"{scaling['duration_s']:g} s per point; proxy CPUs {lay['proxy']} (the first W), wrk "
        f"{lay['wrk']}, upstream nginx {lay['upstream']}"
        + (" -- SHARED CPUs, smoke run: the figures mean nothing" if lay["shared"] else "")
        + "\n",
        file=out,
    )
    _table(
        out,
        (
            *("workers", "nginx req/s", "gslb req/s", "gslb / nginx", "nginx speed-up"),
            *("gslb speed-up", "nginx p99 ms", "gslb p99 ms", "nginx CPU", "gslb CPU"),
            *("upstream CPU (nginx / gslb)", "errors"),
        ),
        [
            [
                str(r["workers"]),
                f"{r['nginx_rps']:,.0f}",
                f"{r['gslb_rps']:,.0f}",
                _fmt(r["gslb_over_nginx"], ".3f"),
                _fmt(r["nginx_speedup"], ".2f"),
                _fmt(r["gslb_speedup"], ".2f"),
                f"{r['nginx_p99_ms']:.2f}",
                f"{r['gslb_p99_ms']:.2f}",
                _fmt(r["nginx_cpu"], ".2f"),
                _fmt(r["gslb_cpu"], ".2f"),
                f"{r['nginx_upstream_cpu']:.2f} / {r['gslb_upstream_cpu']:.2f}"
                + (" (upstream-bound)" if r["upstream_bound"] else ""),
                str(r["errors"]),
            ]
            for r in scaling["rows"]
        ],
    )


def print_report(doc: dict[str, Any], out: TextIO = sys.stdout) -> None:
    m = doc["machine"]
    print(
        f"machine: {m['cpu']}, {m['cpus']} CPUs, {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}, aiohttp {m['aiohttp']}, uvloop {m['uvloop']}, "
        f"nginx {m['nginx']}, wrk {m['wrk']}, py-spy {m['py-spy']}; "
        f"fd limit {m['nofile_limit']}; loadavg at start {' '.join(m['loadavg_at_start'])}",
        file=out,
    )
    print(f"run at {doc['date']}; cpu layout: {doc['layout']}", file=out)
    if "throughput" in doc:
        t = doc["throughput"]
        print(
            f"\n### Throughput: wrk -t1 -c{doc['connections']} -d{doc['duration']}s --latency, "
            f"GET / with X-Forwarded-For: {CLIENT_IP} (medians of {doc['repeats']} rounds)\n",
            file=out,
        )
        _table(
            out,
            THROUGHPUT_HEADER,
            [
                [
                    r["target"],
                    f"{r['rps']:,.0f}",
                    f"{r['p50_ms']:.2f}",
                    f"{r['p99_ms']:.2f}",
                    _fmt(r["proxy_cpu"], ".2f"),
                    _fmt(r["rps_per_core"], ",.0f"),
                    f"{r['other_cpu']:.2f}",
                    str(r["non_2xx"]),
                    str(r["socket_errors"]),
                ]
                for r in t["rows"]
            ],
        )
        print(file=out)
        _table(
            out,
            ["ratio vs nginx", "requests/s", "p99", "requests/s per proxy core"],
            [
                [
                    name,
                    f"{r['rps_ratio']:.3f}",
                    _fmt(r["p99_ratio"], ".2f"),
                    _fmt(r["rps_per_core_ratio"], ".3f"),
                ]
                for name, r in t["ratios"].items()
            ],
        )
    if "latency" in doc:
        lat = doc["latency"]
        print(
            f"\n### Open-loop latency at {lat['rate']:,.0f} req/s ({lat['rate_mode']}), "
            f"{doc['latency_repeats']} rounds (direct, nginx, gslb-1w back to back in each)\n",
            file=out,
        )
        _table(
            out,
            LATENCY_HEADER,
            [
                [
                    r["target"],
                    f"{r['achieved_rate']:,.0f}",
                    f"{r['p50_ms']:.3f}",
                    f"{r['p90_ms']:.3f}",
                    f"{r['p99_ms']:.3f}",
                    f"{r['p999_ms']:.3f}",
                    f"{r['max_ms']:.3f}",
                    str(r["errors"]),
                    f"{r['pacer_lag_p99_ms']:.3f}",
                    str(r["connections"]),
                    _fmt(r["proxy_cpu"], ".2f"),
                    f"{r['other_cpu']:.2f}",
                ]
                for r in lat["rows"]
            ],
        )
        print(file=out)
        compared = [
            (f"{name} minus direct", a, lat["added_runs"][name]) for name, a in lat["added"].items()
        ]
        compared.append(("gslb-1w minus nginx", lat["vs_nginx"], lat["vs_nginx_runs"]))
        _table(
            out,
            ["difference", "p50 ms (median)", "p99 ms (median)", "p99 ms per round"],
            [
                [
                    name,
                    f"{a['p50_ms']:+.3f}",
                    f"{a['p99_ms']:+.3f}",
                    ", ".join(f"{r['p99_ms']:+.3f}" for r in runs),
                ]
                for name, a, runs in compared
            ],
        )
    if "sse_relay" in doc:
        print_relay(doc["sse_relay"], out)
    if "sse" in doc:
        print(
            f"\n### Concurrent SSE streams through one gslb worker (an event every "
            f"{SSE_INTERVAL_MS} ms per stream, held {doc['sse_hold']:.0f} s)\n",
            file=out,
        )
        _table(
            out,
            SSE_HEADER,
            [
                [
                    f"{r['streams']:,}",
                    f"{r['opened']:,}",
                    f"{r['failed']:,}",
                    f"{r['open_s']:.1f}",
                    f"{r['events_per_s']:,.0f} ({r['expected_events_per_s']:,.0f})",
                    f"{r['gslb_cpu']:.2f}",
                    f"{r['gslb_fds']:,} ({r['fd_limit']:,})",
                    f"{r['rss_before_mib']:.1f}",
                    f"{r['rss_with_streams_mib']:.1f}",
                    _fmt(r["kib_per_stream"], ".1f"),
                    _ttfb_cell(r["ttfb_idle"]),
                    _ttfb_cell(r["ttfb_loaded"]),
                    "yes" if r["ok"] else "no",
                ]
                for r in doc["sse"]
            ],
        )
        for r in doc["sse"]:
            if r["capped"]:
                print(f"\n{r['requested']:,} streams asked for: {r['capped']}", file=out)
            if r["failures"] or r["internal_errors_logged"]:
                print(
                    f"\n{r['streams']:,} streams: failures {r['failures']}; gslb logged "
                    f"{r['internal_errors_logged']} 'internal error' tracebacks",
                    file=out,
                )
    if "scaling" in doc:
        print_scaling(doc["scaling"], out)
    if doc.get("profile"):
        p = doc["profile"]
        print(
            f"\n### py-spy profile of gslb-1w under wrk -c{doc['connections']} "
            f"({p['samples']} samples of {p['expected_samples']} possible)\n",
            file=out,
        )
        _table(out, ["self time by module", "%"], [[k, str(v)] for k, v in p["self_by_module"]])
        print(file=out)
        _table(
            out,
            ["self time by function", "%"],
            [[f"`{k}`", str(v)] for k, v in p["self_by_function"]],
        )
        print(file=out)
        _table(out, ["inclusive time", "%"], [[k, str(v)] for k, v in p["inclusive"]])
        for leaf, rows in p["callers"].items():
            if rows:
                print(file=out)
                _table(
                    out, [f"{leaf}: nearest Python callers", "%"], [[k, str(v)] for k, v in rows]
                )
    if doc.get("targets"):
        print("\n### Targets\n", file=out)
        for t in doc["targets"]:
            verdict = {True: "MET", False: "MISSED", None: "NOT MEASURED"}[t["met"]]
            print(f"- {t['target']}: {t['measured']} -> {verdict}", file=out)


def _relay_targets(relay: dict[str, Any]) -> list[dict[str, Any]]:
    by = {r["target"]: r for r in relay["rows"]}
    g, n = by.get("gslb-1w"), by.get("nginx")
    if g is None or n is None:
        return []
    shape = f"{relay['streams']:,} streams x {relay['rate_per_stream']:g} events/s"
    caveat = " (the client may be the bottleneck)" if relay["client"]["bottleneck"] else ""
    c = relay["compare"]
    ratio, d99 = c["cpu_nginx_over_gslb"], c["delay_p99_gslb_minus_nginx_ms"]
    return [
        {
            "target": f"SSE relay at {shape}: CPU per event, nginx_us / gslb_us >= 0.6",
            "measured": f"nginx {_fmt(n['cpu_us_per_event'], '.2f')} us, gslb "
            f"{_fmt(g['cpu_us_per_event'], '.2f')} us per event: {_fmt(ratio, '.3f')}"
            f"{caveat}",
            "met": None if ratio is None else ratio >= 0.6,
        },
        {
            "target": f"SSE relay at {shape}: 100% of events delivered through gslb",
            "measured": f"gslb {g['events_delivered']:,} of {g['events_expected']:,} "
            f"(nginx {n['events_delivered']:,} of {n['events_expected']:,}){caveat}",
            "met": g["events_expected"] > 0 and g["events_delivered"] == g["events_expected"],
        },
        {
            "target": f"SSE relay at {shape}: gslb's event delay p99 within 1 ms of nginx's",
            "measured": f"gslb {g['delay_p99_ms']:.3f} ms, nginx {n['delay_p99_ms']:.3f} ms: "
            f"{_fmt(d99, '+.3f')} ms (median of rounds){caveat}",
            "met": None if d99 is None else d99 <= 1.0,
        },
        {
            "target": f"SSE relay at {shape}: gslb's RSS per held stream <= 16 KiB",
            "measured": f"gslb {_fmt(g['kib_per_stream'], '.1f')} KiB, nginx "
            f"{_fmt(n['kib_per_stream'], '.1f')} KiB",
            "met": None if g["kib_per_stream"] is None else g["kib_per_stream"] <= 16.0,
        },
    ]


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 11 that this run measured; ``met`` None: it could not be measured."""
    out: list[dict[str, Any]] = []
    ratios = doc.get("throughput", {}).get("ratios", {})
    if "gslb-1w" in ratios:
        r = ratios["gslb-1w"]["rps_ratio"]
        out.append(
            {
                "target": "one gslb worker >= 0.5x one nginx worker's requests/s",
                "measured": f"{r:.3f}x",
                "met": r >= 0.5,
            }
        )
    if "latency" in doc:
        lat = doc["latency"]
        rate = f"{lat['rate']:,.0f} req/s ({lat['rate_mode']})"
        d = lat["vs_nginx"]["p99_ms"]
        out.append(
            {
                "target": f"added p99 at {rate}, gslb-1w minus nginx <= 0.5 ms",
                "measured": f"{d:+.3f} ms (median of rounds)",
                "met": d <= 0.5,
            }
        )
        a = lat["added"]["gslb-1w"]["p99_ms"]
        out.append(
            {
                "target": f"added p99 at {rate}, gslb-1w minus direct < 2 ms",
                "measured": f"{a:+.3f} ms (median of rounds)",
                "met": a < 2.0,
            }
        )
    if "sse_relay" in doc:
        out.extend(_relay_targets(doc["sse_relay"]))
    for r in doc.get("sse", []):
        if r["requested"] != 10000:
            continue
        measured = f"{r['opened']:,} opened, {r['still_open']:,} held, {r['failed']:,} failed"
        if r["capped"]:
            measured = f"run at {r['streams']:,} streams (fd limit): {measured}"
        out.append(
            {
                "target": "10,000 concurrent SSE streams in one worker",
                "measured": measured,
                # Fewer streams held without a failure says nothing about 10,000.
                "met": None if r["capped"] and r["ok"] else r["ok"],
            }
        )
    return out


# --------------------------------------------------------------------------- main


def _int_list(text: str) -> list[int]:
    """``"1,2,4"`` -> [1, 2, 4]; ValueError unless every item is a positive integer."""
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or min(values) < 1:
        raise ValueError(f"not a comma list of positive integers: {text!r}")
    return values


def _rate(text: str) -> str:
    """``--rate``: requests/s above 0, or "half-peak"."""
    if text != "half-peak" and not float(text) > 0:
        raise ValueError(text)
    return text


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add = ap.add_argument
    add("--duration", type=int, default=10, help="seconds per measured run")
    add("--connections", type=int, default=64, help="wrk -c, and the open-loop pool")
    add("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    add("--repeats", type=int, default=1, help="throughput rounds (median shown)")
    add(
        "--rate",
        type=_rate,
        default=f"{DEFAULT_RATE:g}",
        help="part 2 rate, requests/s, or half-peak (half of gslb-1w's peak from part 1)",
    )
    add("--latency-repeats", type=int, default=3, help="open-loop rounds")
    add("--relay-streams", type=int, default=2000, help="SSE relay: streams held at once")
    add("--relay-rate", type=float, default=10.0, help="SSE relay: events/s per stream")
    add("--relay-hold", type=float, default=10.0, help="SSE relay: seconds measured per round")
    add("--relay-rounds", type=int, default=3, help="SSE relay: interleaved rounds")
    add("--sse-streams", default="1000,5000,10000", help="comma list of N")
    add("--sse-hold", type=float, default=10.0, help="seconds N streams stay open")
    add("--sse-open-concurrency", type=int, default=200, help="streams opening at once")
    add("--ttfb-samples", type=int, default=200, help="TTFB samples per side")
    add("--scaling-workers", default="1,2,4,8", help="scaling: comma list of worker counts")
    add("--scaling-duration", type=float, default=5.0, help="scaling: seconds per point")
    add("--scaling-connections", type=int, default=64, help="scaling: wrk -c per worker")
    add(
        "--scaling-min-cpus",
        type=int,
        default=SCALING_MIN_CPUS,
        help="scaling: skip below this many CPUs (lower it only for a smoke run)",
    )
    add("--profile-dir", default=None, help="keep py-spy's collapsed stacks here")
    add("--no-pin", action="store_true", help="do not pin processes to CPUs")
    add("--json", action="store_true", help="print one JSON object")
    add("--json-out", default=None, help="also write the JSON object to this file")
    add("--serve-bare-proxy", nargs=2, type=int, help=argparse.SUPPRESS)
    add("--serve-relay-upstream", nargs=2, type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        ap.error(f"unknown parts: {', '.join(sorted(unknown))}")
    for flag in ("sse_streams", "scaling_workers"):
        try:
            _int_list(getattr(args, flag))
        except ValueError:
            ap.error(f"--{flag.replace('_', '-')}: expected a comma list of positive integers")
    positive = ("relay_streams", "relay_rate", "relay_hold", "relay_rounds", "scaling_duration")
    for flag in positive:
        if not getattr(args, flag) > 0:
            ap.error(f"--{flag.replace('_', '-')}: must be above 0")
    return args


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> dict[str, Any]:
    tools = find_tools()
    parts = set(args.parts.split(","))
    layout = Layout.for_machine(not args.no_pin)
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, layout.harness)  # this script is part of the load generator
    raise_nofile()  # every child inherits it (and tries again itself)
    doc: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": machine_info(),
        "layout": layout.describe(),
        "duration": args.duration,
        "connections": args.connections,
        "repeats": args.repeats,
        "latency_repeats": args.latency_repeats,
        "sse_hold": args.sse_hold,
        "rate": args.rate,
        "client_ip": CLIENT_IP,
        "mmdb": tools.mmdb,
    }
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp, Processes(Path(tmp)) as procs:
        if parts & {"throughput", "latency", "profile"}:
            lab = Lab(procs, tools, Path(tmp), layout)
            peak: float | None = None
            if "throughput" in parts:
                doc["throughput"] = part_throughput(lab, args)
                peak = next(r["rps"] for r in doc["throughput"]["rows"] if r["target"] == "gslb-1w")
                lab.stop("gslb-2w", "aiohttp-bare")  # idle from here on; fewer bystanders
            if "latency" in parts:
                doc["latency"] = part_latency(lab, args, peak)
            if "profile" in parts:
                doc["profile"] = part_profile(lab, args)
            procs.close()  # the SSE parts want the CPUs to themselves
        if "sse-relay" in parts:
            doc["sse_relay"] = part_sse_relay(procs, tools, layout, args)
        if "sse" in parts:
            doc["sse"] = [asdict(r) for r in part_sse(procs, tools, layout, args)]
        if "scaling" in parts:
            doc["scaling"] = part_scaling(procs, tools, Path(tmp), cpus, args)
    doc["targets"] = targets(doc)
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_bare_proxy:
        serve_bare_proxy(*args.serve_bare_proxy)
        return 0
    if args.serve_relay_upstream:
        port, interval_ms = args.serve_relay_upstream
        serve_relay_upstream(int(port), interval_ms)
        return 0
    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    try:
        doc = run(args)
    except KeyboardInterrupt:
        note("interrupted; every process it started is stopped")
        return 130
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(doc, indent=2) + "\n")
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print_report(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
