"""HTTP/1.1 framing rules for the raw listener (``gslb.edge.h1server``), without I/O.

What is decided once per request here, apart from the sockets: the listener's limits, which
request framings are accepted (the smuggling rules beyond what llhttp already refuses in
strict mode), which reason code a parser error maps to, how a response head is framed
(Content-Length, chunked, or close-delimited; no body for HEAD, 1xx, 204 and 304), chunk
encoding, and the slow-upload deadline (Apache mod_reqtimeout's MinRate: each byte received
buys ``1 / min_upload_rate`` seconds, so a client that trickles is cut although it is never
idle). Time comes in as arguments; nothing here reads a clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final, NamedTuple


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """The listener's limits: ``[server]`` and ``[proxy]`` config values, plus flow control."""

    max_connections: int = 10000
    max_line_size: int = 8190  # the request line, bytes
    max_field_size: int = 8190  # one header line (name and value), bytes
    max_headers: int = 100
    max_body_bytes: int = 33554432
    keepalive_timeout_s: float = 75.0  # idle between requests on a kept-alive connection
    header_timeout_s: float = 10.0  # from accept, or from a later request's first byte
    body_timeout_s: float = 60.0  # total, for a body the application buffers (``body()``)
    min_upload_rate: float = 1024.0  # bytes/s a body must keep up after the grace
    min_upload_grace_s: float = 10.0
    read_high_water: int = 65536  # buffered request bytes before the socket is paused
    read_low_water: int = 16384
    write_high_water: int = 65536  # the transport's write buffer marks
    write_low_water: int = 16384
    max_pipelined: int = 32  # parsed requests waiting their turn before reading pauses
    # A client that reads nothing of what gslb sends for this long is cut (nginx's
    # send_timeout): a slow reader cannot hold a stream, and its upstream, forever.
    send_timeout_s: float = 60.0
    linger_s: float = 2.0  # reading (and dropping) after a refusal, so the client sees it
    sweep_s: float = 0.2  # how often deadlines are checked

    def head_budget(self) -> int:
        """Bytes a request head may take in all: a memory bound on what the parser holds
        while a line is incomplete (the per-line limits are checked as lines complete)."""
        return self.max_line_size + self.max_headers * (self.max_field_size + 4) + 4


def body_deadline(start: float, received: int, limits: ServerLimits) -> float:
    """When a body that started arriving at ``start`` and has ``received`` bytes is too slow.

    ``start`` excludes the time gslb itself held the socket paused (the client could not send).
    """
    if limits.min_upload_rate <= 0:
        return float("inf")
    return start + limits.min_upload_grace_s + received / limits.min_upload_rate


# --------------------------------------------------------------------------- request framing

CHUNKED: Final = b"chunked"
CONTINUE: Final = b"100-continue"


def transfer_encoding_reason(values: list[bytes], version: str) -> str | None:
    """A refusal reason for a request's Transfer-Encoding headers, or None when acceptable.

    Only a single ``chunked`` is supported: gslb does not decode gzip or other codings
    (501), and HTTP/1.0 has no Transfer-Encoding at all (a smuggling vector: 400).
    """
    if not values:
        return None
    if version != "1.1":
        return "bad_framing"
    if len(values) == 1 and values[0].strip().lower() == CHUNKED:
        return None
    return "unsupported_transfer_encoding"


def expect_reason(values: list[bytes]) -> tuple[bool, str | None]:
    """(expects 100 Continue, refusal reason) for a request's Expect headers."""
    if not values:
        return False, None
    if len(values) == 1 and values[0].strip().lower() == CONTINUE:
        return True, None
    return False, "expectation_failed"


# llhttp's fixed reason phrases (the text of httptools' exceptions) -> gslb's reason codes.
# Only the phrase picks a code; the text is never copied anywhere (it may quote nothing today,
# but a parser is free to start quoting request bytes). First match wins.
_PHRASES: Final[tuple[tuple[str, str], ...]] = (
    ("content-length", "bad_framing"),
    ("transfer-encoding", "bad_framing"),
    ("chunk", "bad_framing"),
    ("method", "bad_method"),
    ("url", "bad_request_line"),
    ("version", "bad_request_line"),
    ("http/", "bad_request_line"),
    ("header", "bad_header"),
)
_PHRASE_MAX: Final = 80


def parser_reason(exc_class: str, message: str) -> str:
    """The reason code for an httptools exception, from its class name and opening phrase."""
    if exc_class == "HttpParserInvalidMethodError":
        return "bad_method"
    if exc_class == "HttpParserInvalidURLError":
        return "bad_request_line"
    phrase = message[:_PHRASE_MAX].lower()
    for word, code in _PHRASES:
        if word in phrase:
            return code
    return "bad_request"


# --------------------------------------------------------------------------- response framing

_STATUS_LINES: Final[dict[int, bytes]] = {
    s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus
}
_DROPPED: Final = frozenset({b"connection", b"content-length", b"transfer-encoding", b"keep-alive"})
_CONTENT_LENGTH: Final = b"content-length"


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        if not 100 <= status <= 999:
            raise ValueError(f"not an HTTP status: {status}")
        line = f"HTTP/1.1 {status} \r\n".encode()
    return line


def bodyless(status: int, head_request: bool) -> bool:
    """Whether a response carries no body whatever the application passes (RFC 9112 6.3)."""
    return head_request or status < 200 or status in (204, 304)


class Framing(NamedTuple):
    """How a response's body is delimited: ``length`` (Content-Length), chunked, or neither
    (no body, or close-delimited for an HTTP/1.0 client). A NamedTuple, not a frozen
    dataclass: one is built per response, and a frozen dataclass's ``__init__`` costs more."""

    head: bytes
    length: int | None
    chunked: bool
    body: bool  # whether body bytes are sent at all
    close: bool  # the connection closes after this response


def frame_response(
    status: int,
    headers: Iterable[tuple[bytes, bytes]],
    *,
    body_length: int | None,
    head_request: bool,
    http11: bool,
    keep_alive: bool,
) -> Framing:
    """The response head and its framing.

    ``body_length`` is the whole body's size when the application gives it at once
    (``respond``), None when it streams (``start``/``send``). The application's own
    Connection, Transfer-Encoding and Keep-Alive headers are dropped (gslb owns the
    framing); its Content-Length is honoured when it streams, and on HEAD and 304 (where it
    describes the body that is not sent).
    """
    out = [status_line(status)]
    app_length: int | None = None
    for name, value in headers:
        lname = name.lower()
        if lname in _DROPPED:
            if lname == _CONTENT_LENGTH:
                app_length = _parse_length(value)
            continue
        out += (name, b": ", value, b"\r\n")
    no_body = bodyless(status, head_request)
    length: int | None = None
    chunked = False
    close = not keep_alive
    if status == 101:
        out.append(b"Connection: upgrade\r\n")
    elif no_body:
        if status >= 200 and status != 204:
            shown = app_length if app_length is not None else body_length
            if shown is not None and (head_request or app_length is not None):
                out += (b"Content-Length: ", str(shown).encode(), b"\r\n")
        length = 0
    elif body_length is not None:
        length = body_length
        out += (b"Content-Length: ", b"%d" % body_length, b"\r\n")
    elif app_length is not None:
        length = app_length
        out += (b"Content-Length: ", b"%d" % app_length, b"\r\n")
    elif http11:
        chunked = True
        out.append(b"Transfer-Encoding: chunked\r\n")
    else:
        close = True  # an HTTP/1.0 client without a length: the close ends the body
    if status != 101:
        if close:
            out.append(b"Connection: close\r\n")
        elif not http11:
            out.append(b"Connection: keep-alive\r\n")
    out.append(b"\r\n")
    return Framing(b"".join(out), length, chunked, not no_body, close)


def _parse_length(value: bytes) -> int:
    v = value.strip()
    if not v.isdigit():
        raise ValueError("the response's Content-Length is not a number")
    return int(v)


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (never the empty terminating chunk)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK: Final = b"0\r\n\r\n"
CONTINUE_LINE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


def refusal_head(status: int, headers: dict[str, str], body_length: int) -> bytes:
    """The head of gslb's own refusal (``gslb.edge.logsafety.Answer``); no Server banner."""
    out = [status_line(status)]
    for name, value in headers.items():
        out.append(f"{name}: {value}\r\n".encode("latin-1"))
    out.append(b"Content-Length: %d\r\n\r\n" % body_length)
    return b"".join(out)
