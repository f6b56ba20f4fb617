"""Access log: exact JSON lines, a writer that never blocks the caller, logrotate, "off"."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from gslb.core.config import LogConfig
from gslb.ops.accesslog import AccessLog
from gslb.ops.observe import RequestRecord

T0 = 1_700_000_000.25  # 2023-11-14T22:13:20.250Z


def rec(**kw: object) -> RequestRecord:
    base = RequestRecord(
        request_id="9f1c",
        method="POST",
        path="/v1/chat/completions",
        status=200,
        region="eu-west",
        route="local",
        attempts=2,
        ttfb_s=0.1234567,
        duration_s=2.5,
        bytes_in=321,
        bytes_out=4567,
        country="IE",
        client="203.0.113.0",
        error=None,
        retries=("http_503",),
        spilled_from=None,
    )
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def lines(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture
def closing() -> Iterator[list[AccessLog]]:
    logs: list[AccessLog] = []
    yield logs
    for log in logs:
        log.close(timeout=1.0)


def test_fields_serialized_exactly(tmp_path: Path, closing: list[AccessLog]) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path), clock=lambda: T0)
    closing.append(log)
    log.request_done(rec())
    log.request_done(
        rec(
            status=503,
            region=None,
            route="no_eligible_region",
            attempts=0,
            ttfb_s=None,
            duration_s=0.0005,
            country=None,
            client=None,
            error="no_eligible_region",
            retries=(),
        )
    )
    assert log.flush()
    first, second = lines(path)
    assert first == {
        "ts": "2023-11-14T22:13:20.250Z",
        "request_id": "9f1c",
        "method": "POST",
        "path": "/v1/chat/completions",
        "status": 200,
        "region": "eu-west",
        "route": "local",
        "attempts": 2,
        "ttfb_ms": 123.457,
        "duration_ms": 2500.0,
        "bytes_in": 321,
        "bytes_out": 4567,
        "country": "IE",
        "client": "203.0.113.0",
        "error": None,
        "retries": ["http_503"],
    }
    assert list(first) == list(second)  # same keys, same order, on every line
    assert second["region"] is None
    assert second["ttfb_ms"] is None
    assert second["duration_ms"] == 0.5
    assert second["client"] is None
    assert second["error"] == "no_eligible_region"
    assert second["retries"] == []


def test_only_record_fields_are_written(tmp_path: Path, closing: list[AccessLog]) -> None:
    # The record has no body, headers, cookies or query string; the line must not grow any.
    path = tmp_path / "access.log"
    log = AccessLog(str(path), clock=lambda: T0)
    closing.append(log)
    log.request_done(rec())
    log.flush()
    (line,) = lines(path)
    allowed = {f.name for f in dataclasses.fields(RequestRecord)} - {"spilled_from"}
    renamed = {"ttfb_ms": "ttfb_s", "duration_ms": "duration_s"}
    assert {renamed.get(k, k) for k in line} - {"ts"} == allowed


def test_timestamps_utc_milliseconds(tmp_path: Path, closing: list[AccessLog]) -> None:
    now = [T0]
    path = tmp_path / "access.log"
    log = AccessLog(str(path), clock=lambda: now[0])
    closing.append(log)
    for t in (T0, T0 + 0.9999, T0 + 86400.001):
        now[0] = t
        log.request_done(rec())
    log.flush()
    assert [line["ts"] for line in lines(path)] == [
        "2023-11-14T22:13:20.250Z",
        "2023-11-14T22:13:21.250Z",
        "2023-11-15T22:13:20.251Z",
    ]


def test_appends_to_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    path.write_bytes(b'{"old":1}\n')
    log = AccessLog(str(path))
    log.request_done(rec())
    log.close()
    assert len(lines(path)) == 2
    log.request_done(rec())  # after close: ignored, no error
    assert len(lines(path)) == 2


def test_reopen_after_logrotate(tmp_path: Path, closing: list[AccessLog]) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path), clock=lambda: T0)
    closing.append(log)
    log.request_done(rec(request_id="before"))
    log.flush()
    rotated = tmp_path / "access.log.1"
    path.rename(rotated)
    log.request_done(rec(request_id="late"))  # still the old (moved) file until reopen
    log.flush()
    log.reopen()
    log.request_done(rec(request_id="after"))
    log.flush()
    assert [line["request_id"] for line in lines(rotated)] == ["before", "late"]
    assert [line["request_id"] for line in lines(path)] == ["after"]


def test_off_writes_nothing(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    log = AccessLog("off")
    assert not log.enabled
    log.request_done(rec())
    log.reopen()
    assert log.flush()
    log.close()
    assert log._thread is None  # no writer thread for "off"
    out, err = capfd.readouterr()
    assert out == err == ""
    assert list(tmp_path.iterdir()) == []


def test_stdout_destination(capfd: pytest.CaptureFixture[str]) -> None:
    log = AccessLog("stdout", clock=lambda: T0)
    log.request_done(rec(request_id="to-stdout"))
    log.close()
    out, err = capfd.readouterr()
    assert orjson.loads(out)["request_id"] == "to-stdout"
    assert err == ""


def test_stderr_destination(capsys: pytest.CaptureFixture[str]) -> None:
    log = AccessLog("stderr", clock=lambda: T0)
    log.request_done(rec(request_id="to-stderr"))
    log.close()
    out, err = capsys.readouterr()
    assert out == ""
    assert orjson.loads(err)["request_id"] == "to-stderr"


def test_from_config(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    log = AccessLog.from_config(LogConfig(access=str(path)))
    assert log.destination == str(path)
    log.request_done(rec())
    log.close()
    assert len(lines(path)) == 1
    assert not AccessLog.from_config(LogConfig(access="off")).enabled


def test_bad_path_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        AccessLog(str(tmp_path / "missing-dir" / "access.log"))


def test_blocked_destination_never_blocks_caller(tmp_path: Path) -> None:
    # A FIFO nobody reads: the writer thread blocks once the pipe buffer (64 KiB) is full.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # lets the writer's open() succeed
    log = AccessLog(str(fifo), clock=lambda: T0, max_queue=100)
    n = 5000  # ~1.5 MB of lines: far more than the pipe and the queue can hold
    try:
        started = time.perf_counter()
        for i in range(n):
            log.request_done(rec(request_id=f"r{i}"))
        elapsed = time.perf_counter() - started
        assert elapsed < 2.0  # microseconds per call; a blocked write would hang here
        assert log.dropped > n // 2
        assert not log.flush(timeout=0.2)  # the writer really is stuck
        log.close(timeout=0.01)  # gives up waiting instead of hanging
    finally:
        data = _drain(reader, log)
        os.close(reader)
    # Every line was either written whole or counted as dropped.
    written = [orjson.loads(line)["request_id"] for line in data.splitlines()]
    assert written[0] == "r0"
    assert len(written) + log.dropped == n


def _drain(reader: int, log: AccessLog) -> bytes:
    """Read the FIFO until the writer thread has finished and closed its end."""
    data = bytearray()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            chunk = os.read(reader, 1 << 16)
        except BlockingIOError:
            time.sleep(0.005)
            continue
        if not chunk:  # writer closed the FIFO: it has stopped
            break
        data += chunk
    return bytes(data)


def test_write_errors_counted_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path), clock=lambda: T0)
    assert log._file is not None
    log._file.close()  # the writer's next write fails (ValueError: closed file)
    log.request_done(rec())
    log.flush()
    assert log.write_errors == 1
    log.reopen()  # recovers onto a fresh handle
    log.request_done(rec(request_id="recovered"))
    log.flush()
    log.close()
    assert [line["request_id"] for line in lines(path)] == ["recovered"]
