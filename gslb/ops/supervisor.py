"""Process management for ``gslb serve``.

``--workers 1``: one process runs the worker (public listener) and the admin listener.

``--workers N``: a supervisor process runs the admin listener and starts N worker processes
(``gslb _worker``), each with its own ``SO_REUSEPORT`` listening socket and a control socket
in a private directory. The supervisor fans admin calls out to the workers, relays SIGHUP as
a reload (the same validated text to every worker), restarts a worker that dies, and on
SIGTERM/SIGINT asks every worker to drain and waits for them.

A worker reads its config text on stdin, never from the file: a restarted worker runs the
config the supervisor last accepted (at start or by a reload), not whatever the file holds
now, and its listen addresses stay those the supervisor claimed at start.

Before any listener starts, both addresses are probed (``ensure_unclaimed``): a second gslb
on an address that one already serves refuses to start instead of sharing its port.

Signals: SIGTERM/SIGINT stop gracefully (in-flight requests and streams finish within
``server.shutdown_grace_s``); SIGHUP reloads the config; SIGUSR1 reopens the access log file.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

from aiohttp import web

from gslb.core.config import Config, ConfigError, HostPort, parse_toml
from gslb.edge.server import (
    Worker,
    bind_reuseport,
    ensure_unclaimed,
    install_uvloop,
    raise_fd_limit,
)
from gslb.ops.admin import Admin, load_token
from gslb.ops.control import LocalControl, RemoteControl, control_app
from gslb.ops.fleetagent import FleetAgent
from gslb.ops.fleetmetrics import fleet_exposition
from gslb.ops.fleetpeers import WorkerVantage
from gslb.ops.healthhub import HealthHub
from gslb.ops.preflight import ListenOverrides, preflight, read_config

log = logging.getLogger("gslb.ops.supervisor")

RESPAWN_DELAY_S = 1.0
WORKER_START_TIMEOUT_S = 60.0


class ListenError(Exception):
    """A listen address that cannot be taken: printed as one line, exit status 1."""


def claim(where: HostPort, what: str) -> None:
    """Refuse to start on an address that something (another gslb?) already listens on."""
    try:
        ensure_unclaimed(where.host, where.port)
    except OSError as exc:
        raise ListenError(_listen_message(where, what, exc)) from None


def _listen_message(where: HostPort, what: str, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {where} ({what}): address already in use (is gslb running?)"
    return f"cannot listen on {where} ({what}): {exc.strerror or exc}"


class PinnedWorker(Worker):
    """A worker whose listen addresses survive reloads (see ``ListenOverrides``)."""

    def __init__(
        self,
        cfg: Config,
        pins: ListenOverrides,
        sock: socket.socket,
        *,
        shared_health: bool = False,
    ) -> None:
        super().__init__(pins.apply(cfg), sock=sock, shared_health=shared_health)
        self.pins = pins

    async def reload(self, cfg: Config) -> None:
        await super().reload(self.pins.apply(cfg))


async def start_admin(admin: Admin, where: HostPort) -> web.AppRunner:
    runner = web.AppRunner(admin.app(), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, where.host, where.port, reuse_address=True).start()
    except OSError as exc:
        await runner.cleanup()
        raise ListenError(_listen_message(where, "admin listener", exc)) from None
    return runner


def _signals(stop: asyncio.Event, on_hup: object = None, on_usr1: object = None) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if callable(on_hup):
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    else:
        loop.add_signal_handler(signal.SIGHUP, lambda: None)  # the supervisor reloads us
    if callable(on_usr1):
        loop.add_signal_handler(signal.SIGUSR1, on_usr1)


# --------------------------------------------------------------------------- one process


def settle_heap() -> None:
    """After start-up: move long-lived objects out of the cyclic GC's way (fewer, shorter
    collections on the request path)."""
    gc.collect()
    gc.freeze()


async def run_single(
    cfg: Config,
    path: str,
    sock: socket.socket,
    overrides: ListenOverrides,
    agent: FleetAgent | None = None,
) -> None:
    raise_fd_limit(cfg)
    worker = PinnedWorker(cfg, overrides, sock)
    await worker.start()
    settle_heap()
    control = LocalControl(worker, path)
    admin = Admin(control, load_token(cfg.admin))
    try:
        admin_runner = await start_admin(admin, cfg.server.admin_listen)
    except ListenError:
        await worker.stop()
        raise
    stop = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()

    async def apply(text: str) -> str | None:
        result = await control.reload(text)
        if not result["ok"]:
            return str(result.get("error") or "refused")
        admin.token = load_token(worker.cfg.admin)
        return None

    if agent is not None:
        agent.start(apply, control.drain, WorkerVantage(worker))
        admin.fleet_status = agent.status
        admin.fleet_metrics = lambda: fleet_exposition(agent.status())

    def reload() -> None:
        async def go() -> None:
            if agent is not None:  # fleet mode: the edge's file, with the running document
                await agent.reapply()
                return
            result = await control.reload()
            if result["ok"]:
                admin.token = load_token(worker.cfg.admin)

        task = asyncio.create_task(go())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    _signals(stop, reload, worker.access_log.reopen)
    log.warning(
        "gslb serving on %s (admin %s), 1 worker", cfg.server.listen, cfg.server.admin_listen
    )
    await stop.wait()
    log.warning("stopping: draining in-flight requests (grace %.0fs)", cfg.server.shutdown_grace_s)
    if agent is not None:
        await agent.close()
    await admin_runner.cleanup()
    await worker.stop()


# --------------------------------------------------------------------------- worker process


async def run_worker_process(
    text: str, path: str, control_sock: str, pins: ListenOverrides
) -> None:
    """The body of ``gslb _worker``: one data-plane process under a supervisor.

    ``text`` is the config the supervisor accepted (read from stdin), parsed with the
    file's ``path`` as its source; the file itself is not read.
    """
    cfg = pins.apply(parse_toml(text, path))
    raise_fd_limit(cfg)
    listen = cfg.server.listen
    sock = bind_reuseport(listen.host, listen.port)
    worker = PinnedWorker(cfg, pins, sock, shared_health=True)
    # The control socket comes first: the worker is ready (and listens) only once the
    # supervisor's first health share has come in over it.
    runner = web.AppRunner(control_app(LocalControl(worker, path)), access_log=None)
    await runner.setup()
    await web.UnixSite(runner, control_sock).start()
    os.chmod(control_sock, 0o600)
    await worker.start()
    settle_heap()
    stop = asyncio.Event()
    _signals(stop, None, worker.access_log.reopen)
    await stop.wait()
    await runner.cleanup()
    await worker.stop()


# --------------------------------------------------------------------------- supervisor


class Supervisor:
    def __init__(
        self,
        cfg: Config,
        text: str,
        path: str,
        workers: int,
        overrides: ListenOverrides,
        agent: FleetAgent | None = None,
    ) -> None:
        self.agent = agent
        self.cfg = cfg
        self.text = text  # the config last accepted: what a (re)started worker runs
        self.path = str(Path(path).resolve())
        self.n = workers
        self.overrides = overrides  # --listen / --admin-listen, for configs read on reload
        # Workers keep the addresses claimed at start: a reload cannot move a listener, and
        # a restarted worker must bind where its siblings listen.
        self.pins = ListenOverrides(cfg.server.listen, cfg.server.admin_listen)
        self.rundir = tempfile.mkdtemp(prefix="gslb-")  # mode 0700: only we reach the sockets
        self.sockets = [os.path.join(self.rundir, f"worker-{i}.sock") for i in range(workers)]
        self.procs: list[asyncio.subprocess.Process | None] = [None] * workers
        self.stopping = False
        self.hub = HealthHub(cfg, self.sockets)

    async def spawn(self, i: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sockets[i])
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gslb", "--log-level", self.cfg.log.level, "_worker",
            "--config", self.path, "--control", self.sockets[i], *self.pins.args(),
            stdin=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self.procs[i] = proc
        assert proc.stdin is not None
        proc.stdin.write(self.text.encode("utf-8"))
        with contextlib.suppress(ConnectionError):  # it died at once: watch() restarts it
            await proc.stdin.drain()
        proc.stdin.close()

    async def wait_ready(self, control: RemoteControl) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WORKER_START_TIMEOUT_S
        while loop.time() < deadline:
            if all(os.path.exists(s) for s in self.sockets):
                with contextlib.suppress(Exception):
                    if await control.ready():
                        return
            await asyncio.sleep(0.1)
        raise RuntimeError("workers did not become ready in time")

    async def watch(self, i: int) -> None:
        """Restart worker ``i`` whenever it dies unexpectedly."""
        while not self.stopping:
            proc = self.procs[i]
            assert proc is not None
            code = await proc.wait()
            if self.stopping:
                return
            log.error("worker %d (pid %d) exited with %s; restarting", i, proc.pid, code)
            await asyncio.sleep(RESPAWN_DELAY_S)
            if not self.stopping:
                await self.spawn(i)

    async def run(self) -> None:
        control = RemoteControl(self.sockets)
        # Probes and load scrapes run here, once for the instance; workers are ready at
        # their first share of the results.
        await self.hub.start()
        for i in range(self.n):
            await self.spawn(i)
        watchers = [asyncio.create_task(self.watch(i)) for i in range(self.n)]
        try:
            await self.wait_ready(control)
            admin = Admin(control, load_token(self.cfg.admin))
            admin_runner = await start_admin(admin, self.cfg.server.admin_listen)
            stop = asyncio.Event()
            tasks: set[asyncio.Task[None]] = set()

            def reload() -> None:
                task = asyncio.create_task(self.reload(control, admin))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

            def reopen() -> None:
                self.signal_all(signal.SIGUSR1)

            if self.agent is not None:
                agent = self.agent

                async def apply(text: str) -> str | None:
                    return await self.apply_text(control, admin, text)

                agent.start(apply, control.drain, self.hub)
                admin.fleet_status = agent.status
                admin.fleet_metrics = lambda: fleet_exposition(agent.status())

            _signals(stop, reload, reopen)
            log.warning(
                "gslb serving on %s (admin %s), %d workers",
                self.cfg.server.listen,
                self.cfg.server.admin_listen,
                self.n,
            )
            await stop.wait()
            await admin_runner.cleanup()
        finally:
            if self.agent is not None:
                await self.agent.close()
            await self.hub.stop()
            self.stopping = True
            self.signal_all(signal.SIGTERM)
            await asyncio.gather(*(p.wait() for p in self.procs if p is not None))
            for w in watchers:
                w.cancel()
            shutil.rmtree(self.rundir, ignore_errors=True)

    async def reload(self, control: RemoteControl, admin: Admin) -> None:
        if self.agent is not None:  # fleet mode: the edge's file, with the running document
            await self.agent.reapply()
            return
        try:
            text, _ = read_config(self.path)  # one read: the text checked is the text sent
        except ConfigError as exc:
            log.error("reload refused: %s", exc)
            return
        await self.apply_text(control, admin, text)

    async def apply_text(self, control: RemoteControl, admin: Admin, text: str) -> str | None:
        """Check ``text`` as ``serve`` does at start and send it to every worker; None when
        it runs now, else why not."""
        try:
            cfg = self.overrides.apply(parse_toml(text, self.path))
            # A worker restarted later starts from this config: refuse what it could not.
            await asyncio.to_thread(preflight, cfg)
        except ConfigError as exc:
            log.error("reload refused: %s", exc)
            return str(exc)
        if (cfg.server.listen, cfg.server.admin_listen) != (
            self.pins.listen,
            self.pins.admin_listen,
        ):
            log.warning(
                "reload: server.listen and server.admin_listen changes take effect on restart"
            )
        result = await control.reload(text)
        if result["ok"]:
            await self.hub.reload(self.pins.apply(cfg))
            self.cfg = cfg
            self.text = text
            admin.token = load_token(cfg.admin)
            return None
        log.error("reload failed: %s", result.get("error"))
        return str(result.get("error") or "refused by a worker")

    def signal_all(self, sig: int) -> None:
        for p in self.procs:
            if p is not None and p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(sig)


# --------------------------------------------------------------------------- entry points


def serve(
    cfg: Config,
    text: str,
    path: str,
    workers: int | None = None,
    overrides: ListenOverrides | None = None,
    agent: FleetAgent | None = None,
) -> int:
    """Run until SIGTERM/SIGINT. Returns an exit status.

    ``cfg`` is ``text`` (the file at ``path``) parsed, with ``overrides`` applied, and has
    passed ``preflight``.
    """
    install_uvloop()
    overrides = overrides or ListenOverrides()
    n = workers or cfg.server.workers
    listen = cfg.server.listen
    try:
        claim(listen, "public listener")
        claim(cfg.server.admin_listen, "admin listener")
        if n == 1:
            try:
                sock = bind_reuseport(listen.host, listen.port)
            except OSError as exc:
                raise ListenError(_listen_message(listen, "public listener", exc)) from None
            asyncio.run(run_single(cfg, path, sock, overrides, agent))
        else:
            asyncio.run(Supervisor(cfg, text, path, n, overrides, agent).run())
    except ListenError as exc:
        print(f"gslb: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"gslb: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"gslb: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # workers that never became ready
        print(f"gslb: {exc}", file=sys.stderr)
        return 1
    return 0
