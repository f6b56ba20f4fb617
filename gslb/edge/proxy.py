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
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict

from gslb.core.clientip import client_ip, parse_ip, truncate_ip
from gslb.core.config import CLIENT_IP_FULL, CLIENT_IP_NONE
from gslb.core.fleet import EndpointState
from gslb.core.forward import (
    OVERLOADED,
    Act,
    ClientError,
    Exchange,
    Failure,
    Step,
    body_too_large,
)
from gslb.core.headers import downstream_headers, upstream_headers, valid_request_id
from gslb.core.policy import BadControlHeader, facts_from_headers
from gslb.core.scoring import REASONS, SPILL
from gslb.edge.geoip import GeoIP
from gslb.edge.logsafety import where_it_failed
from gslb.edge.runtime import Runtime
from gslb.ops.observe import NullObserver, Observer, RequestRecord

log = logging.getLogger("gslb.edge.proxy")
SPILL_REASON = REASONS[SPILL]

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


def answer(err: ClientError) -> GslbError:
    """The exchange's verdict as the error this handler answers with."""
    headers = {"Retry-After": err.retry_after} if err.retry_after else None
    return GslbError(err.status, err.code, err.message, headers)


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


@dataclass(slots=True)
class _Tally:
    """What one request did as it goes (all its attempts); folded into its ``RequestRecord``."""

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
        self._can_pick: tuple[Runtime, Callable[[int], bool]] | None = None

    # -- entry point ----------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        rt = self.runtime  # this request keeps this config to the end, even across a reload
        incoming = request.headers.get("X-Request-Id")
        rid = incoming if valid_request_id(incoming) else self._new_request_id()
        assert rid is not None
        st = _Tally(request_id=rid, started=self.clock())
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
            st.status, st.error = 499, "client_closed"
            return st.response or web.Response(status=499)
        except Exception as exc:  # never a traceback to a client, nor its bytes to the log
            log.error("internal error on request %s: %s", rid, where_it_failed(exc))
            st.status, st.error = 500, "internal_error"
            internal = GslbError(500, "internal_error", "internal error")
            return error_response(internal, rid, self._error_headers(rt, st))
        finally:
            self._record(request, st)

    @staticmethod
    def _error_headers(rt: Runtime, st: _Tally) -> dict[str, str]:
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

    async def _handle(self, request: web.Request, rt: Runtime, st: _Tally) -> web.StreamResponse:
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
        decision = rt.router.decide(facts, rt.fleet.view)
        self.observer.decision_made(time.perf_counter() - t0)
        st.route = decision.reason
        if decision.region is None:
            denial = rt.router.denial(facts, rt.fleet.view)
            self.observer.denied(denial.cause, denial.rules)
            raise answer(denial.error)
        if decision.reason == SPILL_REASON:
            st.spilled_from = decision.home
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
            raise answer(body_too_large(limit))
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
                raise answer(body_too_large(limit))
        # Too big to keep for a retry: stream the rest straight through.
        return Body(bytes(buf), stream=content, length=length)

    # -- forwarding with retries -------------------------------------------------------------------

    async def _forward(
        self,
        request: web.Request,
        rt: Runtime,
        order: tuple[int, ...],
        body: Body,
        st: _Tally,
        headers: CIMultiDict[str],
    ) -> web.StreamResponse:
        """Forward over HTTP: the exchange decides, ``_attempt`` moves the bytes."""
        cfg = rt.cfg
        ex = Exchange(order, cfg.routing.max_attempts, body.replayable, cfg.proxy.max_body_bytes)

        async def attempt(ep: EndpointState) -> Step:
            return await self._attempt(request, rt, ex, ep, body, st, headers)

        await self.drive(rt, ex, st, attempt)
        assert st.response is not None
        return st.response

    async def drive(
        self,
        rt: Runtime,
        ex: Exchange,
        st: _Tally,
        attempt: Callable[[EndpointState], Awaitable[Step]],
    ) -> Step:
        """The one candidate loop, for HTTP and WebSocket alike: pick an endpoint in the
        region the exchange names, run ``attempt`` on it, report its outcome to health, and
        go on while the exchange says TRY. Raises ``GslbError`` when it says ANSWER."""
        can_pick = self.can_pick_for(rt)
        step = ex.start(can_pick)
        tried: EndpointState | None = None
        while step.act is Act.TRY:
            ep = rt.fleet.pick(ex.region, self.clock(), exclude=tried)
            if ep is None:
                step = ex.no_endpoint(can_pick)
                continue
            tried = ep
            st.attempts = ex.attempts
            st.region = rt.fleet.regions[ex.region].name
            step = await attempt(ep)
            st.retries = ex.retries
            if step.outcome is not None:
                rt.health.on_outcome(ep, step.outcome, self.clock())
            if step.act is Act.TRY:
                log.info(
                    "request %s: attempt %d on %s failed before commit: %s",
                    st.request_id,
                    ex.attempts - 1,
                    st.region,
                    ex.failure,
                )
        if step.act is Act.ANSWER:
            assert step.error is not None
            if step.error is OVERLOADED:
                self._warn_out_of_files()
            raise answer(step.error)
        return step

    def can_pick_for(self, rt: Runtime) -> Callable[[int], bool]:
        """Whether a region has an endpoint to try now: the exchange plans retries with it.

        Built once per runtime (a reload makes a new one), not per request."""
        cached = self._can_pick
        if cached is not None and cached[0] is rt:
            return cached[1]
        fleet, clock = rt.fleet, self.clock

        def can_pick(region: int) -> bool:
            return fleet.can_pick(region, clock())

        self._can_pick = (rt, can_pick)
        return can_pick

    async def _attempt(
        self,
        request: web.Request,
        rt: Runtime,
        ex: Exchange,
        ep: EndpointState,
        body: Body,
        st: _Tally,
        headers: CIMultiDict[str],
    ) -> Step:
        """One candidate, from sending the request to the end of the response (or a failure
        before commit, whose step says what comes next)."""
        fleet = rt.fleet
        sent_at = self.clock()
        fleet.acquire(ep)
        upstream: aiohttp.ClientResponse | None = None
        try:
            step, upstream, first, has_body = await self._commit_window(
                request, rt, ex, ep, body, st, headers
            )
            if step.act is Act.COMMIT:
                assert upstream is not None
                ttfb = self.clock() - sent_at
                st.ttfb_s = ttfb
                rt.health.on_ttfb(ep.region, ttfb)
                step = await self._relay(request, rt, ex, upstream, first, has_body, st)
                if step.act is Act.FINISH:
                    rt.health.on_duration(ep.region, self.clock() - sent_at)
            return step
        finally:
            if upstream is not None:
                upstream.release()
            fleet.release(ep)

    async def _commit_window(
        self,
        request: web.Request,
        rt: Runtime,
        ex: Exchange,
        ep: EndpointState,
        body: Body,
        st: _Tally,
        headers: CIMultiDict[str],
    ) -> tuple[Step, aiohttp.ClientResponse | None, bytes, bool]:
        """Send the request; wait for the head and the first body bytes, all within one
        deadline (``ttft_timeout_s``). Every way it can end becomes an event of ``ex``.

        Returns the step, the response, its first bytes, and whether it has a body at all
        (not for HEAD, 1xx, 204 and 304)."""
        can_pick = self.can_pick_for(rt)
        data: bytes | AsyncIterator[bytes] | None
        if body.replayable:
            data = body.data if body.data else None
        else:
            data = self._stream_body(body, rt.cfg.proxy.max_body_bytes, st)
        deadline = asyncio.get_running_loop().time() + rt.cfg.proxy.ttft_timeout_s
        upstream: aiohttp.ClientResponse | None = None
        first = b""
        has_body = False
        try:
            async with asyncio.timeout_at(deadline):
                upstream = await self.session.request(
                    request.method,
                    ep.url + request.raw_path,
                    headers=headers,
                    data=data,
                    allow_redirects=False,
                    ssl=rt.upstream_ssl[ep.region],
                    timeout=rt.upstream_timeout,
                )
                status = upstream.status
                has_body = request.method != "HEAD" and status >= 200
                has_body = has_body and status not in NO_BODY_STATUS
                step = ex.head(status, has_body, can_pick)
                if step.act is Act.READ_FIRST:
                    first = await upstream.content.readany()
                    step = ex.first_bytes()
        except aiohttp.ConnectionTimeoutError:
            step = ex.failed(Failure.CONNECT_ERROR, can_pick)
        except TimeoutError:
            step = ex.failed(Failure.TIMEOUT, can_pick)
        except aiohttp.ClientConnectorError as exc:
            out_of_files = exc.os_error.errno in _OUT_OF_FILES
            step = ex.failed(
                Failure.OUT_OF_FILES if out_of_files else Failure.CONNECT_ERROR, can_pick
            )
        except aiohttp.ClientError:
            if body.overflow:  # our own limit stopped the upload, not the upstream
                step = ex.failed(Failure.BODY_TOO_LARGE, can_pick)
            elif upstream is None:
                step = ex.failed(Failure.CONNECT_ERROR, can_pick)
            else:
                step = ex.failed(Failure.ABORTED, can_pick)
        return step, upstream, first, has_body

    async def _relay(
        self,
        request: web.Request,
        rt: Runtime,
        ex: Exchange,
        upstream: aiohttp.ClientResponse,
        first: bytes,
        has_body: bool,
        st: _Tally,
    ) -> Step:
        """Committed: send the head and the body to the client; ``idle_timeout_s`` (the
        upstream session's sock_read) bounds every silence. Returns the final step."""
        cfg = rt.cfg.proxy
        route_headers = (
            ((cfg.region_header, st.region or ""), (cfg.route_header, st.route))
            if cfg.expose_route_headers
            else ()
        )
        headers = downstream_headers(
            upstream.headers, request_id=st.request_id, via=cfg.via, route=route_headers
        )
        st.status = upstream.status
        content = upstream.content
        try:
            if has_body and content.at_eof():
                # The whole body came with the first read: one response, one write.
                st.response = web.Response(
                    status=upstream.status, reason=upstream.reason, headers=headers, body=first
                )
                await st.response.prepare(request)
                await st.response.write_eof()
                st.bytes_out += len(first)
                return ex.finished()
            response = st.response = web.StreamResponse(
                status=upstream.status, reason=upstream.reason, headers=headers
            )
            await response.prepare(request)
            if first:
                await response.write(first)
                st.bytes_out += len(first)
            while has_body:
                try:
                    chunk = await content.readany()
                except aiohttp.ServerTimeoutError:
                    log.warning("request %s: upstream stalled mid-stream; cut", st.request_id)
                    _cut(request)
                    return ex.stalled()
                except aiohttp.ClientError:
                    log.warning("request %s: upstream aborted mid-stream; cut", st.request_id)
                    _cut(request)
                    return ex.aborted()
                if not chunk:
                    break
                await response.write(chunk)  # awaits the client: backpressure
                st.bytes_out += len(chunk)
            await response.write_eof()
            return ex.finished()
        except ConnectionResetError:  # the client hung up while we wrote to it: 499
            _cut(request)
            st.status, st.error = 499, "client_closed"
            return ex.client_gone()

    async def _stream_body(self, body: Body, limit: int, st: _Tally) -> AsyncIterator[bytes]:
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
                raise answer(body_too_large(limit))
            yield chunk

    # -- websockets ----------------------------------------------------------------------------

    async def _websocket(
        self,
        request: web.Request,
        rt: Runtime,
        order: tuple[int, ...],
        st: _Tally,
        headers: CIMultiDict[str],
    ) -> web.StreamResponse:
        from gslb.edge.wsproxy import relay_websocket

        return await relay_websocket(self, request, rt, order, st, headers)

    # -- accounting ----------------------------------------------------------------------------

    def _record(self, request: web.Request, st: _Tally) -> None:
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
    if ip is None or mode == CLIENT_IP_NONE:
        return None
    return str(ip) if mode == CLIENT_IP_FULL else truncate_ip(ip)


def _model_of(body: Body, request: web.Request) -> str | None:
    if not body.replayable or not body.data or request.content_type != "application/json":
        return None
    try:
        doc = orjson.loads(body.data)
    except orjson.JSONDecodeError:
        return None
    model = doc.get("model") if isinstance(doc, dict) else None
    return model if isinstance(model, str) and len(model) <= 256 else None


def _is_websocket(request: web.Request) -> bool:
    return (
        request.method == "GET"
        and request.headers.get("Upgrade", "").lower() == "websocket"
        and "upgrade" in request.headers.get("Connection", "").lower()
    )


def _cut(request: web.Request) -> None:
    """End a committed response without its terminating chunk: the client sees truncation."""
    transport = request.transport
    if transport is not None:
        transport.close()
