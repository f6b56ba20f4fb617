"""Nothing a client sends reaches a log (docs/design.md): refusals, the limiter, redaction.

The end-to-end test runs a real `gslb serve`, sends it malformed requests over raw sockets from
a distinctive loopback address (Linux routes all of 127/8 to lo), each request carrying fresh
secrets in its Authorization, Cookie, query string and body, then searches everything gslb
wrote: stderr, the access log, the admin pages and every file in the test's directory.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp.http_exceptions import (
    BadHttpMessage,
)
from prometheus_client.parser import text_string_to_metric_families

from gslb.edge.logsafety import (
    DEFAULT_BURST,
    DEFAULT_RATE_PER_S,
    DEFAULT_SUMMARY_EVERY_S,
    REDACTED,
    RedactLibraryRecords,
    RefusalLog,
    Refusals,
)
from gslb.sim.fakeregion import FakeRegion, FakeRegionOptions
from tests.fleet import REGIONS, fleet_toml
from tests.mmdb_fixtures import write_world_mmdb
from tests.ops.test_serve import ROOT, free_port, wait_http

SOURCE = "127.45.67.89"  # the client's address: must never appear in full
SOURCE_NET = "127.45.67.0/24"  # its truncation: what gslb may write
REFUSED_LINE = re.compile(r"refused request (\S+): (\w+) \((\d+)\) from (\S+)")
SUMMARY_LINE = re.compile(r"(\d+) refused requests not logged in the last")


# --------------------------------------------------------------------------- unit: redaction


def _format(record: logging.LogRecord) -> str:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactLibraryRecords())
    handler.handle(record)
    return out.getvalue()


def _record(name: str, secret: str, *, exc: bool) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise BadHttpMessage(f"Invalid header value char:\n\n  b'Cookie: {secret}'")
        except BadHttpMessage:
            exc_info = sys.exc_info()
    return logging.LogRecord(
        name,
        logging.ERROR,
        __file__,
        1,
        "Error handling request from %s: %r",
        (secret, {"authorization": secret}),
        exc_info,
        sinfo=f"Stack (most recent call last):\n  {secret}",
    )


@pytest.mark.parametrize("name", ["aiohttp.server", "aiohttp.access", "asyncio", "root", "gslbx"])
def test_redaction_cuts_library_records_to_name_level_and_class(name: str) -> None:
    secret = secrets.token_hex(12)
    text = _format(_record(name, secret, exc=True))
    assert secret not in text
    assert text.startswith(f"ERROR {name}: {REDACTED}")
    assert "[BadHttpMessage]" in text and "Traceback" not in text and "Stack" not in text
    plain = _format(_record(name, secret, exc=False))  # no exception: no class either
    assert secret not in plain and plain.strip() == f"ERROR {name}: {REDACTED}"


def test_redaction_leaves_gslb_records_alone() -> None:
    secret = secrets.token_hex(12)
    text = _format(_record("gslb.edge.proxy", secret, exc=True))
    assert secret in text and "Traceback" in text and REDACTED not in text


# --------------------------------------------------------------------------- unit: the limiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _limiter(
    clock: FakeClock, timers: list[tuple[float, Callable[[], None]]] | None = None
) -> tuple[RefusalLog, ListHandler]:
    logger = logging.getLogger(f"gslb.test.refused.{secrets.token_hex(4)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = ListHandler()
    logger.addHandler(handler)
    call_later = None if timers is None else (lambda d, cb: timers.append((clock.now + d, cb)))
    limiter = RefusalLog(
        logger, burst=3, rate_per_s=2.0, summary_every_s=10.0, clock=clock, call_later=call_later
    )
    return limiter, handler


def test_limiter_burst_then_rate_then_summary() -> None:
    clock = FakeClock()
    limiter, out = _limiter(clock)
    written = [limiter.refused("bad_header", f"id-{i}", 400, SOURCE_NET) for i in range(10)]
    assert written == [True] * 3 + [False] * 7  # the burst, then nothing without time
    assert out.lines[0] == f"refused request id-0: bad_header (400) from {SOURCE_NET}"
    clock.now += 1.0  # two tokens at 2/s
    assert [limiter.refused("bad_header", "x", 400, None) for _ in range(3)] == [
        True,
        True,
        False,
    ]
    assert len(out.lines) == 5 and out.lines[-1].endswith("from -")
    clock.now += 9.0  # ten seconds since the first held-back line: the next refusal sums up
    assert limiter.refused("bad_framing", "y", 400, None)
    assert out.lines[5] == "8 refused requests not logged in the last 10.0s (rate limit)"
    assert out.lines[6].startswith("refused request y: bad_framing")
    assert limiter.logged + limiter.summarized + limiter.held == 14
    limiter.flush()  # nothing held: no line
    assert len(out.lines) == 7


def test_limiter_summary_timer_fires_without_further_refusals() -> None:
    clock = FakeClock()
    timers: list[tuple[float, Callable[[], None]]] = []
    limiter, out = _limiter(clock, timers)
    for i in range(5):
        limiter.refused("bad_method", f"id-{i}", 400, None)
    assert len(timers) == 1 and timers[0][0] == clock.now + 10.0  # one timer per run
    clock.now = timers[0][0]
    timers[0][1]()
    assert out.lines[-1] == "2 refused requests not logged in the last 10.0s (rate limit)"
    # A timer from a run a refusal already summed up does not write a second summary.
    limiter.refused("bad_method", "a", 400, None)  # tokens refilled: written
    for _ in range(4):
        limiter.refused("bad_method", "b", 400, None)
    assert len(timers) == 2
    clock.now += 10.0
    limiter.refused("bad_method", "c", 400, None)  # due: the refusal writes the summary
    lines = len(out.lines)
    timers[1][1]()
    assert len(out.lines) == lines


def test_refusals_answer_counts_and_truncates() -> None:
    clock = FakeClock()
    limiter, out = _limiter(clock)
    counted: list[tuple[str, str | None]] = []
    refusals = Refusals(
        limiter,
        via=lambda: "edge-1",
        on_refused=lambda answer, client: counted.append((answer.reason, client)),
    )
    answer = refusals.refuse("header_too_large", SOURCE)
    assert answer.status == 431
    doc = orjson.loads(answer.body)
    assert doc["error"] == "header_too_large" and doc["request_id"] == answer.request_id
    assert answer.headers["X-Request-Id"] == answer.request_id
    assert answer.headers["Via"] == "1.1 edge-1" and answer.headers["Connection"] == "close"
    assert counted == [("header_too_large", SOURCE_NET)]
    assert out.lines == [
        f"refused request {answer.request_id}: header_too_large (431) from {SOURCE_NET}"
    ]
    v6 = refusals.refuse("no-such-code", "2001:db8:1234:5678::1")
    assert v6.reason == "bad_request" and out.lines[-1].endswith("from 2001:db8:1234::/48")
    hidden = Refusals(limiter, via=lambda: "g", client_ip=lambda: "none")
    hidden.refuse("bad_method", SOURCE)
    assert out.lines[-1].endswith("from -")


# --------------------------------------------------------------------------- end to end


@dataclass
class Secrets:
    """A fresh random token for each place a client can put one."""

    auth: bytes = field(default_factory=lambda: secrets.token_hex(12).encode())
    cookie: bytes = field(default_factory=lambda: secrets.token_hex(12).encode())
    query: bytes = field(default_factory=lambda: secrets.token_hex(12).encode())
    body: bytes = field(default_factory=lambda: secrets.token_hex(12).encode())

    def all(self) -> list[str]:
        return [t.decode() for t in (self.auth, self.cookie, self.query, self.body)]


def _line(s: Secrets, pad: bytes = b"") -> bytes:
    return b"POST /v1/chat/completions?api_key=" + s.query + pad + b" HTTP/1.1\r\n"


def _headers(s: Secrets, cookie_pad: bytes = b"") -> bytes:
    return (
        b"Host: edge.example\r\nAuthorization: Bearer " + s.auth + b"\r\n"
        b"Cookie: session=" + s.cookie + cookie_pad + b"\r\n"
        b"Content-Type: application/json\r\n"
    )


def _body(s: Secrets) -> bytes:
    return b'{"model":"fake-llm","messages":[{"role":"user","content":"' + s.body + b'"}]}'


def _sized(s: Secrets) -> bytes:
    return b"Content-Length: %d\r\n\r\n" % len(_body(s)) + _body(s)


def _chunked(s: Secrets, size: bytes) -> bytes:
    return b"Transfer-Encoding: chunked\r\n\r\n" + size + b"\r\n" + _body(s) + b"\r\n0\r\n\r\n"


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Secrets], bytes]
    status: int
    code: str


CASES = [
    Case(
        "bad request line",
        lambda s: _line(s).replace(b" HTTP/1.1", b" HTTP/1.1 junk") + _headers(s) + _sized(s),
        400,
        "bad_request_line",
    ),
    Case(
        "bad header name",
        lambda s: _line(s) + _headers(s) + b"Bad Name: " + s.auth + b"\r\n" + _sized(s),
        400,
        "bad_header",
    ),
    Case(
        "bad header value",
        lambda s: _line(s) + _headers(s) + b"X-Note: a\x01" + s.cookie + b"\r\n" + _sized(s),
        400,
        "bad_header",
    ),
    Case(
        "Content-Length and Transfer-Encoding",
        lambda s: _line(s) + _headers(s) + b"Content-Length: 4\r\n" + _chunked(s, b"%x" % 99),
        400,
        "bad_framing",
    ),
    Case(
        "bad chunk size",
        lambda s: _line(s) + _headers(s) + _chunked(s, b"zz" + s.body),
        400,
        "bad_framing",
    ),
    Case(
        "negative Content-Length",
        lambda s: _line(s) + _headers(s) + b"Content-Length: -5\r\n\r\n" + _body(s),
        400,
        "bad_framing",
    ),
    Case(
        "Content-Length overflow",
        lambda s: _line(s) + _headers(s) + b"Content-Length: " + b"9" * 31 + b"\r\n\r\n" + _body(s),
        400,
        "bad_framing",
    ),
    Case(
        "cookie over 8 KiB",
        lambda s: _line(s) + _headers(s, cookie_pad=b"c" * 9000) + _sized(s),
        431,
        "header_too_large",
    ),
    Case(
        "too many headers",
        lambda s: (
            _line(s)
            + _headers(s)
            + b"".join(b"X-Pad-%d: %s\r\n" % (i, s.auth) for i in range(200))
            + _sized(s)
        ),
        431,
        "too_many_headers",
    ),
    Case(
        "binary garbage",
        lambda s: b"\x16\x03\x01\x02\x00\x01\x00" + s.auth + b"\xff\xfe\r\n" + s.body + b"\r\n\r\n",
        400,
        "bad_method",
    ),
    Case(
        "request line over the limit",
        lambda s: _line(s, pad=b"a" * 9000) + _headers(s) + _sized(s),
        414,
        "request_line_too_long",
    ),
    Case(
        "Content-Length over max_body_bytes",
        lambda s: _line(s) + _headers(s) + b"Content-Length: 2000000\r\n\r\n" + _body(s),
        413,
        "body_too_large",
    ),
]
LISTENER = CASES  # every one is refused by the listener itself


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    raw: bytes


async def send_raw(port: int, data: bytes, source: str = SOURCE) -> Reply:
    """Send ``data`` from ``source`` on a new connection; read one response (Content-Length
    framed, as every answer here is), or until gslb closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    raw = b""
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(10):
            while (chunk := await reader.read(65536)) and not _complete(raw := raw + chunk):
                pass
    finally:
        writer.close()
    status, headers, body = _parse(raw)
    return Reply(status, headers, body, raw)


def _parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def _complete(raw: bytes) -> bool:
    if b"\r\n\r\n" not in raw:
        return False
    _, headers, body = _parse(raw)
    return "content-length" in headers and len(body) >= int(headers["content-length"])


@asynccontextmanager
async def serve_with_files(tmp: Path) -> AsyncIterator[tuple[subprocess.Popen[bytes], int, str]]:
    """`gslb serve` (one worker) with its access log in a file and stderr captured to a file."""
    mmdb = tmp / "world.mmdb"
    write_world_mmdb(str(mmdb))
    fake = FakeRegion(FakeRegionOptions(name="us-east"))
    await fake.start()
    port, admin_port = free_port(), free_port()
    cfg = tmp / "gslb.toml"
    geoip = f'database = "{mmdb}"'
    cfg.write_text(
        f'[server]\nlisten = "127.0.0.1:{port}"\nadmin_listen = "127.0.0.1:{admin_port}"\n'
        f'[proxy]\nmax_body_bytes = 1000000\nreplay_buffer_bytes = 65536\n'
        f'[log]\naccess = "{tmp / "access.log"}"\nlevel = "info"\n'
        + fleet_toml(urls={"us-east": [fake.url]}, regions=[REGIONS[0]], geoip=geoip)
    )  # fmt: skip
    with (tmp / "stderr.log").open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gslb", "serve", "--config", str(cfg), "--workers", "1"],
            cwd=ROOT,
            stderr=stderr,
        )
        try:
            await wait_http(f"http://127.0.0.1:{admin_port}/readyz")
            yield proc, port, f"http://127.0.0.1:{admin_port}"
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            await fake.stop()


def refusal_lines(text: str) -> dict[str, tuple[str, int, str]]:
    """request id -> (reason, status, client) of every refusal line in ``text``."""
    return {
        m.group(1): (m.group(2), int(m.group(3)), m.group(4)) for m in REFUSED_LINE.finditer(text)
    }


async def wait_for(cond: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


def refused_metric(text: str) -> dict[str, float]:
    return {
        s.labels["reason"]: s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "gslb_refused_requests_total"
    }


async def test_malformed_requests_leak_nothing_anywhere(tmp_path: Path) -> None:
    stderr_path = tmp_path / "stderr.log"
    told: list[str] = []  # every secret any client sent
    async with serve_with_files(tmp_path) as (proc, port, admin):
        # 0. A well-formed request with secrets in the usual places, through the proxy.
        ok = Secrets()
        told += ok.all()
        reply = await send_raw(
            port, _line(ok) + _headers(ok) + b"Connection: close\r\n" + _sized(ok)
        )
        assert reply.status == 200, reply.raw[:300]

        # 1. Each kind of malformed request: gslb's JSON answer, never the request's bytes.
        ids: dict[str, Case] = {}
        t0 = time.monotonic()
        for case in CASES:
            s = Secrets()
            told += s.all()
            reply = await send_raw(port, case.build(s))
            assert reply.status == case.status, (case.name, reply.raw[:300])
            assert reply.headers.get("content-type", "").startswith("application/json")
            doc = orjson.loads(reply.body)
            assert doc["error"] == case.code, case.name
            rid = reply.headers["x-request-id"]
            assert doc["request_id"] == rid and doc["message"]
            assert reply.headers["via"] == "1.1 gslb"
            assert not any(t.encode() in reply.raw for t in s.all()), case.name
            assert reply.headers["connection"] == "close"
            assert "server" not in reply.headers  # no library banner
            ids[rid] = case

        # Each listener refusal has its line, with the reason, the id and the /24.
        await wait_for(lambda: set(ids) <= set(refusal_lines(stderr_path.read_text())), 10)
        lines = refusal_lines(stderr_path.read_text())
        for rid, case in ids.items():
            assert lines[rid] == (case.code, case.status, SOURCE_NET), case.name

        # 2. A flood: a bounded number of lines, the rest summed up, every refusal counted.
        flood = 300
        for _ in range(flood // 30):
            batch = [Secrets() for _ in range(30)]
            told += [t for s in batch for t in s.all()]
            replies = await asyncio.gather(
                *(send_raw(port, LISTENER[i % len(LISTENER)].build(s)) for i, s in enumerate(batch))
            )
            assert all(400 <= r.status < 500 for r in replies)
        span = time.monotonic() - t0  # lines can only be written while refusals come in
        refused = len(ids) + flood

        def summed() -> int:
            text = stderr_path.read_text()
            held = sum(int(n) for n in SUMMARY_LINE.findall(text))
            return len(refusal_lines(text)) + held

        await wait_for(lambda: summed() == refused, DEFAULT_SUMMARY_EVERY_S * 3 + 5)
        text = stderr_path.read_text()
        written = len(refusal_lines(text))
        # The bucket: the burst, then the rate while refusals came in.
        assert written <= DEFAULT_BURST + DEFAULT_RATE_PER_S * span + 1, (written, span)
        assert written < flood / 4 and SUMMARY_LINE.search(text)

        # 3. Malformed requests to the admin listener (aiohttp's own handler): aiohttp's
        # records about them reach stderr only redacted.
        s = Secrets()
        told += s.all()
        admin_port = int(admin.rsplit(":", 1)[1])
        await send_raw(admin_port, LISTENER[1].build(s))  # bad header name
        await send_raw(admin_port, LISTENER[7].build(s))  # cookie over 8 KiB
        await wait_for(lambda: "aiohttp.server" in stderr_path.read_text(), 10)

        # 4. The admin pages: counted by reason, and nothing of the requests.
        async with aiohttp.ClientSession() as c:
            async with c.get(admin + "/metrics") as r:
                metrics = await r.text()
            async with c.get(admin + "/status") as r:
                status = await r.text()
        counts = refused_metric(metrics)
        assert sum(counts.values()) == refused
        for case in CASES:
            assert counts[case.code] >= 1, case.code
        (tmp_path / "metrics.txt").write_text(metrics)  # searched with the rest below
        (tmp_path / "status.json").write_text(status)

    assert proc.returncode == 0
    # Nothing anywhere: every file under the test's directory, whatever gslb wrote.
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {"stderr.log", "access.log", "metrics.txt", "status.json"} <= {p.name for p in files}
    for path in files:
        data = path.read_bytes()
        assert SOURCE.encode() not in data, path
        leaked = [t for t in told if t.encode() in data]
        assert not leaked, (path, leaked[:3])
    # ... while what may be written was: the /24, aiohttp's records cut down, access lines.
    err = stderr_path.read_text()
    assert SOURCE_NET in err
    assert f"ERROR aiohttp.server: {REDACTED} [" in err
    access = (tmp_path / "access.log").read_text()
    assert '"status":200' in access and '"status":413' in access
    assert f'"client":"{SOURCE_NET}"' in access
    logged = {orjson.loads(line)["request_id"] for line in access.splitlines() if line}
    assert set(ids) <= logged  # every refusal has its access-log line too
