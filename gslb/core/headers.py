"""Header rewriting for a correct reverse proxy (RFC 9110 section 7.6, RFC 9112).

Pure functions over raw header lists (``[(name, value), ...]`` as bytes, in the order they
arrived): which headers cross the proxy, and which gslb adds. One pass over a request's
headers (``read_request``) yields both what goes upstream and the few values gslb itself
reads (the client-address header, the request id, the ``X-GSLB-*`` controls), so the data
plane never looks a header up twice. The same rules serve plain requests and upgrades.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Final, NamedTuple

from gslb.core.clientip import ADDRESS_HEADERS

RawHeaders = list[tuple[bytes, bytes]]

# Hop-by-hop headers: meaningful for one connection only, never forwarded. Proxy-Authorization
# and Proxy-Authenticate belong to a forward proxy; gslb is not one, and a credential meant for
# another hop must not travel on.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
CONTROL_PREFIX: Final = b"x-gslb-"
_ADDRESS: Final = frozenset(h.encode() for h in ADDRESS_HEADERS)
# Set by gslb itself on the way up; inbound copies are replaced. gslb frames the body itself
# (Content-Length) and answers ``Expect: 100-continue`` itself, so neither goes on.
_REPLACED_UP: Final = frozenset(
    {
        b"host",
        b"content-length",
        b"expect",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-request-id",
        b"via",
    }
)
# Set by gslb on the way down; the upstream's copies are replaced (Via is extended).
_REPLACED_DOWN: Final = frozenset({b"x-request-id", b"via"})
REQUEST_ID: Final = b"X-Request-Id"
_REQUEST_ID_OK: Final = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")
_JSON: Final = b"application/json"
# Connection values that name no other header (the usual ones): no token parsing needed.
_PLAIN_CONNECTION: Final = frozenset({b"keep-alive", b"close", b"upgrade"})


def valid_request_id(value: bytes | None) -> bool:
    return value is not None and _REQUEST_ID_OK.match(value) is not None


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Header names listed in ``Connection`` (they are hop-by-hop too), lower-cased."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            for token in value.split(b","):
                token = token.strip().lower()
                if token:
                    tokens.add(token)
    return frozenset(tokens)


class RequestHeaders(NamedTuple):
    """One pass over a request's headers: what goes on, and what gslb reads itself."""

    forward: RawHeaders  # end-to-end headers that travel on, before gslb adds its own
    host: bytes | None
    request_id: bytes | None  # the client's X-Request-Id, when it is a valid one
    addresses: list[str]  # every line of the configured client-address header, in order
    controls: dict[str, str]  # X-GSLB-* control headers by lower-case name (first value)
    forwarded_for: list[bytes]  # X-Forwarded-For lines that travel on (trusted peers only)
    forwarded_proto: bytes | None  # a trusted peer's X-Forwarded-Proto
    forwarded_host: bytes | None  # a trusted peer's X-Forwarded-Host
    via: list[bytes]  # the Via chain so far
    json: bool  # Content-Type is application/json (the body may name a model)


def read_request(
    headers: Sequence[tuple[bytes, bytes]], *, address_header: bytes, peer_trusted: bool
) -> RequestHeaders:
    """Split a request's headers into those that go upstream and those gslb reads.

    Drops hop-by-hop headers (and those ``Connection`` names), every ``X-GSLB-*`` control
    header, and what gslb sets itself. From an untrusted peer it also drops every
    address-claiming header (``ADDRESS_HEADERS``), so a client cannot plant a spoofed address
    for the upstream to believe; only ``address_header`` (lower-case) is ever read for the
    client's address (``gslb.core.clientip``).
    """
    forward: RawHeaders = []
    drop = HOP_BY_HOP
    host = request_id = proto = fwd_host = None
    addresses: list[str] = []
    controls: dict[str, str] = {}
    xff: list[bytes] = []
    via: list[bytes] = []
    json = False
    for name, value in headers:
        lname = name.lower()
        if lname == address_header:
            addresses.append(value.decode("latin-1"))
        if lname in _REPLACED_UP:
            if lname == b"host":
                host = value
            elif lname == b"x-request-id":
                if request_id is None and valid_request_id(value):
                    request_id = value
            elif lname == b"via":
                if value:
                    via.append(value)
            elif peer_trusted:
                if lname == b"x-forwarded-proto":
                    proto = proto or value
                elif lname == b"x-forwarded-host":
                    fwd_host = fwd_host or value
            continue
        if lname in drop:
            if lname == b"connection" and value.lower() not in _PLAIN_CONNECTION:
                drop = drop | connection_tokens(((name, value),))
            continue
        if lname.startswith(CONTROL_PREFIX):
            controls.setdefault(lname.decode("latin-1"), value.decode("latin-1"))
            continue
        if lname in _ADDRESS:
            if not peer_trusted:
                continue
            if lname == b"x-forwarded-for":
                xff.append(value)
                continue
        elif lname == b"content-type":
            json = value.split(b";", 1)[0].strip().lower() == _JSON
        forward.append((name, value))
    if drop is not HOP_BY_HOP:  # a Connection header named more: drop those sent before it
        forward = [(n, v) for n, v in forward if n.lower() not in drop]
    return RequestHeaders(
        forward, host, request_id, addresses, controls, xff, proto, fwd_host, via, json
    )


def upstream_headers(
    req: RequestHeaders,
    *,
    peer: str | None,
    proto: bytes,
    request_id: bytes,
    via: bytes,
    content_length: int | None = None,
    upgrade: bytes | None = None,
) -> RawHeaders:
    """The headers to send upstream: what ``read_request`` kept, plus gslb's own.

    Appends the peer to ``X-Forwarded-For``; sets ``X-Forwarded-Proto``/``-Host`` (a trusted
    peer's own values win), ``Via`` (``via`` is gslb's entry, ``b"1.1 name"``) and the request
    id; ``content_length`` for a streamed body that declared one (gslb frames a buffered body
    itself); ``Connection: upgrade`` with the client's ``Upgrade`` when it asked for one.
    """
    out = list(req.forward)
    if peer:
        prior = b", ".join(req.forwarded_for)
        address = peer.encode("latin-1")
        out.append((b"X-Forwarded-For", prior + b", " + address if prior else address))
    out.append((b"X-Forwarded-Proto", req.forwarded_proto or proto))
    host = req.forwarded_host or req.host
    if host:
        out.append((b"X-Forwarded-Host", host))
    out.append((b"Via", b", ".join((*req.via, via))))
    out.append((REQUEST_ID, request_id))
    if content_length is not None:
        out.append((b"Content-Length", b"%d" % content_length))
    if upgrade is not None:
        out.append((b"Connection", b"upgrade"))
        out.append((b"Upgrade", upgrade))
    return out


def downstream_headers(
    upstream: Sequence[tuple[bytes, bytes]],
    *,
    request_id: bytes,
    via: bytes,
    route: Sequence[tuple[bytes, bytes]] = (),
    upgrade: bool = False,
) -> RawHeaders:
    """Headers to send to the client for an upstream response.

    ``upgrade``: a 101 that gslb relays, whose ``Upgrade`` header names the new protocol.
    """
    drop = HOP_BY_HOP
    out: RawHeaders = []
    chain: list[bytes] = []
    upgraded: bytes | None = None
    for name, value in upstream:
        lname = name.lower()
        if lname in drop:
            if lname == b"connection" and value.lower() not in _PLAIN_CONNECTION:
                drop = drop | connection_tokens(((name, value),))
            elif lname == b"upgrade" and upgrade:
                upgraded = value
            continue
        if lname.startswith(CONTROL_PREFIX) or lname in _REPLACED_DOWN:
            if lname == b"via" and value:
                chain.append(value)
            continue
        out.append((name, value))
    if drop is not HOP_BY_HOP:
        out = [(n, v) for n, v in out if n.lower() not in drop]
    chain.append(via)
    out.append((b"Via", b", ".join(chain)))
    out.append((REQUEST_ID, request_id))
    out.extend(route)
    if upgraded is not None:
        out.append((b"Upgrade", upgraded))
    return out
