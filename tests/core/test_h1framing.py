"""The raw listener's framing rules (gslb.core.h1framing), without sockets."""

from __future__ import annotations

import pytest

from gslb.core.h1framing import (
    ServerLimits,
    body_deadline,
    chunk,
    expect_reason,
    frame_response,
    parser_reason,
    refusal_head,
    status_line,
    transfer_encoding_reason,
)

CT = (b"Content-Type", b"text/plain")


@pytest.mark.parametrize(
    ("status", "headers", "body_length", "head", "http11", "keep", "expected"),
    [
        # whole bodies: Content-Length from the body, the app's framing headers dropped
        (
            200,
            [CT],
            5,
            False,
            True,
            True,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n",
        ),
        (
            200,
            [(b"Connection", b"x"), (b"Transfer-Encoding", b"chunked"), (b"Keep-Alive", b"1")],
            0,
            False,
            True,
            True,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ),
        (
            200,
            [],
            3,
            False,
            True,
            False,
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\n",
        ),
        (
            200,
            [],
            3,
            False,
            False,
            True,
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n",
        ),
        # streamed: the app's Content-Length, else chunked, else close-delimited (HTTP/1.0)
        (
            200,
            [(b"content-length", b" 42 ")],
            None,
            False,
            True,
            True,
            b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n",
        ),
        (
            200,
            [CT],
            None,
            False,
            True,
            True,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n",
        ),
        (200, [], None, False, False, True, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"),
        # no body: HEAD shows the length, 204 none, 304 only the app's
        (200, [], 7, True, True, True, b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n"),
        (
            200,
            [(b"Content-Length", b"9")],
            0,
            True,
            True,
            True,
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
        ),
        (200, [], None, True, True, True, b"HTTP/1.1 200 OK\r\n\r\n"),
        (
            204,
            [(b"Content-Length", b"9")],
            4,
            False,
            True,
            True,
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ),
        (304, [], 4, False, True, True, b"HTTP/1.1 304 Not Modified\r\n\r\n"),
        (
            304,
            [(b"Content-Length", b"9")],
            4,
            False,
            True,
            True,
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
        ),
        (
            101,
            [(b"Upgrade", b"websocket"), (b"Connection", b"keep-alive")],
            0,
            False,
            True,
            True,
            b"HTTP/1.1 101 Switching Protocols\r\n"
            b"Upgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        ),
        (599, [], 0, False, True, True, b"HTTP/1.1 599 \r\nContent-Length: 0\r\n\r\n"),
    ],
)
def test_frame_response(
    status: int,
    headers: list[tuple[bytes, bytes]],
    body_length: int | None,
    head: bool,
    http11: bool,
    keep: bool,
    expected: bytes,
) -> None:
    f = frame_response(
        status, headers, body_length=body_length, head_request=head, http11=http11, keep_alive=keep
    )
    assert f.head == expected
    assert f.body == (not head and status >= 200 and status not in (204, 304))
    assert f.close == (b"Connection: close" in expected)
    assert f.chunked == (b"chunked" in expected)


def test_a_response_content_length_that_is_not_a_number_is_an_error() -> None:
    with pytest.raises(ValueError):
        frame_response(
            200,
            [(b"Content-Length", b"-1")],
            body_length=None,
            head_request=False,
            http11=True,
            keep_alive=True,
        )
    with pytest.raises(ValueError):
        status_line(99)


def test_chunk_encoding() -> None:
    assert chunk(b"hello") == b"5\r\nhello\r\n"
    assert chunk(b"x" * 255) == b"ff\r\n" + b"x" * 255 + b"\r\n"


@pytest.mark.parametrize(
    ("values", "version", "reason"),
    [
        ([], "1.1", None),
        ([b"chunked"], "1.1", None),
        ([b" Chunked "], "1.1", None),
        ([b"chunked"], "1.0", "bad_framing"),
        ([b"gzip, chunked"], "1.1", "unsupported_transfer_encoding"),
        ([b"chunked", b"chunked"], "1.1", "unsupported_transfer_encoding"),
    ],
)
def test_transfer_encoding_rules(values: list[bytes], version: str, reason: str | None) -> None:
    assert transfer_encoding_reason(values, version) == reason


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], (False, None)),
        ([b"100-continue"], (True, None)),
        ([b"100-Continue"], (True, None)),
        ([b"100-continue", b"100-continue"], (False, "expectation_failed")),
        ([b"200-ok"], (False, "expectation_failed")),
    ],
)
def test_expect_rules(values: list[bytes], expected: tuple[bool, str | None]) -> None:
    assert expect_reason(values) == expected


@pytest.mark.parametrize(
    ("cls", "message", "reason"),
    [
        ("HttpParserInvalidMethodError", "Invalid method encountered", "bad_method"),
        ("HttpParserInvalidURLError", "whatever", "bad_request_line"),
        ("HttpParserError", "Duplicate Content-Length", "bad_framing"),
        (
            "HttpParserError",
            "Transfer-Encoding can't be present with Content-Length",
            "bad_framing",
        ),
        ("HttpParserError", "Invalid character in chunk size", "bad_framing"),
        ("HttpParserError", "Expected CRLF after version", "bad_request_line"),
        ("HttpParserError", "Invalid header value char", "bad_header"),
        ("HttpParserError", "Pause on PRI/Upgrade", "bad_request"),
    ],
)
def test_parser_errors_map_to_reason_codes(cls: str, message: str, reason: str) -> None:
    assert parser_reason(cls, message) == reason


def test_the_minimum_upload_rate_buys_time_per_byte() -> None:
    limits = ServerLimits(min_upload_rate=100.0, min_upload_grace_s=10.0)
    assert body_deadline(5.0, 0, limits) == 15.0
    assert body_deadline(5.0, 1000, limits) == 25.0  # 1000 bytes at 100/s: 10 s more
    assert body_deadline(5.0, 10**9, ServerLimits(min_upload_rate=0.0)) == float("inf")


def test_refusal_head_has_no_server_banner() -> None:
    head = refusal_head(413, {"X-Request-Id": "r1", "Connection": "close"}, 10)
    assert (
        head == b"HTTP/1.1 413 Request Entity Too Large\r\n"
        b"X-Request-Id: r1\r\nConnection: close\r\nContent-Length: 10\r\n\r\n"
    )
    assert ServerLimits().head_budget() > ServerLimits().max_line_size
