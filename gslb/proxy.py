"""The data plane: an aiohttp handler that routes every request through the core and streams.

Per request (docs/design.md, section 2): client IP (trusted-proxy walk) -> GeoIP -> facts ->
``Router.decide`` -> endpoint pick -> forward and stream -> retry before commit -> account.

The proxy never decides where traffic goes: it asks the router, and walks the decision's
candidates in order (never anything else, so residency holds on every retry).

Commit window: the response is committed to the client (status and headers sent) only when the
upstream's first body chunk arrives, or its body ends, within ``ttft_timeout_s``. Before that,
a connect error, a time-out, a 502/503/504 or a stall is retried on the next candidate. After
it, ``idle_timeout_s`` bounds every silence, and an upstream abort cuts the client connection
without a terminating chunk, so the client can tell a truncated stream from a complete one.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict

from gslb.clientip import client_ip, parse_ip, truncate_ip
from gslb.fleet import EndpointState, Outcome
from gslb.geoip import GeoIP
from gslb.headers import downstream_headers, upstream_headers, valid_request_id
from gslb.logsafety import where_it_failed
from gslb.observe import NullObserver, Observer, RequestRecord
from gslb.policy import BadControlHeader, facts_from_headers
from gslb.router import UNPLACEABLE
from gslb.runtime import Runtime

log = logging.getLogger("gslb.proxy")

RETRYABLE_STATUS = frozenset({502, 503, 504})
_OUT_OF_FILES = frozenset({errno.EMFILE, errno.ENFILE})
NO_BODY_STATUS = frozenset({204, 304})
READ_CHUNK = 65536


class GslbError(Exception):
    """An error gslb answers itself, as JSON."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_response(
    err: GslbError, request_id: str, extra: dict[str, str] | None = None
) -> web.Response:
    body = orjson.dumps({"error": err.code, "message": err.message, "request_id": request_id})
    headers = {"X-Request-Id": request_id, **err.headers, **(extra or {})}
    return web.Response(
        status=err.status, body=body, content_type="application/json", headers=headers
    )


@dataclass(slots=True)
class Body:
    """A request body: fully buffered (replayable) or a prefix plus the rest of the stream."""

    data: bytes
    stream: aiohttp.StreamReader | None = None
    length: int | None = None  # Content-Length when the client sent one
    overflow: bool = False  # the streamed body went over max_body_bytes

    @property
    def replayable(self) -> bool:
        return self.stream is None


class _UpstreamFailed(Exception):
    """One attempt failed before commit; ``outcome`` says how, ``retry_reason`` for metrics."""

    def __init__(self, outcome: Outcome, reason: str, status: int = 502) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason
        self.status = status


@dataclass(slots=True)
class _Attempt:
    """State of the request as it goes; folded into the ``RequestRecord`` at the end."""

    request_id: str
    started: float
    region: str | None = None
    route: str = ""
    attempts: int = 0
    ttfb_s: float | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    status: int = 0
    error: str | None = None
    country: str | None = None
    client: str | None = None
    spilled_from: str | None = None
    retries: tuple[str, ...] = ()
    response: web.StreamResponse | None = None


class Proxy:
    """The public listener's request handler, for one worker process."""

    def __init__(
        self,
        runtime: Runtime,
        geoip: GeoIP,
        session: aiohttp.ClientSession,
        *,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runtime = runtime
        self.geoip = geoip
        self.session = session
        self.observer: Observer = observer or NullObserver()
        self.clock = clock
        self._rid_prefix = secrets.token_hex(4)
        self._fd_warned_at = -1e9
        self._rid_counter = 0

    # -- entry point ----------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        rt = self.runtime  # this request keeps this config to the end, even across a reload
        incoming = request.headers.get("X-Request-Id")
        rid = incoming if valid_request_id(incoming) else self._new_request_id()
        assert rid is not None
        st = _Attempt(request_id=rid, started=self.clock())
        try:
            return await self._handle(request, rt, st)
        except GslbError as err:
            st.status, st.error = err.status, err.code
            return error_response(err, rid, self._error_headers(rt, st))
        except asyncio.CancelledError:
            st.status, st.error = 499, "client_closed"
            raise
        except ConnectionResetError:  # the client went away while we wrote to it
            _cut(request)
            _client_gone(st)
            return st.response or web.Response(status=499)
        except Exception as exc:  # never a traceback to a client, nor its bytes to the log
            log.error("internal error on request %s: %s", rid, where_it_failed(exc))
            st.status, st.error = 500, "internal_error"
            internal = GslbError(500, "internal_error", "internal error")
            return error_response(internal, rid, self._error_headers(rt, st))
        finally:
            self._record(request, st)

    @staticmethod
    def _error_headers(rt: Runtime, st: _Attempt) -> dict[str, str]:
        """Via, and the route headers when a decision was made, on gslb's own answers too."""
        cfg = rt.cfg.proxy
        headers = {"Via": f"1.1 {cfg.via}"}
        if cfg.expose_route_headers and st.route:
            headers[cfg.route_header] = st.route
            if st.region:
                headers[cfg.region_header] = st.region
        return headers

    def _warn_out_of_files(self) -> None:
        now = self.clock()
        if now - self._fd_warned_at >= 10.0:  # at most one line per 10 s
            self._fd_warned_at = now
            log.error(
                "out of file descriptors: raise the open-files limit (ulimit -n) or lower "
                "server.max_connections; requests get 503 meanwhile"
            )

    def _new_request_id(self) -> str:
        self._rid_counter += 1
        return f"{self._rid_prefix}-{self._rid_counter:x}"

    # -- the request path ----------------------------------------------------------------------

    async def _handle(self, request: web.Request, rt: Runtime, st: _Attempt) -> web.StreamResponse:
        cfg = rt.cfg
        _refuse_proxy_forms(request)
        peer = request.remote
        source = rt.address_header  # the one header the trusted proxies write
        ip = client_ip(peer, request.headers.getall(source, ()), rt.trusted, source)
        location = self.geoip.lookup(ip)
        st.country = location.country if location else None
        st.client = _client_label(ip, cfg.log.client_ip)
        body = await self._read_body(
            request, cfg.proxy.replay_buffer_bytes, cfg.proxy.max_body_bytes
        )
        st.bytes_in = len(body.data)
        model = _model_of(body, request) if rt.parse_model else None
        try:
            facts = facts_from_headers(request.headers.get, location, cfg, model)
        except BadControlHeader as exc:
            raise GslbError(400, "bad_request", str(exc)) from None
        t0 = time.perf_counter()
        decision = rt.router.decide(facts, rt.fleet.snapshot)
        self.observer.decision_made(time.perf_counter() - t0)
        st.route = decision.reason
        if decision.region is None:
            denial = rt.router.denial(facts, rt.fleet.snapshot)
            self.observer.denied(denial.cause, denial.rules)
            code = "client_unplaceable" if denial.cause == UNPLACEABLE else "no_eligible_region"
            raise GslbError(503, code, denial.message, {"Retry-After": "5"})
        if decision.reason == "spill":
            st.spilled_from = _home_of(rt, facts, decision.order)
        headers = upstream_headers(
            request.headers,
            peer=peer,
            peer_trusted=_peer_trusted(rt, peer),
            proto=request.scheme,
            host=request.host,
            request_id=st.request_id,
            via=cfg.proxy.via,
            content_length=len(body.data) if body.replayable and body.data else body.length,
        )
        if _is_websocket(request):
            return await self._websocket(request, rt, decision.order, st, headers)
        return await self._forward(request, rt, decision.order, body, st, headers)

    async def _read_body(self, request: web.Request, replay: int, limit: int) -> Body:
        length = request.content_length
        if length is not None and length > limit:
            raise GslbError(413, "body_too_large", f"request body over {limit} bytes")
        if not request.body_exists:
            return Body(b"", length=length)
        buf = bytearray()
        content = request.content
        while len(buf) <= replay:
            chunk = await content.readany()
            if not chunk:
                return Body(bytes(buf), length=length)
            buf += chunk
            if len(buf) > limit:
                raise GslbError(413, "body_too_large", f"request body over {limit} bytes")
        # Too big to keep for a retry: stream the rest straight through.
        return Body(bytes(buf), stream=content, length=length)

    # -- forwarding with retries -------------------------------------------------------------------

    async def _forward(
        self,
        request: web.Request,
        rt: Runtime,
        order: tuple[int, ...],
        body: Body,
        st: _Attempt,
        headers: CIMultiDict[str],
    ) -> web.StreamResponse:
        """Try the decision's candidates in order (the same upstream headers for each)."""
        cfg = rt.cfg
        max_attempts = cfg.routing.max_attempts
        last: _UpstreamFailed | None = None
        tried: EndpointState | None = None
        for position, region_index in enumerate(order):
            if st.attempts >= max_attempts:
                break
            if st.attempts and not body.replayable:
                break  # part of the body went upstream already: cannot replay it
            ep = rt.fleet.pick(region_index, self.clock(), exclude=tried)
            if ep is None:
                continue
            tried = ep
            st.attempts += 1
            st.region = rt.fleet.regions[region_index].name
            may_retry = self._another_candidate(rt, order, position, body, st)
            try:
                return await self._attempt(request, rt, ep, body, st, headers, may_retry)
            except _UpstreamFailed as failed:
                last = failed
                self._report(rt, ep, failed.outcome)
                st.retries = (*st.retries, failed.reason)
                log.info(
                    "request %s: attempt %d on %s failed before commit: %s",
                    st.request_id,
                    st.attempts,
                    st.region,
                    failed.reason,
                )
        if last is None:
            raise GslbError(
                503,
                "no_eligible_region",
                "no healthy endpoint in the allowed regions",
                {"Retry-After": "5"},
            )
        if last.outcome is Outcome.TIMEOUT:
            raise GslbError(504, "upstream_timeout", "the upstream did not answer in time")
        raise GslbError(502, "upstream_unavailable", f"the upstream failed: {last.reason}")

    def _another_candidate(
        self, rt: Runtime, order: tuple[int, ...], position: int, body: Body, st: _Attempt
    ) -> bool:
        """Whether a failure of this attempt could be retried: only then is a 502/503/504
        held back from the client, so the last candidate's own answer reaches it as is."""
        if st.attempts >= rt.cfg.routing.max_attempts or not body.replayable:
            return False
        now = self.clock()
        return any(rt.fleet.can_pick(i, now) for i in order[position + 1 :])

    async def _attempt(
        self,
        request: web.Request,
        rt: Runtime,
        ep: EndpointState,
        body: Body,
        st: _Attempt,
        headers: CIMultiDict[str],
        may_retry: bool,
    ) -> web.StreamResponse:
        cfg = rt.cfg.proxy
        fleet = rt.fleet
        url = ep.url + request.raw_path
        data: bytes | AsyncIterator[bytes] | None
        if body.replayable:
            data = body.data if body.data else None
        else:
            data = self._stream_body(body, rt.cfg.proxy.max_body_bytes, st)
        sent_at = self.clock()
        deadline = asyncio.get_running_loop().time() + cfg.ttft_timeout_s
        fleet.acquire(ep)
        outcome = Outcome.CANCELLED
        upstream: aiohttp.ClientResponse | None = None
        try:
            try:
                # One deadline for the whole commit window: headers and the first body chunk.
                async with asyncio.timeout_at(deadline):
                    upstream = await self.session.request(
                        request.method,
                        url,
                        headers=headers,
                        data=data,
                        allow_redirects=False,
                        ssl=rt.upstream_ssl[ep.region],
                        timeout=rt.upstream_timeout,
                    )
                    first, no_body = await self._first_chunk(request, upstream, may_retry)
            except aiohttp.ConnectionTimeoutError:
                raise _UpstreamFailed(Outcome.CONNECT_ERROR, "connect_error") from None
            except TimeoutError:
                reason = "timeout" if upstream is None else "ttft_timeout"
                raise _UpstreamFailed(Outcome.TIMEOUT, reason) from None
            except aiohttp.ClientConnectorError as exc:
                if exc.os_error.errno in _OUT_OF_FILES:
                    # Our own resource limit, not the upstream's fault: no health penalty.
                    self._warn_out_of_files()
                    raise GslbError(
                        503,
                        "overloaded",
                        "the proxy is at its connection limit",
                        {"Retry-After": "1"},
                    ) from None
                raise _UpstreamFailed(Outcome.CONNECT_ERROR, "connect_error") from None
            except aiohttp.ClientError as exc:
                if body.overflow:  # our own limit stopped the upload, not the upstream
                    raise GslbError(
                        413, "body_too_large", f"request body over {cfg.max_body_bytes} bytes"
                    ) from None
                failure = Outcome.CONNECT_ERROR if upstream is None else Outcome.ABORT
                raise _UpstreamFailed(failure, _short(exc)) from None
            ttfb = self.clock() - sent_at
            st.ttfb_s = ttfb
            rt.health.on_ttfb(ep.region, ttfb)
            outcome = await self._commit(request, rt, ep, upstream, first, no_body, sent_at, st)
            assert st.response is not None
            return st.response
        finally:  # a failure before commit is reported by the retry loop instead
            if upstream is not None:
                upstream.release()
            fleet.release(ep)
            if outcome is not Outcome.CANCELLED:
                self._report(rt, ep, outcome)

    async def _first_chunk(
        self, request: web.Request, upstream: aiohttp.ClientResponse, may_retry: bool
    ) -> tuple[bytes, bool]:
        """Inside the commit window: refuse a retryable status, wait for the first bytes."""
        status = upstream.status
        if status in RETRYABLE_STATUS and may_retry:
            raise _UpstreamFailed(Outcome.HTTP_5XX, f"http_{status}", status)
        no_body = request.method == "HEAD" or status in NO_BODY_STATUS or status < 200
        first = b"" if no_body else await upstream.content.readany()
        return first, no_body

    async def _commit(
        self,
        request: web.Request,
        rt: Runtime,
        ep: EndpointState,
        upstream: aiohttp.ClientResponse,
        first: bytes,
        no_body: bool,
        sent_at: float,
        st: _Attempt,
    ) -> Outcome:
        """Send status and headers to the client, then the body. Returns the outcome."""
        cfg = rt.cfg.proxy
        status = upstream.status
        route_headers = (
            ((cfg.region_header, rt.fleet.regions[ep.region].name), (cfg.route_header, st.route))
            if cfg.expose_route_headers
            else ()
        )
        headers = downstream_headers(
            upstream.headers, request_id=st.request_id, via=cfg.via, route=route_headers
        )
        st.status = status
        content = upstream.content
        try:
            if not no_body and content.at_eof():
                # The whole body came with the first read: one response, one write.
                st.response = web.Response(
                    status=status, reason=upstream.reason, headers=headers, body=first
                )
                await st.response.prepare(request)
                await st.response.write_eof()
                st.bytes_out += len(first)
            else:
                st.response = web.StreamResponse(
                    status=status, reason=upstream.reason, headers=headers
                )
                await st.response.prepare(request)
                if not no_body:
                    return await self._stream(request, rt, ep, upstream, first, sent_at, st)
                await st.response.write_eof()
        except ConnectionResetError:
            _cut(request)  # closing already; make sure nothing more is attempted on it
            return _client_gone(st)
        rt.health.on_duration(ep.region, self.clock() - sent_at)
        return _status_outcome(status)

    async def _stream(
        self,
        request: web.Request,
        rt: Runtime,
        ep: EndpointState,
        upstream: aiohttp.ClientResponse,
        first: bytes,
        sent_at: float,
        st: _Attempt,
    ) -> Outcome:
        """Relay a committed body chunk by chunk; ``idle_timeout_s`` bounds every silence."""
        response = st.response
        assert response is not None
        if first:
            await response.write(first)
            st.bytes_out += len(first)
        content = upstream.content
        while True:
            try:
                # The upstream session's sock_read timeout (idle_timeout_s) bounds each wait.
                chunk = await content.readany()
            except aiohttp.ServerTimeoutError:
                log.warning("request %s: upstream stalled mid-stream; cut", st.request_id)
                _cut(request)
                return Outcome.TIMEOUT
            except aiohttp.ClientError as exc:
                log.warning(
                    "request %s: upstream aborted mid-stream (%s)", st.request_id, _short(exc)
                )
                _cut(request)
                return Outcome.ABORT
            if not chunk:
                break
            await response.write(chunk)  # awaits the client: backpressure
            st.bytes_out += len(chunk)
        await response.write_eof()
        rt.health.on_duration(ep.region, self.clock() - sent_at)
        return _status_outcome(upstream.status)

    async def _stream_body(self, body: Body, limit: int, st: _Attempt) -> AsyncIterator[bytes]:
        """The buffered prefix, then the rest of the client's body as it arrives."""
        total = len(body.data)
        yield body.data
        assert body.stream is not None
        while True:
            chunk = await body.stream.readany()
            if not chunk:
                return
            total += len(chunk)
            st.bytes_in = total
            if total > limit:
                body.overflow = True
                raise GslbError(413, "body_too_large", f"request body over {limit} bytes")
            yield chunk

    # -- websockets ----------------------------------------------------------------------------

    async def _websocket(
        self,
        request: web.Request,
        rt: Runtime,
        order: tuple[int, ...],
        st: _Attempt,
        headers: CIMultiDict[str],
    ) -> web.StreamResponse:
        from gslb.wsproxy import relay_websocket

        return await relay_websocket(self, request, rt, order, st, headers)

    # -- accounting ----------------------------------------------------------------------------

    def _report(self, rt: Runtime, ep: EndpointState, outcome: Outcome) -> None:
        """Tell passive health how an attempt ended (the policy of the request's config)."""
        now = self.clock()
        rt.health.on_outcome(ep, outcome, now)

    def _record(self, request: web.Request, st: _Attempt) -> None:
        record = RequestRecord(
            request_id=st.request_id,
            method=request.method,
            path=request.path,  # aiohttp's path has no query string
            status=st.status,
            region=st.region,
            route=st.route or (st.error or ""),
            attempts=st.attempts,
            ttfb_s=st.ttfb_s,
            duration_s=self.clock() - st.started,
            bytes_in=st.bytes_in,
            bytes_out=st.bytes_out,
            country=st.country,
            client=st.client,
            error=st.error,
            # A failed attempt is a retry only when another attempt followed it.
            retries=st.retries[: max(0, st.attempts - 1)],
            spilled_from=st.spilled_from,
        )
        try:
            self.observer.request_done(record)
        except Exception as exc:  # an observer bug must not break the data plane
            log.error("observer failed: %s", where_it_failed(exc))


# --------------------------------------------------------------------------- helpers


def _refuse_proxy_forms(request: web.Request) -> None:
    """No open proxy: absolute-form targets and CONNECT are refused, never followed."""
    if request.method == "CONNECT":
        raise GslbError(405, "bad_request", "CONNECT is not supported")
    target = request.raw_path
    if not target.startswith("/"):
        raise GslbError(400, "bad_request", "request target must be a path")


def _peer_trusted(rt: Runtime, peer: str | None) -> bool:
    ip = parse_ip(peer) if peer else None
    return ip is not None and ip in rt.trusted


def _client_label(ip: Any, mode: str) -> str | None:
    if ip is None or mode == "none":
        return None
    return str(ip) if mode == "full" else truncate_ip(ip)


def _model_of(body: Body, request: web.Request) -> str | None:
    if not body.replayable or not body.data or request.content_type != "application/json":
        return None
    try:
        doc = orjson.loads(body.data)
    except orjson.JSONDecodeError:
        return None
    model = doc.get("model") if isinstance(doc, dict) else None
    return model if isinstance(model, str) and len(model) <= 256 else None


def _home_of(rt: Runtime, facts: Any, order: tuple[int, ...]) -> str | None:
    """The region a spill left: the nearest allowed, routable, active region."""
    net = rt.router.net_ms(facts.location)
    snap = rt.fleet.snapshot
    regions = rt.cfg.regions
    mask = rt.router.allowed_mask(facts)
    best: int | None = None
    for i in range(len(regions)):
        if (
            mask >> i & 1
            and snap.routable[i]
            and regions[i].active
            and (best is None or net[i] < net[best])
        ):
            best = i
    return regions[best].name if best is not None else None


def _is_websocket(request: web.Request) -> bool:
    return (
        request.method == "GET"
        and request.headers.get("Upgrade", "").lower() == "websocket"
        and "upgrade" in request.headers.get("Connection", "").lower()
    )


def _status_outcome(status: int) -> Outcome:
    if status == 429:
        return Outcome.SATURATED
    if status >= 500:
        return Outcome.HTTP_5XX
    return Outcome.SUCCESS


def _client_gone(st: _Attempt) -> Outcome:
    """The client hung up while we wrote to it: 499, nothing wrong with the upstream."""
    st.status, st.error = 499, "client_closed"
    return Outcome.CANCELLED


def _cut(request: web.Request) -> None:
    """End a committed response without its terminating chunk: the client sees truncation."""
    transport = request.transport
    if transport is not None:
        transport.close()


def _short(exc: BaseException) -> str:
    return type(exc).__name__
