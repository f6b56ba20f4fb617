"""The access log: one JSON line per finished request, written off the event loop.

``request_done`` serializes the record with orjson (a couple of microseconds) and hands the
line to a writer thread through a ``SimpleQueue`` held to ``max_queue`` lines: when the
writer falls behind (a slow disk, a pipe nobody reads), lines are dropped and counted
instead of blocking the loop or growing memory without limit.

What a line holds is exactly what ``RequestRecord`` holds: no body, header, cookie, credential
or query string (``path`` is the request path without its query string, as the proxy gives
it), and the client address only as truncated by ``log.client_ip``.

Destinations: ``"stderr"``, ``"stdout"``, ``"off"`` (or empty: nothing at all, no thread) or a
file path, opened for append. ``reopen()`` (the lead calls it on SIGUSR1, after logrotate moved
the file) only sets a flag: the writer thread reopens the path before its next write.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any, Final

import orjson

from gslb.core.config import ACCESS_LOG_OFF, ACCESS_LOG_STREAMS, LogConfig
from gslb.ops.observe import RequestRecord

log = logging.getLogger("gslb.ops.accesslog")

DEFAULT_MAX_QUEUE: Final = 10_000
# Lines written per write() call at most: large enough to amortize syscalls, small enough that
# a flush() waiter or a reopen is not held up for long.
MAX_BATCH: Final = 512


class _Flush:
    """A marker the writer sets once every line queued before it is written."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


_STOP: Final = object()
_WAKE: Final = object()


class _Timestamps:
    """RFC 3339 UTC timestamps with milliseconds; the date part is formatted once a second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def format(self, t: float) -> str:
        # Rounded to the millisecond: truncating would turn 0.251 (0.25099.. as a float) to 250.
        second, millis = divmod(round(t * 1000.0), 1000)
        if second != self._second:
            self._second = second
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._prefix}.{millis:03d}Z"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def record_fields(record: RequestRecord, ts: str) -> dict[str, Any]:
    """The fields of one access log line, in the order they are written."""
    return {
        "ts": ts,
        "request_id": record.request_id,
        "method": record.method,
        "path": record.path,  # query-free by construction (RequestRecord.path)
        "status": record.status,
        "region": record.region,
        "route": record.route,
        "attempts": record.attempts,
        "ttfb_ms": _ms(record.ttfb_s),
        "duration_ms": _ms(record.duration_s),
        "bytes_in": record.bytes_in,
        "bytes_out": record.bytes_out,
        "country": record.country,
        "client": record.client,
        "error": record.error,
        "retries": list(record.retries),
    }


class AccessLog:
    """An ``Observer`` writing one JSON line per request; never blocks the caller on I/O."""

    def __init__(
        self,
        destination: str,
        clock: Callable[[], float] = time.time,
        *,
        max_queue: int = DEFAULT_MAX_QUEUE,
    ) -> None:
        self.destination = destination
        self.enabled = destination not in (ACCESS_LOG_OFF, "")
        self.dropped = 0  # lines dropped because the writer was behind (or the log closed)
        self.write_errors = 0  # batches lost to failed writes (disk full, broken pipe)
        self._clock = clock
        self._stamps = _Timestamps()
        self._max_queue = max_queue
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._reopen = False
        self._closed = not self.enabled
        self._file: IO[bytes] | None = None
        self._thread: threading.Thread | None = None
        if not self.enabled:
            return
        if destination not in ACCESS_LOG_STREAMS:
            # Opened here, at start-up, so a bad path fails the start rather than every line.
            self._file = _open(destination)
        self._thread = threading.Thread(target=self._run, name="gslb-accesslog", daemon=True)
        self._thread.start()

    @classmethod
    def from_config(cls, cfg: LogConfig) -> AccessLog:
        return cls(cfg.access)

    # -- Observer (event loop side) ------------------------------------------------------------

    def request_done(self, record: RequestRecord) -> None:
        if self._closed:
            return
        if self._queue.qsize() >= self._max_queue:
            self.dropped += 1
            return
        fields = record_fields(record, self._stamps.format(self._clock()))
        self._queue.put(orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE))

    def decision_made(self, seconds: float) -> None:
        pass

    def denied(self, cause: str, rules: tuple[str, ...]) -> None:
        pass

    # -- control -------------------------------------------------------------------------------

    def reopen(self) -> None:
        """Reopen the file before the next write (logrotate). Safe from a signal handler."""
        if self._file is None or self._closed:
            return
        self._reopen = True
        self._queue.put(_WAKE)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every line queued so far is written. Blocks: not for the event loop."""
        if self._closed:
            return True
        marker = _Flush()
        self._queue.put(marker)
        return marker.done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, stop the writer thread and close the file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("access log writer still blocked after %.1fs; abandoning it", timeout)

    # -- writer thread -------------------------------------------------------------------------

    def _run(self) -> None:
        stop = False
        while not stop:
            lines, waiters, stop = self._take()
            if self._reopen:
                self._reopen = False
                self._do_reopen()
            if lines:
                self._write(b"".join(lines))
            for w in waiters:
                w.done.set()
        if self._file is not None:
            _close_quietly(self._file)
            self._file = None

    def _take(self) -> tuple[list[bytes], list[_Flush], bool]:
        """Block for one item, then take what else is queued (up to a batch)."""
        lines: list[bytes] = []
        waiters: list[_Flush] = []
        item = self._queue.get()
        while True:
            if item is _STOP:
                return lines, waiters, True
            if isinstance(item, bytes):
                lines.append(item)
            elif isinstance(item, _Flush):
                waiters.append(item)
            if len(lines) >= MAX_BATCH:
                return lines, waiters, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return lines, waiters, False

    def _write(self, data: bytes) -> None:
        try:
            if self._file is not None:
                self._file.write(data)
                self._file.flush()
            else:
                _write_stream(self.destination, data)
        except (OSError, ValueError) as exc:
            self.write_errors += 1
            if self.write_errors == 1:
                log.warning("access log write to %s failed: %s", self.destination, exc)

    def _do_reopen(self) -> None:
        try:
            new = _open(self.destination)
        except OSError as exc:
            log.warning(
                "access log reopen of %s failed, keeping the old file: %s", self.destination, exc
            )
            return
        old, self._file = self._file, new
        if old is not None:
            _close_quietly(old)


def _open(path: str) -> IO[bytes]:
    # Every batch is flushed right after it is written, which gives line-buffered behavior
    # (whole lines only) with one write per batch instead of one per line.
    return open(path, "ab")


def _write_stream(name: str, data: bytes) -> None:
    # Looked up on each write so a replaced sys.stdout/sys.stderr (tests, daemons) is honored.
    stream = sys.stdout if name == "stdout" else sys.stderr
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        stream.flush()  # keep order with text already written through the text layer
        buffer.write(data)
        buffer.flush()
    else:
        stream.write(data.decode("utf-8"))
        stream.flush()


def _close_quietly(f: IO[bytes]) -> None:
    try:
        f.close()
    except OSError as exc:
        log.warning("access log close failed: %s", exc)
