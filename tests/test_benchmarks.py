"""`make bench` keeps working: the benchmarks' own configs parse, and the scoring bench runs.

They are not timed here (speed is measured in benchmarks/, not in tests); these only catch a
benchmark that a change to the config rules or the layout has broken.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import pytest

from benchmarks import bench_proxy, bench_scoring
from gslb.core.config import parse_toml

ROOT = Path(__file__).resolve().parent.parent


def test_the_proxy_benchmarks_gslb_config_is_valid() -> None:
    regions = [
        bench_proxy.Region("ca-central", (45.5, -73.57), "CA", ("http://127.0.0.1:9",)),
        bench_proxy.Region("us-east", (38.95, -77.45), "US", ("http://127.0.0.1:10",)),
    ]
    text = bench_proxy.gslb_config(18080, 19901, "/nonexistent.mmdb", regions)
    cfg = parse_toml(text, "bench.toml")
    assert [r.name for r in cfg.regions] == ["ca-central", "us-east"]
    assert cfg.residency  # the Canada rule the benchmark's Toronto client is bound by


def test_the_scoring_benchmark_runs() -> None:
    assert len(bench_scoring.synthetic_fleet(32).regions) == 32
    argv = ["benchmarks/bench_scoring.py", "--regions", "8", "--calls", "50", "--json"]
    out = subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout.splitlines()[0])
    assert doc["regions"] == 8 and doc["python_us"] > 0


# --------------------------------------------------------------------------- bench_proxy parts


def _nginx_tools() -> bench_proxy.Tools:
    """The tools the benchmark would use, or fake paths where nginx is not installed here."""
    try:
        return bench_proxy.find_tools()
    except SystemExit:
        return bench_proxy.Tools("nginx", "wrk", "/nonexistent/geoip2.so", "/x.mmdb", None)


def test_the_sse_relay_nginx_config_renders_unbuffered_and_parses(tmp_path: Path) -> None:
    tools = _nginx_tools()
    conf = bench_proxy.render_nginx_proxy(
        tools, tmp_path, "nginx-sse", 18080, 18081, location_extra=bench_proxy.SSE_LOCATION
    )
    text = conf.read_text()
    location = text[text.index("location / {") :]
    assert "proxy_buffering off;" in location and "proxy_read_timeout 1h;" in location
    assert "$geo_country" in location  # the same GeoIP2 lookup as the plain proxy
    assert f"pid {tmp_path}/nginx-sse.pid;" in text and "worker_processes 1;" in text
    plain = bench_proxy.render_nginx_proxy(tools, tmp_path, "nginx-4w", 18082, 18081, workers=4)
    plain_text = plain.read_text()
    assert "proxy_buffering" not in plain_text[plain_text.index("location / {") :]
    assert "worker_processes 4;" in plain_text
    if shutil.which("nginx") is None or not Path(tools.geoip2_module).exists():
        pytest.skip("nginx or its GeoIP2 module is not installed here")
    for path in (conf, plain):
        out = subprocess.run(
            [
                tools.nginx,
                "-t",
                "-p",
                str(tmp_path),
                "-e",
                str(tmp_path / "t.log"),
                "-c",
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr


def test_the_relay_benchmarks_gslb_config_is_valid() -> None:
    text = bench_proxy.relay_gslb_config(18080, 19901, "/nonexistent.mmdb", 18100, 2000)
    cfg = parse_toml(text, "relay.toml")
    assert [r.name for r in cfg.regions] == ["sse"]
    assert cfg.proxy.pool_size_per_endpoint >= 2000  # every held stream needs a connection


def _event_stream(interval_ns: int, origin_ns: int, count: int, delay_ns: int) -> bytes:
    """A chunked SSE response as the relay upstream writes it: event k due at origin + k*I."""
    out = bytearray(bench_proxy.RELAY_RESPONSE_HEAD)
    for k in range(count):
        due = origin_ns + k * interval_ns
        out += bench_proxy.relay_event(k, due, due + delay_ns)
    return bytes(out)


def test_the_event_parser_counts_events_and_delays_however_the_bytes_are_split() -> None:
    interval, origin = 100_000, 1_000_000
    stream = _event_stream(interval, origin, 10, delay_ns=700)
    for piece in (1, 2, 3, 7, 50, len(stream)):
        window = bench_proxy.RelayWindow(interval, t0_ns=origin + 250_000, t1_ns=origin + 650_000)
        parser = bench_proxy.SseEventParser(window)
        for i in range(0, len(stream), piece):
            # The kernel saw each read 1,000 ns after the event's due time + 700 ns sent stamp.
            parser.feed(stream[i : i + piece], 10**9, 10**9 + 5)
        assert parser.status == 200 and parser.events == 10 and parser.bad == 0
        assert parser.in_window == 4  # events 3..6 are due within [t0, t1)
        assert parser.expected() == 4
        assert parser.origin_ns == origin
        sent = [origin + k * interval + 700 for k in range(3, 7)]
        assert window.delays_ns == [10**9 - s for s in sent]
        assert window.read_delays_ns == [10**9 + 5 - s for s in sent]
        assert window.upstream_lag_ns == [700] * 4


def test_the_event_parser_reads_events_a_proxy_regrouped_into_other_chunks() -> None:
    interval = 1_000
    body = b"".join(b"data: %d %d %d\n\n" % (k, k * interval, k * interval + 3) for k in range(6))
    # One chunk for the first two and a half events, one for the rest: chunk and event
    # boundaries do not line up, as after a proxy that relays whatever it read at once.
    cut = body.index(b"data: 2") + 4
    chunked = b"".join(b"%x;ext=1\r\n%b\r\n" % (len(c), c) for c in (body[:cut], body[cut:]))
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    window = bench_proxy.RelayWindow(interval, t0_ns=0, t1_ns=6 * interval)
    parser = bench_proxy.SseEventParser(window)
    parser.feed(head + chunked + b"0\r\n\r\n", 10**6, 10**6)
    assert (parser.events, parser.in_window, parser.expected(), parser.bad) == (6, 6, 6, 0)
    assert parser.ended
    # Not chunked (an HTTP/1.0-style body up to the close), and a malformed event.
    window = bench_proxy.RelayWindow(interval, t0_ns=0, t1_ns=6 * interval)
    parser = bench_proxy.SseEventParser(window)
    parser.feed(b"HTTP/1.1 200 OK\r\n\r\n" + body + b"data: oops\n\n", 10**6, 10**6)
    assert (parser.events, parser.in_window, parser.bad) == (6, 6, 1)


def test_expected_events_follow_the_streams_own_schedule() -> None:
    interval = 100
    window = bench_proxy.RelayWindow(interval, t0_ns=1_000, t1_ns=2_000)
    parser = bench_proxy.SseEventParser(window)
    assert parser.expected() == 10  # nothing came: the window's share
    # Event 3 of a stream opened at 1,050: events due at 1,050 .. 1,950 fall in the window.
    parser.feed(b"HTTP/1.1 200 OK\r\n\r\n" + b"data: 3 1350 1351\n\n", 0, 0)
    assert parser.origin_ns == 1_050
    assert parser.expected() == 10
    assert parser.in_window == 1  # a lost event shows up as delivered < expected
    # A stream opened in the middle of the window owes only what fell due after it opened.
    late = bench_proxy.SseEventParser(window)
    late.feed(b"HTTP/1.1 200 OK\r\n\r\ndata: 0 1940 1940\n\n", 0, 0)
    assert late.expected() == 1


async def test_the_relay_upstream_keeps_its_schedule_for_the_client() -> None:
    interval_ns = 40_000_000
    upstream = bench_proxy.RelayUpstream(interval_ns)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: bench_proxy._RelaySource(upstream), "127.0.0.1", 0)
    ticker = asyncio.create_task(upstream.run())
    port = server.sockets[0].getsockname()[1]
    # Plain requests (the proxies' health checks) get an answer on a kept-alive connection.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
    answers = [await reader.readuntil(b'{"status":"ok"}') for _ in range(2)]
    assert all(a.startswith(b"HTTP/1.1 200 OK\r\n") for a in answers)
    writer.close()
    await writer.wait_closed()
    window = bench_proxy.RelayWindow(interval_ns)
    streams = [await bench_proxy.open_relay_stream(port, window, timeout=10) for _ in range(3)]
    try:
        start = time.time_ns() + 100_000_000
        window.t0_ns, window.t1_ns = start, start + 400_000_000
        await asyncio.sleep(1.0)  # the window, then ample time for its last events to arrive
        assert sum(s.parser.expected() for s in streams) == 30  # 10 per stream
        assert [s.parser.in_window for s in streams] == [s.parser.expected() for s in streams]
        assert all(d >= 0 for d in window.delays_ns) and len(window.delays_ns) == 30
        assert all(not s.lost and s.parser.bad == 0 for s in streams)
    finally:
        for s in streams:
            s.close()
        ticker.cancel()
        server.close()
        await server.wait_closed()


def test_part_two_runs_at_2000_per_second_unless_told_otherwise() -> None:
    args = bench_proxy.parse_args([])
    assert bench_proxy.latency_rate(args, None) == (2000.0, "fixed")
    assert set(bench_proxy.PARTS) <= set(args.parts.split(","))
    assert (args.relay_streams, args.relay_rate) == (2000, 10.0)
    args = bench_proxy.parse_args(["--rate", "half-peak"])
    assert bench_proxy.latency_rate(args, 5000.0) == (2500.0, "half of gslb-1w's peak")
    args = bench_proxy.parse_args(["--rate", "1500", "--parts", "latency,scaling"])
    assert bench_proxy.latency_rate(args, 9999.0) == (1500.0, "fixed")


@pytest.mark.parametrize(
    "argv",
    [
        ["--rate", "fast"],
        ["--rate", "0"],
        ["--parts", "throughput,nope"],
        ["--sse-streams", "100,x"],
        ["--scaling-workers", "0,2"],
        ["--relay-streams", "0"],
        ["--relay-rate", "-1"],
    ],
)
def test_bad_benchmark_arguments_are_refused(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        bench_proxy.parse_args(argv)
    assert exc.value.code == 2
    assert "error: " in capsys.readouterr().err.strip().splitlines()[-1]


def test_stream_counts_are_capped_by_the_open_files_limit() -> None:
    # Two descriptors per stream in the proxy, plus a reserve: 20,000 files hold 9,872.
    assert bench_proxy.stream_cap(20000) == (20000 - bench_proxy.FD_RESERVE) // 2
    runs = bench_proxy.capped_counts([1000, 10000], 20000)
    assert runs[0] == (1000, 1000, "")
    requested, n, why = runs[1]
    assert (requested, n) == (10000, bench_proxy.stream_cap(20000))
    assert "20,000" in why and f"{n:,} streams were run instead" in why


def test_the_scaling_layout_keeps_proxy_wrk_and_upstream_apart() -> None:
    layout = bench_proxy.ScalingLayout.for_cpus(list(range(16)))
    assert layout.proxy == tuple(range(8)) and not layout.shared
    assert layout.wrk == frozenset(range(8, 12)) and layout.upstream == frozenset(range(12, 16))
    assert layout.proxy_cpus(4) == frozenset(range(4))
    small = bench_proxy.ScalingLayout.for_cpus([0, 1])
    assert small.shared and small.proxy_cpus(8) == frozenset({0, 1})


def test_the_scaling_part_skips_below_its_cpu_count(tmp_path: Path) -> None:
    args = bench_proxy.parse_args(["--parts", "scaling"])
    assert args.scaling_min_cpus == 16
    # Nothing is started when it skips: no processes, no tools needed.
    out = bench_proxy.part_scaling(cast(Any, None), cast(Any, None), tmp_path, range(15), args)
    assert out["skipped"].startswith("skipped: this machine has 15 CPUs; worker scaling needs")
    assert bench_proxy.proxy_kind("gslb-8w") == ("gslb", 8)
    assert bench_proxy.proxy_kind("nginx") == ("nginx", 1)
    assert bench_proxy.proxy_kind("gslb") is None and bench_proxy.proxy_kind("direct") is None


def test_the_simulate_benchmark_runs() -> None:
    argv = ["benchmarks/bench_simulate.py", "--hours", "0.05", "--profile-hours", "0.02", "--json"]
    out = subprocess.run(
        [sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    got = json.loads(out.stdout)
    assert got["requests"] > 0 and set(got["requests_per_s_by_policy"]) >= {"gslb", "envoy"}
    # The profile names gslb's own functions (which ones lead depends on the kernel's backend).
    profile = got["profile_gslb"]
    assert len(profile) >= 4 and sum("gslb/" in line for line in profile) >= 3
