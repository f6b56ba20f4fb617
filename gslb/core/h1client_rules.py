"""The upstream HTTP/1.1 client's rules, without I/O: the request head, body framing, retry.

``gslb.edge.h1client`` moves the bytes; what goes on the wire and when a stale pooled
connection may be retried is decided here, once (docs/design.md, the upstream side):

* ``encode_head``: the request line and headers in one ``bytes``, with the framing gslb
  chooses: ``Content-Length`` for a body gslb holds whole, ``Transfer-Encoding: chunked``
  for a streamed body of unknown length, the caller's ``Content-Length`` kept (and then
  enforced by the shell) for a streamed body that declares one. A CR or LF inside any
  field is refused: it would split the head (request smuggling).
* ``response_has_body``: HEAD, 1xx, 204 and 304 carry no body, whatever their headers say.
* ``may_retry_stale``: a pooled keep-alive connection that the peer closed is retried once
  on a fresh one only when that cannot send the request twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, NamedTuple

# Framing headers gslb writes itself: the caller's copies are dropped (a stale
# Content-Length next to a rewritten body, or a Transfer-Encoding on a body gslb frames
# by length, would desynchronise the connection).
_FRAMING: Final = frozenset({b"content-length", b"transfer-encoding"})
# Methods whose requests carry a body by definition: "Content-Length: 0" when it is empty,
# as RFC 9110 section 8.6 asks of a user agent.
_BODY_METHODS: Final = frozenset({b"POST", b"PUT", b"PATCH"})
NO_BODY_STATUS: Final = frozenset({204, 304})


class HeadError(ValueError):
    """The caller's request head cannot be sent as it is (a field would split the head)."""


class EncodedHead(NamedTuple):
    """A request head ready for the wire and how its body is framed. A NamedTuple, not a
    frozen dataclass: one is built per request, and a frozen dataclass's ``__init__`` costs
    more (as ``h1framing.Framing``)."""

    data: bytes
    chunked: bool  # the streamed body goes out in chunked encoding
    length: int | None  # the declared Content-Length of a streamed body, to be enforced
    close: bool  # the caller asked for "Connection: close": never back to the pool


def encode_head(
    method: bytes,
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]],
    host: bytes,
    body_length: int | None,
) -> EncodedHead:
    """The head for ``method target`` with ``headers``; ``body_length`` is the length of a
    body gslb holds whole (0 for none), or None for a streamed body.

    ``Host`` is added (as ``host``) when the caller sent none. Raises ``HeadError`` when a
    field holds CR or LF, the target or method a space, or a streamed body's Content-Length
    is not a number.
    """
    if b" " in target or b" " in method:
        raise HeadError("a space inside the request target or method")
    lines = [method, b" ", target, b" HTTP/1.1\r\n"]
    has_host = close = False
    declared: int | None = None
    for name, value in headers:
        low = name.lower()
        if low in _FRAMING:
            if body_length is None and low == b"content-length":
                declared = _length(value)
            continue
        if low == b"host":
            has_host = True
        elif low == b"connection" and b"close" in value.lower():
            close = True
        lines += (name, b": ", value, b"\r\n")
    if not has_host:
        lines += (b"Host: ", host, b"\r\n", b"")
    chunked = False
    if body_length is None:
        if declared is None:
            chunked = True
            lines += (b"Transfer-Encoding: ", b"chunked", b"\r\n", b"")
        else:
            lines += (b"Content-Length: ", b"%d" % declared, b"\r\n", b"")
    elif body_length or method in _BODY_METHODS:
        lines += (b"Content-Length: ", b"%d" % body_length, b"\r\n", b"")
    lines.append(b"\r\n")
    data = b"".join(lines)
    # Every line ends in exactly one CRLF of gslb's own: any other CR or LF came from a
    # field. Two counts over the head instead of a scan per field. The request line and each
    # header line are four parts, the blank line one.
    expected = (len(lines) - 5) // 4 + 2
    if data.count(b"\n") != expected or data.count(b"\r") != expected:
        raise HeadError("a request field holds CR or LF")
    return EncodedHead(data, chunked, declared, close)


def _length(value: bytes) -> int:
    text = value.strip()
    if not text.isdigit() or len(text) > 18:
        raise HeadError("a Content-Length that is not a number")
    return int(text)


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (never the last: an empty ``data`` would end the body)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK: Final = b"0\r\n\r\n"


def response_has_body(head_request: bool, status: int) -> bool:
    """Whether a response to this request may carry a body (RFC 9112 section 6.3)."""
    return not head_request and status >= 200 and status not in NO_BODY_STATUS


def may_retry_stale(
    *,
    reused: bool,
    response_started: bool,
    written: bool,
    body_held: bool,
    since_write_s: float,
    window_s: float,
) -> bool:
    """Whether a connection that closed before any response byte may be retried once.

    Only a pooled (reused) connection: a fresh one that closes is the upstream failing.
    Nothing written yet: always. Written: only when gslb holds the whole body (a streamed
    body is gone: never a double send) and the close came within ``window_s`` of the write,
    the time a peer that had already closed the idle connection takes to say so; a peer that
    took longer may have started on the request.
    """
    if not reused or response_started:
        return False
    if not written:
        return True
    return body_held and since_write_s <= window_s
