"""Scripted stand-ins for the periodic runner's I/O (``gslb.ops.periodic``), and health inputs.

``FakeProber`` and ``FakeScraper`` satisfy the ``Prober`` and ``Scraper`` protocols without
sockets: answers are scripted per endpoint URL, an endpoint can be made to hang until
released, and every call (and every cancellation) is recorded. ``RecordingSleep`` replaces
the runner's timer wait so a test can read the delays it asked for. ``mark_down`` and
``report_load`` feed a worker's real policy what its runner would, for end-to-end tests that
run without background health tasks.
"""

from __future__ import annotations

import asyncio
from collections import deque

from gslb.core.config import HealthConfig, LoadConfig
from gslb.core.fleet import EndpointState
from gslb.edge.server import Worker


class _Gate:
    """Endpoints that hang until released, and the calls and cancellations seen."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []  # (url, loop time at the call)
        self.cancelled: list[str] = []
        self.finished: list[str] = []
        self.hanging: set[str] = set()
        self._release = asyncio.Event()

    def hang(self, url: str) -> None:
        self.hanging.add(url)
        self._release.clear()

    def release(self) -> None:
        """Let every hanging call return (and later calls pass)."""
        self.hanging.clear()
        self._release.set()

    def count(self, url: str) -> int:
        return sum(1 for u, _ in self.calls if u == url)

    def in_flight(self, url: str) -> int:
        done = self.finished.count(url) + self.cancelled.count(url)
        return self.count(url) - done

    async def enter(self, url: str) -> None:
        self.calls.append((url, asyncio.get_running_loop().time()))
        try:
            if url in self.hanging:
                await self._release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(url)
            raise


class FakeProber(_Gate):
    """A ``Prober``: per-URL scripted (ok, rtt) answers, then ``default``.

    A URL in ``broken`` raises instead of answering (a prober bug).
    """

    def __init__(self, default: tuple[bool, float | None] = (True, 0.002)) -> None:
        super().__init__()
        self.default = default
        self.answers: dict[str, deque[tuple[bool, float | None]]] = {}
        self.broken: set[str] = set()

    def script(self, url: str, *answers: tuple[bool, float | None]) -> None:
        self.answers.setdefault(url, deque()).extend(answers)

    async def probe(self, ep: EndpointState, health: HealthConfig) -> tuple[bool, float | None]:
        await self.enter(ep.url)
        self.finished.append(ep.url)
        if ep.url in self.broken:
            raise RuntimeError("prober bug")
        queue = self.answers.get(ep.url)
        return queue.popleft() if queue else self.default


class FakeScraper(_Gate):
    """A ``Scraper``: per-URL page text, or an exception to raise."""

    def __init__(self) -> None:
        super().__init__()
        self.pages: dict[str, str | Exception] = {}

    async def scrape(self, ep: EndpointState, load: LoadConfig) -> str:
        await self.enter(ep.url)
        self.finished.append(ep.url)
        page = self.pages.get(ep.url)
        if page is None:
            raise ConnectionRefusedError("no page scripted")
        if isinstance(page, Exception):
            raise page
        return page


class RecordingSleep:
    """The runner's ``sleep``: records each delay per task and yields, ``limit`` times per task.

    After ``limit`` waits a task blocks until cancelled, so a test reads a fixed number of
    delays from every loop without real time passing.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.delays: dict[str, list[float]] = {}

    async def __call__(self, delay: float) -> None:
        task = asyncio.current_task()
        name = task.get_name() if task is not None else "?"
        seen = self.delays.setdefault(name, [])
        if len(seen) >= self.limit:
            await asyncio.Event().wait()
        seen.append(delay)
        await asyncio.sleep(0)

    def full(self, names: list[str]) -> bool:
        return all(len(self.delays.get(n, [])) >= self.limit for n in names)


def mark_down(worker: Worker, url: str) -> None:
    """Feed the worker's policy ``fall`` failed probes of ``url``: what its runner would do."""
    rt = worker.runtime
    ep = rt.fleet.by_url[url]
    for _ in range(rt.fleet.regions[ep.region].cfg.health.fall):
        rt.health.on_probe(ep, False, None, worker.clock())


def report_load(worker: Worker, url: str, load: float) -> None:
    """Feed the worker's policy a load report of ``url`` (running + waiting), read now."""
    rt = worker.runtime
    rt.health.on_load_report(rt.fleet.by_url[url], load, worker.clock())
