"""A simulated OpenAI-compatible inference server that stands in for vLLM behind the balancer.

One ``FakeRegion`` is one region's serving fleet collapsed into a single process: ``slots``
requests run at once, the rest wait in a FIFO queue (as vLLM's scheduler does), prefill time
grows with the prompt, and tokens come out at ``tokens_per_s`` per stream. ``/metrics``
reports the same gauges vLLM does, so the balancer's load scraper can be tested against it.

Beyond the inference API it carries endpoints that exercise a proxy: ``/echo`` (what arrived
upstream), ``/upload`` and ``/download`` (large bodies, streamed), ``/sse`` (event timing),
``/status/{code}``, ``/slow-first-byte``, ``/headers-then-hang`` and ``/abort-mid-stream``.

Timeline of a completion request: ``network_delay_ms`` (every endpoint, before queueing, so it
holds no slot) -> fault draws (500 / hang) -> FIFO wait for a slot (429 when ``max_queue`` are
already waiting) -> streaming responses send their headers now -> prefill -> one token every
``1/tokens_per_s`` s. A non-streaming answer is sent whole after prefill plus decode time.

Fault injection is deterministic: every well-formed completion request draws from one
``random.Random(seed)``, so a test sees the same failures on every run. ``kill()`` and
``die_after`` need the listener made by ``start()``; an app mounted elsewhere via
``make_app()`` cannot crash.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import signal
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Final, Literal

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "FakeRegion",
    "FakeRegionOptions",
    "FakeRegionStats",
    "add_arguments",
    "main_from_args",
    "options_from_args",
    "run_from_args",
]

JSONObject = dict[str, Any]
CompletionKind = Literal["chat", "text"]

# The exposition format prometheus_client (and so vLLM) serves to a plain scrape.
METRICS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
# Upper bounds on query parameters: a typo must not make the test server allocate gigabytes
# per chunk or sleep for a day.
_MAX_CHUNK: Final = 16 * 1024 * 1024
_MAX_DELAY_MS: Final = 3_600_000
_MAX_TOKENS_CAP: Final = 1_000_000
# A rough chars-per-token ratio for English text, used only to fill in ``usage``.
_CHARS_PER_TOKEN: Final = 4
# Seconds stop() lets aiohttp wait for a connection to finish before forcing it closed.
_SHUTDOWN_TIMEOUT_S: Final = 1.0
# How long a simulated crash waits for the last response's bytes to leave the socket buffer.
_CRASH_FLUSH_S: Final = 0.2


@dataclass(frozen=True)
class FakeRegionOptions:
    """Static configuration of one fake region; see the module docstring."""

    name: str = "fake"
    slots: int = 8
    max_queue: int = 1024
    prefill_ms_per_1k_chars: float = 20.0
    base_prefill_ms: float = 5.0
    tokens_per_s: float = 200.0
    max_tokens_default: int = 16
    network_delay_ms: float = 0.0
    error_rate: float = 0.0
    hang_rate: float = 0.0
    die_after: int | None = None
    seed: int = 0
    model: str = "fake-llm"
    health_status: int = 200

    def validate(self) -> None:
        """Raise ``ValueError`` for settings the simulation cannot honour."""
        if self.slots < 1:
            raise ValueError("slots must be >= 1")
        if self.max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        if self.tokens_per_s <= 0:
            raise ValueError("tokens_per_s must be > 0")
        if self.max_tokens_default < 1:
            raise ValueError("max_tokens_default must be >= 1")
        if min(self.prefill_ms_per_1k_chars, self.base_prefill_ms, self.network_delay_ms) < 0:
            raise ValueError("delays must be >= 0")
        _check_rate("error_rate", self.error_rate)
        _check_rate("hang_rate", self.hang_rate)
        if self.die_after is not None and self.die_after < 0:
            raise ValueError("die_after must be >= 0")
        _check_status("health_status", self.health_status)


@dataclass
class FakeRegionStats:
    """Counters a test can read directly (single event loop, so no locking).

    ``completions_total`` counts well-formed completion requests as they arrive, including
    those later answered by injected faults, 429 or a client hang-up; ``completions_done``
    counts the ones answered in full.
    """

    requests_total: int = 0
    completions_total: int = 0
    completions_done: int = 0
    active: int = 0
    queued: int = 0
    max_active_seen: int = 0
    max_queued_seen: int = 0
    cancelled: int = 0
    rejected: int = 0
    errors_injected: int = 0
    hangs_injected: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    by_path: dict[str, int] = field(default_factory=dict)


def _check_rate(name: str, rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"{name} must be within [0, 1], got {rate}")


def _check_status(name: str, status: int) -> None:
    if not 200 <= status <= 599:
        raise ValueError(f"{name} must be an HTTP status in 200..599, got {status}")


# --------------------------------------------------------------------------------------------
# Errors in OpenAI's shape


class _ApiError(Exception):
    """An OpenAI-style error response; raised anywhere in a handler, rendered once."""

    def __init__(self, status: int, message: str, error_type: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type

    def response(self) -> web.Response:
        body = {"error": {"message": self.message, "type": self.error_type, "code": None}}
        return web.json_response(body, status=self.status)


def _bad_request(message: str) -> _ApiError:
    return _ApiError(400, message, "invalid_request_error")


class _QueueFull(Exception):
    """No free slot and ``max_queue`` requests already waiting."""


# --------------------------------------------------------------------------------------------
# Slots: vLLM's running batch, with a FIFO waiting queue in front of it


class _Slots:
    """A FIFO semaphore that keeps ``stats.active`` / ``stats.queued`` exact at every instant.

    ``asyncio.Semaphore`` is not used because its wake-up order is not strictly FIFO across
    Python versions, and because a slot must be handed straight to the next waiter on release:
    otherwise a newly arriving request could overtake the queue, which vLLM never does.
    """

    def __init__(self, slots: int, max_queue: int, stats: FakeRegionStats) -> None:
        self._free = slots
        self._max_queue = max_queue
        self._stats = stats
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            self._mark_running()
            return
        if len(self._waiters) >= self._max_queue:
            raise _QueueFull
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._stats.queued += 1
        self._stats.max_queued_seen = max(self._stats.max_queued_seen, self._stats.queued)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                # The slot was handed over just before the cancellation landed: pass it on.
                self.release()
            else:
                self._waiters.remove(fut)
                self._stats.queued -= 1
            raise

    def release(self) -> None:
        self._stats.active -= 1
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                # Hand over now, so the gauges never show a free slot with a non-empty queue.
                self._stats.queued -= 1
                self._mark_running()
                fut.set_result(None)
                return
        self._free += 1

    def _mark_running(self) -> None:
        self._stats.active += 1
        self._stats.max_active_seen = max(self._stats.max_active_seen, self._stats.active)

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()


# --------------------------------------------------------------------------------------------
# Request parsing


@dataclass(frozen=True)
class _Completion:
    kind: CompletionKind
    prompt_chars: int
    max_tokens: int
    stream: bool
    include_usage: bool


def _content_chars(content: Any, where: str) -> int:
    """Characters of one chat message content: a string, null, or a list of text parts."""
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if not isinstance(part, dict):
                raise _bad_request(f"{where}: content parts must be objects")
            text = part.get("text", "")
            total += len(text) if isinstance(text, str) else 0
        return total
    raise _bad_request(f"{where}: content must be a string, a list of parts or null")


def _messages_chars(messages: Any) -> int:
    if not isinstance(messages, list) or not messages:
        raise _bad_request("'messages' must be a non-empty list")
    total = 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _bad_request(f"messages[{i}] must be an object with a string 'role'")
        total += _content_chars(message.get("content"), f"messages[{i}]")
    return total


def _prompt_chars(prompt: Any) -> int:
    """Characters of a legacy ``prompt``: a string or a list of strings / token ids."""
    if isinstance(prompt, str):
        return len(prompt)
    if isinstance(prompt, list) and prompt:
        total = 0
        for item in prompt:
            if isinstance(item, str):
                total += len(item)
            elif isinstance(item, int) and not isinstance(item, bool):
                total += _CHARS_PER_TOKEN  # a token id: count it as one token's worth
            else:
                raise _bad_request("'prompt' list items must be strings or token ids")
        return total
    raise _bad_request("'prompt' must be a string or a non-empty list")


def _max_tokens(body: JSONObject, default: int) -> int:
    # The Chat API renamed max_tokens to max_completion_tokens; vLLM accepts both.
    value = body.get("max_tokens")
    if value is None:
        value = body.get("max_completion_tokens")
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _bad_request("'max_tokens' must be a positive integer")
    if value > _MAX_TOKENS_CAP:
        raise _bad_request(f"'max_tokens' must be <= {_MAX_TOKENS_CAP}")
    return value


def _include_usage(body: JSONObject) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise _bad_request("'stream_options' must be an object")
    return bool(options.get("include_usage", False))


def parse_completion(raw: bytes, kind: CompletionKind, default_max_tokens: int) -> _Completion:
    """Validate an OpenAI request body; raises ``_ApiError`` (400) on anything malformed."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad_request(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _bad_request("request body must be a JSON object")
    if "model" in body and not isinstance(body["model"], str):
        raise _bad_request("'model' must be a string")
    chars = (
        _messages_chars(body.get("messages"))
        if kind == "chat"
        else _prompt_chars(body.get("prompt"))
    )
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise _bad_request("'stream' must be a boolean")
    return _Completion(
        kind=kind,
        prompt_chars=chars,
        max_tokens=_max_tokens(body, default_max_tokens),
        stream=bool(stream),
        include_usage=_include_usage(body),
    )


# --------------------------------------------------------------------------------------------
# Response bodies in OpenAI's format


def _sse(payload: JSONObject | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def _usage(prompt_tokens: int, completion_tokens: int) -> JSONObject:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _download_chunk(offset: int, size: int) -> bytes:
    """Bytes ``offset..offset+size`` of the infinite pattern 00 01 .. ff 00 01 .."""
    start = offset % 256
    reps = (start + size) // 256 + 1
    return (bytes(range(256)) * reps)[start : start + size]


async def _write_now(request: web.Request, resp: web.Response) -> web.Response:
    """Send a complete response from inside the handler instead of after it returns."""
    await resp.prepare(request)
    await resp.write_eof()
    return resp


def _query_int(request: web.Request, name: str, default: int | None, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        if default is None:
            raise _bad_request(f"query parameter '{name}' is required")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _bad_request(f"query parameter '{name}' must be an integer") from None
    if not lo <= value <= hi:
        raise _bad_request(f"query parameter '{name}' must be within {lo}..{hi}")
    return value


# --------------------------------------------------------------------------------------------
# /metrics


class _VllmCollector(Collector):
    """Renders the fake's state under vLLM's (v1 engine) metric names, help texts and labels."""

    def __init__(self, region: FakeRegion) -> None:
        self._region = region

    def collect(self) -> Iterable[Metric]:
        region = self._region
        stats = region.stats
        labels = ["engine", "model_name"]
        values = ["0", region.options.model]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=labels)
            family.add_metric(values, value)
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=labels)
            family.add_metric(values, value)
            return family

        yield gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            stats.active,
        )
        yield gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.", stats.queued
        )
        yield gauge(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            stats.active / region.options.slots,
        )
        yield counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", stats.prompt_tokens_total
        )
        yield counter(
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            stats.generation_tokens_total,
        )


# --------------------------------------------------------------------------------------------
# The server


class FakeRegion:
    """One simulated region; see the module docstring. Not thread-safe: one event loop."""

    def __init__(self, options: FakeRegionOptions) -> None:
        options.validate()
        self.options = options
        self.stats = FakeRegionStats()
        self._rng = random.Random(options.seed)
        self._slots = _Slots(options.slots, options.max_queue, self.stats)
        self._error_rate = options.error_rate
        self._hang_rate = options.hang_rate
        self._health_status = options.health_status
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.AbstractServer | None = None
        self._port: int | None = None
        self._host = "127.0.0.1"
        self._dead = False
        self._stopping = False
        # Handler tasks in flight, so stop() can cancel them instead of waiting them out.
        self._inflight: set[asyncio.Task[Any]] = set()
        # Fire-and-forget tasks (the simulated crash); referenced so they are not collected.
        self._background: set[asyncio.Task[None]] = set()
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_VllmCollector(self))

    # ---- lifecycle --------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (0 = ephemeral port) and serve until stop() or kill()."""
        if self._runner is not None:
            raise RuntimeError("FakeRegion already started")
        # handler_cancellation: a client hang-up must cancel its handler, freeing its slot at
        # once, as vLLM aborts a request whose client disconnected.
        runner = web.AppRunner(
            self.make_app(),
            handler_cancellation=True,
            shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
            access_log=None,
        )
        await runner.setup()
        server = runner.server
        assert server is not None  # set by setup()
        try:
            # Our own listener rather than a TCPSite, so kill() can stop listening without
            # reaching into aiohttp's private attributes.
            listener = await asyncio.get_running_loop().create_server(
                server, host, port, reuse_address=True
            )
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._listener = listener
        self._host = host
        self._port = int(listener.sockets[0].getsockname()[1])

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeRegion not started")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    @property
    def dead(self) -> bool:
        """True once kill() ran (directly or through ``die_after``)."""
        return self._dead

    async def stop(self) -> None:
        """Stop listening, cancel in-flight requests and release the runner. Idempotent."""
        runner, self._runner = self._runner, None
        self._stopping = True
        self._close_listener()
        for task in list(self._inflight):
            task.cancel()
        for task in list(self._background):
            task.cancel()
        if runner is not None:
            await runner.cleanup()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def kill(self) -> None:
        """Crash: stop listening and abort every open connection at once (TCP reset)."""
        self._kill_now()
        # One loop turn lets the aborted connections' connection_lost() cancel their handlers.
        await asyncio.sleep(0)

    def _kill_now(self) -> None:
        self._dead = True
        self._close_listener()
        server = self._runner.server if self._runner is not None else None
        if server is None:
            return
        for conn in server.connections:
            if conn.transport is not None:
                conn.transport.abort()

    def _close_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    # ---- runtime knobs ----------------------------------------------------------------------

    def set_health(self, status: int) -> None:
        _check_status("status", status)
        self._health_status = status

    def set_error_rate(self, rate: float) -> None:
        _check_rate("error_rate", rate)
        self._error_rate = rate

    def set_hang_rate(self, rate: float) -> None:
        _check_rate("hang_rate", rate)
        self._hang_rate = rate

    @property
    def health_status(self) -> int:
        return self._health_status

    @property
    def error_rate(self) -> float:
        return self._error_rate

    @property
    def hang_rate(self) -> float:
        return self._hang_rate

    # ---- application ------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        """The aiohttp application; start() serves it, tests may mount it themselves.

        Mounted elsewhere, client hang-ups only cancel handlers if that runner was created
        with ``handler_cancellation=True``.
        """
        app = web.Application(middlewares=[self._middleware()], client_max_size=16 * 1024**2)
        app.on_response_prepare.append(self._tag_response)
        add = app.router.add_route
        add("POST", "/v1/chat/completions", self._chat_completions)
        add("POST", "/v1/completions", self._text_completions)
        add("GET", "/v1/models", self._models)
        add("GET", "/health", self._health)
        add("GET", "/metrics", self._metrics)
        add("POST", "/control", self._control)
        add("*", "/echo", self._echo)
        add("POST", "/upload", self._upload)
        add("GET", "/download", self._download)
        add("GET", "/sse", self._sse_events)
        add("GET", r"/status/{code:\d+}", self._status)
        add("GET", "/slow-first-byte", self._slow_first_byte)
        add("GET", "/headers-then-hang", self._headers_then_hang)
        add("GET", "/abort-mid-stream", self._abort_mid_stream)
        return app

    def _middleware(self) -> Any:
        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            self.stats.requests_total += 1
            self.stats.by_path[request.path] = self.stats.by_path.get(request.path, 0) + 1
            task = asyncio.current_task()
            if task is not None:
                self._inflight.add(task)
            try:
                # Simulated distance applies to every endpoint, so health-probe round trips
                # measure it too. It is spent before queueing: a request in flight on the
                # wire does not hold a GPU slot.
                if self.options.network_delay_ms > 0:
                    await asyncio.sleep(self.options.network_delay_ms / 1000)
                return await handler(request)
            except _ApiError as exc:
                return exc.response()
            finally:
                if task is not None:
                    self._inflight.discard(task)

        return middleware

    async def _tag_response(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers["X-Fake-Region"] = self.options.name

    # ---- inference endpoints ----------------------------------------------------------------

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._completion(request, "chat")

    async def _text_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._completion(request, "text")

    async def _completion(self, request: web.Request, kind: CompletionKind) -> web.StreamResponse:
        req = parse_completion(await request.read(), kind, self.options.max_tokens_default)
        self.stats.completions_total += 1
        seq = self.stats.completions_total
        # Draw both numbers for every request so the fault sequence for a seed does not
        # depend on the rates in force (set_error_rate() mid-test keeps later draws stable).
        error_draw, hang_draw = self._rng.random(), self._rng.random()
        try:
            return await self._answer(request, req, seq, error_draw, hang_draw)
        except asyncio.CancelledError:
            if not self._stopping:
                self.stats.cancelled += 1
            raise
        finally:
            if self.options.die_after is not None and seq == self.options.die_after:
                self._schedule_crash()

    async def _answer(
        self, request: web.Request, req: _Completion, seq: int, error_draw: float, hang_draw: float
    ) -> web.StreamResponse:
        die_after = self.options.die_after
        try:
            if die_after is not None and seq > die_after:
                await self._hang()  # past the crash point: never answered, aborted by kill()
            if error_draw < self._error_rate:
                self.stats.errors_injected += 1
                raise _ApiError(500, "injected internal server error", "server_error")
            if hang_draw < self._hang_rate:
                self.stats.hangs_injected += 1
                await self._hang()
            return await self._serve_completion(request, req, seq)
        except _ApiError as exc:
            # Written here, not by the middleware, so it is on the wire before a die_after
            # crash scheduled by the caller's finally block can discard it.
            return await _write_now(request, exc.response())

    async def _serve_completion(
        self, request: web.Request, req: _Completion, seq: int
    ) -> web.StreamResponse:
        try:
            await self._slots.acquire()
        except _QueueFull:
            self.stats.rejected += 1
            raise _ApiError(
                429, f"queue full: {self.options.max_queue} requests waiting", "server_busy"
            ) from None
        try:
            prefill_ms = (
                self.options.base_prefill_ms
                + self.options.prefill_ms_per_1k_chars * req.prompt_chars / 1000
            )
            prompt_tokens = max(1, -(-req.prompt_chars // _CHARS_PER_TOKEN))
            self.stats.prompt_tokens_total += prompt_tokens
            if req.stream:
                resp = await self._stream(request, req, seq, prompt_tokens, prefill_ms / 1000)
            else:
                resp = await self._respond_whole(request, req, seq, prompt_tokens, prefill_ms)
            self.stats.completions_done += 1
            return resp
        finally:
            self._slots.release()

    def _token(self, i: int) -> str:
        # The region name rides in the first token so a test can see who served a request.
        return f"{self.options.name}:tok0 " if i == 0 else f"tok{i} "

    def _envelope(self, kind: CompletionKind, seq: int, chunk: bool) -> JSONObject:
        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        if kind == "chat":
            obj = "chat.completion.chunk" if chunk else "chat.completion"
        else:
            obj = "text_completion"
        return {
            "id": f"{prefix}-{self.options.name}-{seq}",
            "object": obj,
            "created": int(time.time()),
            "model": self.options.model,
            "system_fingerprint": f"fake-region:{self.options.name}",
        }

    async def _respond_whole(
        self,
        request: web.Request,
        req: _Completion,
        seq: int,
        prompt_tokens: int,
        prefill_ms: float,
    ) -> web.StreamResponse:
        await asyncio.sleep(prefill_ms / 1000 + req.max_tokens / self.options.tokens_per_s)
        text = "".join(self._token(i) for i in range(req.max_tokens))
        choice: JSONObject = {"index": 0, "logprobs": None, "finish_reason": "length"}
        if req.kind == "chat":
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        body = self._envelope(req.kind, seq, chunk=False)
        body["choices"] = [choice]
        body["usage"] = _usage(prompt_tokens, req.max_tokens)
        self.stats.generation_tokens_total += req.max_tokens
        # Written here rather than returned, so the response is on the wire before the
        # handler's finally blocks run (die_after crashes right after the N-th answer).
        return await _write_now(request, web.json_response(body))

    def _stream_chunk(self, req: _Completion, seq: int, i: int) -> JSONObject:
        last = i == req.max_tokens - 1
        finish = "length" if last else None
        choice: JSONObject = {"index": 0, "logprobs": None, "finish_reason": finish}
        if req.kind == "chat":
            delta: JSONObject = {"content": self._token(i)}
            if i == 0:
                delta = {"role": "assistant", **delta}
            choice["delta"] = delta
        else:
            choice["text"] = self._token(i)
        chunk = self._envelope(req.kind, seq, chunk=True)
        chunk["choices"] = [choice]
        return chunk

    async def _stream(
        self, request: web.Request, req: _Completion, seq: int, prompt_tokens: int, prefill_s: float
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Cache-Control": "no-cache"})
        resp.content_type = "text/event-stream"
        await resp.prepare(request)
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.options.tokens_per_s
        # Deadlines on the loop clock rather than sleep(interval) per token, so write time
        # does not accumulate into drift over long streams.
        t0 = loop.time() + prefill_s
        for i in range(req.max_tokens):
            await asyncio.sleep(max(0.0, t0 + (i + 1) * interval - loop.time()))
            await resp.write(_sse(self._stream_chunk(req, seq, i)))
            self.stats.generation_tokens_total += 1
        if req.include_usage:
            usage_chunk = self._envelope(req.kind, seq, chunk=True)
            usage_chunk["choices"] = []
            usage_chunk["usage"] = _usage(prompt_tokens, req.max_tokens)
            await resp.write(_sse(usage_chunk))
        await resp.write(_sse("[DONE]"))
        await resp.write_eof()
        return resp

    async def _hang(self) -> None:
        """Never return; only cancellation (client hang-up, stop, kill) ends the wait."""
        await asyncio.get_running_loop().create_future()

    def _schedule_crash(self) -> None:
        if self._dead or self._stopping:
            return
        task = asyncio.get_running_loop().create_task(self._crash_after_flush())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _crash_after_flush(self) -> None:
        # Let the N-th answer leave the socket buffers first: die_after=N means N answers.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _CRASH_FLUSH_S
        while loop.time() < deadline and self._unflushed_bytes() > 0:
            await asyncio.sleep(0.005)
        self._kill_now()

    def _unflushed_bytes(self) -> int:
        server = self._runner.server if self._runner is not None else None
        if server is None:
            return 0
        return sum(c.transport.get_write_buffer_size() for c in server.connections if c.transport)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        model = {
            "id": self.options.model,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "vllm",
            "root": self.options.model,
            "parent": None,
        }
        return web.json_response({"object": "list", "data": [model]})

    async def _health(self, request: web.Request) -> web.StreamResponse:
        status = self._health_status
        word = "ok" if status < 400 else "unhealthy"
        return web.json_response({"status": word}, status=status)

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def _control(self, request: web.Request) -> web.StreamResponse:
        """Fault injection over HTTP, for a fake region running as its own process (demos)."""
        try:
            body = json.loads(await request.read())
        except ValueError:
            raise _bad_request("request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise _bad_request("request body must be a JSON object")
        try:
            if "health_status" in body:
                self.set_health(int(body["health_status"]))
            if "error_rate" in body:
                self.set_error_rate(float(body["error_rate"]))
            if "hang_rate" in body:
                self.set_hang_rate(float(body["hang_rate"]))
        except (TypeError, ValueError) as exc:
            raise _bad_request(str(exc)) from None
        return web.json_response(
            {
                "health_status": self._health_status,
                "error_rate": self._error_rate,
                "hang_rate": self._hang_rate,
                "stats": asdict(self.stats),
            }
        )

    # ---- proxy test endpoints ---------------------------------------------------------------

    async def _echo(self, request: web.Request) -> web.StreamResponse:
        body_length = 0
        async for chunk in request.content.iter_any():
            body_length += len(chunk)
        headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.raw_headers]
        return web.json_response(
            {
                "region": self.options.name,
                "method": request.method,
                "path": request.path,
                "raw_path": request.raw_path,
                "query_string": request.query_string,
                "headers": headers,
                "body_length": body_length,
                "remote": request.remote,
                "http_version": f"{request.version.major}.{request.version.minor}",
            }
        )

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        digest = hashlib.sha256()
        total = 0
        # Chunk by chunk: a 50 MB upload must not be held in memory.
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            total += len(chunk)
        return web.json_response({"bytes": total, "sha256": digest.hexdigest()})

    async def _download(self, request: web.Request) -> web.StreamResponse:
        size = _query_int(request, "bytes", None, 0, 1 << 40)
        chunk = _query_int(request, "chunk", 64 * 1024, 1, _MAX_CHUNK)
        resp = web.StreamResponse()
        resp.content_type = "application/octet-stream"
        resp.content_length = size
        await resp.prepare(request)
        for offset in range(0, size, chunk):
            await resp.write(_download_chunk(offset, min(chunk, size - offset)))
        await resp.write_eof()
        return resp

    async def _sse_events(self, request: web.Request) -> web.StreamResponse:
        events = _query_int(request, "events", 10, 0, 1_000_000)
        interval = _query_int(request, "interval_ms", 100, 0, _MAX_DELAY_MS) / 1000
        resp = web.StreamResponse(headers={"Cache-Control": "no-cache"})
        resp.content_type = "text/event-stream"
        await resp.prepare(request)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        # Event i leaves at t0 + i*interval: the first at once, then one per interval.
        for i in range(events):
            await asyncio.sleep(max(0.0, t0 + i * interval - loop.time()))
            data = json.dumps({"seq": i, "region": self.options.name})
            await resp.write(f"id: {i}\nevent: tick\ndata: {data}\n\n".encode())
        await resp.write_eof()
        return resp

    async def _status(self, request: web.Request) -> web.StreamResponse:
        code = int(request.match_info["code"])
        if not 200 <= code <= 599:
            raise _bad_request("status code must be within 200..599")
        if code in (204, 304):
            return web.Response(status=code)  # these may not carry a body
        body = {"status": code, "region": self.options.name}
        return web.json_response(body, status=code)

    async def _slow_first_byte(self, request: web.Request) -> web.StreamResponse:
        delay_ms = _query_int(request, "delay_ms", 1000, 0, _MAX_DELAY_MS)
        resp = web.StreamResponse()
        resp.content_type = "text/plain"
        await resp.prepare(request)  # StreamResponse sends its headers right away
        await asyncio.sleep(delay_ms / 1000)
        await resp.write(f"first byte after {delay_ms} ms from {self.options.name}\n".encode())
        await resp.write_eof()
        return resp

    async def _headers_then_hang(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "text/plain"
        await resp.prepare(request)
        await resp.write(b"first chunk\n")
        await self._hang()
        return resp  # unreachable: _hang() only ends by cancellation

    async def _abort_mid_stream(self, request: web.Request) -> web.StreamResponse:
        after = _query_int(request, "after", 1, 0, 1_000_000)
        resp = web.StreamResponse()
        resp.content_type = "text/plain"
        await resp.prepare(request)
        for i in range(after):
            await resp.write(f"chunk {i}\n".encode())
        # Give the chunks a moment to reach the client before the reset discards them.
        await asyncio.sleep(0.01)
        if request.transport is not None:
            request.transport.abort()
        await self._hang()  # the abort cancels this handler (handler_cancellation)
        return resp


# --------------------------------------------------------------------------------------------
# Command line: ``gslb fake-region ...``


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options mirroring ``FakeRegionOptions``, plus ``--host`` and ``--port``."""
    d = FakeRegionOptions()
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port (0 = ephemeral)")
    parser.add_argument("--name", default=d.name, help="region name echoed in responses")
    parser.add_argument("--model", default=d.model, help="served model name")
    parser.add_argument("--slots", type=int, default=d.slots, help="concurrent requests")
    parser.add_argument("--max-queue", type=int, default=d.max_queue, help="429 beyond this")
    parser.add_argument("--prefill-ms-per-1k-chars", type=float, default=d.prefill_ms_per_1k_chars)
    parser.add_argument("--base-prefill-ms", type=float, default=d.base_prefill_ms)
    parser.add_argument("--tokens-per-s", type=float, default=d.tokens_per_s)
    parser.add_argument("--max-tokens-default", type=int, default=d.max_tokens_default)
    parser.add_argument("--network-delay-ms", type=float, default=d.network_delay_ms)
    parser.add_argument("--error-rate", type=float, default=d.error_rate)
    parser.add_argument("--hang-rate", type=float, default=d.hang_rate)
    parser.add_argument(
        "--die-after", type=int, default=None, help="crash after N completion requests"
    )
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--health-status", type=int, default=d.health_status)


def options_from_args(args: argparse.Namespace) -> FakeRegionOptions:
    return replace(
        FakeRegionOptions(),
        name=args.name,
        model=args.model,
        slots=args.slots,
        max_queue=args.max_queue,
        prefill_ms_per_1k_chars=args.prefill_ms_per_1k_chars,
        base_prefill_ms=args.base_prefill_ms,
        tokens_per_s=args.tokens_per_s,
        max_tokens_default=args.max_tokens_default,
        network_delay_ms=args.network_delay_ms,
        error_rate=args.error_rate,
        hang_rate=args.hang_rate,
        die_after=args.die_after,
        seed=args.seed,
        health_status=args.health_status,
    )


async def _serve(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM (exit 0) or a simulated crash (exit 1)."""
    region = FakeRegion(options_from_args(args))
    await region.start(args.host, args.port)
    print(f"fake-region {region.options.name} listening on {region.url}", flush=True)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows
            loop.add_signal_handler(sig, done.set)
    try:
        while not done.is_set() and not region.dead:
            # Polled: a crash has no event of its own, and 50 ms is plenty for a test server.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 0.05)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(sig)
        await region.stop()
    if region.dead:
        print(f"fake-region {region.options.name} crashed (die_after)", file=sys.stderr)
        return 1
    return 0


async def run_from_args(args: argparse.Namespace) -> None:
    """Run a fake region from parsed ``add_arguments`` options until signalled."""
    await _serve(args)


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return None
    return uvloop.new_event_loop


def main_from_args(args: argparse.Namespace) -> int:
    """Blocking entry point for the CLI: 0 on SIGINT/SIGTERM, 1 on crash, 2 on bad input."""
    try:
        options_from_args(args).validate()
    except ValueError as exc:
        print(f"fake-region: {exc}", file=sys.stderr)
        return 2
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(_serve(args))
    except OSError as exc:
        print(f"fake-region: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
