"""Small helpers for tests that run real servers on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web


async def eventually(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``cond`` until it holds; fail the test when it does not within ``timeout``."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def serve_app(app: web.Application, **runner_kw: Any) -> tuple[web.AppRunner, str]:
    """Serve ``app`` on 127.0.0.1 at an ephemeral port: (runner to clean up, base URL)."""
    runner = web.AppRunner(app, access_log=None, **runner_kw)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"
