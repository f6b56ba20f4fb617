"""Client address resolution behind trusted proxies: parsing, trust, header walking."""

from __future__ import annotations

import time
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

from gslb.core.clientip import (
    LIST_HEADERS,
    MAX_HOPS,
    SINGLE_HEADERS,
    HeaderSource,
    TrustedProxies,
    client_ip,
    parse_ip,
    truncate_ip,
)

TRUSTED = TrustedProxies(["10.0.0.0/8", "192.168.1.1/32", "2001:db8:100::/48", "::1"])
NONE = TrustedProxies([])


def ip(text: str) -> IPv4Address | IPv6Address:
    return ip_address(text)


def resolve(
    peer: str | None,
    xff: list[str] | None = None,
    fwd: list[str] | None = None,
    trusted: TrustedProxies = TRUSTED,
) -> str | None:
    """Resolve with ``X-Forwarded-For`` as the configured header, or ``Forwarded`` when only
    ``fwd`` is given; with both, each source is resolved and must agree with the other's
    header ignored (only the configured header ever counts)."""
    if xff is None and fwd is not None:
        result = client_ip(peer, fwd, trusted, "forwarded")
    else:
        result = client_ip(peer, xff or [], trusted, "x-forwarded-for")
    return None if result is None else str(result)


# --- parse_ip ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4", "1.2.3.4"),
        ("  1.2.3.4  ", "1.2.3.4"),
        ("1.2.3.4:8080", "1.2.3.4"),
        ('"1.2.3.4"', "1.2.3.4"),
        ('"1.2.3.4:443"', "1.2.3.4"),
        ("1.2.3.4:_obf", "1.2.3.4"),  # RFC 7239 obfuscated port
        ("2001:db8::1", "2001:db8::1"),
        ("2001:DB8::1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:8080", "2001:db8::1"),
        ('"[2001:db8::1]:4711"', "2001:db8::1"),
        ('" [2001:db8::1]:4711 "', "2001:db8::1"),
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("::ffff:1.2.3.4", "1.2.3.4"),  # unmapped
        ("[::ffff:1.2.3.4]:80", "1.2.3.4"),
        ("::ffff:0102:0304", "1.2.3.4"),
        ("fe80::1%eth0", "fe80::1"),  # zone stripped
        ("[fe80::1%25eth0]:80", "fe80::1"),
        ("::", "::"),
        ("[1.2.3.4]", "1.2.3.4"),  # not RFC 7239, but unambiguous
        ("0.0.0.0", "0.0.0.0"),
    ],
)
def test_parse_ip_accepts(text: str, expected: str) -> None:
    result = parse_ip(text)
    assert result == ip(expected)
    assert str(result) == expected


def test_parse_ip_zone_is_dropped_from_the_value() -> None:
    result = parse_ip("fe80::1%eth0")
    assert isinstance(result, IPv6Address) and result.scope_id is None
    assert result == ip("fe80::1")


def test_parse_ip_unmaps_to_ipv4_type() -> None:
    assert isinstance(parse_ip("::ffff:10.0.0.1"), IPv4Address)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        '""',
        "unknown",
        "UNKNOWN",
        '"unknown"',
        "_hidden",
        '"_hidden"',
        "_SEVKISEK",
        "garbage",
        "1.2.3",
        "1.2.3.4.5",
        "256.1.1.1",
        "01.2.3.4",  # leading zeros are ambiguous (octal?) and rejected
        "1.2.3.4:",
        "1.2.3.4:port",
        "1.2.3.4:123456",
        "[2001:db8::1",
        "2001:db8::1]",
        "[2001:db8::1]:",
        "[2001:db8::1]junk",
        "[2001:db8::1]:http",
        "2001:db8::1:8080:1:2:3:4:5",
        "[]",
        "[]:80",
        "for=1.2.3.4",
        "1.2.3.4 5.6.7.8",
        "1.2.3.4\x00",
        "١.٢.٣.٤",  # non-ASCII digits
        "1.2.3.4:٨٠",
        "x" * 10_000,
        "1." * 5000,
        '"',
        '"1.2.3.4',
        "%eth0",
    ],
)
def test_parse_ip_rejects(text: str) -> None:
    assert parse_ip(text) is None


def test_parse_ip_never_raises_on_non_strings() -> None:
    for junk in (None, 1234, b"1.2.3.4", ["1.2.3.4"]):
        assert parse_ip(junk) is None  # type: ignore[arg-type]


# --- TrustedProxies ----------------------------------------------------------------


def test_trusted_membership() -> None:
    t = TrustedProxies(["10.0.0.0/8", "172.16.0.0/12", "192.168.1.5", "2001:db8::/32", "::1"])
    assert ip("10.255.255.255") in t
    assert ip("172.31.0.1") in t
    assert ip("172.32.0.1") not in t
    assert ip("192.168.1.5") in t
    assert ip("192.168.1.6") not in t
    assert ip("11.0.0.1") not in t
    assert ip("2001:db8:ffff::1") in t
    assert ip("2001:db9::1") not in t
    assert ip("::1") in t
    assert ip("::2") not in t
    assert len(t) == 5 and bool(t)


def test_trusted_ipv4_mapped_address_matches_ipv4_network() -> None:
    t = TrustedProxies(["10.0.0.0/8"])
    assert ip("::ffff:10.1.2.3") in t
    assert ip("::ffff:11.1.2.3") not in t


def test_trusted_mapped_network_is_folded_to_ipv4() -> None:
    t = TrustedProxies(["::ffff:192.168.0.0/112"])
    assert t.cidrs == ("192.168.0.0/16",)
    assert ip("192.168.44.1") in t
    assert ip("::ffff:192.168.44.1") in t


def test_trusted_families_do_not_mix() -> None:
    # 0.0.0.0/0 is "every IPv4 address", not "everything".
    t = TrustedProxies(["0.0.0.0/0"])
    assert ip("8.8.8.8") in t
    assert ip("2001:4860::1") not in t
    assert ip("::") not in t
    t6 = TrustedProxies(["::/0"])
    assert ip("2001:4860::1") in t6
    assert ip("8.8.8.8") not in t6


def test_trusted_empty() -> None:
    assert ip("127.0.0.1") not in NONE
    assert not NONE and len(NONE) == 0


def test_trusted_non_address_is_not_member() -> None:
    assert "10.0.0.1" not in TRUSTED
    assert None not in TRUSTED


def test_trusted_many_networks_is_fast() -> None:
    # Membership cost depends on distinct prefix lengths, not network count.
    t = TrustedProxies([f"10.{i // 256}.{i % 256}.0/24" for i in range(20_000)])
    probe = ip("10.30.7.9")
    start = time.perf_counter()
    for _ in range(10_000):
        assert probe in t
    assert time.perf_counter() - start < 1.0


def test_trusted_cidrs_are_canonical() -> None:
    t = TrustedProxies([" 10.0.0.0/8 ", "2001:DB8::/32", "1.2.3.4"])
    assert t.cidrs == ("10.0.0.0/8", "2001:db8::/32", "1.2.3.4/32")
    assert "10.0.0.0/8" in repr(t)


@pytest.mark.parametrize(
    ("cidr", "fragment"),
    [
        ("10.0.0.1/8", "did you mean 10.0.0.0/8"),
        ("2001:db8::1/32", "did you mean 2001:db8::/32"),
        ("bogus", "'bogus'"),
        ("10.0.0.0/33", "'10.0.0.0/33'"),
        ("300.0.0.0/8", "'300.0.0.0/8'"),
        ("", "empty"),
        ("   ", "empty"),
        ("10.0.0.0/8,192.168.0.0/16", "10.0.0.0/8,192.168.0.0/16"),
    ],
)
def test_trusted_bad_cidr(cidr: str, fragment: str) -> None:
    with pytest.raises(ValueError, match="trusted proxy") as err:
        TrustedProxies(["127.0.0.1/32", cidr])
    assert fragment in str(err.value)


def test_trusted_non_string_entry() -> None:
    with pytest.raises(ValueError, match="must be a string"):
        TrustedProxies([10])  # type: ignore[list-item]


# --- client_ip: trust boundary -------------------------------------------------------


@pytest.mark.parametrize("source", [*LIST_HEADERS, *SINGLE_HEADERS])
def test_untrusted_peer_ignores_spoofed_headers(source: HeaderSource) -> None:
    for value in ("1.1.1.1", "for=8.8.8.8"):
        assert str(client_ip("203.0.113.7", [value], TRUSTED, source)) == "203.0.113.7"


def test_no_trusted_proxies_always_peer() -> None:
    assert resolve("10.0.0.1", ["1.1.1.1"], trusted=NONE) == "10.0.0.1"


def test_trusted_peer_without_headers_is_client() -> None:
    assert resolve("10.0.0.1") == "10.0.0.1"
    assert resolve("10.0.0.1", ["", "  "]) == "10.0.0.1"
    assert resolve("10.0.0.1", fwd=[" "]) == "10.0.0.1"


@pytest.mark.parametrize("peer", [None, "", "garbage", "unknown", "/run/gslb.sock"])
def test_missing_or_bad_peer(peer: str | None) -> None:
    assert resolve(peer, ["1.1.1.1"]) is None


def test_peer_with_port_and_mapped() -> None:
    assert resolve("203.0.113.7:5555") == "203.0.113.7"
    # Dual-stack listener: IPv4 peers appear mapped; trust must still apply.
    assert resolve("::ffff:10.0.0.1", ["1.1.1.1"]) == "1.1.1.1"
    assert resolve("::ffff:203.0.113.7", ["1.1.1.1"]) == "203.0.113.7"


# --- client_ip: X-Forwarded-For ------------------------------------------------------


def test_xff_single_hop() -> None:
    assert resolve("10.0.0.1", ["1.1.1.1"]) == "1.1.1.1"


def test_xff_chain_walk_skips_trusted() -> None:
    # client 1.1.1.1 -> proxy 10.0.0.3 -> proxy 10.0.0.2 -> us (peer 10.0.0.1)
    assert resolve("10.0.0.1", ["1.1.1.1, 10.0.0.3, 10.0.0.2"]) == "1.1.1.1"


def test_xff_spoofed_left_part_is_not_believed() -> None:
    # The client prepended a fake address; the first untrusted from the right wins.
    assert resolve("10.0.0.1", ["6.6.6.6, 1.1.1.1, 10.0.0.2"]) == "1.1.1.1"
    assert resolve("10.0.0.1", ["10.0.0.9, 1.1.1.1"]) == "1.1.1.1"


def test_xff_all_trusted_leftmost_is_client() -> None:
    assert resolve("10.0.0.1", ["10.0.0.5, 10.0.0.3, 192.168.1.1"]) == "10.0.0.5"


def test_xff_multiple_lines_concatenated_in_order() -> None:
    assert resolve("10.0.0.1", ["1.1.1.1, 2.2.2.2", "10.0.0.2"]) == "2.2.2.2"
    assert resolve("10.0.0.1", ["2.2.2.2", "1.1.1.1, 10.0.0.3", "10.0.0.2"]) == "1.1.1.1"
    assert resolve("10.0.0.1", ["10.0.0.5", "10.0.0.3"]) == "10.0.0.5"


def test_xff_empty_elements_are_skipped() -> None:
    assert resolve("10.0.0.1", ["1.1.1.1,,  , 10.0.0.2,"]) == "1.1.1.1"


def test_xff_with_ports_and_brackets() -> None:
    assert resolve("10.0.0.1", ["1.1.1.1:1234, 10.0.0.2:80"]) == "1.1.1.1"
    assert resolve("10.0.0.1", ["[2001:4860::8]:443"]) == "2001:4860::8"
    assert resolve("10.0.0.1", ["2001:4860::8"]) == "2001:4860::8"


@pytest.mark.parametrize(
    ("xff", "expected"),
    [
        # Garbage appended by a trusted proxy: that proxy is the best we know.
        (["1.1.1.1, garbage, 10.0.0.2"], "10.0.0.2"),
        (["1.1.1.1, unknown"], "10.0.0.1"),  # rightmost hop garbage -> the peer
        (["1.1.1.1, _hidden, 10.0.0.2"], "10.0.0.2"),
        # Garbage left of the client is never reached.
        (["garbage, 1.1.1.1, 10.0.0.2"], "1.1.1.1"),
        (["garbage", "1.1.1.1"], "1.1.1.1"),
    ],
)
def test_xff_garbage_hops(xff: list[str], expected: str) -> None:
    assert resolve("10.0.0.1", xff) == expected


# --- client_ip: Forwarded (RFC 7239) ------------------------------------------------


def test_forwarded_simple() -> None:
    assert resolve("10.0.0.1", fwd=["for=1.1.1.1"]) == "1.1.1.1"
    assert resolve("10.0.0.1", fwd=["For=1.1.1.1;Proto=https"]) == "1.1.1.1"


def test_forwarded_quoted_ipv6_with_port() -> None:
    fwd = ['for="[2001:4860::8]:4711";proto=https;by=10.0.0.2']
    assert resolve("10.0.0.1", fwd=fwd) == "2001:4860::8"


def test_forwarded_multiple_elements_and_lines() -> None:
    fwd = [
        'for=6.6.6.6, for="1.1.1.1:1234";proto=http',
        "for=10.0.0.3;by=10.0.0.2, for=192.168.1.1",
    ]
    assert resolve("10.0.0.1", fwd=fwd) == "1.1.1.1"


def test_forwarded_all_trusted() -> None:
    assert resolve("10.0.0.1", fwd=['for=10.0.0.9, for="[::1]"']) == "10.0.0.9"


def test_forwarded_parameter_order_and_spaces() -> None:
    fwd = ["proto=https; for = 1.1.1.1 ;host=example.com"]
    assert resolve("10.0.0.1", fwd=fwd) == "1.1.1.1"


def test_forwarded_by_is_not_for() -> None:
    # Only for= names the previous hop; by= is the proxy's own interface.
    assert resolve("10.0.0.1", fwd=["by=1.1.1.1;for=2.2.2.2"]) == "2.2.2.2"


@pytest.mark.parametrize(
    ("fwd", "expected"),
    [
        (['for=1.1.1.1, for="_hidden", for=10.0.0.2'], "10.0.0.2"),
        (["for=1.1.1.1, for=unknown"], "10.0.0.1"),
        # An element without for= is a proxy that did not disclose: stop there.
        (["for=1.1.1.1, proto=https, for=10.0.0.2"], "10.0.0.2"),
        (["for=1.1.1.1, for=, for=10.0.0.2"], "10.0.0.2"),
        (["for=1.1.1.1, for=[2001:4860::8, for=10.0.0.2"], "10.0.0.2"),
    ],
)
def test_forwarded_unparseable_hops(fwd: list[str], expected: str) -> None:
    assert resolve("10.0.0.1", fwd=fwd) == expected


def test_only_the_configured_header_counts() -> None:
    # A trusted front proxy appends X-Forwarded-For and passes the client's own Forwarded
    # through: believing "whichever header has for=" would let the client choose its country.
    xff, fwd = ["2.2.2.2"], ["for=1.1.1.1"]
    assert str(client_ip("10.0.0.1", xff, TRUSTED, "x-forwarded-for")) == "2.2.2.2"
    assert str(client_ip("10.0.0.1", fwd, TRUSTED, "forwarded")) == "1.1.1.1"
    # Pinned to Forwarded and it has no for=: the peer is the client.
    proto_only = ["proto=https;host=x.example"]
    assert str(client_ip("10.0.0.1", proto_only, TRUSTED, "forwarded")) == "10.0.0.1"


@pytest.mark.parametrize("source", SINGLE_HEADERS)
@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["1.1.1.1"], "1.1.1.1"),
        ([" [2001:4860::8]:443 "], "2001:4860::8"),
        (["10.0.0.9"], "10.0.0.9"),  # a trusted address is still what the proxy says
        ([], "10.0.0.1"),
        (["unknown"], "10.0.0.1"),
        (["1.1.1.1, 2.2.2.2"], "10.0.0.1"),  # appended, not overwritten: not believed
        (["1.1.1.1", "2.2.2.2"], "10.0.0.1"),  # two lines: which one did the proxy write?
        (["x" * 500], "10.0.0.1"),
    ],
)
def test_single_address_headers(source: HeaderSource, lines: list[str], expected: str) -> None:
    assert str(client_ip("10.0.0.1", lines, TRUSTED, source)) == expected


# --- client_ip: IPv6 ------------------------------------------------------------------


def test_ipv6_peer_untrusted() -> None:
    assert resolve("2001:4860::1", ["1.1.1.1"]) == "2001:4860::1"


def test_ipv6_trusted_peer_and_chain() -> None:
    assert resolve("2001:db8:100::5", ["2001:4860::8, 2001:db8:100::7"]) == "2001:4860::8"
    assert resolve("::1", ["1.1.1.1"]) == "1.1.1.1"
    assert resolve("[::1]:8080", ["1.1.1.1"]) == "1.1.1.1"


def test_mixed_families_in_chain() -> None:
    assert resolve("::1", ["2001:4860::8, ::ffff:10.0.0.3, 10.0.0.2"]) == "2001:4860::8"


def test_mapped_hop_returned_as_ipv4() -> None:
    result = client_ip("10.0.0.1", ["::ffff:1.1.1.1"], TRUSTED)
    assert isinstance(result, IPv4Address) and str(result) == "1.1.1.1"


# --- client_ip: hostile input ---------------------------------------------------------


def test_huge_xff_is_bounded() -> None:
    # 200k hops of trusted addresses: only the last MAX_HOPS are considered.
    line = ", ".join(["10.0.0.7"] * 200_000)
    start = time.perf_counter()
    assert resolve("10.0.0.1", [line]) == "10.0.0.7"
    assert time.perf_counter() - start < 0.5


def test_many_header_lines_are_bounded() -> None:
    lines = ["1.1.1.1"] + ["10.0.0.7"] * 100_000
    start = time.perf_counter()
    # The real client is beyond MAX_HOPS trusted hops: we stop at the leftmost considered.
    assert resolve("10.0.0.1", lines) == "10.0.0.7"
    assert time.perf_counter() - start < 0.5


def test_client_within_max_hops_is_found() -> None:
    hops = ["1.1.1.1"] + ["10.0.0.7"] * (MAX_HOPS - 1)
    assert resolve("10.0.0.1", [", ".join(hops)]) == "1.1.1.1"
    hops = ["1.1.1.1"] + ["10.0.0.7"] * MAX_HOPS
    assert resolve("10.0.0.1", [", ".join(hops)]) == "10.0.0.7"


def test_huge_forwarded_is_bounded() -> None:
    line = ", ".join(["for=10.0.0.7;proto=https"] * 100_000)
    start = time.perf_counter()
    assert resolve("10.0.0.1", fwd=[line]) == "10.0.0.7"
    assert time.perf_counter() - start < 0.5


def test_huge_single_token() -> None:
    assert resolve("10.0.0.1", ["1" * 1_000_000]) == "10.0.0.1"
    assert resolve("10.0.0.1", fwd=["for=" + "a" * 1_000_000]) == "10.0.0.1"


def test_many_empty_elements() -> None:
    # More empty elements than MAX_HOPS: the unsplit remainder stops the walk safely.
    assert resolve("10.0.0.1", ["1.1.1.1" + "," * 100]) == "10.0.0.1"
    assert resolve("10.0.0.1", ["1.1.1.1" + "," * 10]) == "1.1.1.1"
    # The real client address (appended by our proxy) is still found.
    assert resolve("10.0.0.1", ["," * 100_000 + "1.1.1.1"]) == "1.1.1.1"


@pytest.mark.parametrize(
    "junk",
    [
        "\x00\x01\x02",
        "for=" * 1000,
        ";;;;,,,,====",
        '"""""',
        "[[[[]]]]",
        'for="[::1]\\"";for=1',
        "\u202e1.1.1.1",
        "\ud800",  # lone surrogate
        "1.1.1.1\r\nX-Evil: 1",
    ],
)
def test_junk_never_raises(junk: str) -> None:
    for trusted in (TRUSTED, NONE):
        for source in (*LIST_HEADERS, *SINGLE_HEADERS):
            client_ip("10.0.0.1", [junk], trusted, source)
            client_ip(junk, [junk], trusted, source)
            client_ip("10.0.0.1", [junk, "1.1.1.1"], trusted, source)


def test_non_string_header_values_are_ignored() -> None:
    assert resolve("10.0.0.1", [None, "1.1.1.1"]) == "1.1.1.1"  # type: ignore[list-item]


# --- truncate_ip ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("203.0.113.77", "203.0.113.0/24"),
        ("1.2.3.0", "1.2.3.0/24"),
        ("255.255.255.255", "255.255.255.0/24"),
        ("2001:db8:abcd:1234::1", "2001:db8:abcd::/48"),
        ("2001:db8:abcd:ffff:ffff:ffff:ffff:ffff", "2001:db8:abcd::/48"),
        ("::1", "::/48"),
        ("::ffff:203.0.113.77", "203.0.113.0/24"),
    ],
)
def test_truncate_ip(addr: str, expected: str) -> None:
    assert truncate_ip(ip(addr)) == expected
