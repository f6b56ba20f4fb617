"""After a 101: relay raw bytes between the client and the upstream, both ways.

Used for WebSocket and any other Upgrade the client asked for and the upstream granted. What
crosses is not parsed (a WebSocket's frames, pings and close handshake pass untouched). Flow
control both ways: the client side waits while the upstream's write buffer is full, and the
upstream's reading pauses while the client's is. When either side ends its stream, both
close (after what was already written is flushed). ``idle_s`` with no byte either way closes
both: the listener's coarse per-connection deadline, not a timer per message.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import cast

from gslb.edge.h1server import Detached


class _Upstream(asyncio.Protocol):
    """The upstream transport's protocol after the switch: its bytes go to the client."""

    def __init__(self, client: Detached, transport: asyncio.Transport) -> None:
        self.client = client
        self.transport = transport
        self.received = 0
        self.write_paused = False
        self.drained: asyncio.Future[None] | None = None
        self.resuming: asyncio.Task[None] | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.client.write(data)
        if self.client.write_paused and self.resuming is None:
            # The client does not read: stop reading the upstream until it catches up. A task
            # only while backpressure lasts, never per message.
            self.transport.pause_reading()
            self.resuming = asyncio.ensure_future(self._resume_when_drained())

    async def _resume_when_drained(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self.client.drain()
        self.resuming = None
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        self.client.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()
        if not self.closed.done():
            self.closed.set_result(None)
        if self.resuming is not None:
            self.resuming.cancel()
        self._wake()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake()

    def _wake(self) -> None:
        waiter = self.drained
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drain(self) -> None:
        while self.write_paused and not self.closed.done():
            self.drained = asyncio.get_running_loop().create_future()
            await self.drained


async def relay(
    client: Detached, upstream: asyncio.BaseTransport, tail: bytes, idle_s: float
) -> tuple[int, int]:
    """Relay until either side ends or both are silent for ``idle_s``; (bytes the client
    sent, bytes the upstream sent). ``upstream`` comes with its reading paused; ``tail``
    is what it sent after its 101 head."""
    transport = cast(asyncio.Transport, upstream)  # uvloop's transports are not subclasses
    side = _Upstream(client, transport)
    transport.set_protocol(side)

    def on_idle() -> None:
        client.close()
        transport.close()

    client.set_idle_timeout(idle_s, on_idle)
    if tail:
        side.data_received(tail)
    transport.resume_reading()
    sent = 0
    try:
        while not transport.is_closing():
            data = await client.read()
            if not data:
                break
            sent += len(data)
            transport.write(data)
            if side.write_paused:
                await side.drain()
    finally:
        client.close()
        transport.close()  # flushes what is buffered, then closes
        if transport.get_write_buffer_size():
            transport.abort()  # an upstream that does not read holds nothing open
        await side.closed
    return sent, side.received
