"""The fake region's vLLM-like engine, without sockets: scheduling, timing, bodies, metrics.

``Engine`` is what ``gslb.sim.fakeregion.FakeRegion`` serves: ``slots`` requests run at once and
the rest wait in a FIFO queue (as vLLM's scheduler does, and never overtaken by a newcomer),
prefill time grows with the prompt, and tokens come out at ``tokens_per_s`` per stream. It
parses OpenAI request bodies, builds OpenAI response bodies and SSE frames with their due
times, and renders ``/metrics`` under vLLM's names. Everything but the slot queue (which
awaits) is plain computation, so the server only moves bytes and sleeps until a frame is due.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = [
    "METRICS_CONTENT_TYPE",
    "ApiError",
    "Completion",
    "CompletionKind",
    "Engine",
    "FakeRegionStats",
    "Frame",
    "bad_request",
    "parse_completion",
]

JSONObject = dict[str, Any]
CompletionKind = Literal["chat", "text"]

# The exposition format prometheus_client (and so vLLM) serves to a plain scrape.
METRICS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
MAX_TOKENS_CAP: Final = 1_000_000
# A rough chars-per-token ratio for English text, used only to fill in ``usage``.
CHARS_PER_TOKEN: Final = 4


@dataclass
class FakeRegionStats:
    """Counters a test can read directly (single event loop, so no locking).

    The engine keeps the scheduler's (active, queued, their peaks, rejected, tokens); the
    server the rest. ``completions_total`` counts well-formed completion requests as they
    arrive, including those later answered by injected faults, 429 or a client hang-up;
    ``completions_done`` counts the ones answered in full.
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


# --------------------------------------------------------------------------------------------
# Errors in OpenAI's shape


class ApiError(Exception):
    """An OpenAI-style error answer; raised anywhere while handling a request, rendered once."""

    def __init__(self, status: int, message: str, error_type: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type

    def body(self) -> JSONObject:
        return {"error": {"message": self.message, "type": self.error_type, "code": None}}


def bad_request(message: str) -> ApiError:
    return ApiError(400, message, "invalid_request_error")


class QueueFull(Exception):
    """No free slot and ``max_queue`` requests already waiting."""


# --------------------------------------------------------------------------------------------
# Slots: vLLM's running batch, with a FIFO waiting queue in front of it


class Slots:
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
            raise QueueFull
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


# --------------------------------------------------------------------------------------------
# Request parsing


@dataclass(frozen=True)
class Completion:
    """One well-formed completion request, reduced to what the simulation needs."""

    kind: CompletionKind
    prompt_chars: int
    max_tokens: int
    stream: bool
    include_usage: bool

    @property
    def prompt_tokens(self) -> int:
        return max(1, -(-self.prompt_chars // CHARS_PER_TOKEN))


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
                raise bad_request(f"{where}: content parts must be objects")
            text = part.get("text", "")
            total += len(text) if isinstance(text, str) else 0
        return total
    raise bad_request(f"{where}: content must be a string, a list of parts or null")


def _messages_chars(messages: Any) -> int:
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list")
    total = 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise bad_request(f"messages[{i}] must be an object with a string 'role'")
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
                total += CHARS_PER_TOKEN  # a token id: count it as one token's worth
            else:
                raise bad_request("'prompt' list items must be strings or token ids")
        return total
    raise bad_request("'prompt' must be a string or a non-empty list")


def _max_tokens(body: JSONObject, default: int) -> int:
    # The Chat API renamed max_tokens to max_completion_tokens; vLLM accepts both.
    value = body.get("max_tokens")
    if value is None:
        value = body.get("max_completion_tokens")
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise bad_request("'max_tokens' must be a positive integer")
    if value > MAX_TOKENS_CAP:
        raise bad_request(f"'max_tokens' must be <= {MAX_TOKENS_CAP}")
    return value


def _include_usage(body: JSONObject) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise bad_request("'stream_options' must be an object")
    return bool(options.get("include_usage", False))


def parse_completion(raw: bytes, kind: CompletionKind, default_max_tokens: int) -> Completion:
    """Validate an OpenAI request body; raises ``ApiError`` (400) on anything malformed."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object")
    if "model" in body and not isinstance(body["model"], str):
        raise bad_request("'model' must be a string")
    chars = (
        _messages_chars(body.get("messages"))
        if kind == "chat"
        else _prompt_chars(body.get("prompt"))
    )
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean")
    return Completion(
        kind=kind,
        prompt_chars=chars,
        max_tokens=_max_tokens(body, default_max_tokens),
        stream=bool(stream),
        include_usage=_include_usage(body),
    )


# --------------------------------------------------------------------------------------------
# Response bodies in OpenAI's format


def sse(payload: JSONObject | str) -> bytes:
    """One server-sent event carrying ``payload`` (JSON, or a bare string such as [DONE])."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def _usage(prompt_tokens: int, completion_tokens: int) -> JSONObject:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


@dataclass(frozen=True)
class Frame:
    """One piece of a streamed answer: send ``data`` ``due_s`` after the response headers.

    ``tokens`` is how many generated tokens the frame carries, counted once it is sent.
    """

    due_s: float
    data: bytes
    tokens: int


# --------------------------------------------------------------------------------------------
# The engine


class Engine:
    """One region's simulated vLLM engine: slots, timing, bodies and metrics."""

    def __init__(
        self,
        *,
        name: str,
        model: str,
        slots: int,
        max_queue: int,
        prefill_ms_per_1k_chars: float,
        base_prefill_ms: float,
        tokens_per_s: float,
        max_tokens_default: int,
        stats: FakeRegionStats,
    ) -> None:
        self.name = name
        self.model = model
        self.slots = slots
        self.max_queue = max_queue
        self._prefill_ms_per_1k_chars = prefill_ms_per_1k_chars
        self._base_prefill_ms = base_prefill_ms
        self._tokens_per_s = tokens_per_s
        self._max_tokens_default = max_tokens_default
        self.stats = stats
        self._slots = Slots(slots, max_queue, stats)
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_VllmCollector(self))

    def parse(self, raw: bytes, kind: CompletionKind) -> Completion:
        return parse_completion(raw, kind, self._max_tokens_default)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot, waiting in FIFO order; ``ApiError`` 429 when the queue is full."""
        try:
            await self._slots.acquire()
        except QueueFull:
            self.stats.rejected += 1
            raise ApiError(
                429, f"queue full: {self.max_queue} requests waiting", "server_busy"
            ) from None
        try:
            yield
        finally:
            self._slots.release()

    def prefill_s(self, req: Completion) -> float:
        """Prompt processing time: a fixed cost plus a cost per thousand prompt characters."""
        ms = self._base_prefill_ms + self._prefill_ms_per_1k_chars * req.prompt_chars / 1000
        return ms / 1000

    def whole_s(self, req: Completion) -> float:
        """Time to a non-streaming answer: prefill plus every token's decode time."""
        return self.prefill_s(req) + req.max_tokens / self._tokens_per_s

    def token(self, i: int) -> str:
        # The region name rides in the first token so a test can see who served a request.
        return f"{self.name}:tok0 " if i == 0 else f"tok{i} "

    def _envelope(self, kind: CompletionKind, seq: int, chunk: bool) -> JSONObject:
        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        if kind == "chat":
            obj = "chat.completion.chunk" if chunk else "chat.completion"
        else:
            obj = "text_completion"
        return {
            "id": f"{prefix}-{self.name}-{seq}",
            "object": obj,
            "created": int(time.time()),
            "model": self.model,
            "system_fingerprint": f"fake-region:{self.name}",
        }

    def whole_body(self, req: Completion, seq: int) -> JSONObject:
        """The non-streaming answer to request number ``seq``."""
        text = "".join(self.token(i) for i in range(req.max_tokens))
        choice: JSONObject = {"index": 0, "logprobs": None, "finish_reason": "length"}
        if req.kind == "chat":
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        body = self._envelope(req.kind, seq, chunk=False)
        body["choices"] = [choice]
        body["usage"] = _usage(req.prompt_tokens, req.max_tokens)
        return body

    def _stream_chunk(self, req: Completion, seq: int, i: int) -> JSONObject:
        last = i == req.max_tokens - 1
        finish = "length" if last else None
        choice: JSONObject = {"index": 0, "logprobs": None, "finish_reason": finish}
        if req.kind == "chat":
            delta: JSONObject = {"content": self.token(i)}
            if i == 0:
                delta = {"role": "assistant", **delta}
            choice["delta"] = delta
        else:
            choice["text"] = self.token(i)
        chunk = self._envelope(req.kind, seq, chunk=True)
        chunk["choices"] = [choice]
        return chunk

    def stream_frames(self, req: Completion, seq: int) -> Iterator[Frame]:
        """The streamed answer: one frame per token, then usage (if asked for) and [DONE].

        Due times are offsets from one start rather than a sleep per token, so the time spent
        writing does not accumulate into drift over long streams.
        """
        prefill = self.prefill_s(req)
        interval = 1.0 / self._tokens_per_s
        due = prefill
        for i in range(req.max_tokens):
            due = prefill + (i + 1) * interval
            yield Frame(due, sse(self._stream_chunk(req, seq, i)), 1)
        if req.include_usage:
            usage_chunk = self._envelope(req.kind, seq, chunk=True)
            usage_chunk["choices"] = []
            usage_chunk["usage"] = _usage(req.prompt_tokens, req.max_tokens)
            yield Frame(due, sse(usage_chunk), 0)
        yield Frame(due, sse("[DONE]"), 0)

    def models_body(self) -> JSONObject:
        model = {
            "id": self.model,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "vllm",
            "root": self.model,
            "parent": None,
        }
        return {"object": "list", "data": [model]}

    def metrics_text(self) -> bytes:
        """``/metrics`` in Prometheus text format, under vLLM's names."""
        return generate_latest(self._registry)


class _VllmCollector(Collector):
    """Renders the engine's state under vLLM's (v1 engine) metric names, help texts and labels."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def collect(self) -> Iterable[Metric]:
        engine = self._engine
        stats = engine.stats
        labels = ["engine", "model_name"]
        values = ["0", engine.model]

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
            stats.active / engine.slots,
        )
        yield counter(
            "vllm:prompt_tokens", "Number of prefill tokens processed.", stats.prompt_tokens_total
        )
        yield counter(
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            stats.generation_tokens_total,
        )
