"""Header rewriting for a correct reverse proxy (RFC 9110 section 7.6, RFC 9112).

Pure functions over header multidicts: which headers cross the proxy, and which gslb adds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from multidict import CIMultiDict, CIMultiDictProxy

from gslb.core.clientip import ADDRESS_HEADERS

# Hop-by-hop headers: meaningful for one connection only, never forwarded. Proxy-Authorization
# and Proxy-Authenticate belong to a forward proxy; gslb is not one, and a credential meant for
# another hop must not travel on.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
CONTROL_PREFIX = "x-gslb-"
# ADDRESS_HEADERS claim to know the client address. Only the configured one is ever believed
# (clientip.py); from a peer we do not trust none of them travels on, so an upstream that
# reads any of them cannot be told a made-up address.
# Set by gslb itself on the way up; inbound copies are replaced.
REPLACED_UP = frozenset({"host", "content-length", "x-forwarded-proto", "x-forwarded-host"})
REQUEST_ID = "X-Request-Id"
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def connection_tokens(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> frozenset[str]:
    """Header names listed in ``Connection`` (they are hop-by-hop too)."""
    tokens: set[str] = set()
    for value in headers.getall("Connection", ()):
        for token in value.split(","):
            token = token.strip().lower()
            if token:
                tokens.add(token)
    return frozenset(tokens)


def _drop(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> frozenset[str]:
    return HOP_BY_HOP | connection_tokens(headers)


def valid_request_id(value: str | None) -> bool:
    return value is not None and _REQUEST_ID_OK.match(value) is not None


def upstream_headers(
    inbound: CIMultiDictProxy[str],
    *,
    peer: str | None,
    peer_trusted: bool,
    proto: str,
    host: str | None,
    request_id: str,
    via: str,
    content_length: int | None,
) -> CIMultiDict[str]:
    """Headers to send upstream for an inbound request.

    Drops hop-by-hop headers and every ``X-GSLB-*`` control header; from an untrusted peer
    also drops every address-claiming header (``ADDRESS_HEADERS``), so a client cannot plant
    a spoofed address for the upstream to believe. Appends the peer to ``X-Forwarded-For``, sets
    ``X-Forwarded-Proto``/``-Host``, adds ``Via`` and the request id.
    """
    drop = _drop(inbound)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in inbound.items():
        lname = name.lower()
        if lname in drop or lname in REPLACED_UP or lname.startswith(CONTROL_PREFIX):
            continue
        if lname == "x-request-id":
            continue
        if not peer_trusted and lname in ADDRESS_HEADERS:
            continue
        out.add(name, value)
    if peer:
        prior = ", ".join(out.popall("X-Forwarded-For", ()))
        out["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    if peer_trusted and "X-Forwarded-Proto" in inbound:
        out["X-Forwarded-Proto"] = inbound["X-Forwarded-Proto"]
    else:
        out["X-Forwarded-Proto"] = proto
    fwd_host = inbound.get("X-Forwarded-Host") if peer_trusted else None
    if fwd_host or host:
        out["X-Forwarded-Host"] = fwd_host or host or ""
    _add_via(out, inbound.getall("Via", ()), via)
    out[REQUEST_ID] = request_id
    if content_length is not None:
        out["Content-Length"] = str(content_length)
    return out


def downstream_headers(
    upstream: CIMultiDictProxy[str],
    *,
    request_id: str,
    via: str,
    route: Iterable[tuple[str, str]] = (),
) -> CIMultiDict[str]:
    """Headers to send to the client for an upstream response."""
    drop = _drop(upstream)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        lname = name.lower()
        if lname in drop or lname.startswith(CONTROL_PREFIX) or lname == "x-request-id":
            continue
        if lname == "via":
            continue
        out.add(name, value)
    _add_via(out, upstream.getall("Via", ()), via)
    out[REQUEST_ID] = request_id
    for name, value in route:
        out[name] = value
    return out


def _add_via(out: CIMultiDict[str], prior: Iterable[str], via: str) -> None:
    chain = [v for v in prior if v]
    chain.append(f"1.1 {via}")
    out["Via"] = ", ".join(chain)
