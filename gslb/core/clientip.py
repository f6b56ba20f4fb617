"""Who is the client? Resolving the real client address behind trusted reverse proxies.

Pure: no I/O. The semantics follow nginx ``real_ip_recursive on`` and uvicorn's
``ProxyHeadersMiddleware``:

1. Start from the socket peer. If the peer is *not* a trusted proxy, it is the client and
   every forwarding header is ignored: anyone can send ``X-Forwarded-For``, so headers
   are only believed when a proxy we trust put them there.
2. Otherwise read the ONE header the operator's trusted proxies write
   (``geoip.forwarded_header``). A list header (``X-Forwarded-For``, or RFC 7239
   ``Forwarded`` with its ``for=`` parameters) is walked right to left, skipping trusted
   proxies: the first untrusted address is the client. A single-address header
   (``X-Real-IP``, ``True-Client-IP``, ``CF-Connecting-IP``) names the client when it holds
   exactly one parseable address.
3. If every hop is trusted, the leftmost hop is the client (an internal caller).
4. If a hop cannot be parsed (``unknown``, an obfuscated ``_name``, garbage), stop and
   return the last good address seen: that is the trusted proxy which appended the
   unparseable value, and it is the best knowledge we have. Going further left would
   mean believing data that no trusted party vouched for.

Only one header is ever believed. A front proxy that appends to ``X-Forwarded-For`` passes
the client's other headers through untouched, so believing "whichever header has an
address" would let a client pick its own country, and with it its residency rules
(docs/design.md, section 5). Every other address-claiming header is ignored here and, from
an untrusted peer, dropped before the request goes upstream (``headers.py``).

Forwarding headers are attacker-controlled and may be huge, so only the last
``MAX_HOPS`` hops are ever looked at and nothing here raises on bad input.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from typing import Final, Literal

from gslb.core.config import (
    FORWARDED,
    FORWARDED_LIST_HEADERS,
    FORWARDED_SINGLE_HEADERS,
    X_FORWARDED_FOR,
)

IPAddress = IPv4Address | IPv6Address

# Hops considered per request. Real proxy chains are a handful of hops long; anything
# beyond this is either misconfiguration or an attacker making us burn CPU.
MAX_HOPS: Final = 32

# Longest token worth parsing: "[" + 45-char IPv6 + "%" + zone + "]:65535" fits easily.
# Longer tokens are garbage, and rejecting them early keeps parsing cheap.
_MAX_TOKEN_LEN: Final = 128

# RFC 4291 IPv4-mapped prefix ::ffff:0:0/96, used to fold mapped trusted networks to IPv4.
_MAPPED_PREFIX: Final = IPv6Network("::ffff:0:0/96")

# The headers a proxy may use to tell us the client address; only the configured one counts.
LIST_HEADERS: Final = FORWARDED_LIST_HEADERS
SINGLE_HEADERS: Final = FORWARDED_SINGLE_HEADERS
ADDRESS_HEADERS: Final = frozenset(LIST_HEADERS + SINGLE_HEADERS)
HeaderSource = Literal[
    "x-forwarded-for", "forwarded", "x-real-ip", "true-client-ip", "cf-connecting-ip"
]


class TrustedProxies:
    """Set of trusted networks (IPv4 and IPv6 CIDRs), built once at config load.

    Membership is O(number of distinct prefix lengths), not O(number of networks): each
    network is stored as its integer prefix in a per-prefix-length set, so a test is a
    shift and a set lookup per distinct length. IPv4-mapped IPv6 addresses
    (``::ffff:10.0.0.1``) are tested as their IPv4 address, and IPv4-mapped IPv6 networks
    in the configuration are folded to IPv4, so dual-stack sockets behave like IPv4 ones.
    """

    __slots__ = ("_cidrs", "_v4", "_v6")

    def __init__(self, cidrs: Sequence[str]) -> None:
        v4: dict[int, set[int]] = {}
        v6: dict[int, set[int]] = {}
        normalized: list[str] = []
        for cidr in cidrs:
            net = _parse_cidr(cidr)
            normalized.append(str(net))
            table = v4 if net.version == 4 else v6
            shift = net.max_prefixlen - net.prefixlen
            table.setdefault(shift, set()).add(int(net.network_address) >> shift)
        # Tuples of (shift, prefixes): iterating a tuple is the cheapest loop in CPython.
        # Sorted by shift so the most specific (most common: /32 proxies) is tried first.
        self._v4: tuple[tuple[int, frozenset[int]], ...] = _freeze(v4)
        self._v6: tuple[tuple[int, frozenset[int]], ...] = _freeze(v6)
        self._cidrs: tuple[str, ...] = tuple(normalized)

    def __contains__(self, ip: object) -> bool:
        if isinstance(ip, IPv4Address):
            table = self._v4
        elif isinstance(ip, IPv6Address):
            mapped = ip.ipv4_mapped
            if mapped is None:
                table = self._v6
            else:
                ip, table = mapped, self._v4
        else:
            return False
        value = int(ip)
        # A plain loop, not any(<genexpr>): this runs for every hop of every request and
        # the generator setup costs more than the set probes.
        for shift, prefixes in table:  # noqa: SIM110 - see above
            if value >> shift in prefixes:
                return True
        return False

    def __bool__(self) -> bool:
        return bool(self._cidrs)

    def __len__(self) -> int:
        return len(self._cidrs)

    def __repr__(self) -> str:
        return f"TrustedProxies({list(self._cidrs)!r})"

    @property
    def cidrs(self) -> tuple[str, ...]:
        """The configured networks in canonical form (for logs and debugging)."""
        return self._cidrs


def _parse_cidr(cidr: object) -> IPv4Network | IPv6Network:
    """Parse one configured network; strict so that typos fail loudly at start-up."""
    if not isinstance(cidr, str):
        raise ValueError(f"trusted proxy entry {cidr!r} must be a string CIDR like '10.0.0.0/8'")
    text = cidr.strip()
    if not text:
        raise ValueError("trusted proxy entry is empty; expected a CIDR like '10.0.0.0/8'")
    try:
        net = ip_network(text, strict=True)
    except ValueError as exc:
        # Host bits set ("10.0.0.1/8") is almost always a typo; say what was probably meant
        # instead of silently widening or narrowing the trusted set.
        hint = ""
        with contextlib.suppress(ValueError):
            hint = f" (did you mean {ip_network(text, strict=False)}?)"
        raise ValueError(f"invalid trusted proxy CIDR {cidr!r}: {exc}{hint}") from None
    if isinstance(net, IPv6Network) and net.prefixlen >= 96 and net.subnet_of(_MAPPED_PREFIX):
        mapped = net.network_address.ipv4_mapped
        assert mapped is not None  # subnet_of(::ffff:0:0/96) guarantees it
        return IPv4Network((int(mapped), net.prefixlen - 96))
    return net


def _freeze(table: dict[int, set[int]]) -> tuple[tuple[int, frozenset[int]], ...]:
    return tuple((shift, frozenset(table[shift])) for shift in sorted(table))


def parse_ip(text: str) -> IPAddress | None:
    """Parse an address as it appears in a peer address or forwarding header.

    Accepts, after stripping whitespace and one pair of surrounding double quotes:
    ``1.2.3.4``, ``1.2.3.4:8080``, ``2001:db8::1``, ``[2001:db8::1]``,
    ``[2001:db8::1]:8080``. Zone ids (``fe80::1%eth0``) are stripped and the bare address
    is returned: a zone only means something on the host that wrote it, and keeping it
    would make the address compare unequal to the same address without one.
    IPv4-mapped IPv6 (``::ffff:1.2.3.4``) is returned as the IPv4 address.

    Returns ``None`` for ``unknown``, RFC 7239 obfuscated identifiers (``_hidden``),
    empty or over-long input and anything else that is not an address. Never raises.
    """
    if not isinstance(text, str) or len(text) > _MAX_TOKEN_LEN:
        return None
    return _parse_cached(text)


def _parse_uncached(text: str) -> IPAddress | None:
    host = _host_part(text)
    if host is None:
        return None
    host = host.partition("%")[0]
    try:
        ip = ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, IPv6Address):
        mapped = ip.ipv4_mapped
        if mapped is not None:
            return mapped
    return ip


# The same few strings (proxy addresses, returning clients) are parsed over and over, and
# ``ipaddress`` constructors cost microseconds. Bounded by entry count and, via
# _MAX_TOKEN_LEN, by key size, so attacker-chosen strings cannot grow it without limit.
_parse_cached = functools.lru_cache(maxsize=8192)(_parse_uncached)


def _host_part(text: str) -> str | None:
    """Strip quotes, brackets and port from a node token; ``None`` if it cannot be an IP."""
    token = text.strip()
    if len(token) >= 2 and token[0] == '"' and token[-1] == '"':
        token = token[1:-1].strip()
    if not token or token[0] == "_" or token.lower() == "unknown":
        return None
    if token[0] == "[":
        # "[v6]" or "[v6]:port"; anything else after the bracket is malformed.
        host, sep, rest = token[1:].partition("]")
        if not sep or (rest and not (rest[0] == ":" and _is_port(rest[1:]))):
            return None
        return host
    if token.count(":") == 1:
        # "v4:port". A bare IPv6 address always has at least two colons.
        host, _, port = token.partition(":")
        return host if _is_port(port) else None
    return token


def _is_port(text: str) -> bool:
    """A numeric port, or an RFC 7239 obfuscated port (``_abc``)."""
    return (text.isdigit() and text.isascii() and len(text) <= 5) or (
        len(text) > 1 and text[0] == "_"
    )


def client_ip(
    peer: str | None,
    lines: Sequence[str],
    trusted: TrustedProxies,
    source: HeaderSource = X_FORWARDED_FOR,
) -> IPAddress | None:
    """The real client address for a request (see the module docstring for the rules).

    ``lines`` are all header lines of the configured header ``source``, in the order received
    (``request.headers.getall(source, ())``); no other header is consulted. Returns ``None``
    only when the peer itself is missing or unparseable.
    """
    if not peer:
        return None
    current = parse_ip(peer)
    if current is None or current not in trusted:
        return current
    if source in SINGLE_HEADERS:
        return _single_address(lines) or current
    hops = _forwarded_hops(lines) if source == FORWARDED else _xff_hops(lines)
    for hop in hops:  # right to left
        if hop is None:
            return current  # unparseable hop: the proxy that appended it is the best we know
        current = hop
        if hop not in trusted:
            return hop
    # Every hop trusted: the leftmost considered hop is an internal client. When the list
    # was cut at MAX_HOPS this is the leftmost hop we looked at, still a trusted address.
    return current


def _single_address(lines: Sequence[str]) -> IPAddress | None:
    """The address of a single-address header; ``None`` unless exactly one is given.

    Two lines or a comma list mean something upstream appended instead of overwriting, and
    we cannot tell which value the trusted proxy wrote: the peer stands instead.
    """
    if len(lines) != 1 or not isinstance(lines[0], str) or "," in lines[0]:
        return None
    return parse_ip(lines[0])


def _xff_hops(lines: Sequence[str]) -> list[IPAddress | None]:
    """Hops of ``X-Forwarded-For``, right to left (nearest proxy first), at most ``MAX_HOPS``."""
    return [parse_ip(element) for element in _last_elements(lines)]


def _forwarded_hops(lines: Sequence[str]) -> list[IPAddress | None]:
    """``for=`` values of RFC 7239 elements, right to left, at most ``MAX_HOPS``.

    An element without ``for=`` is a proxy that did not disclose the address it saw: it
    becomes an unparseable hop (``None``) so the walk stops there.
    """
    hops: list[IPAddress | None] = []
    for element in _last_elements(lines):
        value = _for_param(element)
        hops.append(parse_ip(value) if value is not None else None)
    return hops


def _for_param(element: str) -> str | None:
    """The raw value of the first ``for=`` pair of one element, or ``None``."""
    for pair in element.split(";"):
        name, sep, value = pair.partition("=")
        if sep and name.strip().lower() == "for":
            return value
    return None


def _last_elements(lines: Sequence[str]) -> list[str]:
    """Non-empty comma-separated elements of all lines, right to left, at most MAX_HOPS.

    Lines are concatenated in order (RFC 9110: repeated header lines are one list).
    ``rsplit`` with a limit scans only the tail of a line, so the work is bounded however
    long an attacker makes it. If a line has more elements than that (counting empty
    ones), its unsplit remainder comes out as one over-long element, which parses as an
    unparseable hop and stops the walk: conservative, and only reachable when every hop
    to its right was trusted. Quoted commas are not special-cased: RFC 7239 ``for=``
    values never contain commas, and a split quoted value only yields unparseable hops.
    """
    elements: list[str] = []
    for line in reversed(lines):
        if not isinstance(line, str):
            continue
        for part in reversed(line.rsplit(",", MAX_HOPS)):
            # isspace() stops at the first non-space character, unlike strip() which
            # would copy a possibly huge remainder.
            if part and not part.isspace():
                elements.append(part)
                if len(elements) >= MAX_HOPS:
                    return elements
    return elements


def truncate_ip(ip: IPAddress) -> str:
    """Privacy-preserving network of ``ip`` for logs: IPv4 /24, IPv6 /48.

    IPv4-mapped IPv6 is truncated as IPv4, matching what ``parse_ip`` returns.
    """
    if isinstance(ip, IPv6Address):
        mapped = ip.ipv4_mapped
        if mapped is None:
            return f"{IPv6Address(int(ip) & ~((1 << 80) - 1))}/48"
        ip = mapped
    return f"{IPv4Address(int(ip) & 0xFFFFFF00)}/24"
