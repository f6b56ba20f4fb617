"""WebSocket pass-through: routed like any request, then relayed both ways concurrently."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from gslb.fleet import Outcome
from gslb.headers import HOP_BY_HOP

if TYPE_CHECKING:
    from gslb.proxy import Proxy, _Attempt
    from gslb.runtime import Runtime

log = logging.getLogger("gslb.ws")

# aiohttp's client makes its own handshake; these belong to the client's handshake with us.
_HANDSHAKE = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "host"}
)


async def relay_websocket(
    proxy: Proxy, request: web.Request, rt: Runtime, order: tuple[int, ...], st: _Attempt
) -> web.StreamResponse:
    from gslb.proxy import GslbError

    protocols = [
        p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()
    ]
    headers = {
        k: v
        for k, v in request.headers.items()
        if k.lower() not in HOP_BY_HOP
        and k.lower() not in _HANDSHAKE
        and k.lower() != "sec-websocket-protocol"
        and not k.lower().startswith("x-gslb-")
    }
    headers["X-Request-Id"] = st.request_id
    for region_index in order[: rt.cfg.routing.max_attempts]:
        ep = rt.fleet.pick(region_index, proxy.clock())
        if ep is None:
            continue
        st.attempts += 1
        st.region = rt.fleet.regions[region_index].name
        url = ep.url.replace("http", "ws", 1) + request.raw_path
        try:
            upstream = await proxy.session.ws_connect(
                url,
                headers=headers,
                protocols=protocols,
                timeout=aiohttp.ClientWSTimeout(ws_close=rt.cfg.proxy.idle_timeout_s),
                autoping=True,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            proxy._report(rt, ep, Outcome.CONNECT_ERROR)
            log.info("request %s: websocket upstream %s failed: %s", st.request_id, ep.url, exc)
            continue
        rt.fleet.acquire(ep)
        try:
            client = web.WebSocketResponse(
                protocols=[upstream.protocol] if upstream.protocol else ()
            )
            await client.prepare(request)
            st.status = 101
            await _pump_both(client, upstream)
            proxy._report(rt, ep, Outcome.SUCCESS)
            return client
        finally:
            rt.fleet.release(ep)
            await upstream.close()
    raise GslbError(502, "upstream_unavailable", "no upstream accepted the websocket")


async def _pump(
    src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> None:
    async for msg in src:
        if msg.type == aiohttp.WSMsgType.TEXT:
            await dst.send_str(msg.data)
        elif msg.type == aiohttp.WSMsgType.BINARY:
            await dst.send_bytes(msg.data)
        else:
            break
    await dst.close()


async def _pump_both(
    client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse
) -> None:
    tasks = [
        asyncio.ensure_future(_pump(client, upstream)),
        asyncio.ensure_future(_pump(upstream, client)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
