"""Nothing a client sends reaches a log: refusal codes, a rate-limited refusal log, redaction.

A malformed request is refused by gslb itself (the listener, ``gslb.edge.h1server``, maps the
parser's error to a reason code with ``gslb.core.h1framing.parser_reason``, never copying its
text, which may quote request bytes): the client gets a JSON 4xx built here, the refusal is
counted by reason and written to the access log, and one log line says what happened without
a byte of the request in it. Two parts, neither tied to a server library:

* ``RefusalLog``: at most a burst and then a few lines per second, and a periodic summary
  of the lines it held back, so a client cannot flood the log.
* ``RedactLibraryRecords``: a filter for every log handler gslb installs. A record from a
  logger outside ``gslb.*`` (aiohttp's server, access, web, internal and client loggers,
  asyncio's "Exception in callback" lines) is cut to its logger name, level and exception
  class: library code formats request bytes and peer addresses into its messages, argument
  reprs and tracebacks, and gslb cannot vet that text. gslb's own records pass unchanged
  (gslb keeps user data out of them by construction: docs/design.md).
"""

from __future__ import annotations

import logging
import secrets
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

from gslb.core.clientip import parse_ip, truncate_ip
from gslb.core.config import CLIENT_IP_NONE, CLIENT_IP_TRUNCATED

log = logging.getLogger("gslb.refused")

# --------------------------------------------------------------------------- reason codes


@dataclass(frozen=True, slots=True)
class Refusal:
    """What the client is told for one reason: a status and a fixed message."""

    status: int
    message: str


REFUSALS: Final[dict[str, Refusal]] = {
    "bad_request_line": Refusal(400, "malformed request line"),
    "bad_method": Refusal(400, "not an HTTP request"),
    "request_line_too_long": Refusal(414, "request line over the size limit"),
    "header_too_large": Refusal(431, "a request header is over the size limit"),
    "too_many_headers": Refusal(431, "too many request headers"),
    "bad_header": Refusal(400, "malformed request header"),
    "bad_framing": Refusal(400, "malformed message framing (Content-Length/Transfer-Encoding)"),
    "bad_request": Refusal(400, "malformed request"),
    "body_too_large": Refusal(413, "request body over the size limit"),
    "slow_request": Refusal(408, "the request headers or body came too slowly"),
    "expectation_failed": Refusal(417, "unsupported Expect"),
    "unsupported_transfer_encoding": Refusal(501, "unsupported Transfer-Encoding"),
    "method_not_allowed": Refusal(405, "method not allowed: gslb is not a forward proxy"),
    # Not the client's fault, but answered and logged the same careful way.
    "internal_error": Refusal(500, "internal error"),
    "handler_timeout": Refusal(504, "the request handler timed out"),
}
REASONS: Final = frozenset(REFUSALS)

# --------------------------------------------------------------------------- the refusal log

DEFAULT_BURST: Final = 20
DEFAULT_RATE_PER_S: Final = 2.0
DEFAULT_SUMMARY_EVERY_S: Final = 5.0


class RefusalLog:
    """Refusal lines through a token bucket; what it holds back is summed up periodically.

    ``burst`` lines pass at once, then ``rate_per_s``. Held-back lines are counted and written
    as one "N refused requests not logged" line ``summary_every_s`` after the first of them:
    by a timer when ``call_later`` is given (the event loop's), else at the next refusal.
    """

    def __init__(
        self,
        logger: logging.Logger = log,
        *,
        burst: int = DEFAULT_BURST,
        rate_per_s: float = DEFAULT_RATE_PER_S,
        summary_every_s: float = DEFAULT_SUMMARY_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
        call_later: Callable[[float, Callable[[], None]], object] | None = None,
    ) -> None:
        self.logger = logger
        self.burst = burst
        self.rate_per_s = rate_per_s
        self.summary_every_s = summary_every_s
        self.clock = clock
        self.call_later = call_later
        self.tokens = float(burst)
        self.last_fill = clock()
        self.held = 0  # lines held back since the last summary
        self.held_since: float | None = None
        self._window = 0  # which run of held-back lines a pending timer belongs to
        self.logged = 0
        self.summarized = 0  # held-back lines already reported in summaries

    def refused(self, reason: str, request_id: str, status: int, client: str | None) -> bool:
        """Log one refusal if the bucket allows; returns whether it was written."""
        now = self.clock()
        self._due(now)
        if not self._take(now):
            if self.held == 0:
                self.held_since = now
                if self.call_later is not None:
                    window = self._window
                    self.call_later(self.summary_every_s, lambda: self._timer(window))
            self.held += 1
            return False
        self.logged += 1
        self.logger.info(
            "refused request %s: %s (%d) from %s", request_id, reason, status, client or "-"
        )
        return True

    def flush(self) -> None:
        """Write the summary of held-back lines now, if there are any."""
        if self.held == 0:
            return
        since = self.held_since if self.held_since is not None else self.clock()
        self.logger.info(
            "%d refused requests not logged in the last %.1fs (rate limit)",
            self.held,
            max(0.0, self.clock() - since),
        )
        self.summarized += self.held
        self.held = 0
        self.held_since = None
        self._window += 1

    def _timer(self, window: int) -> None:
        if window == self._window:  # not already summed up by a refusal that came first
            self.flush()

    def _due(self, now: float) -> None:
        if self.held_since is not None and now - self.held_since >= self.summary_every_s:
            self.flush()

    def _take(self, now: float) -> bool:
        elapsed = max(0.0, now - self.last_fill)
        self.last_fill = now
        self.tokens = min(float(self.burst), self.tokens + elapsed * self.rate_per_s)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(frozen=True, slots=True)
class Answer:
    """gslb's own answer to a refused request, for whatever server writes it."""

    status: int
    headers: dict[str, str]
    body: bytes
    reason: str
    request_id: str


class Refusals:
    """What the public listener does with a request it refuses: count, log, answer.

    ``via`` and ``client_ip`` are read per refusal so a reload's values apply (``proxy.via``,
    ``log.client_ip``: "none" leaves the address out; any other mode logs it truncated, /24
    or /48: a refused request has no parsed headers, so the address is the socket peer's).
    """

    def __init__(
        self,
        refusal_log: RefusalLog,
        *,
        via: Callable[[], str],
        client_ip: Callable[[], str] = lambda: CLIENT_IP_TRUNCATED,
        on_refused: Callable[[Answer, str | None], None] = lambda answer, client: None,
    ) -> None:
        self.log = refusal_log
        self.via = via
        self.client_ip = client_ip
        self.on_refused = on_refused
        self._rid_prefix = secrets.token_hex(4)
        self._rid_counter = 0

    def new_request_id(self) -> str:
        self._rid_counter += 1
        return f"{self._rid_prefix}-r{self._rid_counter:x}"

    def refuse(self, reason: str, peer: str | None) -> Answer:
        if reason not in REFUSALS:
            reason = "bad_request"
        refusal = REFUSALS[reason]
        rid = self.new_request_id()
        client = self._client(peer)
        self.log.refused(reason, rid, refusal.status, client)
        body = orjson.dumps({"error": reason, "message": refusal.message, "request_id": rid})
        headers = {
            "X-Request-Id": rid,
            "Via": f"1.1 {self.via()}",
            "Connection": "close",
            "Content-Type": "application/json",
        }
        answer = Answer(refusal.status, headers, body, reason, rid)
        self.on_refused(answer, client)
        return answer

    def _client(self, peer: str | None) -> str | None:
        if peer is None or self.client_ip() == CLIENT_IP_NONE:
            return None
        ip = parse_ip(peer)
        return truncate_ip(ip) if ip is not None else None


# --------------------------------------------------------------------------- redaction

REDACTED: Final = "library log record redacted (it may hold request bytes)"


def _ours(name: str) -> bool:
    return name == "gslb" or name.startswith("gslb.")


class RedactLibraryRecords(logging.Filter):
    """Cuts a record from outside ``gslb.*`` to its logger name, level and exception class.

    Installed on handlers, not loggers: a logger's filters do not see records that propagate
    up from child loggers, a handler's see every record it writes. The record is changed in
    place (Python 3.11 filters cannot return a replacement), so handlers after this one get
    the cut record too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if _ours(record.name):
            return True
        exc_name = None
        if record.exc_info and record.exc_info[0] is not None:
            exc_name = record.exc_info[0].__name__
        record.msg = f"{REDACTED} [{exc_name}]" if exc_name else REDACTED
        record.args = None
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return True


def redacting(handler: logging.Handler) -> logging.Handler:
    """Add the redaction filter to ``handler`` (once); every handler gslb installs needs it."""
    if not any(isinstance(f, RedactLibraryRecords) for f in handler.filters):
        handler.addFilter(RedactLibraryRecords())
    return handler


def configure_logging(level: int | str, stream: Any) -> None:
    """The process's root log handler: gslb's format, library records redacted.

    Like ``logging.basicConfig`` it does nothing when the root logger has handlers already
    (an embedding application's, or a test runner's).
    """
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[redacting(handler)])


def where_it_failed(exc: BaseException) -> str:
    """An exception for gslb's own log: its class and where it was raised, frame by frame,
    without its message, which may quote what a client sent (a header value, a path)."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))
    return f"{type(exc).__name__} at {where}" if where else type(exc).__name__
