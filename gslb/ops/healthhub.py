"""An instance's one prober: health probes and load scrapes for all of a supervisor's workers.

With ``--workers N`` each worker used to probe every endpoint on its own, N times over. Now
the supervisor runs the probes and scrapes once (the same ``PeriodicRunner`` and health rules a
lone worker runs), and every ``SHARE_INTERVAL_S`` sends each worker the results over its
control socket (``gslb.edge.sharedhealth``). Each answer carries that worker's in-flight counts
and TTFB averages, which fleet mode publishes as this edge's (``own_view``). In fleet mode the
other edges' verdicts (``verdicts``) travel in the same share.

Workers start not ready and become ready at their first share: a worker restarted later is
ready within one interval, on the instance's current health, not an optimistic guess. A
worker that does not answer is skipped until it does (it is starting, or being restarted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence

import aiohttp
import orjson

from gslb.core.config import Config
from gslb.core.peers import EndpointVerdict
from gslb.edge.runtime import Runtime, build_runtime
from gslb.edge.server import BackgroundTasks, make_session
from gslb.edge.sharedhealth import Share, merge_answers, snapshot

log = logging.getLogger("gslb.ops.healthhub")

SHARE_INTERVAL_S = 0.25
SHARE_TIMEOUT_S = 2.0


class HealthHub:
    """Probes once for an instance and shares the results with its workers."""

    def __init__(
        self,
        cfg: Config,
        sockets: Sequence[str],
        *,
        clock: Callable[[], float] = time.monotonic,
        rnd: random.Random | None = None,
        interval_s: float = SHARE_INTERVAL_S,
    ) -> None:
        self.clock = clock
        self.rnd = rnd or random.Random()
        self.runtime: Runtime = build_runtime(cfg, self.rnd)
        self.sockets = list(sockets)
        self.interval_s = interval_s
        # Set by fleet mode (gslb.ops.fleetpeers): the other edges' verdict on each endpoint.
        self.verdicts: Mapping[str, EndpointVerdict] | None = None
        self.answers: dict[str, Share] = {}  # each worker's last answer, by control socket
        self.shares_failed = 0
        self._session: aiohttp.ClientSession | None = None
        self._background: BackgroundTasks | None = None
        self._clients: dict[str, aiohttp.ClientSession] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """The first round of probes (decisive, as a lone worker's), then the loops."""
        self._session = make_session(self.runtime.cfg)
        self._background = self._tasks_for(self.runtime)
        await self._background.start(initial=True)
        self._task = asyncio.create_task(self._share_loop())

    async def reload(self, cfg: Config) -> None:
        """The config every worker now runs; health of unchanged endpoints carries over."""
        old = self.runtime
        new = build_runtime(cfg, self.rnd, previous=old, now=self.clock())
        background = self._tasks_for(new)
        await background.start(initial=False)
        old_background, self._background = self._background, background
        self.runtime = new
        if old_background is not None:
            await old_background.stop()
        old.health.close()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._background is not None:
            await self._background.stop()
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
        if self._session is not None:
            await self._session.close()

    # -- what this edge sees (fleet mode publishes it) ----------------------------------------

    def own_view(self) -> tuple[dict[str, int], dict[str, float]]:
        """In-flight per endpoint and TTFB average per region, over every worker."""
        return merge_answers(list(self.answers.values()))

    def apply(self, verdicts: Mapping[str, EndpointVerdict]) -> None:
        """The fleet's verdict: the workers get it with the next share."""
        self.verdicts = verdicts

    # -- sharing ------------------------------------------------------------------------------

    def _tasks_for(self, rt: Runtime) -> BackgroundTasks:
        assert self._session is not None
        return BackgroundTasks(self._session, rt, self.clock, self.rnd)

    async def _share_loop(self) -> None:
        while True:
            await self.share()
            await asyncio.sleep(self.interval_s)

    async def share(self) -> None:
        """Send the current results to every worker once; keep their answers."""
        body = orjson.dumps(snapshot(self.runtime, self.verdicts))
        await asyncio.gather(*(self._share_with(sock, body) for sock in self.sockets))

    async def _share_with(self, sock: str, body: bytes) -> None:
        client = self._clients.get(sock)
        if client is None:
            client = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=sock),
                timeout=aiohttp.ClientTimeout(total=SHARE_TIMEOUT_S),
            )
            self._clients[sock] = client
        try:
            async with client.post(
                "http://worker/shared",
                data=body,
                headers={"Content-Type": "application/json"},
            ) as resp:
                answer = await resp.read()
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
            self.answers[sock] = orjson.loads(answer)
        except Exception as exc:  # starting, restarting or stuck: skipped until it answers
            self.shares_failed += 1
            self.answers.pop(sock, None)
            log.debug("health share with %s failed: %s %s", sock, type(exc).__name__, exc)
