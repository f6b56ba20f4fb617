"""Locust users around the world streaming chat completions through gslb.

Each user stands in one city, placed by ``X-Forwarded-For`` with a real public address that the
bundled GeoLite2 (2018) database puts there (the demo proxy trusts loopback, so it honours the
header). A user streams ``POST /v1/chat/completions`` (``"stream": true``), reads the SSE stream
to ``data: [DONE]`` and thinks for a while before the next one.

Reported to locust:

* ``POST chat -> REGION``: the whole request, from sending it to ``[DONE]``, named after the
  region that served it (``X-GSLB-Region``). Failed when the status is not 200, the header is
  missing or the stream does not end with ``[DONE]``.
* ``TTFT CITY``: time to first token, from sending the request to the first ``data:`` chunk.

Every finished request is also appended to :data:`TALLY` (city, region, route, TTFT...), which
``benchmarks/loadtest.py`` reads for its summary. Run standalone with, for instance::

    locust -f benchmarks/locustfile.py --host http://127.0.0.1:8080 --headless -u 40 -r 10 -t 30s

Users are placed in cities by a seeded low-discrepancy draw (``LOADTEST_SEED``, default 1):
with one local runner the same users land in the same cities on every run, in proportions
close to the weights even for a few users.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import os
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from locust import between, events, task
from locust.contrib.fasthttp import FastHttpUser, ResponseContextManager
from locust.env import Environment

MODEL: Final = "demo-llm"
MAX_TOKENS: Final = 16
REGION_HEADER: Final = "X-GSLB-Region"
ROUTE_HEADER: Final = "X-GSLB-Route"
DONE: Final = b"[DONE]"
# Seconds between one user's requests: with the demo's regions (4-8 slots, 25 tokens/s, so
# ~0.7 s per 16-token answer) 40 users keep the busiest regions near their spill threshold.
THINK_S: Final = (0.5, 2.5)


@dataclass(frozen=True)
class City:
    name: str
    ip: str  # a public address that the bundled GeoLite2 (2018) database places in the city
    weight: float  # share of the users, roughly where chat users are


# Verified against gslb.edge.geoip.GeoIP('') (the bundled database). The demo has no region in
# Tokyo, Sydney, Mumbai or London: those clients land wherever the router finds nearest.
CITIES: Final[tuple[City, ...]] = (
    City("New York", "72.229.28.185", 14),
    City("Toronto", "142.1.0.1", 6),
    City("Toronto", "99.224.0.1", 5),
    City("Los Angeles", "76.91.0.1", 8),
    City("London", "81.2.69.160", 8),
    City("Frankfurt", "80.81.192.1", 8),
    City("Paris", "81.57.0.1", 6),
    City("Tokyo", "126.0.0.1", 7),
    City("Singapore", "103.6.148.1", 5),
    City("Mumbai", "49.36.0.1", 6),
    City("Sydney", "203.2.218.214", 3),
    City("Sao Paulo", "201.6.0.1", 5),
)

PROMPTS: Final = (
    "Say hello in three languages.",
    "What is a load balancer, in one sentence?",
    "Name a prime number larger than 100.",
    "Write a haiku about latency.",
    "Summarise the plot of Hamlet briefly.",
)


@dataclass(frozen=True)
class Outcome:
    """One finished chat request, as the client saw it."""

    city: str
    region: str  # X-GSLB-Region, "?" when missing
    route: str  # X-GSLB-Route, "?" when missing
    status: int
    ok: bool
    ttft_ms: float | None  # None when no data chunk arrived
    total_ms: float


@dataclass
class Tally:
    """Outcomes of every request in this process; users append, loadtest.py reads.

    Locust's users are greenlets on one thread, so no lock is needed.
    """

    outcomes: list[Outcome] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    def snapshot(self) -> list[Outcome]:
        return list(self.outcomes)

    def clear(self) -> None:
        self.outcomes.clear()


TALLY: Final = Tally()
# Users placed in each city in this test; loadtest.py shows it next to the city's requests.
PLACED: Final[Counter[str]] = Counter()


class CityDraw:
    """Seeded, low-discrepancy draw of cities: any first N users match the weights within ~1.

    User ``n`` takes the city at ``(offset + n * phi) mod 1`` on the cumulative weights, with the
    offset from the seed: the same seed places the same users in the same cities.
    """

    _PHI: Final = (math.sqrt(5) - 1) / 2

    def __init__(self, cities: Sequence[City], seed: int) -> None:
        self._cities = tuple(cities)
        self._bounds = list(itertools.accumulate(c.weight for c in cities))
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self.seed = seed
        self._offset = random.Random(seed).random()
        self._n = 0

    def next(self) -> tuple[int, City]:
        """The next user's number and city."""
        n, self._n = self._n, self._n + 1
        u = (self._offset + n * self._PHI) % 1.0
        i = bisect.bisect_right(self._bounds, u * self._bounds[-1])
        return n, self._cities[min(i, len(self._cities) - 1)]


DRAW: Final = CityDraw(CITIES, int(os.environ.get("LOADTEST_SEED", "1")))


def reseed(seed: int) -> None:
    """Restart the city draw (loadtest.py calls this before spawning users)."""
    DRAW.reseed(seed)


def _on_test_start(environment: Environment, **_: Any) -> None:
    TALLY.clear()
    PLACED.clear()


events.test_start.add_listener(_on_test_start)


class StreamError(Exception):
    """The response was not a complete chat stream."""


class ChatUser(FastHttpUser):
    """One person in one city, chatting every few seconds."""

    wait_time = between(*THINK_S)
    # The demo answers in about a second; a stuck stream fails after this rather than hanging.
    network_timeout = 30.0
    connection_timeout = 5.0

    def on_start(self) -> None:
        n, self.city = DRAW.next()
        PLACED[self.city.name] += 1
        self.rng = random.Random(f"{DRAW.seed}/{n}")  # its prompts, from the same seed

    @task
    def chat(self) -> None:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": self.rng.choice(PROMPTS)}],
            "max_tokens": MAX_TOKENS,
            "stream": True,
        }
        headers = {
            "X-Forwarded-For": self.city.ip,
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "Accept-Encoding": "identity",
        }
        start = time.perf_counter()
        with self.client.request(
            "POST",
            "/v1/chat/completions",
            name="chat -> ?",
            data=json.dumps(body),
            headers=headers,
            stream=True,
            catch_response=True,
        ) as resp:
            got = resp.headers or {}
            region = got.get(REGION_HEADER) or "?"
            route = got.get(ROUTE_HEADER) or "?"
            resp.request_meta["name"] = f"chat -> {region}"
            ttft_ms: float | None = None
            error: str | None = None
            try:
                ttft_ms = read_stream(resp, start)
                if region == "?":
                    raise StreamError(f"no {REGION_HEADER} header")
            except StreamError as exc:
                error = str(exc)
            except Exception as exc:  # any failure of this request is reported, never raised
                error = f"{type(exc).__name__}: {exc}"
            total_ms = (time.perf_counter() - start) * 1000
            resp.request_meta["response_time"] = total_ms
            if error is None:
                resp.success()
            else:
                resp.failure(error)
        if ttft_ms is not None:
            self.environment.events.request.fire(
                request_type="TTFT",
                name=self.city.name,
                response_time=ttft_ms,
                response_length=0,
                exception=None,
                context={},
            )
        TALLY.add(
            Outcome(
                city=self.city.name,
                region=region,
                route=route,
                status=resp.status_code or 0,
                ok=error is None,
                ttft_ms=ttft_ms,
                total_ms=total_ms,
            )
        )


def read_stream(resp: ResponseContextManager, start: float) -> float:
    """Read SSE lines up to ``data: [DONE]``; return the ms from ``start`` to the first chunk.

    Lines come from the connection's ``readline``: ``iter_content`` fills a whole chunk before
    it returns, which would delay the first token. The body is read to its end in every case,
    so the connection goes back to the pool for the next request.
    """
    raw = resp._response  # geventhttpclient's response, still streaming
    if resp.status_code != 200 or raw is None:
        detail = raw.read()[:200].decode(errors="replace") if raw is not None else ""
        error = getattr(resp, "error", None)
        raise StreamError(f"HTTP {resp.status_code} {detail or error or ''}".rstrip())
    ttft_ms: float | None = None
    chunks = 0
    while True:
        line = raw.readline(b"\n")
        if not line:
            raise StreamError(f"stream ended after {chunks} chunks without [DONE]")
        if not line.startswith(b"data:"):
            continue
        if line[5:].strip() == DONE:
            break
        if ttft_ms is None:
            ttft_ms = (time.perf_counter() - start) * 1000
        chunks += 1
    while raw.readline(b"\n"):  # the end of the chunked body, if not read yet
        pass
    if ttft_ms is None:
        raise StreamError("[DONE] before any token")
    return ttft_ms
