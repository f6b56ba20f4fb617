"""The data plane's request handler: every request through the core, bytes through raw protocols.

Per request (docs/design.md, section 2): client IP (trusted-proxy walk) -> GeoIP -> facts ->
``Router.decide`` -> endpoint pick -> forward and stream -> retry before commit -> account.
The listener is ``gslb.edge.h1server`` (one ``RequestCycle`` per request), the upstream side
``gslb.edge.h1client`` (per-endpoint pools); the forwarding rules are ``gslb.core.forward``'s
``Exchange``, the header rules ``gslb.core.headers``. This module only wires them together.

The proxy never decides where traffic goes: it asks the router, and walks the decision's
candidates in order (never anything else, so residency holds on every retry).

Commit window: the response is committed to the client (status and headers sent) only when the
upstream's first body chunk arrives, or its body ends, within ``ttft_timeout_s``. Before that,
a connect error, a time-out, a 502/503/504 or a stall is retried on the next candidate. After
it, ``idle_timeout_s`` bounds every silence, and an upstream abort cuts the client connection
without a terminating chunk, so the client can tell a truncated stream from a complete one.

Nothing here costs a Task, a timer or a timeout context per request: the deadlines are the
connections' own (``h1server``, ``h1client``), checked by one coarse sweep each.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson

from gslb.core.clientip import client_ip, parse_ip, truncate_ip
from gslb.core.config import CLIENT_IP_FULL, CLIENT_IP_NONE
from gslb.core.fleet import EndpointState
from gslb.core.forward import OVERLOADED, Act, ClientError, Exchange, Failure, Step
from gslb.core.h1client_rules import response_has_body
from gslb.core.headers import (
    RawHeaders,
    RequestHeaders,
    downstream_headers,
    read_request,
    upstream_headers,
)
from gslb.core.policy import BadControlHeader, facts_from_headers
from gslb.core.scoring import REASONS, SPILL
from gslb.edge.geoip import GeoIP
from gslb.edge.h1client import (
    BadRequestHead,
    BodyError,
    UpstreamError,
    UpstreamPools,
    UpstreamResponse,
)
from gslb.edge.h1server import RequestAborted, RequestCycle
from gslb.edge.logsafety import REFUSALS, where_it_failed
from gslb.edge.runtime import Runtime
from gslb.edge.tunnel import relay
from gslb.ops.observe import NullObserver, Observer, RequestRecord

log = logging.getLogger("gslb.edge.proxy")
SPILL_REASON: Final = REASONS[SPILL]
_JSON: Final = (b"Content-Type", b"application/json")
_CLIENT_GONE: Final = "client_gone"
_CACHE_MAX: Final = 65536  # addresses remembered per config: a bound, not a tuning knob
_CACHED_LINES_MAX: Final = 256  # characters of address-header lines in one cache key


class GslbError(Exception):
    """An error gslb answers itself, as JSON."""

    def __init__(self, err: ClientError) -> None:
        super().__init__(err.message)
        self.err = err


def bad_request(message: str) -> GslbError:
    return GslbError(ClientError(400, "bad_request", message))


@dataclass(slots=True)
class Body:
    """A request body: whole (replayable), or a prefix plus the rest as it arrives."""

    data: bytes
    stream: AsyncIterator[bytes] | None = None
    length: int | None = None  # Content-Length when the client sent one

    @property
    def replayable(self) -> bool:
        return self.stream is None


@dataclass(slots=True)
class _Tally:
    """What one request did as it goes (all its attempts); folded into its ``RequestRecord``."""

    request_id: bytes
    started: float
    region: str | None = None
    route: str = ""
    attempts: int = 0
    ttfb_s: float | None = None
    # Relayed after an upgrade; the bodies are the listener's own counts.
    bytes_in: int = 0
    bytes_out: int = 0
    status: int = 0
    error: str | None = None
    country: str | None = None
    client: str | None = None
    spilled_from: str | None = None
    retries: tuple[str, ...] = ()


class _Plan:
    """What the request path needs from one runtime, computed once per config (not per
    request): header names and values as bytes, time-outs, the ``can_pick`` closure."""

    __slots__ = (
        "address_header",
        "can_pick",
        "client_ip_mode",
        "clients",
        "expose_route",
        "idle_timeout_s",
        "max_attempts",
        "peers",
        "region_header",
        "replay_bytes",
        "route_header",
        "rt",
        "source",
        "trusted",
        "ttft_timeout_s",
        "via",
    )

    def __init__(self, rt: Runtime, clock: Callable[[], float]) -> None:
        p = rt.cfg.proxy
        self.rt = rt
        self.address_header = rt.address_header.encode()
        self.via = f"1.1 {p.via}".encode()
        self.expose_route = p.expose_route_headers
        self.region_header = p.region_header.encode()
        self.route_header = p.route_header.encode()
        self.ttft_timeout_s = p.ttft_timeout_s
        self.idle_timeout_s = p.idle_timeout_s
        self.replay_bytes = p.replay_buffer_bytes
        self.max_attempts = rt.cfg.routing.max_attempts
        self.client_ip_mode = rt.cfg.log.client_ip
        self.trusted = rt.trusted
        self.source = rt.address_header
        # Per peer address: is it a trusted proxy; per (peer, address header lines): the
        # client's address and its log label. Bounded, and rebuilt with the plan on reload.
        self.peers: dict[str, bool] = {}
        self.clients: dict[tuple[str, ...], tuple[Any, str | None]] = {}
        fleet = rt.fleet

        def can_pick(region: int) -> bool:
            return fleet.can_pick(region, clock())

        self.can_pick = can_pick

    def peer_trusted(self, peer: str) -> bool:
        trusted = self.peers.get(peer)
        if trusted is None:
            ip = parse_ip(peer)
            trusted = ip is not None and ip in self.trusted
            if len(self.peers) >= _CACHE_MAX:
                self.peers.clear()
            self.peers[peer] = trusted
        return trusted

    def client(self, peer: str, lines: list[str]) -> tuple[Any, str | None]:
        """The client's address (the trusted-proxy walk) and how the log shows it."""
        key = (peer, *lines)
        hit = self.clients.get(key)
        if hit is None:
            ip = client_ip(peer, lines, self.trusted, self.source)
            hit = (ip, _client_label(ip, self.client_ip_mode))
            # The lines are the client's own bytes: only short ones are kept, so a client
            # that sends a new 8 KiB header each time cannot fill memory with cache keys.
            if sum(map(len, lines)) <= _CACHED_LINES_MAX:
                if len(self.clients) >= _CACHE_MAX:
                    self.clients.clear()
                self.clients[key] = hit
        return hit

    def route_headers(self, st: _Tally) -> RawHeaders:
        if not self.expose_route or not st.route:
            return []
        out = [(self.route_header, st.route.encode())]
        if st.region:
            out.insert(0, (self.region_header, st.region.encode()))
        return out


class Proxy:
    """The public listener's request handler, for one worker process."""

    def __init__(
        self,
        runtime: Runtime,
        geoip: GeoIP,
        pools: UpstreamPools,
        *,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runtime = runtime
        self.geoip = geoip
        self.pools = pools
        self.observer: Observer = observer or NullObserver()
        self.clock = clock
        self.loop = asyncio.get_running_loop()
        self._rid_prefix = secrets.token_hex(4).encode()
        self._fd_warned_at = -1e9
        self._rid_counter = 0
        self._plan = _Plan(runtime, clock)

    def plan(self) -> _Plan:
        """The current runtime's plan: rebuilt when a reload swapped the runtime."""
        plan = self._plan
        if plan.rt is not self.runtime:
            plan = self._plan = _Plan(self.runtime, self.clock)
        return plan

    # -- entry point ----------------------------------------------------------------------------

    async def handle(self, cycle: RequestCycle) -> None:
        plan = self.plan()  # this request keeps this config to the end, even across a reload
        st = _Tally(request_id=b"", started=self.clock())
        try:
            await self._handle(cycle, plan, st)
        except GslbError as exc:
            self._answer(cycle, plan, st, exc.err)
        except RequestAborted as exc:  # the client left, or its body broke a limit
            self._aborted(st, exc.reason)
        except asyncio.CancelledError:
            st.status, st.error = 499, "client_closed"
            raise
        except Exception as exc:  # never a traceback to a client, nor its bytes to the log
            log.error(
                "internal error on request %s: %s", _text(st.request_id), where_it_failed(exc)
            )
            if cycle.started:
                cycle.cut()
                st.status, st.error = st.status or 500, "internal_error"
            else:
                self._answer(cycle, plan, st, ClientError(500, "internal_error", "internal error"))
        finally:
            self._record(cycle, st)

    def _answer(self, cycle: RequestCycle, plan: _Plan, st: _Tally, err: ClientError) -> None:
        """gslb's own JSON answer, with Via and the route headers when a decision was made."""
        st.status, st.error = err.status, err.code
        rid = st.request_id or self._new_request_id()
        body = orjson.dumps({"error": err.code, "message": err.message, "request_id": _text(rid)})
        headers = [_JSON, (b"X-Request-Id", rid), (b"Via", plan.via)]
        if err.retry_after:
            headers.append((b"Retry-After", err.retry_after.encode()))
        headers += plan.route_headers(st)
        cycle.respond(err.status, headers, body)

    @staticmethod
    def _aborted(st: _Tally, reason: str) -> None:
        """The listener ended the request itself (and answered it, unless the client left)."""
        if reason == _CLIENT_GONE:
            st.status, st.error = 499, "client_closed"
            return
        refusal = REFUSALS.get(reason)
        st.status, st.error = (refusal.status if refusal else 400), reason

    def _warn_out_of_files(self) -> None:
        now = self.clock()
        if now - self._fd_warned_at >= 10.0:  # at most one line per 10 s
            self._fd_warned_at = now
            log.error(
                "out of file descriptors: raise the open-files limit (ulimit -n) or lower "
                "server.max_connections; requests get 503 meanwhile"
            )

    def _new_request_id(self) -> bytes:
        self._rid_counter += 1
        return b"%s-%x" % (self._rid_prefix, self._rid_counter)

    # -- the request path ----------------------------------------------------------------------

    async def _handle(self, cycle: RequestCycle, plan: _Plan, st: _Tally) -> None:
        rt = plan.rt
        peer = cycle.peer
        trusted = plan.peer_trusted(peer)
        req = read_request(cycle.headers, address_header=plan.address_header, peer_trusted=trusted)
        st.request_id = req.request_id or self._new_request_id()
        if cycle.target[:1] != b"/":  # no open proxy: absolute-form targets are refused
            raise bad_request("request target must be a path")
        ip, st.client = plan.client(peer, req.addresses)
        location = self.geoip.lookup(ip)
        st.country = location.country if location else None
        body = await self._read_body(cycle, plan.replay_bytes)
        model = _model_of(body, req) if rt.parse_model else None
        controls = req.controls
        try:
            facts = facts_from_headers(
                (lambda name: controls.get(name.lower())) if controls else _no_header,
                location,
                rt.cfg,
                model,
            )
        except BadControlHeader as exc:
            raise bad_request(str(exc)) from None
        t0 = time.perf_counter()
        decision = rt.router.decide(facts, rt.fleet.view)
        self.observer.decision_made(time.perf_counter() - t0)
        st.route = decision.reason
        if decision.region is None:
            denial = rt.router.denial(facts, rt.fleet.view)
            self.observer.denied(denial.cause, denial.rules)
            raise GslbError(denial.error)
        if decision.reason == SPILL_REASON:
            st.spilled_from = decision.home
        headers = upstream_headers(
            req,
            peer=peer if peer != "-" else None,
            proto=b"https" if cycle.tls else b"http",
            request_id=st.request_id,
            via=plan.via,
            content_length=None if body.replayable else body.length,
            upgrade=cycle.upgrade,
        )
        ex = Exchange(decision.order, plan.max_attempts, body.replayable)
        await self.drive(cycle, plan, ex, body, st, headers)

    async def _read_body(self, cycle: RequestCycle, replay: int) -> Body:
        length = cycle.content_length
        if (not length and not cycle.chunked) or cycle.upgrade is not None:
            return Body(b"", length=length)
        data, whole = await cycle.prefix(replay)
        if whole:
            return Body(data, length=length)
        # Too big to keep for a retry: stream the rest straight through.
        return Body(data, stream=_rest_of_body(cycle, data), length=length)

    # -- forwarding with retries -------------------------------------------------------------------

    async def drive(
        self,
        cycle: RequestCycle,
        plan: _Plan,
        ex: Exchange,
        body: Body,
        st: _Tally,
        headers: RawHeaders,
    ) -> Step:
        """The one candidate loop, for plain requests and upgrades alike: pick an endpoint in
        the region the exchange names, make the attempt on it, report its outcome to health,
        and go on while the exchange says TRY. Raises ``GslbError`` when it says ANSWER."""
        rt = plan.rt
        can_pick = plan.can_pick
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
            step = await self._attempt(cycle, plan, ex, ep, body, st, headers)
            st.retries = ex.retries
            if step.outcome is not None:
                rt.health.on_outcome(ep, step.outcome, self.clock())
            if step.act is Act.TRY:
                log.info(
                    "request %s: attempt %d on %s failed before commit: %s",
                    _text(st.request_id),
                    ex.attempts - 1,
                    st.region,
                    ex.failure,
                )
        if step.act is Act.ANSWER:
            assert step.error is not None
            if step.error is OVERLOADED:
                self._warn_out_of_files()
            raise GslbError(step.error)
        return step

    async def _attempt(
        self,
        cycle: RequestCycle,
        plan: _Plan,
        ex: Exchange,
        ep: EndpointState,
        body: Body,
        st: _Tally,
        headers: RawHeaders,
    ) -> Step:
        """One candidate, from sending the request to the end of the response (or a failure
        before commit, whose step says what comes next)."""
        rt = plan.rt
        can_pick = plan.can_pick
        fleet = rt.fleet
        sent_at = self.clock()
        fleet.acquire(ep)  # from here the request is load on ep, queued for a connection or not
        response = None
        try:
            try:
                response = await self.pools.request(
                    ep.url,
                    cycle.method_bytes,
                    cycle.target,
                    headers,
                    body.data if body.stream is None else body.stream,
                    deadline=self.loop.time() + plan.ttft_timeout_s,
                    upgrade=cycle.upgrade is not None,
                    idle_timeout_s=plan.idle_timeout_s,
                    first_byte=True,
                )
            except BadRequestHead:  # a field the parser let through cannot be sent on
                raise bad_request("the request cannot be forwarded as it is") from None
            except UpstreamError as exc:
                return ex.failed(exc.failure, can_pick)
            except RequestAborted as exc:
                self._aborted(st, exc.reason)
                return ex.client_gone()
            status = response.status
            if status == 101:
                ex.head(101, False, can_pick)  # the switch is the commit: no retry after it
                st.status = 101
                return await self._upgraded(cycle, plan, ex, response, st)
            has_body = response_has_body(cycle.method == "HEAD", status)
            step = ex.head(status, has_body, can_pick)
            first = b""
            if step.act is Act.READ_FIRST:
                try:
                    first = await response.read()
                except BodyError as exc:
                    return ex.failed(exc.failure, can_pick)
                step = ex.first_bytes()
            if step.act is not Act.COMMIT:
                return step
            ttfb = self.clock() - sent_at
            st.ttfb_s = ttfb
            rt.health.on_ttfb(ep.region, ttfb)
            step = await self._relay(cycle, plan, ex, response, first, has_body, st)
            if step.act is Act.FINISH:
                rt.health.on_duration(ep.region, self.clock() - sent_at)
            return step
        finally:
            if response is not None:
                response.release()  # back to the pool when it ended cleanly; else closed
            fleet.release(ep)

    async def _relay(
        self,
        cycle: RequestCycle,
        plan: _Plan,
        ex: Exchange,
        response: UpstreamResponse,
        first: bytes,
        has_body: bool,
        st: _Tally,
    ) -> Step:
        """Committed: send the head and the body to the client; ``idle_timeout_s`` (the
        upstream connection's own deadline) bounds every silence. Returns the final step."""
        headers = downstream_headers(
            response.headers,
            request_id=st.request_id,
            via=plan.via,
            route=plan.route_headers(st),
        )
        st.status = response.status
        if not has_body or response.at_eof:
            # The whole body came with the first read: one response, one write.
            cycle.respond(response.status, headers, first)
            return ex.finished()
        cycle.start(response.status, headers)
        try:
            await cycle.send(first)  # the head goes out with the first bytes, in one write
            # The rest moves from the upstream's callbacks to the client's transport: no
            # coroutine step per chunk; a client that does not read pauses the upstream.
            await response.stream_to(cycle)
        except BodyError as exc:
            cycle.cut()
            stalled = exc.failure is Failure.TIMEOUT
            log.warning(
                "request %s: upstream %s mid-stream; cut",
                _text(st.request_id),
                "stalled" if stalled else "aborted",
            )
            return ex.stalled() if stalled else ex.aborted()
        except RequestAborted:  # the client hung up while we wrote to it: 499
            st.status, st.error = 499, "client_closed"
            return ex.client_gone()
        cycle.end()
        return ex.finished()

    async def _upgraded(
        self,
        cycle: RequestCycle,
        plan: _Plan,
        ex: Exchange,
        response: UpstreamResponse,
        st: _Tally,
    ) -> Step:
        """An asked-for 101: relay raw bytes both ways until either side ends or both are
        silent for ``idle_timeout_s``."""
        headers = downstream_headers(
            response.headers,
            request_id=st.request_id,
            via=plan.via,
            route=plan.route_headers(st),
            upgrade=True,
        )
        transport, tail = response.detach()
        client = cycle.detach(headers)
        sent, received = await relay(client, transport, tail, plan.idle_timeout_s)
        st.bytes_in += sent
        st.bytes_out += received
        return ex.finished()

    # -- accounting ----------------------------------------------------------------------------

    def _record(self, cycle: RequestCycle, st: _Tally) -> None:
        record = RequestRecord(
            request_id=_text(st.request_id),
            method=cycle.method,
            path=cycle.target.split(b"?", 1)[0].decode("latin-1"),  # never the query string
            status=st.status,
            region=st.region,
            route=st.route or (st.error or ""),
            attempts=st.attempts,
            ttfb_s=st.ttfb_s,
            duration_s=self.clock() - st.started,
            bytes_in=st.bytes_in + cycle.received,  # the body, however far it got
            bytes_out=st.bytes_out + cycle.body_sent,
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


def _no_header(name: str) -> None:
    return None


def _text(value: bytes) -> str:
    return value.decode("latin-1")


async def _rest_of_body(cycle: RequestCycle, prefix: bytes) -> AsyncIterator[bytes]:
    """The buffered prefix, then the rest of the client's body as it arrives (the listener
    enforces ``max_body_bytes`` and the upload rate; ``RequestAborted`` says it stopped)."""
    yield prefix
    while data := await cycle.read():
        yield data


def _client_label(ip: Any, mode: str) -> str | None:
    if ip is None or mode == CLIENT_IP_NONE:
        return None
    return str(ip) if mode == CLIENT_IP_FULL else truncate_ip(ip)


def _model_of(body: Body, req: RequestHeaders) -> str | None:
    if not body.replayable or not body.data or not req.json:
        return None
    try:
        doc = orjson.loads(body.data)
    except orjson.JSONDecodeError:
        return None
    model = doc.get("model") if isinstance(doc, dict) else None
    return model if isinstance(model, str) and len(model) <= 256 else None
