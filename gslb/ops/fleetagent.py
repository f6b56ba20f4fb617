"""An edge's side of fleet mode: the fleet document from NATS, applied like a hot reload.

The edge's own file holds ``[server]``, ``[admin]``, ``[geoip]``, ``[log]`` and ``[fleet]``; the
fleet document (``gslb fleet push``) holds the rest (``gslb.core.fleetdoc``). The whole config an
edge runs is the two texts one after the other (their sections never overlap, so that is one
valid TOML document), checked with every rule of a whole file.

* **Boot**: from the last document this edge applied (``fleet.state_dir``), else from NATS; an
  edge with neither is not ready until the first document arrives (``wait_for_document``).
  Static stability: an edge restarted while NATS is down serves what it last ran.
* **Watch**: every new revision is composed with the edge's own file, checked as ``serve``
  checks at start, and applied through the same path as a hot reload (in-flight requests
  finish on their generation). A document that fails is reported under the edge's key and
  the edge keeps running on the last good one.
* **Persist**: the applied document is written to ``state_dir`` atomically (temp file, fsync,
  rename) before it is reported as applied.
* **Report**: ``edge.<name>`` holds the applied revision, its digest and the last error.

NATS is never on the request path: every step here runs beside serving, and serving never
waits on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from gslb.core.config import ConfigError, FleetConfig
from gslb.core.fleetdoc import LocalConfig, compose, document_digest
from gslb.core.h1framing import ServerLimits
from gslb.edge import h1server
from gslb.edge.h1server import RequestCycle
from gslb.edge.logsafety import RefusalLog, Refusals
from gslb.edge.server import bind_reuseport
from gslb.ops.fleetcli import edge_doc, region_summary
from gslb.ops.fleetpeers import FleetPeers, Vantage
from gslb.ops.fleetstore import FleetError, FleetStore

log = logging.getLogger("gslb.ops.fleetagent")

DOCUMENT_FILE = "fleet.toml"
STATE_FILE = "fleet.json"
RETRY_S = 1.0  # between attempts to reach NATS while it is out of reach

# Apply a composed config text; returns None when applied, else the reason it was refused.
Apply = Callable[[str], Awaitable[str | None]]
# Drain (True) or undrain (False) ``{"region": NAME}`` or ``{"endpoint": URL}`` on this edge.
DrainFn = Callable[[bool, dict[str, str]], Awaitable[object]]


def store_options(fleet: FleetConfig) -> dict[str, Any]:
    """``FleetStore.connect`` keyword arguments from ``[fleet]`` (the password from the
    environment variable ``password_env`` names: never from the file)."""
    opts: dict[str, Any] = {"bucket": fleet.bucket, "name": f"gslb-{fleet.edge}"}
    if fleet.user:
        opts["user"] = fleet.user
        opts["password"] = os.environ.get(fleet.password_env, "")
    if fleet.creds_file:
        opts["creds_file"] = fleet.creds_file
    if fleet.nkey_file:
        opts["nkey_file"] = fleet.nkey_file
    if fleet.tls_ca_file or fleet.tls_cert_file:
        ctx = ssl.create_default_context(cafile=fleet.tls_ca_file or None)
        if fleet.tls_cert_file:
            ctx.load_cert_chain(fleet.tls_cert_file, fleet.tls_key_file)
        opts["tls"] = ctx
    return opts


class FleetAgent:
    """One edge's link to the fleet document: boot, watch, apply, persist, report."""

    def __init__(self, local_text: str, local_path: str, fleet: FleetConfig) -> None:
        self.local_text = local_text
        self.local_path = local_path
        self.fleet = fleet
        self.state_dir = Path(fleet.state_dir)
        self.revision = 0  # the document revision applied (0: none yet)
        self.document = ""
        self.error: str | None = None
        self.store: FleetStore | None = None
        self.apply: Apply | None = None
        self.drain: DrainFn | None = None
        self.drained: set[tuple[str, str]] = set()  # fleet drains applied here
        self.wanted: set[tuple[str, str]] | None = None  # fleet drains in the bucket (None: unread)
        self.peers: FleetPeers | None = None
        self._task: asyncio.Task[None] | None = None
        self._beat: asyncio.Task[None] | None = None
        self._observe: asyncio.Task[None] | None = None
        self._drains: asyncio.Task[None] | None = None

    # -- the whole config --------------------------------------------------------------------

    def whole(self, document: str) -> str:
        """The edge's own file and the fleet document as one config text."""
        return f"{self.local_text.rstrip()}\n\n# --- fleet document ---\n{document}"

    def check(self, document: str, revision: int) -> str:
        """The whole config text for ``document``, checked; raises ``ConfigError``."""
        compose(self.local_text, self.local_path, document, f"fleet document r{revision}")
        return self.whole(document)

    # -- boot --------------------------------------------------------------------------------

    def saved(self) -> tuple[int, str] | None:
        """The document this edge applied last, from ``state_dir`` (None: none kept)."""
        try:
            state = orjson.loads((self.state_dir / STATE_FILE).read_bytes())
            document = (self.state_dir / DOCUMENT_FILE).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError, orjson.JSONDecodeError):
            return None
        if not isinstance(state, dict) or state.get("digest") != document_digest(document):
            log.warning("fleet: the kept document in %s is incomplete; ignored", self.state_dir)
            return None
        revision = state.get("revision")
        return (revision, document) if isinstance(revision, int) else None

    async def boot(self, connect_s: float) -> str | None:
        """The whole config text to start with: the kept document if this edge has one (NATS
        may be down: static stability), else NATS's current one; None when neither exists."""
        kept = self.saved()
        if kept is not None:
            try:
                text = self.check(kept[1], kept[0])
            except ConfigError as exc:  # this edge's own file changed under it
                log.error("fleet: the kept document r%d no longer fits: %s", kept[0], exc)
            else:
                self.revision, self.document = kept
                log.warning("fleet: starting from the kept document r%d", kept[0])
                return text
        store = await self._connect(connect_s)
        if store is None:
            return None
        with contextlib.suppress(FleetError):
            current = await store.get_config()
            if current is not None:
                revision, document = current
                try:
                    text = self.check(document, revision)
                except ConfigError as exc:
                    await self._report(revision, str(exc))
                    return None
                self.revision, self.document = revision, document
                with contextlib.suppress(OSError):  # kept next time, when it can be
                    self._persist(revision, document)
                return text
        return None

    async def wait_for_document(self) -> str:
        """Block until a fleet document that this edge can run arrives (an edge with nothing
        to serve yet); returns the whole config text."""
        while True:
            store = await self._connect(RETRY_S * 5)
            if store is None:
                await asyncio.sleep(RETRY_S)
                continue
            try:
                async for revision, document in store.watch_config():
                    try:
                        text = self.check(document, revision)
                    except ConfigError as exc:
                        await self._report(revision, str(exc))
                        continue
                    self.revision, self.document = revision, document
                    with contextlib.suppress(OSError):  # kept next time, when it can be
                        self._persist(revision, document)
                    await self._report(revision, None)
                    return text
            except FleetError:
                await asyncio.sleep(RETRY_S)

    # -- running -----------------------------------------------------------------------------

    def start(
        self, apply: Apply, drain: DrainFn | None = None, vantage: Vantage | None = None
    ) -> None:
        """Watch the document from now on and apply each new revision with ``apply``; report
        this edge's state every ``publish_interval_s`` (``gslb fleet status`` marks an edge
        that stops reporting as stale); with ``vantage``, publish what this edge sees and
        combine what the others see (``gslb.ops.fleetpeers``)."""
        self.apply = apply
        self.drain = drain
        self._task = asyncio.create_task(self._run())
        self._beat = asyncio.create_task(self._heartbeat())
        self._drains = asyncio.create_task(self._follow_drains())
        if vantage is not None:
            self.peers = FleetPeers(self.fleet, vantage, lambda: self.revision)
            self._observe = asyncio.create_task(self._observations(self.peers))

    def status(self) -> dict[str, Any]:
        """The fleet as this edge sees it: its document, its link to NATS, and (with a
        vantage) the other edges and their agreement per region."""
        doc: dict[str, Any] = {
            "edge": self.fleet.edge,
            "site": self.fleet.site,
            "revision": self.revision or None,
            "digest": document_digest(self.document) if self.document else None,
            "error": self.error,
            "connected": self.store is not None and self.store.connected,
        }
        if self.peers is not None:
            doc.update(self.peers.status())
        return doc

    async def _observations(self, peers: FleetPeers) -> None:
        """The fleet-health beat: runs with NATS away too, so that the others' words expire
        and this edge falls back on its own view."""
        heard: FleetStore | None = None
        while True:
            await asyncio.sleep(self.fleet.publish_interval_s)
            store = self.store
            if store is not None and heard is not store:
                with contextlib.suppress(FleetError):
                    await store.subscribe(peers.subject_all, peers.on_message)
                    heard = store
            try:
                data = peers.tick()
            except Exception:  # a bug here must not end fleet health for good
                log.exception("fleet: the health beat failed")
                continue
            if data is not None and store is not None:
                with contextlib.suppress(FleetError):
                    if await store.publish(peers.subject, data):
                        peers.published += 1

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.fleet.publish_interval_s)
            if self.store is not None and self.store.connected:
                await self._sync_drains()
                await self._report(self.revision, self.error)

    async def _follow_drains(self) -> None:
        """Keep ``wanted`` the drains the bucket holds, on one watch (not a read per beat),
        and apply each change at once."""
        while True:
            store = self.store
            if store is None:
                await asyncio.sleep(RETRY_S)
                continue
            async for drains in store.watch_drains():
                self.wanted = {(d.kind, d.target) for d in drains}
                await self._sync_drains()
            return  # the store was closed

    async def _sync_drains(self) -> None:
        """Make this edge's fleet drains what the bucket says (on each change, and every
        heartbeat). A drain names a region or endpoint; one this edge does not have (yet:
        its document is older) is retried on the next heartbeat."""
        if self.drain is None or self.wanted is None:
            return
        want = self.wanted
        for draining, changes in ((True, want - self.drained), (False, self.drained - want)):
            for kind, target in sorted(changes):
                try:
                    await self.drain(draining, {kind: target})
                except Exception as exc:  # unknown here (ControlError 404), or a worker away
                    log.info("fleet: %s %s not applied yet: %s", kind, target, exc)
                    continue
                if draining:
                    self.drained.add((kind, target))
                else:
                    self.drained.discard((kind, target))

    async def _run(self) -> None:
        while True:
            store = await self._connect(RETRY_S * 5)
            if store is None:
                await asyncio.sleep(RETRY_S)
                continue
            with contextlib.suppress(FleetError):
                await self._report(self.revision, self.error)
                async for revision, document in store.watch_config():
                    if revision != self.revision:
                        await self.take(revision, document)
            await asyncio.sleep(RETRY_S)

    async def take(self, revision: int, document: str) -> bool:
        """Check and apply one revision; True when it now runs."""
        assert self.apply is not None
        try:
            text = self.check(document, revision)
        except ConfigError as exc:
            return await self._refused(revision, str(exc))
        reason = await self.apply(text)
        if reason is not None:
            return await self._refused(revision, reason)
        self.revision, self.document, self.error = revision, document, None
        try:
            self._persist(revision, document)
        except OSError as exc:  # it runs; only a boot without NATS would miss it
            self.error = f"r{revision}: applied, but not kept in state_dir: {exc.strerror}"
            log.error("fleet: %s", self.error)
        log.warning("fleet: applied document r%d", revision)
        await self._report(revision, self.error)
        return True

    async def reapply(self) -> str | None:
        """The edge's own file changed (SIGHUP): recompose it with the running document."""
        assert self.apply is not None
        try:
            self.local_text = Path(self.local_path).read_text(encoding="utf-8")
            text = self.check(self.document, self.revision)
        except (OSError, UnicodeDecodeError, ConfigError) as exc:
            log.error("reload refused: %s", exc)
            return str(exc)
        return await self.apply(text)

    async def _refused(self, revision: int, reason: str) -> bool:
        log.error("fleet: document r%d refused, still on r%d: %s", revision, self.revision, reason)
        self.error = f"r{revision}: {reason}"
        await self._report(self.revision, self.error)
        return False

    async def close(self) -> None:
        for task in (self._task, self._beat, self._observe, self._drains):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._beat = self._observe = self._drains = None
        if self.store is not None:
            with contextlib.suppress(FleetError):
                await self.store.close()
            self.store = None

    # -- NATS and the disk -------------------------------------------------------------------

    async def _connect(self, deadline_s: float) -> FleetStore | None:
        if self.store is not None:
            return self.store
        try:
            self.store = await FleetStore.connect(
                self.fleet.servers, connect_deadline=deadline_s, **store_options(self.fleet)
            )
        except (FleetError, OSError, ssl.SSLError) as exc:
            log.warning("fleet: NATS out of reach (%s); serving on", type(exc).__name__)
            return None
        return self.store

    async def _report(self, revision: int, error: str | None) -> None:
        store = self.store
        if store is None:
            return
        # This edge's view of each region, for `gslb fleet status` (counts only, no URLs).
        peers = self.peers
        regions = region_summary(peers.vantage.runtime.fleet) if peers is not None else None
        doc = edge_doc(
            self.fleet.edge,
            self.fleet.site,
            revision or None,
            document_digest(self.document) if self.document else None,
            error,
            time.time(),
            regions,
        )
        with contextlib.suppress(FleetError):
            await store.report_edge(self.fleet.edge, doc)

    def _persist(self, revision: int, document: str) -> None:
        """Keep the document for a boot without NATS: written whole or not at all."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        state = {"revision": revision, "digest": document_digest(document)}
        _atomic_write(self.state_dir / DOCUMENT_FILE, document.encode("utf-8"))
        _atomic_write(self.state_dir / STATE_FILE, orjson.dumps(state))


async def serve_unready(local: LocalConfig, agent: FleetAgent) -> str:
    """An edge with no fleet document yet: it listens, but is not ready (``/readyz`` 503) and
    answers every request 503 ``no_config``, until the first document it can run arrives.
    Returns that document's whole config text; both listeners are closed again."""
    body = orjson.dumps({"error": "no_config", "message": "no fleet document yet"})
    head = [(b"Content-Type", b"application/json"), (b"Retry-After", b"5")]

    async def answer(cycle: RequestCycle) -> None:
        cycle.respond(503, head, body)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def readyz(request: web.Request) -> web.Response:
        return web.json_response({"ready": False, "reason": "no fleet document yet"}, status=503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    admin = local.server.admin_listen
    await web.TCPSite(runner, admin.host, admin.port).start()
    listen = local.server.listen
    refusals = Refusals(RefusalLog(), via=lambda: "gslb")
    public = await h1server.serve(
        answer, bind_reuseport(listen.host, listen.port), limits=ServerLimits(), refusals=refusals
    )
    log.warning("fleet: no document yet; %s answers 503 no_config until one arrives", listen)
    try:
        return await agent.wait_for_document()
    finally:
        public.close(0.5)
        await public.wait_closed()
        await runner.cleanup()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
