"""A simulated OpenAI-compatible inference server that stands in for vLLM behind the balancer.

One ``FakeRegion`` is one region's serving fleet collapsed into a single process. This module
is the server and the ``gslb fake-region`` command line; the parts it serves live beside it:

- ``gslb.sim.fakesched``: the vLLM-like engine (slots and FIFO queue, prefill and token timing,
  OpenAI bodies, ``/metrics`` under vLLM's names), with no sockets;
- ``gslb.sim.fakestress``: endpoints that exercise a proxy (``/echo``, ``/upload``, ``/download``,
  ``/sse``, ``/status/{code}``, stalls, resets, ``/pump``, ``/gzip``, ``/ws``) and the
  scripted ``mode`` ("ok", "503", "hang", "abort-after-first") a test switches at run time.

Timeline of a completion request: ``network_delay_ms`` (every endpoint, before queueing, so it
holds no slot) -> the scripted mode, when not "ok" -> fault draws (500 / hang) -> FIFO wait
for a slot (429 when ``max_queue`` are already waiting) -> streaming responses send their
headers now -> prefill -> one token every ``1/tokens_per_s`` s. A non-streaming answer is sent
whole after prefill plus decode time.

Fault injection is deterministic: every well-formed completion request draws from one
``random.Random(seed)``, so a test sees the same failures on every run. ``kill()`` and
``die_after`` need the listener made by ``start()``; an app mounted elsewhere via
``make_app()`` cannot crash.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
from dataclasses import asdict, dataclass, replace
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler

from gslb.sim.fakesched import (
    METRICS_CONTENT_TYPE,
    ApiError,
    Completion,
    CompletionKind,
    Engine,
    FakeRegionStats,
    bad_request,
)
from gslb.sim.fakestress import MODES, StressEndpoints, check_mode, hang

__all__ = [
    "FakeRegion",
    "FakeRegionOptions",
    "FakeRegionStats",
    "add_arguments",
    "main_from_args",
    "options_from_args",
    "run_from_args",
]

# Seconds stop() lets aiohttp wait for a connection to finish before forcing it closed.
_SHUTDOWN_TIMEOUT_S: Final = 1.0
# How long a simulated crash waits for the last response's bytes to leave the socket buffer.
_CRASH_FLUSH_S: Final = 0.2
# Probes, scrapes and fault control: never scripted, never counted as hits, so a test's
# "503" mode or hit count is about the requests a proxy forwards.
_CONTROL_PATHS: Final = frozenset({"/health", "/metrics", "/control"})


@dataclass(frozen=True)
class FakeRegionOptions:
    """Static configuration of one fake region; see the module docstring.

    ``mode`` is the scripted mode at start (``gslb.sim.fakestress``); ``catch_all`` answers
    paths no endpoint serves with 200 instead of 404, for a region standing in for an
    arbitrary HTTP upstream.
    """

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
    mode: str = "ok"
    catch_all: bool = False

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
        check_mode(self.mode)


def _check_rate(name: str, rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"{name} must be within [0, 1], got {rate}")


def _check_status(name: str, status: int) -> None:
    if not 200 <= status <= 599:
        raise ValueError(f"{name} must be an HTTP status in 200..599, got {status}")


def _error_response(exc: ApiError) -> web.Response:
    return web.json_response(exc.body(), status=exc.status)


async def _write_now(request: web.Request, resp: web.Response) -> web.Response:
    """Send a complete response from inside the handler instead of after it returns."""
    await resp.prepare(request)
    await resp.write_eof()
    return resp


# --------------------------------------------------------------------------------------------
# The server


class FakeRegion:
    """One simulated region; see the module docstring. Not thread-safe: one event loop."""

    def __init__(self, options: FakeRegionOptions) -> None:
        options.validate()
        self.options = options
        self.stats = FakeRegionStats()
        self._engine = Engine(
            name=options.name,
            model=options.model,
            slots=options.slots,
            max_queue=options.max_queue,
            prefill_ms_per_1k_chars=options.prefill_ms_per_1k_chars,
            base_prefill_ms=options.base_prefill_ms,
            tokens_per_s=options.tokens_per_s,
            max_tokens_default=options.max_tokens_default,
            stats=self.stats,
        )
        self._stress = StressEndpoints(options.name, options.mode)
        self._rng = random.Random(options.seed)
        self._error_rate = options.error_rate
        self._hang_rate = options.hang_rate
        self._health_status = options.health_status
        # Set while health probes are answered; cleared, they wait (a server that hangs).
        self._health_gate = asyncio.Event()
        self._health_gate.set()
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
        # Remote IPs whose path here drops packets: their requests (probes too) hang until
        # cancelled, and count nowhere but ``blackholed_requests``. Settable at run time.
        self.blackholed: set[str] = set()
        self.blackholed_requests = 0

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

    def hold_health(self) -> None:
        """Health probes wait from now on, until ``release_health`` (a hung server)."""
        self._health_gate.clear()

    def release_health(self) -> None:
        self._health_gate.set()

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

    @property
    def mode(self) -> str:
        """The scripted mode for data-plane requests; assign to switch it (ValueError if bad)."""
        return self._stress.mode

    @mode.setter
    def mode(self, mode: str) -> None:
        self._stress.mode = mode

    @property
    def hits(self) -> int:
        """Data-plane requests received (not health probes, metric scrapes or /control)."""
        return self._stress.hits

    @property
    def last_headers(self) -> list[tuple[str, str]]:
        """The headers of the latest data-plane request, WebSocket handshakes included."""
        return self._stress.last_headers

    @property
    def sent(self) -> int:
        """Body bytes ``/pump`` has written, over all its requests."""
        return self._stress.pump_bytes

    @property
    def downloaded(self) -> int:
        """Body bytes ``/download`` has written, over all its requests."""
        return self._stress.download_bytes

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
        self._stress.add_routes(app, catch_all=self.options.catch_all)
        return app

    def _middleware(self) -> Any:
        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            if request.remote in self.blackholed:
                return await self._black_hole()
            self.stats.requests_total += 1
            self.stats.by_path[request.path] = self.stats.by_path.get(request.path, 0) + 1
            data_plane = request.path not in _CONTROL_PATHS
            if data_plane:
                self._stress.record(request)
            task = asyncio.current_task()
            if task is not None:
                self._inflight.add(task)
            try:
                # Simulated distance applies to every endpoint, so health-probe round trips
                # measure it too. It is spent before queueing: a request in flight on the
                # wire does not hold a GPU slot.
                if self.options.network_delay_ms > 0:
                    await asyncio.sleep(self.options.network_delay_ms / 1000)
                scripted = await self._stress.answer_in_mode(request) if data_plane else None
                return scripted if scripted is not None else await handler(request)
            except ApiError as exc:
                return _error_response(exc)
            finally:
                if task is not None:
                    self._inflight.discard(task)

        return middleware

    async def _black_hole(self) -> web.StreamResponse:
        """A request on a path that drops packets: never answered; registered in flight so
        stop() and kill() end the wait."""
        self.blackholed_requests += 1
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            await hang()
        finally:
            if task is not None:
                self._inflight.discard(task)
        raise AssertionError("unreachable: hang() never returns")

    async def _tag_response(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers["X-Fake-Region"] = self.options.name

    # ---- inference endpoints ----------------------------------------------------------------

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._completion(request, "chat")

    async def _text_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._completion(request, "text")

    async def _completion(self, request: web.Request, kind: CompletionKind) -> web.StreamResponse:
        req = self._engine.parse(await request.read(), kind)
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
        self, request: web.Request, req: Completion, seq: int, error_draw: float, hang_draw: float
    ) -> web.StreamResponse:
        die_after = self.options.die_after
        try:
            if die_after is not None and seq > die_after:
                await hang()  # past the crash point: never answered, aborted by kill()
            if error_draw < self._error_rate:
                self.stats.errors_injected += 1
                raise ApiError(500, "injected internal server error", "server_error")
            if hang_draw < self._hang_rate:
                self.stats.hangs_injected += 1
                await hang()
            return await self._serve_completion(request, req, seq)
        except ApiError as exc:
            # Written here, not by the middleware, so it is on the wire before a die_after
            # crash scheduled by the caller's finally block can discard it.
            return await _write_now(request, _error_response(exc))

    async def _serve_completion(
        self, request: web.Request, req: Completion, seq: int
    ) -> web.StreamResponse:
        async with self._engine.slot():
            self.stats.prompt_tokens_total += req.prompt_tokens
            if req.stream:
                resp = await self._stream(request, req, seq)
            else:
                resp = await self._respond_whole(request, req, seq)
            self.stats.completions_done += 1
            return resp

    async def _respond_whole(
        self, request: web.Request, req: Completion, seq: int
    ) -> web.StreamResponse:
        await asyncio.sleep(self._engine.whole_s(req))
        body = self._engine.whole_body(req, seq)
        self.stats.generation_tokens_total += req.max_tokens
        # Written here rather than returned, so the response is on the wire before the
        # handler's finally blocks run (die_after crashes right after the N-th answer).
        return await _write_now(request, web.json_response(body))

    async def _stream(self, request: web.Request, req: Completion, seq: int) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Cache-Control": "no-cache"})
        resp.content_type = "text/event-stream"
        await resp.prepare(request)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for frame in self._engine.stream_frames(req, seq):
            await asyncio.sleep(max(0.0, t0 + frame.due_s - loop.time()))
            await resp.write(frame.data)
            self.stats.generation_tokens_total += frame.tokens
        await resp.write_eof()
        return resp

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
        return web.json_response(self._engine.models_body())

    async def _health(self, request: web.Request) -> web.StreamResponse:
        await self._health_gate.wait()
        status = self._health_status
        word = "ok" if status < 400 else "unhealthy"
        return web.json_response({"status": word}, status=status)

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        body = self._engine.metrics_text()
        return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def _control(self, request: web.Request) -> web.StreamResponse:
        """Fault injection over HTTP, for a fake region running as its own process (demos)."""
        try:
            body = json.loads(await request.read())
        except ValueError:
            raise bad_request("request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise bad_request("request body must be a JSON object")
        try:
            if "health_status" in body:
                self.set_health(int(body["health_status"]))
            if "error_rate" in body:
                self.set_error_rate(float(body["error_rate"]))
            if "hang_rate" in body:
                self.set_hang_rate(float(body["hang_rate"]))
            if "mode" in body:
                self.mode = str(body["mode"])
        except (TypeError, ValueError) as exc:
            raise bad_request(str(exc)) from None
        return web.json_response(
            {
                "health_status": self._health_status,
                "error_rate": self._error_rate,
                "hang_rate": self._hang_rate,
                "mode": self.mode,
                "stats": asdict(self.stats),
            }
        )


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
    parser.add_argument(
        "--mode",
        choices=MODES,
        default=d.mode,
        help="scripted answer to every request but /health, /metrics and /control",
    )
    parser.add_argument(
        "--catch-all", action="store_true", help="answer unknown paths with 200, not 404"
    )


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
        mode=args.mode,
        catch_all=args.catch_all,
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
