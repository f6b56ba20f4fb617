"""The proxy's header rules, as plain values (gslb.core.headers); end to end in tests/edge."""

from __future__ import annotations

import pytest

from gslb.core.headers import downstream_headers, read_request, upstream_headers

XFF = b"x-forwarded-for"


def names(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [n.lower() for n, _ in headers]


@pytest.mark.parametrize("trusted", [True, False])
def test_what_goes_upstream_and_what_gslb_reads(trusted: bool) -> None:
    inbound = [
        (b"X-Secret-Hop", b"1"),  # named in Connection below: dropped, though it came first
        (b"Host", b"api.example"),
        (b"Connection", b"keep-alive, X-Secret-Hop"),
        (b"X-Forwarded-For", b"203.0.113.9"),
        (b"X-Real-IP", b"198.51.100.1"),
        (b"X-GSLB-Residency", b"CA"),
        (b"x-gslb-residency", b"US"),  # the first value counts
        (b"X-Request-Id", b"bad id with spaces"),
        (b"X-Request-Id", b"good-id.1"),
        (b"Expect", b"100-continue"),
        (b"Content-Length", b"5"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Proxy-Authorization", b"Basic c2VjcmV0"),
        (b"Via", b"1.1 cdn"),
        (b"Content-Type", b"application/json; charset=utf-8"),
        (b"Authorization", b"Bearer t"),
    ]
    req = read_request(inbound, address_header=XFF, peer_trusted=trusted)
    assert req.host == b"api.example"
    assert req.request_id == b"good-id.1"  # the first valid one
    assert req.addresses == ["203.0.113.9"]  # read either way; clientip decides trust
    assert req.controls == {"x-gslb-residency": "CA"}
    assert req.json and req.via == [b"1.1 cdn"]
    forwarded = names(req.forward)
    assert forwarded == (
        [b"x-real-ip", b"content-type", b"authorization"]
        if trusted
        else [b"content-type", b"authorization"]  # address claims never pass an untrusted peer
    )
    up = upstream_headers(
        req, peer="127.0.0.1", proto=b"https", request_id=b"rid-1", via=b"1.1 gslb"
    )
    got = dict((n.lower(), v) for n, v in up)
    assert got[b"x-forwarded-for"] == (b"203.0.113.9, 127.0.0.1" if trusted else b"127.0.0.1")
    assert got[b"x-forwarded-proto"] == b"https"
    assert got[b"x-forwarded-host"] == b"api.example"
    assert got[b"via"] == b"1.1 cdn, 1.1 gslb"
    assert got[b"x-request-id"] == b"rid-1"
    for gone in (b"x-secret-hop", b"expect", b"content-length", b"transfer-encoding",
                 b"proxy-authorization", b"connection", b"host", b"x-gslb-residency"):  # fmt: skip
        assert gone not in got, gone


def test_an_upgrade_and_a_streamed_length_are_sent_by_gslb_itself() -> None:
    req = read_request(
        [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"), (b"Sec-WebSocket-Key", b"k")],
        address_header=XFF,
        peer_trusted=False,
    )
    up = upstream_headers(
        req,
        peer=None,
        proto=b"http",
        request_id=b"r",
        via=b"1.1 gslb",
        content_length=7,
        upgrade=b"websocket",
    )
    assert names(up) == [
        b"sec-websocket-key", b"x-forwarded-proto", b"via", b"x-request-id",
        b"content-length", b"connection", b"upgrade",
    ]  # fmt: skip
    assert (b"Content-Length", b"7") in up and (b"Upgrade", b"websocket") in up


def test_what_comes_back_to_the_client() -> None:
    upstream = [
        (b"Content-Type", b"text/event-stream"),
        (b"Connection", b"keep-alive, X-Internal"),
        (b"X-Internal", b"node-7"),
        (b"Transfer-Encoding", b"chunked"),
        (b"X-GSLB-Route", b"forged"),
        (b"X-Request-Id", b"upstream-id"),
        (b"Via", b"1.1 vllm"),
        (b"Upgrade", b"h2c"),
    ]
    route = [(b"X-GSLB-Region", b"ca-central"), (b"X-GSLB-Route", b"local")]
    down = downstream_headers(upstream, request_id=b"rid", via=b"1.1 gslb", route=route)
    assert down == [
        (b"Content-Type", b"text/event-stream"),
        (b"Via", b"1.1 vllm, 1.1 gslb"),
        (b"X-Request-Id", b"rid"),
        *route,
    ]
    switched = downstream_headers(
        [(b"Upgrade", b"websocket"), (b"Sec-WebSocket-Accept", b"a")],
        request_id=b"rid",
        via=b"1.1 gslb",
        upgrade=True,
    )
    assert switched[-1] == (b"Upgrade", b"websocket")  # a relayed 101 names its protocol
