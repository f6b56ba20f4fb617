"""Process management for ``gslb serve``.

``--workers 1``: one process runs the worker (public listener) and the admin listener.

``--workers N``: a supervisor process runs the admin listener and starts N worker processes
(``gslb _worker``), each with its own ``SO_REUSEPORT`` listening socket and a control socket
in a private directory. The supervisor fans admin calls out to the workers, relays SIGHUP as
a reload (the same validated text to every worker), restarts a worker that dies, and on
SIGTERM/SIGINT asks every worker to drain and waits for them.

Signals: SIGTERM/SIGINT stop gracefully (in-flight requests and streams finish within
``server.shutdown_grace_s``); SIGHUP reloads the config; SIGUSR1 reopens the access log file.
"""

from __future__ import annotations

import asyncio
import contextlib
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

from gslb.admin import Admin, load_token
from gslb.config import Config, ConfigError, HostPort, load_config
from gslb.control import LocalControl, RemoteControl, control_app
from gslb.server import Worker, bind_reuseport, install_uvloop, raise_fd_limit

log = logging.getLogger("gslb.supervisor")

RESPAWN_DELAY_S = 1.0
WORKER_START_TIMEOUT_S = 60.0


async def start_admin(admin: Admin, where: HostPort) -> web.AppRunner:
    runner = web.AppRunner(admin.app(), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, where.host, where.port, reuse_address=True).start()
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


async def run_single(cfg: Config, path: str, sock: socket.socket) -> None:
    raise_fd_limit(cfg)
    worker = Worker(cfg, sock=sock)
    await worker.start()
    settle_heap()
    control = LocalControl(worker, path)
    admin = Admin(control, load_token(cfg.admin))
    admin_runner = await start_admin(admin, cfg.server.admin_listen)
    stop = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()

    def reload() -> None:
        async def go() -> None:
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
    await admin_runner.cleanup()
    await worker.stop()


# --------------------------------------------------------------------------- worker process


async def run_worker_process(path: str, control_sock: str) -> None:
    """The body of ``gslb _worker``: one data-plane process under a supervisor."""
    cfg = load_config(path)
    raise_fd_limit(cfg)
    listen = cfg.server.listen
    worker = Worker(cfg, sock=bind_reuseport(listen.host, listen.port))
    await worker.start()
    settle_heap()
    runner = web.AppRunner(control_app(LocalControl(worker, path)), access_log=None)
    await runner.setup()
    await web.UnixSite(runner, control_sock).start()
    os.chmod(control_sock, 0o600)
    stop = asyncio.Event()
    _signals(stop, None, worker.access_log.reopen)
    await stop.wait()
    await runner.cleanup()
    await worker.stop()


# --------------------------------------------------------------------------- supervisor


class Supervisor:
    def __init__(self, cfg: Config, path: str, workers: int) -> None:
        self.cfg = cfg
        self.path = str(Path(path).resolve())
        self.n = workers
        self.rundir = tempfile.mkdtemp(prefix="gslb-")  # mode 0700: only we reach the sockets
        self.sockets = [os.path.join(self.rundir, f"worker-{i}.sock") for i in range(workers)]
        self.procs: list[asyncio.subprocess.Process | None] = [None] * workers
        self.stopping = False

    async def spawn(self, i: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sockets[i])
        self.procs[i] = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gslb", "--log-level", self.cfg.log.level, "_worker",
            "--config", self.path, "--control", self.sockets[i],
        )  # fmt: skip

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
            self.stopping = True
            self.signal_all(signal.SIGTERM)
            await asyncio.gather(*(p.wait() for p in self.procs if p is not None))
            for w in watchers:
                w.cancel()
            shutil.rmtree(self.rundir, ignore_errors=True)

    async def reload(self, control: RemoteControl, admin: Admin) -> None:
        try:
            text = Path(self.path).read_text(encoding="utf-8")
            cfg = load_config(self.path)
        except (OSError, ConfigError) as exc:
            log.error("reload refused: %s", exc)
            return
        result = await control.reload(text)
        if result["ok"]:
            self.cfg = cfg
            admin.token = load_token(cfg.admin)
        else:
            log.error("reload failed: %s", result.get("error"))

    def signal_all(self, sig: int) -> None:
        for p in self.procs:
            if p is not None and p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(sig)


# --------------------------------------------------------------------------- entry points


def serve(cfg: Config, path: str, workers: int | None = None) -> int:
    """Run until SIGTERM/SIGINT. Returns an exit status."""
    install_uvloop()
    n = workers or cfg.server.workers
    listen = cfg.server.listen
    try:
        if n == 1:
            sock = bind_reuseport(listen.host, listen.port)
            asyncio.run(run_single(cfg, path, sock))
        else:
            # Fail fast on a busy port before starting workers.
            bind_reuseport(listen.host, listen.port).close()
            asyncio.run(Supervisor(cfg, path, n).run())
    except OSError as exc:
        print(f"gslb: cannot listen: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"gslb: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # workers that never became ready
        print(f"gslb: {exc}", file=sys.stderr)
        return 1
    return 0
