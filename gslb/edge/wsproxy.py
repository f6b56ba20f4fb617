"""WebSocket pass-through: routed like any request, then relayed both ways concurrently."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from gslb.core.fleet import EndpointState
from gslb.core.forward import Exchange, Failure, Step

if TYPE_CHECKING:
    from gslb.edge.proxy import Proxy, _Tally
    from gslb.edge.runtime import Runtime

log = logging.getLogger("gslb.ws")

# aiohttp's client makes its own handshake; these belong to the client's handshake with us.
# Everything else follows the proxy's header rules (headers.upstream_headers), like HTTP.
_HANDSHAKE = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "host",
        "content-length",
    }
)


async def relay_websocket(
    proxy: Proxy,
    request: web.Request,
    rt: Runtime,
    order: tuple[int, ...],
    st: _Tally,
    upstream_headers: CIMultiDict[str],
) -> web.StreamResponse:
    """Route a WebSocket handshake through the proxy's candidate loop, then relay."""
    protocols = [
        p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()
    ]
    headers = CIMultiDict(
        (k, v) for k, v in upstream_headers.items() if k.lower() not in _HANDSHAKE
    )
    idle_s = rt.cfg.proxy.idle_timeout_s
    # Nothing of a handshake's body is ever sent: it can always go to the next candidate.
    ex = Exchange(order, rt.cfg.routing.max_attempts, replayable=True)
    client = web.WebSocketResponse()

    async def attempt(ep: EndpointState) -> Step:
        nonlocal client
        can_pick = proxy.can_pick_for(rt)
        url = ep.url.replace("http", "ws", 1) + request.raw_path
        try:
            upstream = await proxy.session.ws_connect(
                url,
                headers=headers,
                protocols=protocols,
                timeout=aiohttp.ClientWSTimeout(ws_close=idle_s),
                autoping=True,
                ssl=rt.upstream_ssl[ep.region],
            )
        except (aiohttp.ClientError, TimeoutError):
            return ex.failed(Failure.CONNECT_ERROR, can_pick)
        rt.fleet.acquire(ep)
        try:
            ex.head(101, False, can_pick)  # the upgrade is the commit: no retry after it
            client = web.WebSocketResponse(
                protocols=[upstream.protocol] if upstream.protocol else ()
            )
            await client.prepare(request)
            st.status = 101
            if await _pump_both(client, upstream, idle_s):
                log.info("request %s: websocket idle for %.0fs; closed", st.request_id, idle_s)
            return ex.finished()
        finally:
            rt.fleet.release(ep)
            await upstream.close()

    await proxy.drive(rt, ex, st, attempt)
    return client


class _Idle:
    """When the last message crossed, either way: a socket is idle only if both are quiet."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = asyncio.get_running_loop().time()

    def touch(self) -> None:
        self.last = asyncio.get_running_loop().time()

    def left(self, idle_s: float) -> float:
        return self.last + idle_s - asyncio.get_running_loop().time()


async def _pump(
    src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    idle: _Idle,
    idle_s: float,
) -> bool:
    """Relay messages from ``src`` to ``dst``; True when it stopped because both were idle."""
    while True:
        left = idle.left(idle_s)
        if left <= 0:
            await dst.close()
            return True
        try:
            msg = await src.receive(timeout=left)
        except TimeoutError:
            continue  # the other direction may have been busy meanwhile: check again
        if msg.type == aiohttp.WSMsgType.TEXT:
            idle.touch()
            await dst.send_str(msg.data)
        elif msg.type == aiohttp.WSMsgType.BINARY:
            idle.touch()
            await dst.send_bytes(msg.data)
        else:
            await dst.close()
            return False


async def _pump_both(
    client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse, idle_s: float
) -> bool:
    """Relay both ways until either side closes or both are silent for ``idle_s``."""
    idle = _Idle()
    tasks = [
        asyncio.ensure_future(_pump(client, upstream, idle, idle_s)),
        asyncio.ensure_future(_pump(upstream, client, idle, idle_s)),
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return any(not t.cancelled() and t.exception() is None and t.result() for t in done)
